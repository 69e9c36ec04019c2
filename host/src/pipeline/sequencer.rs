//! One sequencer per operator: the only writer of the operator's ledger and plugin state.
//!
//! Why one writer per operator: an operator's plugin state is one keyspace shared by all its
//! customers (an affiliate's month NGR, a tier count), so any two of its events may read what
//! the other writes. With many writers that needed a lock per customer, a check at commit of
//! everything each evaluation read, evaluations again when it had changed, and a fallback that
//! held the operator's other evaluations back when one kept losing. With one writer, each event
//! is evaluated over the state as the events before it left it (the committed store plus the
//! pending writes of the events of its turn not yet committed, [`super::batch`]), in arrival
//! order, and nothing can change under it: none of that is needed, and per-customer order is
//! arrival order.
//!
//! What goes through the queue: checked events (a postback, a webhook or a batch: one job each)
//! and the commands that must be ordered with them: a period close (its settlements count every
//! event before it, and every event after it is late), a retry of failed events, and a change
//! of the operator (an activation, its settings, its limits: [`Pipeline::command`]), which so
//! takes effect at a defined point of the operator's event order. A command runs alone in its
//! turn, and runs its own evaluations directly (a close's settlements, a late event's
//! restatement): it never queues onto the queue it is served from, which would wait for itself.
//! Each job is evaluated with the operator's record as it is in its turn, so a change queued
//! before it applies to it.
//!
//! Scheduling: the operator's task runs only while it has jobs (started by the first, ended
//! when the queue is empty), so an idle operator costs a map entry. A turn evaluates on a
//! blocking thread, and needs one of [`Scheduling::evaluation_threads`] slots of a semaphore
//! shared by every operator; tokio's semaphore is FIFO, so busy operators take turns. A turn
//! ends after [`TIME_SLICE`] or [`MAX_GROUP`] events, whichever comes first, and gives its slot
//! back: 1,000 busy operators share the slots, not 1,000 threads. A turn gives its slot back
//! once its evaluations are done, before its last group commits ([`TurnSlot`]): the commit
//! runs beside the next operator's evaluations instead of holding a slot idle. The turn's
//! thread still waits for that commit, so the operator's next turn evaluates over it; the
//! threads so waiting are at most one per operator, and one group commit answers them all.
//! A request still evaluating at the end of the slice (a batch of a thousand events) is cut there: what it evaluated is
//! committed, and the rest goes back to the front of the operator's queue, so other operators
//! take their turns meanwhile and nothing of this operator's runs before it is done; its answer
//! still waits for all its events, and says what each did, as a batch's answer always has. An operator whose evaluations
//! keep hitting their limits (fuel, time, memory, a trap) waits a penalty before its next turn,
//! without a slot, so it takes less than its share; its events wait, none is lost. Each queue is
//! bounded in events ([`Scheduling::queue_events`]): a request that does not fit is refused
//! whole ([`IngestError::QueueFull`]), nothing of it written.
//!
//! Between turns the operator's plugin state that turns read and wrote stays in memory
//! ([`super::state_cache`]), within a bound per operator and one in total.
//!
//! Towards scale-out: everything an operator's sequencer needs is the operator's part of the
//! ledger (its events in sequence order, its state, its bindings) and its jobs. Started on
//! another node, a sequencer would open the operator's log there (or replay it, as verify does,
//! from sequence 1) and take that operator's jobs from then on; only one node may run it at a
//! time, which a lease per operator would settle. Nothing here is shared between operators but
//! the evaluation slots and the committer, neither of which holds order.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use super::batch::Resume;
use super::state_cache::{CacheBounds, StateCache};
use super::{EventOutcome, IngestError, Period, Pipeline, RetryReport};
use crate::committer::MAX_GROUP;
use crate::event::IncomingEvent;
use crate::metrics::{Metrics, OperatorLabels};
use crate::sandbox::MAX_CONCURRENT_INSTANCES;
use crate::store::records::{FailureKind, OperatorRecord};

