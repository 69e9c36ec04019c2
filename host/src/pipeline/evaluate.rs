//! One event, attributed and evaluated: the binding or the affiliate it names, the referral
//! chain, the version of the plugin that applies, the sandbox's run, and the late-event
//! restatement; what it yields is an [`EventCommit`] for the committer. The live path and the
//! replays (verify, restatement, backtest, shadow) share [`Pipeline::run_plugin`], so both
//! evaluate alike.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::batch::PendingWrites;
use super::checks::{ReversedCommission, checked_commissions};
use super::period::settlement_period;
use super::restate::{RestateError, closed_period_of};
use super::{Disposition, EventOutcome, IngestError, MAX_CHAIN_DEPTH, Pipeline};
use crate::metrics::OperatorLabels;
use crate::sandbox::{
    Limits, PluginAffiliate, PluginCommissionRef, PluginContext, PluginEvent, PluginInput, PluginPeriod, StateSource,
};
use crate::store::records::{
    ActivationScope, ChainLink, CommissionRecord, CustomerBinding, EvaluationRecord, EventRecord, EventStatus, Failure,
    FailureKind, LateEventPolicy, LogLine, OperatorLimits, OperatorRecord, StoredEvent,
};
use crate::store::{CommitOutcome, EventCommit};

/// An event ready to commit, or the outcome of finding it stored already.
pub(super) enum Prepared {
    Stored(EventOutcome),
    Ready(EventCommit),
}

/// What evaluating one event produced, before it is committed.
#[derive(Default)]
pub(crate) struct Evaluated {
    pub(crate) failure: Option<Failure>,
    pub(crate) record: Option<EvaluationRecord>,
    /// Their ids are assigned at commit.
    pub(crate) commissions: Vec<CommissionRecord>,
    pub(crate) state_reads: BTreeMap<String, Option<Vec<u8>>>,
    pub(crate) state_writes: BTreeMap<String, Option<Vec<u8>>>,
}

impl Evaluated {
    fn failed(failure: Failure) -> Self {
        Self { failure: Some(failure), ..Self::default() }
    }
}

/// The version that evaluates `event` of a customer bound by `binding`, and why: the latest
/// dated activation that applies, else the operator's active version.
fn version_for(operator: &OperatorRecord, event: &StoredEvent, binding: &CustomerBinding) -> Option<(u32, String)> {
    let dated = operator.dated_activations.iter().rev().find(|activation| {
        activation.affiliate.as_ref().is_none_or(|affiliate| *affiliate == binding.affiliate)
            && match activation.scope {
                ActivationScope::Events => event.occurred_at >= activation.effective_from,
                ActivationScope::NewCustomers => binding.bound_at >= activation.effective_from,
            }
    });
    match dated {
        Some(activation) => {
            let whom = match activation.scope {
                ActivationScope::Events => "events from then on",
                ActivationScope::NewCustomers => "customers who started from then on",
            };
            let affiliate = activation
                .affiliate
                .as_ref()
                .map(|affiliate| format!(", of affiliate {affiliate}"))
                .unwrap_or_default();
            Some((
                activation.version,
                format!(
                    "v{}: activated from {} for {whom}{affiliate}",
                    activation.version,
                    crate::event::format_time(activation.effective_from)
                ),
            ))
        }
        None => operator.active_plugin.map(|version| (version, format!("v{version}: the operator's active version"))),
    }
}

/// The `state_quota` failure of an event whose `writes` would take the operator's plugin state
/// past `quota`, if they would.
fn over_state_quota(
    operator: &OperatorRecord,
    pending: &PendingWrites,
    writes: &BTreeMap<String, Option<Vec<u8>>>,
    quota: u64,
) -> Result<Option<Failure>, IngestError> {
    let added =
        pending.added_by(writes).map_err(|error| IngestError::Internal(format!("reading plugin state: {error:#}")))?;
    if added <= 0 {
        return Ok(None);
    }
    let stored = pending.state_bytes()?;
    let after = stored.saturating_add_signed(added);
    if after <= quota {
        return Ok(None);
    }
    let id = &operator.id;
    Ok(Some(Failure {
        kind: FailureKind::StateQuota,
        message: format!(
            "its state writes would take operator {id}'s plugin state to {after} bytes, past its quota of {quota} \
             (it keeps {stored}); nothing of the event was written. Have the plugin keep less, or have the platform \
             admin raise the quota with PUT /v1/operators/{id}/limits {{\"state_bytes\": N}}, then POST \
             /v1/operators/{id}/events/retry-failed"
        ),
    }))
}

