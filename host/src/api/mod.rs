//! The HTTP API: admin, operator and ingestion routes over one axum router.
//!
//! | route | who |
//! | --- | --- |
//! | `POST /v1/operators` | admin |
//! | `POST /v1/operators/{op}/plugins[?activate=true]`, `.../plugins/{n}/activate` | operator, admin |
//! | `PUT/GET /v1/operators/{op}/affiliates/{aff}` | operator, admin |
//! | `POST /v1/operators/{op}/events` | operator key or Standard Webhooks signature |
//! | `GET /postback/{op}?token=...` | the operator's postback token |
//! | `GET /metrics` | admin |
//! | `GET /healthz`, `GET /readyz` | none |
//! | `POST /v1/operators/{op}/events/retry-failed`, `GET .../events/{id}`, `GET .../commissions` | operator, admin |
//! | `POST /v1/operators/{op}/verify`, `POST .../plugins/{n}/replay` | operator, admin |
//! | `PUT /v1/operators/{op}/shadow`, `GET .../plugins/{n}/shadow-report` | operator, admin |
//! | `POST /v1/operators/{op}/periods/{YYYY-MM}/close`, `PUT .../fx-rates` | operator, admin |
//! | `GET /v1/operators/{op}/periods/{YYYY-MM}/statement[?affiliate=A]`, `PUT .../settings` | operator, admin |
//! | `POST /v1/operators/{op}/imports`, `GET .../imports/{job}`, `GET .../export` | operator, admin |
//! | `PUT /v1/operators/{op}/limits`, `POST .../credentials/{kind}/rotate` | admin |

mod auth;
mod commissions;
mod error;
mod events;
mod export;
mod import_lines;
mod imports;
mod operators;
mod rate_limit;
mod replay;
mod restore;
mod statement;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use http_body_util::BodyExt;

pub use error::ApiError;

use crate::metrics::OperatorLabels;
use crate::pipeline::Pipeline;

pub struct AppState {
    pub pipeline: Pipeline,
    pub admin_token_sha256: String,
    pub limits: BodyLimits,
    pub rate_limits: rate_limit::RateLimits,
    pub failed_credentials: rate_limit::FailedCredentials,
}

impl AppState {
    pub fn new(pipeline: Pipeline, admin_token_sha256: String, limits: BodyLimits) -> Self {
        Self {
            pipeline,
            admin_token_sha256,
            limits,
            rate_limits: Default::default(),
            failed_credentials: Default::default(),
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    pub events_bytes: usize,
    pub plugin_bytes: usize,
    /// How long a JSON body may take to arrive, whole.
    pub read_timeout: Duration,
    /// How long a plugin upload's body may take (components are up to tens of MiB).
    pub plugin_read_timeout: Duration,
}

impl Default for BodyLimits {
    fn default() -> Self {
        Self {
            events_bytes: 1 << 20,
            plugin_bytes: 10 << 20,
            read_timeout: Duration::from_secs(10),
            plugin_read_timeout: Duration::from_secs(120),
        }
    }
}

/// The most one body may be: bytes, and time to arrive.
#[derive(Debug, Clone, Copy)]
struct BodyLimit {
    bytes: usize,
    within: Duration,
}

impl BodyLimits {
    fn json(&self) -> BodyLimit {
        BodyLimit { bytes: self.events_bytes, within: self.read_timeout }
    }

    fn plugin(&self) -> BodyLimit {
        BodyLimit { bytes: self.plugin_bytes, within: self.plugin_read_timeout }
    }
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/v1/operators", post(operators::create_operator))
        .route("/v1/operators/{op}/plugins", post(operators::upload_plugin))
        .route("/v1/operators/{op}/plugins/{version}/activate", post(operators::activate_plugin))
        .route("/v1/operators/{op}/plugins/{version}/replay", post(replay::backtest))
        .route("/v1/operators/{op}/verify", post(replay::verify))
        .route("/v1/operators/{op}/shadow", put(replay::set_shadow))
        .route("/v1/operators/{op}/plugins/{version}/shadow-report", get(replay::shadow_report))
        .route("/v1/operators/{op}/limits", put(operators::put_limits))
        .route("/v1/operators/{op}/fx-rates", put(operators::put_fx_rates))
        .route("/v1/operators/{op}/settings", put(operators::put_settings))
        .route("/v1/operators/{op}/credentials/{kind}/rotate", post(operators::rotate_credential))
        .route("/v1/operators/{op}/affiliates/{affiliate}", put(operators::put_affiliate).get(operators::get_affiliate))
        .route("/v1/operators/{op}/events", post(events::webhook))
        .route("/v1/operators/{op}/events/retry-failed", post(events::retry_failed))
        .route("/v1/operators/{op}/periods/{period}/close", post(events::close_period))
        .route("/v1/operators/{op}/periods/{period}/statement", get(statement::statement))
        .route("/v1/operators/{op}/events/{id}", get(events::get_event))
        .route("/v1/operators/{op}/commissions", get(commissions::list))
        .route("/v1/operators/{op}/commissions/{id}", get(commissions::get))
        .route("/v1/operators/{op}/commissions/{id}/status", post(commissions::set_status))
        .route("/v1/operators/{op}/imports", post(imports::start))
        .route("/v1/operators/{op}/imports/{job}", get(imports::status))
        .route("/v1/operators/{op}/export", get(export::export))
        .route("/postback/{op}", get(events::postback))
        // Only the routes above, which all take a credential; the probes below never wait.
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), auth::throttle_failures))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .fallback(|| async { ApiError::not_found("no such route; see the README for the API") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "this route does not take that method")
        })
        .with_state(state)
}

