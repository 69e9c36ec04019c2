//! The data path, from a checked event to a durable ledger entry:
//!
//! 1. the request goes onto its operator's queue, or is refused if the queue is full
//!    ([`sequencer`]); the operator's one sequencer takes its jobs in arrival order;
//! 2. in the sequencer's turn, the request is checked whole (affiliates exist, no id reused with
//!    other content, no event refused as late);
//! 3. each event is attributed: the customer's binding, or the affiliate it names, with the
//!    chain of parents above;
//! 4. the operator's active plugin evaluates it in the sandbox, over the state the events before
//!    it left ([`batch`]);
//! 5. the turn's events, their state writes and their commissions are committed together, each
//!    all or nothing, in one transaction with the other operators' events waiting ([`Committer`]);
//! 6. the answer waits for the group flush that makes it durable.
//!
//! Each step is a seam: events could come from a log instead of HTTP, evaluation could run on
//! another node, the commit could go to another store, without the others changing.
//!
//! Which way the dependencies go: `event`, `store`, `sandbox`, `metrics`, `committer` and
//! `amounts` know nothing of the pipeline (`metrics` knows nothing of the crate at all:
//! everything reports into it); `plugins` sits on the store, the sandbox and the metrics; the
//! pipeline sits on all of them. Everything that writes an operator's ledger is inside it,
//! because it runs in the operator's turn: a late event's restatement ([`restate`]), the
//! checkpoints and period books ([`checkpoints`]) and the statements a close stores
//! ([`statements`]). What only reads the ledger sits on top and is never called from here:
//! `replay` (verify, backtest), `shadow`, the API and the cluster. The `layering` test keeps the
//! crate's modules free of import cycles.

mod affiliates;
mod batch;
mod checkpoint_writer;
pub mod checkpoints;
mod checks;
mod close;
mod command;
mod evaluate;
mod period;
pub mod restate;
mod sequencer;
mod state_cache;
pub mod statements;

pub use checks::{FindReversed, ROUNDING, ReversedCommission, checked_commissions, to_minor_units};
pub use command::{Command, Commanded, Done};
pub use evaluate::effective_limits;
pub(crate) use evaluate::{Evaluated, Run};
pub(crate) use period::settlement_period;
pub use period::{Period, RESERVED_PREFIX, SETTLEMENT_KIND, SETTLEMENT_PREFIX};

pub use sequencer::{DEFAULT_QUEUE_EVENTS, EvaluationSlots, Scheduling, default_verify_helpers};
pub use state_cache::{CacheBounds, DEFAULT_CACHE_BYTES, DEFAULT_OPERATOR_CACHE_BYTES};

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use tokio::sync::oneshot;

use crate::amounts::AmountOverflow;
use crate::committer::{CommitError, CommitMetrics, Committer};
use crate::event::{FieldError, IncomingEvent, now_ms};
use crate::metrics::{FailureLabels, Metrics};
use crate::plugins::{PluginRegistry, PreparedPlugin};
use crate::sandbox::{Limits, Sandbox};
use crate::store::records::{
    CommissionRecord, EventRecord, FxConversion, LateEventPolicy, OperatorRecord, PluginRecord, StoredEvent,
};
use crate::store::{CommitOutcome, Durability, DurabilityError, QuotaExceeded, Store, StoreError};
use batch::PendingWrites;
use evaluate::Prepared;
use restate::closed_period_of;
use sequencer::{Ingest, Job, Sequencers};

/// How far up the referral chain parents are followed.
pub const MAX_CHAIN_DEPTH: usize = 16;

#[derive(Clone)]
pub struct Pipeline {
    store: Arc<Store>,
    sandbox: Arc<Sandbox>,
    plugins: Arc<PluginRegistry>,
    committer: Committer,
    checkpoint_writer: checkpoint_writer::CheckpointWriter,
    sequencers: Arc<Sequencers>,
    durability: Durability,
    metrics: Arc<Metrics>,
    /// Where [`Pipeline::ingest`] sends checked events instead of this process's sequencers:
    /// the cluster's log (`serve --cluster`); unset on the embedded default.
    route: Arc<OnceLock<Arc<dyn EventRoute>>>,
}

