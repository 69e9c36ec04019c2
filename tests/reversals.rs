//! Reversals through the real host (issue 19, items 2, 9 and 10): what a clawback does to the
//! commission it reverses, by that commission's status (README, "Reversals"); a reversal's
//! currency and the rounding of amounts to minor units; and the multi-event plugin clawing back
//! what it paid, whatever the deal says by the time of the chargeback. Amounts worked by hand.

use crate::common;

use common::{Host, Operator, amount, data_dir, dec, paid};
use reqwest::StatusCode;
use rust_decimal::Decimal;
use serde_json::{Value, json};

/// `POST /v1/operators/{op}/commissions/{id}/status`.
fn move_status(host: &Host, operator: &Operator, id: &str, status: &str) -> (StatusCode, Value) {
    common::answer(
        host.client
            .post(host.url(&format!("/v1/operators/{}/commissions/{id}/status", operator.id)))
            .bearer_auth(&operator.api_key)
            .json(&json!({"status": status, "note": "by the test"}))
            .send(),
    )
}

fn moved(host: &Host, operator: &Operator, id: &str, status: &str) {
    let (code, body) = move_status(host, operator, id, status);
    assert_eq!(code, StatusCode::OK, "{id} -> {status}: {body}");
}

/// `GET /v1/operators/{op}/commissions/{id}`.
fn commission(host: &Host, operator: &Operator, id: &str) -> Value {
    let (status, body) = host.get(operator, &format!("/commissions/{id}"));
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

/// The ids of an event's commissions, in order.
fn ids(answer: &Value) -> Vec<String> {
    answer["commissions"].as_array().unwrap().iter().map(|c| c["id"].as_str().unwrap().to_owned()).collect()
}

/// What the listing filtered by `status` adds up to.
fn total(host: &Host, operator: &Operator, status: &str) -> Decimal {
    host.commissions(operator, &format!("status={status}")).iter().map(|c| amount(&c["amount"])).sum()
}

/// An operator on the hostile test plugin, which pays and claws back as events tell it, with
/// `aff1`.
fn hostile(host: &Host) -> Operator {
    let operator = host.create_operator("told");
    host.install_plugin(&operator, "hostile");
    host.put_affiliate(&operator, "aff1", None, json!({}));
    operator
}

fn pay(host: &Host, operator: &Operator, id: &str, amount: &str, currency: Option<&str>) -> Value {
    let mut attributes = json!({"attack": "pay", "amount": amount});
    if let Some(currency) = currency {
        attributes["currency"] = json!(currency);
    }
    host.accept(
        operator,
        json!({"id": id, "type": "sale", "customer": id, "affiliate": "aff1", "attributes": attributes}),
    )
}

/// A clawback of `of`'s commission, of `amount`, sent for `of`'s customer.
fn claw_back(host: &Host, operator: &Operator, id: &str, of: &str, amount: &str, currency: Option<&str>) -> Value {
    let mut attributes = json!({"attack": "clawback", "of": of, "amount": amount});
    if let Some(currency) = currency {
        attributes["currency"] = json!(currency);
    }
    let (status, answer) =
        host.post_events(operator, &json!({"id": id, "type": "refund", "customer": of, "attributes": attributes}));
    assert_eq!(status, StatusCode::OK, "{answer}");
    answer
}

// 19.2: a reversal's effect depends on what became of the commission it reverses.

#[test]
fn a_rejected_cpa_clawed_back_is_not_payable() {
    let (_dir, data) = data_dir();
    let host = Host::start(&data);
    let acme = host.multi_event_with_aff1("acme");
    let deposit = host
        .accept(&acme, json!({"id": "d1", "type": "deposit", "customer": "c1", "amount": "100", "affiliate": "aff1"}));
    let cpa = ids(&deposit)[0].clone();
    moved(&host, &acme, &cpa, "rejected");

    let chargeback = host
        .accept(&acme, json!({"id": "cb1", "type": "chargeback", "customer": "c1", "attributes": {"deposit": "d1"}}));
    assert_eq!(paid(&chargeback), [("aff1".into(), dec("-10"))]);
    let reversal = ids(&chargeback)[0].clone();

    // The CPA was never paid: it stays rejected, and its clawback is rejected with it.
    let original = commission(&host, &acme, &cpa);
    assert_eq!(original["status"], "rejected", "{original}");
    assert_eq!(original["clawed_back"]["outcome"], "nothing_to_claw_back", "{original}");
    let clawback = commission(&host, &acme, &reversal);
    assert_eq!(clawback["status"], "rejected", "{clawback}");
    assert!(clawback["history"][0]["note"].as_str().unwrap().contains("nothing to claw back"), "{clawback}");
    for status in ["approved", "paid"] {
        let (code, refused) = move_status(&host, &acme, &reversal, status);
        assert_eq!((code, refused["error"].as_str()), (StatusCode::CONFLICT, Some("status_transition")), "{refused}");
    }
    // Nothing is owed either way.
    for status in ["pending", "approved", "paid"] {
        assert_eq!(total(&host, &acme, status), Decimal::ZERO, "{status}");
    }
    assert_eq!(total(&host, &acme, "rejected"), Decimal::ZERO, "10 rejected, and its -10 clawback");
    common::check_ledger_invariants(&host, &acme);
    common::assert_verifies(&host, &acme);
}

#[test]
fn a_paid_original_stays_paid_and_its_reversal_is_a_payable_deduction() {
    let (_dir, data) = data_dir();
    let host = Host::start(&data);
    let acme = host.multi_event_with_aff1("acme");
    let deposit = host
        .accept(&acme, json!({"id": "d1", "type": "deposit", "customer": "c1", "amount": "100", "affiliate": "aff1"}));
    let cpa = ids(&deposit)[0].clone();
    moved(&host, &acme, &cpa, "approved");
    moved(&host, &acme, &cpa, "paid");

    let chargeback = host
        .accept(&acme, json!({"id": "cb1", "type": "chargeback", "customer": "c1", "attributes": {"deposit": "d1"}}));
    let reversal = ids(&chargeback)[0].clone();

    // The 10 went out: the CPA stays paid, and the -10 is owed back, a deduction from the next
    // payment, moved like any commission.
    let original = commission(&host, &acme, &cpa);
    assert_eq!(original["status"], "paid", "{original}");
    assert_eq!(
        (original["clawed_back"]["by"].as_str(), original["clawed_back"]["outcome"].as_str()),
        (Some(reversal.as_str()), Some("deducted")),
        "{original}"
    );
    assert_eq!(amount(&original["clawed_back"]["amount"]), dec("-10"));
    assert_eq!(total(&host, &acme, "paid"), dec("10"));
    assert_eq!(total(&host, &acme, "pending"), dec("-10"));
    assert_eq!(commission(&host, &acme, &reversal)["status"], "pending");
    moved(&host, &acme, &reversal, "approved");
    moved(&host, &acme, &reversal, "paid");
    assert_eq!(total(&host, &acme, "paid"), Decimal::ZERO, "10 paid, then 10 deducted");
    assert_eq!(host.commissions(&acme, "status=paid").len(), 2);
    assert!(host.commissions(&acme, "status=reversed").is_empty());
    common::check_ledger_invariants(&host, &acme);
}

#[test]
fn a_partial_reversal_of_a_pending_commission_leaves_the_rest_payable() {
    let (_dir, data) = data_dir();
    let host = Host::start(&data);
    let told = hostile(&host);
    let original = ids(&pay(&host, &told, "p1", "10", None))[0].clone();
    let answer = claw_back(&host, &told, "r1", "p1", "-4", None);
    assert_eq!(answer["status"], "accepted", "{answer}");
    let reversal = ids(&answer)[0].clone();

    // 10 not paid yet, 4 of it taken back: 6 is still owed, and both entries say so.
    let listed = commission(&host, &told, &original);
    assert_eq!(listed["status"], "pending", "{listed}");
    assert_eq!(listed["clawed_back"]["outcome"], "netted", "{listed}");
    assert_eq!(amount(&listed["clawed_back"]["amount"]), dec("-4"));
    let netted = commission(&host, &told, &reversal);
    assert_eq!((netted["status"].as_str(), netted["moves_with"].as_str()), (Some("pending"), Some(original.as_str())));
    assert_eq!(total(&host, &told, "pending"), dec("6"));
    assert!(host.commissions(&told, "status=reversed").is_empty());

    // The reversal moves with its original, never alone.
    let (code, refused) = move_status(&host, &told, &reversal, "approved");
    assert_eq!((code, refused["error"].as_str()), (StatusCode::CONFLICT, Some("status_transition")), "{refused}");
    assert!(refused["message"].as_str().unwrap().contains(&format!("moves with {original}")), "{refused}");
    moved(&host, &told, &original, "approved");
    assert_eq!(total(&host, &told, "approved"), dec("6"));
    moved(&host, &told, &original, "paid");
    assert_eq!(total(&host, &told, "paid"), dec("6"), "10 paid less the 4 clawed back");
    assert_eq!(commission(&host, &told, &reversal)["status"], "paid");

    // Rejecting an original rejects the reversal netted against it: nothing is owed back.
    let second = ids(&pay(&host, &told, "p2", "10", None))[0].clone();
    let second_reversal = ids(&claw_back(&host, &told, "r2", "p2", "-3", None))[0].clone();
    moved(&host, &told, &second, "rejected");
    assert_eq!(commission(&host, &told, &second_reversal)["status"], "rejected");
    assert_eq!(total(&host, &told, "rejected"), dec("7"));
    assert_eq!(total(&host, &told, "pending"), Decimal::ZERO);
    common::check_ledger_invariants(&host, &told);
}

#[test]
fn a_full_reversal_of_an_unpaid_commission_voids_both_sides() {
    let (_dir, data) = data_dir();
    let host = Host::start(&data);
    let acme = host.multi_event_with_aff1("acme");
    let deposit = host
        .accept(&acme, json!({"id": "d1", "type": "deposit", "customer": "c1", "amount": "100", "affiliate": "aff1"}));
    let cpa = ids(&deposit)[0].clone();
    moved(&host, &acme, &cpa, "approved");
    let chargeback = host
        .accept(&acme, json!({"id": "cb1", "type": "chargeback", "customer": "c1", "attributes": {"deposit": "d1"}}));
    let reversal = ids(&chargeback)[0].clone();

    for id in [&cpa, &reversal] {
        assert_eq!(commission(&host, &acme, id)["status"], "reversed", "{id}");
        for status in ["approved", "paid", "rejected"] {
            let (code, refused) = move_status(&host, &acme, id, status);
            assert_eq!(code, StatusCode::CONFLICT, "{id} -> {status}: {refused}");
        }
    }
    assert_eq!(commission(&host, &acme, &cpa)["clawed_back"]["outcome"], "voided");
    assert_eq!(host.commissions(&acme, "status=reversed").len(), 2);
    for status in ["pending", "approved", "paid", "rejected"] {
        assert!(host.commissions(&acme, &format!("status={status}")).is_empty(), "{status}");
    }
    common::check_ledger_invariants(&host, &acme);
}

/// Not a finding: the host's own check that a commission is clawed back once, across events,
/// now that the multi-event plugin claws back nothing on a second chargeback.
#[test]
fn a_commission_is_clawed_back_once_across_events() {
    let (_dir, data) = data_dir();
    let host = Host::start(&data);
    let told = hostile(&host);
    pay(&host, &told, "p1", "10", None);
    assert_eq!(claw_back(&host, &told, "r1", "p1", "-4", None)["status"], "accepted");
    let twice = claw_back(&host, &told, "r2", "p1", "-4", None);
    assert_eq!(
        (twice["status"].as_str(), twice["failure"]["kind"].as_str()),
        (Some("failed"), Some("invalid_result")),
        "{twice}"
    );
    assert!(twice["failure"]["message"].as_str().unwrap().contains("reversed already"), "{twice}");
}

// 19.9: currency and scale.

#[test]
fn a_reversal_in_another_currency_is_refused() {
    let (_dir, data) = data_dir();
    let host = Host::start(&data);
    let told = hostile(&host);
    let original = ids(&pay(&host, &told, "p1", "10", None))[0].clone();

    let refused = claw_back(&host, &told, "r1", "p1", "-10", Some("EUR"));
    assert_eq!(
        (refused["status"].as_str(), refused["failure"]["kind"].as_str()),
        (Some("failed"), Some("invalid_result")),
        "{refused}"
    );
    let message = refused["failure"]["message"].as_str().unwrap();
    assert!(message.contains(&format!("reverses {original} paid in USD, but is in EUR")), "{message}");
    assert_eq!(commission(&host, &told, &original)["status"], "pending", "nothing was clawed back");
    assert_eq!(host.commissions(&told, "").len(), 1);

    // In the original's currency, the same clawback goes through.
    let accepted = claw_back(&host, &told, "r2", "p1", "-10", Some("USD"));
    assert_eq!(accepted["status"], "accepted", "{accepted}");
}

#[test]
fn amounts_are_rounded_once_to_the_currencys_minor_units() {
    let (_dir, data) = data_dir();
    let host = Host::start(&data);
    let told = hostile(&host);
    // Half away from zero, to the ISO 4217 exponent: 2 for USD, 0 for JPY, 3 for KWD.
    for (id, exact, currency, stored) in [
        ("usd", "10.005", "USD", "10.01"),
        ("usd-down", "10.0049", "USD", "10.00"),
        ("jpy", "2.5", "JPY", "3"),
        ("kwd", "1.2345", "KWD", "1.235"),
        ("cents", "7.25", "USD", "7.25"),
    ] {
        let answer = pay(&host, &told, id, exact, Some(currency));
        let entry = &answer["commissions"][0];
        assert_eq!(entry["amount"], stored, "{exact} {currency}: {answer}");
        let kept = commission(&host, &told, entry["id"].as_str().unwrap());
        assert_eq!(kept["amount"], stored);
        let unrounded = if exact == stored { Value::Null } else { json!(exact) };
        assert_eq!(kept["unrounded_amount"], unrounded, "the plugin's own figure, where rounding changed it");
    }

    // The multi-event plugin's override of 10% on a CPA of 100.05 is 10.005: paid 10.01, and
    // its chargeback claws back exactly the 10.01 paid, not 10.005 or 10.00.
    let acme = host.create_operator("acme");
    host.install_plugin(&acme, "multi-event");
    host.put_affiliate(&acme, "master", None, json!({"override_percent": "10"}));
    host.put_affiliate(&acme, "aff1", Some("master"), json!({"ftd_cpa": "100.05"}));
    let deposit = host
        .accept(&acme, json!({"id": "d1", "type": "deposit", "customer": "c1", "amount": "500", "affiliate": "aff1"}));
    assert_eq!(paid(&deposit), [("aff1".into(), dec("100.05")), ("master".into(), dec("10.01"))]);
    assert_eq!(deposit["commissions"][1]["amount"], "10.01");
    let chargeback = host
        .accept(&acme, json!({"id": "cb1", "type": "chargeback", "customer": "c1", "attributes": {"deposit": "d1"}}));
    assert_eq!(paid(&chargeback), [("aff1".into(), dec("-100.05")), ("master".into(), dec("-10.01"))]);
    assert_eq!(host.totals(&acme), [("aff1".to_owned(), Decimal::ZERO), ("master".to_owned(), Decimal::ZERO)].into());
    let override_id = ids(&deposit)[1].clone();
    assert_eq!(commission(&host, &acme, &override_id)["status"], "reversed", "reversed in full: both void");
    common::check_ledger_invariants(&host, &acme);
    common::assert_verifies(&host, &acme);
}

// 19.10: the multi-event plugin claws back what it paid.

/// What [`override_changed_between`] leaves: the data directory, the host, the operator, the
/// deposit's answer and the chargeback's.
type Changed = (tempfile::TempDir, Host, Operator, Value, Value);

/// `master` (override `percent_at_deposit`) above `aff1` (CPA 40); a deposit, the override
/// changed to `percent_at_chargeback`, then the chargeback.
fn override_changed_between(percent_at_deposit: &str, percent_at_chargeback: &str) -> Changed {
    let (dir, data) = data_dir();
    let host = Host::start(&data);
    let broker = host.create_operator("broker");
    host.install_plugin(&broker, "multi-event");
    host.put_affiliate(&broker, "master", None, json!({"override_percent": percent_at_deposit}));
    host.put_affiliate(&broker, "aff1", Some("master"), json!({"ftd_cpa": "40"}));
    let deposit = host.accept(
        &broker,
        json!({"id": "d1", "type": "deposit", "customer": "c1", "amount": "500", "affiliate": "aff1"}),
    );
    host.put_affiliate(&broker, "master", None, json!({"override_percent": percent_at_chargeback}));
    let chargeback = host
        .accept(&broker, json!({"id": "cb1", "type": "chargeback", "customer": "c1", "attributes": {"deposit": "d1"}}));
    (dir, host, broker, deposit, chargeback)
}

#[test]
fn a_raised_override_percent_claws_back_what_was_paid() {
    // 10% of 40 = 4 paid; at 25% today's deal would claw back 10, more than was paid.
    let (_dir, host, broker, deposit, chargeback) = override_changed_between("10", "25");
    assert_eq!(paid(&deposit), [("aff1".into(), dec("40")), ("master".into(), dec("4"))]);
    assert_eq!(paid(&chargeback), [("aff1".into(), dec("-40")), ("master".into(), dec("-4"))]);
    let master = &chargeback["commissions"][1];
    let stored = commission(&host, &broker, master["id"].as_str().unwrap());
    assert_eq!(stored["reverses"], deposit["commissions"][1]["id"], "{stored}");
    assert_eq!(master["explanation"], "chargeback of first deposit d1: override-l1 4 clawed back");
    assert_eq!(host.totals(&broker), [("aff1".to_owned(), Decimal::ZERO), ("master".to_owned(), Decimal::ZERO)].into());
    common::check_ledger_invariants(&host, &broker);
    common::assert_verifies(&host, &broker);
}

#[test]
fn a_lowered_override_percent_claws_back_what_was_paid() {
    // 25% of 40 = 10 paid; at 5% today's deal would claw back only 2, leaving 8 paid for a
    // deposit that was charged back.
    let (_dir, host, broker, deposit, chargeback) = override_changed_between("25", "5");
    assert_eq!(paid(&deposit), [("aff1".into(), dec("40")), ("master".into(), dec("10"))]);
    assert_eq!(paid(&chargeback), [("aff1".into(), dec("-40")), ("master".into(), dec("-10"))]);
    assert_eq!(host.totals(&broker), [("aff1".to_owned(), Decimal::ZERO), ("master".to_owned(), Decimal::ZERO)].into());
    common::check_ledger_invariants(&host, &broker);
    common::assert_verifies(&host, &broker);
}