/// How long a turn goes on taking jobs before it gives its evaluation slot to another operator.
pub const TIME_SLICE: Duration = Duration::from_millis(5);
/// The longest an operator whose evaluations keep hitting their limits waits between turns.
pub const MAX_PENALTY: Duration = Duration::from_secs(1);
/// The default bound on the events waiting in one operator's queue.
pub const DEFAULT_QUEUE_EVENTS: usize = 4096;

/// How evaluation is shared out, and what the sequencers may keep of plugin state.
#[derive(Debug, Clone, Copy)]
pub struct Scheduling {
    /// Turns evaluating at once, over all operators: each holds one blocking thread.
    pub evaluation_threads: usize,
    /// Events one operator's queue holds; a request that does not fit gets 503.
    pub queue_events: usize,
    /// The bounds of the plugin state kept in memory between turns ([`StateCache`]).
    pub state_cache: CacheBounds,
    /// The quota on an operator's stored plugin state, for operators without their own
    /// (`state_bytes` in their limits); `None`: no quota.
    pub state_quota_bytes: Option<u64>,
    /// A checkpoint of an operator's plugin state every this many events (0: none but the
    /// closes'): see [`crate::pipeline::checkpoints`].
    pub checkpoint_every: u64,
    /// Threads a verify may add to its own to evaluate the stretches between stored
    /// checkpoints ahead of it ([`crate::verify_ahead`]); each takes a replay slot if one is free.
    pub verify_helpers: usize,
}

impl Default for Scheduling {
    fn default() -> Self {
        Self {
            evaluation_threads: std::thread::available_parallelism().map_or(2, |threads| threads.get()),
            queue_events: DEFAULT_QUEUE_EVENTS,
            state_cache: CacheBounds::default(),
            state_quota_bytes: None,
            checkpoint_every: super::checkpoints::DEFAULT_CHECKPOINT_EVERY,
            verify_helpers: default_verify_helpers(),
        }
    }
}

/// A verify's helpers by default: one per core beside the verify's own.
pub fn default_verify_helpers() -> usize {
    std::thread::available_parallelism().map_or(1, |cores| cores.get()) - 1
}

impl Scheduling {
    /// Within what the sandbox's instance pool can serve, with room left for replays.
    fn checked(self) -> Self {
        let most = MAX_CONCURRENT_INSTANCES as usize / 2;
        Self {
            evaluation_threads: self.evaluation_threads.clamp(1, most),
            queue_events: self.queue_events.max(1),
            ..self
        }
    }
}

type Answer<T> = oneshot::Sender<Result<T, IngestError>>;

/// Checked events of one request, to evaluate in order and answer together.
pub(super) struct Ingest {
    pub(super) operator: OperatorRecord,
    pub(super) events: Vec<IncomingEvent>,
    pub(super) received_at: i64,
    pub(super) answer: Answer<Vec<EventOutcome>>,
}

/// A change to the operator (an activation, its settings, its limits), made in its turn; it
/// answers through the channel it closes over.
pub(super) type Change = Box<dyn FnOnce(&Pipeline) + Send>;

pub(super) enum Job {
    Ingest(Ingest),
    /// A request a turn left at the end of its slice: always first in the queue.
    Resume(Resume),
    Close {
        operator: OperatorRecord,
        period: Period,
        /// When the close was asked for: the settlements' receipt time.
        received_at: i64,
        answer: Answer<Vec<EventOutcome>>,
    },
    RetryFailed {
        operator: OperatorRecord,
        answer: Answer<RetryReport>,
    },
    Change(Change),
}

impl Job {
    /// What the job counts against the queue's bound: its events. A command is never refused.
    fn events(&self) -> usize {
        match self {
            Job::Ingest(ingest) => ingest.events.len(),
            Job::Resume(resume) => resume.events(),
            Job::Close { .. } | Job::RetryFailed { .. } | Job::Change(_) => 0,
        }
    }
}

/// One operator's waiting jobs.
pub(super) struct Queue {
    operator: String,
    state: Mutex<QueueState>,
}

#[derive(Default)]
struct QueueState {
    jobs: VecDeque<Job>,
    events: usize,
    /// Whether the operator's task is running; it ends only with the queue empty.
    running: bool,
    /// What the operator waits before its next turn.
    penalty: Duration,
}

impl Queue {
    fn state(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock().expect("queue lock")
    }

