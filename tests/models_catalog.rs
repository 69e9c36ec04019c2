//! The commission models of the catalogue, each a reference plugin built from source and run
//! through the real host: CPA on qualification rules, tiers with retroactive escalation,
//! RevShare tiered by the month's first deposits, sequential milestones, Forex IB with a
//! three-level tree, prop-trading challenges. Every
//! amount below is worked out by hand in the comments beside it.

use crate::common;

use std::path::Path;
use std::process::Command;

use common::{Host, Operator, assert_verifies, data_dir, dec, paid};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// An operator paying in USD with `config` as the default deal terms of its affiliates.
fn operator(host: &Host, id: &str, plugin: &str, config: Value) -> Operator {
    let (status, body) =
        host.admin_post("/v1/operators", json!({"id": id, "name": id, "currency": "USD", "config": config}));
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let operator = Operator {
        id: id.to_owned(),
        api_key: body["api_key"].as_str().unwrap().to_owned(),
        postback_token: body["postback_token"].as_str().unwrap().to_owned(),
        webhook_secret: body["webhook_secret"].as_str().unwrap().to_owned(),
    };
    host.install_plugin(&operator, plugin);
    operator
}

/// Sends each event in order and checks what it paid: (affiliate, amount), in order.
fn play(host: &Host, operator: &Operator, steps: &[(Value, &[(&str, &str)])]) {
    for (event, expected) in steps {
        let answer = host.accept(operator, event.clone());
        let expected: Vec<_> =
            expected.iter().map(|(affiliate, amount)| (affiliate.to_string(), dec(amount))).collect();
        assert_eq!(paid(&answer), expected, "event {}: {answer}", event["id"]);
    }
}

fn event(id: &str, kind: &str, customer: &str, at: &str) -> Value {
    json!({"id": id, "type": kind, "customer": customer, "occurred_at": at})
}

/// `event` with more fields (`amount`, `affiliate`, `attributes`).
fn with(mut event: Value, more: Value) -> Value {
    event.as_object_mut().unwrap().extend(more.as_object().unwrap().clone());
    event
}

/// A ledger entry: (affiliate, rule, explanation, the event and rule of what it reverses).
type Entry = (String, String, String, Option<(String, String)>);

/// The commissions `event_id` paid, in order.
fn ledger_of(host: &Host, operator: &Operator, event_id: &str) -> Vec<Entry> {
    let ledger = host.commissions(operator, "");
    ledger
        .iter()
        .filter(|c| c["event_id"] == event_id)
        .map(|c| {
            let reversed = c["reverses"].as_str().map(|id| {
                let original = ledger.iter().find(|o| o["id"] == id).expect("the reversed commission is in the ledger");
                (original["event_id"].as_str().unwrap().to_owned(), original["rule"].as_str().unwrap().to_owned())
            });
            let text = |field: &str| c[field].as_str().unwrap().to_owned();
            (text("affiliate"), text("rule"), text("explanation"), reversed)
        })
        .collect()
}

