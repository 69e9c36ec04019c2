//! Closing months, through the real host with RevShare built from source: a close is ordered
//! with the operator's events (an event of the month either counts in its settlement or is
//! treated as late), closes are serialized and in order from the first one, a month with a
//! failed or missing settlement must be repaired before the next closes, and a month before
//! 1970 or before anything of the operator's cannot be closed. Amounts are worked by hand, and
//! in the property test from the events the host accepted.

use crate::common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Host, Operator, amount, answer, assert_verifies, data_dir, dec, paid};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use reqwest::StatusCode;
use rust_decimal::{Decimal, RoundingStrategy};
use serde_json::{Value, json};

fn settings(host: &Host, operator: &Operator, policy: &str) {
    let (status, body) = answer(
        host.client
            .put(host.url(&format!("/v1/operators/{}/settings", operator.id)))
            .bearer_auth(&operator.api_key)
            .json(&json!({"late_events": policy}))
            .send(),
    );
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// A RevShare operator with the given affiliates (id, percent), on negative carryover.
fn casino(host: &Host, id: &str, affiliates: &[(&str, &str)], policy: &str) -> Operator {
    let operator = host.create_operator(id);
    host.install_plugin(&operator, "revshare");
    for (affiliate, percent) in affiliates {
        host.put_affiliate(&operator, affiliate, None, json!({"revshare_percent": percent}));
    }
    settings(host, &operator, policy);
    operator
}

fn money(kind: &str, id: &str, customer: &str, affiliate: &str, amount: &str, at: &str) -> Value {
    json!({"id": id, "type": kind, "customer": customer, "affiliate": affiliate, "amount": amount, "occurred_at": at})
}

/// What each settlement paid in all, at its close and in adjustments since, by settlement id.
fn paid_per_settlement(host: &Host, operator: &Operator) -> BTreeMap<String, Decimal> {
    let mut paid = BTreeMap::new();
    for commission in host.commissions(operator, "") {
        let settlement = match commission["restates"]["settlement"].as_str() {
            Some(settlement) => settlement.to_owned(),
            None => commission["event_id"].as_str().unwrap().to_owned(),
        };
        *paid.entry(settlement).or_insert(Decimal::ZERO) += amount(&commission["amount"]);
    }
    paid
}

fn settlement_id(month: &str, affiliate: &str) -> String {
    format!("commission-host.period:{month}:{affiliate}")
}

/// A 422 naming `field` (first, for a batch); its problem.
fn refusal(status: StatusCode, body: &Value, field: &str) -> String {
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["details"][0]["field"], field, "{body}");
    body["details"][0]["problem"].as_str().unwrap().to_owned()
}