    /// The next job, if it is checked events (with `only_events`), or any.
    pub(super) fn pop(&self, only_events: bool, metrics: &Metrics) -> Option<Job> {
        let mut state = self.state();
        if only_events && !matches!(state.jobs.front(), Some(Job::Ingest(_))) {
            return None;
        }
        let job = state.jobs.pop_front()?;
        state.events -= job.events();
        metrics
            .queue_events
            .get_or_create(&OperatorLabels { operator: self.operator.clone() })
            .set(state.events as i64);
        Some(job)
    }

    /// Puts the rest of a request a turn left back at the front: nothing of the operator's
    /// runs before it is done.
    fn push_front(&self, job: Job, metrics: &Metrics) {
        let mut state = self.state();
        state.events += job.events();
        state.jobs.push_front(job);
        metrics
            .queue_events
            .get_or_create(&OperatorLabels { operator: self.operator.clone() })
            .set(state.events as i64);
    }
}

/// Every operator's queue, and the slots their turns share.
pub(super) struct Sequencers {
    queues: Mutex<HashMap<String, Arc<Queue>>>,
    threads: Arc<Semaphore>,
    replays: Arc<Semaphore>,
    scheduling: Scheduling,
    cache: Arc<StateCache>,
}

impl Sequencers {
    pub(super) fn new(scheduling: Scheduling, metrics: &Arc<Metrics>) -> Self {
        let scheduling = scheduling.checked();
        metrics.evaluation_threads.set(scheduling.evaluation_threads as i64);
        Self {
            queues: Mutex::default(),
            threads: Arc::new(Semaphore::new(scheduling.evaluation_threads)),
            replays: Arc::new(Semaphore::new(MAX_CONCURRENT_INSTANCES as usize - scheduling.evaluation_threads)),
            scheduling,
            cache: Arc::new(StateCache::new(scheduling.state_cache, metrics.clone())),
        }
    }

    fn queue(&self, operator: &str) -> Arc<Queue> {
        let mut queues = self.queues.lock().expect("queues lock");
        queues
            .entry(operator.to_owned())
            .or_insert_with(|| Arc::new(Queue { operator: operator.to_owned(), state: Mutex::default() }))
            .clone()
    }
}

/// What a turn saw of its evaluations, for the throttle.
#[derive(Default)]
pub(super) struct TurnReport {
    /// Evaluations that finished, or failed for a reason of their own (a rule error).
    pub(super) clean: usize,
    /// Evaluations that hit a limit, and the time they took.
    pub(super) limited: usize,
    pub(super) limited_time: Duration,
}

impl TurnReport {
    /// Notes one evaluation that ended with `failure` after `took`.
    pub(super) fn note(&mut self, failure: Option<FailureKind>, took: Duration) {
        match failure {
            Some(
                FailureKind::OutOfFuel
                | FailureKind::Timeout
                | FailureKind::OutOfMemory
                | FailureKind::StackOverflow
                | FailureKind::Trap
                | FailureKind::LimitExceeded,
            ) => {
                self.limited += 1;
                self.limited_time += took;
            }
            _ => self.clean += 1,
        }
    }

    /// The penalty after this turn: it grows while the operator's evaluations keep hitting their
    /// limits (at least the time they took, doubling each turn, up to [`MAX_PENALTY`]) and ends
    /// with a turn of clean evaluations.
    fn penalty(&self, before: Duration) -> Duration {
        if self.limited > 0 {
            (before * 2).max(self.limited_time).max(Duration::from_millis(1)).min(MAX_PENALTY)
        } else if self.clean > 0 {
            Duration::ZERO
        } else {
            before
        }
    }
}

impl Pipeline {
    pub(super) fn state_cache(&self) -> &Arc<StateCache> {
        &self.sequencers.cache
    }

    /// The quota on the operator's stored plugin state: its own, else the host's.
    pub(super) fn state_quota(&self, operator: &OperatorRecord) -> Option<u64> {
        operator.limits.state_bytes.or(self.sequencers.scheduling.state_quota_bytes)
    }

