//! Payout runs end to end, worked by hand on the multi-event plugin (10 on a first deposit, 5 on
//! a first trade, a parent's `override_percent` of its child's, a chargeback clawing back the
//! first deposit): a month approved in one call, its hold respected; a payment under a
//! reference that pays nothing twice; the payout report netting a deduction, and carrying a
//! negative balance into the next month. And the affiliate keys: what one opens, and that
//! another affiliate's lines and the operator's routes stay shut to it.

use crate::common;

use std::collections::BTreeMap;

use common::{Host, Operator, amount, answer, data_dir, dec};
use reqwest::StatusCode;
use rust_decimal::Decimal;
use serde_json::{Value, json};

/// `aff1` (10% override on its sub-affiliate `sub1`), `sub1`, and `aff2` with a 30-day hold.
fn acme(host: &Host) -> Operator {
    let acme = host.create_operator("acme");
    host.install_plugin(&acme, "multi-event");
    host.put_affiliate(&acme, "aff1", None, json!({"override_percent": "10"}));
    host.put_affiliate(&acme, "sub1", Some("aff1"), json!({}));
    host.put_affiliate(&acme, "aff2", None, json!({"hold_days": "30"}));
    acme
}

/// A host on a fresh directory, with [`acme`].
fn started() -> (tempfile::TempDir, Host, Operator) {
    let (dir, data) = data_dir();
    let host = Host::start(&data);
    let acme = acme(&host);
    (dir, host, acme)
}

fn event(id: &str, kind: &str, customer: &str, day: &str, extra: Value) -> Value {
    let mut event = json!({"id": id, "type": kind, "customer": customer, "occurred_at": format!("{day}T12:00:00Z")});
    event.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    event
}

fn deposit(id: &str, customer: &str, affiliate: &str, day: &str) -> Value {
    event(id, "deposit", customer, day, json!({"amount": "100", "affiliate": affiliate}))
}

fn post(host: &Host, key: &str, path: &str, body: Value) -> (StatusCode, Value) {
    answer(host.client.post(host.url(&format!("/v1/operators/acme{path}"))).bearer_auth(key).json(&body).send())
}

fn get(host: &Host, key: &str, path: &str) -> (StatusCode, Value) {
    answer(host.client.get(host.url(&format!("/v1/operators/acme{path}"))).bearer_auth(key).send())
}

fn ok(host: &Host, key: &str, path: &str, body: Value) -> Value {
    let (status, answer) = post(host, key, path, body);
    assert_eq!(status, StatusCode::OK, "{path}: {answer}");
    answer
}

/// (event, affiliate, amount) of each line of a list of payout lines, in order.
fn listed(lines: &Value) -> Vec<(String, String, Decimal)> {
    let text = |line: &Value, field: &str| line[field].as_str().unwrap().to_owned();
    lines
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (text(l, "event_id"), text(l, "affiliate"), amount(&l["amount"])))
        .collect()
}

fn line(event: &str, affiliate: &str, amount: &str) -> (String, String, Decimal) {
    (event.to_owned(), affiliate.to_owned(), dec(amount))
}

/// The report's balances by affiliate: (carried_in, approved, balance, payable, carried_forward,
/// pending, paid).
fn report(host: &Host, key: &str, query: &str) -> BTreeMap<String, [Decimal; 7]> {
    let (status, report) = get(host, key, &format!("/payouts/report?{query}"));
    assert_eq!(status, StatusCode::OK, "{report}");
    let fields = ["carried_in", "approved", "balance", "payable", "carried_forward", "pending", "paid"];
    report["balances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            assert_eq!(b["currency"], "USD");
            (b["affiliate"].as_str().unwrap().to_owned(), fields.map(|field| amount(&b[field])))
        })
        .collect()
}

fn figures(values: [&str; 7]) -> [Decimal; 7] {
    values.map(dec)
}

/// The moves to `paid` in a commission's trail, with their references.
fn paid_moves(host: &Host, key: &str, id: &str) -> Vec<Value> {
    let (status, commission) = get(host, key, &format!("/commissions/{id}"));
    assert_eq!(status, StatusCode::OK, "{commission}");
    let history = commission["history"].as_array().unwrap();
    history.iter().filter(|change| change["status"] == "paid").map(|change| change["reference"].clone()).collect()
}

