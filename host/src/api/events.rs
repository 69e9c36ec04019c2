//! Ingestion (webhook and postback), the retry of failed events, and the view of one event.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};

use super::answers::{EventOutcomeView, EventView, IdConflict, PeriodClosed, WebhookAnswer, WebhookBody};
use super::commissions::commission_json;
use super::openapi::ErrorSchema;
use super::rate_limit::Verdict;
use super::{ApiError, AppState, auth, read_body};
use crate::event::{self, BodyError, IncomingEvent, format_time, now_ms};
use crate::metrics::OperatorLabels;
use crate::pipeline::{Disposition, EventOutcome, IngestError, Period};
use crate::secrets;
use crate::store::records::{CredentialKind, EventRecord, OperatorRecord};

/// `POST /v1/operators/{op}/events`: one event object, or an array of them.
#[utoipa::path(
    post,
    path = "/v1/operators/{op}/events",
    tag = "events",
    security(("operator_key" = []), ("webhook_signature" = [])),
    // The signature's three headers are the `webhook_signature` credential's, described there.
    params(("op" = String, Path)),
    request_body = WebhookBody,
    responses(
        (status = 200, description = "each event's outcome", body = WebhookAnswer),
        (status = 403, description = "`quota_exceeded`: the operator is at its quota of stored bytes", body = ErrorSchema),
        (status = 409, description = "an event id already used with other content", body = IdConflict),
        (status = 202, description = "`pending`, with `--cluster` only: the events are durable in the cluster's log, but the operator's owner had not committed them within `--cluster-answer-secs`; the message names each event's URL. Read them there or send the request again (`duplicate` once committed)", body = ErrorSchema),
        (status = 503, description = "`log_unavailable`, with `--cluster` only: the cluster's log did not take the events; nothing was acknowledged. Retry after `Retry-After`", body = ErrorSchema),
    )
)]
pub async fn webhook(
    State(state): State<Arc<AppState>>,
    Path(op): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    // Credentials before the body, as far as they go: an operator key is a header; a signature
    // needs the body, but its headers and their time are checked first.
    let (operator, body) = if headers.contains_key("webhook-signature") {
        check_signature_headers(&headers)?;
        let body = read_body(body, state.limits.json()).await?;
        (signed_operator(&state, &headers, &op, &body)?, body)
    } else {
        let operator = auth::operator(&state, &headers, &op)?;
        (operator, read_body(body, state.limits.json()).await?)
    };
    let (events, is_batch) =
        event::parse_webhook(&body, &operator.currency, now_ms()).map_err(|error| match error {
            BodyError::Syntax(message) => ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", message),
            BodyError::Fields(problems) => ApiError::fields("invalid_event", problems),
        })?;
    rate_limit(&state, &operator, events.len())?;
    let outcomes = ingest(&state, &operator, events).await?;
    if is_batch {
        return Ok((StatusCode::OK, Json(json!({ "results": outcomes.iter().map(outcome_json).collect::<Vec<_>>() }))));
    }
    let outcome = &outcomes[0];
    let status = if outcome.disposition == Disposition::Conflict { StatusCode::CONFLICT } else { StatusCode::OK };
    Ok((status, Json(outcome_json(outcome))))
}

