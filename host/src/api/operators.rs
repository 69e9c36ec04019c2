//! Operators and their plugin versions (create, upload, activate), and the request helpers the
//! other handlers share (a JSON body read by field, strict query parameters, the flush before an
//! answer). An operator's affiliates are in [`super::affiliates`], its settings in
//! [`super::settings`].

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use serde::Deserialize;

use super::answers::{Activated, CreatedOperator, PluginUploaded};
use super::openapi::ErrorSchema;
use super::{ApiError, AppState, auth, read_body};
use crate::event::{FieldError, affiliate_id_problem, format_time, now_ms, parse_time, query_pairs};
use crate::pipeline::{Command, Done};
use crate::secrets::{OperatorCredentials, sha256_hex};
use crate::store::records::{ActivationScope, DatedActivation, OperatorRecord};
use crate::terms::{self, WireTerms};

const COMPILE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewOperator {
    /// 1 to 64 of `a-z`, `0-9`, `-` and `_`, starting with a letter or digit.
    #[schema(pattern = r"^[a-z0-9][a-z0-9_-]{0,63}$")]
    id: String,
    name: String,
    /// ISO 4217: the currency its ledger is kept in.
    currency: String,
    /// The plugin's defaults (deal terms override them).
    #[serde(default)]
    #[schema(value_type = BTreeMap<String, String>)]
    config: WireTerms,
}

/// `POST /v1/operators` (admin): a new operator; its credentials are in this answer only.
#[utoipa::path(
    post,
    path = "/v1/operators",
    tag = "operators",
    security(("admin_token" = [])),
    request_body = NewOperator,
    responses(
        (status = 201, description = "created; the credentials are shown this once", body = CreatedOperator),
        (status = 409, description = "an operator with this id exists (in a cluster, on any node)", body = ErrorSchema),
        (status = 503, description = "`log_unavailable`, with `--cluster` only: the cluster's operators bucket did not take it; nothing was created. Retry after `Retry-After`", body = ErrorSchema),
    )
)]
pub async fn create_operator(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<CreatedOperator>), ApiError> {
    auth::require_admin(&state, &headers)?;
    let body = read_body(body, state.limits.json()).await?;
    let new: NewOperator = parse_json(&body)?;
    let mut problems = Vec::new();
    if !valid_operator_id(&new.id) {
        problems.push(FieldError::new("id", "1 to 64 of a-z, 0-9, - and _, starting with a letter or digit"));
    }
    if new.name.trim().is_empty() || new.name.len() > 200 || new.name.chars().any(char::is_control) {
        problems.push(FieldError::new("name", "1 to 200 bytes, without control characters"));
    }
    if iso_currency::Currency::from_code(&new.currency).is_none() {
        problems.push(FieldError::new("currency", format!("{:?} is not an ISO 4217 code", new.currency)));
    }
    let config = terms::checked_config("config", new.config).unwrap_or_else(|config_problems| {
        problems.extend(config_problems);
        Default::default()
    });
    if !problems.is_empty() {
        return Err(ApiError::fields("invalid_operator", problems));
    }
    let credentials = OperatorCredentials::generate();
    let operator = OperatorRecord {
        id: new.id,
        name: new.name,
        currency: new.currency,
        api_key_sha256: sha256_hex(&credentials.api_key),
        postback_token_sha256: sha256_hex(&credentials.postback_token),
        webhook_secret: credentials.webhook_secret.clone(),
        config,
        active_plugin: None,
        shadow_plugin: None,
        dated_activations: Vec::new(),
        created_at: now_ms(),
        limits: Default::default(),
        previous_credentials: Vec::new(),
        fx_rates: Default::default(),
        late_events: Default::default(),
    };
    if !state.pipeline.create_operator(&operator).await.map_err(super::events::ingest_error)? {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "operator_exists",
            format!("operator {:?} exists", operator.id),
        ));
    }
    durable(&state).await?;
    tracing::info!(operator = %operator.id, "operator created");
    Ok((
        StatusCode::CREATED,
        Json(CreatedOperator {
            id: operator.id,
            name: operator.name,
            currency: operator.currency,
            api_key: credentials.api_key,
            postback_token: credentials.postback_token,
            webhook_secret: credentials.webhook_secret,
        }),
    ))
}

