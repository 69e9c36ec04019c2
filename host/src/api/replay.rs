//! `POST /v1/operators/{op}/verify` and `POST /v1/operators/{op}/plugins/{n}/replay`: replays
//! that write nothing (see `crate::replay`).

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use serde::Deserialize;
use serde_json::Value;

use super::operators::{existing_version, parse_json};
use super::{ApiError, AppState, auth, read_body};
use crate::event::parse_time;
use crate::pipeline::IngestError;
use crate::replay::TimeRange;

pub async fn verify(
    State(state): State<Arc<AppState>>,
    Path(op): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let operator = auth::operator(&state, &headers, &op)?;
    let pipeline = state.pipeline.clone();
    let report = tokio::task::spawn_blocking(move || pipeline.verify(&operator))
        .await
        .map_err(ApiError::internal)?
        .map_err(replay_error)?;
    Ok(Json(serde_json::to_value(report).map_err(ApiError::internal)?))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    from: Option<String>,
    to: Option<String>,
}

pub async fn backtest(
    State(state): State<Arc<AppState>>,
    Path((op, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let operator = auth::operator(&state, &headers, &op)?;
    let version = existing_version(&state, &operator.id, &version)?;
    let body = read_body(body, state.limits.events_bytes).await?;
    let request: ReplayRequest = if body.is_empty() { ReplayRequest::default() } else { parse_json(&body)? };
    let time = |field: &str, value: Option<String>| {
        value.map(|value| parse_time(&value).map_err(|problem| ApiError::field(field, problem))).transpose()
    };
    let range = TimeRange { from: time("from", request.from)?, to: time("to", request.to)? };
    let pipeline = state.pipeline.clone();
    let report = tokio::task::spawn_blocking(move || pipeline.backtest(&operator, version, range))
        .await
        .map_err(ApiError::internal)?
        .map_err(replay_error)?;
    Ok(Json(serde_json::to_value(report).map_err(ApiError::internal)?))
}

fn replay_error(error: IngestError) -> ApiError {
    match error {
        IngestError::Storage(error) => error.into(),
        other => ApiError::internal(other),
    }
}
