//! The ledger under crashes: the real server takes concurrent postbacks, API-key webhooks and
//! signed webhooks, with deliberate duplicates, and is SIGKILLed at random moments, then started
//! again on the same directory, cycle after cycle. Senders behave as real ones do: an answer
//! that never came is retried after the restart.
//!
//! Afterwards every acknowledged event is there, accepted; nothing is paid twice; the ledger's
//! invariants hold; `verify` replays it without a difference; and the totals are those worked
//! by hand from the plugin's rules, and those of a clean run of the same events on a fresh
//! directory.
//!
//! `CRASH_LOOP_CYCLES` sets the number of kills (20 by default; more for a nightly run) and
//! `CRASH_LOOP_SEED` replays a printed draw.

use crate::common;

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Host, Operator, Rng, assert_verifies, check_ledger_invariants, data_dir, dec, entries, unix_now};
use reqwest::StatusCode;
use rust_decimal::Decimal;
use serde_json::{Value, json};

const SENDERS: usize = 4;
/// The affiliates customers are bound to: `aff1` alone, `sub` under `master` (10% override).
const AFFILIATES: [&str; 2] = ["aff1", "sub"];
const LOTS: [&str; 5] = ["0.5", "2", "4", "6", "9.5"];

/// One sender's customers, each a deposit, trades and perhaps a chargeback, in that order.
/// It lives across cycles: what it was sending when the host died it sends again first.
struct Sender {
    number: usize,
    rng: Rng,
    customers: u64,
    /// The rest of the current customer's events.
    queue: std::collections::VecDeque<Value>,
    /// Sent, no answer: the host died meanwhile.
    uncertain: Option<Value>,
    /// Every event this sender acknowledged, in the order it sent them.
    acknowledged: Vec<Value>,
}

impl Sender {
    fn new(number: usize, seed: u64) -> Sender {
        Sender {
            number,
            rng: Rng::new(seed),
            customers: 0,
            queue: Default::default(),
            uncertain: None,
            acknowledged: Vec::new(),
        }
    }

    fn next_event(&mut self) -> Value {
        if let Some(event) = self.uncertain.take() {
            return event;
        }
        if self.queue.is_empty() {
            let customer = format!("c{}-{}", self.number, self.customers);
            self.customers += 1;
            let affiliate = AFFILIATES[self.rng.below(0..2) as usize];
            let deposit = format!("{customer}-d");
            self.queue.push_back(json!({
                "id": deposit, "type": "deposit", "customer": customer, "amount": "50", "affiliate": affiliate
            }));
            for trade in 0..self.rng.below(0..5) {
                let lots = LOTS[self.rng.below(0..LOTS.len() as u64) as usize];
                self.queue.push_back(json!({
                    "id": format!("{customer}-t{trade}"), "type": "trade", "customer": customer,
                    "attributes": {"lots": lots}
                }));
            }
            if self.rng.chance(25) {
                self.queue.push_back(json!({
                    "id": format!("{customer}-cb"), "type": "chargeback", "customer": customer,
                    "attributes": {"deposit": deposit}
                }));
            }
        }
        self.queue.pop_front().expect("a customer has events")
    }
}

/// The three ways in; the same event sent any way hashes the same, so a resend is a duplicate.
fn send(host: &Host, operator: &Operator, event: &Value, way: u64) -> reqwest::Result<reqwest::blocking::Response> {
    let events = host.url(&format!("/v1/operators/{}/events", operator.id));
    match way {
        0 => host.client.post(events).bearer_auth(&operator.api_key).json(event).send(),
        1 => {
            let id = format!("msg-{}", event["id"].as_str().unwrap());
            host.signed_webhook(&operator.id, &operator.webhook_secret, &id, unix_now(), &event.to_string()).send()
        }
        _ => {
            let mut query = form_urlencoded::Serializer::new(String::new());
            query.append_pair("token", &operator.postback_token);
            for (key, value) in event.as_object().unwrap() {
                match value {
                    Value::Object(attributes) => {
                        for (key, value) in attributes {
                            query.append_pair(key, value.as_str().unwrap());
                        }
                    }
                    value => {
                        query.append_pair(key, value.as_str().unwrap());
                    }
                }
            }
            host.client.get(host.url(&format!("/postback/{}?{}", operator.id, query.finish()))).send()
        }
    }
}

/// Sends once; `Some(true)` if acknowledged (accepted, or a duplicate of what is stored),
/// `None` if no answer came. Any other answer fails the test.
fn deliver(host: &Host, operator: &Operator, event: &Value, way: u64) -> Option<()> {
    let response = send(host, operator, event, way).ok()?;
    let status = response.status();
    let body: Value = response.json().ok()?;
    assert_eq!(status, StatusCode::OK, "{event} -> {body}");
    let disposition = body["status"].as_str().unwrap_or_default();
    assert!(["accepted", "duplicate"].contains(&disposition), "{event} -> {body}");
    Some(())
}