/// `POST /v1/operators/{op}/plugins[?activate=true]`: the operator's next plugin version.
#[utoipa::path(
    post,
    path = "/v1/operators/{op}/plugins",
    tag = "plugins",
    security(("operator_key" = []), ("admin_token" = [])),
    params(
        ("op" = String, Path, description = "the operator's id"),
        ("activate" = Option<bool>, Query, description = "make it the active version at once"),
    ),
    request_body(content = String, content_type = "application/wasm", description = "the WebAssembly component"),
    responses(
        (status = 201, description = "validated, compiled and stored", body = PluginUploaded),
        (status = 415, description = "not `Content-Type: application/wasm`", body = ErrorSchema),
    )
)]
pub async fn upload_plugin(
    State(state): State<Arc<AppState>>,
    Path(op): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<PluginUploaded>), ApiError> {
    let operator = auth::operator(&state, &headers, &op)?;
    // Read first: refusing before the body is in makes a client that is still sending see a
    // reset instead of the refusal.
    let wasm = read_body(body, state.limits.plugin()).await?;
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|value| value.to_str().ok());
    if content_type != Some("application/wasm") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "upload the component with `Content-Type: application/wasm`",
        ));
    }
    let activate = query_flag(query.as_deref(), "activate")?;
    let record = add_plugin(&state, &operator.id, wasm.to_vec()).await?;
    if activate {
        set_active(&state, &operator.id, record.version).await?;
    }
    durable(&state).await?;
    Ok((
        StatusCode::CREATED,
        Json(PluginUploaded {
            version: record.version,
            sha256: record.sha256,
            contract: record.contract,
            active: activate,
        }),
    ))
}

/// Validates, compiles and smoke-runs a component, and stores it as the operator's next version.
pub(super) async fn add_plugin(
    state: &AppState,
    operator: &str,
    wasm: Vec<u8>,
) -> Result<crate::store::records::PluginRecord, ApiError> {
    let plugins = state.pipeline.plugins().clone();
    let operator_id = operator.to_owned();
    // The smoke run takes an instance from the pool like any evaluation.
    let slots = state.pipeline.replay_slots().await;
    let compiling = tokio::task::spawn_blocking(move || {
        let _slots = slots;
        plugins.prepare(&operator_id, wasm)
    });
    // The compile thread cannot be interrupted; past the limit the upload is refused and the
    // prepared plugin, whenever it comes, is dropped unstored.
    let prepared = tokio::time::timeout(COMPILE_TIMEOUT, compiling)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_plugin",
                format!("compiling the component took longer than {COMPILE_TIMEOUT:?}"),
            )
        })?
        .map_err(ApiError::internal)?
        .map_err(|rejection| {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_plugin", rejection.to_string())
        })?;
    // In a cluster, numbered by the cluster and set up on every node.
    state.pipeline.add_plugin(operator, prepared).await.map_err(super::events::ingest_error)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DatedActivationBody {
    /// RFC 3339 or unix milliseconds.
    effective_from: String,
    #[serde(default = "events_scope")]
    #[schema(default = "events")]
    scope: ActivationScope,
    #[serde(default)]
    affiliate: Option<String>,
}

fn events_scope() -> ActivationScope {
    ActivationScope::Events
}