/// `GET /postback/{op}?token=...&type=...&id=...&customer=...`
#[utoipa::path(
    get,
    path = "/postback/{op}",
    tag = "events",
    security(("postback_token" = [])),
    params(
        ("op" = String, Path),
        ("id" = String, Query, description = "the operator's transaction id"),
        ("type" = String, Query),
        ("customer" = String, Query),
        ("amount" = Option<String>, Query, description = "a decimal string"),
        ("currency" = Option<String>, Query),
        ("affiliate" = Option<String>, Query),
        ("occurred_at" = Option<String>, Query, description = "RFC 3339 or unix milliseconds"),
    ),
    description = "One event as query parameters; every other parameter becomes an attribute.",
    responses(
        (status = 200, description = "the event's outcome", body = EventOutcomeView),
        (status = 403, description = "`quota_exceeded`", body = ErrorSchema),
        (status = 409, description = "the id was already used with other content", body = IdConflict),
        (status = 202, description = "`pending`, with `--cluster` only: the events are durable in the cluster's log, but the operator's owner had not committed them within `--cluster-answer-secs`; the message names each event's URL. Read them there or send the request again (`duplicate` once committed)", body = ErrorSchema),
        (status = 503, description = "`log_unavailable`, with `--cluster` only: the cluster's log did not take the events; nothing was acknowledged. Retry after `Retry-After`", body = ErrorSchema),
    )
)]
pub async fn postback(
    State(state): State<Arc<AppState>>,
    Path(op): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let query = query.unwrap_or_default();
    let token = form_urlencoded::parse(query.as_bytes())
        .find(|(key, _)| key == "token")
        .map(|(_, token)| token.into_owned())
        .ok_or_else(|| ApiError::unauthorized("missing the `token` query parameter (the operator's postback token)"))?;
    let operator = state
        .pipeline
        .store()
        .operator(&op)?
        .filter(|operator| auth::holds(operator, CredentialKind::PostbackToken, &token))
        .ok_or_else(|| ApiError::unauthorized(format!("the token is not the postback token of operator {op:?}")))?;
    let (incoming, _) = event::parse_postback(&query, &operator.currency, now_ms())
        .map_err(|problems| ApiError::fields("invalid_event", problems))?;
    rate_limit(&state, &operator, 1)?;
    let outcomes = ingest(&state, &operator, vec![incoming]).await?;
    let outcome = &outcomes[0];
    let status = if outcome.disposition == Disposition::Conflict { StatusCode::CONFLICT } else { StatusCode::OK };
    Ok((status, Json(outcome_json(outcome))))
}

/// `POST /v1/operators/{op}/periods/{YYYY-MM}/close`: settles the month for every affiliate.
#[utoipa::path(
    post,
    path = "/v1/operators/{op}/periods/{period}/close",
    tag = "periods",
    security(("operator_key" = []), ("admin_token" = [])),
    params(("op" = String, Path), ("period" = String, Path, pattern = r"^[0-9]{4}-[0-9]{2}$", description = "YYYY-MM, a month that has ended")),
    responses(
        (status = 200, description = "each affiliate's settlement", body = PeriodClosed),
        (status = 409, description = "an event id conflict while settling", body = ErrorSchema),
        (status = 202, description = "`pending`, with `--cluster` only: the command is durable in the cluster's log, but the operator's owner had not run it within `--cluster-answer-secs`; it will. Sending it again changes nothing twice", body = ErrorSchema),
        (status = 503, description = "`log_unavailable`, with `--cluster` only: the cluster's log did not take the command; nothing was done. Retry after `Retry-After`", body = ErrorSchema),
    )
)]
pub async fn close_period(
    State(state): State<Arc<AppState>>,
    Path((op, period)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let operator = auth::operator(&state, &headers, &op)?;
    let period = Period::parse(&period).map_err(|problem| ApiError::field("period", problem))?;
    if period.ends_at > now_ms() {
        return Err(ApiError::field("period", format!("{} has not ended yet", period.id)));
    }
    let outcomes = state.pipeline.close_period(&operator, &period).await.map_err(ingest_error)?;
    let settlements: Vec<Value> = outcomes
        .iter()
        .map(|outcome| {
            let mut answer = outcome_json(outcome);
            answer["affiliate"] = json!(outcome.record.attributed_to);
            answer
        })
        .collect();
    Ok(Json(json!({ "period": period.id, "settlements": settlements })))
}

/// Evaluates the failed events again with the active plugin.
#[utoipa::path(
    post,
    path = "/v1/operators/{op}/events/retry-failed",
    tag = "events",
    security(("operator_key" = []), ("admin_token" = [])),
    params(("op" = String, Path)),
    responses(
        (status = 200, description = "what the retry did", body = crate::pipeline::RetryReport),
        (status = 202, description = "`pending`, with `--cluster` only: the command is durable in the cluster's log, but the operator's owner had not run it within `--cluster-answer-secs`; it will. Sending it again changes nothing twice", body = ErrorSchema),
        (status = 503, description = "`log_unavailable`, with `--cluster` only: the cluster's log did not take the command; nothing was done. Retry after `Retry-After`", body = ErrorSchema),
    )
)]
pub async fn retry_failed(
    State(state): State<Arc<AppState>>,
    Path(op): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let operator = auth::operator(&state, &headers, &op)?;
    let report = state.pipeline.retry_failed(&operator).await.map_err(ingest_error)?;
    Ok(Json(serde_json::to_value(report).map_err(ApiError::internal)?))
}

