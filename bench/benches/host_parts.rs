//! Criterion micro-benchmarks of the steps an event takes inside the host, each beside what it
//! would cost without the host's safety:
//!
//! - `plugin_call`: the multi-event plugin in the sandbox (a fresh instance per event, as the
//!   host runs it, with the deterministic WASI and the fuel and epoch meters), beside 100 events
//!   on one reused instance (which the host does not do) and the same rules called natively;
//! - `deal_complexity`: the forex-ib plugin on one trade, as the IB tree above the trader grows
//!   from 1 to 3 to 6 levels, each level with its own groups and overrides;
//! - `parse`: a postback query and webhook bodies of 1 and 100 events, into checked events;
//! - `ledger_commit`: an event with its binding, two state writes and a commission, committed
//!   to sled on disk alone in its transaction, and in groups of 16 and 64 as the committer
//!   groups events that wait together (the flush is measured by `bench/run.sh`).
//!
//! Run: `cargo build-plugins && cargo bench -p bench --bench host_parts`.

use std::sync::Arc;

use commission_host::event::{parse_postback, parse_webhook};
use commission_host::sandbox::{
    Limits, PluginAffiliate, PluginContext, PluginEvent, PluginInput, Sandbox, StateSource,
};
use commission_host::store::records::{CommissionRecord, CustomerBinding, EventRecord, EventStatus, StoredEvent};
use commission_host::store::{CommitOutcome, EventCommit, Store};
use commission_plugin_sdk::{Affiliate, Decimal, Event, Plugin, Properties, testing};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use multi_event::MultiEvent;

/// A customer with no history: every evaluation reads state and finds nothing, as a first
/// deposit does.
struct NoState;

impl StateSource for NoState {
    fn get(&self, _key: &str) -> anyhow::Result<Option<Vec<u8>>> {
        Ok(None)
    }
}

fn plugin_wasm(name: &str) -> Vec<u8> {
    let path = format!("{}/../target/wasm32-wasip2/plugin/{name}.wasm", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|error| panic!("{path}: {error}; build it first with `cargo build-plugins`"))
}

fn deposit_input() -> PluginInput {
    PluginInput {
        event: PluginEvent {
            id: "d-1".into(),
            kind: "deposit".into(),
            customer: "c1".into(),
            occurred_at: 1_767_225_600_000,
            amount: Some("100".into()),
            currency: Some("USD".into()),
            attributes: Vec::new(),
        },
        context: PluginContext {
            operator: "bench".into(),
            operator_currency: "USD".into(),
            config: Vec::new(),
            referral_chain: vec![PluginAffiliate { id: "aff1".into(), deal: Vec::new() }],
        },
    }
}

fn plugin_call(c: &mut Criterion) {
    let sandbox = Sandbox::new(Limits::default()).expect("sandbox");
    let (_, artifact) = sandbox.compile(&plugin_wasm("multi_event")).expect("the plugin compiles");
    let plugin = sandbox.load(&artifact).expect("the plugin loads");
    let input = deposit_input();
    let state: Arc<dyn StateSource> = Arc::new(NoState);

    let mut group = c.benchmark_group("plugin_call");
    group.bench_function("sandbox_fresh_instance", |b| {
        b.iter(|| {
            let evaluation = sandbox.evaluate(&plugin, &input, state.clone(), sandbox.limits());
            assert_eq!(evaluation.result.expect("evaluates").len(), 1);
        })
    });
    // The same first deposit of a different customer each time, so that every call pays, on one
    // instance kept across events: what the host refuses to do, measured to show what a fresh
    // instance costs.
    const REUSED_CALLS: usize = 100;
    let inputs: Vec<PluginInput> = (0..REUSED_CALLS)
        .map(|n| {
            let mut input = deposit_input();
            input.event.customer = format!("c{n}");
            input
        })
        .collect();
    group.throughput(Throughput::Elements(REUSED_CALLS as u64));
    group.bench_function("sandbox_reused_instance_100_events", |b| {
        b.iter(|| {
            let results = sandbox
                .evaluate_on_one_instance(&plugin, &inputs, state.clone(), sandbox.limits())
                .expect("instantiates");
            assert!(results.iter().all(|result| result.as_ref().expect("evaluates").len() == 1));
        })
    });
    group.throughput(Throughput::Elements(1));
    let context = testing::context("bench", "USD", [Affiliate::new("aff1", Properties::default())]);
    let event = Event::new("d-1", "deposit", "c1", 1_767_225_600_000).with_amount(Decimal::from(100), "USD");
    group.bench_function("native_rules", |b| {
        // The native state is the SDK's thread-local map: emptied each time so that every call
        // is a first deposit, as in the sandbox. The reset's cost is counted, in the native's favour.
        b.iter(|| {
            testing::reset();
            assert_eq!(MultiEvent::evaluate(&event, &context).expect("evaluates").len(), 1)
        })
    });
    group.finish();
}

