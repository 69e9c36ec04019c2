//! Fixture files run through a plugin's real component, in the server's own sandbox.
//!
//! The format, the attribution and the comparison are the SDK's
//! ([`commission_plugin_sdk::fixtures`]), which the plugin's native `cargo test` runs too; this
//! module supplies the other [`Evaluator`]: the component compiled by this host, instantiated
//! fresh per event under the server's default limits, reading and writing an in-memory state
//! that carries over from step to step, its answers checked as the pipeline checks them. So a
//! fixture that passes here passes the same way on the server, and `plugin test` and
//! `plugin trace` (and the end-to-end tests) share it.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use commission_plugin_sdk::fixtures::Evaluator;
use commission_plugin_sdk::{Commission, CommissionRef, Context, Decimal, Event, Period};

pub use commission_plugin_sdk::fixtures::{Fixture, FixtureError, Report};

use crate::pipeline::{RESERVED_PREFIX, ReversedCommission, SETTLEMENT_KIND, checked_commissions};
use crate::sandbox::{
    Evaluation, Limits, LoadedPlugin, PluginAffiliate, PluginCommission, PluginContext, PluginEvent, PluginInput,
    PluginPeriod, Sandbox, StateSource,
};
use crate::store::records::{ChainLink, StoredEvent};

/// What one call into the component did: the debugger's view of a step.
#[derive(Debug)]
pub struct Trace {
    /// `event d-1` or `settle 2026-11 for aff1`.
    pub call: String,
    /// The component's answer, as it gave it (before the host's checks).
    pub answer: Result<Vec<PluginCommission>, String>,
    /// The host's verdict: the commissions as checked, or why the event failed.
    pub outcome: Result<Vec<Commission>, String>,
    /// Every key read, with the value it had.
    pub state_reads: BTreeMap<String, Option<Vec<u8>>>,
    /// Every key written (`None`: deleted).
    pub state_writes: BTreeMap<String, Option<Vec<u8>>>,
    /// (level, message)
    pub logs: Vec<(String, String)>,
    pub fuel_used: u64,
    /// Wall time of the call, instantiation included.
    pub elapsed: std::time::Duration,
}

/// Runs a fixture's steps through a compiled component. Keeps a [`Trace`] of every call.
pub struct ComponentEvaluator<'a> {
    sandbox: &'a Sandbox,
    plugin: &'a LoadedPlugin,
    limits: Limits,
    state: Arc<MemoryState>,
    pending: BTreeMap<String, Option<Vec<u8>>>,
    pub traces: Vec<Trace>,
}

impl<'a> ComponentEvaluator<'a> {
    /// An evaluator on empty state, under the sandbox's default limits (the server's, for an
    /// operator without overrides).
    pub fn new(sandbox: &'a Sandbox, plugin: &'a LoadedPlugin) -> Self {
        Self {
            sandbox,
            plugin,
            limits: sandbox.limits(),
            state: Arc::default(),
            pending: BTreeMap::new(),
            traces: Vec::new(),
        }
    }

    /// Checks the component's answer as the pipeline does, and records the call.
    fn conclude(
        &mut self,
        call: String,
        evaluation: Evaluation,
        event: &StoredEvent,
        chain: &[ChainLink],
        started: std::time::Instant,
    ) -> Result<Vec<Commission>, String> {
        let elapsed = started.elapsed();
        let answer =
            evaluation.result.clone().map_err(|failure| format!("{}: {}", failure.kind.as_str(), failure.message));
        let outcome = evaluation.result.and_then(|commissions| {
            // Reversals are checked against the fixture's own ledger by the SDK's runner; here
            // every reference resolves, each to an id of its own in the reversal's currency, so
            // that the rest of the answer gets the pipeline's checks (a commission reversed twice
            // in one answer among them).
            let currencies: HashMap<(String, String, String), String> = commissions
                .iter()
                .filter_map(|c| {
                    let r = c.reverses.as_ref()?;
                    Some(((r.event_id.clone(), r.rule.clone(), c.affiliate.clone()), c.currency.clone()))
                })
                .collect();
            let resolve_all = |reference: &crate::sandbox::PluginCommissionRef, affiliate: &str| {
                let key = (reference.event_id.clone(), reference.rule.clone(), affiliate.to_owned());
                Some(ReversedCommission {
                    id: format!("{}/{}/{affiliate}", reference.event_id, reference.rule),
                    amount: Decimal::MAX,
                    currency: currencies.get(&key)?.clone(),
                })
            };
            let references: Vec<Option<CommissionRef>> = commissions
                .iter()
                .map(|commission| {
                    commission
                        .reverses
                        .as_ref()
                        .map(|r| CommissionRef { event_id: r.event_id.clone(), rule: r.rule.clone() })
                })
                .collect();
            // A fixture has no receipt: its commissions are dated when the event occurred.
            let max = self.limits.max_commissions;
            let checked = checked_commissions(commissions, chain, event, 1, max, &resolve_all, event.occurred_at)?;
            Ok(checked
                .into_iter()
                .zip(references)
                .map(|(record, reverses)| Commission {
                    affiliate: record.affiliate,
                    amount: record.amount,
                    currency: record.currency,
                    rule: record.rule,
                    explanation: record.explanation,
                    reverses,
                })
                .collect())
        });
        let outcome = outcome.map_err(|failure| format!("{}: {}", failure.kind.as_str(), failure.message));
        self.pending = evaluation.state_writes.clone();
        self.traces.push(Trace {
            call,
            answer,
            outcome: outcome.clone(),
            state_reads: evaluation.state_reads,
            state_writes: evaluation.state_writes,
            logs: evaluation.logs,
            fuel_used: evaluation.fuel_used,
            elapsed,
        });
        outcome
    }
}

