//! One operator cannot fill the disk the others share: an event keeps references to the deal
//! versions of its referral chain, not copies of them, so a deep chain of large deals costs a
//! few KB per event; and the admin can cap what an operator stores (`stored_bytes`), past which
//! its writes are refused with a 403 `quota_exceeded`, nothing half-written, while the other
//! operators go on.

use crate::common;

use common::{ADMIN_TOKEN, Host, Operator, answer, assert_verifies, data_dir, dec};
use reqwest::StatusCode;
use serde_json::{Map, Value, json};

/// The chain's depth: the deepest the host allows.
const LEVELS: usize = 16;

/// A deal as large as an operator may write (16 keys of 1,000 bytes; 16 KiB in all at most),
/// distinct per affiliate so that nothing is shared between them. `terms` come first.
fn large_deal(affiliate: &str, terms: &[(&str, &str)]) -> Map<String, Value> {
    let mut deal: Map<String, Value> = terms.iter().map(|(key, value)| (key.to_string(), json!(value))).collect();
    for index in 0..16 - terms.len() {
        let value =
            format!("{affiliate}:{index}:").chars().chain(std::iter::repeat('x')).take(1000).collect::<String>();
        deal.insert(format!("term{index:02}"), json!(value));
    }
    deal
}

/// `l00` at the top down to `l15`, each with a large deal; `l15` pays a CPA of `cpa`. Returns
/// the deals, top first.
fn deep_chain(host: &Host, operator: &Operator, cpa: &str) -> Vec<Map<String, Value>> {
    let mut deals = Vec::new();
    for level in 0..LEVELS {
        let id = format!("l{level:02}");
        let parent = (level > 0).then(|| format!("l{:02}", level - 1));
        let terms: &[(&str, &str)] = if level == LEVELS - 1 { &[("ftd_cpa", cpa)] } else { &[] };
        let deal = large_deal(&id, terms);
        host.put_affiliate(operator, &id, parent.as_deref(), Value::Object(deal.clone()));
        deals.push(deal);
    }
    deals
}

/// First deposits of new customers of `affiliate`, in batches of 100.
fn deposits(host: &Host, operator: &Operator, affiliate: &str, ids: std::ops::Range<usize>) {
    let ids: Vec<usize> = ids.collect();
    for batch in ids.chunks(100) {
        let events: Vec<Value> = batch
            .iter()
            .map(|n| json!({"id": format!("d{n}"), "type": "deposit", "customer": format!("c{n}"), "amount": "100", "affiliate": affiliate}))
            .collect();
        let (status, answer) = host.post_events(operator, &Value::Array(events));
        assert_eq!(status, StatusCode::OK, "{answer}");
        for result in answer["results"].as_array().unwrap() {
            assert_eq!(result["status"], "accepted", "{result}");
        }
    }
}

/// The operator's `commission_host_stored_bytes` in `/metrics`.
fn stored_bytes(host: &Host, operator: &str) -> u64 {
    let prefix = format!("commission_host_stored_bytes{{operator=\"{operator}\"}} ");
    let metrics = host.metrics();
    let line = metrics.lines().find(|line| line.starts_with(&prefix));
    line.and_then(|line| line[prefix.len()..].trim().parse().ok())
        .unwrap_or_else(|| panic!("no {prefix} in the metrics:\n{metrics}"))
}

fn put_limits(host: &Host, operator: &str, limits: Value) -> (StatusCode, Value) {
    answer(
        host.client
            .put(host.url(&format!("/v1/operators/{operator}/limits")))
            .bearer_auth(ADMIN_TOKEN)
            .json(&limits)
            .send(),
    )
}