/// One event: its status, attribution, chain and deal terms, plugin version, logs, commissions.
#[utoipa::path(
    get,
    path = "/v1/operators/{op}/events/{id}",
    tag = "events",
    security(("operator_key" = []), ("admin_token" = [])),
    params(("op" = String, Path), ("id" = String, Path)),
    responses((status = 200, description = "the event", body = EventView))
)]
pub async fn get_event(
    State(state): State<Arc<AppState>>,
    Path((op, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let operator = auth::operator(&state, &headers, &op)?;
    let store = state.pipeline.store();
    let record = store.event(&operator.id, &id)?.ok_or_else(|| ApiError::not_found(format!("no event {id:?}")))?;
    let commissions = store.commission_records(&operator.id, &record.commission_ids)?;
    Ok(Json(event_json(&record, commissions.iter().map(commission_json).collect())))
}

fn rate_limit(state: &AppState, operator: &OperatorRecord, events: usize) -> Result<(), ApiError> {
    match state.rate_limits.check(operator, events) {
        Verdict::Allowed => Ok(()),
        Verdict::Refused { per_second, retry_after } => {
            state
                .pipeline
                .metrics()
                .rate_limited
                .get_or_create(&OperatorLabels { operator: operator.id.clone() })
                .inc();
            Err(ApiError::rate_limited(
                format!(
                    "operator {:?} may send {per_second} events per second; {events} more now is over it. Nothing was written; retry after the Retry-After seconds",
                    operator.id
                ),
                retry_after,
            ))
        }
    }
}

async fn ingest(
    state: &AppState,
    operator: &OperatorRecord,
    events: Vec<IncomingEvent>,
) -> Result<Vec<EventOutcome>, ApiError> {
    state.pipeline.ingest(operator, events).await.map_err(ingest_error)
}

pub(super) fn ingest_error(error: IngestError) -> ApiError {
    match error {
        IngestError::Conflict(ids) => ApiError::new(
            StatusCode::CONFLICT,
            "event_id_conflict",
            format!(
                "event ids already used with other content: {}. An id names one event forever; nothing of this request was written",
                ids.join(", ")
            ),
        ),
        IngestError::Invalid(problems) => ApiError::fields("invalid_event", problems),
        IngestError::Storage(error) => error.into(),
        IngestError::QuotaExceeded { operator, event, refused } => {
            ApiError::quota_exceeded(&operator, event.as_deref(), refused)
        }
        IngestError::QueueFull { operator, queued, capacity } => ApiError::queue_full(&operator, queued, capacity),
        IngestError::NotDurable(error) => ApiError::unavailable(error),
        // The cluster's answer past its deadline: the events are durable, not yet committed.
        IngestError::Pending { operator, events } if events.is_empty() => ApiError::new(
            StatusCode::ACCEPTED,
            "pending",
            format!(
                "the cluster's log holds the command durably, but operator {operator:?}'s owner had not run it within \
                 the answer's deadline; it will. Sending it again changes nothing twice"
            ),
        ),
        IngestError::Pending { operator, events } => ApiError::new(
            StatusCode::ACCEPTED,
            "pending",
            format!(
                "the cluster's log holds these events durably, but operator {operator:?}'s owner had not committed \
                 them within the answer's deadline; it will. Read each at {}, or send the request again: an event \
                 already committed answers `duplicate`",
                events.iter().map(|id| format!("/v1/operators/{operator}/events/{id}")).collect::<Vec<_>>().join(", ")
            ),
        ),
        IngestError::LogUnavailable(problem) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "log_unavailable",
            format!("the cluster's log did not take the request ({problem}); nothing was acknowledged, retry later"),
        )
        .with_retry_after(std::time::Duration::from_secs(1)),
        IngestError::Overflow(error) => super::replay::overflow_error(&error),
        IngestError::Internal(message) => ApiError::internal(message),
    }
}

/// A webhook secret no operator has: an unknown operator's signature is checked against it, so
/// that it is refused after the same work and with the same answer as a wrong signature.
const NO_OPERATOR_SECRET: &str = "whsec_bm8gb3BlcmF0b3IgaGFzIHRoaXMgc2VjcmV0IQ==";

/// The signature's headers (presence, time): what can be checked before the body is read.
fn check_signature_headers(headers: &HeaderMap) -> Result<(), ApiError> {
    let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
    secrets::check_webhook_headers(
        header("webhook-id"),
        header("webhook-timestamp"),
        header("webhook-signature"),
        now_ms() / 1000,
    )
    .map(|_| ())
    .map_err(signature_refused)
}

/// The operator whose webhook secret (current, or rotated out and in its grace period) signed
/// `body`. An unknown operator gets the answer of a wrong signature: the answers do not tell
/// which operators exist.
fn signed_operator(state: &AppState, headers: &HeaderMap, op: &str, body: &[u8]) -> Result<OperatorRecord, ApiError> {
    let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
    let operator = state.pipeline.store().operator(op)?;
    let candidates: Vec<&str> = match &operator {
        Some(operator) => operator.valid_credentials(CredentialKind::WebhookSecret, now_ms()).collect(),
        None => vec![NO_OPERATOR_SECRET],
    };
    let verdicts: Vec<_> = candidates
        .into_iter()
        .map(|secret| {
            secrets::verify_webhook(
                secret,
                header("webhook-id"),
                header("webhook-timestamp"),
                header("webhook-signature"),
                body,
                now_ms() / 1000,
            )
        })
        .collect();
    match (operator, verdicts.iter().any(Result::is_ok)) {
        (Some(operator), true) => Ok(operator),
        (None, _) => Err(signature_refused(secrets::SignatureError::Mismatch)),
        // The current secret's refusal says why.
        (Some(_), false) => {
            Err(signature_refused(verdicts.into_iter().find_map(Result::err).expect("no verdict was Ok")))
        }
    }
}

fn signature_refused(error: secrets::SignatureError) -> ApiError {
    ApiError::unauthorized(format!("webhook signature refused: {error}"))
}

fn outcome_json(outcome: &EventOutcome) -> Value {
    let record = &outcome.record;
    let mut answer = json!({
        "id": record.event.id,
        "status": outcome.disposition,
        "attributed_to": record.attributed_to,
        "commissions": outcome.commissions.iter().map(|c| {
            let mut commission = json!({
                "id": c.id,
                "affiliate": c.affiliate,
                "amount": c.amount,
                "currency": c.currency,
                "rule": c.rule,
                "explanation": c.explanation,
            });
            // A late event's adjustments say which closed period they restate.
            if let Some(restates) = &c.restates {
                commission["restates"] = json!(restates);
            }
            // The plugin's own figure, where the host rounded it to the currency's minor units.
            if let Some(unrounded) = c.unrounded_amount {
                commission["unrounded_amount"] = json!(unrounded);
            }
            commission
        }).collect::<Vec<_>>(),
    });
    if let Some(failure) = &record.failure {
        answer["failure"] = json!(failure);
    }
    answer
}

fn event_json(record: &EventRecord, commissions: Vec<Value>) -> Value {
    let event = &record.event;
    json!({
        "id": event.id,
        "type": event.kind,
        "customer": event.customer,
        "occurred_at": format_time(event.occurred_at),
        "amount": event.amount,
        "currency": event.currency,
        "affiliate": event.affiliate,
        "attributes": event.attributes,
        "fx": event.fx.as_ref().map(|fx| {
            let mut view = json!(fx);
            view["rates_updated_at"] = json!(format_time(fx.rates_updated_at));
            view
        }),
        "received_at": format_time(record.received_at),
        "status": record.status,
        "failure": record.failure,
        "attempts": record.attempts,
        "attributed_to": record.attributed_to,
        "plugin_version": record.evaluation.as_ref().map(|e| e.plugin_version),
        "version_reason": record.evaluation.as_ref().map(|e| &e.version_reason),
        "referral_chain": record.evaluation.as_ref().map(|e| &e.chain),
        "fuel_used": record.evaluation.as_ref().map(|e| e.fuel_used),
        "logs": record.evaluation.as_ref().map(|e| &e.logs),
        "commissions": commissions,
    })
}