/// Two clients send batches of wagers (10 each, so 3 at 30%) dated in a month while the month
/// is closed, for three months in turn. Whatever was answered `accepted` is paid: by the
/// settlement, or (under `adjust`) by it and the adjustments the late events made.
fn in_flight_during_a_close(policy: &str) {
    let (_dir, data) = data_dir();
    let host = Host::start(&data);
    let affiliates = [("a1", "30"), ("a2", "30")];
    let operator = casino(&host, "casino", &affiliates, policy);
    let months = ["2025-01", "2025-02", "2025-03"];
    // Accepted wagers per (month, affiliate).
    let accepted: std::sync::Mutex<BTreeMap<(String, String), u64>> = Default::default();
    let refused = AtomicUsize::new(0);
    for month in months {
        let closed = AtomicBool::new(false);
        let batches = AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for client in 0..2 {
                let (host, operator, accepted, refused) = (&host, &operator, &accepted, &refused);
                let (closed, batches) = (&closed, &batches);
                scope.spawn(move || {
                    let started = Instant::now();
                    let (mut sent, mut after_close) = (0, 0);
                    while after_close < 3 && sent < 200 && started.elapsed() < Duration::from_secs(60) {
                        if closed.load(Ordering::SeqCst) {
                            after_close += 1;
                        }
                        let events: Vec<Value> = (0..25)
                            .map(|n| {
                                let customer = format!("{month}-t{client}-c{}", n % 10);
                                let affiliate = affiliates[n % 2].0;
                                let id = format!("{month}-t{client}-b{sent}-e{n}");
                                money("wager", &id, &customer, affiliate, "10", &format!("{month}-10T12:00:00Z"))
                            })
                            .collect();
                        let (status, body) = host.post_events(operator, &Value::Array(events.clone()));
                        sent += 1;
                        batches.fetch_add(1, Ordering::SeqCst);
                        if status == StatusCode::UNPROCESSABLE_ENTITY {
                            let message = refusal(status, &body, "occurred_at");
                            assert!(policy == "refuse" && message.contains(month), "{body}");
                            let first = events[0]["id"].as_str().unwrap();
                            assert_eq!(host.get(operator, &format!("/events/{first}")).0, StatusCode::NOT_FOUND);
                            refused.fetch_add(1, Ordering::SeqCst);
                            continue;
                        }
                        assert_eq!(status, StatusCode::OK, "{body}");
                        let mut accepted = accepted.lock().unwrap();
                        for (n, result) in body["results"].as_array().unwrap().iter().enumerate() {
                            assert_eq!(result["status"], "accepted", "{result}");
                            *accepted.entry((month.to_owned(), affiliates[n % 2].0.to_owned())).or_default() += 1;
                        }
                    }
                });
            }
            let started = Instant::now();
            while batches.load(Ordering::SeqCst) < 6 && started.elapsed() < Duration::from_secs(30) {
                std::thread::sleep(Duration::from_millis(5));
            }
            let (status, body) = host.close(&operator, month);
            assert_eq!(status, StatusCode::OK, "{body}");
            closed.store(true, Ordering::SeqCst);
        });
    }
    if policy == "refuse" {
        assert!(refused.load(Ordering::SeqCst) > 0, "some batches came after their month closed");
    }
    let accepted = accepted.into_inner().unwrap();
    let paid = paid_per_settlement(&host, &operator);
    for month in months {
        for (affiliate, _) in affiliates {
            let wagers = accepted.get(&(month.to_owned(), affiliate.to_owned())).copied().unwrap_or_default();
            let due = Decimal::from(wagers * 3);
            let settlement = settlement_id(month, affiliate);
            assert_eq!(
                paid.get(&settlement).copied().unwrap_or_default(),
                due,
                "{settlement}: {wagers} wagers of 10 accepted, at 30%"
            );
        }
    }
    assert_verifies(&host, &operator);
}

#[test]
fn events_in_flight_during_a_close_are_paid_under_refuse() {
    in_flight_during_a_close("refuse");
}

#[test]
fn events_in_flight_during_a_close_are_paid_under_adjust() {
    in_flight_during_a_close("adjust");
}

/// September's NGR is -2,000 (carried), October's 3,000: October pays (3,000 - 2,000) x 30% =
/// 300, and 900 if it settled without September's carryover.
fn september_and_october(host: &Host, operator: &Operator) {
    let send = |event: Value| host.accept(operator, event);
    send(money("deposit", "p1-d", "p1", "carry", "100", "2025-09-01T08:00:00Z"));
    send(money("wager", "s1", "p1", "carry", "1000", "2025-09-10T08:00:00Z"));
    send(money("win", "s2", "p1", "carry", "3000", "2025-09-11T08:00:00Z"));
    send(money("wager", "o1", "p1", "carry", "3000", "2025-10-10T08:00:00Z"));
}