/// Sends until the host stops answering; with `drain`, only what is uncertain.
fn run_sender(
    mut sender: Sender,
    host: Arc<Host>,
    operator: Arc<Operator>,
    sent: Arc<Mutex<Vec<Value>>>,
    drain: bool,
) -> Sender {
    loop {
        if drain && sender.uncertain.is_none() {
            return sender;
        }
        let event = sender.next_event();
        sent.lock().unwrap().push(event.clone());
        let way = sender.rng.below(0..3);
        if deliver(&host, &operator, &event, way).is_none() {
            sender.uncertain = Some(event);
            return sender;
        }
        // A sender unsure the answer reached it sends again, sometimes another way.
        if sender.rng.chance(10) && deliver(&host, &operator, &event, sender.rng.below(0..3)).is_none() {
            sender.acknowledged.push(event);
            return sender;
        }
        sender.acknowledged.push(event);
    }
}

/// Resends events others sent already (or are sending), concurrently with them: each is
/// answered as a duplicate, or applies the event once if it gets there first.
fn run_duplicator(mut rng: Rng, host: Arc<Host>, operator: Arc<Operator>, sent: Arc<Mutex<Vec<Value>>>) -> u64 {
    let mut resent = 0;
    loop {
        let event = {
            let sent = sent.lock().unwrap();
            if sent.is_empty() { None } else { Some(sent[rng.below(0..sent.len() as u64) as usize].clone()) }
        };
        let Some(event) = event else {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        };
        if deliver(&host, &operator, &event, rng.below(0..3)).is_none() {
            return resent;
        }
        resent += 1;
    }
}

fn set_up(host: &Host) -> Operator {
    let acme = host.create_operator("acme");
    host.install_plugin(&acme, "multi-event");
    host.put_affiliate(&acme, "aff1", None, json!({}));
    host.put_affiliate(&acme, "master", None, json!({"override_percent": "10"}));
    host.put_affiliate(&acme, "sub", Some("master"), json!({}));
    acme
}

/// The plugin's rules worked by hand, per customer: the first deposit pays 10, the first trade
/// 5, cumulative lots over 10 pay 20 once, a chargeback of the first deposit takes the 10 back;
/// `master` earns 10% of each of `sub`'s. Returns the totals and the number of commissions.
fn worked_by_hand(events: &[Value]) -> (BTreeMap<String, Decimal>, usize) {
    let mut customers: BTreeMap<&str, (Option<&str>, usize, Decimal, bool)> = BTreeMap::new();
    for event in events {
        let customer = customers.entry(event["customer"].as_str().unwrap()).or_default();
        match event["type"].as_str().unwrap() {
            "deposit" => customer.0 = event["affiliate"].as_str(),
            "trade" => {
                customer.1 += 1;
                customer.2 += dec(event["attributes"]["lots"].as_str().unwrap());
            }
            _ => customer.3 = true,
        }
    }
    let mut totals = BTreeMap::new();
    let mut count = 0;
    for (affiliate, trades, lots, charged_back) in customers.into_values() {
        let affiliate = affiliate.expect("each customer's deposit comes first and is acknowledged");
        let mut direct = vec![dec("10")];
        if trades > 0 {
            direct.push(dec("5"));
        }
        if lots > dec("10") {
            direct.push(dec("20"));
        }
        if charged_back {
            direct.push(dec("-10"));
        }
        count += direct.len();
        *totals.entry(affiliate.to_owned()).or_insert(Decimal::ZERO) += direct.iter().sum::<Decimal>();
        if affiliate == "sub" {
            count += direct.len();
            *totals.entry("master".to_owned()).or_insert(Decimal::ZERO) +=
                direct.iter().map(|paid| paid / Decimal::TEN).sum::<Decimal>();
        }
    }
    (totals, count)
}

/// Of the pending commissions, pays every sixth, approves every other third, rejects some more;
/// returns the ids per status moved to.
fn move_statuses(host: &Host, operator: &Operator) -> BTreeMap<&'static str, HashSet<String>> {
    let mut moved: BTreeMap<&'static str, HashSet<String>> = BTreeMap::new();
    // A clawed-back commission is `reversed` already; only pending ones move.
    for (n, commission) in host.commissions(operator, "status=pending").iter().enumerate() {
        let id = commission["id"].as_str().unwrap();
        let path = format!("/v1/operators/{}/commissions/{id}/status", operator.id);
        let set = |status: &'static str| {
            let (code, body) = common::answer(
                host.client
                    .post(host.url(&path))
                    .bearer_auth(&operator.api_key)
                    .json(&json!({"status": status}))
                    .send(),
            );
            assert_eq!(code, StatusCode::OK, "{body}");
        };
        let status = match n {
            n if n % 6 == 0 => {
                set("approved");
                set("paid");
                "paid"
            }
            n if n % 3 == 0 => {
                set("approved");
                "approved"
            }
            n if n % 9 == 4 => {
                set("rejected");
                "rejected"
            }
            _ => continue,
        };
        moved.entry(status).or_default().insert(id.to_owned());
    }
    moved
}

