//! Operators, their plugin versions and their affiliates.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use rust_decimal::Decimal;
use serde::Deserialize;

use super::answers::{
    Activated, Affiliate, CreatedOperator, EffectiveLimits, FxRatesSet, PluginUploaded, Rotated, Settings,
};
use super::openapi::ErrorSchema;
use super::{ApiError, AppState, auth, read_body};
use crate::event::{
    FieldError, UniqueKeys, affiliate_id_problem, format_time, now_ms, parse_amount, parse_time, query_pairs,
};
use crate::pipeline::{Command, Done, MAX_CHAIN_DEPTH, effective_limits};
use crate::sandbox;
use crate::secrets::{OperatorCredentials, sha256_hex};
use crate::store::records::{
    ActivationScope, AffiliateRecord, CredentialKind, DatedActivation, FxRates, LateEventPolicy, OperatorLimits,
    OperatorRecord, PreviousCredential,
};
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
        (status = 409, description = "an operator with this id exists", body = ErrorSchema),
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
    let store = state.pipeline.store();
    if !store.create_operator(&operator)? {
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
    let plugins = state.pipeline.plugins().clone();
    let operator_id = operator.to_owned();
    Ok(tokio::task::spawn_blocking(move || plugins.add(&operator_id, prepared)).await.map_err(ApiError::internal)??)
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
    let version = existing_version(&state, &operator.id, &version)?;
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

/// The plugin version named in a path, if the operator has it.
pub(super) fn existing_version(state: &AppState, operator: &str, version: &str) -> Result<u32, ApiError> {
    let number: u32 = version
        .parse()
        .map_err(|_| ApiError::field("version", format!("{version:?} is not a plugin version number")))?;
    match state.pipeline.store().plugin(operator, number)? {
        Some(_) => Ok(number),
        None => Err(ApiError::not_found(format!("operator {operator:?} has no plugin version {number}"))),
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
async fn changed(state: &AppState, operator: &OperatorRecord, change: Command, missing: &str) -> Result<(), ApiError> {
    let found = state.pipeline.command(operator, change).await.and_then(Done::changed);
    match found.map_err(super::events::ingest_error)? {
        true => Ok(()),
        false => Err(ApiError::not_found(missing)),
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AffiliateBody {
    #[serde(default)]
    parent: Option<String>,
    /// Deal terms: at most 100, keys of 1 to 64 bytes, values of at most 1,024 (numbers and
    /// booleans are kept as text); `hold_days` is read by the host.
    #[serde(default)]
    #[schema(value_type = BTreeMap<String, String>)]
    deal: WireTerms,
}

/// `PUT /v1/operators/{op}/affiliates/{affiliate}`: creates or changes an affiliate.
#[utoipa::path(
    put,
    path = "/v1/operators/{op}/affiliates/{affiliate}",
    tag = "affiliates",
    security(("operator_key" = []), ("admin_token" = [])),
    params(("op" = String, Path), ("affiliate" = String, Path, pattern = r"^[a-z0-9][a-z0-9._-]{0,127}$", description = "1 to 128 of a-z, 0-9, -, _ and ., starting with a letter or digit")),
    request_body = AffiliateBody,
    responses(
        (status = 200, description = "stored", body = Affiliate),
        (status = 403, description = "`quota_exceeded`: the operator is at its quota of stored bytes", body = ErrorSchema),
    )
)]
pub async fn put_affiliate(
    State(state): State<Arc<AppState>>,
    Path((op, affiliate)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Affiliate>, ApiError> {
    let operator = auth::operator(&state, &headers, &op)?;
    if let Some(problem) = affiliate_id_problem(&affiliate) {
        return Err(ApiError::field("affiliate", problem));
    }
    let body = read_body(body, state.limits.json()).await?;
    let request: AffiliateBody = parse_json(&body)?;
    let deal = terms::checked_deal("deal", request.deal)
        .map_err(|problems| ApiError::fields("invalid_affiliate", problems))?;
    let store = state.pipeline.store();
    if let Some(parent) = &request.parent {
        if let Some(problem) = affiliate_id_problem(parent) {
            return Err(ApiError::field("parent", problem));
        }
        // The deepest chain the move makes: the parent's chain, this affiliate, and the
        // longest branch below it, which moves with it.
        let below = match store.affiliate(&operator.id, &affiliate)? {
            Some(_) => subtree_height(store, &operator.id, &affiliate)?,
            None => 0,
        };
        // Walk up from the new parent: meeting this affiliate would close a loop.
        let mut depth = 1 + below;
        let mut cursor = Some(parent.clone());
        while let Some(id) = cursor {
            if id == affiliate {
                return Err(ApiError::field(
                    "parent",
                    format!("{parent:?} is {affiliate:?} or below it: that would make a loop"),
                ));
            }
            let record = store.affiliate(&operator.id, &id)?.ok_or_else(|| {
                ApiError::field("parent", format!("unknown affiliate {id:?}: create the parent first"))
            })?;
            depth += 1;
            if depth > MAX_CHAIN_DEPTH {
                return Err(ApiError::field(
                    "parent",
                    format!(
                        "the chain would be deeper than {MAX_CHAIN_DEPTH} levels: {parent:?} and its parents, {affiliate:?}, and {below} levels below {affiliate:?}"
                    ),
                ));
            }
            cursor = record.parent;
        }
    }
    let record = AffiliateRecord { id: affiliate, parent: request.parent, deal, updated_at: now_ms() };
    store
        .put_affiliate(&operator.id, &record, operator.limits.stored_bytes)?
        .map_err(|refused| ApiError::quota_exceeded(&operator.id, None, refused))?;
    durable(&state).await?;
    Ok(Json(affiliate_json(&record)))
}

/// How many levels of affiliates are below `root` (0 for none). Reads every affiliate of the
/// operator: only a move of an existing affiliate under a parent pays for it.
fn subtree_height(store: &crate::store::Store, operator: &str, root: &str) -> Result<usize, ApiError> {
    let mut children: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for id in store.affiliate_ids(operator)? {
        if let Some(parent) = store.affiliate(operator, &id)?.and_then(|record| record.parent) {
            children.entry(parent).or_default().push(id);
        }
    }
    let mut height = 0;
    let mut level = vec![root.to_owned()];
    // Bounded: a level past the limit already refuses the move (and a loop in old data ends there).
    while height <= MAX_CHAIN_DEPTH {
        level = level.iter().filter_map(|id| children.get(id)).flatten().cloned().collect();
        if level.is_empty() {
            break;
        }
        height += 1;
    }
    Ok(height)
}

#[utoipa::path(
    get,
    path = "/v1/operators/{op}/affiliates/{affiliate}",
    tag = "affiliates",
    security(("operator_key" = []), ("admin_token" = [])),
    params(("op" = String, Path), ("affiliate" = String, Path)),
    responses((status = 200, description = "the affiliate", body = Affiliate))
)]
pub async fn get_affiliate(
    State(state): State<Arc<AppState>>,
    Path((op, affiliate)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<Affiliate>, ApiError> {
    let operator = auth::operator(&state, &headers, &op)?;
    if let Some(problem) = affiliate_id_problem(&affiliate) {
        return Err(ApiError::field("affiliate", problem));
    }
    let record = state
        .pipeline
        .store()
        .affiliate(&operator.id, &affiliate)?
        .ok_or_else(|| ApiError::not_found(format!("no affiliate {affiliate:?}")))?;
    Ok(Json(affiliate_json(&record)))
}

fn affiliate_json(record: &AffiliateRecord) -> Affiliate {
    Affiliate { id: record.id.clone(), parent: record.parent.clone(), deal: record.deal.clone() }
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

fn query_flag(query: Option<&str>, name: &str) -> Result<bool, ApiError> {
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

/// `PUT /v1/operators/{op}/limits` (admin): overrides of the host's per-event limits and an
/// events-per-second rate, each checked against what the engine is configured for. A field
/// left out (or null) keeps the host's default.
#[utoipa::path(
    put,
    path = "/v1/operators/{op}/limits",
    tag = "operators",
    security(("admin_token" = [])),
    params(("op" = String, Path)),
    request_body = OperatorLimits,
    responses(
        (status = 200, description = "the limits in force", body = EffectiveLimits),
        (status = 202, description = "`pending`, with `--cluster` only: the change is durable in the cluster's log, but the operator's owner had not applied it within `--cluster-answer-secs`; it will. Sending it again changes nothing twice", body = ErrorSchema),
        (status = 503, description = "`log_unavailable`, with `--cluster` only: the cluster's log did not take the change; nothing was done. Retry after `Retry-After`", body = ErrorSchema),
    )
)]
pub async fn put_limits(
    State(state): State<Arc<AppState>>,
    Path(op): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<EffectiveLimits>, ApiError> {
    auth::require_admin(&state, &headers)?;
    let body = read_body(body, state.limits.json()).await?;
    let limits: OperatorLimits = parse_json(&body)?;
    let ceilings = sandbox::CEILINGS;
    let checks = [
        ("fuel", limits.fuel, ceilings.fuel),
        ("timeout_ms", limits.timeout_ms, ceilings.timeout.as_millis() as u64),
        ("memory_bytes", limits.memory_bytes.map(|v| v as u64), ceilings.memory_bytes as u64),
        ("max_commissions", limits.max_commissions.map(|v| v as u64), ceilings.max_commissions as u64),
        (
            "max_state_write_bytes",
            limits.max_state_write_bytes.map(|v| v as u64),
            ceilings.max_state_write_bytes as u64,
        ),
        ("max_log_lines", limits.max_log_lines.map(|v| v as u64), ceilings.max_log_lines as u64),
        ("events_per_second", limits.events_per_second.map(u64::from), u64::from(u32::MAX)),
        ("stored_bytes", limits.stored_bytes, u64::MAX),
        ("state_bytes", limits.state_bytes, u64::MAX),
    ];
    let problems: Vec<FieldError> = checks
        .into_iter()
        .filter_map(|(field, value, ceiling)| match value {
            Some(value) if value == 0 || value > ceiling => {
                Some(FieldError::new(field, format!("{value} is out of range: 1 to {ceiling}")))
            }
            _ => None,
        })
        .collect();
    if !problems.is_empty() {
        return Err(ApiError::fields("invalid_limits", problems));
    }
    // In the operator's turn: its events queued before are evaluated under the limits before.
    let record =
        state.pipeline.store().operator(&op)?.ok_or_else(|| ApiError::not_found(format!("no operator {op:?}")))?;
    changed(&state, &record, Command::Limits { limits }, &format!("no operator {op:?}")).await?;
    durable(&state).await?;
    let effective = effective_limits(state.pipeline.sandbox_limits(), &limits);
    tracing::info!(operator = %op, ?limits, "operator limits set");
    Ok(Json(EffectiveLimits {
        fuel: effective.fuel,
        timeout_ms: effective.timeout.as_millis() as u64,
        memory_bytes: effective.memory_bytes,
        max_commissions: effective.max_commissions,
        max_state_write_bytes: effective.max_state_write_bytes,
        max_log_lines: effective.max_log_lines,
        events_per_second: limits.events_per_second,
        stored_bytes: limits.stored_bytes,
        state_bytes: limits.state_bytes,
    }))
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateRequest {
    /// How long the values before stay valid: 0 to 2,592,000 (30 days); a day when left out.
    grace_seconds: Option<u64>,
}

const DEFAULT_GRACE_SECONDS: u64 = 24 * 3600;
const MAX_GRACE_SECONDS: u64 = 30 * 24 * 3600;

/// `POST /v1/operators/{op}/credentials/{api_key|postback_token|webhook_secret}/rotate`
/// (admin): issues a new value and keeps the old one valid for a grace period, so the operator
/// can switch its senders over without downtime. Values from earlier rotations stay valid no
/// longer than the new grace: `grace_seconds: 0` revokes every earlier value of the kind.
#[utoipa::path(
    post,
    path = "/v1/operators/{op}/credentials/{kind}/rotate",
    tag = "operators",
    security(("admin_token" = [])),
    params(("op" = String, Path), ("kind" = CredentialKind, Path)),
    request_body(content = Option<RotateRequest>),
    responses((status = 200, description = "the new value, shown this once", body = Rotated))
)]
pub async fn rotate_credential(
    State(state): State<Arc<AppState>>,
    Path((op, kind)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Rotated>, ApiError> {
    auth::require_admin(&state, &headers)?;
    let kind = match kind.as_str() {
        "api_key" => CredentialKind::ApiKey,
        "postback_token" => CredentialKind::PostbackToken,
        "webhook_secret" => CredentialKind::WebhookSecret,
        other => {
            return Err(ApiError::field("kind", format!("{other:?}: one of api_key, postback_token, webhook_secret")));
        }
    };
    let body = read_body(body, state.limits.json()).await?;
    let request: RotateRequest = if body.is_empty() { RotateRequest::default() } else { parse_json(&body)? };
    let grace = request.grace_seconds.unwrap_or(DEFAULT_GRACE_SECONDS);
    if grace > MAX_GRACE_SECONDS {
        return Err(ApiError::field("grace_seconds", format!("at most {MAX_GRACE_SECONDS} (30 days)")));
    }
    let now = now_ms();
    let expires_at = now + (grace as i64) * 1000;
    let fresh = OperatorCredentials::generate();
    let (new_value, stored) = match kind {
        CredentialKind::ApiKey => (fresh.api_key.clone(), sha256_hex(&fresh.api_key)),
        CredentialKind::PostbackToken => (fresh.postback_token.clone(), sha256_hex(&fresh.postback_token)),
        CredentialKind::WebhookSecret => (fresh.webhook_secret.clone(), fresh.webhook_secret.clone()),
    };
    state
        .pipeline
        .store()
        .update_operator(&op, |operator| {
            let slot = match kind {
                CredentialKind::ApiKey => &mut operator.api_key_sha256,
                CredentialKind::PostbackToken => &mut operator.postback_token_sha256,
                CredentialKind::WebhookSecret => &mut operator.webhook_secret,
            };
            let old = std::mem::replace(slot, stored.clone());
            // The grace asked for now bounds every earlier value of this kind too, so a rotation
            // with `grace_seconds: 0` cuts off all of them (a leaked key among them) at once.
            for previous in &mut operator.previous_credentials {
                if previous.kind == kind {
                    previous.expires_at = previous.expires_at.min(expires_at);
                }
            }
            operator.previous_credentials.retain(|previous| previous.expires_at > now);
            if expires_at > now {
                operator.previous_credentials.push(PreviousCredential { kind, value: old, expires_at });
            }
        })?
        .ok_or_else(|| ApiError::not_found(format!("no operator {op:?}")))?;
    durable(&state).await?;
    tracing::info!(operator = %op, ?kind, grace_seconds = grace, "credential rotated");
    Ok(Json(Rotated { kind, value: new_value, previous_valid_until: format_time(expires_at) }))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FxRatesBody {
    /// Units of the operator's currency per unit of each ISO 4217 currency, decimal strings.
    #[schema(value_type = BTreeMap<String, String>)]
    rates: UniqueKeys<String>,
    source: String,
}

/// `PUT /v1/operators/{op}/fx-rates`: the rates (operator-currency units per unit of each other
/// currency) events in other currencies are converted at from now on. Replaces the whole set;
/// events already accepted keep the rate they were converted at.
#[utoipa::path(
    put,
    path = "/v1/operators/{op}/fx-rates",
    tag = "settings",
    security(("operator_key" = []), ("admin_token" = [])),
    params(("op" = String, Path)),
    request_body = FxRatesBody,
    responses((status = 200, description = "the rates in force", body = FxRatesSet))
)]
pub async fn put_fx_rates(
    State(state): State<Arc<AppState>>,
    Path(op): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<FxRatesSet>, ApiError> {
    let operator = auth::operator(&state, &headers, &op)?;
    let body = read_body(body, state.limits.json()).await?;
    let request: FxRatesBody = parse_json(&body)?;
    let mut problems = Vec::new();
    let mut rates = BTreeMap::new();
    for (currency, rate) in request.rates.0 {
        let field = format!("rates.{currency}");
        if iso_currency::Currency::from_code(&currency).is_none() {
            problems.push(FieldError::new(field, format!("{currency:?} is not an ISO 4217 code")));
        } else if currency == operator.currency {
            problems.push(FieldError::new(field, format!("{currency} is the operator's own currency")));
        } else {
            match parse_amount(&rate) {
                Ok(rate) if rate > Decimal::ZERO => {
                    rates.insert(currency, rate);
                }
                Ok(_) => problems.push(FieldError::new(field, "a rate must be above zero")),
                Err(problem) => problems.push(FieldError::new(field, problem)),
            }
        }
    }
    if request.source.trim().is_empty() || request.source.len() > 200 {
        problems.push(FieldError::new("source", "1 to 200 bytes: where the rates come from"));
    }
    if !problems.is_empty() {
        return Err(ApiError::fields("invalid_fx_rates", problems));
    }
    let fx_rates = FxRates { rates, source: request.source, updated_at: now_ms() };
    let operator = state
        .pipeline
        .store()
        .update_operator(&op, |operator| operator.fx_rates = fx_rates.clone())?
        .ok_or_else(|| ApiError::not_found(format!("no operator {op:?}")))?;
    durable(&state).await?;
    Ok(Json(FxRatesSet {
        currency: operator.currency,
        rates: operator.fx_rates.rates,
        source: operator.fx_rates.source,
        updated_at: format_time(operator.fx_rates.updated_at),
    }))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SettingsBody {
    late_events: LateEventPolicy,
}

/// `PUT /v1/operators/{op}/settings` `{"late_events": "adjust" | "refuse" | "as_received"}`: how the operator's
/// events that occurred in a closed period are taken (see [`LateEventPolicy`]).
#[utoipa::path(
    put,
    path = "/v1/operators/{op}/settings",
    tag = "settings",
    security(("operator_key" = []), ("admin_token" = [])),
    params(("op" = String, Path)),
    request_body = SettingsBody,
    responses(
        (status = 200, description = "the settings in force", body = Settings),
        (status = 202, description = "`pending`, with `--cluster` only: the change is durable in the cluster's log, but the operator's owner had not applied it within `--cluster-answer-secs`; it will. Sending it again changes nothing twice", body = ErrorSchema),
        (status = 503, description = "`log_unavailable`, with `--cluster` only: the cluster's log did not take the change; nothing was done. Retry after `Retry-After`", body = ErrorSchema),
    )
)]
pub async fn put_settings(
    State(state): State<Arc<AppState>>,
    Path(op): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Settings>, ApiError> {
    let operator = auth::operator(&state, &headers, &op)?;
    let body = read_body(body, state.limits.json()).await?;
    let request: SettingsBody = parse_json(&body)?;
    // In the operator's turn, ordered with its events like a close.
    let late_events = request.late_events;
    changed(&state, &operator, Command::Settings { late_events }, &format!("no operator {op:?}")).await?;
    durable(&state).await?;
    tracing::info!(operator = %operator.id, ?late_events, "settings changed");
    Ok(Json(Settings { late_events }))
}
