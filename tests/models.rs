//! Commission models through the real host, with amounts worked out by hand from the field
//! guide: RevShare with and without negative carryover over closed months, a hybrid deal,
//! clawbacks that reference what they reverse, and a plugin built against the old contract.

use crate::common;

use common::{Host, Operator, amount, answer, data_dir, dec, paid, plugin_wasm};
use reqwest::StatusCode;
use rust_decimal::Decimal;
use serde_json::{Value, json};

/// (affiliate, status, what it paid) of one settlement.
type Settlement = (String, String, Vec<(String, Decimal)>);

/// What each affiliate's settlement paid, in order.
fn settled(answer: &Value) -> Vec<Settlement> {
    answer["settlements"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["affiliate"].as_str().unwrap().to_owned(), s["status"].as_str().unwrap().to_owned(), paid(s)))
        .collect()
}

fn money(host: &Host, operator: &Operator, id: &str, kind: &str, customer: &str, amount: &str, at: &str) {
    host.accept(operator, json!({"id": id, "type": kind, "customer": customer, "amount": amount, "occurred_at": at}));
}

#[test]
fn revshare_pays_monthly_ngr_with_and_without_negative_carryover() {
    let (_dir, data) = data_dir();
    let host = Host::start(&data);
    let casino = host.create_operator("casino");
    host.install_plugin(&casino, "revshare");
    host.put_affiliate(&casino, "carry", None, json!({"revshare_percent": "30"}));
    host.put_affiliate(&casino, "nocarry", None, json!({"revshare_percent": "30", "negative_carryover": "false"}));
    host.put_affiliate(&casino, "hybrid", None, json!({"revshare_percent": "20", "cpa": "50"}));
    for (customer, affiliate) in [("p1", "carry"), ("p2", "nocarry"), ("p3", "hybrid")] {
        let first = host.accept(&casino, json!({"id": format!("{customer}-d"), "type": "deposit", "customer": customer, "amount": "200", "affiliate": affiliate, "occurred_at": "2025-11-01T08:00:00Z"}));
        let expected = if affiliate == "hybrid" { vec![("hybrid".to_owned(), dec("50"))] } else { vec![] };
        assert_eq!(paid(&first), expected);
        // November: bets 10,000, wins 8,000, bonuses 500, fees 100: NGR 1,400.
        money(&host, &casino, &format!("{customer}-n1"), "wager", customer, "10000", "2025-11-02T10:00:00Z");
        money(&host, &casino, &format!("{customer}-n2"), "win", customer, "8000", "2025-11-03T10:00:00Z");
        money(&host, &casino, &format!("{customer}-n3"), "bonus", customer, "500", "2025-11-04T10:00:00Z");
        money(&host, &casino, &format!("{customer}-n4"), "fee", customer, "100", "2025-11-05T10:00:00Z");
        // December: a big winner, NGR -2,000. January: NGR +3,000.
        money(&host, &casino, &format!("{customer}-d1"), "win", customer, "2000", "2025-12-24T10:00:00Z");
        money(&host, &casino, &format!("{customer}-j1"), "wager", customer, "3000", "2026-01-10T10:00:00Z");
    }

    let (status, november) = host.close(&casino, "2025-11");
    assert_eq!(status, StatusCode::OK, "{november}");
    // 30% of 1,400 = 420; the hybrid deal's 20% = 280.
    assert_eq!(
        settled(&november),
        [
            ("carry".into(), "accepted".into(), vec![("carry".into(), dec("420"))]),
            ("hybrid".into(), "accepted".into(), vec![("hybrid".into(), dec("280"))]),
            ("nocarry".into(), "accepted".into(), vec![("nocarry".into(), dec("420"))]),
        ]
    );
    let (_, december) = host.close(&casino, "2025-12");
    assert!(settled(&december).iter().all(|(_, status, paid)| status == "accepted" && paid.is_empty()), "{december}");
    let (_, january) = host.close(&casino, "2026-01");
    // With carryover: (3,000 - 2,000) x 30% = 300; without: 3,000 x 30% = 900; hybrid 20% of 1,000.
    assert_eq!(
        settled(&january).into_iter().map(|(affiliate, _, paid)| (affiliate, paid)).collect::<Vec<_>>(),
        [
            ("carry".to_owned(), vec![("carry".to_owned(), dec("300"))]),
            ("hybrid".to_owned(), vec![("hybrid".to_owned(), dec("200"))]),
            ("nocarry".to_owned(), vec![("nocarry".to_owned(), dec("900"))]),
        ]
    );
    assert!(
        january["settlements"][0]["commissions"][0]["explanation"].as_str().unwrap().contains("-2000"),
        "{january}"
    );

    // Closing a month again pays nothing twice.
    let (status, again) = host.close(&casino, "2026-01");
    assert_eq!(status, StatusCode::OK);
    assert!(settled(&again).iter().all(|(_, status, _)| status == "duplicate"), "{again}");
    assert_eq!(
        host.totals(&casino),
        [("carry".to_owned(), dec("720")), ("hybrid".to_owned(), dec("530")), ("nocarry".to_owned(), dec("1320"))]
            .into()
    );
    // A settlement is dated on the period's last instant, so period filters find it.
    let january_ledger = host.commissions(&casino, "from=2026-01-01T00:00:00Z&to=2026-02-01T00:00:00Z");
    assert_eq!(january_ledger.len(), 3);

    let (status, body) = host.close(&casino, "2031-01");
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "a period that has not ended: {body}");
    let (status, body) = host.close(&casino, "2025-13");
    assert_eq!((status, body["details"][0]["field"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("period")));
    // Months close in order: skipping February, or going back before November, is refused.
    let (status, body) = host.close(&casino, "2026-03");
    assert_eq!((status, body["details"][0]["field"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("period")));
    assert!(body["details"][0]["problem"].as_str().unwrap().contains("close 2026-02 first"), "{body}");
    let (status, body) = host.close(&casino, "2025-10");
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body["details"][0]["problem"].as_str().unwrap().contains("comes before 2026-01"), "{body}");

    // Settlements replay like events: the whole ledger verifies.
    common::assert_verifies(&host, &casino);
}