#[test]
fn a_payout_run_approves_past_holds_pays_once_and_carries_a_negative_balance() {
    let (_dir, host, acme) = started();
    let key = acme.api_key.as_str();
    // October: aff1 earns 10 (d1) and 5 (t1); d2's 10 is charged back before approval (void);
    // sub1 earns 10 on d3 and aff1 1 on it (10%); aff2 earns 10 on d4, held 30 days.
    for event in [
        deposit("d1", "c1", "aff1", "2026-10-02"),
        event("t1", "trade", "c1", "2026-10-03", json!({"attributes": {"lots": "1"}})),
        deposit("d2", "c2", "aff1", "2026-10-04"),
        event("cb2", "chargeback", "c2", "2026-10-05", json!({"attributes": {"deposit": "d2"}})),
        deposit("d3", "c3", "sub1", "2026-10-06"),
        deposit("d4", "c4", "aff2", "2026-10-07"),
    ] {
        host.accept(&acme, event);
    }

    let approved = ok(&host, key, "/periods/2026-10/approve", json!({"note": "October checked"}));
    assert_eq!(
        listed(&approved["approved"]),
        [line("d1", "aff1", "10"), line("t1", "aff1", "5"), line("d3", "sub1", "10"), line("d3", "aff1", "1")],
        "{approved}"
    );
    assert_eq!(listed(&approved["held"]), [line("d4", "aff2", "10")], "inside aff2's 30 days");
    let hold_until = approved["held"][0]["hold_until"].as_str().unwrap();
    assert!(hold_until.ends_with('Z') && hold_until.contains('T'), "RFC 3339: {hold_until}");
    let d2 = host.commissions(&acme, "affiliate=aff1").into_iter().find(|c| c["event_id"] == "d2").unwrap();
    let (_, d2) = get(&host, key, &format!("/commissions/{}", d2["id"].as_str().unwrap()));
    assert_eq!(d2["status"], "reversed", "a voided commission is not approved");
    let trail = d2["history"].as_array().unwrap();
    assert!(trail.iter().all(|change| change["status"] != "approved"), "{d2}");
    // The single move's rule holds too: aff2's is still on hold.
    let d4 = approved["held"][0]["id"].as_str().unwrap();
    let (status, refused) = post(&host, key, &format!("/commissions/{d4}/status"), json!({"status": "approved"}));
    assert_eq!((status, refused["error"].as_str()), (StatusCode::CONFLICT, Some("on_hold")), "{refused}");
    // A second run approves nothing more.
    let again = ok(&host, key, "/periods/2026-10/approve", json!({}));
    assert_eq!((again["approved"].as_array().unwrap().len(), again["held"].as_array().unwrap().len()), (0, 1));

    // What to pay for October: aff1 10 + 5 + 1 = 16, sub1 10; aff2 nothing approved yet.
    let october = report(&host, key, "period=2026-10");
    assert_eq!(october["aff1"], figures(["0", "16", "16", "16", "0", "0", "0"]));
    assert_eq!(october["sub1"], figures(["0", "10", "10", "10", "0", "0", "0"]));
    assert_eq!(october["aff2"], figures(["0", "0", "0", "0", "0", "10", "0"]));

    let payment = json!({"reference": "wire-2026-10", "period": "2026-10"});
    let paid = ok(&host, key, "/payouts", payment.clone());
    assert_eq!(paid["duplicate"], false);
    assert_eq!(
        listed(&paid["paid"]),
        [line("d1", "aff1", "10"), line("t1", "aff1", "5"), line("d3", "aff1", "1"), line("d3", "sub1", "10")],
        "{paid}"
    );
    let totals: Vec<(String, Decimal)> = paid["totals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["affiliate"].as_str().unwrap().to_owned(), amount(&t["amount"])))
        .collect();
    assert_eq!(totals, [("aff1".to_owned(), dec("16")), ("sub1".to_owned(), dec("10"))]);
    let d1 = paid["paid"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(paid_moves(&host, key, &d1), [json!("wire-2026-10")], "the move is in the trail, with its reference");

    // The same payment again (a retry after a lost answer): the same payout, nothing paid twice.
    let retried = ok(&host, key, "/payouts", payment);
    assert_eq!((retried["duplicate"].as_bool(), &retried["paid"]), (Some(true), &paid["paid"]), "{retried}");
    assert_eq!(paid_moves(&host, key, &d1).len(), 1, "paid once");
    // A new reference for the same month finds nothing left to pay.
    let second = ok(&host, key, "/payouts", json!({"reference": "wire-2026-10-b", "period": "2026-10"}));
    assert_eq!(second["paid"], json!([]), "{second}");
    // The reference with another selection is refused, naming why.
    let (status, reused) = post(&host, key, "/payouts", json!({"reference": "wire-2026-10", "commission_ids": [d4]}));
    assert_eq!((status, reused["error"].as_str()), (StatusCode::CONFLICT, Some("reference_used")), "{reused}");
    // Naming commissions: only approved ones are paid; aff2's pending one is refused, unpaid.
    let named = ok(&host, key, "/payouts", json!({"reference": "wire-x", "commission_ids": [d4, d1]}));
    assert_eq!(named["paid"], json!([]), "{named}");
    let refused: Vec<&str> = named["refused"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(refused, [d4, d1.as_str()]);
    assert_eq!(paid_moves(&host, key, &d1).len(), 1, "paid once");
    let october = report(&host, key, "period=2026-10");
    assert_eq!(october["aff1"], figures(["0", "0", "0", "0", "0", "0", "16"]), "paid, nothing payable");

    // November: c1's first deposit, paid, is charged back: a deduction of 10 for aff1, and
    // nothing else to pay it. Its balance, -10, is not paid but carried forward.
    host.accept(&acme, event("cb1", "chargeback", "c1", "2026-11-03", json!({"attributes": {"deposit": "d1"}})));
    let approved = ok(&host, key, "/periods/2026-11/approve", json!({}));
    assert_eq!(listed(&approved["approved"]), [line("cb1", "aff1", "-10")]);
    let november = report(&host, key, "period=2026-11");
    assert_eq!(november["aff1"], figures(["0", "-10", "-10", "0", "-10", "0", "0"]));
    let paid = ok(&host, key, "/payouts", json!({"reference": "wire-2026-11", "period": "2026-11"}));
    assert_eq!(paid["paid"], json!([]), "a negative balance is not paid: {paid}");
    assert_eq!(paid["carried_forward"][0]["affiliate"], "aff1");
    assert_eq!(amount(&paid["carried_forward"][0]["amount"]), dec("-10"));

    // December: aff1 earns 10 + 5 on c5. Carried in -10: 5 to pay, and the deduction is settled.
    host.accept(&acme, deposit("d5", "c5", "aff1", "2026-12-02"));
    host.accept(&acme, event("t5", "trade", "c5", "2026-12-03", json!({"attributes": {"lots": "2"}})));
    ok(&host, key, "/periods/2026-12/approve", json!({"affiliate": "aff1"}));
    let december = report(&host, key, "period=2026-12&affiliate=aff1");
    assert_eq!(december.keys().collect::<Vec<_>>(), ["aff1"]);
    assert_eq!(december["aff1"], figures(["-10", "15", "5", "5", "0", "0", "0"]));
    let paid =
        ok(&host, key, "/payouts", json!({"reference": "wire-2026-12", "period": "2026-12", "affiliate": "aff1"}));
    assert_eq!(listed(&paid["paid"]), [line("cb1", "aff1", "-10"), line("d5", "aff1", "10"), line("t5", "aff1", "5")]);
    assert_eq!(amount(&paid["totals"][0]["amount"]), dec("5"));
    let december = report(&host, key, "period=2026-12");
    assert_eq!(december["aff1"], figures(["0", "0", "0", "0", "0", "0", "15"]));
    common::check_ledger_invariants(&host, &acme);
}

#[test]
fn payout_requests_name_the_bad_field() {
    let (_dir, host, acme) = started();
    let key = acme.api_key.as_str();
    for (body, field) in [
        (json!({"reference": "", "period": "2026-10"}), "reference"),
        (json!({"reference": "r"}), "commission_ids"),
        (json!({"reference": "r", "period": "2026-10", "commission_ids": ["cm_1"]}), "commission_ids"),
        (json!({"reference": "r", "period": "October"}), "period"),
        (json!({"reference": "r", "commission_ids": ["cm_0000000000000063_0000"]}), "commission_ids[0]"),
        (json!({"reference": "r", "period": "2026-10", "affiliate": "Not An Id"}), "affiliate"),
        (json!({"reference": "r", "period": "2026-10", "extra": 1}), "extra"),
    ] {
        let (status, refused) = post(&host, key, "/payouts", body.clone());
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {refused}");
        let named: Vec<&str> =
            refused["details"].as_array().unwrap().iter().map(|d| d["field"].as_str().unwrap()).collect();
        assert!(named.contains(&field), "{body}: {refused}");
    }
    let (status, refused) = post(&host, key, "/periods/2026-13/approve", json!({}));
    assert_eq!((status, refused["details"][0]["field"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("period")));
    let (status, refused) = get(&host, key, "/payouts/report");
    assert_eq!((status, refused["details"][0]["field"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("period")));
}

#[test]
fn an_affiliate_key_sees_its_own_lines_and_nothing_else() {
    let (_dir, host, acme) = started();
    let key = acme.api_key.as_str();
    for event in [
        deposit("d1", "c1", "aff1", "2026-10-02"),
        deposit("d3", "c3", "sub1", "2026-10-06"),
        deposit("d4", "c4", "aff2", "2026-10-07"),
    ] {
        host.accept(&acme, event);
    }
    let (status, issued) = post(&host, key, "/affiliates/aff1/keys", json!({}));
    assert_eq!(status, StatusCode::CREATED, "{issued}");
    let portal = issued["key"].as_str().unwrap().to_owned();
    assert!(portal.starts_with("chka_"), "{issued}");
    let (status, sub_issued) = post(&host, key, "/affiliates/sub1/keys", json!({}));
    assert_eq!(status, StatusCode::CREATED);
    let sub_portal = sub_issued["key"].as_str().unwrap();

    // aff1's commissions: its CPA on d1 and its override on sub1's d3; not sub1's own, nor aff2's.
    let (status, mine) = get(&host, &portal, "/commissions");
    assert_eq!(status, StatusCode::OK, "{mine}");
    let mine = &mine["commissions"];
    assert_eq!(listed(mine), [line("d1", "aff1", "10"), line("d3", "aff1", "1")]);
    let (_, theirs) = get(&host, &portal, "/commissions?affiliate=aff1");
    assert_eq!(&theirs["commissions"], mine, "its own filter is its own listing");
    // sub1's key sees sub1's 10, and not the override its parent earns on it.
    let (_, sub_lines) = get(&host, sub_portal, "/commissions");
    assert_eq!(listed(&sub_lines["commissions"]), [line("d3", "sub1", "10")]);
    for other in ["sub1", "aff2"] {
        let (status, refused) = get(&host, &portal, &format!("/commissions?affiliate={other}"));
        assert_eq!((status, refused["error"].as_str()), (StatusCode::FORBIDDEN, Some("forbidden")), "{refused}");
        assert!(refused["message"].as_str().unwrap().contains("affiliate"), "{refused}");
        let (status, refused) = get(&host, &portal, &format!("/payouts/report?period=2026-10&affiliate={other}"));
        assert_eq!(status, StatusCode::FORBIDDEN, "{refused}");
    }
    let everyone = host.commissions(&acme, "");
    for commission in &everyone {
        let id = commission["id"].as_str().unwrap();
        let (status, seen) = get(&host, &portal, &format!("/commissions/{id}"));
        let own = commission["affiliate"] == "aff1";
        assert_eq!(status, if own { StatusCode::OK } else { StatusCode::NOT_FOUND }, "{commission}: {seen}");
    }
    // The payout report: aff1's balance only (its CPA and its override: 11 pending).
    ok(&host, key, "/periods/2026-10/approve", json!({}));
    let portal_report = report(&host, &portal, "period=2026-10");
    assert_eq!(portal_report.keys().collect::<Vec<_>>(), ["aff1"]);
    assert_eq!(portal_report["aff1"], figures(["0", "11", "11", "11", "0", "0", "0"]));

    // The statement of a closed month: aff1's, with sub1's line (it paid aff1 an override)
    // showing what sub1 earned there, the override's base; no other affiliate's statement.
    let (status, closed) = host.close(&acme, "2026-10");
    assert_eq!(status, StatusCode::OK, "{closed}");
    let (status, statement) = get(&host, &portal, "/periods/2026-10/statement");
    assert_eq!(status, StatusCode::OK, "{statement}");
    let affiliates = statement["affiliates"].as_array().unwrap();
    assert_eq!(affiliates.len(), 1, "{statement}");
    let lines = affiliates[0]["as_closed"]["lines"].as_array().unwrap();
    let through: Vec<(&str, Option<&str>)> =
        lines.iter().map(|l| (l["event_id"].as_str().unwrap(), l["through"].as_str())).collect();
    assert_eq!(through, [("d1", None), ("d3", Some("sub1"))], "{statement}");
    let (status, _) = get(&host, &portal, "/periods/2026-10/statement?affiliate=aff2");
    assert_eq!(status, StatusCode::FORBIDDEN);
    // sub1's statement shows what d3 paid sub1, not its parent's override.
    let (_, sub_statement) = get(&host, sub_portal, "/periods/2026-10/statement");
    let d3 = &sub_statement["affiliates"][0]["as_closed"]["lines"][0];
    let paid_to: Vec<&str> =
        d3["commissions"].as_array().unwrap().iter().map(|c| c["affiliate"].as_str().unwrap()).collect();
    assert_eq!(paid_to, ["sub1"], "{sub_statement}");

    // Operator routes refuse it with 403 and say why; nothing is written (the full walk is in
    // tests/security.rs).
    let d1 = mine[0]["id"].as_str().unwrap();
    for (path, body) in [
        (format!("/commissions/{d1}/status"), json!({"status": "paid"})),
        ("/periods/2026-10/approve".to_owned(), json!({})),
        ("/payouts".to_owned(), json!({"reference": "mine", "period": "2026-10"})),
        ("/affiliates/aff1/keys".to_owned(), json!({})),
        ("/events".to_owned(), deposit("d9", "c9", "aff1", "2026-10-09")),
    ] {
        let (status, refused) = post(&host, &portal, &path, body);
        assert_eq!(
            (status, refused["error"].as_str()),
            (StatusCode::FORBIDDEN, Some("forbidden")),
            "{path}: {refused}"
        );
    }
    assert_eq!(host.get(&acme, "/events/d9").0, StatusCode::NOT_FOUND);
    assert_eq!(paid_moves(&host, key, d1), Vec::<Value>::new());

    // Another operator does not know the key; revoked, it opens nothing.
    let globex = host.create_operator("globex");
    let (status, _) = answer(host.client.get(host.url("/v1/operators/globex/commissions")).bearer_auth(&portal).send());
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{}", globex.id);
    let id = issued["id"].as_str().unwrap();
    let (status, _) = answer(
        host.client.delete(host.url(&format!("/v1/operators/acme/affiliates/sub1/keys/{id}"))).bearer_auth(key).send(),
    );
    assert_eq!(status, StatusCode::NOT_FOUND, "a key is revoked under its own affiliate");
    let (status, revoked) = answer(
        host.client.delete(host.url(&format!("/v1/operators/acme/affiliates/aff1/keys/{id}"))).bearer_auth(key).send(),
    );
    assert_eq!(status, StatusCode::OK, "{revoked}");
    assert!(revoked["revoked_at"].is_string() && revoked.get("key").is_none(), "{revoked}");
    assert_eq!(get(&host, &portal, "/commissions").0, StatusCode::UNAUTHORIZED);
    assert_eq!(get(&host, sub_portal, "/commissions").0, StatusCode::OK, "sub1's key is another key");
}