/// A month closed with a 200.
fn closed(host: &Host, operator: &Operator, period: &str) -> Value {
    let (status, body) = host.close(operator, period);
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

fn totals(host: &Host, operator: &Operator, expected: &[(&str, &str)]) {
    let expected = expected.iter().map(|(affiliate, amount)| (affiliate.to_string(), dec(amount))).collect();
    assert_eq!(host.totals(operator), expected);
}

#[test]
fn cpa_pays_once_when_every_condition_holds_in_any_order_within_the_window() {
    let (_dir, data) = data_dir();
    let host = Host::start(&data);
    // The operator's usual terms; `full` overrides the amount and adds conditions.
    let casino = operator(&host, "casino", "cpa", json!({"cpa": "80", "min_first_deposit": "25", "window_days": "14"}));
    let full = json!({"cpa": "200", "min_deposits": "300", "min_wagering": "1000", "kyc_required": "true",
        "min_active_days": "2", "countries_allow": "GB,IE"});
    host.put_affiliate(&casino, "full", None, full);
    host.put_affiliate(&casino, "basic", None, json!({}));
    host.put_affiliate(&casino, "nordic", None, json!({"countries_deny": "NO"}));

    play(
        &host,
        &casino,
        &[
            // A first deposit of 300 from Britain: first deposit, deposits and country hold.
            (
                with(
                    event("g1-d1", "deposit", "g1", "2026-11-02T10:00:00Z"),
                    json!({"amount": "300", "affiliate": "full", "attributes": {"country": "GB"}}),
                ),
                &[],
            ),
            // Wagering 999.99, one cent short of 1,000, on the same (first) active day.
            (with(event("g1-w1", "wager", "g1", "2026-11-02T11:00:00Z"), json!({"amount": "999.99"})), &[]),
            (
                with(event("g1-k", "kyc", "g1", "2026-11-03T09:00:00Z"), json!({"attributes": {"status": "passed"}})),
                &[],
            ),
            // The last cent of wagering, on a second day: wagering and active days complete it.
            (
                with(event("g1-w2", "wager", "g1", "2026-11-03T10:00:00Z"), json!({"amount": "0.01"})),
                &[("full", "200")],
            ),
            (with(event("g1-w3", "wager", "g1", "2026-11-04T10:00:00Z"), json!({"amount": "5000"})), &[]),
            // The qualifying deposit charged back after payment: the CPA comes back.
            (
                with(
                    event("g1-cb", "chargeback", "g1", "2026-11-20T10:00:00Z"),
                    json!({"attributes": {"deposit": "g1-d1"}}),
                ),
                &[("full", "-200")],
            ),
            // A first deposit of 24.99: one cent below the operator's 25.
            (
                with(
                    event("b1-d1", "deposit", "b1", "2026-11-02T10:00:00Z"),
                    json!({"amount": "24.99", "affiliate": "basic"}),
                ),
                &[],
            ),
            // Charged back before any CPA: it stops counting, and the next deposit is the first.
            (
                with(
                    event("b1-cb", "chargeback", "b1", "2026-11-03T10:00:00Z"),
                    json!({"attributes": {"deposit": "b1-d1"}}),
                ),
                &[],
            ),
            (
                with(event("b1-d2", "deposit", "b1", "2026-11-04T10:00:00Z"), json!({"amount": "25"})),
                &[("basic", "80")],
            ),
            // Registered at midnight; exactly 14 days later is still in the window...
            (with(event("b2-r", "registration", "b2", "2026-11-01T00:00:00Z"), json!({"affiliate": "basic"})), &[]),
            (with(event("b2-d", "deposit", "b2", "2026-11-15T00:00:00Z"), json!({"amount": "25"})), &[("basic", "80")]),
            // ...one second more is not.
            (with(event("b3-r", "registration", "b3", "2026-11-01T00:00:00Z"), json!({"affiliate": "basic"})), &[]),
            (with(event("b3-d", "deposit", "b3", "2026-11-15T00:00:01Z"), json!({"amount": "1000"})), &[]),
            // A denied country never qualifies; an unknown one waits for the country.
            (
                with(
                    event("n1-d", "deposit", "n1", "2026-11-02T10:00:00Z"),
                    json!({"amount": "100", "affiliate": "nordic", "attributes": {"country": "NO"}}),
                ),
                &[],
            ),
            (
                with(
                    event("n2-d", "deposit", "n2", "2026-11-02T10:00:00Z"),
                    json!({"amount": "100", "affiliate": "nordic"}),
                ),
                &[],
            ),
            (
                with(event("n2-k", "kyc", "n2", "2026-11-03T10:00:00Z"), json!({"attributes": {"country": "SE"}})),
                &[("nordic", "80")],
            ),
        ],
    );

    let cpa = ledger_of(&host, &casino, "g1-w2");
    assert_eq!(
        cpa[0].2,
        "qualified by wagering and active days (first deposit 300 >= 25; deposits 300 >= 300; wagering 1000.00 >= \
         1000; active days 2 >= 2; KYC passed; country GB): customer #1 of 2026-11, CPA 200"
    );
    let clawback = ledger_of(&host, &casino, "g1-cb");
    assert_eq!((clawback[0].1.as_str(), clawback[0].3.clone()), ("cpa-reversal", Some(("g1-w2".into(), "cpa".into()))));
    assert!(ledger_of(&host, &casino, "n2-k")[0].2.starts_with("qualified by country ("));
    // full: 200 - 200; basic: 80 + 80; nordic: 80.
    totals(&host, &casino, &[("basic", "160"), ("full", "0"), ("nordic", "80")]);
    assert_verifies(&host, &casino);
}

#[test]
fn tiers_rate_by_the_months_qualified_customers_and_escalate_on_crossing_or_at_the_close() {
    let (_dir, data) = data_dir();
    let host = Host::start(&data);
    let tiers = operator(&host, "tiers", "cpa", json!({"min_first_deposit": "10", "tiers": "1:50,3:75,5:100"}));
    host.put_affiliate(&tiers, "flat", None, json!({}));
    host.put_affiliate(&tiers, "cross", None, json!({"tier_retroactive": "crossing"}));
    host.put_affiliate(&tiers, "atclose", None, json!({"tier_retroactive": "settle"}));
    let ftd = |id: &str, customer: &str, affiliate: &str, at: &str| {
        with(event(id, "deposit", customer, at), json!({"amount": "10", "affiliate": affiliate}))
    };
    play(
        &host,
        &tiers,
        &[
            // No escalation: customers #1-#2 earn 50, #3-#4 75, #5 100; the tier changes mid-month.
            (ftd("f1", "f1", "flat", "2025-10-02T10:00:00Z"), &[("flat", "50")]),
            (ftd("f2", "f2", "flat", "2025-10-03T10:00:00Z"), &[("flat", "50")]),
            (ftd("f3", "f3", "flat", "2025-10-15T10:00:00Z"), &[("flat", "75")]),
            (ftd("f4", "f4", "flat", "2025-10-16T10:00:00Z"), &[("flat", "75")]),
            (ftd("f5", "f5", "flat", "2025-10-17T10:00:00Z"), &[("flat", "100")]),
            // Escalation on crossing: #3 brings #1-#2 from 50 to 75 (2 x 25 = 50)...
            (ftd("c1", "c1", "cross", "2025-10-02T10:00:00Z"), &[("cross", "50")]),
            (ftd("c2", "c2", "cross", "2025-10-03T10:00:00Z"), &[("cross", "50")]),
            (ftd("c3", "c3", "cross", "2025-10-15T10:00:00Z"), &[("cross", "75"), ("cross", "50")]),
            (ftd("c4", "c4", "cross", "2025-10-16T10:00:00Z"), &[("cross", "75")]),
            // ...and #5 brings #1-#4 from 75 to 100 (4 x 25 = 100): 5 x 100 = 500 in all.
            (ftd("c5", "c5", "cross", "2025-10-17T10:00:00Z"), &[("cross", "100"), ("cross", "100")]),
            // #1 charged back: its 50, and the 25 + 25 it was re-rated by.
            (
                with(
                    event("c1-cb", "chargeback", "c1", "2025-10-18T10:00:00Z"),
                    json!({"attributes": {"deposit": "c1"}}),
                ),
                &[("cross", "-50"), ("cross", "-50")],
            ),
            // Escalation at the close: nothing extra as the tier is crossed.
            (ftd("s1", "s1", "atclose", "2025-10-02T10:00:00Z"), &[("atclose", "50")]),
            (ftd("s2", "s2", "atclose", "2025-10-03T10:00:00Z"), &[("atclose", "50")]),
            (ftd("s3", "s3", "atclose", "2025-10-15T10:00:00Z"), &[("atclose", "75")]),
            // November starts again at #1.
            (ftd("s4", "s4", "atclose", "2025-11-01T00:00:00Z"), &[("atclose", "50")]),
        ],
    );
    let adjustment = ledger_of(&host, &tiers, "c5");
    assert_eq!(adjustment[1].1, "cpa-tier-adjustment");
    assert_eq!(
        adjustment[1].2,
        "customer #5 of 2025-10 reached the tier at 100: re-rates CPAs #1 c1 75, #2 c2 75, #3 c3 75, #4 c4 75 to \
         100: +100"
    );
    assert_eq!(ledger_of(&host, &tiers, "c1-cb")[0].3, Some(("c1".into(), "cpa".into())));

    // October closes at 3 customers for `atclose`: #1-#2 go from 50 to 75, 2 x 25 = 50.
    let october = closed(&host, &tiers, "2025-10");
    let settled: Vec<_> = october["settlements"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["affiliate"].as_str().unwrap().to_owned(), s["status"].as_str().unwrap().to_owned(), paid(s)))
        .collect();
    assert_eq!(
        settled,
        [
            ("atclose".into(), "accepted".into(), vec![("atclose".into(), dec("50"))]),
            ("cross".into(), "accepted".into(), vec![]),
            ("flat".into(), "accepted".into(), vec![]),
        ]
    );
    assert_eq!(
        october["settlements"][0]["commissions"][0]["explanation"],
        "2025-10 closed with 3 qualified customers, tier from #3 at 75: re-rates CPAs #1 s1 50, #2 s2 50 to 75: +50"
    );
    // Closed twice: nothing twice.
    let again = closed(&host, &tiers, "2025-10");
    assert!(again["settlements"].as_array().unwrap().iter().all(|s| s["status"] == "duplicate"), "{again}");
    // November: one customer, still at the first tier: nothing owed.
    let november = closed(&host, &tiers, "2025-11");
    assert!(november["settlements"].as_array().unwrap().iter().all(|s| paid(s).is_empty()), "{november}");

    // flat: 50+50+75+75+100 = 350; cross: 500 - 100 = 400; atclose: 50+50+75+50 (November) + 50 = 275.
    totals(&host, &tiers, &[("atclose", "275"), ("cross", "400"), ("flat", "350")]);
    assert_verifies(&host, &tiers);
}

