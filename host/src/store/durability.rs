//! Group commit: many committed events, one flush.
//!
//! sled makes writes durable only on a flush, and a flush costs about a millisecond of disk
//! time. A request that committed its events takes a ticket and waits; one background task
//! flushes, and each flush covers every ticket taken before it started. Under load, hundreds of
//! requests share a flush instead of queueing for one each.
//!
//! A failed flush is final for this process: sled keeps the first write error and returns it
//! from every later write and flush, even once the disk has room again. It recovers from its
//! log when opened anew, so the host stops (see [`Durability::failed`]) and its supervisor
//! starts it again.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::metrics::histogram::Histogram;
use tokio::sync::{Notify, watch};

#[derive(Debug, Clone, thiserror::Error)]
#[error("the ledger could not be flushed to disk: {0}")]
pub struct DurabilityError(String);

#[derive(Clone)]
pub struct Durability {
    shared: Arc<Shared>,
}

struct Shared {
    tickets: AtomicU64,
    wake: Notify,
    flushed: watch::Sender<Flushed>,
}

#[derive(Clone, Default)]
struct Flushed {
    /// Every ticket up to this one is on disk.
    through: u64,
    /// The last flush that failed, and why: tickets it should have covered fail with it.
    failure: Option<(u64, String)>,
    /// The flush loop has ended: no ticket not flushed yet ever will be.
    stopped: bool,
}

impl Durability {
    pub(super) fn start(db: sled::Db, flush_seconds: Histogram) -> Self {
        let shared = Arc::new(Shared {
            tickets: AtomicU64::new(0),
            wake: Notify::new(),
            flushed: watch::Sender::new(Flushed::default()),
        });
        tokio::spawn(flush_loop(db, shared.clone(), flush_seconds));
        Self { shared }
    }

    /// Whether the last flush failed: the ledger cannot acknowledge anything until one succeeds.
    pub fn is_failing(&self) -> bool {
        let state = self.shared.flushed.borrow();
        state.failure.as_ref().is_some_and(|(upto, _)| *upto > state.through)
    }

    /// Resolves with the error of the first failed flush. The ledger cannot write again in
    /// this process after it; the host stops, acknowledging nothing more.
    pub async fn failed(&self) -> DurabilityError {
        let mut flushed = self.shared.flushed.subscribe();
        match flushed.wait_for(|state| state.failure.is_some()).await {
            Ok(state) => DurabilityError(state.failure.as_ref().map(|(_, error)| error.clone()).unwrap_or_default()),
            Err(_) => DurabilityError("the flush task has stopped".into()),
        }
    }

    /// Returns once everything this task committed before the call is on disk.
    pub async fn wait(&self) -> Result<(), DurabilityError> {
        let ticket = self.shared.tickets.fetch_add(1, Ordering::SeqCst) + 1;
        self.shared.wake.notify_one();
        let mut flushed = self.shared.flushed.subscribe();
        let state = flushed
            .wait_for(|state| {
                state.through >= ticket
                    || state.stopped
                    || state.failure.as_ref().is_some_and(|(upto, _)| *upto >= ticket)
            })
            .await
            .map_err(|_| DurabilityError("the flush task has stopped".into()))?
            .clone();
        match state.failure {
            _ if state.through >= ticket => Ok(()),
            Some((upto, error)) if upto >= ticket => Err(DurabilityError(error)),
            _ => Err(DurabilityError("the flush task has stopped".into())),
        }
    }
}

/// How long the loop waits idle before a flush of its own: a write that failed outside a flush
/// (a commit that found sled's write error) is noticed within this.
const IDLE_FLUSH: std::time::Duration = std::time::Duration::from_secs(1);

/// Tells the waiters when the flush loop is gone (dropped with the runtime at shutdown), so
/// that a thread waiting for a flush gets an error instead of waiting for ever.
struct LoopGone(Arc<Shared>);

impl Drop for LoopGone {
    fn drop(&mut self) {
        self.0.flushed.send_modify(|state| state.stopped = true);
    }
}

async fn flush_loop(db: sled::Db, shared: Arc<Shared>, flush_seconds: Histogram) {
    let _gone = LoopGone(shared.clone());
    let mut through = 0;
    loop {
        if shared.tickets.load(Ordering::SeqCst) == through {
            let _ = tokio::time::timeout(IDLE_FLUSH, shared.wake.notified()).await;
        }
        // Tickets are taken after their commits: a flush that starts now covers them all.
        let target = shared.tickets.load(Ordering::SeqCst);
        let started = std::time::Instant::now();
        let flushed = db.flush_async().await;
        // The metric is of flushes that acknowledge something, not of idle checks.
        if target != through {
            flush_seconds.observe(started.elapsed().as_secs_f64());
        }
        match flushed {
            Ok(_) => {
                through = target;
                shared.flushed.send_modify(|state| state.through = target);
            }
            Err(error) => {
                tracing::error!(%error, "flushing the ledger failed; answering 503 and stopping");
                through = target;
                shared.flushed.send_modify(|state| state.failure = Some((target, error.to_string())));
            }
        }
    }
}