#[test]
fn a_chargeback_claws_back_the_cpa_and_overrides_once_with_references() {
    let (_dir, data) = data_dir();
    let host = Host::start(&data);
    let broker = host.create_operator("broker");
    host.install_plugin(&broker, "multi-event");
    host.put_affiliate(&broker, "master", None, json!({"override_percent": "10"}));
    host.put_affiliate(&broker, "aff1", Some("master"), json!({"ftd_cpa": "40"}));
    host.accept(
        &broker,
        json!({"id": "d1", "type": "deposit", "customer": "c1", "amount": "500", "affiliate": "aff1"}),
    );

    let chargeback = host
        .accept(&broker, json!({"id": "cb1", "type": "chargeback", "customer": "c1", "attributes": {"deposit": "d1"}}));
    assert_eq!(paid(&chargeback), [("aff1".into(), dec("-40")), ("master".into(), dec("-4"))]);
    let ledger = host.commissions(&broker, "");
    let original = |affiliate: &str| {
        ledger.iter().find(|c| c["event_id"] == "d1" && c["affiliate"] == affiliate).unwrap()["id"].clone()
    };
    let reversal =
        |affiliate: &str| ledger.iter().find(|c| c["event_id"] == "cb1" && c["affiliate"] == affiliate).unwrap();
    assert_eq!(reversal("aff1")["reverses"], original("aff1"), "the clawback names what it reverses");
    assert_eq!(reversal("master")["reverses"], original("master"));
    assert_eq!(amount(&reversal("master")["amount"]), dec("-4"));

    // The same deposit charged back again: the plugin clawed back what it paid once, and claws
    // back nothing more (the host would refuse a second clawback: tests/reversals.rs).
    let twice = host
        .accept(&broker, json!({"id": "cb2", "type": "chargeback", "customer": "c1", "attributes": {"deposit": "d1"}}));
    assert_eq!(paid(&twice), []);
    assert_eq!(host.totals(&broker), [("aff1".to_owned(), dec("0")), ("master".to_owned(), dec("0"))].into());
    // History is not edited: the original commissions are still there, beside their reversals,
    // and their status says what happened to them.
    assert_eq!(host.commissions(&broker, "").len(), 4);
    let (_, clawed) = host.get(&broker, &format!("/commissions/{}", original("aff1").as_str().unwrap()));
    assert_eq!(clawed["status"], "reversed");
    assert_eq!(clawed["history"][0]["by"], "host");
}

