//! Evaluations that pay nothing: `POST /v1/operators/{op}/verify` and
//! `POST /v1/operators/{op}/plugins/{n}/replay` (see `crate::replay`), and shadow mode,
//! `PUT /v1/operators/{op}/shadow` and `GET .../plugins/{n}/shadow-report` (see `crate::shadow`).

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::Value;

use super::answers::ShadowSet;

use super::openapi::ErrorSchema;
use super::operators::{changed, durable, existing_version, parse_json};
use super::{ApiError, AppState, auth, read_body};
use crate::amounts::AmountOverflow;
use crate::event::parse_time;
use crate::pipeline::{Command, IngestError};
use crate::replay::{ReplayStart, TimeRange};

/// `POST /v1/operators/{op}/verify`: replays the ledger in scratch state; writes nothing.
#[utoipa::path(
    post,
    path = "/v1/operators/{op}/verify",
    tag = "plugins",
    security(("operator_key" = []), ("admin_token" = [])),
    params(("op" = String, Path)),
    responses((status = 200, description = "what differs from the ledger, if anything", body = crate::replay::VerifyReport))
)]
pub async fn verify(
    State(state): State<Arc<AppState>>,
    Path(op): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let operator = auth::operator(&state, &headers, &op)?;
    let pipeline = state.pipeline.clone();
    let slots = pipeline.replay_slots().await;
    let report = tokio::task::spawn_blocking(move || {
        let _slots = slots;
        pipeline.verify(&operator)
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(replay_error)?;
    Ok(Json(serde_json::to_value(report).map_err(ApiError::internal)?))
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    /// RFC 3339 or unix milliseconds, inclusive: when the events occurred.
    from: Option<String>,
    /// Exclusive.
    to: Option<String>,
    /// `ledger` (the default): the version builds its own state from the first event;
    /// `checkpoint`: it starts from the operator's state at the checkpoint before `from`
    /// (which it requires), in time proportional to the range, not to history.
    #[serde(default)]
    start: ReplayStart,
}

/// `POST /v1/operators/{op}/plugins/{version}/replay`: a backtest; writes nothing.
#[utoipa::path(
    post,
    path = "/v1/operators/{op}/plugins/{version}/replay",
    tag = "plugins",
    security(("operator_key" = []), ("admin_token" = [])),
    params(("op" = String, Path), ("version" = u32, Path)),
    request_body(content = Option<ReplayRequest>),
    responses((status = 200, description = "what the version would have paid, against what was paid", body = crate::replay::BacktestReport))
)]
pub async fn backtest(
    State(state): State<Arc<AppState>>,
    Path((op, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let operator = auth::operator(&state, &headers, &op)?;
    let version = existing_version(&state, &operator.id, &version).await?;
    let body = read_body(body, state.limits.json()).await?;
    let request: ReplayRequest = if body.is_empty() { ReplayRequest::default() } else { parse_json(&body)? };
    let time = |field: &str, value: Option<String>| {
        value.map(|value| parse_time(&value).map_err(|problem| ApiError::field(field, problem))).transpose()
    };
    let range = TimeRange { from: time("from", request.from)?, to: time("to", request.to)? };
    let start = request.start;
    if start == ReplayStart::Checkpoint && range.from.is_none() {
        return Err(ApiError::field("from", "required with start: checkpoint (the checkpoint is the one before it)"));
    }
    let pipeline = state.pipeline.clone();
    let slots = pipeline.replay_slots().await;
    let report = tokio::task::spawn_blocking(move || {
        let _slots = slots;
        pipeline.backtest(&operator, version, range, start)
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(replay_error)?;
    Ok(Json(serde_json::to_value(report).map_err(ApiError::internal)?))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ShadowRequest {
    /// A plugin version, or null to stop.
    version: Option<u32>,
    /// `ledger` (the default): the version starts at the ledger's first event (or goes on
    /// where it was); `checkpoint`: it starts again from the operator's state at its latest
    /// checkpoint, its earlier results dropped.
    #[serde(default)]
    start: ReplayStart,
}

/// `PUT /v1/operators/{op}/shadow` `{"version": N}` runs version N in shadow mode beside the
/// active one (from the start of the ledger, then live; with `"start": "checkpoint"`, from the
/// operator's latest checkpoint); `{"version": null}` stops it.
#[utoipa::path(
    put,
    path = "/v1/operators/{op}/shadow",
    tag = "plugins",
    security(("operator_key" = []), ("admin_token" = [])),
    params(("op" = String, Path)),
    request_body = ShadowRequest,
    responses(
        (status = 200, description = "the shadow version now", body = ShadowSet),
        (status = 202, description = "`pending`, with `--cluster` only: the change is durable in the cluster's log, but the operator's owner had not applied it within `--cluster-answer-secs`; it will", body = ErrorSchema),
        (status = 503, description = "`log_unavailable`, with `--cluster` only: the cluster's log did not take the change; nothing was done. Retry after `Retry-After`", body = ErrorSchema),
    )
)]
pub async fn set_shadow(
    State(state): State<Arc<AppState>>,
    Path(op): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<ShadowSet>, ApiError> {
    let operator = auth::operator(&state, &headers, &op)?;
    let body = read_body(body, state.limits.json()).await?;
    let request: ShadowRequest = parse_json(&body)?;
    if let Some(version) = request.version {
        existing_version(&state, &operator.id, &version.to_string()).await?;
    }
    if request.version.is_none() && request.start == ReplayStart::Checkpoint {
        return Err(ApiError::field("start", "checkpoint starts a version: give one"));
    }
    // In the operator's turn: in a cluster every node's view starts (or stops) the shadow at
    // the same place of the ledger, so its report reads alike from whichever node owns it.
    let from_checkpoint = request.start == ReplayStart::Checkpoint;
    let shadow = Command::Shadow { version: request.version, from_checkpoint };
    changed(&state, &operator, shadow, &format!("no operator {op:?}")).await?;
    durable(&state).await?;
    Ok(Json(ShadowSet { shadow_plugin: request.version }))
}

/// `GET /v1/operators/{op}/plugins/{n}/shadow-report`.
#[utoipa::path(
    get,
    path = "/v1/operators/{op}/plugins/{version}/shadow-report",
    tag = "plugins",
    security(("operator_key" = []), ("admin_token" = [])),
    params(("op" = String, Path), ("version" = u32, Path)),
    responses((status = 200, description = "where the shadow and the ledger disagree", body = crate::shadow::ShadowReport))
)]
pub async fn shadow_report(
    State(state): State<Arc<AppState>>,
    Path((op, version)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let operator = auth::operator(&state, &headers, &op)?;
    let version = existing_version(&state, &operator.id, &version).await?;
    let pipeline = state.pipeline.clone();
    let report = tokio::task::spawn_blocking(move || pipeline.shadow_report(&operator, version))
        .await
        .map_err(ApiError::internal)?
        .map_err(replay_error)?;
    Ok(Json(serde_json::to_value(report).map_err(ApiError::internal)?))
}

/// A report's failure: a total that overflows is the ledger's content, not the host's fault, so
/// it is a 422 that says which total; anything else is the host's.
pub(super) fn replay_error(error: IngestError) -> ApiError {
    match error {
        IngestError::Storage(error) => error.into(),
        IngestError::Overflow(error) => overflow_error(&error),
        other => ApiError::internal(other),
    }
}

pub(super) fn overflow_error(error: &AmountOverflow) -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "amount_overflow",
        format!("{error}: the amounts in the ledger add up to more than a decimal holds, so no total is reported"),
    )
}
