//! A full verify as a job (see `crate::verify_jobs`): `POST /v1/operators/{op}/verify-jobs`
//! answers 202 at once with the job's URL; `GET .../verify-jobs/{job}` shows how far it has
//! gone and, once done, the report `POST .../verify` gives in one request.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::operators::{durable, parse_json};
use super::{ApiError, AppState, auth, read_body};
use crate::event::format_time;
use crate::replay::VerifyReport;
use crate::verify_jobs::{self, JobStatus, StartError, VerifyJobStatus, VerifyStart};

/// A verify job, as its routes answer it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct VerifyJobView {
    pub job: String,
    /// Where to read it: `GET` this path.
    pub url: String,
    pub status: VerifyJobStatus,
    /// The ledger's last sequence number when the job started: it verifies the entries up to
    /// there, so `verified_through` reaches it at the end.
    pub upto: u64,
    /// Every ledger entry up to this sequence number is verified.
    pub verified_through: u64,
    /// Events replayed so far (accepted ones: `report.events_replayed` at the end).
    pub events_replayed: u64,
    /// The entries up to this position are verified and saved (0: none yet): where a restart of
    /// the host would go on from while `running`, and where a next job started with
    /// `"start": "last_verified"` goes on from once `done`.
    pub saved_through: u64,
    /// The ledger position the job replays from: 1, or, with `"start": "last_verified"`, the
    /// previous job's `saved_through + 1` (the entries before it as that job found them).
    pub verified_from: u64,
    /// Each ledger position a restarted host resumed the job from.
    pub resumed_from: Vec<u64>,
    /// Once `done`: what `POST /v1/operators/{op}/verify` answers.
    pub report: Option<VerifyReport>,
    /// Once `failed`: why.
    pub error: Option<String>,
    /// RFC 3339.
    pub started_at: String,
    pub updated_at: String,
}

fn url(operator: &str, id: &str) -> String {
    format!("/v1/operators/{operator}/verify-jobs/{id}")
}

fn view(JobStatus { job, next, replayed, saved_through }: JobStatus) -> VerifyJobView {
    let verified_from = match (&job.report, &job.progress) {
        (Some(report), _) => report.verified_from,
        (None, Some(progress)) => progress.started_from(),
        (None, None) => 1,
    };
    VerifyJobView {
        verified_from,
        url: url(&job.operator, &job.id),
        job: job.id,
        status: job.status,
        upto: job.upto,
        verified_through: next.saturating_sub(1).min(job.upto),
        events_replayed: replayed,
        saved_through,
        resumed_from: job.resumed_from,
        report: job.report,
        error: job.error,
        started_at: format_time(job.started_at),
        updated_at: format_time(job.updated_at),
    }
}

/// What a job is asked to do; the body may be empty.
#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyJobRequest {
    /// `ledger` (the default): replay from the first event; `last_verified`: go on from the
    /// last resume point of the operator's previous job, if it is `done` (from the first event
    /// otherwise; `verified_from` says which).
    #[serde(default)]
    start: VerifyStart,
}

/// `POST /v1/operators/{op}/verify-jobs`: verifies the ledger as it stands, in the background.
#[utoipa::path(
    post,
    path = "/v1/operators/{op}/verify-jobs",
    tag = "plugins",
    security(("operator_key" = []), ("admin_token" = [])),
    params(("op" = String, Path)),
    request_body(content = Option<VerifyJobRequest>),
    responses(
        (status = 202, description = "the job is started; `Location` and `url` are where to follow it", body = VerifyJobView,
            headers(("Location" = String, description = "the job's URL"))),
        (status = 409, description = "`verify_running`: a verify job of the operator is running; the message names its URL", body = super::openapi::ErrorSchema),
    )
)]
pub async fn start_verify_job(
    State(state): State<Arc<AppState>>,
    Path(op): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let operator = auth::operator(&state, &headers, &op)?;
    let body = read_body(body, state.limits.json()).await?;
    let request: VerifyJobRequest = if body.is_empty() { VerifyJobRequest::default() } else { parse_json(&body)? };
    let id = operator.id.clone();
    let job = verify_jobs::start(&state.pipeline, operator, request.start).map_err(|error| match error {
        StartError::Running(job) => ApiError::new(
            StatusCode::CONFLICT,
            "verify_running",
            format!("a verify job of this operator is running: {}; follow it there", url(&id, &job)),
        ),
        StartError::Storage(error) => error.into(),
    })?;
    durable(&state).await?;
    let location = url(&job.operator, &job.id);
    let (next, replayed) =
        job.progress.as_ref().map_or((1, 0), |progress| (progress.next, progress.report.events_replayed as u64));
    // A continuation's resume point is durable: `durable` above flushed the job's record.
    let saved_through = job.progress.as_ref().map_or(0, |progress| progress.next.saturating_sub(1));
    let status = JobStatus { job, next, replayed, saved_through };
    Ok((StatusCode::ACCEPTED, [(header::LOCATION, location)], Json(view(status))).into_response())
}

/// `GET /v1/operators/{op}/verify-jobs/{job}`: how far the job has gone; its report once done.
/// `latest` names the operator's latest job (a client that lost the URL, the console).
#[utoipa::path(
    get,
    path = "/v1/operators/{op}/verify-jobs/{job}",
    tag = "plugins",
    security(("operator_key" = []), ("admin_token" = [])),
    params(("op" = String, Path), ("job" = String, Path, description = "the job's id, or `latest` for the operator's latest job")),
    responses((status = 200, description = "the job's status and, once done, its report", body = VerifyJobView))
)]
pub async fn verify_job(
    State(state): State<Arc<AppState>>,
    Path((op, job)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<VerifyJobView>, ApiError> {
    let operator = auth::operator(&state, &headers, &op)?;
    let found = verify_jobs::status(&state.pipeline, &operator.id, &job)?.ok_or_else(|| {
        ApiError::not_found(format!("operator {op:?} has no verify job {job:?} (only its latest one is kept)"))
    })?;
    Ok(Json(view(found)))
}
