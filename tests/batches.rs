//! Webhook batches are evaluated in one go, each event over what the events before it wrote,
//! and committed together. What a batch pays must not depend on that: the same events sent one
//! by one pay the same, and batches racing on state shared by their customers count each
//! customer once.

use crate::common;

use std::sync::Arc;

use common::{Host, Operator, amount, data_dir, dec};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// Six customers of aff1, interleaved: a first deposit, trades of 4 then 7 lots (the second
/// crosses multi-event's 10-lot threshold), a second deposit that pays nothing, and for every
/// other customer a chargeback of the first deposit, which claws back a commission made earlier
/// in the same batch. Then a copy of an earlier event, and a customer no affiliate referred.
fn story() -> Vec<Value> {
    let mut events = Vec::new();
    let customers = 0..6;
    for n in customers.clone() {
        events.push(json!({"id": format!("d-{n}"), "type": "deposit", "customer": format!("c{n}"), "amount": "100", "affiliate": "aff1"}));
    }
    for n in customers.clone() {
        events.push(json!({"id": format!("t-{n}-a"), "type": "trade", "customer": format!("c{n}"), "attributes": {"lots": "4"}}));
        events.push(json!({"id": format!("d2-{n}"), "type": "deposit", "customer": format!("c{n}"), "amount": "50"}));
    }
    for n in customers.clone() {
        events.push(json!({"id": format!("t-{n}-b"), "type": "trade", "customer": format!("c{n}"), "attributes": {"lots": "7"}}));
        if n % 2 == 0 {
            events.push(json!({"id": format!("cb-{n}"), "type": "chargeback", "customer": format!("c{n}"), "attributes": {"deposit": format!("d-{n}")}}));
        }
    }
    events.push(events[6].clone());
    events.push(json!({"id": "walk-in", "type": "deposit", "customer": "walk-in", "amount": "100"}));
    events
}

fn multi_event_operator(host: &Host, id: &str) -> Operator {
    let operator = host.create_operator(id);
    host.install_plugin(&operator, "multi-event");
    host.put_affiliate(&operator, "aff1", None, json!({}));
    operator
}

