//! The thread that writes periodic checkpoints, off the operators' turns.
//!
//! Why: a periodic checkpoint (`serve --checkpoint-every N`) holds an operator's state as it
//! stands at a position of its ledger, so it must be taken in the operator's turn; but encoding,
//! hashing and storing it, and bringing the months' index up to date, need not be. The turn
//! only takes what changed since the last one ([`Store::capture_periodic_checkpoint`]: a swap of
//! the store's notes, whatever the state's size) and hands it here; its next events go on
//! meanwhile. One thread writes every operator's, in the order they were taken, so that each is
//! chained to the one before it ([`crate::store::CheckpointWritten`]).
//!
//! A checkpoint is derived data: one that fails to be written is logged, and the next is taken
//! from the whole state. While [`MAX_QUEUED`] captures wait for the writer, a turn takes none:
//! its operator's notes go on growing (within their bounds) and the next turn tries again, so
//! the memory held by captures is bounded however many operators reach a checkpoint at once.
//! A stopping host waits for the queue to be written ([`Pipeline::periodic_checkpoints_written`]).

use std::sync::Arc;
use std::sync::mpsc;
use std::time::Instant;

use super::{Period, Pipeline, RESERVED_PREFIX};
use crate::metrics::{CheckpointLabels, Metrics};
use crate::store::{CheckpointCapture, CheckpointWritten, Store, StoreError};

/// Captures waiting for the writer past which turns take no more.
const MAX_QUEUED: usize = 64;

/// A checkpoint taken in a turn, to be written.
struct Captured {
    operator: String,
    seq: u64,
    capture: CheckpointCapture,
    /// When the turn took it, and how long that took.
    taken: Instant,
    in_turn: std::time::Duration,
}

/// The handle turns hand captured checkpoints to; the thread ends with the last handle.
#[derive(Clone)]
pub(super) struct CheckpointWriter {
    captured: mpsc::Sender<Captured>,
}

impl CheckpointWriter {
    pub(super) fn start(store: Arc<Store>, metrics: Arc<Metrics>) -> Self {
        let (captured, queue) = mpsc::channel::<Captured>();
        std::thread::Builder::new()
            .name("checkpoint-writer".into())
            .spawn(move || {
                for captured in queue {
                    write(&store, &metrics, captured);
                }
            })
            .expect("the checkpoint writer thread starts");
        Self { captured }
    }
}

fn write(store: &Store, metrics: &Metrics, Captured { operator, seq, capture, taken, in_turn }: Captured) {
    let started = Instant::now();
    let written = store.write_periodic_checkpoint(&operator, seq, capture).and_then(|written| {
        if written != CheckpointWritten::Skipped {
            let month_of = |at| Period::containing(at).map(|period| period.id);
            store.index_months(&operator, seq - 1, month_of, |id| id.starts_with(RESERVED_PREFIX))?;
        }
        Ok::<_, StoreError>(written)
    });
    let kind = match written {
        Ok(CheckpointWritten::Chained(bytes)) => {
            tracing::debug!(%operator, seq, bytes, ?in_turn, waited = ?started - taken, took = ?started.elapsed(), "periodic checkpoint, chained");
            "chained"
        }
        Ok(CheckpointWritten::Whole(bytes)) => {
            tracing::debug!(%operator, seq, bytes, ?in_turn, waited = ?started - taken, took = ?started.elapsed(), "periodic checkpoint, whole");
            "whole"
        }
        Ok(CheckpointWritten::Skipped) => {
            tracing::info!(%operator, seq, "a periodic checkpoint was not stored: the one it chains to is not the latest; the next is taken whole");
            "skipped"
        }
        Err(error) => {
            tracing::warn!(%operator, seq, %error, "the periodic checkpoint was not stored; replays start from an earlier one");
            "failed"
        }
    };
    metrics.periodic_checkpoints.get_or_create(&CheckpointLabels { operator, kind: kind.into() }).inc();
    metrics.checkpoint_write_seconds.observe(started.elapsed().as_secs_f64());
}

impl Pipeline {
    /// After a turn's commits: a periodic checkpoint if `every` events or more committed since
    /// the operator's latest one (`serve --checkpoint-every`). Taken in the operator's turn, so
    /// it holds the state just before the next position, and written by the writer thread. A
    /// failure is logged, not the turn's: a checkpoint is derived data.
    pub(crate) fn checkpoint_if_due(&self, operator: &str, every: u64) {
        let store = self.store();
        if every == 0 || store.periodic_checkpoints_pending() >= MAX_QUEUED {
            return;
        }
        let taken = Instant::now();
        let captured = (|| -> Result<Option<Captured>, StoreError> {
            let seq = store.last_sequence(operator)? + 1;
            if !store.periodic_checkpoint_due(operator, seq, every)? {
                return Ok(None);
            }
            let capture = store.capture_periodic_checkpoint(operator, seq)?;
            Ok(Some(Captured { operator: operator.to_owned(), seq, capture, taken, in_turn: taken.elapsed() }))
        })();
        match captured {
            Ok(None) => {}
            Ok(Some(captured)) => {
                self.metrics.checkpoint_capture_seconds.observe(captured.in_turn.as_secs_f64());
                if let Err(mpsc::SendError(lost)) = self.checkpoint_writer.captured.send(captured) {
                    // The writer thread stopped (a panic): written here, so that nothing waits.
                    store.write_periodic_checkpoint(&lost.operator, lost.seq, lost.capture).ok();
                }
            }
            Err(error) => {
                tracing::warn!(%operator, %error, "the periodic checkpoint was not taken; replays start from an earlier one")
            }
        }
    }

    /// Waits, up to `within`, for the periodic checkpoints taken to be written (a stopping
    /// host); whether they all were.
    pub fn periodic_checkpoints_written(&self, within: std::time::Duration) -> bool {
        self.store().periodic_checkpoints_written(within)
    }
}
