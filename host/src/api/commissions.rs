//! The ledger: `GET /v1/operators/{op}/commissions?affiliate=&customer=&status=&from=&to=&cursor=&limit=`
//! in order, a page at a time (`from`/`to` bound the time the event occurred, RFC 3339 or unix
//! ms, `from` inclusive, `to` exclusive: the time a deal's periods use), or with `Accept:
//! text/csv` or `format=csv` all of them as one streamed CSV; one commission with its status
//! history; and the moves of its status (`pending` -> `approved` -> `paid`, or `rejected`), each
//! kept in an audit trail.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::answers::{CommissionPage, CommissionView, StatusMoved};
use super::events::ingest_error;
use super::export::{self, Format};
use super::openapi::ErrorSchema;
use super::operators::{durable, parse_json, query_params};
use super::{ApiError, AppState, auth, read_body};
use crate::event::{FieldError, affiliate_id_problem, format_time, now_ms, parse_time};
use crate::pipeline::{Command, Done};
use crate::store::records::{CommissionRecord, CommissionStatus, StatusChange, StatusRecord};
use crate::store::{LedgerPosition, MoveOutcome, Store, StoreError, format_cursor, parse_cursor};

pub(super) const DEFAULT_LIMIT: usize = 100;
pub(super) const MAX_LIMIT: usize = 1000;

/// What the listing (and its CSV export) keeps: each filter given must match.
#[derive(Default)]
pub(super) struct CommissionFilter {
    affiliate: Option<String>,
    customer: Option<String>,
    status: Option<CommissionStatus>,
    from: Option<i64>,
    to: Option<i64>,
}

impl CommissionFilter {
    /// Up to `limit` commissions after `after` that pass, with the position to continue from.
    pub(super) fn page(
        &self,
        store: &Store,
        operator: &str,
        after: Option<LedgerPosition>,
        limit: usize,
    ) -> Result<(Vec<CommissionRecord>, Option<LedgerPosition>), StoreError> {
        store.commissions(operator, self.affiliate.as_deref(), after, limit, |c| {
            self.customer.as_ref().is_none_or(|customer| &c.customer == customer)
                && self.from.is_none_or(|from| c.occurred_at >= from)
                && self.to.is_none_or(|to| c.occurred_at < to)
                && self
                    .status
                    .is_none_or(|wanted| store.commission_status(operator, &c.id).is_ok_and(|s| s.status == wanted))
        })
    }
}