#[test]
fn milestones_pay_in_order_once_each_and_the_chargeback_of_one_is_referenced() {
    let (_dir, data) = data_dir();
    let host = Host::start(&data);
    let fxb =
        operator(&host, "fxb", "milestones", json!({"milestones": "registration:3,deposit:25,trade:10,lots>=5:40"}));
    host.put_affiliate(&fxb, "m1", None, json!({}));
    host.put_affiliate(&fxb, "m2", None, json!({"milestones": "deposits>=500:30,kyc:5"}));
    play(
        &host,
        &fxb,
        &[
            // Out of order: a deposit before the registration pays nothing...
            (
                with(
                    event("p1-d1", "deposit", "p1", "2026-11-01T09:00:00Z"),
                    json!({"amount": "50", "affiliate": "m1"}),
                ),
                &[],
            ),
            (event("p1-r", "registration", "p1", "2026-11-01T10:00:00Z"), &[("m1", "3")]),
            // ...nor a trade while the deposit step is pending (its 4.99 lots count later).
            (with(event("p1-t1", "trade", "p1", "2026-11-02T10:00:00Z"), json!({"attributes": {"lots": "4.99"}})), &[]),
            (with(event("p1-d2", "deposit", "p1", "2026-11-03T10:00:00Z"), json!({"amount": "50"})), &[("m1", "25")]),
            // The trade step, and 4.99 + 0.01 = 5 lots exactly: both on one trade.
            (
                with(event("p1-t2", "trade", "p1", "2026-11-04T10:00:00Z"), json!({"attributes": {"lots": "0.01"}})),
                &[("m1", "10"), ("m1", "40")],
            ),
            (with(event("p1-t3", "trade", "p1", "2026-11-05T10:00:00Z"), json!({"attributes": {"lots": "9"}})), &[]),
            (
                with(
                    event("p1-cb2", "chargeback", "p1", "2026-11-06T10:00:00Z"),
                    json!({"attributes": {"deposit": "p1-d2"}}),
                ),
                &[("m1", "-25")],
            ),
            (
                with(
                    event("p1-cb1", "chargeback", "p1", "2026-11-06T11:00:00Z"),
                    json!({"attributes": {"deposit": "p1-d1"}}),
                ),
                &[],
            ),
            // The affiliate's own chain: 499.99 deposited is one cent short, 500.00 reaches it.
            (with(event("p2-k1", "kyc", "p2", "2026-11-01T10:00:00Z"), json!({"affiliate": "m2"})), &[]),
            (with(event("p2-d1", "deposit", "p2", "2026-11-02T10:00:00Z"), json!({"amount": "499.99"})), &[]),
            (with(event("p2-d2", "deposit", "p2", "2026-11-03T10:00:00Z"), json!({"amount": "0.01"})), &[("m2", "30")]),
            (event("p2-k2", "kyc", "p2", "2026-11-04T10:00:00Z"), &[("m2", "5")]),
        ],
    );
    assert_eq!(
        ledger_of(&host, &fxb, "p1-cb2")[0].3,
        Some(("p1-d2".into(), "milestone-2-deposit".into())),
        "the clawback names the milestone it reverses"
    );
    assert_eq!(ledger_of(&host, &fxb, "p1-t2")[1].2, "milestone 4 of 4 reached (lots 5.00, at least 5): 40");
    // m1: 3 + 25 + 10 + 40 - 25 = 53; m2: 30 + 5 = 35.
    totals(&host, &fxb, &[("m1", "53"), ("m2", "35")]);
    assert_verifies(&host, &fxb);
}

