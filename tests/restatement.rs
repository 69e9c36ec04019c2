//! Restatements and replays that cannot complete, through the real host with the reference
//! plugins built from source (issue 19, items 3 and 8):
//!
//! - a late event whose restatement meets a settlement that no longer runs (the operator's
//!   fuel lowered since) is stored as failed, naming that settlement, and writes nothing: the live
//!   state is kept, the next close pays what it should, verify says the replay is incomplete,
//!   and `retry-failed` restates it once the limit is raised again;
//! - totals of amounts near the decimal's maximum are a clear 422, never a 500, and the host
//!   keeps serving.

use crate::common;

use common::{Host, Operator, answer, data_dir, dec, paid};
use reqwest::StatusCode;
use serde_json::{Value, json};

fn fuel_used(host: &Host, operator: &Operator, event: &str) -> u64 {
    let (status, body) = host.get(operator, &format!("/events/{event}"));
    assert_eq!(status, StatusCode::OK, "{body}");
    body["fuel_used"].as_u64().unwrap_or_else(|| panic!("no fuel_used: {body}"))
}

fn event(host: &Host, operator: &Operator, body: Value) -> Value {
    let (status, answer) = host.post_events(operator, &body);
    assert_eq!(status, StatusCode::OK, "{answer}");
    answer
}