/// The host's limits with the operator's overrides (already checked against the ceilings).
pub fn effective_limits(defaults: Limits, overrides: &OperatorLimits) -> Limits {
    Limits {
        fuel: overrides.fuel.unwrap_or(defaults.fuel),
        timeout: overrides.timeout_ms.map_or(defaults.timeout, Duration::from_millis),
        memory_bytes: overrides.memory_bytes.unwrap_or(defaults.memory_bytes),
        max_commissions: overrides.max_commissions.unwrap_or(defaults.max_commissions),
        max_state_write_bytes: overrides.max_state_write_bytes.unwrap_or(defaults.max_state_write_bytes),
        max_log_lines: overrides.max_log_lines.unwrap_or(defaults.max_log_lines),
        ..defaults
    }
}

fn plugin_input(operator: &OperatorRecord, event: &StoredEvent, chain: &[ChainLink]) -> PluginInput {
    let pairs = |map: &BTreeMap<String, String>| map.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    // A converted event reaches the plugin in the operator's currency.
    let (amount, currency) = match &event.fx {
        Some(fx) => (Some(fx.amount), Some(fx.currency.clone())),
        None => (event.amount, event.currency.clone()),
    };
    PluginInput {
        event: PluginEvent {
            id: event.id.clone(),
            kind: event.kind.clone(),
            customer: event.customer.clone(),
            occurred_at: event.occurred_at,
            amount: amount.map(|amount| amount.to_string()),
            currency,
            attributes: pairs(&event.attributes),
        },
        context: PluginContext {
            operator: operator.id.clone(),
            operator_currency: operator.currency.clone(),
            config: pairs(&operator.config),
            referral_chain: chain
                .iter()
                .map(|link| PluginAffiliate { id: link.affiliate.clone(), deal: pairs(&link.deal) })
                .collect(),
        },
    }
}

/// Whether an evaluation is live (an event arriving) or a replay of the ledger (a restatement,
/// verify, a statement, a backtest, a shadow): a replay runs without the wall-clock deadline
/// (see [`Limits::without_deadline`]).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Run {
    /// Its commissions are dated `received_at`: the receipt of the request that made them.
    Live { received_at: i64 },
    /// Its commissions are compared by amount, never stored: dated when the event occurred.
    Replay,
}