#[test]
fn forex_ib_pays_per_lot_by_group_a_spread_share_and_overrides_up_a_three_level_tree() {
    let (_dir, data) = data_dir();
    let host = Host::start(&data);
    let broker = operator(
        &host,
        "broker",
        "forex-ib",
        json!({"group.majors": "EURUSD,USDJPY", "group.metals": "XAUUSD", "group.indices": "US30"}),
    );
    host.put_affiliate(&broker, "top", None, json!({"override_per_lot": "0.50"}));
    host.put_affiliate(
        &broker,
        "master",
        Some("top"),
        json!({"override_per_lot": "1", "override_per_lot.metals": "3"}),
    );
    let ib =
        json!({"per_lot.majors": "7", "per_lot.metals": "10", "per_lot.indices": "2", "spread_share_percent": "10"});
    host.put_affiliate(&broker, "ib", Some("master"), ib);
    let trade = |id: &str, symbol: &str, lots: &str, spread: Option<&str>| {
        let mut attributes = json!({"symbol": symbol, "lots": lots});
        if let Some(spread) = spread {
            attributes["spread"] = json!(spread);
        }
        with(event(id, "trade", "k1", "2026-11-02T10:00:00Z"), json!({"affiliate": "ib", "attributes": attributes}))
    };
    play(
        &host,
        &broker,
        &[
            // 1.25 x 7 = 8.75; 10% of 40 = 4; 1.25 x 1 = 1.25; 1.25 x 0.50 = 0.625, to 0.63.
            (
                trade("k-t1", "EURUSD", "1.25", Some("40")),
                &[("ib", "8.75"), ("ib", "4"), ("master", "1.25"), ("top", "0.63")],
            ),
            // Gold: 0.4 x 10 = 4; the master's metals override 0.4 x 3 = 1.2; 0.4 x 0.5 = 0.2.
            (trade("k-t2", "XAUUSD", "0.4", None), &[("ib", "4"), ("master", "1.2"), ("top", "0.2")]),
            // An index: 2 x 2 = 4; 10% of 5 = 0.5; 2 x 1 = 2; 2 x 0.5 = 1.
            (trade("k-t3", "US30", "2", Some("5")), &[("ib", "4"), ("ib", "0.5"), ("master", "2"), ("top", "1")]),
            // The gold trade cancelled: its three commissions back.
            (
                with(
                    event("k-x2", "trade_cancelled", "k1", "2026-11-03T10:00:00Z"),
                    json!({"attributes": {"trade": "k-t2"}}),
                ),
                &[("ib", "-4"), ("master", "-1.2"), ("top", "-0.2")],
            ),
            (
                with(
                    event("k-x2b", "trade_cancelled", "k1", "2026-11-03T11:00:00Z"),
                    json!({"attributes": {"trade": "k-t2"}}),
                ),
                &[],
            ),
            // The master's own client: no lot rate of its own; `top` is now level 1: 1 x 0.5.
            (
                with(
                    event("k2-t1", "trade", "k2", "2026-11-04T10:00:00Z"),
                    json!({"affiliate": "master", "attributes": {"symbol": "USDJPY", "lots": "1"}}),
                ),
                &[("top", "0.5")],
            ),
        ],
    );
    let cancelled = ledger_of(&host, &broker, "k-x2");
    let references: Vec<_> =
        cancelled.iter().map(|(affiliate, _, _, reversed)| (affiliate.clone(), reversed.clone())).collect();
    assert_eq!(
        references,
        [
            ("ib".to_owned(), Some(("k-t2".to_owned(), "ib-lot".to_owned()))),
            ("master".to_owned(), Some(("k-t2".to_owned(), "ib-override-l1".to_owned()))),
            ("top".to_owned(), Some(("k-t2".to_owned(), "ib-override-l2".to_owned()))),
        ]
    );
    assert_eq!(ledger_of(&host, &broker, "k-t1")[0].2, "1.25 lots of EURUSD (majors) at 7 per lot: 8.75");
    // ib: 8.75 + 4 + 4 + 4 + 0.5 - 4 = 17.25; master: 1.25 + 1.2 + 2 - 1.2 = 3.25;
    // top: 0.63 + 0.2 + 1 - 0.2 + 0.5 = 2.13.
    totals(&host, &broker, &[("ib", "17.25"), ("master", "3.25"), ("top", "2.13")]);
    assert_verifies(&host, &broker);
}