#[test]
fn a_failed_settlement_blocks_the_next_close_until_it_is_repaired() {
    let (_dir, data) = data_dir();
    let host = Host::start(&data);
    let operator = casino(&host, "casino", &[("carry", "30")], "adjust");
    september_and_october(&host, &operator);

    // September's settlement runs out of fuel: stored as failed.
    host.put_limits(&operator, json!({"fuel": 1}));
    let (status, september) = host.close(&operator, "2025-09");
    assert_eq!(status, StatusCode::OK, "{september}");
    assert_eq!(september["settlements"][0]["status"], "failed", "{september}");
    host.put_limits(&operator, json!({}));

    // October may not close on top of it, and the refusal says how to repair September.
    let (status, refused) = host.close(&operator, "2025-10");
    let message = refusal(status, &refused, "period");
    assert!(message.contains("2025-09") && message.contains("retry-failed"), "{message}");
    assert!(message.contains("carry"), "names the affiliate: {message}");
    assert_eq!(host.get(&operator, "/events/commission-host.period:2025-10:carry").0, StatusCode::NOT_FOUND);

    // An affiliate added since September closed has no settlement of it: also refused, until
    // September is closed again (which settles it, and pays nothing twice).
    host.put_affiliate(&operator, "newcomer", None, json!({}));
    let (status, body) = answer(
        host.client.post(host.url("/v1/operators/casino/events/retry-failed")).bearer_auth(&operator.api_key).send(),
    );
    assert_eq!((status, body["accepted"].as_u64()), (StatusCode::OK, Some(1)), "{body}");
    let (status, refused) = host.close(&operator, "2025-10");
    let message = refusal(status, &refused, "period");
    assert!(message.contains("2025-09") && message.contains("newcomer"), "{message}");
    let (status, again) = host.close(&operator, "2025-09");
    assert_eq!(status, StatusCode::OK, "{again}");

    let (status, october) = host.close(&operator, "2025-10");
    assert_eq!(status, StatusCode::OK, "{october}");
    let carry: Vec<&Value> =
        october["settlements"].as_array().unwrap().iter().filter(|s| s["affiliate"] == "carry").collect();
    assert_eq!(paid(carry[0]), [("carry".to_owned(), dec("300"))], "{october}");
    assert_eq!(host.totals(&operator), [("carry".to_owned(), dec("300"))].into());
    assert_verifies(&host, &operator);
}

#[test]
fn closes_sent_at_once_are_serialized_and_settle_in_order() {
    let (_dir, data) = data_dir();
    let host = Host::start(&data);
    for round in 0..5 {
        let operator = casino(&host, &format!("casino{round}"), &[("carry", "30")], "adjust");
        september_and_october(&host, &operator);
        let barrier = std::sync::Barrier::new(2);
        let answers: Vec<(StatusCode, Value)> = std::thread::scope(|scope| {
            let closes: Vec<_> = ["2025-09", "2025-10"]
                .into_iter()
                .map(|month| {
                    let (host, operator, barrier) = (&host, &operator, &barrier);
                    scope.spawn(move || {
                        barrier.wait();
                        host.close(operator, month)
                    })
                })
                .collect();
            closes.into_iter().map(|close| close.join().unwrap()).collect()
        });
        assert_eq!(answers[0].0, StatusCode::OK, "September closes either way: {}", answers[0].1);
        if answers[1].0 != StatusCode::OK {
            // October went first, and was refused: September has events and was not closed.
            let message = refusal(answers[1].0, &answers[1].1, "period");
            assert!(message.contains("2025-09"), "{message}");
            let (status, october) = host.close(&operator, "2025-10");
            assert_eq!(status, StatusCode::OK, "{october}");
        }
        assert_eq!(host.totals(&operator), [("carry".to_owned(), dec("300"))].into(), "round {round}");
        assert_verifies(&host, &operator);
    }
}

#[test]
fn every_month_up_to_the_latest_closed_is_closed_and_the_first_close_skips_no_month_with_events() {
    let (_dir, data) = data_dir();
    let host = Host::start(&data);
    let operator = casino(&host, "strict", &[("carry", "30")], "refuse");
    host.accept(&operator, money("deposit", "d1", "c1", "carry", "50", "2025-09-20T00:00:00Z"));
    host.accept(&operator, money("wager", "w1", "c1", "carry", "100", "2025-11-02T00:00:00Z"));

    // November cannot be the first month closed: September has an event.
    let (status, refused) = host.close(&operator, "2025-11");
    let message = refusal(status, &refused, "period");
    assert!(message.contains("2025-09"), "{message}");
    for month in ["2025-09", "2025-10", "2025-11"] {
        let (status, body) = host.close(&operator, month);
        assert_eq!(status, StatusCode::OK, "{body}");
    }

    // October has no settlement of its own events, but it comes before November: closed.
    let (status, refused) =
        host.post_events(&operator, &money("wager", "late", "c1", "carry", "100", "2025-10-15T00:00:00Z"));
    let message = refusal(status, &refused, "occurred_at");
    assert!(message.contains("2025-10") && message.contains("closed"), "{message}");
    assert_eq!(host.get(&operator, "/events/late").0, StatusCode::NOT_FOUND, "nothing was written");
    assert_eq!(host.totals(&operator), [("carry".to_owned(), dec("30"))].into());
    assert_verifies(&host, &operator);
}