impl Pipeline {
    /// Attributes and evaluates one event against the ledger as `pending` leaves it: the
    /// committed ledger with the writes of the turn's evaluated events (see [`super::batch`]).
    pub(super) fn prepare(
        &self,
        operator: &OperatorRecord,
        event: &StoredEvent,
        content_sha256: &str,
        received_at: i64,
        retry_of: Option<u32>,
        pending: &Arc<PendingWrites>,
    ) -> Result<Prepared, IngestError> {
        if retry_of.is_none()
            && let Some(existing) = self.store.event(&operator.id, &event.id)?
        {
            return Ok(Prepared::Stored(self.existing_outcome(&operator.id, existing, content_sha256)?));
        }
        let settlement = settlement_period(event);
        let (binding, new_binding) = match settlement {
            // A settlement is the affiliate's own: nothing to bind.
            Some(_) => (
                event.affiliate.clone().map(|affiliate| CustomerBinding {
                    affiliate,
                    bound_by_event: event.id.clone(),
                    bound_at: event.occurred_at,
                }),
                None,
            ),
            None => {
                let binding = match pending.binding(&event.customer) {
                    Some(binding) => Some(binding),
                    None => self.store.binding(&operator.id, &event.customer)?,
                };
                let new_binding = match (&binding, &event.affiliate) {
                    (None, Some(affiliate)) => Some(CustomerBinding {
                        affiliate: affiliate.clone(),
                        bound_by_event: event.id.clone(),
                        bound_at: event.occurred_at,
                    }),
                    _ => None,
                };
                (binding.or(new_binding.clone()), new_binding)
            }
        };
        let attributed_to = binding.as_ref().map(|binding| binding.affiliate.clone());
        let evaluated = match &binding {
            Some(binding) => {
                let state: Arc<dyn StateSource> = pending.clone();
                self.not_reversed_twice(
                    operator,
                    self.evaluate(operator, event, binding, settlement.as_ref(), state, received_at)?,
                )?
            }
            // Kept, paying nothing: there is no one to pay.
            None => Evaluated::default(),
        };
        // Under `adjust`, a late event restates the closed periods it changes: adjustments
        // beside its own commissions, and the plugin state as restated, all in the same commit.
        // So does, under `refuse`, a failed event received before its period closed and retried
        // after (new late events were refused before evaluation, in the operator's turn).
        let closed = match (&settlement, &binding, &evaluated.failure) {
            (None, Some(_), None) => closed_period_of(self, &operator.id, event.occurred_at)?.is_some(),
            _ => false,
        };
        let late = closed && operator.late_events != LateEventPolicy::AsReceived;
        let mut record = EventRecord {
            seq: 0,
            event: event.clone(),
            content_sha256: content_sha256.to_owned(),
            received_at,
            status: if evaluated.failure.is_some() { EventStatus::Failed } else { EventStatus::Accepted },
            failure: evaluated.failure.clone(),
            attributed_to,
            evaluation: evaluated.record.clone(),
            commission_ids: Vec::new(),
            attempts: retry_of.map_or(1, |attempts| attempts + 1),
            restated: late,
            taken_as_received: closed && !late,
        };
        let restated = if late {
            match self.restate(operator, &record, &evaluated.state_writes) {
                Ok(restated) => Some(Ok(restated)),
                Err(RestateError::Ingest(error)) => return Err(error),
                Err(RestateError::Failed(failure)) => Some(Err(failure)),
            }
        } else {
            None
        };
        let (commissions, state_writes, expected_last_seq) = match restated {
            Some(Ok(restated)) => {
                let mut commissions = evaluated.commissions;
                commissions.extend(restated.adjustments);
                (commissions, restated.state_writes, Some(restated.last_seq))
            }
            // Stored as failed, like an evaluation that did not finish: kept, paying and
            // writing nothing, for `retry-failed` once the cause is fixed.
            Some(Err(failure)) => {
                record.status = EventStatus::Failed;
                record.failure = Some(failure);
                record.restated = false;
                (Vec::new(), BTreeMap::new(), None)
            }
            None => (evaluated.commissions, evaluated.state_writes, None),
        };
        // A settlement is never refused (below); an event past the state quota is stored as
        // failed, writing nothing.
        let (commissions, state_writes) = match self.state_quota(operator) {
            Some(quota) if settlement.is_none() && record.failure.is_none() && !state_writes.is_empty() => {
                match over_state_quota(operator, pending, &state_writes, quota)? {
                    Some(failure) => {
                        record.status = EventStatus::Failed;
                        record.failure = Some(failure);
                        record.restated = false;
                        (Vec::new(), BTreeMap::new())
                    }
                    None => (commissions, state_writes),
                }
            }
            _ => (commissions, state_writes),
        };
        let expected_last_seq = expected_last_seq.filter(|_| record.failure.is_none());
        Ok(Prepared::Ready(EventCommit {
            operator: operator.id.clone(),
            record,
            replaces_failed_attempt: retry_of,
            new_binding,
            state_reads: evaluated.state_reads,
            state_writes,
            commissions,
            expected_last_seq,
            // A settlement is counted but never refused: it is the host's own entry, one per
            // affiliate and month, and a month refused half-way would be half closed.
            stored_bytes_quota: if settlement.is_some() { None } else { operator.limits.stored_bytes },
        }))
    }

    /// What the commit of event `id` answers its sender; `None` if it is stale and must be
    /// evaluated again.
    pub(super) fn committed_outcome(
        &self,
        operator: &str,
        id: &str,
        committed: CommitOutcome,
        content_sha256: &str,
    ) -> Result<Option<EventOutcome>, IngestError> {
        Ok(match committed {
            CommitOutcome::Committed { record, commissions } => {
                if let Some(failure) = &record.failure {
                    tracing::warn!(operator, event = %record.event.id, kind = ?failure.kind, reason = %failure.message, "event stored as failed");
                }
                Some(EventOutcome {
                    disposition: if record.status == EventStatus::Failed {
                        Disposition::Failed
                    } else {
                        Disposition::Accepted
                    },
                    commissions,
                    record: *record,
                })
            }
            CommitOutcome::Exists(existing) => Some(self.existing_outcome(operator, *existing, content_sha256)?),
            CommitOutcome::Stale => None,
            CommitOutcome::QuotaExceeded(refused) => {
                return Err(IngestError::QuotaExceeded {
                    operator: operator.to_owned(),
                    event: Some(id.to_owned()),
                    refused,
                });
            }
        })
    }