#[test]
fn an_event_on_a_deep_chain_of_large_deals_costs_a_few_kb_on_disk() {
    let (_dir, data) = data_dir();
    let host = Host::start(&data);
    let acme = host.create_operator("acme");
    host.install_plugin(&acme, "multi-event");
    let deals = deep_chain(&host, &acme, "7");
    // The same deposits to one affiliate with no deal terms, to compare with.
    let plain = host.multi_event_with_aff1("plain");

    // sled preallocates its files: measure the growth over many events, after some.
    deposits(&host, &acme, "l15", 0..100);
    deposits(&host, &plain, "aff1", 0..100);
    let events = 400;
    let cost = |operator: &Operator, affiliate: &str| {
        let (disk, stored) = (common::disk_usage(&data), stored_bytes(&host, &operator.id));
        deposits(&host, operator, affiliate, 100..100 + events);
        let per_event = |before: u64, after: u64| after.saturating_sub(before) / events as u64;
        (per_event(disk, common::disk_usage(&data)), per_event(stored, stored_bytes(&host, &operator.id)))
    };
    let (plain_disk, plain_stored) = cost(&plain, "aff1");
    let (deep_disk, deep_stored) = cost(&acme, "l15");
    println!(
        "per event, on disk and as counted: {deep_disk} and {deep_stored} bytes on a {LEVELS}-level chain of 16 KB \
         deals; {plain_disk} and {plain_stored} bytes for one affiliate with no deal terms"
    );
    // A copy of the chain's deals per event would be 256 KB each; a reference is about 100 bytes.
    assert!(
        deep_stored <= plain_stored + 2 * 1024,
        "{deep_stored} bytes stored per event, {plain_stored} without deals"
    );
    assert!(deep_disk <= plain_disk + 8 * 1024, "{deep_disk} bytes on disk per event, {plain_disk} without deals");

    // The event still shows the deal terms it was evaluated with, whole.
    let (status, event) = host.get(&acme, "/events/d150");
    assert_eq!(status, StatusCode::OK, "{event}");
    let chain = event["referral_chain"].as_array().unwrap();
    let shown: Vec<(&str, &Value)> =
        chain.iter().map(|link| (link["affiliate"].as_str().unwrap(), &link["deal"])).collect();
    let expected: Vec<(String, Value)> = deals
        .iter()
        .enumerate()
        .rev()
        .map(|(level, deal)| (format!("l{level:02}"), Value::Object(deal.clone())))
        .collect();
    assert_eq!(shown.len(), LEVELS);
    for ((affiliate, deal), (expected_affiliate, expected_deal)) in shown.iter().zip(&expected) {
        assert_eq!(affiliate, expected_affiliate);
        assert_eq!(*deal, expected_deal, "the deal of {affiliate}");
    }
    // What one GET can weigh: the chain's deals at their cap (16 x 16 KiB), and little else.
    let size = event.to_string().len();
    assert!(size < 300 * 1024, "GET of one event is {size} bytes");
    assert_eq!(event["commissions"][0]["amount"].as_str().map(dec), Some(dec("7")), "{}", event["commissions"]);

    // A new deal applies to new events; the old ones keep, show and replay the one they saw.
    let mut new_deal = deals[LEVELS - 1].clone();
    new_deal.insert("ftd_cpa".into(), json!("9"));
    host.put_affiliate(&acme, "l15", Some("l14"), Value::Object(new_deal));
    let paid = host.accept(
        &acme,
        json!({"id": "after", "type": "deposit", "customer": "new", "amount": "100", "affiliate": "l15"}),
    );
    assert_eq!(paid["commissions"][0]["amount"].as_str().map(dec), Some(dec("9")), "{paid}");
    let (_, first) = host.get(&acme, "/events/d0");
    assert_eq!(first["referral_chain"][0]["deal"]["ftd_cpa"], "7", "d0 keeps the deal it saw");
    assert_eq!(assert_verifies(&host, &acme), 100 + events as u64 + 1);
}

