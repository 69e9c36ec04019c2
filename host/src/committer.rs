//! Group commit: many evaluated events, one sled transaction.
//!
//! sled runs every transaction under one process-wide write lock, and once any transaction has
//! run, every read takes that lock's read side. A transaction per event therefore made commits
//! run one at a time (about 280 us each under load, most of it waiting) and made plugin state
//! reads wait behind them. One thread commits instead: it takes every commit that is waiting,
//! applies them in one transaction ([`Store::commit_events`]), and answers each. Under load,
//! the lock is taken once per group instead of once per event; alone, an event pays two
//! hand-offs between threads (the request and the answer).
//!
//! This is the seam where events are committed: the evaluations ahead of it do not know
//! whether their commit went alone or with others.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Instant;

use prometheus_client::metrics::histogram::Histogram;
use tokio::sync::watch;

use crate::store::{CommitOutcome, EventCommit, HeldBack, Store, StoreError};

/// The most commits one transaction takes: bounds how long sled's lock is held at once, and so
/// how long state reads wait behind a group.
pub const MAX_GROUP: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error(transparent)]
    Storage(#[from] StoreError),
    #[error("the committer thread stopped")]
    Stopped,
}

/// Commits that go into one transaction in the order given: one event, or a batch's events
/// evaluated together.
struct Request {
    commits: Vec<EventCommit>,
    answer: mpsc::SyncSender<Vec<Result<CommitOutcome, StoreError>>>,
}

/// The handle evaluations commit through; clones share the one committer thread, which ends
/// when the last handle is dropped.
#[derive(Clone)]
pub struct Committer {
    requests: mpsc::Sender<Request>,
    /// Set, with the reason, if the thread stopped while handles remained: a bug (a panic), after
    /// which nothing can commit in this process.
    stopped: watch::Receiver<Option<String>>,
}

/// What the committer reports about its groups.
pub struct CommitMetrics {
    /// Time of one group's transaction.
    pub group_seconds: Histogram,
    /// Events in one group.
    pub group_events: Histogram,
}

impl Committer {
    pub fn start(store: Arc<Store>, metrics: CommitMetrics) -> Self {
        let (requests, queue) = mpsc::channel();
        let (stop, stopped) = watch::channel(None);
        std::thread::Builder::new()
            .name("ledger-committer".into())
            .spawn(move || {
                // The requests of the group in hand are dropped with the unwinding, so their
                // callers learn the committer stopped: whatever of the group was written, none of
                // it was acknowledged, and the host stops before anything else can commit.
                if let Err(panic) = std::panic::catch_unwind(AssertUnwindSafe(|| commit_loop(&store, &queue, &metrics)))
                {
                    let reason = panic
                        .downcast_ref::<&str>()
                        .map(|text| text.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "a panic".into());
                    tracing::error!(%reason, "the committer thread panicked");
                    stop.send_replace(Some(reason));
                }
            })
            .expect("the committer thread starts");
        Self { requests, stopped }
    }

    /// Resolves if the committer thread has stopped for good, with why.
    pub async fn stopped(&self) -> String {
        let mut stopped = self.stopped.clone();
        match stopped.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone().unwrap_or_default(),
            // The thread ended without saying why: only a panic that unwound past the report.
            Err(_) => "the committer thread ended".into(),
        }
    }

    /// Commits one event, with whatever else is waiting; blocks until its transaction is done
    /// (not flushed: see [`crate::store::Durability`]). Call it from a blocking thread.
    pub fn commit(&self, commit: EventCommit) -> Result<CommitOutcome, CommitError> {
        let mut outcomes = self.commit_in_order(vec![commit])?;
        Ok(outcomes.pop().expect("one outcome per commit")?)
    }

    /// Commits events in the order given, in one transaction (with whatever else is waiting),
    /// and answers each. Within it, once one of a customer's events is not committed, the
    /// customer's later events are not either ([`Store::commit_events`]).
    pub fn commit_in_order(
        &self,
        commits: Vec<EventCommit>,
    ) -> Result<Vec<Result<CommitOutcome, StoreError>>, CommitError> {
        let (answer, answered) = mpsc::sync_channel(1);
        self.requests.send(Request { commits, answer }).map_err(|_| CommitError::Stopped)?;
        answered.recv().map_err(|_| CommitError::Stopped)
    }
}

fn commit_loop(store: &Store, queue: &mpsc::Receiver<Request>, metrics: &CommitMetrics) {
    let mut commits: Vec<EventCommit> = Vec::with_capacity(MAX_GROUP);
    let mut answers = Vec::new();
    // Blocks only while nothing is waiting; ends when every handle is gone.
    while let Ok(first) = queue.recv() {
        let mut next = Some(first);
        // A request is never split: a batch's events stay in one transaction, in their order.
        while let Some(request) = next.take() {
            answers.push((request.answer, request.commits.len()));
            commits.extend(request.commits);
            if commits.len() < MAX_GROUP {
                next = queue.try_recv().ok();
            }
        }
        let started = Instant::now();
        let mut outcomes = commit_group(store, &commits).into_iter();
        metrics.group_seconds.observe(started.elapsed().as_secs_f64());
        metrics.group_events.observe(commits.len() as f64);
        commits.clear();
        for (answer, count) in answers.drain(..) {
            // A caller that gave up waiting has nothing to be told.
            let _ = answer.send(outcomes.by_ref().take(count).collect());
        }
    }
}

/// One transaction for the group. If a stored record in it cannot be read, the transaction is
/// aborted, nothing of it written, and each commit is tried alone, so that the unreadable record
/// fails its own event and not its neighbours'. A storage error fails the whole group: sled may
/// have applied part of it in memory, and trying again alone would find it half there.
fn commit_group(store: &Store, commits: &[EventCommit]) -> Vec<Result<CommitOutcome, StoreError>> {
    match store.commit_events(commits) {
        Ok(outcomes) => outcomes.into_iter().map(Ok).collect(),
        Err(error @ StoreError::Decode { .. }) if commits.len() > 1 => {
            tracing::warn!(%error, events = commits.len(), "a group commit failed; committing its events one by one");
            let mut held_back = HeldBack::default();
            commits
                .iter()
                .map(|commit| {
                    if held_back.holds(commit) {
                        return Ok(CommitOutcome::Stale);
                    }
                    let outcome = store
                        .commit_events(std::slice::from_ref(commit))
                        .map(|mut outcomes| outcomes.pop().expect("one outcome per commit"));
                    held_back.note(commit, outcome.as_ref().ok());
                    outcome
                })
                .collect()
        }
        Err(error) => {
            tracing::error!(%error, events = commits.len(), "a group commit failed");
            commits.iter().map(|_| Err(error.clone())).collect()
        }
    }
}