#[test]
fn prop_challenges_pay_purchase_phases_and_funding_once_each_and_a_refund_reverses_the_purchase() {
    let (_dir, data) = data_dir();
    let host = Host::start(&data);
    let prop = operator(&host, "prop", "prop-challenge", json!({"phase_payout": "15"}));
    host.put_affiliate(
        &prop,
        "pa",
        None,
        json!({"purchase_percent": "10", "purchase_fixed": "5", "funded_payout": "60"}),
    );
    let on = |id: &str, kind: &str, challenge: &str, more: Value| {
        let mut attributes = json!({"challenge": challenge});
        attributes.as_object_mut().unwrap().extend(more.as_object().unwrap().clone());
        with(event(id, kind, "trader", "2026-11-02T10:00:00Z"), json!({"affiliate": "pa", "attributes": attributes}))
    };
    let bought = |id: &str, challenge: &str, price: &str| {
        with(on(id, "challenge_purchase", challenge, json!({})), json!({"amount": price}))
    };
    play(
        &host,
        &prop,
        &[
            // 10% of 299 = 29.90, + 5 = 34.90.
            (bought("a-buy", "ch-A", "299"), &[("pa", "34.90")]),
            (bought("a-buy-resent", "ch-A", "299"), &[]),
            (on("a-p1", "phase_passed", "ch-A", json!({"phase": "1"})), &[("pa", "15")]),
            (on("a-p1b", "phase_passed", "ch-A", json!({"phase": "1"})), &[]),
            (on("a-p2", "phase_passed", "ch-A", json!({"phase": "2"})), &[("pa", "15")]),
            (on("a-f", "funded", "ch-A", json!({})), &[("pa", "60")]),
            // 10% of 99 = 9.90, + 5 = 14.90; refunded; the void challenge's phase pays nothing.
            (bought("b-buy", "ch-B", "99"), &[("pa", "14.90")]),
            (on("b-refund", "challenge_refund", "ch-B", json!({})), &[("pa", "-14.90")]),
            (on("b-p1", "phase_passed", "ch-B", json!({"phase": "1"})), &[]),
        ],
    );
    assert_eq!(ledger_of(&host, &prop, "b-refund")[0].3, Some(("b-buy".into(), "challenge-purchase".into())));
    // 34.90 + 15 + 15 + 60 + 14.90 - 14.90 = 124.90.
    totals(&host, &prop, &[("pa", "124.90")]);
    assert_verifies(&host, &prop);
}