#[test]
fn a_month_before_1970_or_before_the_operator_existed_cannot_be_closed() {
    let (_dir, data) = data_dir();
    let host = Host::start(&data);
    let operator = casino(&host, "casino", &[("carry", "30")], "adjust");
    for month in ["0000-01", "1969-12"] {
        let (status, refused) = host.close(&operator, month);
        let message = refusal(status, &refused, "period");
        assert!(message.contains("1970"), "{message}");
    }
    // Created now, with nothing yet: a month of last year is before the operator existed.
    let (status, refused) = host.close(&operator, "2025-10");
    let message = refusal(status, &refused, "period");
    assert!(message.contains("2025-10") && message.contains("before"), "{message}");

    // Events from November 2025 on (a history brought in): October is still before anything of
    // the operator's, November closes, and so do the months after it.
    host.accept(&operator, money("wager", "w1", "c1", "carry", "100", "2025-11-02T00:00:00Z"));
    let (status, refused) = host.close(&operator, "2025-10");
    refusal(status, &refused, "period");
    for month in ["2025-11", "2025-12"] {
        let (status, body) = host.close(&operator, month);
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    assert_eq!(host.totals(&operator), [("carry".to_owned(), dec("30"))].into());
}

/// RevShare worked from the accepted events: per affiliate, month by month in order, the NGR
/// plus the carryover; a positive base pays `percent` of it in cents (half away from zero) and
/// carries 0, otherwise it pays nothing and carries the base.
fn revshare_model(
    ngr: &BTreeMap<(usize, usize), Decimal>,
    percent: Decimal,
    affiliate: usize,
    months: usize,
) -> Vec<Decimal> {
    let mut carried = Decimal::ZERO;
    (0..months)
        .map(|month| {
            let base = ngr.get(&(month, affiliate)).copied().unwrap_or_default() + carried;
            if base <= Decimal::ZERO {
                carried = base;
                return Decimal::ZERO;
            }
            carried = Decimal::ZERO;
            (base * percent / Decimal::ONE_HUNDRED).round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero)
        })
        .collect()
}

const MONTHS: [&str; 3] = ["2025-01", "2025-02", "2025-03"];
const AMOUNTS: [&str; 4] = ["10", "250.50", "1000", "0.01"];
const PERCENTS: [&str; 2] = ["20", "30"];

