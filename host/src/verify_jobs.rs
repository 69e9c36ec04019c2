//! A full verify as a job (`POST /v1/operators/{op}/verify-jobs`): it runs in the background, on
//! a blocking thread, in a replay slot ([`Pipeline::replay_slots`]), never in the operator's
//! event path; `GET .../verify-jobs/{job}` shows how far it has gone and, at the end, the report
//! the synchronous `POST .../verify` gives.
//!
//! Why a job: a verify replays the whole ledger, minutes at millions of events, longer than a
//! client or a proxy waits for an answer. Its resume points ([`crate::verify`]) are stored with
//! the job and flushed, so a host restarted mid-job (even SIGKILLed) goes on from the last one
//! when it starts, not from event 1. One job per operator at a time: a second one while one runs
//! is refused, naming the running one.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use serde::{Deserialize, Serialize};

use crate::event::now_ms;
use crate::pipeline::{IngestError, Pipeline};
use crate::replay::VerifyReport;
use crate::store::StoreError;
use crate::store::records::OperatorRecord;
use crate::verify::{VerifyObserver, VerifyProgress};

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum VerifyJobStatus {
    Running,
    Done,
    /// The replay could not go on (the ledger could not be read, a total overflowed): `error`.
    Failed,
}

/// Where a job starts replaying.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum VerifyStart {
    /// From the ledger's first event: everything is checked, in time proportional to history.
    #[default]
    Ledger,
    /// From the last resume point of the operator's previous job, if it is done: what arrived
    /// since is replayed from the latest checkpoint that job confirmed, and what came before is
    /// reported as that job found it, not checked again. From the first event if there is no
    /// such job, or its checkpoint no longer reads back as it did.
    LastVerified,
}

/// An operator's latest verify job, as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VerifyJob {
    pub id: String,
    pub operator: String,
    pub status: VerifyJobStatus,
    pub started_at: i64,
    pub updated_at: i64,
    /// The ledger's last sequence number when the job started: it verifies up to there.
    pub upto: u64,
    /// Its latest resume point: where a restart goes on from while `Running`, and where a
    /// next job started with [`VerifyStart::LastVerified`] goes on from once `Done`.
    pub progress: Option<VerifyProgress>,
    /// Each ledger position a restarted host resumed the job from.
    pub resumed_from: Vec<u64>,
    pub report: Option<VerifyReport>,
    pub error: Option<String>,
}

/// How far a running job has gone, in memory (the store has its latest resume point).
struct Live {
    id: String,
    next: AtomicU64,
    replayed: AtomicU64,
    /// The position the latest resume point goes on from, once it is flushed (0: none): the
    /// stored record has it a moment earlier, before the flush has made it durable.
    saved: AtomicU64,
}

/// A job as its status route shows it.
pub struct JobStatus {
    pub job: VerifyJob,
    /// The next position to verify, and the events replayed so far.
    pub next: u64,
    pub replayed: u64,
    /// The entries up to here are verified and their resume point is durable (0: none).
    pub saved_through: u64,
}

/// The jobs running in this process, by operator.
fn running() -> &'static Mutex<HashMap<String, Arc<Live>>> {
    static RUNNING: OnceLock<Mutex<HashMap<String, Arc<Live>>>> = OnceLock::new();
    RUNNING.get_or_init(Mutex::default)
}

/// Set once the host stops: a running job ends at its next event, still `running` in the
/// store with its last flushed resume point, and goes on from there at the next start.
static STOPPING: AtomicBool = AtomicBool::new(false);