    /// Fails the evaluation if it claws back a commission that was clawed back already.
    pub(super) fn not_reversed_twice(
        &self,
        operator: &OperatorRecord,
        evaluated: Evaluated,
    ) -> Result<Evaluated, IngestError> {
        for commission in &evaluated.commissions {
            if let Some(reversed) = &commission.reverses
                && self.store.is_reversed(&operator.id, reversed)?
            {
                return Ok(Evaluated {
                    record: evaluated.record,
                    ..Evaluated::failed(Failure {
                        kind: FailureKind::InvalidResult,
                        message: format!("commission {reversed} is reversed already; a commission is clawed back once"),
                    })
                });
            }
        }
        Ok(evaluated)
    }

    pub(super) fn existing_outcome(
        &self,
        operator: &str,
        existing: EventRecord,
        content_sha256: &str,
    ) -> Result<EventOutcome, IngestError> {
        let disposition =
            if existing.content_sha256 == content_sha256 { Disposition::Duplicate } else { Disposition::Conflict };
        let commissions = self.store.commission_records(operator, &existing.commission_ids)?;
        Ok(EventOutcome { disposition, record: existing, commissions })
    }

    /// Evaluates an event (or, with `period`, settles the period) for the customer's affiliate
    /// and its parents, with the version that applies to it.
    pub(super) fn evaluate(
        &self,
        operator: &OperatorRecord,
        event: &StoredEvent,
        binding: &CustomerBinding,
        period: Option<&PluginPeriod>,
        state: Arc<dyn StateSource>,
        received_at: i64,
    ) -> Result<Evaluated, IngestError> {
        let affiliate = binding.affiliate.as_str();
        let Some((version, reason)) = version_for(operator, event, binding) else {
            return Ok(Evaluated::failed(Failure {
                kind: FailureKind::NoActivePlugin,
                message: format!(
                    "operator {} has no active plugin: upload one with POST /v1/operators/{}/plugins?activate=true, then POST /v1/operators/{}/events/retry-failed",
                    operator.id, operator.id, operator.id
                ),
            }));
        };
        let chain = self.referral_chain(&operator.id, affiliate)?;
        let mut evaluated =
            self.run_plugin(operator, event, chain, version, period, state, Run::Live { received_at })?;
        if let Some(record) = &mut evaluated.record {
            record.version_reason = reason.clone();
        }
        for commission in &mut evaluated.commissions {
            commission.version_reason = reason.clone();
        }
        Ok(evaluated)
    }

    /// Replays a stored event as it was evaluated (its version, its referral chain, its
    /// settlement period), over `state`; `None` for an event that was not accepted, which
    /// replays skip.
    pub(crate) fn replay_accepted(
        &self,
        operator: &OperatorRecord,
        record: &EventRecord,
        state: Arc<dyn StateSource>,
    ) -> Result<Option<Evaluated>, IngestError> {
        let (EventStatus::Accepted, Some(evaluation)) = (record.status, &record.evaluation) else { return Ok(None) };
        let period = settlement_period(&record.event);
        let chain = evaluation.chain.clone();
        self.run_plugin(operator, &record.event, chain, evaluation.plugin_version, period.as_ref(), state, Run::Replay)
            .map(Some)
    }