    /// Puts a job on the operator's queue, starting its task if it is idle; refuses it if the
    /// queue is full (a request is taken whole into an empty queue, however large).
    pub(super) fn submit(&self, operator: &str, job: Job) -> Result<(), IngestError> {
        let queue = self.sequencers.queue(operator);
        let labels = OperatorLabels { operator: operator.to_owned() };
        let mut state = queue.state();
        let capacity = self.sequencers.scheduling.queue_events;
        let events = job.events();
        if events > 0 && state.events > 0 && state.events + events > capacity {
            self.metrics.queue_full.get_or_create(&labels).inc();
            return Err(IngestError::QueueFull { operator: operator.to_owned(), queued: state.events, capacity });
        }
        state.events += events;
        state.jobs.push_back(job);
        self.metrics.queue_events.get_or_create(&labels).set(state.events as i64);
        if !state.running {
            state.running = true;
            self.metrics.sequencers.inc();
            tokio::spawn(self.clone().sequence(queue.clone()));
        }
        Ok(())
    }

    /// The operator's task: turns until its queue is empty.
    async fn sequence(self, queue: Arc<Queue>) {
        let labels = OperatorLabels { operator: queue.operator.clone() };
        loop {
            let penalty = {
                let mut state = queue.state();
                if state.jobs.is_empty() {
                    state.running = false;
                    self.metrics.sequencers.dec();
                    return;
                }
                state.penalty
            };
            if !penalty.is_zero() {
                self.metrics.throttled.get_or_create(&labels).inc();
                self.metrics.throttled_seconds.get_or_create(&labels).inc_by(penalty.as_secs_f64());
                tokio::time::sleep(penalty).await;
            }
            let permit = self.sequencers.threads.clone().acquire_owned().await.expect("the semaphore is never closed");
            self.metrics.sequencer_turns.get_or_create(&labels).inc();
            let slot = TurnSlot {
                threads: self.sequencers.threads.clone(),
                metrics: self.metrics.clone(),
                held: Some(InFlight::new(self.metrics.clone(), permit, true)),
            };
            let (pipeline, turn_queue) = (self.clone(), queue.clone());
            let turn = tokio::task::spawn_blocking(move || pipeline.turn(&turn_queue, slot)).await;
            match turn {
                Ok(report) => {
                    let mut state = queue.state();
                    state.penalty = report.penalty(state.penalty);
                }
                // The turn's jobs were answered by their senders being dropped.
                Err(error) => tracing::error!(operator = %queue.operator, %error, "a sequencer's turn failed"),
            }
        }
    }

    /// One turn, on a blocking thread: a command alone, or checked events, job after job, until
    /// the time slice or the group is full. A request still evaluating at the end of the slice
    /// (a large batch) goes on in the operator's next turn, so that other operators get theirs
    /// meanwhile; its answer waits for all its events, as ever.
    fn turn(&self, queue: &Queue, slot: TurnSlot) -> TurnReport {
        let started = Instant::now();
        let mut report = TurnReport::default();
        let mut group = match queue.pop(false, &self.metrics) {
            None => return report,
            Some(Job::Close { operator, period, received_at, answer }) => {
                let _ = answer.send(self.close_in_turn(&self.current(operator), &period, received_at));
                return report;
            }
            Some(Job::RetryFailed { operator, answer }) => {
                let _ = answer.send(self.retry_failed_in_turn(&self.current(operator)));
                return report;
            }
            Some(Job::Change(change)) => {
                change(self);
                return report;
            }
            Some(Job::Resume(resume)) => {
                let mut group = self.group(&queue.operator, started + TIME_SLICE, slot);
                group.resume(resume, &mut report);
                group
            }
            Some(Job::Ingest(first)) => {
                let mut group = self.group(&queue.operator, started + TIME_SLICE, slot);
                group.add(self.current_ingest(first), &mut report);
                group
            }
        };
        let mut events = 0;
        while !group.is_sliced() && started.elapsed() < TIME_SLICE && events < MAX_GROUP {
            let Some(Job::Ingest(next)) = queue.pop(true, &self.metrics) else { break };
            events += group.add(self.current_ingest(next), &mut report);
        }
        if let Some(resume) = group.finish(&mut report) {
            self.metrics.sliced_requests.get_or_create(&OperatorLabels { operator: queue.operator.clone() }).inc();
            queue.push_front(Job::Resume(resume), &self.metrics);
        }
        self.checkpoint_if_due(&queue.operator, self.checkpoint_every());
        report
    }