impl Evaluator for ComponentEvaluator<'_> {
    fn evaluate(&mut self, event: &Event, context: &Context) -> Result<Vec<Commission>, String> {
        let input = PluginInput { event: plugin_event(event), context: plugin_context(context) };
        let stored = StoredEvent {
            id: event.id.clone(),
            kind: event.kind.clone(),
            customer: event.customer.clone(),
            occurred_at: event.occurred_at,
            amount: event.amount,
            currency: event.currency.clone(),
            affiliate: Some(context.affiliate().id.clone()),
            attributes: event.attributes.iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect(),
            fx: None,
        };
        let started = std::time::Instant::now();
        let evaluation = self.sandbox.evaluate(self.plugin, &input, self.state.clone(), self.limits);
        self.conclude(format!("event {}", event.id), evaluation, &stored, &chain(context), started)
    }

    fn settle(&mut self, period: &Period, context: &Context) -> Result<Vec<Commission>, String> {
        let affiliate = &context.affiliate().id;
        let stored = StoredEvent {
            id: format!("{RESERVED_PREFIX}period:{period}:{affiliate}"),
            kind: SETTLEMENT_KIND.to_owned(),
            customer: String::new(),
            occurred_at: period.ends_at - 1,
            amount: None,
            currency: None,
            affiliate: Some(affiliate.clone()),
            attributes: [("period".to_owned(), period.id.clone())].into(),
            fx: None,
        };
        let wit_period = PluginPeriod { id: period.id.clone(), starts_at: period.starts_at, ends_at: period.ends_at };
        let started = std::time::Instant::now();
        let evaluation =
            self.sandbox.settle(self.plugin, &wit_period, &plugin_context(context), self.state.clone(), self.limits);
        self.conclude(format!("settle {period} for {affiliate}"), evaluation, &stored, &chain(context), started)
    }

    fn finish(&mut self, commit: bool) {
        let writes = std::mem::take(&mut self.pending);
        if commit {
            self.state.apply(writes);
        }
    }
}

/// Runs `fixture` through `plugin`; returns the report and the trace of every call.
pub fn run(sandbox: &Sandbox, plugin: &LoadedPlugin, fixture: &Fixture) -> (Report, Vec<Trace>) {
    let mut evaluator = ComponentEvaluator::new(sandbox, plugin);
    let report = fixture.run(&mut evaluator);
    (report, evaluator.traces)
}

/// The committed state of a fixture run.
#[derive(Default)]
struct MemoryState(Mutex<BTreeMap<String, Vec<u8>>>);

impl MemoryState {
    fn apply(&self, writes: BTreeMap<String, Option<Vec<u8>>>) {
        let mut state = self.0.lock().expect("fixture state lock");
        for (key, value) in writes {
            match value {
                Some(value) => state.insert(key, value),
                None => state.remove(&key),
            };
        }
    }
}

impl StateSource for MemoryState {
    fn get(&self, key: &str) -> anyhow::Result<Option<Vec<u8>>> {
        Ok(self.0.lock().expect("fixture state lock").get(key).cloned())
    }
}

fn pairs(properties: &commission_plugin_sdk::Properties) -> Vec<(String, String)> {
    properties.iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect()
}

fn plugin_event(event: &Event) -> PluginEvent {
    PluginEvent {
        id: event.id.clone(),
        kind: event.kind.clone(),
        customer: event.customer.clone(),
        occurred_at: event.occurred_at,
        amount: event.amount.map(|amount| amount.to_string()),
        currency: event.currency.clone(),
        attributes: pairs(&event.attributes),
    }
}

fn plugin_context(context: &Context) -> PluginContext {
    PluginContext {
        operator: context.operator.clone(),
        operator_currency: context.operator_currency.clone(),
        config: pairs(&context.config),
        referral_chain: context
            .referral_chain
            .iter()
            .map(|affiliate| PluginAffiliate { id: affiliate.id.clone(), deal: pairs(&affiliate.deal) })
            .collect(),
    }
}

fn chain(context: &Context) -> Vec<ChainLink> {
    context
        .referral_chain
        .iter()
        .map(|affiliate| ChainLink {
            affiliate: affiliate.id.clone(),
            deal: affiliate.deal.iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect(),
        })
        .collect()
}