/// A trade of 2.5 lots of XAUUSD through an IB tree `levels` deep: the direct IB's deal has
/// three symbol groups and a spread share, every master above it an override per group.
fn forex_ib_input(levels: usize) -> PluginInput {
    let groups =
        [("group.majors", "EURUSD,GBPUSD,USDJPY"), ("group.metals", "XAUUSD,XAGUSD"), ("group.indices", "US30,NAS100")];
    let terms = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<Vec<_>>();
    let mut chain = vec![PluginAffiliate {
        id: "ib0".into(),
        deal: terms(
            &[
                groups.as_slice(),
                &[
                    ("per_lot.majors", "7"),
                    ("per_lot.metals", "10"),
                    ("per_lot.indices", "2"),
                    ("spread_share_percent", "20"),
                ],
            ]
            .concat(),
        ),
    }];
    chain.extend((1..levels).map(|level| {
        PluginAffiliate {
            id: format!("ib{level}"),
            deal: terms(
                &[
                    groups.as_slice(),
                    &[
                        ("override_per_lot.majors", "1"),
                        ("override_per_lot.metals", "1.5"),
                        ("override_per_lot", "0.5"),
                    ],
                ]
                .concat(),
            ),
        }
    }));
    PluginInput {
        event: PluginEvent {
            id: "t-1".into(),
            kind: "trade".into(),
            customer: "c1".into(),
            occurred_at: 1_767_225_600_000,
            amount: None,
            currency: None,
            attributes: terms(&[("symbol", "XAUUSD"), ("lots", "2.5"), ("spread", "12.40")]),
        },
        context: PluginContext {
            operator: "bench".into(),
            operator_currency: "USD".into(),
            config: Vec::new(),
            referral_chain: chain,
        },
    }
}

fn deal_complexity(c: &mut Criterion) {
    let sandbox = Sandbox::new(Limits::default()).expect("sandbox");
    let (_, artifact) = sandbox.compile(&plugin_wasm("forex_ib")).expect("the plugin compiles");
    let plugin = sandbox.load(&artifact).expect("the plugin loads");
    let state: Arc<dyn StateSource> = Arc::new(NoState);
    let mut group = c.benchmark_group("deal_complexity");
    for levels in [1, 3, 6] {
        let input = forex_ib_input(levels);
        // The direct IB's lot commission and spread share, and one override per master.
        let paid = 2 + (levels - 1);
        group.bench_function(format!("forex_ib_{levels}_levels"), |b| {
            b.iter(|| {
                let evaluation = sandbox.evaluate(&plugin, &input, state.clone(), sandbox.limits());
                assert_eq!(evaluation.result.expect("evaluates").len(), paid);
            })
        });
    }
    group.finish();
}

