//! What the platform team scrapes: `GET /metrics` (admin token) in Prometheus text format.
//!
//! Labels are bounded: operators are few and created by the admin; event types are free text
//! chosen by senders, so only the common kinds get their own label value and the rest count as
//! `other`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::pipeline::Disposition;

const KNOWN_KINDS: &[&str] = &[
    "registration",
    "kyc",
    "deposit",
    "withdrawal",
    "trade",
    "wager",
    "bet",
    "level-up",
    "chargeback",
    "refund",
    "challenge",
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    pub operator: String,
    pub kind: String,
    pub status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    pub operator: String,
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperatorLabels {
    pub operator: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LoadLabels {
    /// `compiled` from the component, or `cache`: deserialized from the compiled-artifact cache.
    pub source: &'static str,
}

pub struct Metrics {
    registry: Registry,
    pub events: Family<EventLabels, Counter>,
    pub failures: Family<FailureLabels, Counter>,
    pub evaluation_seconds: Family<OperatorLabels, Histogram>,
    pub fuel_used: Family<OperatorLabels, Histogram>,
    pub commit_seconds: Histogram,
    pub commit_group_seconds: Histogram,
    pub commit_group_events: Histogram,
    pub flush_seconds: Histogram,
    pub evaluations_in_flight: Gauge,
    pub plugin_loads: Family<LoadLabels, Counter>,
    pub rate_limited: Family<OperatorLabels, Counter>,
    pub evaluations_alone: Family<OperatorLabels, Counter>,
    pub stored_bytes: Family<OperatorLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("commission_host");
        let events = Family::default();
        registry.register("events", "Events answered, by operator, type and status", events.clone());
        let failures = Family::default();
        registry.register(
            "plugin_failures",
            "Evaluations that did not finish, by the limit or fault",
            failures.clone(),
        );
        let evaluation_seconds =
            Family::<OperatorLabels, Histogram>::new_with_constructor(seconds_histogram as fn() -> _);
        registry.register(
            "plugin_evaluation_seconds",
            "Time to instantiate a plugin and evaluate one event",
            evaluation_seconds.clone(),
        );
        let fuel_used = Family::<OperatorLabels, Histogram>::new_with_constructor(fuel_histogram as fn() -> _);
        registry.register("plugin_fuel_used", "Fuel one evaluation used", fuel_used.clone());
        let commit_seconds = seconds_histogram();
        registry.register(
            "ledger_commit_seconds",
            "Time of one event's commit, waiting for its group's turn included",
            commit_seconds.clone(),
        );
        let commit_group_seconds = seconds_histogram();
        registry.register(
            "ledger_commit_group_seconds",
            "Time of one group commit: one sled transaction for every event waiting",
            commit_group_seconds.clone(),
        );
        // 1 to 256 events, the most one group takes.
        let commit_group_events = Histogram::new(exponential_buckets(1.0, 2.0, 9));
        registry.register("ledger_commit_group_events", "Events in one group commit", commit_group_events.clone());
        let flush_seconds = seconds_histogram();
        registry.register(
            "ledger_flush_seconds",
            "Time of one group flush (fsync) of the ledger",
            flush_seconds.clone(),
        );
        let evaluations_in_flight = Gauge::default();
        registry.register(
            "evaluations_in_flight",
            "Events being evaluated or committed right now (the queue behind the sandbox)",
            evaluations_in_flight.clone(),
        );
        let plugin_loads = Family::default();
        registry.register(
            "plugin_loads",
            "Plugin versions made ready to run, by where they came from",
            plugin_loads.clone(),
        );
        let rate_limited = Family::default();
        registry.register("rate_limited", "Requests refused with 429, by operator", rate_limited.clone());
        let evaluations_alone = Family::default();
        registry.register(
            "evaluations_alone",
            "Events whose reads of shared state kept changing before their commit, evaluated again \
             with the operator's other evaluations held back: a hot state key",
            evaluations_alone.clone(),
        );
        let stored_bytes = Family::default();
        registry.register(
            "stored_bytes",
            "Bytes each operator keeps in the ledger, as counted against its stored_bytes quota",
            stored_bytes.clone(),
        );
        Self {
            registry,
            events,
            failures,
            evaluation_seconds,
            fuel_used,
            commit_seconds,
            commit_group_seconds,
            commit_group_events,
            flush_seconds,
            evaluations_in_flight,
            plugin_loads,
            rate_limited,
            evaluations_alone,
            stored_bytes,
        }
    }
}

impl Metrics {
    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }

    pub fn count_event(&self, operator: &str, kind: &str, status: Disposition) {
        let kind = if KNOWN_KINDS.contains(&kind) { kind } else { "other" };
        self.events
            .get_or_create(&EventLabels {
                operator: operator.to_owned(),
                kind: kind.to_owned(),
                status: status.as_str(),
            })
            .inc();
    }
}

fn seconds_histogram() -> Histogram {
    // 10 us to about 5 s.
    Histogram::new(exponential_buckets(0.000_01, 2.5, 15))
}

fn fuel_histogram() -> Histogram {
    // 10 thousand to about 100 million units.
    Histogram::new(exponential_buckets(10_000.0, 2.5, 11))
}