/// How many transactions the committer has run.
fn commit_groups(host: &Host) -> f64 {
    let metrics = host.metrics();
    let line = metrics
        .lines()
        .find(|line| line.starts_with("commission_host_ledger_commit_group_events_count "))
        .unwrap_or_else(|| panic!("the group count in\n{metrics}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

/// What an event's answer says, without the ids the ledger gives commissions.
#[derive(Debug, Clone, PartialEq)]
struct Answered {
    id: String,
    status: String,
    attributed_to: Option<String>,
    /// (affiliate, amount, rule)
    paid: Vec<(String, String, String)>,
}

fn summary(answer: &Value) -> Answered {
    Answered {
        id: answer["id"].as_str().unwrap().to_owned(),
        status: answer["status"].as_str().unwrap().to_owned(),
        attributed_to: answer["attributed_to"].as_str().map(str::to_owned),
        paid: answer["commissions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| (c["affiliate"].to_string(), amount(&c["amount"]).to_string(), c["rule"].to_string()))
            .collect(),
    }
}

#[test]
fn a_batch_pays_what_the_same_events_pay_one_by_one() {
    let (_dir, data) = data_dir();
    let host = Host::start(&data);
    let batched = multi_event_operator(&host, "batched");
    let one_by_one = multi_event_operator(&host, "one-by-one");
    let events = story();
    let groups_before = commit_groups(&host);

    let (status, body) = host.post_events(&batched, &Value::Array(events.clone()));
    assert_eq!(status, StatusCode::OK, "{body}");
    // Committed in a few groups, not one per event: the batch is split only where a
    // chargeback names a deposit still pending in the group (three of them).
    let groups = commit_groups(&host) - groups_before;
    assert!(groups <= 7.0, "{} events in {groups} commit groups", events.len());
    let from_batch: Vec<_> = body["results"].as_array().unwrap().iter().map(summary).collect();
    let from_singles: Vec<_> = events
        .iter()
        .map(|event| {
            let (status, body) = host.post_events(&one_by_one, event);
            assert_eq!(status, StatusCode::OK, "{body}");
            summary(&body)
        })
        .collect();
    assert_eq!(from_batch, from_singles);

    // Worked by hand: each customer earns 10 (first deposit), 5 (first trade) and 20 (past 10
    // lots on the second trade); c0, c2 and c4 lose the 10 to their chargebacks.
    let paid = |id: &str| -> Vec<String> {
        let answered = from_batch.iter().find(|answered| answered.id == id).unwrap();
        answered.paid.iter().map(|(_, amount, _)| amount.clone()).collect()
    };
    assert_eq!(paid("d-0"), ["10"]);
    assert_eq!(paid("t-0-a"), ["5"]);
    assert_eq!(paid("d2-0"), Vec::<String>::new());
    assert_eq!(paid("t-0-b"), ["20"]);
    assert_eq!(paid("cb-0"), ["-10"]);
    let statuses: Vec<&str> = from_batch.iter().map(|answered| answered.status.as_str()).collect();
    assert_eq!(statuses[..statuses.len() - 2], vec!["accepted"; events.len() - 2][..]);
    assert_eq!(statuses[events.len() - 2], "duplicate", "the copy of t-0-a");
    let walk_in = &from_batch[events.len() - 1];
    assert_eq!((walk_in.status.as_str(), &walk_in.attributed_to), ("accepted", &None));

    for operator in [&batched, &one_by_one] {
        let total: rust_decimal::Decimal =
            host.commissions(operator, "").iter().map(|commission| amount(&commission["amount"])).sum();
        assert_eq!(total, dec("180"), "operator {}", operator.id);
        common::assert_verifies(&host, operator);
    }
    // The chargebacks reverse the first deposits' commissions, made in the same batch.
    let ledger = host.commissions(&batched, "");
    let first_deposit = ledger.iter().find(|c| c["event_id"] == "d-2").unwrap();
    let chargeback = ledger.iter().find(|c| c["event_id"] == "cb-2").unwrap();
    assert_eq!(chargeback["reverses"], first_deposit["id"]);

    // Sent again whole, the batch is all duplicates and pays nothing more.
    let (status, again) = host.post_events(&batched, &Value::Array(events));
    assert_eq!(status, StatusCode::OK, "{again}");
    assert!(again["results"].as_array().unwrap().iter().all(|r| r["status"] == "duplicate"), "{again}");
    assert_eq!(host.commissions(&batched, "").len(), ledger.len());
}

#[test]
fn racing_batches_on_a_shared_tier_count_pay_each_customer_once() {
    let (_dir, data) = data_dir();
    let host = Arc::new(Host::start(&data));
    let casino = Arc::new(host.create_operator("casino"));
    host.install_plugin(&casino, "cpa");
    host.put_affiliate(&casino, "tiered", None, json!({"tiers": "1:100,11:150"}));

    // Four batches at once, each of ten customers who deposit twice: every first deposit moves
    // the affiliate's count, which all of them read.
    let senders: Vec<_> = (0..4)
        .map(|sender| {
            let (host, casino) = (host.clone(), casino.clone());
            std::thread::spawn(move || {
                let mut batch = Vec::new();
                for n in 0..10 {
                    let customer = format!("s{sender}-k{n}");
                    for deposit in 0..2 {
                        batch.push(json!({"id": format!("{customer}-d{deposit}"), "type": "deposit", "customer": customer,
                                          "amount": "50", "affiliate": "tiered", "occurred_at": "2025-11-10T12:00:00Z"}));
                    }
                }
                host.post_events(&casino, &Value::Array(batch))
            })
        })
        .collect();
    for sender in senders {
        let (status, body) = sender.join().unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(body["results"].as_array().unwrap().iter().all(|r| r["status"] == "accepted"), "{body}");
    }
    let ledger = host.commissions(&casino, "");
    let mut customers: Vec<&str> = ledger.iter().map(|c| c["customer"].as_str().unwrap()).collect();
    customers.sort();
    customers.dedup();
    assert_eq!((customers.len(), ledger.len()), (40, 40), "one CPA per customer, on the first deposit");
    assert!(ledger.iter().all(|c| c["event_id"].as_str().unwrap().ends_with("-d0")));
    let mut rates: Vec<_> = ledger.iter().map(|c| amount(&c["amount"])).collect();
    rates.sort();
    assert_eq!(rates, [vec![dec("100"); 10], vec![dec("150"); 30]].concat());
    common::assert_verifies(&host, &casino);
}
