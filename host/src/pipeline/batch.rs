//! A batch's events evaluated in one go and committed as one group.
//!
//! Evaluated one by one like postbacks, each event of a webhook batch would wait for its own
//! commit before the next could read what it wrote: four hand-offs between threads and a trip
//! through the committer per event. Instead the batch waits once for all its customers' turns,
//! then one blocking task evaluates its events in order, each against the ledger as the events
//! before it will leave it ([`PendingWrites`]: their state writes and new bindings over the
//! committed store), and the committer commits them together, in order.
//!
//! Nothing here is trusted to be right by construction: each event's commit still checks the
//! state it read, and a customer's events after one that did not commit are held back with it
//! ([`crate::store::Store::commit_events`]). Those are evaluated again one by one, as if they
//! had arrived alone; if one keeps going stale, it and every event after it wait until the
//! batch's turn beside the operator's other evaluations is over, and go alone
//! ([`Pipeline::evaluate_in_turn`]). Three kinds of event are not evaluated over pending writes,
//! and go the one-by-one way after the events before them commit:
//! - an id that repeats one earlier in the batch (it is a duplicate once the first commits);
//! - an event that may fall in a closed period: its restatement replays the committed ledger;
//! - an evaluation refused as an invalid result: a reversal can only name a commission that is
//!   committed, since commission ids are given at commit.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::{ATTEMPTS_WITH_OTHERS, EventOutcome, IngestError, Pipeline, Prepared, Turn};
use crate::committer::MAX_GROUP;
use crate::event::{IncomingEvent, now_ms};
use crate::restate::closed_period_of;
use crate::sandbox::StateSource;
use crate::store::records::{CustomerBinding, FailureKind, LateEventPolicy, OperatorRecord, StoredEvent};
use crate::store::{EventCommit, Store};

/// What a batch's evaluated, not yet committed events wrote, read through by the events after
/// them.
pub(super) struct PendingWrites {
    store: Arc<Store>,
    operator: String,
    writes: Mutex<Writes>,
}

#[derive(Default)]
struct Writes {
    /// `None` is a deleted key.
    state: HashMap<String, Option<Vec<u8>>>,
    bindings: HashMap<String, CustomerBinding>,
    event_ids: HashSet<String>,
}

impl PendingWrites {
    fn new(store: Arc<Store>, operator: &str) -> Self {
        Self { store, operator: operator.to_owned(), writes: Mutex::default() }
    }

    fn writes(&self) -> std::sync::MutexGuard<'_, Writes> {
        self.writes.lock().expect("pending writes lock")
    }

    pub(super) fn binding(&self, customer: &str) -> Option<CustomerBinding> {
        self.writes().bindings.get(customer).cloned()
    }

    fn has_event(&self, id: &str) -> bool {
        self.writes().event_ids.contains(id)
    }

    fn add(&self, commit: &EventCommit) {
        let mut writes = self.writes();
        writes.state.extend(commit.state_writes.iter().map(|(key, value)| (key.clone(), value.clone())));
        if let Some(binding) = &commit.new_binding {
            writes.bindings.insert(commit.record.event.customer.clone(), binding.clone());
        }
        writes.event_ids.insert(commit.record.event.id.clone());
    }
}

impl StateSource for PendingWrites {
    fn get(&self, key: &str) -> anyhow::Result<Option<Vec<u8>>> {
        if let Some(value) = self.writes().state.get(key) {
            return Ok(value.clone());
        }
        Ok(self.store.state_value(&self.operator, key)?)
    }
}

/// The events evaluated over [`PendingWrites`], waiting to commit together.
struct Group {
    pending: Arc<PendingWrites>,
    /// (place in the batch, the event, its content hash), in the order of `commits`.
    events: Vec<(usize, StoredEvent, String)>,
    commits: Vec<EventCommit>,
}

impl Group {
    fn new(store: Arc<Store>, operator: &str) -> Self {
        Self { pending: Arc::new(PendingWrites::new(store, operator)), events: Vec::new(), commits: Vec::new() }
    }

    fn push(&mut self, place: usize, event: StoredEvent, content_sha256: String, commit: EventCommit) {
        self.pending.add(&commit);
        self.events.push((place, event, content_sha256));
        self.commits.push(commit);
    }
}

/// Where a batch stands as its events are evaluated.
struct Progress {
    /// By place in the batch.
    outcomes: Vec<Option<EventOutcome>>,
    /// Events to evaluate alone once the batch lets the operator's other evaluations go, in
    /// order: from the first whose reads kept going stale beside the others, every event after.
    alone: Vec<(usize, StoredEvent, String)>,
}

impl Progress {
    /// Places the outcome of an event evaluated one by one, or, if it kept going stale (or an
    /// earlier one did), keeps it for later.
    fn settle(&mut self, place: usize, event: StoredEvent, content_sha256: String, outcome: Option<EventOutcome>) {
        match outcome {
            Some(outcome) if self.alone.is_empty() => self.outcomes[place] = Some(outcome),
            _ => self.alone.push((place, event, content_sha256)),
        }
    }
}