/// The listing, as JSON a page at a time, or with `Accept: text/csv` or `?format=csv` as one
/// streamed CSV from `cursor` to the end (at most `limit` rows if given; see [`super::export`]).
#[utoipa::path(
    get,
    path = "/v1/operators/{op}/commissions",
    tag = "commissions",
    security(("operator_key" = []), ("admin_token" = []), ("affiliate_key" = [])),
    params(
        ("op" = String, Path),
        ("affiliate" = Option<String>, Query),
        ("customer" = Option<String>, Query),
        ("status" = Option<CommissionStatus>, Query),
        ("from" = Option<String>, Query, description = "RFC 3339 or unix ms, inclusive: when the event occurred"),
        ("to" = Option<String>, Query, description = "exclusive"),
        ("cursor" = Option<String>, Query, description = "a `next` of an earlier page"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000),
        ("format" = Option<String>, Query, description = "`csv` for one streamed CSV from `cursor` on (or `Accept: text/csv`)"),
    ),
    responses((status = 200, description = "a page, or the CSV export", content(
        (CommissionPage = "application/json"),
        (String = "text/csv"),
    )))
)]
pub async fn list(
    State(state): State<Arc<AppState>>,
    Path(op): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (operator, reader) = auth::reader(&state, &headers, &op)?;
    let mut filter = CommissionFilter::default();
    let (mut cursor, mut limit, mut format) = (None, None, None);
    let mut problems = Vec::new();
    for (key, value) in query_params(query.as_deref())? {
        match key.as_str() {
            "affiliate" => match affiliate_id_problem(&value) {
                None => filter.affiliate = Some(value),
                Some(problem) => problems.push(FieldError::new("affiliate", problem)),
            },
            "customer" => filter.customer = Some(value),
            "status" => match serde_json::from_value::<CommissionStatus>(json!(value)) {
                Ok(wanted) => filter.status = Some(wanted),
                Err(_) => {
                    problems.push(FieldError::new("status", "one of pending, approved, paid, reversed, rejected"))
                }
            },
            "from" | "to" => match parse_time(&value) {
                Ok(ms) if key == "from" => filter.from = Some(ms),
                Ok(ms) => filter.to = Some(ms),
                Err(problem) => problems.push(FieldError::new(&key, problem)),
            },
            "cursor" => match parse_cursor(&value) {
                Some(position) => cursor = Some(position),
                None => problems.push(FieldError::new("cursor", "not a cursor from a `next` of this API")),
            },
            "limit" => match value.parse::<usize>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => limit = Some(n),
                _ => problems.push(FieldError::new("limit", format!("a number from 1 to {MAX_LIMIT}"))),
            },
            "format" => format = Format::read(&value, &mut problems),
            other => problems.push(FieldError::new(
                other,
                "unknown parameter; known: affiliate, customer, status, from, to, cursor, limit, format",
            )),
        }
    }
    if !problems.is_empty() {
        return Err(ApiError::fields("invalid_query", problems));
    }
    filter.affiliate = reader.scope(filter.affiliate)?;
    let store = state.pipeline.store();
    if Format::wanted(format, &headers) == Format::Csv {
        return export::commissions_csv(store.clone(), operator.id, filter, cursor, limit);
    }
    let (commissions, next) = filter.page(store, &operator.id, cursor, limit.unwrap_or(DEFAULT_LIMIT))?;
    let listed = commissions
        .iter()
        .map(|commission| {
            let mut listed = commission_json(commission);
            let status = store.commission_status(&operator.id, &commission.id)?;
            listed["status"] = json!(status.status);
            reversal_fields(&mut listed, &status);
            Ok(listed)
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    Ok(Json(json!({ "commissions": listed, "next": next.map(format_cursor) })).into_response())
}

/// `GET /v1/operators/{op}/commissions/{id}`: the commission, its status and how it got there.
#[utoipa::path(
    get,
    path = "/v1/operators/{op}/commissions/{id}",
    tag = "commissions",
    security(("operator_key" = []), ("admin_token" = []), ("affiliate_key" = [])),
    params(("op" = String, Path), ("id" = String, Path)),
    responses((status = 200, description = "the commission", body = CommissionView))
)]
pub async fn get(
    State(state): State<Arc<AppState>>,
    Path((op, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let (operator, reader) = auth::reader(&state, &headers, &op)?;
    let store = state.pipeline.store();
    // Another affiliate's commission is, to an affiliate key, one that does not exist.
    let commission = store
        .commission(&operator.id, &id)?
        .filter(|commission| reader.sees(&commission.affiliate))
        .ok_or_else(|| ApiError::not_found(format!("no commission {id:?}")))?;
    let status = store.commission_status(&operator.id, &id)?;
    let mut answer = commission_json(&commission);
    answer["status"] = json!(status.status);
    answer["history"] = history_json(&status.history);
    reversal_fields(&mut answer, &status);
    Ok(Json(answer))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StatusMove {
    status: CommissionStatus,
    /// At most 500 bytes, kept in the trail.
    #[serde(default)]
    note: String,
}

/// `POST /v1/operators/{op}/commissions/{id}/status` `{"status": "approved", "note": "..."}`.
/// A move the commission's current status does not allow, or an approval inside its hold
/// period, is a 409 that says why; nothing changes.
#[utoipa::path(
    post,
    path = "/v1/operators/{op}/commissions/{id}/status",
    tag = "commissions",
    security(("operator_key" = []), ("admin_token" = [])),
    params(("op" = String, Path), ("id" = String, Path)),
    request_body = StatusMove,
    responses(
        (status = 200, description = "moved", body = StatusMoved),
        (status = 409, description = "a move its status does not allow, or an approval inside its hold", body = ErrorSchema),
        (status = 202, description = "`pending`, with `--cluster` only: the change is durable in the cluster's log, but the operator's owner had not applied it within `--cluster-answer-secs`; it will", body = ErrorSchema),
        (status = 503, description = "with `--cluster` only: `owner_unavailable` (the node that owns the operator, which answers this, did not answer, or none owns it this moment) or `log_unavailable` (the cluster's log did not take the change). Retry after `Retry-After`", body = ErrorSchema),
    )
)]
pub async fn set_status(
    State(state): State<Arc<AppState>>,
    Path((op, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let operator = auth::operator(&state, &headers, &op)?;
    let body = read_body(body, state.limits.json()).await?;
    let request: StatusMove = parse_json(&body)?;
    if request.note.len() > 500 {
        return Err(ApiError::field("note", "at most 500 bytes"));
    }
    let store = state.pipeline.store();
    let commission =
        store.commission(&operator.id, &id)?.ok_or_else(|| ApiError::not_found(format!("no commission {id:?}")))?;
    let now = now_ms();
    if request.status == CommissionStatus::Approved
        && let Some(hold_until) = commission.hold_until.filter(|until| *until > now)
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "on_hold",
            format!("{id} is on hold until {} (the deal's hold_days)", format_time(hold_until)),
        ));
    }
    let by = if auth::is_admin(&state, &headers) { "admin" } else { "operator" };
    let change =
        StatusChange { status: request.status, at: now, by: by.to_owned(), note: request.note, reference: None };
    // In the operator's turn, so that in a cluster every node's view makes the same move.
    let commissions = store.commission_ref(&operator.id, &id)?.into_iter().collect();
    let moving = Command::MoveCommissions { commissions, change, payout: None };
    let moved = state.pipeline.command(&operator, moving).await.and_then(Done::moved).map_err(ingest_error)?;
    if let MoveOutcome::Moved { refused, .. } = moved
        && let Some((_, refusal)) = refused.into_iter().next()
    {
        return Err(ApiError::new(StatusCode::CONFLICT, "status_transition", format!("{id} {refusal}")));
    }
    durable(&state).await?;
    let record = store.commission_status(&operator.id, &id)?;
    let mut answer = json!({ "id": id, "status": record.status, "history": history_json(&record.history) });
    reversal_fields(&mut answer, &record);
    Ok(Json(answer))
}

