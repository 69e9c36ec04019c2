//! A turn's events evaluated in one go and committed as one group.
//!
//! Evaluated one by one, each event would wait for its own commit before the next could read
//! what it wrote: hand-offs between threads and a trip through the committer per event. Instead
//! the operator's sequencer ([`super::sequencer`]) hands a turn's requests to one [`Group`]:
//! each request is checked whole, then its events are evaluated in order, each against the
//! ledger as the events before it will leave it ([`PendingWrites`]: their state writes and new
//! bindings over the committed store), and the committer commits them together, in order. No
//! one else writes the operator's state meanwhile, so what an event read is what it will commit
//! over.
//!
//! The store still checks at commit what each event read, and holds back a customer's events
//! after one that did not commit ([`crate::store::Store::commit_events`]); such an event is
//! evaluated again alone. Three kinds of event are not evaluated over pending writes, and go
//! alone after the events before them commit:
//! - an id that repeats one earlier in the turn (it is a duplicate once the first commits);
//! - an event that may fall in a closed period: its restatement replays the committed ledger;
//! - an evaluation refused as an invalid result: a reversal can only name a commission that is
//!   committed, since commission ids are given at commit.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::restate::closed_period_of;
use super::sequencer::{Ingest, TurnReport, TurnSlot};
use super::state_cache::StateCache;
use super::{EventOutcome, IngestError, Pipeline, Prepared};
use crate::committer::{CommitError, MAX_GROUP};
use crate::event::IncomingEvent;
use crate::sandbox::StateSource;
use crate::store::records::{CustomerBinding, FailureKind, LateEventPolicy, OperatorRecord, StoredEvent};
use crate::store::{CommitOutcome, EventCommit, Store};

/// What a batch's evaluated, not yet committed events wrote, read through by the events after
/// them; under it, the operator's committed state, from the [`StateCache`] or the store.
pub(super) struct PendingWrites {
    store: Arc<Store>,
    cache: Arc<StateCache>,
    operator: String,
    writes: Mutex<Writes>,
}

#[derive(Default)]
struct Writes {
    /// `None` is a deleted key.
    state: HashMap<String, Option<Vec<u8>>>,
    bindings: HashMap<String, CustomerBinding>,
    event_ids: HashSet<String>,
    /// What the pending writes add to the operator's stored state bytes; `None` once a read
    /// for it failed (the count is then dropped at the commit, and made again).
    added: Option<i64>,
}