/// `POST /v1/operators/{op}/plugins/{n}/activate`: with no body, version `n` evaluates every
/// new event from now on. With `{"effective_from", "scope"?, "affiliate"?}` it evaluates the
/// events that occurred from that time (`scope: events`, the default) or the events of
/// customers who started from then (`new_customers`), for all affiliates or one; a recorded
/// commission is never changed by it.
#[utoipa::path(
    post,
    path = "/v1/operators/{op}/plugins/{version}/activate",
    tag = "plugins",
    security(("operator_key" = []), ("admin_token" = [])),
    params(("op" = String, Path), ("version" = u32, Path, description = "a plugin version number")),
    request_body(content = Option<DatedActivationBody>, description = "none: from now on, for every event"),
    responses(
        (status = 200, description = "activated", body = Activated),
        (status = 202, description = "`pending`, with `--cluster` only: the change is durable in the cluster's log, but the operator's owner had not applied it within `--cluster-answer-secs`; it will. Sending it again changes nothing twice", body = ErrorSchema),
        (status = 503, description = "`log_unavailable`, with `--cluster` only: the cluster's log did not take the change; nothing was done. Retry after `Retry-After`", body = ErrorSchema),
    )
)]
pub async fn activate_plugin(
    State(state): State<Arc<AppState>>,
    Path((op, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Activated>, ApiError> {
    let operator = auth::operator(&state, &headers, &op)?;
    let version = existing_version(&state, &operator.id, &version).await?;
    let body = read_body(body, state.limits.json()).await?;
    if body.is_empty() {
        set_active(&state, &operator.id, version).await?;
        durable(&state).await?;
        return Ok(Json(Activated::Now { active_plugin: version }));
    }
    let request: DatedActivationBody = parse_json(&body)?;
    let effective_from =
        parse_time(&request.effective_from).map_err(|problem| ApiError::field("effective_from", problem))?;
    if let Some(problem) = request.affiliate.as_deref().and_then(affiliate_id_problem) {
        return Err(ApiError::field("affiliate", problem));
    }
    if let Some(affiliate) = &request.affiliate
        && state.pipeline.store().affiliate(&operator.id, affiliate)?.is_none()
    {
        return Err(ApiError::field("affiliate", format!("unknown affiliate {affiliate:?}")));
    }
    let activation = DatedActivation {
        version,
        effective_from,
        scope: request.scope,
        affiliate: request.affiliate,
        activated_at: now_ms(),
    };
    load(&state, &operator.id, version).await?;
    let dated = Command::ActivateDated { activation: activation.clone() };
    changed(&state, &operator, dated, "operator vanished").await?;
    durable(&state).await?;
    tracing::info!(operator = %operator.id, version, ?activation, "plugin activated from a date");
    Ok(Json(Activated::Dated {
        version,
        effective_from: format_time(activation.effective_from),
        scope: activation.scope,
        affiliate: activation.affiliate,
    }))
}

/// Loads a version now, so the first event it evaluates does not pay for that.
async fn load(state: &AppState, operator: &str, version: u32) -> Result<(), ApiError> {
    let plugins = state.pipeline.plugins().clone();
    let owned = operator.to_owned();
    tokio::task::spawn_blocking(move || plugins.get(&owned, version))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
    Ok(())
}

/// The plugin version named in a path, if the operator has it; in a cluster, fetched first if
/// another node took its upload a moment ago.
pub(super) async fn existing_version(state: &AppState, operator: &str, version: &str) -> Result<u32, ApiError> {
    let number: u32 = version
        .parse()
        .map_err(|_| ApiError::field("version", format!("{version:?} is not a plugin version number")))?;
    match state.pipeline.hold_plugin(operator, number).await.map_err(super::events::ingest_error)? {
        true => Ok(number),
        false => Err(ApiError::not_found(format!("operator {operator:?} has no plugin version {number}"))),
    }
}

/// Makes `version` the one that evaluates new events. Each event reads the operator once, so
/// it is evaluated wholly by the old version or wholly by the new.
pub(super) async fn set_active(state: &AppState, operator: &str, version: u32) -> Result<(), ApiError> {
    load(state, operator, version).await?;
    // In the operator's turn: the events queued before it are evaluated by the version before.
    let record = state.pipeline.store().operator(operator)?.ok_or_else(|| ApiError::not_found("operator vanished"))?;
    changed(state, &record, Command::Activate { version }, "operator vanished").await?;
    tracing::info!(operator, version, "plugin activated");
    Ok(())
}

/// Runs a change of the operator's record in its order (in a cluster, through its log); a 404
/// saying `missing` if the operator is gone.
pub(super) async fn changed(
    state: &AppState,
    operator: &OperatorRecord,
    change: Command,
    missing: &str,
) -> Result<(), ApiError> {
    let found = state.pipeline.command(operator, change).await.and_then(Done::changed);
    match found.map_err(super::events::ingest_error)? {
        true => Ok(()),
        false => Err(ApiError::not_found(missing)),
    }
}

pub(super) async fn durable(state: &AppState) -> Result<(), ApiError> {
    state.pipeline.make_durable().await.map_err(ApiError::unavailable)
}

/// Parses a JSON body (an object) into `T`, naming the field of any problem.
pub(super) fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    // serde also reads a struct from an array of its fields in order (`[null, null]` was a
    // backtest of everything, `["refuse"]` a setting): every body here is an object, its fields
    // named, so an array is refused rather than read by position (found by schemathesis).
    if body.iter().find(|byte| !byte.is_ascii_whitespace()) == Some(&b'[') {
        return Err(ApiError::field("", "the body must be a JSON object, with each field by name; not an array"));
    }
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    match serde_path_to_error::deserialize(&mut deserializer) {
        Ok(value) => Ok(value),
        Err(error) if error.inner().is_syntax() || error.inner().is_eof() => {
            Err(ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", error.into_inner().to_string()))
        }
        Err(error) => {
            let field = error.path().to_string();
            Err(ApiError::field(if field == "." { "" } else { &field }, error.into_inner().to_string()))
        }
    }
}

pub(super) fn query_flag(query: Option<&str>, name: &str) -> Result<bool, ApiError> {
    let params = query_params(query)?;
    match params.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_str()) {
        None | Some("false") => Ok(false),
        Some("true") | Some("") => Ok(true),
        Some(other) => Err(ApiError::field(name, format!("{other:?} is not true or false"))),
    }
}

/// A query's parameters, decoded strictly (see [`query_pairs`]). Each may be given once:
/// `limit=2&limit=3` is refused rather than read as one of them.
pub(super) fn query_params(query: Option<&str>) -> Result<Vec<(String, String)>, ApiError> {
    let pairs =
        query_pairs(query.unwrap_or_default()).map_err(|problems| ApiError::fields("invalid_query", problems))?;
    let mut seen = std::collections::HashSet::new();
    let repeated: Vec<FieldError> = pairs
        .iter()
        .filter(|(key, _)| !seen.insert(key.as_str()))
        .map(|(key, _)| FieldError::new(key, "given more than once: give each parameter once"))
        .collect();
    if !repeated.is_empty() {
        return Err(ApiError::fields("invalid_query", repeated));
    }
    Ok(pairs)
}

/// 1 to 64 of a-z, 0-9, - and _, starting with a letter or digit: operator ids, and import job ids.
pub(super) fn valid_operator_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && id.as_bytes()[0].is_ascii_alphanumeric()
}
