//! `GET /v1/operators/{op}/periods/{YYYY-MM}/statement[?affiliate=A]`: what each affiliate was
//! paid for a closed period and why, recomputed from the stored events (see [`crate::pipeline::statements`]);
//! with `Accept: text/csv` or `format=csv`, what it paid as CSV (see [`super::export`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::answers::PeriodStatement;
use super::commissions::commission_json;
use super::export::{self, Format};
use super::operators::query_params;
use super::{ApiError, AppState, auth};
use crate::event::{FieldError, affiliate_id_problem};
use crate::pipeline::statements::{PagedStatement, StatementView};
use crate::pipeline::{Period, Pipeline, SETTLEMENT_PREFIX};
use crate::store::records::OperatorRecord;

/// Lines of each statement given when `lines_limit` is not: a page an affiliate's portal shows.
const DEFAULT_LINES: u64 = 1000;
/// The most lines of each statement one answer gives: a month of a million events is read a
/// page at a time, not in one answer.
const MAX_LINES: u64 = 10_000;

/// Which of each statement's lines an answer gives.
#[derive(Clone, Copy)]
struct LinePage {
    from: u64,
    limit: u64,
}

/// Per affiliate: the statement as closed (recomputed, and whether it equals the one stored at
/// the close), the statement restated with late events in place, and what was paid: the
/// settlement at the close, the adjustments since, and their total per rule and currency.
#[utoipa::path(
    get,
    path = "/v1/operators/{op}/periods/{period}/statement",
    tag = "periods",
    security(("operator_key" = []), ("admin_token" = []), ("affiliate_key" = [])),
    params(
        ("op" = String, Path),
        ("period" = String, Path, pattern = r"^[0-9]{4}-[0-9]{2}$", description = "YYYY-MM"),
        ("affiliate" = Option<String>, Query, description = "only this affiliate's statement"),
        ("format" = Option<String>, Query, description = "`csv` for what the month paid as CSV (or `Accept: text/csv`)"),
        ("recompute" = Option<bool>, Query, description = "`true`: recompute the statement as closed from the ledger and compare it with the stored one"),
        ("lines_from" = Option<u64>, Query, description = "the first line of each statement to give, from 0 (default 0); `line_count` says how many there are"),
        ("lines_limit" = Option<u64>, Query, description = "at most this many lines of each statement (default 1000, at most 10000; 0 for none)"),
    ),
    responses((status = 200, description = "the period's statements, or what it paid as CSV", content(
        (PeriodStatement = "application/json"),
        (String = "text/csv"),
    )))
)]
pub async fn statement(
    State(state): State<Arc<AppState>>,
    Path((op, period)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (operator, reader) = auth::reader(&state, &headers, &op)?;
    let period = Period::parse(&period).map_err(|problem| ApiError::field("period", problem))?;
    let (mut affiliate, mut format, mut recompute) = (None, None, false);
    let mut lines = LinePage { from: 0, limit: DEFAULT_LINES };
    let mut problems = Vec::new();
    for (key, value) in query_params(query.as_deref())? {
        match key.as_str() {
            "affiliate" => match affiliate_id_problem(&value) {
                None => affiliate = Some(value),
                Some(problem) => problems.push(FieldError::new("affiliate", problem)),
            },
            "format" => format = Format::read(&value, &mut problems),
            "recompute" => match value.parse() {
                Ok(value) => recompute = value,
                Err(_) => problems.push(FieldError::new("recompute", "true or false")),
            },
            "lines_from" => match value.parse() {
                Ok(from) => lines.from = from,
                Err(_) => problems.push(FieldError::new("lines_from", "a whole number of lines, from 0")),
            },
            "lines_limit" => match value.parse() {
                Ok(limit) if limit <= MAX_LINES => lines.limit = limit,
                _ => {
                    problems.push(FieldError::new("lines_limit", format!("a whole number of lines, 0 to {MAX_LINES}")))
                }
            },
            other => problems.push(FieldError::new(
                other,
                "unknown parameter; known: affiliate, format, recompute, lines_from, lines_limit",
            )),
        }
    }
    if !problems.is_empty() {
        return Err(ApiError::fields("invalid_query", problems));
    }
    let affiliate = reader.scope(affiliate)?;
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
    let slots = pipeline.replay_slots().await;
    if Format::wanted(format, &headers) == Format::Csv {
        let filename = format!("{}-{}-statement.csv", operator.id, period.id);
        let csv = tokio::task::spawn_blocking(move || {
            let _slots = slots;
            paid_csv(&pipeline, &operator, &period, affiliate.as_deref(), &reader)
        })
        .await
        .map_err(ApiError::internal)??;
        return Ok(export::csv_response(Body::from(csv), &filename));
    }
    let answer = tokio::task::spawn_blocking(move || -> Result<Value, ApiError> {
        let _slots = slots;
        let error = super::replay::replay_error;
        let page = |statement: PagedStatement| {
            statement.page(&pipeline, &operator, &period, lines.from, lines.limit).map_err(error)
        };
        // From storage (a key read per affiliate, and its page of lines), unless asked to
        // recompute or not stored.
        let stored_closed = match recompute {
            true => None,
            false => stored_statements(&pipeline, &operator, &period, affiliate.as_deref())?,
        };
        // Recomputed, each with what was stored at the close (all its lines: to compare).
        let mut recomputed = BTreeMap::new();
        if stored_closed.is_none() {
            for (id, closed) in
                pipeline.period_statements(&operator, &period, StatementView::AsClosed).map_err(error)?
            {
                if affiliate.as_ref().is_some_and(|wanted| *wanted != id) {
                    continue;
                }
                let whole = |statement: PagedStatement| {
                    statement.page(&pipeline, &operator, &period, 0, u64::MAX).map_err(error)
                };
                let closed = whole(PagedStatement::in_hand(closed))?;
                let stored =
                    pipeline.stored_statement(&operator, &period, &id).map_err(error)?.map(whole).transpose()?;
                let compared = match stored {
                    None => "missing",
                    Some(stored) if stored == closed => "matches",
                    Some(_) => "differs",
                };
                recomputed.insert(id, (compared, PagedStatement::in_hand(closed)));
            }
        }
        let as_closed: Vec<(String, &str, PagedStatement)> = match stored_closed {
            Some(stored) => stored.into_iter().map(|(id, statement)| (id, "stored", statement)).collect(),
            None => recomputed.into_iter().map(|(id, (compared, statement))| (id, compared, statement)).collect(),
        };
        let mut restated =
            match pipeline.restated_statements(&operator, &period, affiliate.as_deref()).map_err(error)? {
                Some(restated) => restated,
                None => pipeline
                    .period_statements(&operator, &period, StatementView::Restated)
                    .map_err(error)?
                    .into_iter()
                    .map(|(id, statement)| (id, PagedStatement::in_hand(statement)))
                    .collect(),
            };
        let paid = match pipeline.period_paid_from_books(&operator, &period).map_err(error)? {
            Some(paid) => paid,
            None => pipeline.period_paid(&operator, &period).map_err(error)?,
        };
        let mut affiliates = Vec::new();
        for (id, compared, closed) in as_closed {
            let closed = page(closed)?;
            let restated = restated.remove(&id).map(page).transpose()?;
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
            let mut entry = json!({
                "affiliate": id,
                "stored_at_close": compared,
                "as_closed": closed,
                "restated": restated,
                "paid": {
                    "at_close": at_close.unwrap_or_default(),
                    "adjustments": adjustments.unwrap_or_default(),
                    "total": totals,
                },
            });
            if let auth::Reader::Affiliate(own) = &reader {
                affiliate_view(&mut entry, own);
            }
            affiliates.push(entry);
        }
        Ok(json!({ "period": period.id, "affiliates": affiliates }))
    })
    .await
    .map_err(ApiError::internal)??;
    Ok(Json(answer).into_response())
}

/// The statements stored at the close, for `affiliate` or every affiliate settled, their lines
/// left in storage: `None` if any is not stored (a month closed before statements were kept).
fn stored_statements(
    pipeline: &Pipeline,
    operator: &OperatorRecord,
    period: &Period,
    affiliate: Option<&str>,
) -> Result<Option<BTreeMap<String, PagedStatement>>, ApiError> {
    let store = pipeline.store();
    let mut statements = BTreeMap::new();
    for id in store.settlement_ids(&operator.id, SETTLEMENT_PREFIX, Some(&period.id))? {
        let Some(settled) = id.strip_prefix(&period.settlement_id("")) else { continue };
        if affiliate.is_some_and(|wanted| wanted != settled) {
            continue;
        }
        match pipeline.stored_statement(operator, period, settled).map_err(super::replay::replay_error)? {
            Some(statement) => statements.insert(settled.to_owned(), statement),
            None => return Ok(None),
        };
    }
    Ok(Some(statements))
}

/// What the period paid, as CSV: a row per commission of each affiliate's settlement, those it
/// paid at the close (`paid_as` `at_close`) then the adjustments late events made to it since
/// (`adjustment`), each with the settlement's affiliate. A payment run's input.
fn paid_csv(
    pipeline: &Pipeline,
    operator: &OperatorRecord,
    period: &Period,
    affiliate: Option<&str>,
    reader: &auth::Reader,
) -> Result<Vec<u8>, ApiError> {
    let paid = match pipeline.period_paid_from_books(operator, period).map_err(super::replay::replay_error)? {
        Some(paid) => paid,
        None => pipeline.period_paid(operator, period).map_err(super::replay::replay_error)?,
    };
    let store = pipeline.store();
    let header = ["period", "settlement_affiliate", "paid_as"].into_iter().chain(export::COMMISSION_COLUMNS);
    let mut rows: Vec<Vec<String>> = vec![header.map(str::to_owned).collect()];
    for (settlement, paid) in &paid {
        let Some(settled) = settlement.strip_prefix(&period.settlement_id("")) else { continue };
        if affiliate.is_some_and(|wanted| wanted != settled) {
            continue;
        }
        let lines =
            paid.at_close.iter().map(|c| ("at_close", c)).chain(paid.adjustments.iter().map(|c| ("adjustment", c)));
        // An affiliate key's rows are what was paid to it, not its upline's overrides.
        for (paid_as, commission) in lines.filter(|(_, commission)| reader.sees(&commission.affiliate)) {
            let status = store.commission_status(&operator.id, &commission.id)?.status;
            let fields = [period.id.clone(), settled.to_owned(), paid_as.to_owned()];
            rows.push(fields.into_iter().chain(export::commission_row(commission, status)).collect());
        }
    }
    Ok(export::csv_rows(rows))
}

/// What an affiliate key sees of its own statement: what was paid to it and, on a line that is
/// there through a sub-affiliate (its override on that sub-affiliate's event), what the
/// sub-affiliate earned, the base of the override; not what the events paid anyone else (an
/// upline's override on its own events, say).
fn affiliate_view(entry: &mut Value, own: &str) {
    let keep = |payouts: Option<&mut Value>, through: Option<&str>| {
        if let Some(payouts) = payouts.and_then(Value::as_array_mut) {
            payouts
                .retain(|payout| payout["affiliate"] == own || through.is_some_and(|sub| payout["affiliate"] == sub));
        }
    };
    for view in ["as_closed", "restated"] {
        for line in entry.pointer_mut(&format!("/{view}/lines")).and_then(Value::as_array_mut).into_iter().flatten() {
            let through = line["through"].as_str().map(str::to_owned);
            keep(line.get_mut("commissions"), through.as_deref());
        }
        keep(entry.pointer_mut(&format!("/{view}/settlement/commissions")), None);
    }
    for part in ["at_close", "adjustments", "total"] {
        keep(entry.pointer_mut(&format!("/paid/{part}")), None);
    }
}