#[test]
fn a_plugin_built_against_contract_0_1_0_keeps_loading_and_paying() {
    let (_dir, data) = data_dir();
    let host = Host::start(&data);
    let old = host.create_operator("old");
    let (status, uploaded) = host.upload_plugin(&old, &plugin_wasm("legacy-v0_1"), true);
    assert_eq!(status, StatusCode::CREATED, "{uploaded}");
    assert_eq!(uploaded["contract"], "0.1.0");
    host.put_affiliate(&old, "aff1", None, json!({}));
    let deposit = host.accept(&old, json!({"id": "d1", "type": "deposit", "customer": "c1", "amount": "10", "affiliate": "aff1", "occurred_at": "2025-11-02T00:00:00Z"}));
    assert_eq!(paid(&deposit), [("aff1".into(), dec("3"))]);
    // 0.1.0 has no settle: closing a period pays nothing and fails nothing.
    let (status, closed) = host.close(&old, "2025-11");
    assert_eq!(status, StatusCode::OK);
    assert_eq!(settled(&closed), [("aff1".into(), "accepted".into(), vec![])]);
    // And the current SDK's plugins say 0.2.0.
    let (_, current) = host.upload_plugin(&old, &plugin_wasm("multi-event"), false);
    assert_eq!(current["contract"], "0.2.0");
}