impl PendingWrites {
    pub(super) fn new(pipeline: &Pipeline, operator: &str) -> Self {
        let writes = Writes { added: Some(0), ..Writes::default() };
        Self {
            store: pipeline.store.clone(),
            cache: pipeline.state_cache().clone(),
            operator: operator.to_owned(),
            writes: Mutex::new(writes),
        }
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

    /// What `writes` would add to the operator's stored state bytes, over the state as the
    /// pending writes leave it.
    pub(super) fn added_by(&self, writes: &BTreeMap<String, Option<Vec<u8>>>) -> anyhow::Result<i64> {
        let mut added = 0i64;
        for (key, value) in writes {
            let entry = |value: Option<&Vec<u8>>| value.map_or(0, |value| (key.len() + value.len()) as i64);
            added += entry(value.as_ref()) - entry(self.get(key)?.as_ref());
        }
        Ok(added)
    }

    /// The operator's stored state bytes, with the pending writes.
    pub(super) fn state_bytes(&self) -> Result<u64, IngestError> {
        let committed = self.cache.state_bytes(&self.operator, || self.store.plugin_state_bytes(&self.operator))?;
        let added = self.writes().added;
        added
            .map(|added| committed.saturating_add_signed(added))
            .ok_or_else(|| IngestError::Internal("the state read for the quota failed earlier in this turn".into()))
    }

    pub(super) fn add(&self, commit: &EventCommit) {
        let added = self.added_by(&commit.state_writes).ok();
        let mut writes = self.writes();
        writes.added = writes.added.zip(added).map(|(before, more)| before + more);
        writes.state.extend(commit.state_writes.iter().map(|(key, value)| (key.clone(), value.clone())));
        if let Some(binding) = &commit.new_binding {
            writes.bindings.insert(commit.record.event.customer.clone(), binding.clone());
        }
        writes.event_ids.insert(commit.record.event.id.clone());
    }

    /// After the commit of the pending events: if each of them was committed, the cache takes
    /// their writes; else it forgets the operator, so nothing it keeps can be a write that did
    /// not happen.
    pub(super) fn done(&self, all_committed: bool) {
        let writes = self.writes();
        match writes.added {
            Some(added) if all_committed => self.cache.stored(&self.operator, &writes.state, added),
            _ => self.cache.forget(&self.operator),
        }
    }
}

impl StateSource for PendingWrites {
    fn get(&self, key: &str) -> anyhow::Result<Option<Vec<u8>>> {
        if let Some(value) = self.writes().state.get(key) {
            return Ok(value.clone());
        }
        if let Some(value) = self.cache.get(&self.operator, key) {
            return Ok(value);
        }
        let value = self.store.state_value(&self.operator, key)?;
        self.cache.put(&self.operator, key, value.clone());
        Ok(value)
    }
}

/// One request of the turn: where its events stand.
struct Request {
    operator: OperatorRecord,
    received_at: i64,
    answer: tokio::sync::oneshot::Sender<Result<Vec<EventOutcome>, IngestError>>,
    /// By place in the request.
    outcomes: Vec<Option<EventOutcome>>,
    /// Why it is refused: its answer, whatever its other events did.
    error: Option<IngestError>,
}

/// A request whose turn ended before its last event: its events still to evaluate (with their
/// places), first in the operator's queue for its next turn. Its answer waits for all of them.
pub(super) struct Resume {
    request: Request,
    events: VecDeque<(usize, IncomingEvent)>,
}

impl Resume {
    /// The events it still holds, for the queue's count.
    pub(super) fn events(&self) -> usize {
        self.events.len()
    }
}

/// A turn's requests, and their events evaluated over [`PendingWrites`], waiting to commit
/// together.
pub(super) struct Group<'a> {
    pipeline: &'a Pipeline,
    operator: String,
    pending: Arc<PendingWrites>,
    /// (request, place in it), in the order of `commits`.
    places: Vec<(usize, usize)>,
    commits: Vec<EventCommit>,
    requests: Vec<Request>,
    /// When the turn's slice ends: a request still evaluating then is left for the next turn.
    deadline: Instant,
    /// That request, and its events not evaluated yet.
    sliced: Option<(usize, VecDeque<(usize, IncomingEvent)>)>,
    /// The turn's evaluation slot, given back before the last commit ([`TurnSlot`]).
    slot: TurnSlot,
}

impl Pipeline {
    pub(super) fn group(&self, operator: &str, deadline: Instant, slot: TurnSlot) -> Group<'_> {
        Group {
            pipeline: self,
            operator: operator.to_owned(),
            pending: Arc::new(PendingWrites::new(self, operator)),
            places: Vec::new(),
            commits: Vec::new(),
            requests: Vec::new(),
            deadline,
            sliced: None,
            slot,
        }
    }
}