#[test]
fn an_operator_over_its_stored_bytes_quota_is_refused_with_nothing_written_and_others_go_on() {
    let (_dir, data) = data_dir();
    let host = Host::start(&data);
    let acme = host.multi_event_with_aff1("acme");
    let other = host.multi_event_with_aff1("other");
    let deposit = |n: usize| json!({"id": format!("d{n}"), "type": "deposit", "customer": format!("c{n}"), "amount": "100", "affiliate": "aff1"});
    host.accept(&acme, deposit(0));

    // Room for a few more deposits.
    let quota = stored_bytes(&host, "acme") + 3_000;
    let (status, limits) = put_limits(&host, "acme", json!({"stored_bytes": quota}));
    assert_eq!(status, StatusCode::OK, "{limits}");
    assert_eq!(limits["stored_bytes"], quota);

    let mut accepted = 1;
    let refused = loop {
        let (status, answer) = host.post_events(&acme, &deposit(accepted));
        if status != StatusCode::OK {
            break (status, answer);
        }
        assert_eq!(answer["status"], "accepted", "{answer}");
        accepted += 1;
        assert!(accepted < 20, "3,000 bytes held {accepted} deposits");
    };
    let (status, body) = refused;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"], "quota_exceeded", "{body}");
    let message = body["message"].as_str().unwrap();
    for named in ["\"acme\"", &quota.to_string(), "PUT /v1/operators/acme/limits", "stored_bytes"] {
        assert!(message.contains(named), "the refusal names {named}: {body}");
    }
    assert_eq!(body["details"][0]["field"], "stored_bytes", "{body}");
    assert!(stored_bytes(&host, "acme") <= quota, "the quota held");

    // Nothing of the refused event was written, nor of a batch or an affiliate after it.
    let refused_id = format!("d{accepted}");
    assert_eq!(host.get(&acme, &format!("/events/{refused_id}")).0, StatusCode::NOT_FOUND);
    let used = stored_bytes(&host, "acme");
    let (status, body) = host.post_events(&acme, &json!([deposit(100), deposit(101)]));
    assert_eq!((status, body["error"].as_str()), (StatusCode::FORBIDDEN, Some("quota_exceeded")), "{body}");
    let (status, body) = answer(
        host.client
            .put(host.url("/v1/operators/acme/affiliates/aff2"))
            .bearer_auth(&acme.api_key)
            .json(&json!({"parent": null, "deal": {"ftd_cpa": "5", "notes": "x".repeat(1_000)}}))
            .send(),
    );
    assert_eq!((status, body["error"].as_str()), (StatusCode::FORBIDDEN, Some("quota_exceeded")), "{body}");
    for id in ["d100", "d101"] {
        assert_eq!(host.get(&acme, &format!("/events/{id}")).0, StatusCode::NOT_FOUND);
    }
    assert_eq!(host.get(&acme, "/affiliates/aff2").0, StatusCode::NOT_FOUND);
    assert_eq!(stored_bytes(&host, "acme"), used, "nothing was counted either");
    assert_eq!(host.commissions(&acme, "").len(), accepted);

    // Another operator is not touched by acme's quota.
    for n in 0..5 {
        host.accept(&other, deposit(n));
    }

    // Raised, the quota lets the refused event in, once.
    let (status, _) = put_limits(&host, "acme", json!({"stored_bytes": quota * 2}));
    assert_eq!(status, StatusCode::OK);
    host.accept(&acme, deposit(accepted));
    assert_eq!(host.commissions(&acme, "").len(), accepted + 1);
    assert_eq!(assert_verifies(&host, &acme), accepted as u64 + 1);
}

#[test]
fn the_stored_bytes_quota_is_admin_only_and_checked() {
    let (_dir, data) = data_dir();
    let host = Host::start(&data);
    let acme = host.multi_event_with_aff1("acme");
    let (status, body) = answer(
        host.client
            .put(host.url("/v1/operators/acme/limits"))
            .bearer_auth(&acme.api_key)
            .json(&json!({"stored_bytes": 1_000_000_000u64}))
            .send(),
    );
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (status, body) = put_limits(&host, "acme", json!({"stored_bytes": 0}));
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["details"][0]["field"], "stored_bytes", "{body}");
    // Without a quota, the count is still kept and shown.
    host.accept(&acme, json!({"id": "d1", "type": "deposit", "customer": "c1", "amount": "100", "affiliate": "aff1"}));
    assert!(stored_bytes(&host, "acme") > 0);
}