fn close(host: &Host, operator: &Operator, period: &str) -> Value {
    let (status, body) = host.close(operator, period);
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

fn retry_failed(host: &Host, operator: &Operator) -> Value {
    let (status, report) = answer(
        host.client
            .post(host.url(&format!("/v1/operators/{}/events/retry-failed", operator.id)))
            .bearer_auth(&operator.api_key)
            .send(),
    );
    assert_eq!(status, StatusCode::OK, "{report}");
    report
}

#[test]
fn a_restatement_whose_replay_fails_keeps_the_live_state_and_fails_the_late_event_until_retried() {
    let (_dir, data) = data_dir();
    let host = Host::start(&data);
    let casino = host.create_operator("casino");
    host.install_plugin(&casino, "revshare");
    host.put_affiliate(&casino, "aff", None, json!({"revshare_percent": "30"}));

    // September: NGR 1,000 pays 300 at the close. October: a wager of 2,000, not closed yet.
    let at = |day: &str| format!("{day}T10:00:00Z");
    host.accept(
        &casino,
        json!({"id": "p1-d", "type": "deposit", "customer": "p1", "amount": "100", "affiliate": "aff", "occurred_at": at("2025-09-01")}),
    );
    host.accept(
        &casino,
        json!({"id": "r0", "type": "registration", "customer": "p0", "affiliate": "aff", "occurred_at": at("2025-09-02")}),
    );
    host.accept(
        &casino,
        json!({"id": "s1", "type": "wager", "customer": "p1", "amount": "1000", "occurred_at": at("2025-09-03")}),
    );
    assert_eq!(paid(&close(&host, &casino, "2025-09")["settlements"][0]), [("aff".into(), dec("300"))]);
    host.accept(
        &casino,
        json!({"id": "o1", "type": "wager", "customer": "p1", "amount": "2000", "occurred_at": at("2025-10-05")}),
    );

    // The operator's fuel is lowered below what September's settlement takes (fuel is
    // deterministic: the same event always takes the same), but not below a registration's.
    let settlement = "commission-host.period:2025-09:aff";
    let registration = fuel_used(&host, &casino, "r0");
    let settle = fuel_used(&host, &casino, settlement);
    assert!(registration < settle, "a registration ({registration}) must take less fuel than a settlement ({settle})");
    let lowered = registration + (settle - registration) / 2;
    host.put_limits(&casino, json!({"fuel": lowered}));

    // A late registration (September is closed; the policy is `adjust`): it evaluates live
    // within the lowered fuel, but its restatement runs September's settlement again from the
    // month's checkpoint, and the settlement no longer runs. Restating without it would leave
    // September's carryover unknown: the late event fails instead, naming the settlement.
    let late = json!({"id": "late-reg", "type": "registration", "customer": "p2", "affiliate": "aff", "occurred_at": at("2025-09-20")});
    let failed = event(&host, &casino, late.clone());
    assert_eq!(failed["status"], "failed", "{failed}");
    assert_eq!(failed["failure"]["kind"], "restatement", "{failed}");
    let message = failed["failure"]["message"].as_str().unwrap();
    assert!(message.contains(settlement) && message.contains("out of fuel"), "{message}");
    assert_eq!(failed["commissions"], json!([]), "{failed}");
    // Sent again: the same failed event, nothing more written.
    let again = event(&host, &casino, late);
    assert_eq!(again["status"], "duplicate", "{again}");
    let (_, stored) = host.get(&casino, "/events/late-reg");
    assert_eq!((stored["status"].as_str(), stored["attempts"].as_u64()), (Some("failed"), Some(1)), "{stored}");

    // Verify cannot replay the ledger under these limits (the wager s1 runs out of fuel too),
    // and says so.
    let report = host.verify(&casino);
    assert_eq!(report["complete"], false, "{report}");
    let differences = report["differences"].as_array().unwrap();
    assert!(
        differences.iter().any(|d| d["event_id"] == "s1" && d["replay_failure"]["kind"] == "out_of_fuel"),
        "{report}"
    );

    // The limit raised again (the defaults): October closes on the live state it had,
    // NGR 2,000 x 30% = 600.
    host.put_limits(&casino, json!({}));
    assert_eq!(paid(&close(&host, &casino, "2025-10")["settlements"][0]), [("aff".into(), dec("600"))]);

    // retry-failed restates the late registration now: a registration changes no month's NGR,
    // so it pays no adjustment; and a late wager of p2 in September after it restates
    // September to NGR 2,000: 600, 300 more than was paid.
    let report = retry_failed(&host, &casino);
    assert_eq!((report["retried"].as_u64(), report["accepted"].as_u64()), (Some(1), Some(1)), "{report}");
    let (_, stored) = host.get(&casino, "/events/late-reg");
    assert_eq!((stored["status"].as_str(), stored["failure"].is_null()), (Some("accepted"), true), "{stored}");
    let wager = host.accept(
        &casino,
        json!({"id": "late-wager", "type": "wager", "customer": "p2", "amount": "1000", "occurred_at": at("2025-09-21")}),
    );
    assert_eq!(paid(&wager), [("aff".into(), dec("300"))], "{wager}");
    assert_eq!(host.totals(&casino), [("aff".to_owned(), dec("1200"))].into(), "300 + 600 + 300");
    common::assert_verifies(&host, &casino);
    let report = host.verify(&casino);
    assert_eq!(report["complete"], true, "{report}");
}

/// 50,000,000,000,000,000,000,000,000,000: two of these overflow a decimal (at most about 7.9e28).
const HUGE: &str = "50000000000000000000000000000";

#[test]
fn totals_that_overflow_a_decimal_are_a_clear_error_not_a_500() {
    let (_dir, data) = data_dir();
    let host = Host::start(&data);
    let casino = host.create_operator("casino");
    let version = host.install_plugin(&casino, "cpa");
    host.put_affiliate(&casino, "aff", None, json!({"cpa": HUGE}));
    // Two first deposits: each pays the CPA, each a valid amount; their sum is not.
    for customer in ["c1", "c2"] {
        let answer = host.accept(
            &casino,
            json!({"id": format!("{customer}-d"), "type": "deposit", "customer": customer, "amount": "10", "affiliate": "aff", "occurred_at": "2025-09-01T10:00:00Z"}),
        );
        assert_eq!(paid(&answer), [("aff".into(), dec(HUGE))], "{answer}");
    }

    // A backtest totals what was paid per affiliate: a 422 that says which total, not a 500.
    let (status, body) = answer(
        host.client
            .post(host.url(&format!("/v1/operators/casino/plugins/{version}/replay")))
            .bearer_auth(&casino.api_key)
            .send(),
    );
    assert_eq!((status, body["error"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("amount_overflow")), "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("aff") && message.contains("USD") && message.contains("overflows"), "{message}");

    // A shadow's report totals alike.
    let (status, body) = answer(
        host.client
            .put(host.url("/v1/operators/casino/shadow"))
            .bearer_auth(&casino.api_key)
            .json(&json!({"version": version}))
            .send(),
    );
    assert_eq!(status, StatusCode::OK, "{body}");
    let started = std::time::Instant::now();
    let report = loop {
        let (status, body) = host.get(&casino, &format!("/plugins/{version}/shadow-report"));
        if status != StatusCode::OK || body["ledger_entries_followed"] == body["ledger_entries"] {
            break (status, body);
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(30), "the shadow did not catch up: {body}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(
        (report.0, report.1["error"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("amount_overflow")),
        "{}",
        report.1
    );

    // The host keeps serving, and the ledger itself is sound.
    let answer = host.accept(
        &casino,
        json!({"id": "c3-r", "type": "registration", "customer": "c3", "affiliate": "aff", "occurred_at": "2025-09-02T10:00:00Z"}),
    );
    assert_eq!(answer["commissions"], json!([]), "{answer}");
    common::assert_verifies(&host, &casino);
}