#[test]
fn tiered_revshare_follows_the_months_first_deposits_and_a_late_one_restates_the_tier() {
    let (_dir, data) = data_dir();
    let host = Host::start(&data);
    // 25% with up to 2 new depositing customers in the month, 30% with 3 or 4, 35% from 5.
    let casino = operator(&host, "tiered", "revshare", json!({}));
    host.put_affiliate(&casino, "st", None, json!({"revshare_tiers": "0:25,3:30,5:35"}));
    let deposit = |id: &str, customer: &str, at: &str| {
        with(event(id, "deposit", customer, at), json!({"amount": "100", "affiliate": "st"}))
    };
    let wager = |id: &str, customer: &str, amount: &str, at: &str| {
        with(event(id, "wager", customer, at), json!({"amount": amount}))
    };
    play(
        &host,
        &casino,
        &[
            (deposit("n1", "k1", "2025-11-02T10:00:00Z"), &[]),
            (deposit("n2", "k2", "2025-11-03T10:00:00Z"), &[]),
            // k1's second deposit is not a new depositing customer.
            (deposit("n1b", "k1", "2025-11-04T10:00:00Z"), &[]),
            (wager("nw", "k1", "2000", "2025-11-05T10:00:00Z"), &[]),
        ],
    );
    // Two FTDs: 25% of NGR 2,000 = 500.
    let november = closed(&host, &casino, "2025-11");
    assert_eq!(paid(&november["settlements"][0]), [("st".into(), dec("500"))], "{november}");
    let explanation = ledger_of(&host, &casino, "commission-host.period:2025-11:st")[0].2.clone();
    assert!(explanation.contains("RevShare 25% (tier from 0 FTDs: 2 this month)"), "{explanation}");

    // A third customer's first deposit on 20 November, after the close: November had 3 FTDs,
    // so 30% of 2,000 = 600; 500 was paid, so +100, in December, referencing November.
    let late = host.accept(&casino, deposit("n3", "k3", "2025-11-20T10:00:00Z"));
    assert_eq!(paid(&late), [("st".into(), dec("100"))], "{late}");
    assert_eq!(late["commissions"][0]["restates"]["period"], "2025-11");
    assert!(late["commissions"][0]["explanation"].as_str().unwrap().contains("30% (tier from 3 FTDs: 3 this month)"));

    // December counts its own first deposits only: k3 counted in November, k4 and k5 here: 25%.
    play(
        &host,
        &casino,
        &[
            (deposit("d4", "k4", "2025-12-02T10:00:00Z"), &[]),
            (deposit("d5", "k5", "2025-12-03T10:00:00Z"), &[]),
            (deposit("d3", "k3", "2025-12-04T10:00:00Z"), &[]),
            (wager("dw", "k4", "1000", "2025-12-05T10:00:00Z"), &[]),
        ],
    );
    let december = closed(&host, &casino, "2025-12");
    assert_eq!(paid(&december["settlements"][0]), [("st".into(), dec("250"))], "{december}");
    totals(&host, &casino, &[("st", "850")]);
    assert_verifies(&host, &casino);
}

/// Each plugin's fixture file passes through its built component, as an author runs it.
#[test]
fn each_reference_plugins_fixtures_pass_through_plugin_test() {
    let binary = Path::new(env!("CARGO_BIN_EXE_commission-host"));
    let components = binary.parent().unwrap().parent().unwrap().join("wasm32-wasip2/plugin");
    let repository = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for (plugin, steps) in [("cpa", 32), ("milestones", 11), ("forex-ib", 8), ("prop-challenge", 12)] {
        let fixtures = repository.join(format!("plugins/{plugin}/fixtures/{plugin}.ndjson"));
        let output = Command::new(binary)
            .args(["plugin", "test"])
            .arg(components.join(format!("{}.wasm", plugin.replace('-', "_"))))
            .arg(&fixtures)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{plugin}: {stdout}{}", String::from_utf8_lossy(&output.stderr));
        assert!(stdout.ends_with(&format!("{plugin}.ndjson: all {steps} steps as expected\n")), "{stdout}");
    }
}
