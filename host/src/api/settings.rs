//! An operator's settings: its limits (admin), credentials (rotation with a grace period), FX
//! rates and late-event policy. Those the sequencer must order with events (limits, settings)
//! go through the operator's queue as commands.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use rust_decimal::Decimal;
use serde::Deserialize;

use super::answers::{EffectiveLimits, FxRatesSet, Rotated, Settings};
use super::openapi::ErrorSchema;
use super::{ApiError, AppState, auth, read_body};
use crate::event::{FieldError, UniqueKeys, format_time, now_ms, parse_amount};
use crate::pipeline::{Command, effective_limits};
use crate::sandbox;
use crate::secrets::{OperatorCredentials, sha256_hex};
use crate::store::records::{CredentialKind, FxRates, LateEventPolicy, OperatorLimits};

use super::operators::{changed, durable, parse_json};

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
    responses(
        (status = 200, description = "the new value, shown this once", body = Rotated),
        (status = 202, description = "`pending`, with `--cluster` only: the change is durable in the cluster's log, but the operator's owner had not applied it within `--cluster-answer-secs`; it will, and the value this rotation made is lost: rotate again", body = ErrorSchema),
        (status = 503, description = "`log_unavailable`, with `--cluster` only: the cluster's log did not take the change; nothing was done. Retry after `Retry-After`", body = ErrorSchema),
    )
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
    let operator =
        state.pipeline.store().operator(&op)?.ok_or_else(|| ApiError::not_found(format!("no operator {op:?}")))?;
    // A command, so that in a cluster every node's view takes the new value at the same place.
    let rotate = Command::RotateCredential { kind, stored, now, expires_at };
    changed(&state, &operator, rotate, &format!("no operator {op:?}")).await?;
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
    responses(
        (status = 200, description = "the rates in force", body = FxRatesSet),
        (status = 202, description = "`pending`, with `--cluster` only: the change is durable in the cluster's log, but the operator's owner had not applied it within `--cluster-answer-secs`; it will. Sending it again changes nothing twice", body = ErrorSchema),
    )
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
    // In the operator's order: the events before it convert at the old rates, those after at
    // these (in a cluster, on every node alike).
    let fx_rates = FxRates { rates, source: request.source, updated_at: now_ms() };
    let change = Command::FxRates { fx_rates: fx_rates.clone() };
    changed(&state, &operator, change, &format!("no operator {op:?}")).await?;
    Ok(Json(FxRatesSet {
        currency: operator.currency,
        rates: fx_rates.rates,
        source: fx_rates.source,
        updated_at: format_time(fx_rates.updated_at),
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
