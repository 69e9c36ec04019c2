//! Criterion micro-benchmarks of the steps an event takes inside the host, each beside what it
//! would cost without the host's safety:
//!
//! - `plugin_call`: the multi-event plugin in the sandbox (a fresh instance per event, as the
//!   host runs it, with the deterministic WASI and the fuel and epoch meters), beside the same
//!   rules called natively;
//! - `parse`: a postback query and webhook bodies of 1 and 100 events, into checked events.
//!
//! Run: `cargo build-plugins && cargo bench -p bench --bench host_parts`.

use std::sync::Arc;

use commission_host::event::{parse_postback, parse_webhook};
use commission_host::sandbox::{
    Limits, PluginAffiliate, PluginContext, PluginEvent, PluginInput, Sandbox, StateSource,
};
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

fn multi_event_wasm() -> Vec<u8> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/wasm32-wasip2/plugin/multi_event.wasm");
    std::fs::read(path).unwrap_or_else(|error| panic!("{path}: {error}; build it first with `cargo build-plugins`"))
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
    let (_, artifact) = sandbox.compile(&multi_event_wasm()).expect("the plugin compiles");
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

criterion_group!(benches, plugin_call, parse);
criterion_main!(benches);
