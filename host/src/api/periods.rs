//! `GET /v1/operators/{op}/periods`: each month with events or a close, oldest first, paged like
//! the other listings: closed or open, when it was settled, and what its commissions total per
//! currency. Months are few, but what is in them is not kept by month: the answer is worked from
//! one pass over the operator's events and commissions, off the async threads.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use rust_decimal::Decimal;
use serde::Serialize;

use super::listings::read_query;
use super::{ApiError, AppState, auth};
use crate::amounts::{AmountOverflow, checked_add};
use crate::event::format_time;
use crate::pipeline::restate::latest_closed;
use crate::pipeline::{Period, RESERVED_PREFIX, SETTLEMENT_PREFIX};
use crate::store::{Store, StoreError};

#[derive(Serialize, utoipa::ToSchema)]
pub struct PeriodsPage {
    periods: Vec<PeriodView>,
    /// The `cursor` of the next page; `null` on the last.
    next: Option<String>,
}

/// A month of the operator's ledger.
#[derive(Serialize, utoipa::ToSchema)]
pub struct PeriodView {
    /// `YYYY-MM`, UTC.
    period: String,
    starts_at: String,
    ends_at: String,
    /// `closed` (it and every month before it) or `open`.
    status: String,
    /// When its close settled it; `null` for an open month, or a closed one that had nothing to
    /// settle.
    settled_at: Option<String>,
    /// The operator's events that occurred in it (the host's settlements aside).
    events: u64,
    /// The commissions of events that occurred in it, settlements' included (a late event's
    /// adjustments are dated in the month they were made).
    commissions: u64,
    /// Those commissions' sum per currency.
    totals: Vec<CurrencyTotal>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct CurrencyTotal {
    currency: String,
    #[schema(value_type = String)]
    amount: Decimal,
}

#[derive(Default)]
struct Month {
    settled_at: Option<i64>,
    events: u64,
    commissions: u64,
    totals: BTreeMap<String, Decimal>,
}

/// `GET /v1/operators/{op}/periods`.
#[utoipa::path(
    get,
    path = "/v1/operators/{op}/periods",
    tag = "listings",
    params(
        ("op" = String, Path, description = "The operator's id"),
        ("cursor" = Option<String>, Query, description = "The `next` of the page before (a month, YYYY-MM)"),
        ("limit" = Option<usize>, Query, description = "1 to 1000; 100 by default"),
    ),
    responses(
        (status = 200, description = "A page of months, oldest first", body = PeriodsPage),
        (status = 401, description = "Not the operator's key nor the admin token"),
        (status = 422, description = "A bad parameter, named in `details`; or totals that overflow a decimal"),
    ),
    security(("operator_key" = []), ("admin_token" = [])),
)]
pub async fn periods(
    State(state): State<Arc<AppState>>,
    Path(op): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Json<PeriodsPage>, ApiError> {
    let operator = auth::operator(&state, &headers, &op)?;
    let cursor = |id: &str| Period::parse(id).ok().map(|period| period.id);
    let paging = read_query(query.as_deref(), "", cursor, |_, _, _| false)?;
    let store = state.pipeline.store().clone();
    let (months, latest) = tokio::task::spawn_blocking(move || -> Result<_, ApiError> {
        let months = months(&store, &operator.id)?.map_err(|overflow| super::replay::overflow_error(&overflow))?;
        Ok((months, latest_closed(&store, &operator.id)?))
    })
    .await
    .map_err(ApiError::internal)??;
    let mut after_cursor =
        months.into_iter().filter(|(id, _)| paging.cursor.as_ref().is_none_or(|cursor| id > cursor)).peekable();
    let mut periods = Vec::new();
    while periods.len() < paging.limit
        && let Some((id, month)) = after_cursor.next()
    {
        let Ok(period) = Period::parse(&id) else { continue };
        let closed = latest.as_ref().is_some_and(|latest| id <= *latest);
        periods.push(PeriodView {
            starts_at: format_time(period.starts_at),
            ends_at: format_time(period.ends_at),
            status: if closed { "closed" } else { "open" }.to_owned(),
            settled_at: month.settled_at.map(format_time),
            events: month.events,
            commissions: month.commissions,
            totals: month.totals.into_iter().map(|(currency, amount)| CurrencyTotal { currency, amount }).collect(),
            period: id,
        });
    }
    let next = after_cursor.peek().and(periods.last()).map(|last| last.period.clone());
    Ok(Json(PeriodsPage { periods, next }))
}

/// Every month of the operator's ledger, from one pass over its events and commissions.
fn months(store: &Store, operator: &str) -> Result<Result<BTreeMap<String, Month>, AmountOverflow>, StoreError> {
    let mut months: BTreeMap<String, Month> = BTreeMap::new();
    let month_of = |ms: i64| Period::containing(ms).map(|period| period.id);
    for record in store.all_events(operator) {
        let record = record?;
        if let Some(settled) = record.event.id.strip_prefix(SETTLEMENT_PREFIX) {
            let Some((period, _affiliate)) = settled.split_once(':') else { continue };
            let month = months.entry(period.to_owned()).or_default();
            month.settled_at = month.settled_at.max(Some(record.received_at));
        } else if !record.event.id.starts_with(RESERVED_PREFIX)
            && let Some(id) = month_of(record.event.occurred_at)
        {
            months.entry(id).or_default().events += 1;
        }
    }
    for commission in store.all_commissions(operator) {
        let commission = commission?;
        let Some(id) = month_of(commission.occurred_at) else { continue };
        let month = months.entry(id.clone()).or_default();
        month.commissions += 1;
        let total = month.totals.entry(commission.currency.clone()).or_default();
        if let Err(overflow) = checked_add(total, commission.amount, || {
            format!("total of the commissions of {id} in {}", commission.currency)
        }) {
            return Ok(Err(overflow));
        }
    }
    Ok(Ok(months))
}
