//! The data path, from a checked event to a durable ledger entry:
//!
//! 1. the batch is checked whole (affiliates exist, no id reused with other content);
//! 2. each event waits for its customer's turn ([`CustomerLocks`]); a batch waits for all its
//!    customers' turns and is evaluated in one go ([`batch`]);
//! 3. it is attributed: the customer's binding, or the affiliate it names, with the chain of
//!    parents above;
//! 4. the operator's active plugin evaluates it in the sandbox;
//! 5. the event, its state writes and its commissions are committed together, all or nothing,
//!    in one transaction with the other events waiting ([`Committer`]);
//! 6. the answer waits for the group flush that makes it durable.
//!
//! Each step is a seam: events could come from a log instead of HTTP, evaluation could run on
//! another node, the commit could go to another store, without the others changing.

mod batch;
mod close;

use batch::PendingWrites;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rust_decimal::{Decimal, RoundingStrategy};
use tokio::sync::{OwnedRwLockReadGuard, OwnedRwLockWriteGuard, OwnedSemaphorePermit, RwLock, Semaphore};

use crate::committer::{CommitError, CommitMetrics, Committer};
use crate::customer_locks::CustomerLocks;
use crate::event::{FieldError, IncomingEvent, now_ms, parse_amount};
use crate::metrics::{FailureLabels, Metrics, OperatorLabels};
use crate::plugins::PluginRegistry;
use crate::replay::AmountOverflow;
use crate::restate::{RestateError, closed_period_of};
use crate::sandbox::{
    Limits, MAX_CONCURRENT_INSTANCES, PluginAffiliate, PluginCommission, PluginCommissionRef, PluginContext,
    PluginEvent, PluginInput, PluginPeriod, Sandbox, StateSource,
};
use crate::store::records::{
    ActivationScope, ChainLink, CommissionRecord, CustomerBinding, EvaluationRecord, EventRecord, EventStatus, Failure,
    FailureKind, FxConversion, LateEventPolicy, LogLine, OperatorLimits, OperatorRecord, StoredEvent,
};
use crate::store::{CommitOutcome, Durability, DurabilityError, EventCommit, QuotaExceeded, Store, StoreError};
use crate::terms::hold_until;

/// How far up the referral chain parents are followed.
pub const MAX_CHAIN_DEPTH: usize = 16;
/// Evaluations of an event beside the operator's others, when state shared with other customers
/// keeps changing under it; after these it goes alone ([`Pipeline::evaluate_in_turn`]).
const ATTEMPTS_WITH_OTHERS: usize = 4;
/// Evaluations of an event alone: one should do, as nothing else of the operator commits then.
const MAX_STALE_RETRIES: usize = 16;
/// Evaluations one operator may have in the sandbox at once (see [`OperatorGate`]).
pub const EVALUATIONS_PER_OPERATOR: usize = 4;

#[derive(Clone)]
pub struct Pipeline {
    store: Arc<Store>,
    sandbox: Arc<Sandbox>,
    plugins: Arc<PluginRegistry>,
    customer_locks: Arc<CustomerLocks>,
    committer: Committer,
    evaluation_slots: Arc<Semaphore>,
    operator_gates: Arc<Mutex<HashMap<String, OperatorGate>>>,
    durability: Durability,
    metrics: Arc<Metrics>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Disposition {
    /// Stored now (evaluated, or kept unattributed).
    Accepted,
    /// Stored before, with the same content: nothing changed.
    Duplicate,
    /// Stored now, but the plugin did not finish; see the failure.
    Failed,
    /// The id was taken by other content between the batch check and the commit.
    Conflict,
}

impl Disposition {
    pub fn as_str(self) -> &'static str {
        match self {
            Disposition::Accepted => "accepted",
            Disposition::Duplicate => "duplicate",
            Disposition::Failed => "failed",
            Disposition::Conflict => "conflict",
        }
    }
}