/// Stops the running jobs, for a host that is stopping, and waits up to `within` for them to
/// end. Why: a job's thread waits for flushes, and a runtime shut down under it would leave it
/// (and the process, which waits for its blocking threads) waiting for ever.
pub async fn stop_all(within: std::time::Duration) {
    STOPPING.store(true, Ordering::SeqCst);
    let deadline = tokio::time::Instant::now() + within;
    while !running().lock().expect("verify jobs lock").is_empty() {
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!("verify jobs still running at shutdown: they go on at the next start");
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A job's replay ended because the host is stopping.
fn stopping() -> IngestError {
    IngestError::Internal("the host is stopping".into())
}

/// Why a job was not started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("a verify job is running for this operator already: {0}")]
    Running(String),
    #[error(transparent)]
    Storage(#[from] StoreError),
}

/// Starts a verify job of the operator's ledger as it stands now, from `start`.
pub fn start(pipeline: &Pipeline, operator: OperatorRecord, start: VerifyStart) -> Result<VerifyJob, StartError> {
    let mut jobs = running().lock().expect("verify jobs lock");
    if let Some(live) = jobs.get(&operator.id) {
        return Err(StartError::Running(live.id.clone()));
    }
    let upto = pipeline.store().last_sequence(&operator.id)?;
    let progress = match start {
        VerifyStart::Ledger => None,
        VerifyStart::LastVerified => pipeline
            .store()
            .verify_job::<VerifyJob>(&operator.id)?
            .filter(|job| job.status == VerifyJobStatus::Done)
            .and_then(|job| job.progress)
            .map(|progress| progress.continued(upto)),
    };
    let from = progress.as_ref().map_or(1, |progress| progress.next);
    let now = now_ms();
    let job = VerifyJob {
        id: crate::secrets::random_text()[..16].to_owned(),
        operator: operator.id.clone(),
        status: VerifyJobStatus::Running,
        started_at: now,
        updated_at: now,
        upto,
        progress,
        resumed_from: Vec::new(),
        report: None,
        error: None,
    };
    pipeline.store().put_verify_job(&operator.id, &job)?;
    let saved = job.progress.as_ref().map_or(0, |progress| progress.next);
    let live = Arc::new(Live {
        id: job.id.clone(),
        next: AtomicU64::new(from),
        replayed: AtomicU64::new(0),
        saved: AtomicU64::new(saved),
    });
    jobs.insert(operator.id.clone(), live.clone());
    drop(jobs);
    spawn(pipeline.clone(), operator, job.clone(), live);
    Ok(job)
}

/// At start-up: goes on with every job a previous run of the host left running, from its
/// latest resume point.
pub fn resume_all(pipeline: &Pipeline) -> Result<(), StoreError> {
    for mut job in pipeline.store().verify_jobs::<VerifyJob>()? {
        if job.status != VerifyJobStatus::Running {
            continue;
        }
        let Some(operator) = pipeline.store().operator(&job.operator)? else { continue };
        let from = job.progress.as_ref().map_or(1, |progress| progress.next);
        job.resumed_from.push(from);
        pipeline.store().put_verify_job(&job.operator, &job)?;
        tracing::info!(operator = %job.operator, job = %job.id, from, upto = job.upto, "resuming a verify job");
        let live = Arc::new(Live {
            id: job.id.clone(),
            next: AtomicU64::new(from),
            replayed: AtomicU64::new(
                job.progress.as_ref().map_or(0, |progress| progress.report.events_replayed as u64),
            ),
            saved: AtomicU64::new(job.progress.as_ref().map_or(0, |progress| progress.next)),
        });
        running().lock().expect("verify jobs lock").insert(job.operator.clone(), live.clone());
        spawn(pipeline.clone(), operator, job, live);
    }
    Ok(())
}

/// What names the operator's latest job, whatever its id (ids are 16 characters).
pub const LATEST: &str = "latest";

/// The operator's job `id` (or [`LATEST`]) as it stands: the stored record, with a running
/// job's position in this process. `None` if it is not the operator's latest job.
pub fn status(pipeline: &Pipeline, operator: &str, id: &str) -> Result<Option<JobStatus>, StoreError> {
    let latest = pipeline.store().verify_job::<VerifyJob>(operator)?;
    let Some(job) = latest.filter(|job| job.id == id || id == LATEST) else {
        return Ok(None);
    };
    let (next, replayed) = match (&job.report, &job.progress) {
        (Some(report), _) => (job.upto + 1, report.events_replayed as u64),
        (None, Some(progress)) => (progress.next, progress.report.events_replayed as u64),
        (None, None) => (1, 0),
    };
    let saved = job.progress.as_ref().map_or(0, |progress| progress.next);
    let live = running().lock().expect("verify jobs lock").get(operator).filter(|live| live.id == job.id).cloned();
    let (next, replayed, saved) = match live {
        Some(live) => (
            live.next.load(Ordering::Relaxed).max(next),
            live.replayed.load(Ordering::Relaxed).max(replayed),
            live.saved.load(Ordering::Acquire),
        ),
        None => (next, replayed, saved),
    };
    Ok(Some(JobStatus { job, next, replayed, saved_through: saved.saturating_sub(1) }))
}

/// Saves each resume point with the job, flushed before the replay goes on.
struct Saver<'a> {
    pipeline: &'a Pipeline,
    job: VerifyJob,
    live: &'a Live,
}

impl VerifyObserver for Saver<'_> {
    fn replayed(&mut self, next: u64, events_replayed: usize) -> Result<(), IngestError> {
        self.live.next.store(next, Ordering::Relaxed);
        self.live.replayed.store(events_replayed as u64, Ordering::Relaxed);
        if STOPPING.load(Ordering::Relaxed) { Err(stopping()) } else { Ok(()) }
    }

    fn resume_point(&mut self, progress: &VerifyProgress) -> Result<(), IngestError> {
        self.job.progress = Some(progress.clone());
        self.job.updated_at = now_ms();
        self.pipeline.store().put_verify_job(&self.job.operator, &self.job)?;
        tokio::runtime::Handle::current()
            .block_on(self.pipeline.make_durable())
            .map_err(|error| IngestError::Internal(format!("flushing a verify job's progress: {error}")))?;
        self.live.saved.store(progress.next, Ordering::Release);
        Ok(())
    }
}

