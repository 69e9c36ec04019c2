//! `GET /v1/operators/{op}/commissions?affiliate=&customer=&from=&to=&cursor=&limit=`: the
//! ledger in order, a page at a time. `from`/`to` bound the time the event occurred (RFC 3339
//! or unix ms; `from` inclusive, `to` exclusive), which is the time a deal's periods use.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use serde_json::{Value, json};

use super::{ApiError, AppState, auth};
use crate::event::{FieldError, format_time, parse_time};
use crate::store::records::CommissionRecord;
use crate::store::{format_cursor, parse_cursor};

const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;

pub async fn list(
    State(state): State<Arc<AppState>>,
    Path(op): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let operator = auth::operator(&state, &headers, &op)?;
    let (mut affiliate, mut customer, mut from, mut to, mut cursor, mut limit) =
        (None, None, None, None, None, DEFAULT_LIMIT);
    let mut problems = Vec::new();
    for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        let value = value.into_owned();
        match key.as_ref() {
            "affiliate" => affiliate = Some(value),
            "customer" => customer = Some(value),
            "from" | "to" => match parse_time(&value) {
                Ok(ms) if key == "from" => from = Some(ms),
                Ok(ms) => to = Some(ms),
                Err(problem) => problems.push(FieldError::new(key, problem)),
            },
            "cursor" => match parse_cursor(&value) {
                Some(position) => cursor = Some(position),
                None => problems.push(FieldError::new("cursor", "not a cursor from a `next` of this API")),
            },
            "limit" => match value.parse::<usize>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => limit = n,
                _ => problems.push(FieldError::new("limit", format!("a number from 1 to {MAX_LIMIT}"))),
            },
            other => problems
                .push(FieldError::new(other, "unknown parameter; known: affiliate, customer, from, to, cursor, limit")),
        }
    }
    if !problems.is_empty() {
        return Err(ApiError::fields("invalid_query", problems));
    }
    let (commissions, next) =
        state.pipeline.store().commissions(&operator.id, affiliate.as_deref(), cursor, limit, |c| {
            customer.as_ref().is_none_or(|customer| &c.customer == customer)
                && from.is_none_or(|from| c.occurred_at >= from)
                && to.is_none_or(|to| c.occurred_at < to)
        })?;
    Ok(Json(json!({
        "commissions": commissions.iter().map(commission_json).collect::<Vec<_>>(),
        "next": next.map(format_cursor),
    })))
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
        "occurred_at": format_time(commission.occurred_at),
        "created_at": format_time(commission.created_at),
        "reverses": commission.reverses,
    })
}