pub struct EventOutcome {
    pub disposition: Disposition,
    pub record: EventRecord,
    pub commissions: Vec<CommissionRecord>,
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("event ids already used with other content: {}", .0.join(", "))]
    Conflict(Vec<String>),
    #[error("events refer to unknown records")]
    Invalid(Vec<FieldError>),
    #[error(transparent)]
    Storage(#[from] StoreError),
    /// The operator's stored bytes are at its quota: nothing of the request was written, or,
    /// if `event` is named, nothing from that event on.
    #[error("operator {operator} is over its quota of stored bytes")]
    QuotaExceeded { operator: String, event: Option<String>, refused: QuotaExceeded },
    #[error(transparent)]
    NotDurable(#[from] DurabilityError),
    /// A report's total (a backtest's, a statement's) does not fit a decimal.
    #[error(transparent)]
    Overflow(#[from] AmountOverflow),
    #[error("{0}")]
    Internal(String),
}

impl From<CommitError> for IngestError {
    fn from(error: CommitError) -> Self {
        match error {
            CommitError::Storage(error) => IngestError::Storage(error),
            CommitError::Stopped => IngestError::Internal(error.to_string()),
        }
    }
}

/// Why the ledger cannot take writes again in this process.
#[derive(Debug, thiserror::Error)]
pub enum StorageFailure {
    #[error("{0}; start the host again once the disk has room")]
    Flush(DurabilityError),
    #[error("the ledger's committer stopped ({0}); start the host again")]
    Committer(String),
}

/// What a `retry-failed` run did.
#[derive(Debug, Default, serde::Serialize, utoipa::ToSchema)]
pub struct RetryReport {
    pub retried: usize,
    pub accepted: usize,
    pub still_failed: usize,
}

impl Pipeline {
    pub fn new(store: Arc<Store>, sandbox: Arc<Sandbox>, plugins: Arc<PluginRegistry>, metrics: Arc<Metrics>) -> Self {
        Self {
            durability: store.durability(metrics.flush_seconds.clone()),
            committer: Committer::start(
                store.clone(),
                CommitMetrics {
                    group_seconds: metrics.commit_group_seconds.clone(),
                    group_events: metrics.commit_group_events.clone(),
                },
            ),
            store,
            sandbox,
            plugins,
            customer_locks: Arc::new(CustomerLocks::default()),
            evaluation_slots: Arc::new(Semaphore::new(MAX_CONCURRENT_INSTANCES as usize)),
            operator_gates: Arc::default(),
            metrics,
        }
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The host's default per-event limits.
    pub fn sandbox_limits(&self) -> Limits {
        self.sandbox.limits()
    }

    pub fn plugins(&self) -> &Arc<PluginRegistry> {
        &self.plugins
    }

    /// Whether the ledger can acknowledge events (its last flush succeeded).
    pub fn is_ready(&self) -> bool {
        !self.durability.is_failing()
    }

    /// Resolves when the ledger cannot take writes again in this process: a flush failed (see
    /// [`Durability::failed`]), or the committer stopped. The host stops; its supervisor starts
    /// it again, and opening the ledger anew recovers it.
    pub async fn storage_failed(&self) -> StorageFailure {
        tokio::select! {
            error = self.durability.failed() => StorageFailure::Flush(error),
            reason = self.committer.stopped() => StorageFailure::Committer(reason),
        }
    }

    /// Waits until everything committed so far is on disk.
    pub async fn make_durable(&self) -> Result<(), DurabilityError> {
        self.durability.wait().await
    }

    /// Checks a batch whole, then evaluates and commits its events in order, and answers once
    /// all of them are durable.
    pub async fn ingest(
        &self,
        operator: &OperatorRecord,
        mut events: Vec<IncomingEvent>,
    ) -> Result<Vec<EventOutcome>, IngestError> {
        self.check_quota(operator)?;
        // From the closed-period check to the commit: a close waits for it (see [`close`]).
        let order = self.gate(&operator.id).order.read_owned().await;
        self.check_batch(operator, &mut events)?;
        let outcomes = match <[IncomingEvent; 1]>::try_from(events) {
            Ok([incoming]) => vec![self.process(operator, incoming).await?],
            Err(events) => self.process_batch(operator, events).await?,
        };
        drop(order);
        self.durability.wait().await?;
        Ok(outcomes)
    }

    /// Refuses a write of an operator whose stored bytes have reached its quota, before any of
    /// it is evaluated. (A write that would go past the quota is refused at its commit.)
    pub fn check_quota(&self, operator: &OperatorRecord) -> Result<(), IngestError> {
        let Some(quota) = operator.limits.stored_bytes else { return Ok(()) };
        let used = self.store.stored_bytes(&operator.id)?;
        if used < quota {
            return Ok(());
        }
        Err(IngestError::QuotaExceeded {
            operator: operator.id.clone(),
            event: None,
            refused: QuotaExceeded { used, needed: 0, quota },
        })
    }

    /// Refuses the batch if any event is invalid against the stored data (a currency with no
    /// rate, an unknown affiliate, an id reused); converts the others' amounts.
    fn check_batch(&self, operator: &OperatorRecord, events: &mut [IncomingEvent]) -> Result<(), IngestError> {
        let batch = events.len() > 1;
        let mut invalid = Vec::new();
        for (index, incoming) in events.iter_mut().enumerate() {
            match convert(operator, &incoming.event) {
                Ok(fx) => incoming.event.fx = fx,
                Err(problem) => invalid.push(FieldError { index: batch.then_some(index), ..problem }),
            }
        }
        if !invalid.is_empty() {
            return Err(IngestError::Invalid(invalid));
        }
        self.check_references(operator, events)
    }

    fn check_references(&self, operator: &OperatorRecord, events: &[IncomingEvent]) -> Result<(), IngestError> {
        let mut invalid = Vec::new();
        let mut conflicts = Vec::new();
        let mut seen: HashMap<&str, &str> = HashMap::new();
        for (index, incoming) in events.iter().enumerate() {
            let event = &incoming.event;
            if let Some(affiliate) = &event.affiliate
                && self.store.affiliate(&operator.id, affiliate)?.is_none()
            {
                invalid.push(FieldError {
                    index: (events.len() > 1).then_some(index),
                    field: "affiliate".into(),
                    problem: format!(
                        "unknown affiliate {affiliate:?}: create it first with PUT /v1/operators/{}/affiliates/{affiliate}",
                        operator.id
                    ),
                });
            }
            let earlier = seen.insert(&event.id, &incoming.content_sha256);
            let stored = self.store.event(&operator.id, &event.id)?;
            let reused = earlier.is_some_and(|hash| hash != incoming.content_sha256)
                || stored.as_ref().is_some_and(|stored| stored.content_sha256 != incoming.content_sha256);
            if reused {
                conflicts.push(event.id.clone());
            }
            // A retry of an event stored before its period closed is still a retry.
            if operator.late_events == LateEventPolicy::Refuse
                && stored.is_none()
                && let Some(period) = closed_period_of(self, &operator.id, event.occurred_at)?
            {
                invalid.push(FieldError {
                    index: (events.len() > 1).then_some(index),
                    field: "occurred_at".into(),
                    problem: format!(
                        "{} falls in period {}, which operator {} has closed, and the operator refuses late events \
                         (late_events: refuse); nothing was written. Report it in the open period, or set \
                         late_events to adjust with PUT /v1/operators/{}/settings",
                        crate::event::format_time(event.occurred_at),
                        period.id,
                        operator.id,
                        operator.id
                    ),
                });
            }
        }
        if !invalid.is_empty() {
            return Err(IngestError::Invalid(invalid));
        }
        if !conflicts.is_empty() {
            return Err(IngestError::Conflict(conflicts));
        }
        Ok(())
    }

    async fn process(&self, operator: &OperatorRecord, incoming: IncomingEvent) -> Result<EventOutcome, IngestError> {
        let _turn = self.customer_locks.lock(&operator.id, &incoming.event.customer).await;
        self.evaluate_in_turn(operator, incoming.event, incoming.content_sha256, now_ms(), None).await
    }

    /// Evaluates and commits one event, in its customer's turn. Beside the operator's other
    /// evaluations first; if what it read keeps changing before its commit (a hot key of state
    /// shared by many customers, under load), then alone: it waits for the operator's evaluations
    /// in flight to commit and holds the others back until it has, so it cannot be stale again.
    async fn evaluate_in_turn(
        &self,
        operator: &OperatorRecord,
        event: StoredEvent,
        content_sha256: String,
        received_at: i64,
        retry_of: Option<u32>,
    ) -> Result<EventOutcome, IngestError> {
        for (turn, attempts) in [(Turn::WithOthers, ATTEMPTS_WITH_OTHERS), (Turn::Alone, MAX_STALE_RETRIES)] {
            let _slots = self.evaluation_slots(&operator.id, turn).await;
            let (pipeline, evaluated_operator) = (self.clone(), operator.clone());
            let (event, content_sha256) = (event.clone(), content_sha256.clone());
            let outcome = tokio::task::spawn_blocking(move || {
                pipeline.evaluate_and_commit(
                    &evaluated_operator,
                    event,
                    content_sha256,
                    received_at,
                    retry_of,
                    attempts,
                )
            })
            .await
            .map_err(|error| IngestError::Internal(format!("evaluation task failed: {error}")))??;
            match outcome {
                Some(outcome) => return Ok(outcome),
                None if turn == Turn::WithOthers => {
                    self.metrics
                        .evaluations_alone
                        .get_or_create(&OperatorLabels { operator: operator.id.clone() })
                        .inc();
                }
                None => {}
            }
        }
        Err(IngestError::Internal(format!(
            "event {} kept meeting changes to the state it read, even evaluated alone; gave up after {MAX_STALE_RETRIES} evaluations",
            event.id
        )))
    }

    fn gate(&self, operator: &str) -> OperatorGate {
        self.operator_gates.lock().expect("gates lock").entry(operator.to_owned()).or_default().clone()
    }

    /// Waits for the operator's commit turn (shared, or alone), then one of its sandbox slots,
    /// then one of the sandbox's.
    async fn evaluation_slots(&self, operator: &str, turn: Turn) -> EvaluationSlots {
        let gate = self.gate(operator);
        let (shared, alone) = match turn {
            Turn::WithOthers => (Some(gate.commits.read_owned().await), None),
            Turn::Alone => (None, Some(gate.commits.write_owned().await)),
        };
        let operator = gate.slots.acquire_owned().await.expect("the semaphore is never closed");
        let sandbox = self.evaluation_slots.clone().acquire_owned().await.expect("the semaphore is never closed");
        EvaluationSlots::new(self.metrics.clone(), [operator, sandbox], shared, alone)
    }

    /// One of the operator's sandbox slots, then one of the sandbox's, for work off the live
    /// path that runs plugins: a verify, a statement, a backtest, a shadow, an upload's smoke
    /// run. It runs one instance at a time and holds the slots throughout, so however many run
    /// at once, the instances in use stay within the pool's bound
    /// ([`MAX_CONCURRENT_INSTANCES`]) and live events never find the pool exhausted. It takes
    /// no commit turn: it commits nothing, and holds no operator's events back.
    pub async fn replay_slots(&self, operator: &str) -> EvaluationSlots {
        let gate = self.gate(operator);
        let operator = gate.slots.acquire_owned().await.expect("the semaphore is never closed");
        let sandbox = self.evaluation_slots.clone().acquire_owned().await.expect("the semaphore is never closed");
        EvaluationSlots::new(self.metrics.clone(), [operator, sandbox], None, None)
    }

    /// Evaluates the operator's failed events again, oldest first, with its active plugin.
    pub async fn retry_failed(&self, operator: &OperatorRecord) -> Result<RetryReport, IngestError> {
        let mut report = RetryReport::default();
        for id in self.store.failed_event_ids(&operator.id)? {
            let _order = self.gate(&operator.id).order.read_owned().await;
            let Some(record) = self.store.event(&operator.id, &id)? else { continue };
            let _turn = self.customer_locks.lock(&operator.id, &record.event.customer).await;
            let outcome = self
                .evaluate_in_turn(
                    operator,
                    record.event,
                    record.content_sha256,
                    record.received_at,
                    Some(record.attempts),
                )
                .await?;
            match outcome.disposition {
                Disposition::Accepted => {
                    report.retried += 1;
                    report.accepted += 1;
                }
                Disposition::Failed => {
                    report.retried += 1;
                    report.still_failed += 1;
                }
                // Retried meanwhile by a concurrent call.
                Disposition::Duplicate | Disposition::Conflict => {}
            }
        }
        self.durability.wait().await?;
        Ok(report)
    }

    /// Counts an event's outcome in the metrics.
    fn counted(&self, operator: &str, outcome: EventOutcome) -> EventOutcome {
        self.metrics.count_event(operator, &outcome.record.event.kind, outcome.disposition);
        if let (Disposition::Failed, Some(failure)) = (outcome.disposition, &outcome.record.failure) {
            self.metrics
                .failures
                .get_or_create(&FailureLabels { operator: operator.to_owned(), kind: failure.kind.as_str() })
                .inc();
        }
        outcome
    }

    /// Attributes, evaluates and commits one event, evaluating again if state it read changed
    /// before the commit, up to `attempts` times; `None` if it was stale every time. The outcome
    /// is counted in the metrics. `retry_of` is the attempts count of the failed record being
    /// retried.
    fn evaluate_and_commit(
        &self,
        operator: &OperatorRecord,
        event: StoredEvent,
        content_sha256: String,
        received_at: i64,
        retry_of: Option<u32>,
        attempts: usize,
    ) -> Result<Option<EventOutcome>, IngestError> {
        // Every log line of this event's evaluation and commit carries its ids.
        let _span = tracing::info_span!("event", operator = %operator.id, event = %event.id).entered();
        for _ in 0..attempts {
            let commit = match self.prepare(operator, &event, &content_sha256, received_at, retry_of, None)? {
                Prepared::Stored(outcome) => return Ok(Some(self.counted(&operator.id, outcome))),
                Prepared::Ready(commit) => commit,
            };
            let started = Instant::now();
            let committed = self.committer.commit(commit)?;
            self.metrics.commit_seconds.observe(started.elapsed().as_secs_f64());
            if let Some(outcome) = self.committed_outcome(&operator.id, &event.id, committed, &content_sha256)? {
                return Ok(Some(self.counted(&operator.id, outcome)));
            }
        }
        Ok(None)
    }

    /// Attributes and evaluates one event against the committed ledger, or, with `pending`,
    /// against the ledger as a batch's evaluated events will leave it (see [`batch`]).
    fn prepare(
        &self,
        operator: &OperatorRecord,
        event: &StoredEvent,
        content_sha256: &str,
        received_at: i64,
        retry_of: Option<u32>,
        pending: Option<&Arc<PendingWrites>>,
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
                let binding = match pending.and_then(|pending| pending.binding(&event.customer)) {
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
                let state: Arc<dyn StateSource> = match pending {
                    Some(pending) => pending.clone(),
                    None => Arc::new(OperatorState { store: self.store.clone(), operator: operator.id.clone() }),
                };
                self.not_reversed_twice(operator, self.evaluate(operator, event, binding, settlement.as_ref(), state)?)?
            }
            // Kept, paying nothing: there is no one to pay.
            None => Evaluated::default(),
        };
        // Under `adjust`, a late event restates the closed periods it changes: adjustments
        // beside its own commissions, and the plugin state as restated, all in the same commit.
        // So does, under `refuse`, a failed event received before its period closed and retried
        // after (new late events were refused before evaluation, under the ordering lock).
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
            match self.restate(operator, &record) {
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
    fn committed_outcome(
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
    fn not_reversed_twice(&self, operator: &OperatorRecord, evaluated: Evaluated) -> Result<Evaluated, IngestError> {
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

    fn existing_outcome(
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
    fn evaluate(
        &self,
        operator: &OperatorRecord,
        event: &StoredEvent,
        binding: &CustomerBinding,
        period: Option<&PluginPeriod>,
        state: Arc<dyn StateSource>,
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
        let mut evaluated = self.run_plugin(operator, event, chain, version, period, state, Run::Live)?;
        if let Some(record) = &mut evaluated.record {
            record.version_reason = reason.clone();
        }
        for commission in &mut evaluated.commissions {
            commission.version_reason = reason.clone();
        }
        Ok(evaluated)
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
        let limits = match run {
            Run::Live => effective_limits(self.sandbox.limits(), &operator.limits),
            Run::Replay => effective_limits(self.sandbox.limits(), &operator.limits).without_deadline(),
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
            checked_commissions(commissions, &record.chain, event, version, limits.max_commissions, &find_reversed)
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

/// What each operator's evaluations share.
#[derive(Clone)]
struct OperatorGate {
    /// Its evaluations in the sandbox at once. A hostile or slow plugin fills its own slots and
    /// waits; the other operators' slots stay free.
    slots: Arc<Semaphore>,
    /// Held shared by each evaluation from its first read to its commit, and alone by an event
    /// whose reads kept going stale: tokio's lock is fair, so that event waits for the
    /// evaluations in flight, and the ones after it wait for it.
    commits: Arc<RwLock<()>>,
    /// Orders closes with events: held shared by each ingest and retry from its closed-period
    /// check through its commit, alone by a close (see [`close`]). Taken before the customers'
    /// turns and `commits`, and once per task: tokio's lock is fair, so a task taking it again
    /// while a close waits would wait for itself.
    order: Arc<RwLock<()>>,
}

impl Default for OperatorGate {
    fn default() -> Self {
        Self {
            slots: Arc::new(Semaphore::new(EVALUATIONS_PER_OPERATOR)),
            commits: Arc::default(),
            order: Arc::default(),
        }
    }
}

/// Whether an evaluation is live (an event arriving) or a replay of the ledger (a restatement,
/// verify, a statement, a backtest, a shadow): a replay runs without the wall-clock deadline
/// (see [`Limits::without_deadline`]).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Run {
    Live,
    Replay,
}

/// How an evaluation commits: beside the operator's others, or with them held back.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Turn {
    WithOthers,
    Alone,
}

/// An operator's slot and a sandbox slot (and, live, its commit turn), held for one evaluation
/// and its commit, or for a replay; counted as in flight.
pub struct EvaluationSlots {
    metrics: Arc<Metrics>,
    _permits: [OwnedSemaphorePermit; 2],
    _shared: Option<OwnedRwLockReadGuard<()>>,
    _alone: Option<OwnedRwLockWriteGuard<()>>,
}

impl EvaluationSlots {
    fn new(
        metrics: Arc<Metrics>,
        permits: [OwnedSemaphorePermit; 2],
        shared: Option<OwnedRwLockReadGuard<()>>,
        alone: Option<OwnedRwLockWriteGuard<()>>,
    ) -> Self {
        metrics.evaluations_in_flight.inc();
        Self { metrics, _permits: permits, _shared: shared, _alone: alone }
    }
}

impl Drop for EvaluationSlots {
    fn drop(&mut self) {
        self.metrics.evaluations_in_flight.dec();
    }
}

/// Ids and types that start with this are the host's own; senders may not use them.
pub const RESERVED_PREFIX: &str = "commission-host.";
/// The type of the ledger entry a period's settlement is stored as.
pub const SETTLEMENT_KIND: &str = "commission-host.settlement";
/// How a settlement entry's id starts; `{period}:{affiliate}` follows.
pub const SETTLEMENT_PREFIX: &str = "commission-host.period:";

/// A calendar month, as periods are: `2026-11`, UTC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Period {
    pub id: String,
    pub starts_at: i64,
    pub ends_at: i64,
}

impl Period {
    /// Parses `YYYY-MM`.
    pub fn parse(id: &str) -> Result<Self, String> {
        let problem = || format!("{id:?} is not a month written YYYY-MM");
        let (year, month) = id.split_once('-').ok_or_else(problem)?;
        if year.len() != 4 || month.len() != 2 {
            return Err(problem());
        }
        let year: i32 = year.parse().map_err(|_| problem())?;
        let month: u8 = month.parse().map_err(|_| problem())?;
        let month = time::Month::try_from(month).map_err(|_| problem())?;
        let start = time::Date::from_calendar_date(year, month, 1).map_err(|_| problem())?;
        let (next_year, next_month) =
            if month == time::Month::December { (year + 1, time::Month::January) } else { (year, month.next()) };
        let end = time::Date::from_calendar_date(next_year, next_month, 1).map_err(|_| problem())?;
        let ms = |date: time::Date| date.midnight().assume_utc().unix_timestamp() * 1000;
        Ok(Self { id: id.to_owned(), starts_at: ms(start), ends_at: ms(end) })
    }

    /// The month `ms` falls in; `None` for a time outside the calendar's range.
    pub fn containing(ms: i64) -> Option<Self> {
        let time = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()?;
        Self::parse(&format!("{:04}-{:02}", time.year(), u8::from(time.month()))).ok()
    }

    /// The month after this one.
    pub fn next(&self) -> Option<Self> {
        Self::containing(self.ends_at)
    }

    /// The id of this period's settlement entry for `affiliate`.
    pub fn settlement_id(&self, affiliate: &str) -> String {
        format!("{SETTLEMENT_PREFIX}{}:{affiliate}", self.id)
    }

    fn to_plugin(&self) -> PluginPeriod {
        PluginPeriod { id: self.id.clone(), starts_at: self.starts_at, ends_at: self.ends_at }
    }
}

/// The period a settlement entry settles; `None` for an ordinary event.
pub(crate) fn settlement_period(event: &StoredEvent) -> Option<PluginPeriod> {
    if event.kind != SETTLEMENT_KIND {
        return None;
    }
    event.attributes.get("period").and_then(|id| Period::parse(id).ok()).map(|period| period.to_plugin())
}

/// An event ready to commit, or the outcome of finding it stored already.
enum Prepared {
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

struct OperatorState {
    store: Arc<Store>,
    operator: String,
}

impl StateSource for OperatorState {
    fn get(&self, key: &str) -> anyhow::Result<Option<Vec<u8>>> {
        Ok(self.store.state_value(&self.operator, key)?)
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

/// The event's amount in the operator's currency, at the operator's rate, if it is in another.
fn convert(operator: &OperatorRecord, event: &StoredEvent) -> Result<Option<FxConversion>, FieldError> {
    let (Some(amount), Some(currency)) = (event.amount, &event.currency) else { return Ok(None) };
    if *currency == operator.currency {
        return Ok(None);
    }
    let rates = &operator.fx_rates;
    let Some(rate) = rates.rates.get(currency) else {
        return Err(FieldError::new(
            "currency",
            format!(
                "operator {} pays in {} and has no rate for {currency}: set one with PUT /v1/operators/{}/fx-rates",
                operator.id, operator.currency, operator.id
            ),
        ));
    };
    let converted = amount
        .checked_mul(*rate)
        .ok_or_else(|| FieldError::new("amount", format!("{amount} {currency} at {rate} overflows a decimal")))?;
    Ok(Some(FxConversion {
        rate: *rate,
        source: rates.source.clone(),
        rates_updated_at: rates.updated_at,
        amount: converted,
        currency: operator.currency.clone(),
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

/// The commission a reversal claws back, as [`checked_commissions`] checks the reversal against.
#[derive(Debug, Clone)]
pub struct ReversedCommission {
    pub id: String,
    pub amount: Decimal,
    pub currency: String,
}

/// Resolves a reversal's reference, for an affiliate, to the commission it claws back.
pub type FindReversed<'a> = dyn Fn(&PluginCommissionRef, &str) -> Option<ReversedCommission> + 'a;

/// How the host rounds a plugin's amount to its currency's minor units: half away from zero,
/// as the reference plugins that round do, so a figure they rounded already stays as it is, and
/// a reversal rounds to exactly the negative of its original.
pub const ROUNDING: RoundingStrategy = RoundingStrategy::MidpointAwayFromZero;

/// `amount` held to the minor units of `currency` (its ISO 4217 exponent: 2 for USD, 0 for JPY,
/// 3 for KWD) with [`ROUNDING`]; as it is for a currency without minor units (XAU, XDR).
/// Applied once, by the host, to each commission before it is stored.
pub fn to_minor_units(amount: Decimal, currency: iso_currency::Currency) -> Decimal {
    match currency.exponent() {
        Some(exponent) if amount.scale() > u32::from(exponent) => {
            let rounded = amount.round_dp_with_strategy(u32::from(exponent), ROUNDING);
            // No negative zero: -0.004 is paid as 0.00.
            if rounded.is_zero() { rounded.abs() } else { rounded }
        }
        _ => amount,
    }
}

/// The plugin's answer is untrusted input like any other: every field is checked before it
/// becomes a ledger entry. The commissions it returns have no ids yet; the commit assigns them.
///
/// Each amount is rounded to its currency's minor units ([`to_minor_units`]), the plugin's figure
/// kept beside it when that changed it. A reversal's reference (event id and rule) is resolved by
/// `find_reversed` to the affiliate's commission it claws back; it must exist, be in the same
/// currency, and the reversal must be negative and, rounded, no larger than it.
pub fn checked_commissions(
    commissions: Vec<PluginCommission>,
    chain: &[ChainLink],
    event: &StoredEvent,
    plugin_version: u32,
    max_commissions: usize,
    find_reversed: &FindReversed<'_>,
) -> Result<Vec<CommissionRecord>, Failure> {
    let invalid = |message: String| Failure { kind: FailureKind::InvalidResult, message };
    if commissions.len() > max_commissions {
        return Err(invalid(format!(
            "the plugin returned {} commissions; at most {max_commissions} per event",
            commissions.len()
        )));
    }
    let created_at = now_ms();
    let commissions: Vec<CommissionRecord> = commissions
        .into_iter()
        .enumerate()
        .map(|(index, commission)| {
            let at = |problem: String| invalid(format!("commission {index}: {problem}"));
            if !chain.iter().any(|link| link.affiliate == commission.affiliate) {
                return Err(at(format!("affiliate {:?} is not in the referral chain", commission.affiliate)));
            }
            let exact = parse_amount(&commission.amount).map_err(|problem| at(format!("amount: {problem}")))?;
            let Some(currency) = iso_currency::Currency::from_code(&commission.currency) else {
                return Err(at(format!("currency {:?} is not an ISO 4217 code", commission.currency)));
            };
            let amount = to_minor_units(exact, currency);
            if commission.rule.is_empty() || commission.rule.len() > 64 {
                return Err(at("rule: 1 to 64 bytes".into()));
            }
            if commission.explanation.len() > 512 {
                return Err(at("explanation: at most 512 bytes".into()));
            }
            let reverses = match &commission.reverses {
                None => None,
                Some(reference) => {
                    let Some(original) = find_reversed(reference, &commission.affiliate) else {
                        return Err(at(format!(
                            "reverses {}/{}: {} has no such commission",
                            reference.event_id, reference.rule, commission.affiliate
                        )));
                    };
                    if original.currency != commission.currency {
                        return Err(at(format!(
                            "reverses {} paid in {}, but is in {}: a reversal claws back in the currency of \
                             what it reverses",
                            original.id, original.currency, commission.currency
                        )));
                    }
                    let paid = original.amount;
                    if !exact.is_sign_negative() || -amount > paid {
                        return Err(at(format!(
                            "a reversal of {paid} must be negative and at most {paid} in size; got {exact}"
                        )));
                    }
                    Some(original.id)
                }
            };
            let hold_until = match chain.iter().find(|link| link.affiliate == commission.affiliate) {
                Some(link) => hold_until(&link.deal, created_at).map_err(at)?,
                None => None,
            };
            Ok(CommissionRecord {
                id: String::new(),
                event_id: event.id.clone(),
                affiliate: commission.affiliate,
                customer: event.customer.clone(),
                amount,
                currency: commission.currency,
                rule: commission.rule,
                explanation: commission.explanation,
                plugin_version,
                occurred_at: event.occurred_at,
                created_at,
                reverses,
                fx_rate: event.fx.as_ref().map(|fx| fx.rate),
                version_reason: String::new(),
                hold_until,
                restates: None,
                unrounded_amount: (amount != exact).then_some(exact),
            })
        })
        .collect::<Result<_, _>>()?;
    // Each commission is clawed back once: a result reversing one twice could never commit.
    let mut reversed = HashSet::new();
    for (index, commission) in commissions.iter().enumerate() {
        if let Some(id) = &commission.reverses
            && !reversed.insert(id)
        {
            return Err(invalid(format!("commission {index}: reverses {id}, which an earlier one reverses already")));
        }
    }
    Ok(commissions)
}