/// Closes months while events of those months arrive: two senders send drawn wagers and wins in
/// batches, and a third closes the first two months after drawn numbers of batches. Whatever
/// the interleaving, what each settlement paid with its adjustments equals RevShare worked from
/// the events the host accepted, and `verify` finds no difference.
#[test]
fn prop_closes_while_events_arrive_pay_what_the_accepted_events_earn() {
    let (_dir, data) = data_dir();
    let host = Host::start(&data);
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(16);
    let mut runner = TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() });
    let next_case = AtomicUsize::new(0);
    // Per event: (kind, customer, amount, month); batch sizes; batches before each close; policy.
    let strategy = (
        prop::collection::vec((0u8..2, 0u8..4, 0u8..4, 0u8..3), 4..48),
        prop::collection::vec(1usize..6, 1..4),
        (0usize..6, 0usize..6),
        prop::bool::ANY,
    );
    let result = runner.run(&strategy, |(drawn, sizes, (first_close, second_close), refuse)| {
        let case = next_case.fetch_add(1, Ordering::SeqCst);
        let policy = if refuse { "refuse" } else { "adjust" };
        let affiliates: Vec<(String, &str)> = PERCENTS.iter().enumerate().map(|(n, p)| (format!("a{n}"), *p)).collect();
        let ids: Vec<(&str, &str)> = affiliates.iter().map(|(a, p)| (a.as_str(), *p)).collect();
        let operator = casino(&host, &format!("prop{case}"), &ids, policy);
        // Each customer's first event binds it, on the first day of the first month.
        for customer in 0..4 {
            let affiliate = &affiliates[customer % 2].0;
            let id = format!("c{customer}-d");
            host.accept(
                &operator,
                money("deposit", &id, &format!("c{customer}"), affiliate, "1", "2025-01-01T00:00:00Z"),
            );
        }
        let events: Vec<(usize, usize, Value)> = drawn
            .iter()
            .enumerate()
            .map(|(n, &(kind, customer, amount, month))| {
                let customer = customer as usize;
                let kind = ["wager", "win"][kind as usize];
                let at = format!("{}-15T12:00:00Z", MONTHS[month as usize]);
                let event = money(
                    kind,
                    &format!("e{n}"),
                    &format!("c{customer}"),
                    &affiliates[customer % 2].0,
                    AMOUNTS[amount as usize],
                    &at,
                );
                (month as usize, customer % 2, event)
            })
            .collect();
        // NGR of the accepted events per (month, affiliate).
        let ngr: std::sync::Mutex<BTreeMap<(usize, usize), Decimal>> = Default::default();
        let batches = AtomicUsize::new(0);
        let senders_done = AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for sender in 0..2 {
                let (host, operator, events, sizes, ngr) = (&host, &operator, &events, &sizes, &ngr);
                let (batches, senders_done) = (&batches, &senders_done);
                scope.spawn(move || {
                    // Customers 0 and 2 (of a0) to the first sender, 1 and 3 (of a1) to the
                    // second: each customer's events in order.
                    let mine: Vec<&(usize, usize, Value)> =
                        events.iter().filter(|(_, affiliate, _)| *affiliate == sender).collect();
                    let mut rest = mine.as_slice();
                    let mut size = sizes.iter().cycle().skip(sender);
                    while !rest.is_empty() {
                        let (batch, after) = rest.split_at((*size.next().unwrap()).min(rest.len()));
                        rest = after;
                        let body = Value::Array(batch.iter().map(|(_, _, e)| e.clone()).collect());
                        let (status, answer) = host.post_events(operator, &body);
                        batches.fetch_add(1, Ordering::SeqCst);
                        if status == StatusCode::UNPROCESSABLE_ENTITY {
                            assert_eq!(answer["details"][0]["field"], "occurred_at", "{answer}");
                            assert_eq!(policy, "refuse", "{answer}");
                            continue;
                        }
                        assert_eq!(status, StatusCode::OK, "{answer}");
                        let mut ngr = ngr.lock().unwrap();
                        for ((month, affiliate, event), result) in
                            batch.iter().zip(answer["results"].as_array().unwrap())
                        {
                            assert_eq!(result["status"], "accepted", "{result}");
                            let sign = if event["type"] == "win" { Decimal::NEGATIVE_ONE } else { Decimal::ONE };
                            *ngr.entry((*month, *affiliate)).or_default() += sign * amount(&event["amount"]);
                        }
                    }
                    senders_done.fetch_add(1, Ordering::SeqCst);
                });
            }
            // The closer: each month after some more batches (or once the senders are done).
            let mut wait_for = 0;
            for (month, after) in MONTHS.iter().take(2).zip([first_close, second_close]) {
                wait_for += after;
                let started = Instant::now();
                while batches.load(Ordering::SeqCst) < wait_for
                    && senders_done.load(Ordering::SeqCst) < 2
                    && started.elapsed() < Duration::from_secs(30)
                {
                    std::thread::sleep(Duration::from_millis(1));
                }
                let (status, body) = host.close(&operator, month);
                assert_eq!(status, StatusCode::OK, "{body}");
            }
        });
        let ngr = ngr.into_inner().unwrap();
        let paid = paid_per_settlement(&host, &operator);
        for (n, (affiliate, percent)) in affiliates.iter().enumerate() {
            let model = revshare_model(&ngr, dec(percent), n, 2);
            for (month, due) in MONTHS.iter().zip(model) {
                let settlement = settlement_id(month, affiliate);
                prop_assert_eq!(
                    paid.get(&settlement).copied().unwrap_or_default(),
                    due,
                    "{} under {}",
                    settlement,
                    policy
                );
            }
        }
        let report = host.verify(&operator);
        prop_assert_eq!(&report["differences"], &json!([]), "{}", report);
        prop_assert_eq!(&report["state_keys_differing"], &json!([]), "{}", report);
        Ok::<(), TestCaseError>(())
    });
    if let Err(failure) = result {
        panic!("{failure}");
    }
}