/// Posts one event of the hostile plugin's default kind (it counts the customer's events in one
/// key of its state, `customer:{customer}:events`, and pays 1); the answer's status.
fn counted_event(host: &Host, operator: &Operator, id: &str, customer: &str) -> String {
    let event = json!({"id": id, "type": "deposit", "customer": customer, "affiliate": "aff1"});
    let (status, body) = host.post_events(operator, &event);
    assert_eq!(status, StatusCode::OK, "{body}");
    body["status"].as_str().unwrap().to_owned()
}

/// The stored event's failure kind, if it failed.
fn failure_kind(host: &Host, operator: &Operator, id: &str) -> Option<String> {
    let (status, event) = host.get(operator, &format!("/events/{id}"));
    assert_eq!(status, StatusCode::OK, "{event}");
    event["failure"]["kind"].as_str().map(str::to_owned)
}

#[test]
fn an_event_past_the_state_quota_is_stored_as_failed_writing_nothing_and_retried_once_raised() {
    // Each customer's key and value take 19 bytes (`customer:cN:events` and `1`): 5 fit in 100.
    let quota = ["--state-quota-bytes", "100"];
    let (_dir, data) = data_dir();
    let host = Host::start_with(&data, &quota);
    let operator = host.create_operator("hoarder");
    host.install_plugin(&operator, "hostile");
    host.put_affiliate(&operator, "aff1", None, json!({}));

    let statuses: Vec<String> =
        (0..8).map(|n| counted_event(&host, &operator, &format!("e{n}"), &format!("c{n}"))).collect();
    assert_eq!(statuses, ["accepted"; 5].into_iter().chain(["failed"; 3]).collect::<Vec<_>>());
    for n in 5..8 {
        assert_eq!(failure_kind(&host, &operator, &format!("e{n}")).as_deref(), Some("state_quota"));
    }
    let (_, failed) = host.get(&operator, "/events/e5");
    let message = failed["failure"]["message"].as_str().unwrap();
    assert!(message.contains("quota of 100") && message.contains(r#"{"state_bytes": N}"#), "{message}");
    assert_eq!(failed["commissions"], json!([]), "a refused event pays nothing: {failed}");
    // A write that keeps the state as large is never refused: c0's count goes from 1 to 2.
    assert_eq!(counted_event(&host, &operator, "again", "c0"), "accepted");
    assert_eq!(host.commissions(&operator, "").len(), 6);

    // After a crash the count is made again from the ledger: the quota still holds.
    host.kill();
    let host = Host::start_with(&data, &quota);
    assert_eq!(counted_event(&host, &operator, "late", "c9"), "failed");
    assert_eq!(failure_kind(&host, &operator, "late").as_deref(), Some("state_quota"));

    // The operator's own quota overrides the host's; the failed events then go through.
    let (status, limits) = put_limits(&host, "hoarder", json!({"state_bytes": 1_000}));
    assert_eq!((status, limits["state_bytes"].as_u64()), (StatusCode::OK, Some(1_000)), "{limits}");
    let (status, report) = answer(
        host.client.post(host.url("/v1/operators/hoarder/events/retry-failed")).bearer_auth(&operator.api_key).send(),
    );
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!((report["retried"].as_u64(), report["accepted"].as_u64()), (Some(4), Some(4)), "{report}");
    assert_eq!(host.commissions(&operator, "").len(), 10);
    assert_verifies(&host, &operator);
    let (status, body) = put_limits(&host, "hoarder", json!({"state_bytes": 0}));
    assert_eq!((status, body["details"][0]["field"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("state_bytes")));
}
