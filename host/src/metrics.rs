//! What the platform team scrapes: `GET /metrics` (admin token) in Prometheus text format.
//!
//! Labels are bounded: operators are few and created by the admin; event types are free text
//! chosen by senders, so only the common kinds get their own label value and the rest count as
//! `other`.
//!
//! It depends on nothing of the crate: every module reports into it, so an import from here
//! into the data path would close a cycle.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

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
pub struct CheckpointLabels {
    pub operator: String,
    /// `chained`, `whole`, `skipped` (it could not chain) or `failed`.
    pub kind: String,
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
    pub evaluation_turns: Gauge,
    pub evaluation_turns_peak: Gauge,
    pub evaluation_threads: Gauge,
    pub sequencers: Gauge,
    pub queue_events: Family<OperatorLabels, Gauge>,
    pub queue_full: Family<OperatorLabels, Counter>,
    pub view_divergences: Family<OperatorLabels, Counter>,
    pub cluster_operator_lookups: Counter,
    pub throttled: Family<OperatorLabels, Counter>,
    pub throttled_seconds: Family<OperatorLabels, Counter<f64, AtomicU64>>,
    pub process_threads: Gauge,
    pub stored_bytes: Family<OperatorLabels, Gauge>,
    pub state_cache_bytes: Gauge,
    pub state_cache_evictions: Counter,
    pub state_cache_hits: Counter,
    pub state_cache_misses: Counter,
    pub sequencer_turns: Family<OperatorLabels, Counter>,
    pub sliced_requests: Family<OperatorLabels, Counter>,
    pub verify_evaluated_ahead: Counter,
    pub periodic_checkpoints: Family<CheckpointLabels, Counter>,
    pub checkpoint_capture_seconds: Histogram,
    pub checkpoint_write_seconds: Histogram,
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
            "Operators' turns and replays running plugins right now",
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
        let evaluation_turns = Gauge::default();
        registry.register(
            "evaluation_turns",
            "Operators' turns evaluating right now, each on one thread: at most evaluation_threads",
            evaluation_turns.clone(),
        );
        let evaluation_turns_peak = Gauge::default();
        registry.register(
            "evaluation_turns_peak",
            "The most operators' turns evaluating at once since the start: at most evaluation_threads",
            evaluation_turns_peak.clone(),
        );
        let evaluation_threads = Gauge::default();
        registry.register(
            "evaluation_threads",
            "Operators' turns that evaluate at once, over all operators (--evaluation-threads)",
            evaluation_threads.clone(),
        );
        let sequencers = Gauge::default();
        registry.register(
            "sequencers",
            "Operators whose sequencer is running now (it has jobs queued or in its turn)",
            sequencers.clone(),
        );
        let queue_events = Family::default();
        registry.register(
            "operator_queue_events",
            "Events waiting in each operator's queue for its sequencer",
            queue_events.clone(),
        );
        let queue_full = Family::default();
        registry.register(
            "queue_full",
            "Requests refused with 503 because the operator's queue was full, by operator",
            queue_full.clone(),
        );
        let view_divergences = Family::default();
        registry.register(
            "view_divergences",
            "Cluster ledger requests this node's view applied paying otherwise than the owner did, by operator (0 is the only right count)",
            view_divergences.clone(),
        );
        let cluster_operator_lookups = Counter::default();
        registry.register(
            "cluster_operator_lookups",
            "Requests naming an operator this node does not hold that looked it up in the cluster's bucket",
            cluster_operator_lookups.clone(),
        );
        let throttled = Family::default();
        registry.register(
            "throttled",
            "Turns an operator waited for before, because its evaluations kept hitting their limits",
            throttled.clone(),
        );
        let throttled_seconds = Family::default();
        registry.register(
            "throttled_seconds",
            "Time an operator waited between turns because its evaluations kept hitting their limits",
            throttled_seconds.clone(),
        );
        let process_threads = Gauge::default();
        registry.register(
            "process_threads",
            "Threads of the host's process, read at each scrape",
            process_threads.clone(),
        );
        let stored_bytes = Family::default();
        registry.register(
            "stored_bytes",
            "Bytes each operator keeps in the ledger, as counted against its stored_bytes quota",
            stored_bytes.clone(),
        );
        let state_cache_bytes = Gauge::default();
        registry.register(
            "state_cache_bytes",
            "Bytes of plugin state the sequencers keep in memory, over all operators (--state-cache-bytes)",
            state_cache_bytes.clone(),
        );
        let state_cache_evictions = Counter::default();
        registry.register(
            "state_cache_evictions",
            "Plugin state entries dropped from memory to keep the state cache within its bounds",
            state_cache_evictions.clone(),
        );
        let state_cache_hits = Counter::default();
        registry.register("state_cache_hits", "Plugin state reads answered from memory", state_cache_hits.clone());
        let state_cache_misses = Counter::default();
        registry.register(
            "state_cache_misses",
            "Plugin state reads that went to the ledger",
            state_cache_misses.clone(),
        );
        let sequencer_turns = Family::default();
        registry.register(
            "sequencer_turns",
            "Turns each operator's sequencer took on an evaluation thread",
            sequencer_turns.clone(),
        );
        let sliced_requests = Family::default();
        registry.register(
            "sliced_requests",
            "Times a request's events were left for the operator's next turn at the end of a time slice",
            sliced_requests.clone(),
        );
        let verify_evaluated_ahead = Counter::default();
        registry.register(
            "verify_evaluated_ahead",
            "Events a verify took as evaluated ahead by a helper on another core (serve --verify-helpers)",
            verify_evaluated_ahead.clone(),
        );
        let periodic_checkpoints = Family::default();
        registry.register(
            "periodic_checkpoints",
            "Periodic checkpoints of plugin state written (serve --checkpoint-every), by how",
            periodic_checkpoints.clone(),
        );
        let checkpoint_capture_seconds = seconds_histogram();
        registry.register(
            "checkpoint_capture_seconds",
            "Time a periodic checkpoint takes in its operator's turn",
            checkpoint_capture_seconds.clone(),
        );
        let checkpoint_write_seconds = seconds_histogram();
        registry.register(
            "checkpoint_write_seconds",
            "Time the writer thread takes to store a periodic checkpoint, off the turn",
            checkpoint_write_seconds.clone(),
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
            evaluation_turns,
            evaluation_turns_peak,
            evaluation_threads,
            sequencers,
            queue_events,
            queue_full,
            view_divergences,
            cluster_operator_lookups,
            throttled,
            throttled_seconds,
            process_threads,
            stored_bytes,
            state_cache_bytes,
            state_cache_evictions,
            state_cache_hits,
            state_cache_misses,
            sequencer_turns,
            sliced_requests,
            verify_evaluated_ahead,
            periodic_checkpoints,
            checkpoint_capture_seconds,
            checkpoint_write_seconds,
        }
    }
}

impl Metrics {
    pub fn encode(&self) -> String {
        if let Some(threads) = process_threads() {
            self.process_threads.set(threads);
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }

    /// Counts an answered event; `status` is its disposition's name.
    pub fn count_event(&self, operator: &str, kind: &str, status: &'static str) {
        let kind = if KNOWN_KINDS.contains(&kind) { kind } else { "other" };
        self.events.get_or_create(&EventLabels { operator: operator.to_owned(), kind: kind.to_owned(), status }).inc();
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

/// The process's thread count, from `/proc/self/status` (Linux); `None` elsewhere.
fn process_threads() -> Option<i64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find_map(|line| line.strip_prefix("Threads:")).and_then(|count| count.trim().parse().ok())
}
