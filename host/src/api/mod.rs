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
//! | `POST /v1/operators/{op}/verify`, `POST .../verify-jobs`, `GET .../verify-jobs/{job}`, `POST .../plugins/{n}/replay` | operator, admin |
//! | `PUT /v1/operators/{op}/shadow`, `GET .../plugins/{n}/shadow-report` | operator, admin |
//! | `POST /v1/operators/{op}/periods/{YYYY-MM}/close`, `PUT .../fx-rates` | operator, admin |
//! | `GET /v1/operators/{op}/periods/{YYYY-MM}/statement[?affiliate=A]`, `PUT .../settings` | operator, admin |
//! | `POST /v1/operators/{op}/imports`, `GET .../imports/{job}`, `GET .../export` | operator, admin |
//! | `PUT /v1/operators/{op}/limits`, `POST .../credentials/{kind}/rotate` | admin |
//! | `GET /v1/operators`, `GET /v1/cluster` | admin |
//! | `GET /v1/operators/{op}/affiliates`, `.../plugins`, `.../events`, `.../periods` | operator, admin |
//! | `POST /v1/operators/{op}/periods/{YYYY-MM}/approve`, `POST .../payouts` | operator, admin |
//! | `POST /v1/operators/{op}/affiliates/{aff}/keys`, `DELETE .../keys/{id}` | operator, admin |
//! | `GET .../commissions[/{id}]`, `.../statement`, `.../payouts/report` | also an affiliate key: its own lines |

mod affiliate_keys;
mod affiliates;
mod answers;
mod auth;
mod cluster;
mod commissions;
mod error;
mod events;
mod export;
mod history;
mod import_jobs;
mod import_lines;
mod imports;
mod listings;
mod openapi;
mod operators;
mod payouts;
mod periods;
mod rate_limit;
mod replay;
mod restore;
mod settings;
mod statement;
mod verify_jobs;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use error::ApiError;
pub use openapi::{document as openapi_document, document_json as openapi_json};

use crate::metrics::OperatorLabels;
use crate::pipeline::Pipeline;

pub struct AppState {
    pub pipeline: Pipeline,
    pub admin_token_sha256: String,
    pub limits: BodyLimits,
    pub rate_limits: rate_limit::RateLimits,
    pub failed_credentials: rate_limit::FailedCredentials,
    /// This node's part in a cluster (`serve --cluster`); `None` on the embedded default.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
}

impl AppState {
    pub fn new(pipeline: Pipeline, admin_token_sha256: String, limits: BodyLimits) -> Self {
        Self {
            pipeline,
            admin_token_sha256,
            limits,
            rate_limits: Default::default(),
            failed_credentials: Default::default(),
            cluster: None,
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

/// Every route that takes a credential, each documented by its handler's `#[utoipa::path]`
/// (method, path, parameters, body, answers, credentials). `routes!` routes a handler at the
/// path and methods its attribute names, so a route cannot be added without its document, nor
/// documented at a path it is not served on.
fn credentialed_routes() -> OpenApiRouter<Arc<AppState>> {
    use {affiliates as a, commissions as c, events as e, operators as o, replay as r, settings as s};
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(metrics))
        .routes(routes!(o::create_operator, listings::operators))
        .routes(routes!(cluster::cluster_status))
        .routes(routes!(o::upload_plugin, listings::plugins))
        .routes(routes!(listings::affiliates))
        .routes(routes!(periods::periods))
        .routes(routes!(o::activate_plugin))
        .routes(routes!(r::backtest))
        .routes(routes!(r::verify))
        .routes(routes!(verify_jobs::start_verify_job))
        .routes(routes!(verify_jobs::verify_job))
        .routes(routes!(r::set_shadow))
        .routes(routes!(r::shadow_report))
        .routes(routes!(s::put_limits))
        .routes(routes!(s::put_fx_rates))
        .routes(routes!(s::put_settings))
        .routes(routes!(s::rotate_credential))
        .routes(routes!(a::put_affiliate, a::get_affiliate))
        .routes(routes!(e::webhook, listings::events))
        .routes(routes!(e::retry_failed))
        .routes(routes!(e::close_period))
        .routes(routes!(statement::statement))
        .routes(routes!(e::get_event))
        .routes(routes!(c::list))
        .routes(routes!(c::get))
        .routes(routes!(c::set_status))
        .routes(routes!(payouts::approve))
        .routes(routes!(payouts::pay))
        .routes(routes!(payouts::report))
        .routes(routes!(affiliate_keys::issue))
        .routes(routes!(affiliate_keys::revoke))
        .routes(routes!(imports::start))
        .routes(routes!(import_jobs::status))
        .routes(routes!(history::export))
        .routes(routes!(e::postback))
}

/// The routes without a credential: the probes (which must never wait behind the
/// failed-credential throttle) and the document.
fn open_routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new().routes(routes!(healthz)).routes(routes!(readyz)).routes(routes!(openapi::openapi_json))
}

/// The router before its state, and the document of its routes: every route above, the
/// failed-credential throttle (`throttle`) on the credentialed ones, and the fallbacks. The
/// server and the document are both made here, so they describe one router.
fn assemble(
    throttle: impl FnOnce(OpenApiRouter<Arc<AppState>>) -> OpenApiRouter<Arc<AppState>>,
) -> (Router<Arc<AppState>>, utoipa::openapi::OpenApi) {
    let (router, document) = throttle(credentialed_routes()).merge(open_routes()).split_for_parts();
    let router = router
        .fallback(|| async { ApiError::not_found("no such route; see GET /openapi.json for the API") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "this route does not take that method")
        });
    (router, document)
}

pub fn router(state: Arc<AppState>) -> Router {
    let throttle = axum::middleware::from_fn_with_state(state.clone(), auth::throttle_failures);
    let (router, _) = assemble(|credentialed| credentialed.route_layer(throttle));
    router.with_state(state)
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "probes", responses((status = 200, description = "alive", body = String)))]
async fn healthz() -> &'static str {
    "ok"
}

/// 200 while the ledger can acknowledge events; 503 while its flushes fail (a full or failing
/// disk), so a load balancer sends traffic elsewhere.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "probes",
    responses(
        (status = 200, description = "the ledger acknowledges events", body = String),
        (status = 503, description = "the ledger's last flush failed", body = openapi::ErrorSchema),
    )
)]
async fn readyz(State(state): State<Arc<AppState>>) -> Result<&'static str, ApiError> {
    if state.pipeline.is_ready() {
        Ok("ready")
    } else {
        Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", "the ledger's last flush failed"))
    }
}

/// Prometheus text format; the admin token guards it (operator ids are in the labels).
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "probes",
    security(("admin_token" = [])),
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain; version=0.0.4; charset=utf-8"))
)]
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