/// 200 while the ledger can acknowledge events; 503 while its flushes fail (a full or failing
/// disk), so a load balancer sends traffic elsewhere.
async fn readyz(State(state): State<Arc<AppState>>) -> Result<&'static str, ApiError> {
    if state.pipeline.is_ready() {
        Ok("ready")
    } else {
        Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", "the ledger's last flush failed"))
    }
}

/// Prometheus text format; the admin token guards it (operator ids are in the labels).
async fn metrics(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Result<Response, ApiError> {
    auth::require_admin(&state, &headers)?;
    // Read at the scrape: the count lives in the ledger, kept by the commits.
    let store = state.pipeline.store();
    for operator in store.operators()? {
        let bytes = i64::try_from(store.stored_bytes(&operator.id)?).unwrap_or(i64::MAX);
        state.pipeline.metrics().stored_bytes.get_or_create(&OperatorLabels { operator: operator.id }).set(bytes);
    }
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], state.pipeline.metrics().encode())
        .into_response())
}

/// Reads a body up to `limit.bytes`; beyond it, a 413 that says the limit. A body not all in
/// within `limit.within` gets 408, and hyper then closes the connection (its body was not read
/// to the end), so a client trickling a byte at a time holds a connection that long at most.
/// (tower-http's `RequestBodyTimeout` would not do: it times each frame, and restarts on every
/// byte.)
///
/// An oversized body is read on (and dropped) for up to 8 MiB more before the answer,
/// so that a client still sending sees the 413 instead of a connection reset.
async fn read_body(body: Body, limit: BodyLimit) -> Result<Bytes, ApiError> {
    match tokio::time::timeout(limit.within, read_body_within(body, limit.bytes)).await {
        Ok(read) => read,
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            format!(
                "the body did not arrive whole within {} seconds; send it again, faster",
                limit.within.as_secs_f64()
            ),
        )),
    }
}

async fn read_body_within(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    const DRAIN_BYTES: usize = 8 << 20;
    let mut body = body;
    let mut collected = Vec::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|error| ApiError::bad_request(format!("reading the body failed: {error}")))?;
        let Ok(data) = frame.into_data() else { continue };
        seen += data.len();
        if seen <= limit {
            collected.extend_from_slice(&data);
        } else if seen > limit.saturating_add(DRAIN_BYTES) {
            break;
        }
    }
    if seen > limit {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the body is over the limit of {limit} bytes"),
        ));
    }
    Ok(Bytes::from(collected))
}