fn parse(c: &mut Criterion) {
    let mut group = c.benchmark_group("parse");
    let query = "token=t0k3n&type=deposit&id=d-1&customer=c1&amount=100.00&currency=USD&affiliate=aff1&occurred_at=2026-01-01T00:00:00Z";
    group.throughput(Throughput::Elements(1));
    group.bench_function("postback", |b| b.iter(|| parse_postback(query, "USD", 0).expect("parses")));
    for size in [1, 100] {
        let events: Vec<String> = (0..size)
            .map(|n| {
                format!(
                    r#"{{"id":"t-{n}","type":"trade","customer":"c{n}","occurred_at":"2026-01-01T00:00:00Z","attributes":{{"lots":"2.5","symbol":"EURUSD"}}}}"#
                )
            })
            .collect();
        let body = format!("[{}]", events.join(","));
        group.throughput(Throughput::Elements(size));
        group.bench_function(format!("webhook_batch_{size}"), |b| {
            b.iter(|| parse_webhook(body.as_bytes(), "USD", 0).expect("parses"))
        });
    }
    group.finish();
}

/// A first deposit as the pipeline commits it: the customer's binding, the plugin's two state
/// writes, one commission.
fn first_deposit_commit(n: u64) -> EventCommit {
    let (id, customer) = (format!("e-{n}"), format!("c-{n}"));
    let event = StoredEvent {
        id: id.clone(),
        kind: "deposit".into(),
        customer: customer.clone(),
        occurred_at: 1_767_225_600_000,
        amount: Some(Decimal::new(100, 0)),
        currency: Some("USD".into()),
        affiliate: Some("aff1".into()),
        attributes: Default::default(),
        fx: None,
    };
    EventCommit {
        operator: "bench".into(),
        record: EventRecord {
            seq: 0,
            event,
            content_sha256: format!("{n:064x}"),
            received_at: 1_767_225_600_000,
            status: EventStatus::Accepted,
            failure: None,
            attributed_to: Some("aff1".into()),
            evaluation: None,
            commission_ids: Vec::new(),
            attempts: 1,
            restated: false,
            taken_as_received: false,
        },
        replaces_failed_attempt: None,
        new_binding: Some(CustomerBinding { affiliate: "aff1".into(), bound_by_event: id.clone(), bound_at: 0 }),
        state_reads: [(format!("customer:{customer}:deposited"), None)].into(),
        state_writes: [
            (format!("customer:{customer}:deposited"), Some(b"1".to_vec())),
            (format!("customer:{customer}:volume"), Some(b"0".to_vec())),
        ]
        .into(),
        commissions: vec![CommissionRecord {
            id: String::new(),
            event_id: id,
            affiliate: "aff1".into(),
            customer,
            amount: Decimal::new(10, 0),
            currency: "USD".into(),
            rule: "first-deposit".into(),
            explanation: "first deposit of 100 USD".into(),
            plugin_version: 1,
            occurred_at: 1_767_225_600_000,
            created_at: 1_767_225_600_000,
            reverses: None,
            fx_rate: None,
            version_reason: "active".into(),
            hold_until: None,
            restates: None,
            unrounded_amount: None,
        }],
        expected_last_seq: None,
        stored_bytes_quota: None,
    }
}

fn ledger_commit(c: &mut Criterion) {
    let directory = tempfile::tempdir().expect("a temporary directory");
    let store = Store::open(directory.path()).expect("sled opens");
    let mut next = 0u64;
    let mut group = c.benchmark_group("ledger_commit");
    for size in [1u64, 16, 64] {
        group.throughput(Throughput::Elements(size));
        group.bench_function(format!("events_per_transaction_{size}"), |b| {
            b.iter_batched(
                || {
                    (0..size)
                        .map(|_| {
                            next += 1;
                            first_deposit_commit(next)
                        })
                        .collect::<Vec<_>>()
                },
                |commits| {
                    let outcomes = store.commit_events(&commits).expect("the commit is written");
                    assert!(outcomes.iter().all(|outcome| matches!(outcome, CommitOutcome::Committed { .. })));
                },
                criterion::BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, plugin_call, deal_complexity, parse, ledger_commit);
criterion_main!(benches);