impl Group<'_> {
    /// Takes a request: checks it whole, then evaluates its events in order, until the end of
    /// the turn's slice. Returns how many events it held.
    pub(super) fn add(&mut self, ingest: Ingest, report: &mut TurnReport) -> usize {
        let Ingest { operator, events, received_at, answer } = ingest;
        let count = events.len();
        let request = self.requests.len();
        let mut outcomes = Vec::new();
        outcomes.resize_with(count, || None);
        self.requests.push(Request { operator, received_at, answer, outcomes, error: None });
        if let Err(error) = self.take(request, events, report) {
            self.fail(request, error);
            self.drop_uncommitted(request);
        }
        count
    }

    /// Goes on with a request an earlier turn left at the end of its slice: it was checked
    /// whole then, and nothing of the operator's ran since.
    pub(super) fn resume(&mut self, resume: Resume, report: &mut TurnReport) {
        let Resume { request, events } = resume;
        let operator = request.operator.clone();
        let index = self.requests.len();
        self.requests.push(request);
        if let Err(error) = self.evaluate_from(index, &operator, events, report) {
            self.fail(index, error);
            self.drop_uncommitted(index);
        }
    }

    /// Whether the slice ended in the middle of a request: the turn takes no more.
    pub(super) fn is_sliced(&self) -> bool {
        self.sliced.is_some()
    }

    fn take(
        &mut self,
        request: usize,
        mut events: Vec<IncomingEvent>,
        report: &mut TurnReport,
    ) -> Result<(), IngestError> {
        // An id that an earlier request of the turn wrote: those commit first, so that this
        // request's checks (an id reused with other content) see them.
        if events.iter().any(|incoming| self.pending.has_event(&incoming.event.id)) {
            self.commit(report);
        }
        let operator = self.requests[request].operator.clone();
        self.pipeline.check_batch(&operator, &mut events)?;
        self.evaluate_from(request, &operator, events.into_iter().enumerate().collect(), report)
    }

    /// Evaluates the request's events in order; at the end of the slice, keeps the rest for
    /// the next turn (at least one event is evaluated per turn).
    fn evaluate_from(
        &mut self,
        request: usize,
        operator: &OperatorRecord,
        mut events: VecDeque<(usize, IncomingEvent)>,
        report: &mut TurnReport,
    ) -> Result<(), IngestError> {
        while let Some((place, IncomingEvent { event, content_sha256 })) = events.pop_front() {
            if self.requests[request].error.is_some() {
                break;
            }
            self.evaluate(request, operator, place, event, content_sha256, report)?;
            if !events.is_empty() && Instant::now() >= self.deadline {
                self.sliced = Some((request, events));
                break;
            }
        }
        Ok(())
    }

    fn evaluate(
        &mut self,
        request: usize,
        operator: &OperatorRecord,
        place: usize,
        event: StoredEvent,
        content_sha256: String,
        report: &mut TurnReport,
    ) -> Result<(), IngestError> {
        let pipeline = self.pipeline;
        let one_by_one = self.pending.has_event(&event.id)
            || (operator.late_events != LateEventPolicy::AsReceived
                && closed_period_of(pipeline, &operator.id, event.occurred_at)?.is_some());
        if one_by_one {
            self.commit(report);
            return self.one_by_one(request, operator, place, event, content_sha256, report);
        }
        let started = Instant::now();
        let prepared = {
            let _span = tracing::info_span!("event", operator = %operator.id, event = %event.id).entered();
            let received_at = self.requests[request].received_at;
            pipeline.prepare(operator, &event, &content_sha256, received_at, None, &self.pending)?
        };
        match prepared {
            Prepared::Stored(outcome) => {
                self.requests[request].outcomes[place] = Some(pipeline.counted(&operator.id, outcome));
            }
            Prepared::Ready(commit)
                if !self.commits.is_empty()
                    && commit.record.failure.as_ref().is_some_and(|f| f.kind == FailureKind::InvalidResult) =>
            {
                self.commit(report);
                self.one_by_one(request, operator, place, event, content_sha256, report)?;
            }
            Prepared::Ready(commit) => {
                report.note(commit.record.failure.as_ref().map(|failure| failure.kind), started.elapsed());
                self.pending.add(&commit);
                self.places.push((request, place));
                self.commits.push(commit);
                if self.commits.len() == MAX_GROUP {
                    self.commit(report);
                }
            }
        }
        Ok(())
    }

    /// Evaluates and commits one event of the turn alone, against the committed ledger.
    fn one_by_one(
        &mut self,
        request: usize,
        operator: &OperatorRecord,
        place: usize,
        event: StoredEvent,
        content_sha256: String,
        report: &mut TurnReport,
    ) -> Result<(), IngestError> {
        if self.requests[request].error.is_some() {
            return Ok(());
        }
        self.slot.hold();
        let started = Instant::now();
        let received_at = self.requests[request].received_at;
        let outcome = self.pipeline.evaluate_and_commit(operator, event, content_sha256, received_at, None)?;
        if outcome.disposition != super::Disposition::Duplicate {
            report.note(outcome.record.failure.as_ref().map(|failure| failure.kind), started.elapsed());
        }
        self.requests[request].outcomes[place] = Some(outcome);
        Ok(())
    }

    /// Commits the group's events, in order, and starts an empty group. An event the store did
    /// not commit (held back behind one of its customer's that was not) is evaluated again alone.
    fn commit(&mut self, report: &mut TurnReport) {
        if self.commits.is_empty() {
            return;
        }
        let commits = std::mem::take(&mut self.commits);
        let places = std::mem::take(&mut self.places);
        let pending = std::mem::replace(&mut self.pending, Arc::new(PendingWrites::new(self.pipeline, &self.operator)));
        let events: Vec<(StoredEvent, String)> =
            commits.iter().map(|commit| (commit.record.event.clone(), commit.record.content_sha256.clone())).collect();
        let started = Instant::now();
        let committed = match self.pipeline.committer.commit_in_order(commits) {
            Ok(committed) => committed,
            Err(error) => {
                pending.done(false);
                for (request, _) in places {
                    self.fail(request, commit_failed(&error));
                }
                return;
            }
        };
        self.pipeline.metrics.commit_seconds.observe(started.elapsed().as_secs_f64());
        pending.done(committed.iter().all(|outcome| matches!(outcome, Ok(CommitOutcome::Committed { .. }))));
        for (((request, place), (event, content_sha256)), committed) in places.into_iter().zip(events).zip(committed) {
            if self.requests[request].error.is_some() {
                continue;
            }
            let outcome = committed.map_err(IngestError::from).and_then(|committed| {
                self.pipeline.committed_outcome(&self.operator, &event.id, committed, &content_sha256)
            });
            match outcome {
                Ok(Some(outcome)) => {
                    self.requests[request].outcomes[place] = Some(self.pipeline.counted(&self.operator, outcome));
                }
                Ok(None) => {
                    let operator = self.requests[request].operator.clone();
                    if let Err(error) = self.one_by_one(request, &operator, place, event, content_sha256, report) {
                        self.fail(request, error);
                    }
                }
                Err(error) => self.fail(request, error),
            }
        }
    }

    /// Refuses a request: its answer is the first error it met.
    fn fail(&mut self, request: usize, error: IngestError) {
        self.requests[request].error.get_or_insert(error);
    }

    /// Takes a refused request's evaluated, uncommitted events out of the group: nothing of a
    /// request refused before its commit is written.
    fn drop_uncommitted(&mut self, request: usize) {
        if self.places.iter().all(|(of, _)| *of != request) {
            return;
        }
        let commits = std::mem::take(&mut self.commits);
        let places = std::mem::take(&mut self.places);
        self.pending = Arc::new(PendingWrites::new(self.pipeline, &self.operator));
        for (place, commit) in places.into_iter().zip(commits) {
            if place.0 != request {
                self.pending.add(&commit);
                self.places.push(place);
                self.commits.push(commit);
            }
        }
    }

    /// Commits what is left and answers every request of the turn but one the slice ended in,
    /// which is returned, to go on in the operator's next turn.
    pub(super) fn finish(mut self, report: &mut TurnReport) -> Option<Resume> {
        // Its evaluations are done: another operator's turn evaluates while this one commits.
        self.slot.release();
        self.commit(report);
        let mut sliced = self.sliced.take();
        let mut resume = None;
        for (index, request) in self.requests.into_iter().enumerate() {
            if request.error.is_none()
                && let Some((_, events)) = sliced.take_if(|(of, _)| *of == index)
            {
                resume = Some(Resume { request, events });
                continue;
            }
            let answer = match request.error {
                Some(error) => Err(error),
                None => Ok(request
                    .outcomes
                    .into_iter()
                    .map(|outcome| outcome.expect("every event of a request has an outcome"))
                    .collect()),
            };
            // A sender that stopped waiting has nothing to be told: its events are stored.
            let _ = request.answer.send(answer);
        }
        resume
    }
}

fn commit_failed(error: &CommitError) -> IngestError {
    match error {
        CommitError::Storage(error) => IngestError::Storage(error.clone()),
        CommitError::Stopped => IngestError::Internal(error.to_string()),
    }
}