#[test]
fn sigkill_at_random_moments_loses_nothing_acknowledged_and_pays_nothing_twice() {
    let cycles: usize = std::env::var("CRASH_LOOP_CYCLES").ok().and_then(|n| n.parse().ok()).unwrap_or(20);
    let mut rng = Rng::from_env("CRASH_LOOP_SEED");
    let (_dir, data) = data_dir();
    let mut senders: Vec<Sender> = (0..SENDERS).map(|number| Sender::new(number, rng.next_u64())).collect();
    let sent = Arc::new(Mutex::new(Vec::new()));
    let mut operator = None;
    let (mut kills, mut duplicates_sent) = (0, 0);

    for cycle in 0..=cycles {
        let host = Arc::new(Host::start(&data));
        let acme = Arc::new(operator.get_or_insert_with(|| set_up(&host)).clone());
        let last = cycle == cycles;
        let threads: Vec<_> = senders
            .drain(..)
            .map(|sender| {
                let (host, acme, sent) = (host.clone(), acme.clone(), sent.clone());
                std::thread::spawn(move || run_sender(sender, host, acme, sent, last))
            })
            .collect();
        let duplicator = (!last).then(|| {
            let (host, acme, sent, rng) = (host.clone(), acme.clone(), sent.clone(), Rng::new(rng.next_u64()));
            std::thread::spawn(move || run_duplicator(rng, host, acme, sent))
        });
        if last {
            senders = threads.into_iter().map(|thread| thread.join().unwrap()).collect();
            break;
        }
        // Any moment: before the first event, mid-request, mid-flush, between answers.
        std::thread::sleep(Duration::from_millis(rng.below(0..700)));
        let status = std::process::Command::new("kill").args(["-KILL", &host.pid().to_string()]).status().unwrap();
        assert!(status.success());
        kills += 1;
        senders = threads.into_iter().map(|thread| thread.join().expect("a sender saw a wrong answer")).collect();
        duplicates_sent += duplicator.unwrap().join().expect("the duplicator saw a wrong answer");
        drop(Arc::into_inner(host).expect("the threads are done"));
    }

    // Every sender retried what was uncertain: all it sent is acknowledged.
    assert!(senders.iter().all(|sender| sender.uncertain.is_none()));
    let acknowledged: Vec<Value> = senders.iter().flat_map(|sender| sender.acknowledged.clone()).collect();
    let ids: HashSet<&str> = acknowledged.iter().map(|event| event["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), acknowledged.len(), "each event is acknowledged once per sender");

    let host = Host::start(&data);
    let acme = operator.expect("set up in the first cycle");
    for id in &ids {
        let (status, event) = host.get(&acme, &format!("/events/{id}"));
        assert_eq!(status, StatusCode::OK, "{id} was acknowledged, then lost");
        assert_eq!(event["status"], "accepted", "{event}");
    }
    // The operator moves some statuses (approve, pay, reject); a SIGKILL right after keeps them.
    let moved = move_statuses(&host, &acme);
    host.kill();
    let host = Host::start(&data);
    for (status, ids) in &moved {
        let listed: HashSet<String> = host
            .commissions(&acme, &format!("status={status}"))
            .iter()
            .map(|c| c["id"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(&listed, ids, "{status}");
    }
    let ledger = check_ledger_invariants(&host, &acme);
    let (expected_totals, expected_count) = worked_by_hand(&acknowledged);
    assert_eq!(host.totals(&acme), expected_totals);
    assert_eq!(ledger.len(), expected_count);
    let replayed = assert_verifies(&host, &acme);
    assert_eq!(replayed as usize, ids.len(), "every event is in the ledger order once");

    // The same events, once each, in one clean process on a fresh directory.
    let (_clean_dir, clean_data) = data_dir();
    let clean = Host::start(&clean_data);
    let clean_acme = set_up(&clean);
    for sender in &senders {
        for event in &sender.acknowledged {
            clean.accept(&clean_acme, event.clone());
        }
    }
    assert_eq!(clean.totals(&clean_acme), host.totals(&acme));
    assert_eq!(entries(&clean.commissions(&clean_acme, "")), entries(&ledger));

    println!(
        "crash loop: {kills} SIGKILLs, {} events acknowledged, {duplicates_sent} concurrent duplicates, {} commissions",
        ids.len(),
        ledger.len()
    );
}