    /// The operator as it is now, in its turn: a change queued before a job (an activation, a
    /// setting) applies to it, whenever the job's request read the operator.
    fn current(&self, operator: OperatorRecord) -> OperatorRecord {
        match self.store.operator(&operator.id) {
            Ok(Some(current)) => current,
            // Read again at its commit; the record the request was checked with will do.
            Ok(None) | Err(_) => operator,
        }
    }

    fn current_ingest(&self, ingest: Ingest) -> Ingest {
        Ingest { operator: self.current(ingest.operator), ..ingest }
    }

    /// A slot for work off the live path that runs plugins: a verify, a statement, a backtest,
    /// a shadow, an upload's smoke run. It runs one instance at a time and holds the slot
    /// throughout; the slots for replays are the sandbox pool's less the live turns', so live
    /// events never find the pool exhausted. It takes no operator's turn: it commits nothing.
    pub async fn replay_slots(&self) -> EvaluationSlots {
        let permit = self.sequencers.replays.clone().acquire_owned().await.expect("the semaphore is never closed");
        EvaluationSlots { _slot: InFlight::new(self.metrics.clone(), permit, false) }
    }

    /// Another replay slot for a replay that already holds one, if one is free now: a verify's
    /// helpers on other cores take what is free and never wait ([`crate::verify_ahead`]).
    pub(crate) fn try_replay_slot(&self) -> Option<EvaluationSlots> {
        let permit = self.sequencers.replays.clone().try_acquire_owned().ok()?;
        Some(EvaluationSlots { _slot: InFlight::new(self.metrics.clone(), permit, false) })
    }

    /// Events between two periodic checkpoints (`serve --checkpoint-every`; 0: none).
    pub(super) fn checkpoint_every(&self) -> u64 {
        self.sequencers.scheduling.checkpoint_every
    }

    /// Threads a verify may add to its own (`serve --verify-helpers`).
    pub(crate) fn verify_helpers(&self) -> usize {
        self.sequencers.scheduling.verify_helpers
    }
}

/// A turn's evaluation slot. The turn gives it back once its evaluations are done, before its
/// last group's commit: while that commits (and the turn's thread waits for it, so that the
/// operator's next turn sees it committed), another operator's turn evaluates in the slot. An
/// event the commit sends back to be evaluated again (a guard: with one writer per operator the
/// store never finds what it read changed) takes a slot again first.
pub(super) struct TurnSlot {
    threads: Arc<Semaphore>,
    metrics: Arc<Metrics>,
    held: Option<InFlight>,
}

impl TurnSlot {
    /// Gives the slot back: the turn evaluates nothing more unless it takes one again.
    pub(super) fn release(&mut self) {
        self.held = None;
    }

    /// Holds a slot, waiting for one if the turn gave its own back. On the turn's blocking
    /// thread, so it may block.
    pub(super) fn hold(&mut self) {
        if self.held.is_none() {
            let permit = tokio::runtime::Handle::current()
                .block_on(self.threads.clone().acquire_owned())
                .expect("the semaphore is never closed");
            self.held = Some(InFlight::new(self.metrics.clone(), permit, true));
        }
    }
}

/// A replay's slot, held for its run; counted as in flight.
pub struct EvaluationSlots {
    _slot: InFlight,
}

/// A slot of the sandbox held by an operator's turn (`live`) or a replay; counted in the gauges
/// while held.
struct InFlight {
    metrics: Arc<Metrics>,
    live: bool,
    _permit: OwnedSemaphorePermit,
}

impl InFlight {
    fn new(metrics: Arc<Metrics>, permit: OwnedSemaphorePermit, live: bool) -> Self {
        metrics.evaluations_in_flight.inc();
        if live {
            let now = metrics.evaluation_turns.inc() + 1;
            metrics.evaluation_turns_peak.inner().fetch_max(now, Ordering::Relaxed);
        }
        Self { metrics, live, _permit: permit }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.metrics.evaluations_in_flight.dec();
        if self.live {
            self.metrics.evaluation_turns.dec();
        }
    }
}
