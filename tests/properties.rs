//! Property tests through the real binary: random sequences of events, duplicates, reversals
//! and period closes, sent concurrently (one sender per customer, in batches, closes as
//! barriers) give the same ledger as the same sequence sent one event at a time, and the
//! multi-event totals match a model of the plugin's rules worked in the test.
//!
//! Events are dated in months the case also closes, so many arrive late. The operators take
//! them as received (`late_events: as_received`): the order of arrival is then the ledger's
//! order, which is what this test compares. Restating under `adjust` is `tests/late_events.rs`'.
//!
//! Each case uses its own customers and affiliates on four long-lived operators: multi-event
//! and RevShare, each once sent concurrently and once one by one. `PROPTEST_CASES` sets the
//! number of cases (128 by default).

use crate::common;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};

use common::{Entry, Host, Operator, amount, check_ledger_invariants, data_dir, dec, entries};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use reqwest::StatusCode;
use rust_decimal::Decimal;
use serde_json::{Value, json};

const MONTHS: [&str; 3] = ["2025-10", "2025-11", "2025-12"];
const LOTS: [&str; 5] = ["0.5", "2", "4", "6", "9.5"];
const MONEY: [&str; 4] = ["10", "250.50", "1000", "0.01"];

/// The two plugins, each on two operators: `seq` gets the steps one by one, `con` concurrently.
struct Operators {
    multi_seq: Operator,
    multi_con: Operator,
    rev_seq: Operator,
    rev_con: Operator,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Plugin {
    Multi,
    Rev,
}

#[derive(Debug, Clone)]
enum Step {
    Event {
        plugin: Plugin,
        customer: String,
        event: Value,
    },
    /// Sends step `n` (an event) again.
    Duplicate(usize),
    Close(&'static str),
}

/// Turns drawn numbers into steps, with ids, customers and affiliates of case `case`.
fn steps(case: usize, drawn: &[(u8, u8, u8, u8)]) -> Vec<Step> {
    let mut steps = Vec::new();
    let mut deposits: HashMap<String, Vec<String>> = HashMap::new();
    for (n, &(kind, customer, choice, month)) in drawn.iter().enumerate() {
        let customer_id = format!("k{case}-c{customer}");
        let id = format!("k{case}-e{n}");
        let at = format!("{}-15T12:00:00Z", MONTHS[month as usize % 3]);
        let money = MONEY[choice as usize % MONEY.len()];
        let multi = |event: Value| Step::Event { plugin: Plugin::Multi, customer: customer_id.clone(), event };
        let rev = |event: Value| Step::Event { plugin: Plugin::Rev, customer: customer_id.clone(), event };
        let step = match kind % 8 {
            0 => {
                deposits.entry(customer_id.clone()).or_default().push(id.clone());
                let affiliate = format!("k{case}-{}", ["a", "b"][customer as usize % 2]);
                multi(
                    json!({"id": id, "type": "deposit", "customer": customer_id, "amount": "50", "affiliate": affiliate, "occurred_at": at}),
                )
            }
            1 => multi(json!({"id": id, "type": "trade", "customer": customer_id, "occurred_at": at,
                "attributes": {"lots": LOTS[choice as usize % LOTS.len()]}})),
            2 => {
                let known = deposits.get(&customer_id).map(Vec::as_slice).unwrap_or_default();
                let deposit = known.get(choice as usize % known.len().max(1)).cloned().unwrap_or_else(|| "none".into());
                multi(json!({"id": id, "type": "chargeback", "customer": customer_id, "occurred_at": at,
                    "attributes": {"deposit": deposit}}))
            }
            3 => {
                let affiliate = format!("k{case}-{}", ["h", "p"][customer as usize % 2]);
                rev(
                    json!({"id": id, "type": "deposit", "customer": customer_id, "amount": "100", "affiliate": affiliate, "occurred_at": at}),
                )
            }
            4 => rev(json!({"id": id, "type": "wager", "customer": customer_id, "amount": money, "occurred_at": at})),
            5 => rev(json!({"id": id, "type": "win", "customer": customer_id, "amount": money, "occurred_at": at})),
            6 => Step::Close(MONTHS[month as usize % 3]),
            _ => {
                let events: Vec<usize> =
                    steps.iter().enumerate().filter(|(_, s)| matches!(s, Step::Event { .. })).map(|(i, _)| i).collect();
                match events.get(choice as usize % events.len().max(1)) {
                    Some(&original) => Step::Duplicate(original),
                    None => continue,
                }
            }
        };
        steps.push(step);
    }
    steps
}

fn affiliates(host: &Host, operators: &Operators, case: usize) {
    for operator in [&operators.multi_seq, &operators.multi_con] {
        host.put_affiliate(operator, &format!("k{case}-a"), None, json!({}));
        host.put_affiliate(operator, &format!("k{case}-b"), None, json!({"ftd_cpa": "40"}));
    }
    for operator in [&operators.rev_seq, &operators.rev_con] {
        host.put_affiliate(operator, &format!("k{case}-h"), None, json!({"revshare_percent": "20", "cpa": "50"}));
        host.put_affiliate(operator, &format!("k{case}-p"), None, json!({"revshare_percent": "30"}));
    }
}

/// Sends events (one, or a batch); every answer is 200, each event accepted, a duplicate, or
/// failed (a second clawback of the same deposit is refused by the host).
fn send(host: &Host, operator: &Operator, events: &[Value]) {
    let body = if events.len() == 1 { events[0].clone() } else { Value::Array(events.to_vec()) };
    let (status, answer) = host.post_events(operator, &body);
    assert_eq!(status, StatusCode::OK, "{answer}");
    let results = answer["results"].as_array().cloned().unwrap_or_else(|| vec![answer.clone()]);
    for result in results {
        assert!(["accepted", "duplicate", "failed"].contains(&result["status"].as_str().unwrap()), "{result}");
    }
}

/// Closes `month` (again, if closed: that settles the affiliates added since), after the
/// months before it the operator never closed, since the host closes months in order. Before a
/// month closes for the first time, the month before it is closed again: it must be settled for
/// every affiliate, and this case's were added since it closed.
fn close(host: &Host, operator: &Operator, month: &'static str) {
    static LATEST: std::sync::Mutex<BTreeMap<String, &str>> = std::sync::Mutex::new(BTreeMap::new());
    let mut latest = LATEST.lock().unwrap();
    let closed_up_to = latest.get(&operator.id).copied();
    for earlier in MONTHS.iter().take_while(|earlier| **earlier <= month) {
        let new = closed_up_to.is_none_or(|latest| *earlier > latest);
        let before_a_new_one = closed_up_to == Some(*earlier) && month > *earlier;
        if *earlier == month || new || before_a_new_one {
            let (status, answer) = host.close(operator, earlier);
            assert_eq!(status, StatusCode::OK, "{answer}");
        }
    }
    if closed_up_to.is_none_or(|latest| month > latest) {
        latest.insert(operator.id.clone(), month);
    }
}

fn event_of(steps: &[Step], n: usize) -> (Plugin, &str, &Value) {
    match &steps[n] {
        Step::Event { plugin, customer, event } => (*plugin, customer, event),
        _ => unreachable!("duplicates name events"),
    }
}

fn one_by_one(host: &Host, operators: &Operators, steps: &[Step]) {
    let operator = |plugin| if plugin == Plugin::Multi { &operators.multi_seq } else { &operators.rev_seq };
    for step in steps {
        match step {
            Step::Event { plugin, event, .. } => send(host, operator(*plugin), std::slice::from_ref(event)),
            Step::Duplicate(n) => {
                let (plugin, _, event) = event_of(steps, *n);
                send(host, operator(plugin), std::slice::from_ref(event));
            }
            Step::Close(month) => {
                close(host, &operators.multi_seq, month);
                close(host, &operators.rev_seq, month);
            }
        }
    }
}

/// Between closes, one sender per customer (its events in order, in batches of `batches`
/// sizes), all at once; a duplicate goes with the original's sender, after it.
fn concurrently(host: &Host, operators: &Operators, steps: &[Step], batches: &[usize]) {
    let operator = |plugin| if plugin == Plugin::Multi { &operators.multi_con } else { &operators.rev_con };
    let mut lanes: BTreeMap<(String, bool), Vec<Value>> = BTreeMap::new();
    let flush = |lanes: &mut BTreeMap<(String, bool), Vec<Value>>| {
        std::thread::scope(|scope| {
            for (lane, ((_, is_multi), events)) in std::mem::take(lanes).into_iter().enumerate() {
                let operator = operator(if is_multi { Plugin::Multi } else { Plugin::Rev });
                scope.spawn(move || {
                    let mut rest = events.as_slice();
                    let mut sizes = batches.iter().cycle().skip(lane);
                    while !rest.is_empty() {
                        let (batch, after) = rest.split_at((*sizes.next().unwrap()).min(rest.len()));
                        send(host, operator, batch);
                        rest = after;
                    }
                });
            }
        });
    };
    for step in steps {
        match step {
            Step::Event { plugin, customer, event } => {
                lanes.entry((customer.clone(), *plugin == Plugin::Multi)).or_default().push(event.clone())
            }
            Step::Duplicate(n) => {
                let (plugin, customer, event) = event_of(steps, *n);
                lanes.entry((customer.to_owned(), plugin == Plugin::Multi)).or_default().push(event.clone());
            }
            Step::Close(month) => {
                flush(&mut lanes);
                close(host, &operators.multi_con, month);
                close(host, &operators.rev_con, month);
            }
        }
    }
    flush(&mut lanes);
}

/// The multi-event rules, worked per customer in step order: an event before the customer's
/// first deposit is unattributed and pays nothing; the first deposit pays the CPA (a: 10,
/// b: 40), the first trade 5, lots over 10 a bonus of 20 once, and the first chargeback of the
/// first deposit takes the CPA back.
fn multi_event_model(case: usize, steps: &[Step]) -> BTreeMap<String, Decimal> {
    #[derive(Default)]
    struct Customer {
        affiliate: Option<String>,
        cpa: Decimal,
        first_deposit: Option<String>,
        traded: bool,
        lots: Decimal,
        bonus: bool,
        reversed: bool,
    }
    let mut customers: HashMap<&str, Customer> = HashMap::new();
    let mut totals: BTreeMap<String, Decimal> = BTreeMap::new();
    let mut seen = std::collections::HashSet::new();
    for step in steps {
        let Step::Event { plugin: Plugin::Multi, customer, event } = step else { continue };
        if !seen.insert(event["id"].as_str().unwrap()) {
            continue;
        }
        let state = customers.entry(customer).or_default();
        let mut pay = |affiliate: &String, amount: Decimal| *totals.entry(affiliate.clone()).or_default() += amount;
        match event["type"].as_str().unwrap() {
            "deposit" => {
                if state.affiliate.is_none() {
                    let affiliate = event["affiliate"].as_str().unwrap().to_owned();
                    state.cpa = if affiliate == format!("k{case}-b") { dec("40") } else { dec("10") };
                    state.affiliate = Some(affiliate);
                }
                if state.first_deposit.is_none() {
                    state.first_deposit = Some(event["id"].as_str().unwrap().to_owned());
                    pay(state.affiliate.as_ref().unwrap(), state.cpa);
                }
            }
            "trade" => {
                let Some(affiliate) = &state.affiliate else { continue };
                if !state.traded {
                    state.traded = true;
                    pay(affiliate, dec("5"));
                }
                state.lots += dec(event["attributes"]["lots"].as_str().unwrap());
                if state.lots > dec("10") && !state.bonus {
                    state.bonus = true;
                    pay(affiliate, dec("20"));
                }
            }
            _ => {
                let Some(affiliate) = &state.affiliate else { continue };
                let reverses_first = state.first_deposit.as_deref() == event["attributes"]["deposit"].as_str();
                if reverses_first && !state.reversed {
                    state.reversed = true;
                    pay(affiliate, -state.cpa);
                }
            }
        }
    }
    totals
}

/// A case's commissions on an operator, comparable across operators, and the totals per
/// affiliate.
fn ledger_of(host: &Host, operator: &Operator, affiliates: &[String]) -> (Vec<Entry>, BTreeMap<String, Decimal>) {
    let mut ledger = Vec::new();
    let mut totals = BTreeMap::new();
    for affiliate in affiliates {
        for commission in host.commissions(operator, &format!("affiliate={affiliate}")) {
            *totals.entry(affiliate.clone()).or_insert(Decimal::ZERO) += amount(&commission["amount"]);
            ledger.push(commission);
        }
    }
    (entries(&ledger), totals)
}

#[test]
fn concurrent_interleavings_give_the_ledger_of_one_by_one() {
    let (_dir, data) = data_dir();
    let host = Host::start(&data);
    let make = |id: &str, plugin: &str| {
        let operator = host.create_operator(id);
        host.install_plugin(&operator, plugin);
        let (status, body) = common::answer(
            host.client
                .put(host.url(&format!("/v1/operators/{id}/settings")))
                .bearer_auth(&operator.api_key)
                .json(&json!({"late_events": "as_received"}))
                .send(),
        );
        assert_eq!(status, StatusCode::OK, "{body}");
        // The operator's history starts in the first month the cases close (a month before
        // anything of the operator's cannot be closed): an event of no one's, paying nothing.
        let start =
            json!({"id": "start", "type": "registration", "customer": "nobody", "occurred_at": "2025-10-01T00:00:00Z"});
        assert_eq!(host.post_events(&operator, &start).0, StatusCode::OK);
        operator
    };
    let operators = Operators {
        multi_seq: make("multi-seq", "multi-event"),
        multi_con: make("multi-con", "multi-event"),
        rev_seq: make("rev-seq", "revshare"),
        rev_con: make("rev-con", "revshare"),
    };
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(128);
    let mut runner = TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() });
    let next_case = AtomicUsize::new(0);
    let compared = AtomicUsize::new(0);
    let strategy =
        (prop::collection::vec((0u8..8, 0u8..4, 0u8..8, 0u8..3), 1..40), prop::collection::vec(1usize..4, 1..8));
    let result = runner.run(&strategy, |(drawn, batches)| {
        let case = next_case.fetch_add(1, Ordering::SeqCst);
        let steps = steps(case, &drawn);
        affiliates(&host, &operators, case);
        one_by_one(&host, &operators, &steps);
        concurrently(&host, &operators, &steps, &batches);

        let multi: Vec<String> = ["a", "b"].iter().map(|a| format!("k{case}-{a}")).collect();
        let rev: Vec<String> = ["h", "p"].iter().map(|a| format!("k{case}-{a}")).collect();
        let (seq, seq_totals) = ledger_of(&host, &operators.multi_seq, &multi);
        let (con, con_totals) = ledger_of(&host, &operators.multi_con, &multi);
        compared.fetch_add(seq.len(), Ordering::SeqCst);
        prop_assert_eq!(&con, &seq, "multi-event: concurrent and one by one differ");
        let model = multi_event_model(case, &steps);
        let nonzero = |totals: &BTreeMap<String, Decimal>| -> BTreeMap<String, Decimal> {
            totals.iter().filter(|(_, t)| !t.is_zero()).map(|(a, t)| (a.clone(), *t)).collect()
        };
        prop_assert_eq!(nonzero(&seq_totals), nonzero(&model), "multi-event: the ledger differs from the model");
        prop_assert_eq!(seq_totals, con_totals);
        let (seq, _) = ledger_of(&host, &operators.rev_seq, &rev);
        let (con, _) = ledger_of(&host, &operators.rev_con, &rev);
        compared.fetch_add(seq.len(), Ordering::SeqCst);
        prop_assert_eq!(con, seq, "revshare: concurrent and one by one differ");
        Ok::<(), TestCaseError>(())
    });
    if let Err(failure) = result {
        panic!("{failure}");
    }
    // The whole history of every operator keeps the ledger's invariants and replays exactly.
    for operator in [&operators.multi_seq, &operators.multi_con, &operators.rev_seq, &operators.rev_con] {
        check_ledger_invariants(&host, operator);
        common::assert_verifies(&host, operator);
    }
    println!(
        "{} cases (with shrinking), {} commissions compared",
        next_case.load(Ordering::SeqCst),
        compared.load(Ordering::SeqCst)
    );
}
