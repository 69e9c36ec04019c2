//! An import job's side of an import: which run of which node holds it, the claim that makes
//! one run hold it, and what its status route (`GET /v1/operators/{op}/imports/{job}`) shows.
//!
//! Why a claim: in a cluster each node looks for a running job in its own view, so two starts of
//! one job through two nodes at the same moment both found none. The claim is an ordered
//! command, decided in the operator's turn from the stored job, so of two claims the log orders
//! the second is refused and names the first's node.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock};

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use serde::Serialize;

use super::{ApiError, AppState, auth};
use crate::event::{format_time, now_ms};
use crate::pipeline::Command;
use crate::store::imports::{ImportJob, ImportState, LineProblem, node_of};

/// This run of the host, after its node's name in a cluster (`node/run`; a single host has no
/// name). A job recorded `running` by an earlier run of the same node was cut off by a restart;
/// one recorded by another node is running there while its progress keeps coming.
pub(super) fn this_run(state: &AppState) -> String {
    static RUN: OnceLock<String> = OnceLock::new();
    let run = RUN.get_or_init(crate::secrets::random_text);
    match &state.cluster {
        Some(cluster) => format!("{}/{run}", cluster.node()),
        None => run.clone(),
    }
}

/// Whether `job` is running on another node of the cluster now.
pub(super) fn running_elsewhere(state: &AppState, job: &ImportJob) -> bool {
    job.running_elsewhere(&this_run(state), now_ms())
}

/// The refusal of a job running on another node.
pub(super) fn running_on(id: &str, job: &ImportJob) -> ApiError {
    let message = format!(
        "import job {id:?} is running on node {}; read its status, and send the file again with this job once it has stopped",
        node_of(&job.run)
    );
    ApiError::new(StatusCode::CONFLICT, "import_running", message)
}

/// The jobs running in this process: one request per job at a time.
pub(super) fn running() -> &'static Mutex<HashSet<(String, String)>> {
    static RUNNING: OnceLock<Mutex<HashSet<(String, String)>>> = OnceLock::new();
    RUNNING.get_or_init(Mutex::default)
}

pub(super) struct RunningGuard(pub(super) (String, String));

impl Drop for RunningGuard {
    fn drop(&mut self) {
        running().lock().expect("running imports lock").remove(&self.0);
    }
}

/// An import job, as its routes answer it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct JobView {
    pub job: String,
    /// `ndjson`, `csv` or `export`.
    pub format: String,
    pub state: ImportState,
    /// The line this run started at.
    pub from_line: u64,
    /// The last line read and committed.
    pub lines_read: u64,
    /// Events stored now, stored before (sent again: nothing changed), and stored as failed
    /// (the plugin did not finish; `retry-failed` runs them again).
    pub accepted: u64,
    pub duplicate: u64,
    pub failed: u64,
    /// The line the import stopped at, and why.
    pub stopped_at: Option<LineProblem>,
    /// The query that continues a stopped import at its line.
    pub resume: Option<String>,
    /// RFC 3339.
    pub started_at: String,
    pub updated_at: String,
}

pub(super) fn view(state: &AppState, job: &ImportJob) -> JobView {
    let mut job = job.clone();
    // A job recorded running that no request runs was cut off: by a restart of the host, or
    // by its client going away (the handler is dropped with the connection).
    let key = (job.operator.clone(), job.id.clone());
    let ours = job.run == this_run(state);
    if job.state == ImportState::Running
        && !running_elsewhere(state, &job)
        && (!ours || !running().lock().expect("running imports lock").contains(&key))
    {
        let cause = if ours { "the request that sent it ended" } else { "the host running it stopped" };
        job.state = ImportState::Stopped;
        job.stopped_at = Some(LineProblem {
            line: job.lines_read + 1,
            field: String::new(),
            problem: format!("{cause} during the import; send the file again with this job to continue"),
        });
    }
    JobView {
        resume: (job.state == ImportState::Stopped).then(|| format!("?format={}&job={}", job.format, job.id)),
        job: job.id,
        format: job.format,
        state: job.state,
        from_line: job.from_line,
        lines_read: job.lines_read,
        accepted: job.accepted,
        duplicate: job.duplicate,
        failed: job.failed,
        stopped_at: job.stopped_at,
        started_at: format_time(job.started_at),
        updated_at: format_time(job.updated_at),
    }
}

/// `GET /v1/operators/{op}/imports/{job}`: how far the job has gone.
#[utoipa::path(
    get,
    path = "/v1/operators/{op}/imports/{job}",
    tag = "imports",
    params(("op" = String, Path, description = "operator id"), ("job" = String, Path, description = "import job id")),
    responses(
        (status = 200, description = "the job's status", body = JobView),
        (status = 401, description = "not the operator's key nor the admin token"),
        (status = 404, description = "no such job"),
    ),
    security(("operator_key" = []), ("admin_token" = []))
)]
pub async fn status(
    State(state): State<Arc<AppState>>,
    Path((op, job)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<JobView>, ApiError> {
    let operator = auth::operator(&state, &headers, &op)?;
    let job = state
        .pipeline
        .store()
        .import_job(&operator.id, &job)?
        .ok_or_else(|| ApiError::not_found(format!("operator {op:?} has no import job {job:?}")))?;
    Ok(Json(view(&state, &job)))
}

/// Records `job` running in this run, in the operator's order: refused (409) if another
/// node's run of it got there first. The check before it read this node's view; two starts
/// through two nodes at the same moment can both pass it, but only one claim is ordered
/// before the other's.
pub(super) async fn claim(state: &AppState, job: &mut ImportJob) -> Result<(), ApiError> {
    job.updated_at = now_ms();
    if in_order(state, job, Command::StartImportJob { job: job.clone() }).await? {
        return Ok(());
    }
    // The claim that won is in the ledger before this refusal; this node's view applies it
    // to name its node. The refusal can come (from the entry as it was written) a moment
    // before the stream serves that entry, so the view looks a few times.
    let store = state.pipeline.store();
    for attempt in 0..20 {
        if let Some(running) =
            store.import_job(&job.operator, &job.id)?.filter(|stored| running_elsewhere(state, stored))
        {
            return Err(running_on(&job.id, &running));
        }
        let Some(cluster) = &state.cluster else { break };
        if attempt > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        if let Err(error) = cluster.apply_ledger_now(&job.operator).await {
            tracing::warn!(operator = %job.operator, %error, "the job that runs could not be read from the ledger");
            break;
        }
    }
    let message = format!("import job {:?} is running on another node", job.id);
    Err(ApiError::new(StatusCode::CONFLICT, "import_running", message))
}

/// Runs an import job's command in the operator's order (in a cluster, through its log, so
/// that every node's view has it); whether it was taken.
pub(super) async fn in_order(state: &AppState, job: &ImportJob, command: Command) -> Result<bool, ApiError> {
    let operator = state.pipeline.store().operator(&job.operator)?;
    let operator = operator.ok_or_else(|| ApiError::not_found(format!("no operator {:?}", job.operator)))?;
    let done = state.pipeline.command(&operator, command).await.map_err(super::events::ingest_error)?;
    done.changed().map_err(super::events::ingest_error)
}
