//! Replays that write nothing: verify reproduces the ledger from the stored events, and a
//! backtest shows what another plugin version would have paid, worked out here by hand.

use crate::common;

use common::{Host, data_dir, dec, plugin_wasm};
use reqwest::StatusCode;
use serde_json::{Value, json};

fn post(host: &Host, operator: &common::Operator, path: &str, body: Value) -> Value {
    let (status, answer) = common::answer(
        host.client
            .post(host.url(&format!("/v1/operators/{}{path}", operator.id)))
            .bearer_auth(&operator.api_key)
            .json(&body)
            .send(),
    );
    assert_eq!(status, StatusCode::OK, "{answer}");
    answer
}

#[test]
fn verify_reproduces_the_ledger_and_a_backtest_shows_the_hand_worked_difference() {
    let (_dir, data) = data_dir();
    let host = Host::start(&data);
    let acme = host.create_operator("acme");
    host.install_plugin(&acme, "multi-event");
    host.put_affiliate(&acme, "aff1", None, json!({}));
    host.put_affiliate(&acme, "aff2", None, json!({"ftd_cpa": "15"}));
    for event in [
        json!({"id": "d1", "type": "deposit", "customer": "c1", "amount": "100", "affiliate": "aff1", "occurred_at": "2026-10-15T09:00:00Z"}),
        json!({"id": "t1", "type": "trade", "customer": "c1", "attributes": {"lots": "4"}, "occurred_at": "2026-10-20T09:00:00Z"}),
        json!({"id": "t2", "type": "trade", "customer": "c1", "attributes": {"lots": "7"}, "occurred_at": "2026-11-02T09:00:00Z"}),
        json!({"id": "d2", "type": "deposit", "customer": "c2", "amount": "60", "affiliate": "aff2", "occurred_at": "2026-11-05T09:00:00Z"}),
        json!({"id": "r3", "type": "registration", "customer": "c3", "occurred_at": "2026-11-06T09:00:00Z"}),
    ] {
        host.accept(&acme, event);
    }
    // Paid: d1 10 (aff1), t1 5 (aff1), t2 20 (aff1, 11 lots), d2 15 (aff2); r3 is unattributed.

    let report = post(&host, &acme, "/verify", json!({}));
    assert_eq!(report["events_replayed"], 4, "{report}");
    assert_eq!(report["events_matching"], 4, "{report}");
    assert_eq!(report["differences"], json!([]));
    assert_eq!(report["state_keys_differing"], json!([]), "the replayed plugin state is the stored one");

    // A candidate version, uploaded but not activated: the test plugin that pays 1 per event.
    let (status, uploaded) = host.upload_plugin(&acme, &plugin_wasm("hostile"), false);
    assert_eq!(status, StatusCode::CREATED, "{uploaded}");
    assert_eq!(uploaded["version"], 2);
    let november =
        post(&host, &acme, "/plugins/2/replay", json!({"from": "2026-11-01T00:00:00Z", "to": "2026-12-01T00:00:00Z"}));
    // November holds t2 (paid 20, would pay 1) and d2 (paid 15, would pay 1); r3 is unattributed.
    assert_eq!(
        (november["events_compared"].as_u64(), november["events_changed"].as_u64()),
        (Some(2), Some(2)),
        "{november}"
    );
    let totals: Vec<(String, rust_decimal::Decimal, rust_decimal::Decimal, rust_decimal::Decimal)> =
        november["affiliates"]
            .as_array()
            .unwrap()
            .iter()
            .map(|total| {
                (
                    total["affiliate"].as_str().unwrap().to_owned(),
                    common::amount(&total["paid"]),
                    common::amount(&total["would_pay"]),
                    common::amount(&total["difference"]),
                )
            })
            .collect();
    assert_eq!(
        totals,
        [("aff1".into(), dec("20"), dec("1"), dec("-19")), ("aff2".into(), dec("15"), dec("1"), dec("-14"))]
    );
    assert_eq!(november["changes"][0]["event_id"], "t2");
    assert_eq!(november["changes"][0]["occurred_at"], "2026-11-02T09:00:00Z", "RFC 3339, as in the event views");
    assert_eq!(november["changes"][0]["paid"][0]["rule"], "volume-bonus");
    assert_eq!(november["changes"][0]["replayed"][0]["rule"], "flat");

    // Nothing of the replays was written.
    assert_eq!(host.commissions(&acme, "").len(), 4);
    assert_eq!(host.totals(&acme), [("aff1".to_owned(), dec("35")), ("aff2".to_owned(), dec("15"))].into());
    let (status, _) = common::answer(
        host.client.post(host.url("/v1/operators/acme/plugins/9/replay")).bearer_auth(&acme.api_key).send(),
    );
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[test]
fn a_shadow_version_runs_beside_the_active_one_and_reports_where_they_disagree() {
    let (_dir, data) = data_dir();
    let host = Host::start(&data);
    let acme = host.create_operator("acme");
    host.install_plugin(&acme, "multi-event");
    host.put_affiliate(&acme, "aff1", None, json!({}));
    host.accept(&acme, json!({"id": "d1", "type": "deposit", "customer": "c1", "amount": "100", "affiliate": "aff1"}));
    host.accept(&acme, json!({"id": "t1", "type": "trade", "customer": "c1", "attributes": {"lots": "4"}}));

    // The candidate (the test plugin paying a flat 1) shadows from the start of the ledger on.
    let (status, uploaded) = host.upload_plugin(&acme, &plugin_wasm("hostile"), false);
    assert_eq!(status, StatusCode::CREATED, "{uploaded}");
    let (status, body) = common::answer(
        host.client
            .put(host.url("/v1/operators/acme/shadow"))
            .bearer_auth(&acme.api_key)
            .json(&json!({"version": 2}))
            .send(),
    );
    assert_eq!(status, StatusCode::OK, "{body}");

    // Live traffic is paid by the active version alone, even when the shadow fails on it.
    let t2 = host.accept(&acme, json!({"id": "t2", "type": "trade", "customer": "c1", "attributes": {"lots": "7"}}));
    assert_eq!(common::paid(&t2), [("aff1".into(), dec("20"))]);
    let looping = host.accept(
        &acme,
        json!({"id": "t3", "type": "trade", "customer": "c1", "attributes": {"lots": "1", "attack": "loop"}}),
    );
    assert_eq!(common::paid(&looping), [], "over 10 lots already paid; the shadow's loop changes nothing live");

    let report = loop {
        let (status, report) = host.get(&acme, "/plugins/2/shadow-report");
        assert_eq!(status, StatusCode::OK, "{report}");
        if report["ledger_entries_followed"] == report["ledger_entries"] && report["ledger_entries"] == 4 {
            break report;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    // Paid: d1 10, t1 5, t2 20, t3 0 = 35. The shadow: 1 each for d1, t1, t2; t3 out of fuel.
    assert_eq!(report["events_differing"], 4, "{report}");
    let totals = &report["affiliates"][0];
    assert_eq!(
        (common::amount(&totals["paid"]), common::amount(&totals["would_pay"]), common::amount(&totals["difference"])),
        (dec("35"), dec("3"), dec("-32"))
    );
    let t3 = report["differences"].as_array().unwrap().iter().find(|d| d["event_id"] == "t3").unwrap();
    assert_eq!(t3["replay_failure"]["kind"], "out_of_fuel");
    let (_, event) = host.get(&acme, "/events/t3");
    assert_eq!(t3["occurred_at"], event["occurred_at"], "RFC 3339, as in the event view: {t3}");
    assert!(t3["occurred_at"].as_str().is_some_and(|at| at.ends_with('Z')), "{t3}");
    assert_eq!(host.commissions(&acme, "").len(), 3, "the shadow paid nothing");
}