/// A commission's status moves as the API gives them: as stored, the time in RFC 3339 like every
/// other time in an answer (the store keeps unix milliseconds).
fn history_json(history: &[StatusChange]) -> Value {
    history
        .iter()
        .map(|change| {
            let mut view = json!(change);
            view["at"] = json!(format_time(change.at));
            view
        })
        .collect()
}

/// How a reversal touched the commission, if one did: `clawed_back` on an original (by which
/// reversal, how much, and what it did: `voided`, `netted`, `deducted`, `nothing_to_claw_back`),
/// `moves_with` on a reversal netted against its unpaid original.
fn reversal_fields(answer: &mut Value, status: &StatusRecord) {
    answer["clawed_back"] = json!(status.clawed_back);
    answer["moves_with"] = json!(status.moves_with);
}

pub fn commission_json(commission: &CommissionRecord) -> Value {
    json!({
        "id": commission.id,
        "event_id": commission.event_id,
        "affiliate": commission.affiliate,
        "customer": commission.customer,
        "amount": commission.amount,
        "currency": commission.currency,
        "rule": commission.rule,
        "explanation": commission.explanation,
        "plugin_version": commission.plugin_version,
        "version_reason": commission.version_reason,
        "occurred_at": format_time(commission.occurred_at),
        "created_at": format_time(commission.created_at),
        "hold_until": commission.hold_until.map(format_time),
        "reverses": commission.reverses,
        "restates": commission.restates,
        "fx_rate": commission.fx_rate,
        "unrounded_amount": commission.unrounded_amount,
    })
}
