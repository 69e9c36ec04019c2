//! Checkpoints and the rule for late events (issue 15), through the real host with RevShare
//! built from source: a late event is evaluated where it arrives and booked into the month it
//! occurred in, after that month's on-time events; the month's settlements and those of the
//! closed months after it run again from the checkpoints taken before each close. Worked by
//! hand, and against a ledger that got the same events in time; with checkpoints deleted and
//! altered on disk (the host falls back on a replay, and verify names the altered one); under
//! concurrent load; and the late deposit dated before a customer's first on a hybrid deal.

use crate::common;

use std::time::{Duration, Instant};

use common::{Host, Operator, data_dir, dec, paid};
use reqwest::StatusCode;
use rust_decimal::Decimal;
use serde_json::{Value, json};

fn close(host: &Host, operator: &Operator, period: &str) -> Value {
    let (status, body) = host.close(operator, period);
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

fn money(host: &Host, operator: &Operator, id: &str, kind: &str, amount: &str, at: &str) -> Value {
    host.accept(operator, json!({"id": id, "type": kind, "customer": "p1", "amount": amount, "occurred_at": at}))
}

/// RevShare 30 % with negative carryover, four months closed:
/// October NGR -1,000 pays 0 and carries -1,000; November +600: -400, pays 0;
/// December +300: -100, pays 0; January +1,000: 900 x 30 % = 270.
fn four_closed_months(host: &Host, id: &str) -> Operator {
    let casino = host.create_operator(id);
    host.install_plugin(&casino, "revshare");
    host.put_affiliate(&casino, "carry", None, json!({"revshare_percent": "30"}));
    host.accept(
        &casino,
        json!({"id": "p1-r", "type": "registration", "customer": "p1", "affiliate": "carry", "occurred_at": "2025-10-01T08:00:00Z"}),
    );
    money(host, &casino, "o1", "win", "1000", "2025-10-02T10:00:00Z");
    money(host, &casino, "n1", "wager", "600", "2025-11-02T10:00:00Z");
    money(host, &casino, "d1", "wager", "300", "2025-12-02T10:00:00Z");
    money(host, &casino, "j1", "wager", "1000", "2026-01-02T10:00:00Z");
    let settled = |period| paid(&close(host, &casino, period)["settlements"][0]);
    assert_eq!(settled("2025-10"), []);
    assert_eq!(settled("2025-11"), []);
    assert_eq!(settled("2025-12"), []);
    assert_eq!(settled("2026-01"), [("carry".into(), dec("270"))]);
    casino
}

/// (period restated, amount) of a late event's adjustments.
fn adjustments(answer: &Value) -> Vec<(String, Decimal)> {
    answer["commissions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["restates"]["period"].as_str().unwrap_or("").to_owned(), common::amount(&c["amount"])))
        .collect()
}

/// The two late events of the hand-worked example, with what each must pay.
fn send_the_late_events(host: &Host, casino: &Operator) {
    // A wager of 800 on 20 October. October: -1,000 + 800 = -200, pays 0, carries -200.
    // November: -200 + 600 = 400 pays 120 (0 before); December 300 pays 90 (0 before);
    // January 1,000 pays 300 (270 before).
    let late = money(host, casino, "late-oct", "wager", "800", "2025-10-20T10:00:00Z");
    assert_eq!(
        adjustments(&late),
        [("2025-11".into(), dec("120")), ("2025-12".into(), dec("90")), ("2026-01".into(), dec("30"))],
        "{late}"
    );
    // A win of 500 on 20 November, booked after November's wager: -200 + 600 - 500 = -100,
    // pays 0 (120 paid: -120) and carries -100; December -100 + 300 = 200 pays 60 (90 paid:
    // -30); January 1,000 pays 300, as paid.
    let late = money(host, casino, "late-nov", "win", "500", "2025-11-20T10:00:00Z");
    assert_eq!(adjustments(&late), [("2025-11".into(), dec("-120")), ("2025-12".into(), dec("-30"))], "{late}");
    assert_eq!(host.totals(casino), [("carry".to_owned(), dec("360"))].into(), "270 + 240 - 150");
}

/// The same events, each sent in time, closed month by month: what a replay under the rule gives.
fn the_same_events_in_time(host: &Host) -> Operator {
    let casino = host.create_operator("intime");
    host.install_plugin(&casino, "revshare");
    host.put_affiliate(&casino, "carry", None, json!({"revshare_percent": "30"}));
    host.accept(
        &casino,
        json!({"id": "p1-r", "type": "registration", "customer": "p1", "affiliate": "carry", "occurred_at": "2025-10-01T08:00:00Z"}),
    );
    money(host, &casino, "o1", "win", "1000", "2025-10-02T10:00:00Z");
    money(host, &casino, "late-oct", "wager", "800", "2025-10-20T10:00:00Z");
    close(host, &casino, "2025-10");
    money(host, &casino, "n1", "wager", "600", "2025-11-02T10:00:00Z");
    money(host, &casino, "late-nov", "win", "500", "2025-11-20T10:00:00Z");
    close(host, &casino, "2025-11");
    money(host, &casino, "d1", "wager", "300", "2025-12-02T10:00:00Z");
    close(host, &casino, "2025-12");
    money(host, &casino, "j1", "wager", "1000", "2026-01-02T10:00:00Z");
    close(host, &casino, "2026-01");
    casino
}

fn assert_verifies_with_checkpoints(host: &Host, operator: &Operator) {
    common::assert_verifies(host, operator);
    let report = host.verify(operator);
    assert_eq!(report["checkpoints_differing"], json!([]), "{report}");
    assert_eq!(report["complete"], true, "{report}");
}

#[test]
fn a_late_event_into_the_oldest_closed_month_restates_every_later_one_as_if_it_had_come_in_time() {
    let (_dir, data) = data_dir();
    let host = Host::start(&data);
    let casino = four_closed_months(&host, "casino");
    send_the_late_events(&host, &casino);

    // In time, the same events pay the same per month: 0, 0, 60, 300.
    let intime = the_same_events_in_time(&host);
    assert_eq!(host.totals(&intime), host.totals(&casino));
    // The restated carryover is the live one: February's NGR 100 after January's 0 pays 30 in
    // both ledgers.
    for operator in [&casino, &intime] {
        money(&host, operator, "f1", "wager", "100", "2026-02-02T10:00:00Z");
        assert_eq!(paid(&close(&host, operator, "2026-02")["settlements"][0]), [("carry".into(), dec("30"))]);
        assert_verifies_with_checkpoints(&host, operator);
    }
}

/// Stops the host as an operator would (SIGTERM), so that the data directory can be edited.
fn stop(host: Host) {
    let pid = host.pid().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    host.wait_exit();
}

/// Edits the stored checkpoints of the data directory: `edit` gets each (period, checkpoint)
/// and answers the new value, or `None` to delete it.
fn edit_checkpoints(data: &std::path::Path, mut edit: impl FnMut(&str, Value) -> Option<Value>) {
    let db = sled::open(data).unwrap();
    let tree = db.open_tree("checkpoints").unwrap();
    for entry in tree.iter() {
        let (key, value) = entry.unwrap();
        let checkpoint: Value = serde_json::from_slice(&value).unwrap();
        let period = checkpoint["period"].as_str().unwrap_or_default().to_owned();
        match edit(&period, checkpoint) {
            Some(edited) => tree.insert(key, serde_json::to_vec(&edited).unwrap()).unwrap(),
            None => tree.remove(key).unwrap(),
        };
    }
    db.flush().unwrap();
}

#[test]
fn an_altered_checkpoint_is_reported_by_verify_and_a_missing_one_falls_back_on_a_replay() {
    let (_dir, data) = data_dir();
    let host = Host::start(&data);
    let casino = four_closed_months(&host, "casino");
    assert_verifies_with_checkpoints(&host, &casino);
    stop(host);

    // October's carryover of -1,000 becomes 0 in the checkpoint before December's settlement,
    // as a disk error or a hand might; November's checkpoint is deleted.
    use base64::Engine as _;
    let zero = base64::engine::general_purpose::STANDARD.encode("0");
    let mut altered = 0;
    edit_checkpoints(&data, |period, mut checkpoint| match period {
        "2025-11" => None,
        "2025-10" => {
            let delta = checkpoint["delta"].as_object_mut().unwrap();
            for (key, value) in delta.iter_mut() {
                if key.ends_with(":ngr:2025-10") {
                    *value = json!(zero);
                    altered += 1;
                }
            }
            Some(checkpoint)
        }
        _ => Some(checkpoint),
    });
    assert_eq!(altered, 1, "October's NGR is in its checkpoint");

    let host = Host::start(&data);
    let report = host.verify(&casino);
    let periods: Vec<&str> =
        report["checkpoints_differing"].as_array().unwrap().iter().map(|d| d["period"].as_str().unwrap()).collect();
    assert!(periods.contains(&"2025-10"), "the altered checkpoint is named: {report}");
    assert!(report["checkpoints_differing"][0]["problem"].as_str().unwrap().contains("altered"), "{report}");
    // The ledger itself is sound.
    assert_eq!(report["differences"], json!([]), "{report}");

    // The restatement does not use them: the same hand-worked adjustments, from a replay, which
    // also stores sound checkpoints again.
    send_the_late_events(&host, &casino);
    assert_verifies_with_checkpoints(&host, &casino);
}

#[test]
fn a_late_deposit_dated_before_a_customers_first_on_a_hybrid_deal_restates_and_verifies_clean() {
    let (_dir, data) = data_dir();
    let host = Host::start(&data);
    let casino = host.create_operator("casino");
    host.install_plugin(&casino, "revshare");
    host.put_affiliate(&casino, "hybrid", None, json!({"revshare_percent": "20", "cpa": "50"}));
    host.accept(
        &casino,
        json!({"id": "q1-r", "type": "registration", "customer": "q1", "affiliate": "hybrid", "occurred_at": "2025-11-01T08:00:00Z"}),
    );
    host.accept(
        &casino,
        json!({"id": "q1-w", "type": "wager", "customer": "q1", "amount": "500", "occurred_at": "2025-11-02T08:00:00Z"}),
    );
    assert_eq!(paid(&close(&host, &casino, "2025-11")["settlements"][0]), [("hybrid".into(), dec("100"))]);

    // The customer's first deposit arrives in December, and pays the CPA.
    let first = host.accept(
        &casino,
        json!({"id": "q1-dec", "type": "deposit", "customer": "q1", "amount": "100", "occurred_at": "2025-12-05T08:00:00Z"}),
    );
    assert_eq!(paid(&first), [("hybrid".into(), dec("50"))]);
    // A deposit dated 10 November arrives after it: booked into November after its on-time
    // events, and evaluated where it arrived, it is not the first deposit: no second CPA, and a
    // deposit is no NGR, so November pays the same.
    let late = host.accept(
        &casino,
        json!({"id": "q1-nov", "type": "deposit", "customer": "q1", "amount": "100", "occurred_at": "2025-11-10T08:00:00Z"}),
    );
    assert_eq!(paid(&late), [], "{late}");
    // A late wager of 1,000 on 11 November: November NGR 1,500 at 20 % = 300, 100 paid: +200.
    let wager = host.accept(
        &casino,
        json!({"id": "q1-nov-w", "type": "wager", "customer": "q1", "amount": "1000", "occurred_at": "2025-11-11T08:00:00Z"}),
    );
    assert_eq!(adjustments(&wager), [("2025-11".into(), dec("200"))], "{wager}");
    assert_eq!(host.totals(&casino), [("hybrid".to_owned(), dec("350"))].into(), "100 + 50 + 200");
    // The replay evaluates each event where it arrived too: the CPA on q1-dec, none on q1-nov.
    assert_verifies_with_checkpoints(&host, &casino);
}

#[test]
fn late_events_under_concurrent_load_commit_and_none_is_refused() {
    let (_dir, data) = data_dir();
    let host = Host::start(&data);
    let casino = four_closed_months(&host, "casino");
    // February's on-time traffic, in batches, while the late events arrive.
    let loader = {
        let (client, url, key) = (host.client.clone(), host.url("/v1/operators/casino/events"), casino.api_key.clone());
        std::thread::spawn(move || {
            let started = Instant::now();
            let mut sent = 0;
            for batch in 0..40 {
                if started.elapsed() > Duration::from_secs(20) {
                    break;
                }
                let events: Vec<Value> = (0..50)
                    .map(|i| json!({"id": format!("f{batch}-{i}"), "type": "wager", "customer": "p1", "amount": "1", "occurred_at": "2026-02-03T10:00:00Z"}))
                    .collect();
                let response = client.post(&url).bearer_auth(&key).json(&events).send().unwrap();
                assert_eq!(response.status(), StatusCode::OK);
                sent += 50;
            }
            sent
        })
    };
    let started = Instant::now();
    send_the_late_events(&host, &casino);
    assert!(started.elapsed() < Duration::from_secs(30), "the late events waited {:?}", started.elapsed());
    let sent = loader.join().unwrap();
    assert!(sent > 0);
    let (_, events) = host.get(&casino, "/events?status=failed");
    assert_eq!(events["events"], json!([]), "{events}");
    assert_verifies_with_checkpoints(&host, &casino);
}

/// Checkpoints every N events (`serve --checkpoint-every 2`): after the five events of
/// [`four_closed_months`] the host keeps periodic ones at ledger positions 3 and 5, then one
/// before each close's settlement (6 to 9); the one at 5 is chained to the one at 3 (written
/// from the keys committed since). The one at 5 is altered and November's (7) deleted:
/// verify names the altered one (`period` null, for a periodic checkpoint); the late events
/// re-derive October's and November's from the sound one at 3 (three events and October's
/// settlement replayed, not the ledger) and pay the same hand-worked adjustments.
#[test]
fn a_missing_or_altered_checkpoint_is_rederived_from_the_previous_sound_periodic_one() {
    let (_dir, data) = data_dir();
    let host = Host::start_with(&data, &["--checkpoint-every", "2"]);
    let casino = four_closed_months(&host, "casino");
    assert_verifies_with_checkpoints(&host, &casino);
    // Taken in the turn, written by the writer thread: the one at 3 whole, the one at 5 chained.
    let metrics = host.metrics();
    for kind in ["whole", "chained"] {
        let name = format!("commission_host_periodic_checkpoints_total{{operator=\"casino\",kind=\"{kind}\"}}");
        assert_eq!(common::metric(&metrics, &name), Some(1.0), "{kind}: {metrics}");
    }
    stop(host);

    let mut seen = Vec::new();
    edit_checkpoints(&data, |period, mut checkpoint| {
        let seq = checkpoint["seq"].as_u64().unwrap();
        seen.push((seq, period.to_owned()));
        match (seq, period) {
            (7, "2025-11") => None,
            (5, "") => {
                // Written from the keys committed since 3, and linked to it by its digest.
                assert_eq!(checkpoint["chained"], true, "{checkpoint}");
                let delta = checkpoint["delta"].as_object_mut().unwrap();
                let (_, value) = delta.iter_mut().next().expect("the delta since 3 is not empty");
                *value = json!("MA==");
                Some(checkpoint)
            }
            _ => Some(checkpoint),
        }
    });
    let periodic: Vec<u64> = seen.iter().filter(|(_, period)| period.is_empty()).map(|(seq, _)| *seq).collect();
    assert_eq!(periodic, [3, 5], "{seen:?}");

    let host = Host::start(&data);
    let report = host.verify(&casino);
    let named = &report["checkpoints_differing"][0];
    assert_eq!((named["seq"].as_u64(), &named["period"]), (Some(5), &Value::Null), "{report}");
    assert!(named["problem"].as_str().unwrap().contains("altered"), "{report}");
    assert_eq!(report["differences"], json!([]), "{report}");

    send_the_late_events(&host, &casino);
    let log = host.log();
    assert!(log.contains("re-derived from the previous sound one"), "{log}");
    assert!(!log.contains("rebuilt the books of the closed months from the ledger"), "no full replay: {log}");
    common::assert_verifies(&host, &casino);
    let report = host.verify(&casino);
    let named: Vec<(Option<u64>, Value)> = report["checkpoints_differing"]
        .as_array()
        .unwrap()
        .iter()
        .map(|difference| (difference["seq"].as_u64(), difference["period"].clone()))
        .collect();
    assert_eq!(named, [(Some(5), Value::Null)], "only the altered periodic one is left to report: {report}");
}

/// RevShare 30 % with negative carryover, each month closed before the next one's events come
/// (a checkpoint before each close): October NGR 1,000 pays 300; November -400 pays 0 and
/// carries -400; December 3,000: (3,000 - 400) x 30 % = 780; January open. Returns the
/// operator and its plugin version.
fn months_closed_one_by_one(host: &Host) -> (Operator, u64) {
    let casino = host.create_operator("casino");
    let version = host.install_plugin(&casino, "revshare");
    host.put_affiliate(&casino, "carry", None, json!({"revshare_percent": "30"}));
    host.accept(
        &casino,
        json!({"id": "p1-r", "type": "registration", "customer": "p1", "affiliate": "carry", "occurred_at": "2025-10-01T08:00:00Z"}),
    );
    let settled = |period| paid(&close(host, &casino, period)["settlements"][0]);
    money(host, &casino, "o1", "wager", "1000", "2025-10-02T10:00:00Z");
    assert_eq!(settled("2025-10"), [("carry".into(), dec("300"))]);
    money(host, &casino, "n1", "win", "400", "2025-11-02T10:00:00Z");
    assert_eq!(settled("2025-11"), []);
    money(host, &casino, "d1", "wager", "3000", "2025-12-02T10:00:00Z");
    assert_eq!(settled("2025-12"), [("carry".into(), dec("780"))]);
    money(host, &casino, "j1", "wager", "500", "2026-01-02T10:00:00Z");
    (casino, version)
}

/// A backtest over a range can start from the operator's state at the checkpoint before it
/// (`start: checkpoint`) instead of building the version's state from the first event: for
/// the version that was live, the report is the same, and the replay starts at that checkpoint,
/// not at event 1. Without `from` there is no checkpoint to start from: refused, naming it.
#[test]
fn a_backtest_from_the_checkpoint_before_its_range_reports_what_one_from_the_start_does() {
    let (_dir, data) = data_dir();
    let host = Host::start(&data);
    let (casino, version) = months_closed_one_by_one(&host);

    let backtest = |body: Value| {
        let (status, report) = common::answer(
            host.client
                .post(host.url(&format!("/v1/operators/casino/plugins/{version}/replay")))
                .bearer_auth(&casino.api_key)
                .json(&body)
                .send(),
        );
        (status, report)
    };
    let from = "2025-12-01T00:00:00Z";
    let (status, whole) = backtest(json!({"from": from}));
    assert_eq!(status, StatusCode::OK, "{whole}");
    let (status, from_checkpoint) = backtest(json!({"from": from, "start": "checkpoint"}));
    assert_eq!(status, StatusCode::OK, "{from_checkpoint}");

    assert_eq!(whole["replayed_from"], 1, "{whole}");
    // December's first event came after November's close: from the checkpoint before that
    // close, past the registration and October's events.
    let started = from_checkpoint["replayed_from"].as_u64().unwrap();
    assert!(started > 3, "{from_checkpoint}");
    // December paid (3,000 - 400 carried) x 30 % = 780, and the replay pays it: the same totals
    // both ways.
    for report in [&whole, &from_checkpoint] {
        assert_eq!(report["events_changed"], 0, "{report}");
        let totals = &report["affiliates"][0];
        assert_eq!((common::amount(&totals["paid"]), common::amount(&totals["would_pay"])), (dec("780"), dec("780")));
    }
    assert_eq!(whole["events_compared"], from_checkpoint["events_compared"]);
    assert_eq!(whole["affiliates"], from_checkpoint["affiliates"]);

    let (status, refused) = backtest(json!({"start": "checkpoint"}));
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
    assert!(refused.to_string().contains("from"), "{refused}");
}

/// A shadow started from the operator's latest checkpoint (`start: checkpoint`) follows the
/// ledger from there, over the state the checkpoint holds: of the live version, it pays what
/// was paid since (December's 780), not October's 300 before it, and agrees with the ledger.
#[test]
fn a_shadow_started_from_the_latest_checkpoint_follows_the_ledger_from_there() {
    let (_dir, data) = data_dir();
    let host = Host::start(&data);
    let (casino, version) = months_closed_one_by_one(&host);
    let shadow = |body: Value| {
        common::answer(
            host.client.put(host.url("/v1/operators/casino/shadow")).bearer_auth(&casino.api_key).json(&body).send(),
        )
    };
    let (status, set) = shadow(json!({"version": version, "start": "checkpoint"}));
    assert_eq!(status, StatusCode::OK, "{set}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let report = loop {
        let (status, report) = host.get(&casino, &format!("/plugins/{version}/shadow-report"));
        assert_eq!(status, StatusCode::OK, "{report}");
        if report["ledger_entries_followed"] == report["ledger_entries"] {
            break report;
        }
        assert!(Instant::now() < deadline, "the shadow did not catch up: {report}");
        std::thread::sleep(Duration::from_millis(100));
    };
    // December's close is the latest checkpoint: its settlement and January's event follow.
    assert!(report["started_from"].as_u64().unwrap() > 3, "{report}");
    assert_eq!(report["events_differing"], 0, "{report}");
    let totals = &report["affiliates"][0];
    assert_eq!((common::amount(&totals["paid"]), common::amount(&totals["would_pay"])), (dec("780"), dec("780")));

    let (status, refused) = shadow(json!({"version": null, "start": "checkpoint"}));
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
    assert!(refused.to_string().contains("start"), "{refused}");
}

/// The default keeps a periodic checkpoint every 100,000 events (`serve` with no
/// `--checkpoint-every`): none after 99,999 events, one (of the whole state, the process's
/// first) once the 100,000th is committed, and verify confirms it.
#[test]
fn the_default_keeps_a_periodic_checkpoint_once_a_hundred_thousand_events_are_committed() {
    let (_dir, data) = data_dir();
    let host = Host::start(&data);
    let casino = host.create_operator("casino");
    host.install_plugin(&casino, "revshare");
    host.put_affiliate(&casino, "aff", None, json!({"revshare_percent": "30"}));
    let mut lines = String::new();
    for customer in 0..500 {
        let event = json!({"id": format!("r{customer}"), "type": "registration", "customer": format!("c{customer}"),
            "affiliate": "aff", "occurred_at": "2025-01-01T00:00:00Z"});
        lines.push_str(&format!("{event}\n"));
    }
    for n in 500..99_999 {
        let event = json!({"id": format!("w{n}"), "type": "wager", "customer": format!("c{}", n % 500),
            "amount": "10", "occurred_at": format!("2025-01-{:02}T10:00:00Z", 2 + n % 27)});
        lines.push_str(&format!("{event}\n"));
    }
    let (status, imported) = common::answer(
        host.client
            .post(host.url("/v1/operators/casino/imports?format=ndjson"))
            .bearer_auth(&casino.api_key)
            .header("content-type", "application/x-ndjson")
            .body(lines)
            .send(),
    );
    assert_eq!(status, StatusCode::OK, "{imported}");
    let taken = |kind: &str| {
        let name = format!("commission_host_periodic_checkpoints_total{{operator=\"casino\",kind=\"{kind}\"}}");
        common::metric(&host.metrics(), &name).unwrap_or(0.0)
    };
    assert_eq!(taken("whole"), 0.0, "none before the 100,000th event: {imported}");

    host.accept(
        &casino,
        json!({"id": "w-100000", "type": "wager", "customer": "c1", "amount": "10",
        "occurred_at": "2025-01-28T10:00:00Z"}),
    );
    // Taken in the turn, written by the writer thread a moment later.
    let deadline = Instant::now() + Duration::from_secs(30);
    while taken("whole") < 1.0 {
        assert!(Instant::now() < deadline, "no periodic checkpoint after 100,000 events: {}", host.metrics());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!((taken("whole"), taken("chained"), taken("skipped")), (1.0, 0.0, 0.0));
    let report = host.verify(&casino);
    assert_eq!(report["checkpoints_differing"], json!([]), "{report}");
    assert_eq!(report["differences"], json!([]), "{report}");
}