#[test]
fn amounts_in_other_currencies_are_converted_at_the_operators_rate_and_the_rate_is_kept() {
    let (_dir, data) = data_dir();
    let host = Host::start(&data);
    let broker = host.create_operator("broker");
    host.install_plugin(&broker, "multi-event");
    host.put_affiliate(&broker, "aff1", None, json!({"ftd_min_deposit": "105"}));
    let deposit = json!({"id": "d1", "type": "deposit", "customer": "c1", "amount": "100.00", "currency": "EUR", "affiliate": "aff1"});

    let (status, refused) = host.post_events(&broker, &deposit);
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
    assert_eq!(refused["details"][0]["field"], "currency");
    assert!(refused["message"].as_str().unwrap().contains("fx-rates"), "says the fix: {refused}");
    assert_eq!(host.get(&broker, "/events/d1").0, StatusCode::NOT_FOUND);

    let set_rates = |rates: Value| {
        answer(
            host.client.put(host.url("/v1/operators/broker/fx-rates")).bearer_auth(&broker.api_key).json(&rates).send(),
        )
    };
    let (status, body) = set_rates(json!({"rates": {"EUR": "1.10", "GBP": "-1"}, "source": "ECB"}));
    assert_eq!((status, body["details"][0]["field"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("rates.GBP")));
    let (status, _) = set_rates(json!({"rates": {"EUR": "1.10"}, "source": "ECB 2026-11-20"}));
    assert_eq!(status, StatusCode::OK);

    // 100.00 EUR x 1.10 = 110.00 USD: over the 105 USD minimum, so it is the paying FTD.
    let accepted = host.accept(&broker, deposit);
    assert_eq!(paid(&accepted), [("aff1".into(), dec("10"))]);
    assert_eq!(accepted["commissions"][0]["explanation"], "first deposit: CPA 10 on deposit 110.0000 USD");
    let (_, event) = host.get(&broker, "/events/d1");
    assert_eq!((event["amount"].as_str(), event["currency"].as_str()), (Some("100.00"), Some("EUR")), "as sent");
    assert_eq!(event["fx"]["rate"], "1.10");
    assert_eq!(event["fx"]["source"], "ECB 2026-11-20");
    assert_eq!(event["commissions"][0]["fx_rate"], "1.10");

    // A later rate changes nothing already converted; a replay converts as it was.
    set_rates(json!({"rates": {"EUR": "2"}, "source": "a later day"}));
    let report = host.verify(&broker);
    assert_eq!((report["events_matching"].as_u64(), report["differences"].clone()), (Some(1), json!([])), "{report}");
}

#[test]
fn commission_statuses_move_with_an_audit_trail_and_respect_the_hold() {
    let (_dir, data) = data_dir();
    let host = Host::start(&data);
    let acme = host.create_operator("acme");
    host.install_plugin(&acme, "multi-event");
    host.put_affiliate(&acme, "quick", None, json!({}));
    host.put_affiliate(&acme, "held", None, json!({"hold_days": "30"}));
    let quick = host
        .accept(&acme, json!({"id": "d1", "type": "deposit", "customer": "c1", "amount": "50", "affiliate": "quick"}));
    let held = host
        .accept(&acme, json!({"id": "d2", "type": "deposit", "customer": "c2", "amount": "50", "affiliate": "held"}));
    let quick_id = quick["commissions"][0]["id"].as_str().unwrap().to_owned();
    let held_id = held["commissions"][0]["id"].as_str().unwrap().to_owned();
    let move_to = |id: &str, status: &str| {
        answer(
            host.client
                .post(host.url(&format!("/v1/operators/acme/commissions/{id}/status")))
                .bearer_auth(&acme.api_key)
                .json(&json!({"status": status, "note": format!("to {status}")}))
                .send(),
        )
    };

    assert_eq!(host.commissions(&acme, "status=pending").len(), 2, "every commission starts pending");
    assert_eq!(move_to(&quick_id, "approved").0, StatusCode::OK);
    assert_eq!(move_to(&quick_id, "paid").0, StatusCode::OK);
    let (status, refused) = move_to(&quick_id, "approved");
    assert_eq!((status, refused["error"].as_str()), (StatusCode::CONFLICT, Some("status_transition")), "{refused}");
    assert_eq!(refused["message"], format!("{quick_id} is paid; it cannot become approved"));

    let (status, on_hold) = move_to(&held_id, "approved");
    assert_eq!((status, on_hold["error"].as_str()), (StatusCode::CONFLICT, Some("on_hold")), "{on_hold}");
    assert_eq!(move_to(&held_id, "rejected").0, StatusCode::OK, "a held commission can still be rejected");

    let (_, audited) = host.get(&acme, &format!("/commissions/{quick_id}"));
    assert_eq!(audited["status"], "paid");
    let trail: Vec<(&str, &str, &str)> = audited["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|change| {
            (change["status"].as_str().unwrap(), change["by"].as_str().unwrap(), change["note"].as_str().unwrap())
        })
        .collect();
    assert_eq!(trail, [("approved", "operator", "to approved"), ("paid", "operator", "to paid")]);
    let at = audited["history"][0]["at"].as_str().unwrap_or_default();
    assert!(at.contains('T') && at.ends_with('Z'), "a status move's time is RFC 3339: {audited}");
    assert_eq!(host.commissions(&acme, "status=paid").len(), 1);
    assert_eq!(host.commissions(&acme, "status=rejected").len(), 1);
    assert_eq!(move_to(&quick_id, "reversed").0, StatusCode::CONFLICT, "only the host reverses");
    assert_eq!(move_to("cm_nope", "paid").0, StatusCode::NOT_FOUND);
}
