//! A verify's later stretches, evaluated ahead on the other cores.
//!
//! Why: a verify replays in ledger order, each event over the state the events before it left,
//! and a fresh instance per event (about 10 us) keeps one thread under 100,000 events/s
//! (BENCHMARKS.md). But where a stored checkpoint lies (before each month's settlements, and
//! every `serve --checkpoint-every` events), the state there is written down: the stretch from
//! it to the next checkpoint can be evaluated from it at once, on another core, while the verify
//! is still working through the stretches before.
//!
//! Why it changes nothing in the report: the verify takes a stretch's evaluations only when it
//! reaches the stretch's checkpoint and finds its own state equal to the stored one (it compares
//! every checkpoint anyway); each evaluation was then made over exactly the state the verify
//! would have made it over, by the same deterministic plugin version. Everything else of each
//! step (applying the writes, the months' books, the comparisons) the verify still does itself,
//! in order ([`Pipeline::replay_step_with`]). Where the checkpoint differs, the stretch's
//! evaluations are dropped and the verify evaluates it itself. A helper stops a stretch at a
//! late event that restated closed months (the restatement needs the books as the verify has
//! them there); the verify evaluates from that event on.
//!
//! What it holds: one helper thread per other core (`serve --verify-helpers`), each with a
//! replay slot of the sandbox's, taken only if free (without one the verify runs alone, as
//! before), and at most [`EVALUATIONS_AHEAD`] evaluations per stretch waiting to be taken.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};

use crate::pipeline::{Evaluated, IngestError, Pipeline};
use crate::sandbox::ScratchState;
use crate::store::records::{EventRecord, EventStatus, OperatorRecord};

/// Evaluations a helper makes ahead of the verify in one stretch before it waits for the
/// verify to take them: a bound on the memory a verify holds (a few hundred bytes each).
const EVALUATIONS_AHEAD: usize = 1 << 16;

/// Helpers start only if the stretches hold at least one in this many of the entries the
/// verify has left.
const MIN_SHARE_IN_STRETCHES: u64 = 4;

/// A stretch no one has taken, taken by the verify to evaluate itself, or by a helper.
const FREE: u8 = 0;
const VERIFY: u8 = 1;
const HELPER: u8 = 2;

/// What a helper sends for a stretch, in ledger order; the channel's end is the stretch's.
pub(crate) enum Ahead {
    /// The evaluation of the entry at this sequence number.
    Evaluated(u64, Box<Evaluated>),
    /// The helper evaluates no further in this stretch: a restated late event, or the stored
    /// checkpoint or the ledger could not be read (the verify meets the same and says so).
    Stopped,
}

/// One stretch: from a stored checkpoint's sequence number to the next one's.
struct Stretch {
    start: u64,
    /// Its last entry.
    last: u64,
    taken: AtomicU8,
    sender: Mutex<Option<SyncSender<Ahead>>>,
    receiver: Mutex<Option<Receiver<Ahead>>>,
}

struct Shared {
    pipeline: Pipeline,
    operator: OperatorRecord,
    stretches: Vec<Stretch>,
    /// Set when the verify is done: helpers take no more stretches.
    done: AtomicBool,
}

/// The helpers of one verify; dropping it stops and joins them.
pub(crate) struct Helpers {
    shared: Arc<Shared>,
    threads: Vec<std::thread::JoinHandle<()>>,
    /// The stretches the verify has entered.
    entered: usize,
}

impl Helpers {
    /// Starts helpers for the stretches that begin at `starts` (stored checkpoints' sequence
    /// numbers, ascending, past `first`, where the verify starts) and end at `upto`: as many as
    /// `serve --verify-helpers` (one per core but the verify's), each with a free replay slot.
    pub(crate) fn start(pipeline: &Pipeline, operator: &OperatorRecord, first: u64, starts: &[u64], upto: u64) -> Self {
        let stretches = starts
            .iter()
            .enumerate()
            .filter(|(_, start)| **start <= upto)
            .map(|(at, start)| {
                let (sender, receiver) = sync_channel(EVALUATIONS_AHEAD);
                Stretch {
                    start: *start,
                    last: starts.get(at + 1).map_or(upto, |next| (next - 1).min(upto)),
                    taken: AtomicU8::new(FREE),
                    sender: Mutex::new(Some(sender)),
                    receiver: Mutex::new(Some(receiver)),
                }
            })
            .collect();
        let shared = Arc::new(Shared {
            pipeline: pipeline.clone(),
            operator: operator.clone(),
            stretches,
            done: AtomicBool::new(false),
        });
        // Helpers only where the stretches hold a fair share of what is left to verify: months
        // closed one after another at the ledger's end give stretches of a few settlements,
        // which a helper evaluates in milliseconds while the verify works through the rest
        // alone (measured: no gain, and a cost we did not explain, BENCHMARKS.md).
        let from = starts.first().copied().unwrap_or(u64::MAX);
        let (in_stretches, left) = ((upto + 1).saturating_sub(from), (upto + 1).saturating_sub(first));
        let worth_it = in_stretches > 0 && in_stretches * MIN_SHARE_IN_STRETCHES >= left;
        let slots: Vec<_> = if worth_it {
            (0..pipeline.verify_helpers()).map_while(|_| pipeline.try_replay_slot()).collect()
        } else {
            Vec::new()
        };
        let helpers = slots.len();
        let mut threads = Vec::new();
        for slot in slots {
            let shared = shared.clone();
            let helping = move || {
                let _slot = slot;
                help(&shared, helpers);
            };
            match std::thread::Builder::new().name("verify-helper".into()).spawn(helping) {
                Ok(thread) => threads.push(thread),
                // Its stretches are taken by the other helpers, or by the verify.
                Err(error) => tracing::warn!(%error, "a verify helper was not started"),
            }
        }
        Self { shared, threads, entered: 0 }
    }