fn spawn(pipeline: Pipeline, operator: OperatorRecord, job: VerifyJob, live: Arc<Live>) {
    tokio::spawn(async move {
        let slots = pipeline.replay_slots().await;
        let runner = pipeline.clone();
        let (id, key) = (job.id.clone(), operator.id.clone());
        let ran = tokio::task::spawn_blocking(move || {
            let _slots = slots;
            let progress = job.progress.clone().unwrap_or_else(|| VerifyProgress::new(job.upto));
            let mut saver = Saver { pipeline: &runner, job, live: &live };
            let result = runner.verify_from(&operator, progress, &mut saver);
            (saver.job, result)
        })
        .await;
        let (job, result) = match ran {
            // Left as stored, `running` from its last resume point: the next start resumes it.
            Ok((_, Err(_))) if STOPPING.load(Ordering::SeqCst) => {
                tracing::info!(operator = %key, job = %id, "a verify job stopped with the host");
                running().lock().expect("verify jobs lock").remove(&key);
                return;
            }
            Ok((job, result)) => (Some(job), result.map_err(|error| error.to_string())),
            Err(error) => (None, Err(format!("the job's thread ended: {error}"))),
        };
        let finished = (|| -> Result<(), StoreError> {
            let stored = || pipeline.store().verify_job::<VerifyJob>(&key);
            let Some(mut job) = job.or(stored()?.filter(|job| job.id == id)) else { return Ok(()) };
            match result {
                // The last resume point stays: a next job can go on from it.
                Ok(report) => {
                    job.status = VerifyJobStatus::Done;
                    job.report = Some(report);
                }
                Err(error) => {
                    tracing::warn!(operator = %key, job = %id, %error, "a verify job failed");
                    job.status = VerifyJobStatus::Failed;
                    job.error = Some(error);
                    job.progress = None;
                }
            }
            job.updated_at = now_ms();
            pipeline.store().put_verify_job(&key, &job)
        })();
        if let Err(error) = finished {
            tracing::error!(operator = %key, job = %id, %error, "a verify job's result was not stored");
        }
        running().lock().expect("verify jobs lock").remove(&key);
    });
}
