//! One sequencer per operator: operators share the evaluation threads fairly, an operator whose
//! plugin keeps hitting its limits is slowed down without holding the others back, a full queue
//! refuses what does not fit and loses nothing it took, and a thousand operators do not mean a
//! thousand threads.

use crate::common;

use std::collections::BTreeSet;
use std::sync::Arc;

use common::{Host, Operator, answer, data_dir, metric};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// Posts one event; the status, the `Retry-After` header and the body.
fn post(host: &Host, operator: &Operator, event: &Value) -> (StatusCode, Option<String>, Value) {
    let response = host
        .client
        .post(host.url(&format!("/v1/operators/{}/events", operator.id)))
        .bearer_auth(&operator.api_key)
        .json(event)
        .send()
        .expect("the host answers");
    let status = response.status();
    let retry_after =
        response.headers().get("retry-after").map(|value| value.to_str().expect("an ASCII header").to_owned());
    (status, retry_after, response.json().unwrap_or(Value::Null))
}

fn hostile_operator(host: &Host, id: &str) -> Operator {
    let operator = host.create_operator(id);
    host.install_plugin(&operator, "hostile");
    host.put_affiliate(&operator, "aff1", None, json!({}));
    operator
}

#[test]
fn a_plugin_that_hits_its_limits_is_throttled_and_the_other_operator_keeps_every_event() {
    let (_dir, data) = data_dir();
    let host = Arc::new(Host::start_with(&data, &["--evaluation-threads", "2"]));
    let good = Arc::new(host.multi_event_with_aff1("good"));
    let hostile = Arc::new(hostile_operator(&host, "hostile"));
    // Little fuel, so that each failing evaluation is short and the test stays quick.
    host.put_limits(&hostile, json!({"fuel": 2_000_000}));

    let attacks = ["loop", "trap", "allocate", "recurse"];
    let attackers: Vec<_> = (0..2)
        .map(|thread| {
            let (host, hostile) = (host.clone(), hostile.clone());
            std::thread::spawn(move || {
                (0..5)
                    .map(|n| {
                        let id = format!("h-{thread}-{n}");
                        let event = json!({"id": id, "type": "deposit", "customer": format!("h{thread}"),
                                           "affiliate": "aff1", "attributes": {"attack": attacks[n % attacks.len()]}});
                        (id, post(&host, &hostile, &event))
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let senders: Vec<_> = (0..3)
        .map(|thread| {
            let (host, good) = (host.clone(), good.clone());
            std::thread::spawn(move || {
                (0..30)
                    .map(|n| {
                        let event = json!({"id": format!("g-{thread}-{n}"), "type": "deposit",
                                           "customer": format!("c{thread}-{}", n % 5), "amount": "100", "affiliate": "aff1"});
                        post(&host, &good, &event)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    for sender in senders {
        for (status, _, body) in sender.join().unwrap() {
            assert_eq!((status, body["status"].as_str()), (StatusCode::OK, Some("accepted")), "{body}");
        }
    }
    for attacker in attackers {
        for (id, (status, _, body)) in attacker.join().unwrap() {
            // Each one stored as failed, by the limit it met: waited for, never lost.
            assert_eq!((status, body["status"].as_str()), (StatusCode::OK, Some("failed")), "{id}: {body}");
            let (status, stored) = host.get(&hostile, &format!("/events/{id}"));
            assert_eq!((status, stored["status"].as_str()), (StatusCode::OK, Some("failed")), "{stored}");
        }
    }
    // The multi-event plugin pays each customer's first deposit: 15 customers.
    assert_eq!(host.commissions(&good, "").len(), 15, "every first deposit of the well-behaved operator paid");

    let metrics = host.metrics();
    let throttled = metric(&metrics, r#"commission_host_throttled_total{operator="hostile"}"#);
    assert!(throttled.is_some_and(|turns| turns >= 1.0), "the hostile operator was not throttled:\n{metrics}");
    let waited = metric(&metrics, r#"commission_host_throttled_seconds_total{operator="hostile"}"#);
    assert!(waited.is_some_and(|seconds| seconds > 0.0), "{metrics}");
    assert_eq!(metric(&metrics, r#"commission_host_throttled_total{operator="good"}"#), None, "{metrics}");
}

#[test]
fn a_full_queue_answers_503_naming_the_operator_and_loses_nothing_it_took() {
    let (_dir, data) = data_dir();
    let host = Arc::new(Host::start_with(&data, &["--evaluation-threads", "1", "--operator-queue-events", "2"]));
    let busy = Arc::new(hostile_operator(&host, "busy"));

    // Each evaluation works a while (and succeeds), so 12 senders at once overfill a queue of 2.
    let senders: Vec<_> = (0..12)
        .map(|thread| {
            let (host, busy) = (host.clone(), busy.clone());
            std::thread::spawn(move || {
                (0..4)
                    .map(|n| {
                        let id = format!("e-{thread}-{n}");
                        let event = json!({"id": id, "type": "deposit", "customer": format!("c{thread}"), "affiliate": "aff1",
                                           "attributes": {"attack": "contend", "spin": "1500000"}});
                        (id, post(&host, &busy, &event))
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let (mut taken, mut refused) = (BTreeSet::new(), BTreeSet::new());
    for sender in senders {
        for (id, (status, retry_after, body)) in sender.join().unwrap() {
            match status {
                StatusCode::OK => {
                    assert_eq!(body["status"], "accepted", "{body}");
                    taken.insert(id);
                }
                StatusCode::SERVICE_UNAVAILABLE => {
                    assert_eq!(body["error"], "queue_full", "{body}");
                    assert!(body["message"].as_str().unwrap().contains(r#"operator "busy""#), "{body}");
                    assert_eq!(body["details"][0]["field"], "operator", "{body}");
                    assert!(retry_after.is_some_and(|seconds| seconds.parse::<u64>().unwrap() >= 1), "{body}");
                    refused.insert(id);
                }
                other => panic!("{id}: {other} {body}"),
            }
        }
    }
    assert!(!refused.is_empty(), "nothing was refused: the queue never filled");
    assert!(!taken.is_empty());

    // Every acknowledged event is in the ledger once, with its one commission; nothing refused is.
    let commissions = host.commissions(&busy, "");
    let paid: Vec<&str> = commissions.iter().map(|commission| commission["event_id"].as_str().unwrap()).collect();
    assert_eq!(paid.iter().copied().collect::<BTreeSet<_>>(), taken.iter().map(String::as_str).collect());
    assert_eq!(paid.len(), taken.len(), "an event paid twice");
    for id in &refused {
        let (status, body) = host.get(&busy, &format!("/events/{id}"));
        assert_eq!(status, StatusCode::NOT_FOUND, "{id} was refused, yet stored: {body}");
    }
    let metrics = host.metrics();
    let full = metric(&metrics, r#"commission_host_queue_full_total{operator="busy"}"#).unwrap_or(0.0);
    assert_eq!(full as usize, refused.len(), "{metrics}");
    assert_eq!(metric(&metrics, r#"commission_host_operator_queue_events{operator="busy"}"#), Some(0.0));
    common::assert_verifies(&host, &busy);
}

#[test]
fn a_thousand_operators_share_a_bounded_number_of_evaluation_threads() {
    const OPERATORS: usize = 1000;
    const THREADS: usize = 2;
    let (_dir, data) = data_dir();
    let host = Arc::new(Host::start_with(&data, &["--evaluation-threads", &THREADS.to_string()]));
    // A plugin upload compiles and smoke-runs it (most of a second): a few operators run one,
    // the others keep their events unattributed, which still takes a turn of their sequencer.
    let evaluating: Vec<Operator> = (0..4).map(|n| host.multi_event_with_aff1(&format!("plugged{n}"))).collect();
    let mut operators: Vec<(Operator, Value)> = evaluating
        .into_iter()
        .map(|operator| {
            (operator, json!({"id": "d-1", "type": "deposit", "customer": "c1", "amount": "100", "affiliate": "aff1"}))
        })
        .collect();
    operators.extend((operators.len()..OPERATORS).map(|n| {
        (
            host.create_operator(&format!("op{n}")),
            json!({"id": "d-1", "type": "deposit", "customer": "c1", "amount": "100"}),
        )
    }));
    let operators = Arc::new(operators);

    let senders: Vec<_> = (0..16)
        .map(|thread| {
            let (host, operators) = (host.clone(), operators.clone());
            std::thread::spawn(move || {
                for (operator, event) in operators.iter().skip(thread).step_by(16) {
                    host.accept(operator, event.clone());
                }
            })
        })
        .collect();
    for sender in senders {
        sender.join().unwrap();
    }

    let metrics = host.metrics();
    assert_eq!(metric(&metrics, "commission_host_evaluation_threads"), Some(THREADS as f64), "{metrics}");
    let peak = metric(&metrics, "commission_host_evaluation_turns_peak").expect("the peak of turns");
    assert!((1.0..=THREADS as f64).contains(&peak), "{peak} turns at once on {THREADS} threads");
    // No sequencer is left running, and the process kept to a handful of threads: not one per
    // operator, nor one per event.
    assert_eq!(metric(&metrics, "commission_host_sequencers"), Some(0.0), "{metrics}");
    let threads = metric(&metrics, "commission_host_process_threads").expect("the process's threads");
    let cores = std::thread::available_parallelism().map_or(1, |cores| cores.get()) as f64;
    assert!(threads < 2.0 * cores + 64.0, "{threads} threads for {OPERATORS} operators");
    for (operator, _) in &operators[..4] {
        assert_eq!(host.commissions(operator, "").len(), 1, "{}", operator.id);
    }
}

/// What one event of a batch's answer did: its status, and its commissions' (affiliate, amount,
/// rule).
type Paid = (String, Vec<(String, String, String)>);

/// What each event of a batch's answer did.
fn paid_per_event(answer: &Value) -> Vec<Paid> {
    answer["results"]
        .as_array()
        .expect("a batch's results")
        .iter()
        .map(|result| {
            let commissions = result["commissions"].as_array().map(Vec::as_slice).unwrap_or_default();
            let paid = commissions
                .iter()
                .map(|c| (c["affiliate"].to_string(), c["amount"].to_string(), c["rule"].to_string()))
                .collect();
            (result["status"].as_str().unwrap_or_default().to_owned(), paid)
        })
        .collect()
}

/// Deposits, then trades of 4, 6 and 0.5 lots, for `customers` customers of each of
/// `operators` multi-event operators, one batch per round per operator, on a host started with
/// `args`. Returns every answer, in order, and the host's metrics at the end.
fn trading_rounds(operators: usize, customers: usize, args: &[&str]) -> (Vec<Vec<Paid>>, String) {
    let (_dir, data) = data_dir();
    let host = Host::start_with(&data, args);
    let operators: Vec<Operator> = (0..operators).map(|n| host.multi_event_with_aff1(&format!("op{n}"))).collect();
    let rounds: [(&str, Option<&str>); 4] =
        [("deposit", None), ("trade", Some("4")), ("trade", Some("6")), ("trade", Some("0.5"))];
    let mut answers = Vec::new();
    for (round, (kind, lots)) in rounds.iter().enumerate() {
        for operator in &operators {
            let events: Vec<Value> = (0..customers)
                .map(|customer| {
                    let mut event = json!({"id": format!("e{round}-{customer}"), "type": kind,
                                           "customer": format!("customer-{customer}"), "affiliate": "aff1"});
                    match lots {
                        Some(lots) => event["attributes"] = json!({"lots": lots}),
                        None => event["amount"] = json!("100"),
                    }
                    event
                })
                .collect();
            let (status, answer) = host.post_events(operator, &Value::Array(events));
            assert_eq!(status, StatusCode::OK, "{answer}");
            answers.push(paid_per_event(&answer));
        }
    }
    for operator in &operators {
        common::assert_verifies(&host, operator);
    }
    (answers, host.metrics())
}

#[test]
fn the_state_cache_stays_within_its_bounds_and_answers_as_the_ledger_alone_does() {
    const TOTAL: usize = 8_000;
    const PER_OPERATOR: usize = 4_000;
    let (cached, metrics) = trading_rounds(
        3,
        40,
        &["--state-cache-bytes", &TOTAL.to_string(), "--state-cache-operator-bytes", &PER_OPERATOR.to_string()],
    );
    let bytes = metric(&metrics, "commission_host_state_cache_bytes").expect("the cache's bytes");
    assert!(bytes > 0.0 && bytes <= TOTAL as f64, "{bytes} bytes cached, over {TOTAL}:\n{metrics}");
    // 40 customers' keys (four each, ~90 bytes an entry) do not fit in 4,000 bytes: entries went.
    let evictions = metric(&metrics, "commission_host_state_cache_evictions_total").expect("evictions");
    assert!(evictions > 0.0, "{metrics}");
    let hits = metric(&metrics, "commission_host_state_cache_hits_total").expect("hits");
    assert!(hits > 0.0, "nothing was read from the cache:\n{metrics}");

    let (uncached, metrics) = trading_rounds(3, 40, &["--state-cache-bytes", "0"]);
    assert_eq!(metric(&metrics, "commission_host_state_cache_bytes"), Some(0.0), "{metrics}");
    assert_eq!(metric(&metrics, "commission_host_state_cache_hits_total"), Some(0.0), "{metrics}");
    assert_eq!(cached, uncached, "the cache changed what was paid");
    // What the multi-event plugin pays per customer: 10 on the deposit, 5 on the first trade,
    // 20 once the lots pass 10.
    let last = &cached[cached.len() - 1];
    assert!(last.iter().all(|(status, paid)| status == "accepted" && paid.len() == 1), "{last:?}");
}

/// Waits until the metric line `name` is at least `at_least`, polling (a bounded number of
/// times); returns the metrics then.
fn wait_for_metric(host: &Host, name: &str, at_least: f64) -> String {
    for _ in 0..2_000 {
        let metrics = host.metrics();
        if metric(&metrics, name).is_some_and(|value| value >= at_least) {
            return metrics;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    panic!("{name} never reached {at_least}:\n{}", host.metrics());
}

/// A batch of `count` events of the hostile plugin, each working a while and succeeding.
fn slow_batch(prefix: &str, count: usize) -> Value {
    Value::Array(
        (0..count)
            .map(|n| {
                json!({"id": format!("{prefix}-{n}"), "type": "deposit", "customer": format!("c{}", n % 7),
                       "affiliate": "aff1", "attributes": {"attack": "contend", "spin": "300000"}})
            })
            .collect(),
    )
}

#[test]
fn a_large_batch_gives_the_other_operators_turns_between_its_slices() {
    const BATCH: usize = 400;
    let (_dir, data) = data_dir();
    let host = Arc::new(Host::start_with(&data, &["--evaluation-threads", "1"]));
    let large = Arc::new(hostile_operator(&host, "large"));
    let small = host.multi_event_with_aff1("small");

    let batch = {
        let (host, large) = (host.clone(), large.clone());
        std::thread::spawn(move || host.post_events(&large, &slow_batch("b", BATCH)))
    };
    // Once the batch has been cut at the end of a slice, the small operator's event is taken
    // at the next turn: before the batch's last event.
    wait_for_metric(&host, r#"commission_host_sliced_requests_total{operator="large"}"#, 1.0);
    host.accept(
        &small,
        json!({"id": "d-1", "type": "deposit", "customer": "c1", "amount": "100", "affiliate": "aff1"}),
    );
    let (status, last) = host.get(&large, &format!("/events/b-{}", BATCH - 1));
    assert_eq!(status, StatusCode::NOT_FOUND, "the small operator waited for the whole batch: {last}");

    let (status, answer) = batch.join().unwrap();
    assert_eq!(status, StatusCode::OK, "{answer}");
    let results = answer["results"].as_array().unwrap();
    assert_eq!(results.len(), BATCH);
    assert!(results.iter().all(|result| result["status"] == "accepted"), "{answer}");
    // Answered whole, each event once, in order: the shared counter counted every event.
    assert_eq!(host.commissions(&large, "").len(), BATCH);
    let metrics = host.metrics();
    let turns = metric(&metrics, r#"commission_host_sequencer_turns_total{operator="large"}"#).unwrap();
    let slices = metric(&metrics, r#"commission_host_sliced_requests_total{operator="large"}"#).unwrap();
    assert!(turns >= slices + 1.0 && slices >= 1.0, "{metrics}");
    assert_eq!(metric(&metrics, r#"commission_host_operator_queue_events{operator="large"}"#), Some(0.0));
    common::assert_verifies(&host, &large);
}

#[test]
fn an_activation_queued_behind_events_takes_effect_after_them() {
    const BATCH: usize = 1000;
    let (_dir, data) = data_dir();
    let host = Arc::new(Host::start_with(&data, &["--evaluation-threads", "1"]));
    let operator = Arc::new(hostile_operator(&host, "switching"));
    let (status, uploaded) = host.upload_plugin(&operator, &common::plugin_wasm("multi-event"), false);
    assert_eq!(status, StatusCode::CREATED, "{uploaded}");
    let v2 = uploaded["version"].as_u64().unwrap();

    // The first activation took a turn of its own.
    let turns = r#"commission_host_sequencer_turns_total{operator="switching"}"#;
    let before = metric(&host.metrics(), turns).unwrap_or(0.0);
    let batch = {
        let (host, operator) = (host.clone(), operator.clone());
        std::thread::spawn(move || host.post_events(&operator, &slow_batch("b", BATCH)))
    };
    // The batch's turn has begun: the activation queues behind it.
    wait_for_metric(&host, turns, before + 1.0);
    let (status, activated) = answer(
        host.client
            .post(host.url(&format!("/v1/operators/switching/plugins/{v2}/activate")))
            .bearer_auth(&operator.api_key)
            .send(),
    );
    assert_eq!(status, StatusCode::OK, "{activated}");
    // Answered in its turn: after every event queued before it, each evaluated by version 1.
    for n in [0, BATCH / 2, BATCH - 1] {
        let (status, event) = host.get(&operator, &format!("/events/b-{n}"));
        assert_eq!(status, StatusCode::OK, "b-{n} not stored when the activation was answered: {event}");
        assert_eq!(event["plugin_version"], 1, "{event}");
    }
    let (status, answer) = batch.join().unwrap();
    assert_eq!(status, StatusCode::OK, "{answer}");
    let after = host.accept(
        &operator,
        json!({"id": "after", "type": "deposit", "customer": "new", "amount": "100", "affiliate": "aff1"}),
    );
    let (_, stored) = host.get(&operator, "/events/after");
    assert_eq!(stored["plugin_version"], v2, "{stored} {after}");
}
