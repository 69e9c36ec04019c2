//! `GET /v1/operators/{op}/periods/{YYYY-MM}/statement[?affiliate=A]`: what each affiliate was
//! paid for a closed period and why, recomputed from the stored events (see [`crate::restate`]).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use serde_json::{Value, json};

use super::answers::PeriodStatement;
use super::commissions::commission_json;
use super::operators::query_params;
use super::{ApiError, AppState, auth};
use crate::event::{FieldError, affiliate_id_problem};
use crate::pipeline::{Period, SETTLEMENT_PREFIX};
use crate::restate::{AffiliateStatement, StatementView};

/// Per affiliate: the statement as closed (recomputed, and whether it equals the one stored at
/// the close), the statement restated with late events in place, and what was paid: the
/// settlement at the close, the adjustments since, and their total per rule and currency.
#[utoipa::path(
    get,
    path = "/v1/operators/{op}/periods/{period}/statement",
    tag = "periods",
    security(("operator_key" = []), ("admin_token" = [])),
    params(
        ("op" = String, Path),
        ("period" = String, Path, pattern = r"^[0-9]{4}-[0-9]{2}$", description = "YYYY-MM"),
        ("affiliate" = Option<String>, Query, description = "only this affiliate's statement"),
    ),
    responses((status = 200, description = "the period's statements", body = PeriodStatement))
)]
pub async fn statement(
    State(state): State<Arc<AppState>>,
    Path((op, period)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let operator = auth::operator(&state, &headers, &op)?;
    let period = Period::parse(&period).map_err(|problem| ApiError::field("period", problem))?;
    let mut affiliate = None;
    let mut problems = Vec::new();
    for (key, value) in query_params(query.as_deref())? {
        match key.as_str() {
            "affiliate" => match affiliate_id_problem(&value) {
                None => affiliate = Some(value),
                Some(problem) => problems.push(FieldError::new("affiliate", problem)),
            },
            other => problems.push(FieldError::new(other, "unknown parameter; known: affiliate")),
        }
    }
    if !problems.is_empty() {
        return Err(ApiError::fields("invalid_query", problems));
    }
    let store = state.pipeline.store();
    let settlements = store.settlement_ids(&operator.id, SETTLEMENT_PREFIX, Some(&period.id))?;
    if settlements.is_empty() {
        return Err(ApiError::not_found(format!(
            "{} is not closed: close it with POST /v1/operators/{}/periods/{}/close",
            period.id, operator.id, period.id
        )));
    }
    if let Some(affiliate) = &affiliate
        && !settlements.contains(&period.settlement_id(affiliate))
    {
        return Err(ApiError::not_found(format!("affiliate {affiliate:?} has no settlement for {}", period.id)));
    }
    let pipeline = state.pipeline.clone();
    let slots = pipeline.replay_slots(&operator.id).await;
    let answer = tokio::task::spawn_blocking(move || -> Result<Value, ApiError> {
        let _slots = slots;
        let error = super::replay::replay_error;
        let as_closed = pipeline.period_statements(&operator, &period, StatementView::AsClosed).map_err(error)?;
        let restated = pipeline.period_statements(&operator, &period, StatementView::Restated).map_err(error)?;
        let paid = pipeline.period_paid(&operator, &period).map_err(error)?;
        let store = pipeline.store();
        let mut affiliates = Vec::new();
        for (id, closed) in as_closed {
            if affiliate.as_ref().is_some_and(|wanted| *wanted != id) {
                continue;
            }
            let stored: Option<AffiliateStatement> = store.statement(&operator.id, &period.id, &id)?;
            let settlement_paid = paid.get(&period.settlement_id(&id));
            let at_close = settlement_paid.map(|paid| paid.at_close.iter().map(commission_json).collect::<Vec<_>>());
            let adjustments =
                settlement_paid.map(|paid| paid.adjustments.iter().map(commission_json).collect::<Vec<_>>());
            let totals: Vec<Value> = settlement_paid
                .map(|paid| paid.totals())
                .transpose()
                .map_err(|overflow| super::replay::overflow_error(&overflow))?
                .unwrap_or_default()
                .into_iter()
                .map(|((affiliate, rule, currency), amount)| {
                    json!({"affiliate": affiliate, "rule": rule, "currency": currency, "amount": amount})
                })
                .collect();
            affiliates.push(json!({
                "affiliate": id,
                "stored_at_close": match &stored {
                    None => "missing",
                    Some(stored) if *stored == closed => "matches",
                    Some(_) => "differs",
                },
                "as_closed": closed,
                "restated": restated.get(&id),
                "paid": {
                    "at_close": at_close.unwrap_or_default(),
                    "adjustments": adjustments.unwrap_or_default(),
                    "total": totals,
                },
            }));
        }
        Ok(json!({ "period": period.id, "affiliates": affiliates }))
    })
    .await
    .map_err(ApiError::internal)??;
    Ok(Json(answer))
}