    /// The verify is at `seq`, having found its state equal to the stored checkpoint at
    /// `confirmed` (if any, at `seq` or just before it). `None` if it entered no new stretch;
    /// else the evaluations of the stretch it entered, if a helper took it and its checkpoint
    /// is the confirmed one. Every stretch the verify has entered is its own from then on: one
    /// no helper took is the verify's to evaluate, and a helper's whose checkpoint differed is
    /// dropped (the helper stops at its next evaluation).
    pub(crate) fn reached(&mut self, seq: u64, confirmed: Option<u64>) -> Option<Option<Receiver<Ahead>>> {
        let mut entered = None;
        while let Some(stretch) = self.shared.stretches.get(self.entered).filter(|stretch| stretch.start <= seq) {
            self.entered += 1;
            let taken = stretch.taken.compare_exchange(FREE, VERIFY, Ordering::AcqRel, Ordering::Acquire);
            let receiver = stretch.receiver.lock().expect("stretch lock").take();
            entered = Some(receiver.filter(|_| taken == Err(HELPER) && confirmed == Some(stretch.start)));
        }
        entered
    }
}

/// The evaluation a helper made of `record`, if the verify is in a helper's stretch and the
/// helper evaluated it; else the verify evaluates it, and the rest of the stretch, itself.
pub(crate) fn evaluated_ahead(ahead: &mut Option<Receiver<Ahead>>, record: &EventRecord) -> Option<Evaluated> {
    let receiver = ahead.as_ref()?;
    if record.status != EventStatus::Accepted || record.evaluation.is_none() {
        return None;
    }
    let evaluated = match receiver.recv() {
        Ok(Ahead::Evaluated(seq, evaluated)) if seq == record.seq && !record.restated => Some(*evaluated),
        _ => None,
    };
    if evaluated.is_none() {
        *ahead = None;
    }
    evaluated
}

impl Drop for Helpers {
    fn drop(&mut self) {
        self.shared.done.store(true, Ordering::Release);
        // A helper waiting for room in a stretch the verify will not read goes on once the
        // stretch's receiver is dropped.
        for stretch in &self.shared.stretches {
            drop(stretch.receiver.lock().expect("stretch lock").take());
        }
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// A helper: takes the next stretch that is neither taken nor the verify's turn, evaluates it,
/// until none is left. Turns go round: with `helpers` helpers, every `helpers + 1`-th stretch
/// is left to the verify, which evaluates it while the helpers evaluate the ones after (the
/// verify takes a helper's stretch in far less time than it takes to evaluate one).
fn help(shared: &Shared, helpers: usize) {
    for (at, stretch) in shared.stretches.iter().enumerate() {
        if shared.done.load(Ordering::Acquire) {
            return;
        }
        // The verify evaluates the stretch before the first of these itself: turn 0.
        if (at + 1) % (helpers + 1) == 0 {
            continue;
        }
        if stretch.taken.compare_exchange(FREE, HELPER, Ordering::AcqRel, Ordering::Acquire).is_err() {
            continue;
        }
        let Some(sender) = stretch.sender.lock().expect("stretch lock").take() else { continue };
        if let Err(error) = evaluate(shared, stretch, &sender) {
            tracing::debug!(%error, start = stretch.start, "a verify helper stopped its stretch; the verify evaluates the rest");
            let _ = sender.send(Ahead::Stopped);
        }
    }
}

/// Evaluates a stretch from its stored checkpoint, as the verify would over the same state.
/// `Ok` also when the verify stopped listening.
fn evaluate(shared: &Shared, stretch: &Stretch, sender: &SyncSender<Ahead>) -> Result<(), IngestError> {
    let (pipeline, operator) = (&shared.pipeline, &shared.operator);
    let Some(state) = pipeline.store().checkpoint_state(&operator.id, stretch.start)? else {
        let _ = sender.send(Ahead::Stopped);
        return Ok(());
    };
    let scratch = Arc::new(ScratchState::from_state(state));
    for record in pipeline.records_from(operator, stretch.start - 1, stretch.last) {
        let record = record?;
        if record.status == EventStatus::Accepted && record.restated {
            let _ = sender.send(Ahead::Stopped);
            return Ok(());
        }
        let Some(mut evaluated) = pipeline.replay_accepted(operator, &record, scratch.clone())? else { continue };
        if evaluated.failure.is_none() {
            scratch.apply(evaluated.state_writes.clone());
        }
        // What the verify does not read.
        evaluated.state_reads.clear();
        evaluated.record = None;
        if sender.send(Ahead::Evaluated(record.seq, Box::new(evaluated))).is_err()
            || shared.done.load(Ordering::Acquire)
        {
            return Ok(());
        }
    }
    Ok(())
}