/// A request's answer, as the events' route gives it.
pub type Answered<'a> = Pin<Box<dyn Future<Output = Result<Vec<EventOutcome>, IngestError>> + Send + 'a>>;

/// Another way for checked events to reach their operator's sequencer: in a cluster, through
/// the operator's replicated stream to the node that owns the operator ([`crate::cluster`]).
pub trait EventRoute: Send + Sync {
    fn ingest<'a>(&'a self, operator: &'a OperatorRecord, events: Vec<IncomingEvent>) -> Answered<'a>;
    /// An ordered command ([`Command`]), through the same log as the events.
    fn command<'a>(
        &'a self,
        operator: &'a OperatorRecord,
        command: Command,
    ) -> Pin<Box<dyn Future<Output = Result<Done, IngestError>> + Send + 'a>>;
    /// A new operator, known to every node once this answers `true` here (`false`: the id is
    /// taken, on any node).
    fn create_operator<'a>(
        &'a self,
        operator: &'a OperatorRecord,
    ) -> Pin<Box<dyn Future<Output = Result<bool, IngestError>> + Send + 'a>>;
    /// Shares a validated plugin with every node as the operator's next version, stored on
    /// this one once this answers.
    fn add_plugin<'a>(
        &'a self,
        operator: &'a str,
        prepared: PreparedPlugin,
    ) -> Pin<Box<dyn Future<Output = Result<PluginRecord, IngestError>> + Send + 'a>>;
    /// Whether the cluster has `version` of the operator's plugin, held on this node once
    /// this answers `true`.
    fn hold_plugin<'a>(
        &'a self,
        operator: &'a str,
        version: u32,
    ) -> Pin<Box<dyn Future<Output = Result<bool, IngestError>> + Send + 'a>>;
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
    /// The operator's queue is full: nothing of the request was written.
    #[error("operator {operator}'s queue is full ({queued} events wait; it holds {capacity})")]
    QueueFull { operator: String, queued: usize, capacity: usize },
    /// In a cluster: the events are durable in the operator's stream, but its owner had not
    /// committed them within the answer's deadline; they will be (`events` are their ids).
    #[error("operator {operator}'s events are durable in the cluster's log and wait for their commit")]
    Pending { operator: String, events: Vec<String> },
    /// In a cluster: the log could not take the events; nothing of the request was written.
    #[error("the cluster's log is unavailable: {0}")]
    LogUnavailable(String),
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
    pub fn new(
        store: Arc<Store>,
        sandbox: Arc<Sandbox>,
        plugins: Arc<PluginRegistry>,
        metrics: Arc<Metrics>,
        scheduling: Scheduling,
    ) -> Self {
        Self {
            sequencers: Arc::new(Sequencers::new(scheduling, &metrics)),
            durability: store.durability(metrics.flush_seconds.clone()),
            committer: Committer::start(
                store.clone(),
                CommitMetrics {
                    group_seconds: metrics.commit_group_seconds.clone(),
                    group_events: metrics.commit_group_events.clone(),
                },
            ),
            checkpoint_writer: checkpoint_writer::CheckpointWriter::start(store.clone(), metrics.clone()),
            store,
            sandbox,
            plugins,
            metrics,
            route: Arc::default(),
        }
    }

    /// Sends checked events through `route` from now on (once; `serve --cluster`).
    pub fn route_events(&self, route: Arc<dyn EventRoute>) {
        if self.route.set(route).is_err() {
            tracing::warn!("the events' route was set already; kept the first");
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

    /// Queues a request's events on the operator's sequencer, which checks them whole, then
    /// evaluates and commits them in order; answers once all of them are durable. In a cluster
    /// the events go through the operator's stream to its owner instead ([`EventRoute`]).
    pub async fn ingest(
        &self,
        operator: &OperatorRecord,
        events: Vec<IncomingEvent>,
    ) -> Result<Vec<EventOutcome>, IngestError> {
        if let Some(route) = self.route.get() {
            return route.ingest(operator, events).await;
        }
        self.sequence_events(operator, events, now_ms())?.await
    }

    /// Puts a request's events on this process's sequencer for the operator now (so that
    /// requests submitted one after the other are evaluated in that order), received at
    /// `received_at`; the future answers once they are committed and durable. The cluster's
    /// owner of an operator feeds it from the operator's stream, in stream order.
    pub fn sequence_events(
        &self,
        operator: &OperatorRecord,
        events: Vec<IncomingEvent>,
        received_at: i64,
    ) -> Result<impl Future<Output = Result<Vec<EventOutcome>, IngestError>> + Send + 'static, IngestError> {
        self.check_quota(operator)?;
        let (answer, answered) = oneshot::channel();
        let job = Job::Ingest(Ingest { operator: operator.clone(), events, received_at, answer });
        self.submit(&operator.id, job)?;
        let (durability, id) = (self.durability.clone(), operator.id.clone());
        Ok(async move {
            let outcomes =
                answered.await.map_err(|_| IngestError::Internal(format!("operator {id}'s sequencer stopped")))??;
            durability.wait().await?;
            Ok(outcomes)
        })
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

    /// Evaluates the operator's failed events again, oldest first, with its active plugin, in
    /// the operator's order.
    pub async fn retry_failed(&self, operator: &OperatorRecord) -> Result<RetryReport, IngestError> {
        self.command(operator, Command::RetryFailed).await?.retried()
    }

    /// [`Self::retry_failed`], in the operator's turn.
    fn retry_failed_in_turn(&self, operator: &OperatorRecord) -> Result<RetryReport, IngestError> {
        let mut report = RetryReport::default();
        for id in self.store.failed_event_ids(&operator.id)? {
            let Some(record) = self.store.event(&operator.id, &id)? else { continue };
            let outcome = self.evaluate_and_commit(
                operator,
                record.event,
                record.content_sha256,
                record.received_at,
                Some(record.attempts),
            )?;
            match outcome.disposition {
                Disposition::Accepted => {
                    report.retried += 1;
                    report.accepted += 1;
                }
                Disposition::Failed => {
                    report.retried += 1;
                    report.still_failed += 1;
                }
                Disposition::Duplicate | Disposition::Conflict => {}
            }
        }
        Ok(report)
    }

    /// Counts an event's outcome in the metrics.
    fn counted(&self, operator: &str, outcome: EventOutcome) -> EventOutcome {
        self.metrics.count_event(operator, &outcome.record.event.kind, outcome.disposition.as_str());
        if let (Disposition::Failed, Some(failure)) = (outcome.disposition, &outcome.record.failure) {
            self.metrics
                .failures
                .get_or_create(&FailureLabels { operator: operator.to_owned(), kind: failure.kind.as_str() })
                .inc();
        }
        outcome
    }

    /// Attributes, evaluates and commits one event alone, against the committed ledger; the
    /// outcome is counted in the metrics. `retry_of` is the attempts count of the failed record
    /// being retried. Nothing else writes the operator's state meanwhile, so what it read stays
    /// as it was: a second evaluation is only a guard.
    fn evaluate_and_commit(
        &self,
        operator: &OperatorRecord,
        event: StoredEvent,
        content_sha256: String,
        received_at: i64,
        retry_of: Option<u32>,
    ) -> Result<EventOutcome, IngestError> {
        // Every log line of this event's evaluation and commit carries its ids.
        let _span = tracing::info_span!("event", operator = %operator.id, event = %event.id).entered();
        for _ in 0..2 {
            let pending = Arc::new(PendingWrites::new(self, &operator.id));
            let commit = match self.prepare(operator, &event, &content_sha256, received_at, retry_of, &pending)? {
                Prepared::Stored(outcome) => return Ok(self.counted(&operator.id, outcome)),
                Prepared::Ready(commit) => commit,
            };
            pending.add(&commit);
            let started = Instant::now();
            let committed = self.committer.commit(commit);
            pending.done(matches!(committed, Ok(CommitOutcome::Committed { .. })));
            let committed = committed?;
            self.metrics.commit_seconds.observe(started.elapsed().as_secs_f64());
            if let Some(outcome) = self.committed_outcome(&operator.id, &event.id, committed, &content_sha256)? {
                return Ok(self.counted(&operator.id, outcome));
            }
        }
        Err(IngestError::Internal(format!(
            "event {} found what it read changed at its commit, twice, though its operator's sequencer is the only writer",
            event.id
        )))
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
