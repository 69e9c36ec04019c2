//! A full verify as a job (`POST /v1/operators/{op}/verify-jobs`, issue 15): it ends with the
//! report the synchronous `POST .../verify` gives on the same ledger (a tampered commission and
//! an altered checkpoint included), one runs per operator at a time, and a host SIGKILLed
//! mid-job goes on from the job's last resume point when it starts again, not from event 1;
//! one sent SIGTERM mid-job stops promptly, and the job goes on at its next start.
//! A job started with `"start": "last_verified"` replays only what came after the previous
//! job's last resume point, and from event 1 when that point's checkpoint was altered.

use crate::common;

use std::time::{Duration, Instant};

use common::{Host, Operator, data_dir};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// `POST .../verify-jobs`: the status, the answer, and the `Location` header.
fn start_job(host: &Host, operator: &Operator) -> (StatusCode, Value, Option<String>) {
    start_job_with(host, operator, None)
}

fn start_job_with(host: &Host, operator: &Operator, body: Option<Value>) -> (StatusCode, Value, Option<String>) {
    let request = host
        .client
        .post(host.url(&format!("/v1/operators/{}/verify-jobs", operator.id)))
        .bearer_auth(&operator.api_key);
    let request = match body {
        Some(body) => request.json(&body),
        None => request,
    };
    let response = request.send().unwrap();
    let location = response.headers().get("location").map(|value| value.to_str().unwrap().to_owned());
    let (status, body) = common::answer(Ok(response));
    (status, body, location)
}