    /// Runs `version` of the operator's plugin on one event (or its `settle` for `period`),
    /// reading state from `state`, and checks its answer. The live path and replays share it,
    /// so both evaluate alike.
    // One call site per kind of run (live, restatement, verify, backtest, shadow) passes exactly
    // these; a struct for them would only be built to be taken apart here.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn run_plugin(
        &self,
        operator: &OperatorRecord,
        event: &StoredEvent,
        chain: Vec<ChainLink>,
        version: u32,
        period: Option<&PluginPeriod>,
        state: Arc<dyn StateSource>,
        run: Run,
    ) -> Result<Evaluated, IngestError> {
        if chain.len() > MAX_CHAIN_DEPTH {
            return Ok(Evaluated::failed(Failure {
                kind: FailureKind::LimitExceeded,
                message: format!(
                    "the referral chain of {} is deeper than {MAX_CHAIN_DEPTH} levels (or loops): {}; move affiliates with PUT /v1/operators/{}/affiliates/{{id}} so that no chain is deeper, then retry the failed events",
                    chain[0].affiliate,
                    chain.iter().map(|link| link.affiliate.as_str()).collect::<Vec<_>>().join(" > "),
                    operator.id
                ),
            }));
        }
        let plugin = self
            .plugins
            .get(&operator.id, version)
            .map_err(|error| IngestError::Internal(format!("loading plugin v{version}: {error:#}")))?;
        let input = plugin_input(operator, event, &chain);
        let (limits, dated) = match run {
            Run::Live { received_at } => (effective_limits(self.sandbox.limits(), &operator.limits), received_at),
            Run::Replay => {
                (effective_limits(self.sandbox.limits(), &operator.limits).without_deadline(), event.occurred_at)
            }
        };
        let started = Instant::now();
        let evaluation = match period {
            Some(period) => self.sandbox.settle(&plugin, period, &input.context, state, limits),
            None => self.sandbox.evaluate(&plugin, &input, state, limits),
        };
        let labels = OperatorLabels { operator: operator.id.clone() };
        self.metrics.evaluation_seconds.get_or_create(&labels).observe(started.elapsed().as_secs_f64());
        self.metrics.fuel_used.get_or_create(&labels).observe(evaluation.fuel_used as f64);
        let record = EvaluationRecord {
            plugin_version: version,
            version_reason: String::new(),
            chain,
            logs: evaluation.logs.into_iter().map(|(level, message)| LogLine { level, message }).collect(),
            fuel_used: evaluation.fuel_used,
        };
        let find_reversed = |reference: &PluginCommissionRef, affiliate: &str| {
            let reversed = self.store.event(&operator.id, &reference.event_id).ok().flatten()?;
            let commissions = self.store.commission_records(&operator.id, &reversed.commission_ids).ok()?;
            commissions
                .into_iter()
                .find(|c| c.rule == reference.rule && c.affiliate == affiliate)
                .map(|c| ReversedCommission { id: c.id, amount: c.amount, currency: c.currency })
        };
        let commissions = evaluation.result.and_then(|commissions| {
            checked_commissions(
                commissions,
                &record.chain,
                event,
                version,
                limits.max_commissions,
                &find_reversed,
                dated,
            )
        });
        Ok(match commissions {
            Ok(commissions) => Evaluated {
                failure: None,
                record: Some(record),
                commissions,
                state_reads: evaluation.state_reads,
                state_writes: evaluation.state_writes,
            },
            // A failed evaluation leaves no trace in state: its writes are dropped here.
            Err(failure) => Evaluated { record: Some(record), ..Evaluated::failed(failure) },
        })
    }

    /// The affiliate and its parents, nearest first. The walk stops one link past
    /// [`MAX_CHAIN_DEPTH`] (or around a loop, which it follows until then): such a chain is not
    /// cut here, [`Self::run_plugin`] fails the event on it, so no parent is left unpaid silently.
    pub(crate) fn referral_chain(&self, operator: &str, affiliate: &str) -> Result<Vec<ChainLink>, IngestError> {
        let mut chain = Vec::new();
        let mut next = Some(affiliate.to_owned());
        while let Some(id) = next.take() {
            if chain.len() > MAX_CHAIN_DEPTH {
                break;
            }
            let Some(record) = self.store.affiliate(operator, &id)? else { break };
            next = record.parent;
            chain.push(ChainLink { affiliate: record.id, deal: record.deal });
        }
        if chain.is_empty() {
            // Bound earlier to an affiliate that no longer resolves: keep the id so the
            // plugin still knows whom the customer belongs to.
            chain.push(ChainLink { affiliate: affiliate.to_owned(), deal: BTreeMap::new() });
        }
        Ok(chain)
    }
}
