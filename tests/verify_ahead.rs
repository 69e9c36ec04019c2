//! A verify evaluates the stretches between stored checkpoints ahead of itself on the other
//! cores (`serve --verify-helpers`, issue 15), and reports exactly what a verify on one thread
//! reports: on a clean ledger, and on one with a commission changed in each of two neighbouring
//! stretches (so one of them is a helper's) and a periodic checkpoint altered (so that the
//! verify drops what a helper evaluated from it and evaluates that stretch itself).

use crate::common;

use common::{Host, Operator, data_dir, metric};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// Events in each request: with `--checkpoint-every 100`, about one periodic checkpoint each.
const BATCH: usize = 100;

/// Deposits `first..first + count` dated in `month`, a request of [`BATCH`] at a time: by
/// customers `c0` to `c149` (so later deposits read what earlier ones wrote), but every
/// hundredth by a new customer, whose first deposit pays the CPA.
fn deposits(host: &Host, operator: &Operator, first: usize, count: usize, month: &str) {
    for start in (first..first + count).step_by(BATCH) {
        let events: Vec<Value> = (start..(start + BATCH).min(first + count))
            .map(|n| {
                json!({"id": format!("d{n}"), "type": "deposit", "customer": if n % 100 == 0 { format!("new{n}") } else { format!("c{}", n % 150) }, "amount": format!("{}", 20 + n % 7), "affiliate": "aff1", "occurred_at": format!("{month}-1{}T09:00:00Z", n % 10)})
            })
            .collect();
        let (status, body) = host.post_events(operator, &json!(events));
        assert_eq!(status, StatusCode::OK, "{body}");
    }
}

/// October's deposits, closed; November's, with a late October deposit among them (restated:
/// a helper stops its stretch there); December's, open.
fn three_months(host: &Host) -> Operator {
    let casino = host.multi_event_with_aff1("casino");
    deposits(host, &casino, 0, 400, "2025-10");
    let (status, closed) = host.close(&casino, "2025-10");
    assert_eq!(status, StatusCode::OK, "{closed}");
    deposits(host, &casino, 400, 250, "2025-11");
    let late = host.accept(
        &casino,
        json!({"id": "late-oct", "type": "deposit", "customer": "c3", "amount": "40", "affiliate": "aff1", "occurred_at": "2025-10-25T09:00:00Z"}),
    );
    assert_eq!(late["status"], "accepted", "{late}");
    deposits(host, &casino, 650, 250, "2025-11");
    let (status, closed) = host.close(&casino, "2025-11");
    assert_eq!(status, StatusCode::OK, "{closed}");
    deposits(host, &casino, 900, 400, "2025-12");
    casino
}

fn evaluated_ahead(host: &Host) -> f64 {
    metric(&host.metrics(), "commission_host_verify_evaluated_ahead_total").unwrap_or(0.0)
}

fn stop(host: Host) {
    let pid = host.pid().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    host.wait_exit();
}

/// The events `d700` and `d800` (a request apart, so in neighbouring stretches) paid 999 on
/// disk, and the third periodic checkpoint's digest altered; every handle dropped at the end.
fn tamper(data: &std::path::Path) {
    let db = sled::open(data).unwrap();
    let ledger = db.open_tree("ledger").unwrap();
    let mut changed = Vec::new();
    for entry in ledger.iter() {
        let (key, value) = entry.unwrap();
        let Ok(mut record) = serde_json::from_slice::<Value>(&value) else { continue };
        let id = record["record"]["event"]["id"].as_str().unwrap_or_default().to_owned();
        if (id == "d700" || id == "d800") && record["commissions"][0].is_object() {
            record["commissions"][0]["amount"] = json!("999");
            ledger.insert(key, serde_json::to_vec(&record).unwrap()).unwrap();
            changed.push(id);
        }
    }
    assert_eq!(changed.len(), 2, "the commissions of d700 and d800 in the ledger: {changed:?}");
    let checkpoints = db.open_tree("checkpoints").unwrap();
    let periodic: Vec<(sled::IVec, Value)> = checkpoints
        .iter()
        .map(Result::unwrap)
        .map(|(key, value)| (key, serde_json::from_slice::<Value>(&value).unwrap()))
        .filter(|(_, checkpoint)| checkpoint["period"].is_null())
        .collect();
    assert!(periodic.len() >= 8, "periodic checkpoints about every 100 events: {}", periodic.len());
    let (key, mut checkpoint) = periodic[2].clone();
    checkpoint["digest"] = json!("0".repeat(64));
    checkpoints.insert(key, serde_json::to_vec(&checkpoint).unwrap()).unwrap();
    db.flush().unwrap();
}

#[test]
fn a_verify_with_helpers_reports_what_one_thread_does_on_a_clean_and_a_tampered_ledger() {
    let cores = std::thread::available_parallelism().map_or(1, |cores| cores.get());
    let (_dir, data) = data_dir();
    let host = Host::start_with(&data, &["--checkpoint-every", "100"]);
    let casino = three_months(&host);
    // The process's first periodic checkpoint reads the whole state; every later one, across
    // both closes, chains to the one before it (a close's included).
    let metrics = host.metrics();
    let written = |kind: &str| {
        let name = format!("commission_host_periodic_checkpoints_total{{operator=\"casino\",kind=\"{kind}\"}}");
        metric(&metrics, &name).unwrap_or(0.0)
    };
    assert_eq!((written("whole"), written("skipped"), written("failed")), (1.0, 0.0, 0.0), "{metrics}");
    assert!(written("chained") >= 10.0, "{metrics}");
    let clean = host.verify(&casino);
    assert_eq!((&clean["differences"], &clean["checkpoints_differing"]), (&json!([]), &json!([])), "{clean}");
    // Every deposit, the late one and the two closes' settlements.
    assert_eq!(clean["events_replayed"], 1303, "{clean}");
    if cores > 1 {
        assert!(evaluated_ahead(&host) > 0.0, "{cores} cores, and no event was evaluated ahead");
    }
    stop(host);

    let alone = Host::start_with(&data, &["--verify-helpers", "0"]);
    assert_eq!(alone.verify(&casino), clean, "one thread, the same clean report");
    assert_eq!(evaluated_ahead(&alone), 0.0, "no helpers, nothing evaluated ahead");
    stop(alone);

    tamper(&data);
    let alone = Host::start_with(&data, &["--verify-helpers", "0"]);
    let expected = alone.verify(&casino);
    stop(alone);
    let differing: Vec<&str> =
        expected["differences"].as_array().unwrap().iter().map(|d| d["event_id"].as_str().unwrap()).collect();
    assert_eq!(differing, ["d700", "d800"], "{expected}");
    assert_eq!(expected["checkpoints_differing"].as_array().unwrap().len(), 1, "{expected}");

    let helped = Host::start(&data);
    assert_eq!(helped.verify(&casino), expected, "with helpers, the report of one thread");
    if cores > 1 {
        assert!(evaluated_ahead(&helped) > 0.0, "{cores} cores, and no event was evaluated ahead");
    }
}
