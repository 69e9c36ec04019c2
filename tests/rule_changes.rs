//! Rule changes in time: a version activated from a date, for every event from then or only
//! for customers who start from then, decided at the boundary to the millisecond, with the
//! reason recorded on each commission, and nothing recorded before ever changed.

use crate::common;

use common::{Host, Operator, answer, data_dir, dec, paid, plugin_wasm};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// An operator on multi-event (v1) with the flat-1 test plugin uploaded as v2, not active.
fn operator_with_candidate(host: &Host, id: &str) -> Operator {
    let operator = host.create_operator(id);
    host.install_plugin(&operator, "multi-event");
    let (status, body) = host.upload_plugin(&operator, &plugin_wasm("hostile"), false);
    assert_eq!((status, body["version"].as_u64()), (StatusCode::CREATED, Some(2)), "{body}");
    host.put_affiliate(&operator, "aff1", None, json!({}));
    host.put_affiliate(&operator, "aff2", None, json!({}));
    operator
}

fn activate(host: &Host, operator: &Operator, body: Value) -> (StatusCode, Value) {
    answer(
        host.client
            .post(host.url(&format!("/v1/operators/{}/plugins/2/activate", operator.id)))
            .bearer_auth(&operator.api_key)
            .json(&body)
            .send(),
    )
}

fn deposit(id: &str, customer: &str, affiliate: &str, at: &str) -> Value {
    json!({"id": id, "type": "deposit", "customer": customer, "amount": "100", "affiliate": affiliate, "occurred_at": at})
}

#[test]
fn a_version_effective_from_a_date_takes_the_events_from_that_instant() {
    let (_dir, data) = data_dir();
    let host = Host::start(&data);
    let acme = operator_with_candidate(&host, "acme");
    let before = host.accept(&acme, deposit("early", "c0", "aff1", "2026-05-20T00:00:00Z"));
    let (status, body) = activate(&host, &acme, json!({"effective_from": "2026-06-01T00:00:00Z"}));
    assert_eq!(status, StatusCode::OK, "{body}");

    // v1 pays the 10 FTD CPA; v2 pays a flat 1.
    for (id, at, version, amount) in [
        ("just-before", "2026-05-31T23:59:59.999Z", 1, "10"),
        ("exactly-at", "2026-06-01T00:00:00Z", 2, "1"),
        ("just-after", "2026-06-01T00:00:00.001Z", 2, "1"),
    ] {
        let answer = host.accept(&acme, deposit(id, id, "aff1", at));
        assert_eq!(paid(&answer), [("aff1".to_owned(), dec(amount))], "{id}");
        let (_, event) = host.get(&acme, &format!("/events/{id}"));
        assert_eq!(event["plugin_version"], version, "{id}: {event}");
        let commission = &event["commissions"][0];
        assert_eq!(commission["plugin_version"], version);
        let reason = commission["version_reason"].as_str().unwrap();
        match version {
            1 => assert_eq!(reason, "v1: the operator's active version"),
            _ => assert_eq!(reason, "v2: activated from 2026-06-01T00:00:00Z for events from then on"),
        }
    }
    // What was recorded before the change is as it was.
    let (_, early) = host.get(&acme, "/events/early");
    assert_eq!(paid(&early), paid(&before));
    assert_eq!(early["plugin_version"], 1);

    let (status, body) = activate(&host, &acme, json!({"effective_from": "someday"}));
    assert_eq!(
        (status, body["details"][0]["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("effective_from"))
    );
    let (status, _) = activate(&host, &acme, json!({"effective_from": "2026-06-01T00:00:00Z", "affiliate": "ghost"}));
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
}

#[test]
fn a_version_for_new_customers_of_one_affiliate_leaves_existing_customers_on_theirs() {
    let (_dir, data) = data_dir();
    let host = Host::start(&data);
    let beta = operator_with_candidate(&host, "beta");
    // Registered in May: an existing customer by June.
    host.accept(&beta, json!({"id": "r-old", "type": "registration", "customer": "old", "affiliate": "aff2", "occurred_at": "2026-05-15T00:00:00Z"}));
    let (status, body) = activate(
        &host,
        &beta,
        json!({"effective_from": "2026-06-01T00:00:00Z", "scope": "new_customers", "affiliate": "aff2"}),
    );
    assert_eq!(status, StatusCode::OK, "{body}");

    let old = host.accept(&beta, deposit("d-old", "old", "aff2", "2026-07-01T00:00:00Z"));
    assert_eq!(paid(&old), [("aff2".to_owned(), dec("10"))], "an existing customer stays on v1");
    let new = host.accept(&beta, deposit("d-new", "new", "aff2", "2026-06-02T00:00:00Z"));
    assert_eq!(paid(&new), [("aff2".to_owned(), dec("1"))], "a customer who started in June gets v2");
    let other = host.accept(&beta, deposit("d-other", "other", "aff1", "2026-06-02T00:00:00Z"));
    assert_eq!(paid(&other), [("aff1".to_owned(), dec("10"))], "aff1's customers are not in the scope");
    let (_, event) = host.get(&beta, "/events/d-new");
    assert_eq!(
        event["version_reason"],
        "v2: activated from 2026-06-01T00:00:00Z for customers who started from then on, of affiliate aff2"
    );
}