fn job(host: &Host, operator: &Operator, url: &str) -> Value {
    let (status, body) = common::answer(host.client.get(host.url(url)).bearer_auth(&operator.api_key).send());
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

/// Polls the job until it is no longer running (bounded: 120 s); checks on the way that its
/// progress never goes back.
fn wait_done(host: &Host, operator: &Operator, url: &str) -> Value {
    let started = Instant::now();
    let mut seen = 0;
    loop {
        let body = job(host, operator, url);
        let through = body["verified_through"].as_u64().unwrap();
        assert!(through >= seen, "the job's progress went back from {seen}: {body}");
        seen = through;
        if body["status"] != "running" {
            return body;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "the job did not end: {body}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn verify_as_job(host: &Host, operator: &Operator) -> Value {
    verify_as_job_with(host, operator, None)
}

fn verify_as_job_with(host: &Host, operator: &Operator, body: Option<Value>) -> Value {
    let (status, body, location) = start_job_with(host, operator, body);
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(location.as_deref(), body["url"].as_str(), "{body}");
    let done = wait_done(host, operator, body["url"].as_str().unwrap());
    assert_eq!(done["status"], "done", "{done}");
    assert_eq!(done["verified_through"], done["upto"], "{done}");
    assert_eq!(done["events_replayed"], done["report"]["events_replayed"], "{done}");
    done
}

fn close(host: &Host, operator: &Operator, period: &str) {
    let (status, body) = host.close(operator, period);
    assert_eq!(status, StatusCode::OK, "{body}");
}

fn wager(host: &Host, operator: &Operator, id: &str, amount: &str, at: &str) {
    host.accept(operator, json!({"id": id, "type": "wager", "customer": "p1", "amount": amount, "occurred_at": at}));
}

/// A RevShare casino whose player p1 (affiliate carry, 30 %) wagered 1,000 in October 2025 and
/// 1,000 in November, both months closed.
fn two_closed_months(host: &Host) -> Operator {
    let casino = host.create_operator("casino");
    host.install_plugin(&casino, "revshare");
    host.put_affiliate(&casino, "carry", None, json!({"revshare_percent": "30"}));
    host.accept(
        &casino,
        json!({"id": "p1-r", "type": "registration", "customer": "p1", "affiliate": "carry", "occurred_at": "2025-10-01T08:00:00Z"}),
    );
    wager(host, &casino, "o1", "1000", "2025-10-02T10:00:00Z");
    close(host, &casino, "2025-10");
    wager(host, &casino, "n1", "600", "2025-11-02T10:00:00Z");
    wager(host, &casino, "n2", "400", "2025-11-03T10:00:00Z");
    close(host, &casino, "2025-11");
    casino
}

/// Stops the host with SIGTERM, so that its data directory can be edited.
fn stop(host: Host) {
    let pid = host.pid().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    host.wait_exit();
}

#[test]
fn a_verify_job_ends_with_the_report_of_the_synchronous_verify_even_on_a_tampered_ledger() {
    let (_dir, data) = data_dir();
    let host = Host::start_with(&data, &["--checkpoint-every", "2"]);
    let casino = two_closed_months(&host);
    // Late, into October: restates October and November.
    wager(&host, &casino, "late-oct", "200", "2025-10-20T10:00:00Z");
    wager(&host, &casino, "d1", "100", "2025-12-02T10:00:00Z");

    let clean = host.verify(&casino);
    assert_eq!(clean["differences"], json!([]), "{clean}");
    assert_eq!(clean["checkpoints_differing"], json!([]), "{clean}");
    let done = verify_as_job(&host, &casino);
    assert_eq!(done["report"], clean, "{done}");
    stop(host);

    tamper(&data);

    let host = Host::start(&data);
    let sync = host.verify(&casino);
    assert_ne!(sync["differences"], json!([]), "{sync}");
    assert_ne!(sync["checkpoints_differing"], json!([]), "{sync}");
    let done = verify_as_job(&host, &casino);
    assert_eq!(done["report"], sync, "{done}");
}

/// The first commission paid (October's settlement: 1,000 x 30 % = 300) changed on disk, and a
/// periodic checkpoint altered; every handle on the database dropped at the end.
fn tamper(data: &std::path::Path) {
    let db = sled::open(data).unwrap();
    let ledger = db.open_tree("ledger").unwrap();
    let (key, value) = ledger
        .iter()
        .map(Result::unwrap)
        .find(|(_, value)| serde_json::from_slice::<Value>(value).unwrap()["commissions"][0].is_object())
        .expect("a commission in the ledger");
    let mut entry: Value = serde_json::from_slice(&value).unwrap();
    assert_eq!(common::amount(&entry["commissions"][0]["amount"]), common::dec("300"), "{entry}");
    entry["commissions"][0]["amount"] = json!("999");
    ledger.insert(key, serde_json::to_vec(&entry).unwrap()).unwrap();
    let checkpoints = db.open_tree("checkpoints").unwrap();
    let (key, value) = checkpoints
        .iter()
        .map(Result::unwrap)
        .find(|(_, value)| serde_json::from_slice::<Value>(value).unwrap()["period"].is_null())
        .expect("a periodic checkpoint");
    let mut checkpoint: Value = serde_json::from_slice(&value).unwrap();
    checkpoint["digest"] = json!("0".repeat(64));
    checkpoints.insert(key, serde_json::to_vec(&checkpoint).unwrap()).unwrap();
    db.flush().unwrap();
}

/// A ledger of `events` deposits (multi-event pays each), sent in batches of 500.
fn big_ledger(host: &Host, id: &str, events: usize) -> Operator {
    let operator = host.multi_event_with_aff1(id);
    let started = Instant::now();
    for batch in 0..events.div_ceil(500) {
        assert!(started.elapsed() < Duration::from_secs(240), "the ledger took too long to build");
        let events: Vec<Value> = (batch * 500..((batch + 1) * 500).min(events))
            .map(|i| {
                json!({"id": format!("d{i}"), "type": "deposit", "customer": format!("c{}", i % 300), "amount": "100", "affiliate": "aff1", "occurred_at": "2026-10-15T09:00:00Z"})
            })
            .collect();
        let (status, body) = host.post_events(&operator, &json!(events));
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    operator
}

#[test]
fn a_second_verify_job_is_refused_and_a_host_killed_or_stopped_mid_job_resumes_it_where_it_stopped() {
    let (_dir, data) = data_dir();
    let args = ["--checkpoint-every", "500"];
    let host = Host::start_with(&data, &args);
    let acme = big_ledger(&host, "acme", 40_000);

    let (status, first, _) = start_job(&host, &acme);
    assert_eq!(status, StatusCode::ACCEPTED, "{first}");
    let url = first["url"].as_str().unwrap().to_owned();
    assert_eq!(first["upto"], 40_000, "{first}");
    let (status, second, _) = start_job(&host, &acme);
    assert_eq!(status, StatusCode::CONFLICT, "{second}");
    assert_eq!(second["error"], "verify_running");
    assert!(second["message"].as_str().unwrap().contains(&url), "the running job is named: {second}");

    // Killed once a resume point past the start is saved, and well before the end.
    let started = Instant::now();
    let saved = loop {
        let body = job(&host, &acme, &url);
        assert_eq!(body["status"], "running", "the job ended before the kill: make the ledger bigger: {body}");
        let saved = body["saved_through"].as_u64().unwrap();
        if saved > 0 {
            break saved;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "no resume point saved: {body}");
        std::thread::sleep(Duration::from_millis(5));
    };
    host.kill();

    let host = Host::start_with(&data, &args);
    let resumed = job(&host, &acme, &url);
    let from = resumed["resumed_from"][0].as_u64().expect("the job was resumed at start-up");
    assert!(from > saved, "resumed from {from}, saved through {saved}: {resumed}");
    assert!(resumed["verified_through"].as_u64().unwrap() >= from - 1, "the progress does not restart: {resumed}");
    let (status, refused, _) = start_job(&host, &acme);
    assert_eq!(status, StatusCode::CONFLICT, "the resumed job runs: {refused}");

    // SIGTERM mid-job: the host stops promptly, and the job stays to go on at the next start.
    let running = job(&host, &acme, &url);
    assert_eq!(running["status"], "running", "the job ended before the SIGTERM: make the ledger bigger: {running}");
    let (clean, log) = host.terminate_within(Duration::from_secs(30));
    assert!(clean, "the host exits cleanly with a verify job running: {log}");
    assert!(log.contains("a verify job stopped with the host"), "{log}");
    let host = Host::start_with(&data, &args);
    let again = job(&host, &acme, &url);
    let from_again = again["resumed_from"][1].as_u64().expect("the job was resumed again at start-up");
    assert!(from_again >= from, "resumed from {from_again} after {from}: {again}");
    let done = wait_done(&host, &acme, &url);
    assert_eq!(done["status"], "done", "{done}");
    assert_eq!(done["resumed_from"], json!([from, from_again]), "{done}");
    assert!(host.log().contains("verify resumed from a checkpoint it had confirmed"), "{}", host.log());
    // The same report as a verify from event 1, in one request.
    let sync = host.verify(&acme);
    assert_eq!(sync["events_replayed"], 40_000, "{sync}");
    assert_eq!(sync["differences"], json!([]), "{sync}");
    assert_eq!(done["report"], sync, "{done}");
}

/// The ids of the events a report finds different, in order.
fn differing(report: &Value) -> Vec<String> {
    report["differences"].as_array().unwrap().iter().map(|d| d["event_id"].as_str().unwrap().to_owned()).collect()
}

#[test]
fn a_job_from_the_last_verified_point_replays_only_what_came_after_it() {
    let (_dir, data) = data_dir();
    let args = ["--checkpoint-every", "2"];
    let host = Host::start_with(&data, &args);
    let casino = two_closed_months(&host);
    let first = verify_as_job(&host, &casino);
    assert_eq!(first["verified_from"], 1, "{first}");
    let saved = first["saved_through"].as_u64().unwrap();

    // After the job: December, and a late wager into October that restates October and November.
    wager(&host, &casino, "d1", "100", "2025-12-02T10:00:00Z");
    wager(&host, &casino, "late-oct", "200", "2025-10-20T10:00:00Z");
    close(&host, &casino, "2025-12");
    let (status, refused, _) = start_job_with(&host, &casino, Some(json!({"start": "yesterday"})));
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
    assert_eq!(refused["details"][0]["field"], "start", "{refused}");
    stop(host);

    // October's settlement (300) changed before the job's point, December's (30) after it.
    let (october, december) = tamper_settlements(&data);
    assert!(october.0 <= saved && december.0 > saved, "the job saved through {saved}: {october:?} {december:?}");

    let host = Host::start_with(&data, &args);
    let since = verify_as_job_with(&host, &casino, Some(json!({"start": "last_verified"})));
    assert_eq!(since["verified_from"], saved + 1, "{since}");
    assert_eq!(since["report"]["verified_from"], saved + 1, "{since}");
    let full = host.verify(&casino);
    assert_eq!(full["verified_from"], 1, "{full}");
    // (The late wager's adjustment too: it was computed against 300 paid, the ledger now says 999.)
    assert_eq!(differing(&full), [october.1.clone(), "late-oct".to_owned(), december.1.clone()], "{full}");
    // What came after the point is checked; what came before is as the first job found it.
    assert_eq!(differing(&since["report"]), [december.1], "{since}");
    assert_eq!(since["report"]["events_replayed"], full["events_replayed"], "{since}");
    assert_eq!(since["report"]["state_keys_differing"], full["state_keys_differing"], "{since}");

    // The checkpoint the second job's point stands on altered: the next one starts over, and
    // finds what a full verify finds.
    let point = since["saved_through"].as_u64().unwrap() + 1;
    stop(host);
    alter_checkpoint(&data, point);
    let host = Host::start_with(&data, &args);
    let again = verify_as_job_with(&host, &casino, Some(json!({"start": "last_verified"})));
    assert_eq!(again["verified_from"], 1, "{again}");
    let full = host.verify(&casino);
    assert!(
        full["checkpoints_differing"].as_array().unwrap().iter().any(|difference| difference["seq"] == point),
        "{full}"
    );
    assert_eq!(again["report"], full, "{again}");
}

/// Changes the first settlement's commission (October: 1,000 x 30 % = 300) and the last one
/// (December: 100 x 30 % = 30) on disk: each one's (sequence number, event id).
fn tamper_settlements(data: &std::path::Path) -> ((u64, String), (u64, String)) {
    let db = sled::open(data).unwrap();
    let ledger = db.open_tree("ledger").unwrap();
    let paying: Vec<(sled::IVec, Value)> = ledger
        .iter()
        .map(Result::unwrap)
        .map(|(key, value)| (key, serde_json::from_slice::<Value>(&value).unwrap()))
        .filter(|(_, entry)| entry["commissions"][0]["restates"].is_null() && entry["commissions"][0].is_object())
        .collect();
    let mut changed = Vec::new();
    for ((key, mut entry), (expected, new)) in
        [paying[0].clone(), paying[paying.len() - 1].clone()].into_iter().zip([("300", "999"), ("30", "777")])
    {
        assert_eq!(common::amount(&entry["commissions"][0]["amount"]), common::dec(expected), "{entry}");
        entry["commissions"][0]["amount"] = json!(new);
        ledger.insert(&key, serde_json::to_vec(&entry).unwrap()).unwrap();
        changed.push((
            entry["record"]["seq"].as_u64().unwrap(),
            entry["record"]["event"]["id"].as_str().unwrap().to_owned(),
        ));
    }
    db.flush().unwrap();
    let december = changed.pop().unwrap();
    (changed.pop().unwrap(), december)
}

/// Breaks the digest of the stored checkpoint at `seq`.
fn alter_checkpoint(data: &std::path::Path, seq: u64) {
    let db = sled::open(data).unwrap();
    let checkpoints = db.open_tree("checkpoints").unwrap();
    let (key, value) = checkpoints
        .iter()
        .map(Result::unwrap)
        .find(|(_, value)| serde_json::from_slice::<Value>(value).unwrap()["seq"] == seq)
        .expect("a checkpoint at the job's point");
    let mut checkpoint: Value = serde_json::from_slice(&value).unwrap();
    checkpoint["digest"] = json!("0".repeat(64));
    checkpoints.insert(key, serde_json::to_vec(&checkpoint).unwrap()).unwrap();
    db.flush().unwrap();
}