impl Pipeline {
    /// Evaluates and commits a batch's events in order, as [`Pipeline::process`] does one.
    pub(super) async fn process_batch(
        &self,
        operator: &OperatorRecord,
        events: Vec<IncomingEvent>,
    ) -> Result<Vec<EventOutcome>, IngestError> {
        let _turns = self
            .customer_locks
            .lock_all(&operator.id, events.iter().map(|incoming| incoming.event.customer.as_str()))
            .await;
        let slots = self.evaluation_slots(&operator.id, Turn::WithOthers).await;
        let (pipeline, batch_operator) = (self.clone(), operator.clone());
        let received_at = now_ms();
        let progress =
            tokio::task::spawn_blocking(move || pipeline.evaluate_batch(&batch_operator, events, received_at))
                .await
                .map_err(|error| IngestError::Internal(format!("evaluation task failed: {error}")))??;
        drop(slots);
        let Progress { mut outcomes, alone } = progress;
        // Still in the customers' turns, so nothing of theirs comes between.
        for (place, event, content_sha256) in alone {
            outcomes[place] = Some(self.evaluate_in_turn(operator, event, content_sha256, received_at, None).await?);
        }
        Ok(outcomes.into_iter().map(|outcome| outcome.expect("every event of the batch has an outcome")).collect())
    }

    fn evaluate_batch(
        &self,
        operator: &OperatorRecord,
        events: Vec<IncomingEvent>,
        received_at: i64,
    ) -> Result<Progress, IngestError> {
        let mut progress = Progress { outcomes: Vec::new(), alone: Vec::new() };
        progress.outcomes.resize_with(events.len(), || None);
        let mut group = Group::new(self.store.clone(), &operator.id);
        for (place, IncomingEvent { event, content_sha256 }) in events.into_iter().enumerate() {
            if !progress.alone.is_empty() {
                progress.alone.push((place, event, content_sha256));
                continue;
            }
            let one_by_one = group.pending.has_event(&event.id)
                || (operator.late_events != LateEventPolicy::AsReceived
                    && closed_period_of(self, &operator.id, event.occurred_at)?.is_some());
            if one_by_one {
                self.commit_group(operator, received_at, &mut group, &mut progress)?;
                self.one_by_one(operator, received_at, place, event, content_sha256, &mut progress)?;
                continue;
            }
            let prepared = {
                let _span = tracing::info_span!("event", operator = %operator.id, event = %event.id).entered();
                self.prepare(operator, &event, &content_sha256, received_at, None, Some(&group.pending))?
            };
            match prepared {
                Prepared::Stored(outcome) => progress.outcomes[place] = Some(self.counted(&operator.id, outcome)),
                Prepared::Ready(commit)
                    if !group.commits.is_empty()
                        && commit.record.failure.as_ref().is_some_and(|f| f.kind == FailureKind::InvalidResult) =>
                {
                    self.commit_group(operator, received_at, &mut group, &mut progress)?;
                    self.one_by_one(operator, received_at, place, event, content_sha256, &mut progress)?;
                }
                Prepared::Ready(commit) => {
                    group.push(place, event, content_sha256, commit);
                    if group.commits.len() == MAX_GROUP {
                        self.commit_group(operator, received_at, &mut group, &mut progress)?;
                    }
                }
            }
        }
        self.commit_group(operator, received_at, &mut group, &mut progress)?;
        Ok(progress)
    }

    /// Evaluates and commits an event of the batch as if it had come alone, beside the
    /// operator's other evaluations (the batch holds its turn with them).
    fn one_by_one(
        &self,
        operator: &OperatorRecord,
        received_at: i64,
        place: usize,
        event: StoredEvent,
        content_sha256: String,
        progress: &mut Progress,
    ) -> Result<(), IngestError> {
        if !progress.alone.is_empty() {
            progress.alone.push((place, event, content_sha256));
            return Ok(());
        }
        let outcome = self.evaluate_and_commit(
            operator,
            event.clone(),
            content_sha256.clone(),
            received_at,
            None,
            ATTEMPTS_WITH_OTHERS,
        )?;
        progress.settle(place, event, content_sha256, outcome);
        Ok(())
    }

    /// Commits the group's events, in order, and starts an empty group. An event that did not
    /// commit (stale, or held back behind one of its customer's) is evaluated again one by one.
    fn commit_group(
        &self,
        operator: &OperatorRecord,
        received_at: i64,
        group: &mut Group,
        progress: &mut Progress,
    ) -> Result<(), IngestError> {
        if group.commits.is_empty() {
            return Ok(());
        }
        let Group { events, commits, .. } = std::mem::replace(group, Group::new(self.store.clone(), &operator.id));
        let started = Instant::now();
        let committed = self.committer.commit_in_order(commits)?;
        self.metrics.commit_seconds.observe(started.elapsed().as_secs_f64());
        for ((place, event, content_sha256), committed) in events.into_iter().zip(committed) {
            match self.committed_outcome(&operator.id, &event.id, committed?, &content_sha256)? {
                Some(outcome) => progress.outcomes[place] = Some(self.counted(&operator.id, outcome)),
                None => self.one_by_one(operator, received_at, place, event, content_sha256, progress)?,
            }
        }
        Ok(())
    }
}
