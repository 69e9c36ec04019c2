//! Payout runs: approve a month's eligible commissions in one call, pay a set under a payment
//! reference, and the report of what to pay per affiliate and currency.
//!
//! - `POST /v1/operators/{op}/periods/{YYYY-MM}/approve` `{"affiliate"?, "note"?}`: every
//!   `pending` commission that occurred in the month and whose hold (`hold_days`) is over becomes
//!   `approved`; those still on hold are listed with the time their hold ends.
//! - `GET /v1/operators/{op}/payouts/report?period=YYYY-MM[&affiliate=A]`: per affiliate and
//!   currency, the approved and unpaid commissions up to the month's end, net of reversals (a
//!   reversal netted against an unpaid commission counts with it; one of a paid commission is a
//!   deduction of its own). A negative balance is not payable: it is carried forward, shown as
//!   such, and deducted from the next month's balance.
//! - `POST /v1/operators/{op}/payouts` `{"reference", "affiliate"?, "commission_ids" | "period",
//!   "note"?}`: moves to `paid` the approved commissions asked for (by `period`, what the report
//!   says is payable: each positive balance's lines), each move in the commission's trail with
//!   the reference. A reference pays once: sent again with the same selection, the answer is
//!   the payout as it was made (`duplicate: true`) and nothing more is paid.
//!
//! Each move follows the rules of `POST .../commissions/{id}/status` (the same store move), and
//! each run's moves are written together or not at all, in the operator's turn (a command): in a
//! cluster they travel through the operator's log, and every node's view makes them alike.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::openapi::ErrorSchema;
use super::operators::{durable, parse_json, query_params};
use super::{ApiError, AppState, auth, read_body};
use crate::amounts::checked_add;
use crate::event::{FieldError, affiliate_id_problem, format_time, now_ms};
use crate::pipeline::{Command, Done, Period};
use crate::secrets::sha256_hex;
use crate::store::records::{
    ClawBackOutcome, CommissionRecord, CommissionStatus, OperatorRecord, PayoutRecord, StatusChange, StatusRecord,
};
use crate::store::{CommissionRef, MoveOutcome, Store};

/// At most this many commissions named in one payment.
const MAX_IDS: usize = 10_000;

/// One commission as a payout run lists it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PayoutLine {
    pub id: String,
    pub event_id: String,
    pub affiliate: String,
    pub rule: String,
    #[schema(value_type = String)]
    pub amount: Decimal,
    pub currency: String,
    /// RFC 3339: when its event occurred (the month it belongs to).
    pub occurred_at: String,
    /// The reversal it claws back, for a reversal.
    pub reverses: Option<String>,
    /// On a commission a reversal was netted against: the reversal (it moves with this one).
    pub netted_by: Option<String>,
    /// The line's amount with the netted reversal's: what it pays.
    #[schema(value_type = String)]
    pub net: Decimal,
    /// On hold until then (RFC 3339), for a commission an approval run skipped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hold_until: Option<String>,
}

/// A commission a run could not move, and why.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Refused {
    pub id: String,
    pub problem: String,
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApproveRequest {
    /// Only this affiliate's commissions.
    #[serde(default)]
    pub affiliate: Option<String>,
    /// Kept in each commission's trail.
    #[serde(default)]
    pub note: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ApproveAnswer {
    pub period: String,
    /// What became `approved` (a reversal netted against one moves with it, listed after it).
    pub approved: Vec<PayoutLine>,
    /// `pending` and still inside the deal's `hold_days`.
    pub held: Vec<PayoutLine>,
    /// Moved by someone else meanwhile.
    pub refused: Vec<Refused>,
}

/// `POST /v1/operators/{op}/periods/{period}/approve`.
#[utoipa::path(
    post,
    path = "/v1/operators/{op}/periods/{period}/approve",
    tag = "payouts",
    params(("op" = String, Path, description = "operator id"), ("period" = String, Path, description = "YYYY-MM")),
    request_body(content = Option<ApproveRequest>, description = "optional; an empty body approves for every affiliate"),
    responses(
        (status = 200, description = "what was approved, and what is still on hold", body = ApproveAnswer),
        (status = 401, description = "not the operator's key"),
        (status = 403, description = "an affiliate key"),
        (status = 422, description = "a bad period or affiliate, named"),
        (status = 202, description = "`pending`, with `--cluster` only: the change is durable in the cluster's log, but the operator's owner had not applied it within `--cluster-answer-secs`; it will", body = ErrorSchema),
        (status = 503, description = "with `--cluster` only: `owner_unavailable` (the node that owns the operator, which answers this, did not answer, or none owns it this moment) or `log_unavailable` (the cluster's log did not take the change). Retry after `Retry-After`", body = ErrorSchema),
    ),
    security(("operator_key" = []), ("admin_token" = []))
)]
pub async fn approve(
    State(state): State<Arc<AppState>>,
    Path((op, period)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<ApproveAnswer>, ApiError> {
    let operator = auth::operator(&state, &headers, &op)?;
    let period = Period::parse(&period).map_err(|problem| ApiError::field("period", problem))?;
    let body = read_body(body, state.limits.json()).await?;
    let request: ApproveRequest = if body.is_empty() { ApproveRequest::default() } else { parse_json(&body)? };
    check_affiliate(request.affiliate.as_deref())?;
    check_note(&request.note)?;
    let store = state.pipeline.store();
    let now = now_ms();
    let (mut eligible, mut held) = (Vec::new(), Vec::new());
    for commission in store.all_commissions(&operator.id) {
        let commission = commission?;
        if !(period.starts_at..period.ends_at).contains(&commission.occurred_at)
            || request.affiliate.as_ref().is_some_and(|wanted| *wanted != commission.affiliate)
        {
            continue;
        }
        let status = store.commission_status(&operator.id, &commission.id)?;
        if status.status != CommissionStatus::Pending || status.moves_with.is_some() {
            continue;
        }
        match commission.hold_until.filter(|until| *until > now) {
            Some(until) => held.push(PayoutLine { hold_until: Some(format_time(until)), ..line(&commission, &status) }),
            None => eligible.push(commission.id),
        }
    }
    let note = format!("approved by the payout run of {}{}", period.id, suffix(&request.note));
    let change =
        StatusChange { status: CommissionStatus::Approved, at: now, by: by(&state, &headers), note, reference: None };
    let MoveOutcome::Moved { moved, refused } = move_in_turn(&state, &operator, eligible, change, None).await? else {
        return Err(ApiError::internal("an approval run found a payout record"));
    };
    durable(&state).await?;
    Ok(Json(ApproveAnswer {
        period: period.id,
        approved: lines(store, &operator.id, &moved)?,
        held,
        refused: refused.into_iter().map(|(id, problem)| Refused { problem: format!("{id} {problem}"), id }).collect(),
    }))
}

#[derive(Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PayoutRequest {
    /// The payment's reference (1 to 128 bytes, no control characters): one payment per reference.
    pub reference: String,
    /// Only this affiliate's commissions.
    #[serde(default)]
    pub affiliate: Option<String>,
    /// These commissions (each must be `approved` to be paid); or `period`.
    #[serde(default)]
    pub commission_ids: Option<Vec<String>>,
    /// `YYYY-MM`: what the payout report for the month says is payable.
    #[serde(default)]
    pub period: Option<String>,
    #[serde(default)]
    pub note: String,
}

/// Per affiliate and currency, an amount.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Total {
    pub affiliate: String,
    pub currency: String,
    #[schema(value_type = String)]
    pub amount: Decimal,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct PayoutAnswer {
    pub reference: String,
    /// The reference was used before with the same selection: this is that payout, and
    /// nothing more was paid now.
    pub duplicate: bool,
    /// RFC 3339.
    pub paid_at: String,
    /// What became `paid` (a reversal netted against one moved with it, listed after it).
    pub paid: Vec<PayoutLine>,
    /// What was paid, per affiliate and currency.
    pub totals: Vec<Total>,
    /// For `period`: the negative balances not paid, carried forward.
    pub carried_forward: Vec<Total>,
    pub refused: Vec<Refused>,
}

/// `POST /v1/operators/{op}/payouts`.
#[utoipa::path(
    post,
    path = "/v1/operators/{op}/payouts",
    tag = "payouts",
    params(("op" = String, Path, description = "operator id")),
    request_body = PayoutRequest,
    responses(
        (status = 200, description = "what was paid under the reference (or, sent again, what was)", body = PayoutAnswer),
        (status = 401, description = "not the operator's key"),
        (status = 403, description = "an affiliate key"),
        (status = 409, description = "the reference was used for another selection"),
        (status = 422, description = "a bad field, named"),
        (status = 202, description = "`pending`, with `--cluster` only: the change is durable in the cluster's log, but the operator's owner had not applied it within `--cluster-answer-secs`; it will", body = ErrorSchema),
        (status = 503, description = "with `--cluster` only: `owner_unavailable` (the node that owns the operator, which answers this, did not answer, or none owns it this moment) or `log_unavailable` (the cluster's log did not take the change). Retry after `Retry-After`", body = ErrorSchema),
    ),
    security(("operator_key" = []), ("admin_token" = []))
)]
pub async fn pay(
    State(state): State<Arc<AppState>>,
    Path(op): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<PayoutAnswer>, ApiError> {
    let operator = auth::operator(&state, &headers, &op)?;
    let body = read_body(body, state.limits.json()).await?;
    let request: PayoutRequest = parse_json(&body)?;
    let mut problems = Vec::new();
    let reference = &request.reference;
    if reference.is_empty() || reference.len() > 128 || reference.chars().any(char::is_control) {
        problems.push(FieldError::new("reference", "1 to 128 bytes without control characters: the payment's own"));
    }
    if let Some(problem) = request.affiliate.as_deref().and_then(affiliate_id_problem) {
        problems.push(FieldError::new("affiliate", problem));
    }
    if request.note.len() > 500 {
        problems.push(FieldError::new("note", "at most 500 bytes"));
    }
    let store = state.pipeline.store();
    let now = now_ms();
    let (ids, carried_forward) = match (&request.commission_ids, &request.period) {
        (Some(ids), None) => {
            (named_ids(store, &operator.id, ids, request.affiliate.as_deref(), &mut problems)?, Vec::new())
        }
        (None, Some(period)) => match Period::parse(period) {
            Ok(period) => {
                let groups = balances(store, &operator.id, &period, request.affiliate.as_deref())?;
                let carried = groups
                    .iter()
                    .filter(|group| group.balance < Decimal::ZERO)
                    .map(|group| Total {
                        affiliate: group.affiliate.clone(),
                        currency: group.currency.clone(),
                        amount: group.balance,
                    })
                    .collect();
                let payable = groups.into_iter().filter(|group| group.balance > Decimal::ZERO);
                (payable.flat_map(|group| group.lines).map(|line| line.id).collect(), carried)
            }
            Err(problem) => {
                problems.push(FieldError::new("period", problem));
                (Vec::new(), Vec::new())
            }
        },
        _ => {
            problems.push(FieldError::new("commission_ids", "give either commission_ids or period (not both)"));
            (Vec::new(), Vec::new())
        }
    };
    if !problems.is_empty() {
        return Err(ApiError::fields("invalid_payout", problems));
    }
    let selection = serde_json::json!([request.affiliate, request.commission_ids, request.period]);
    let by = by(&state, &headers);
    let record = PayoutRecord {
        reference: reference.clone(),
        request_sha256: sha256_hex(&selection.to_string()),
        at: now,
        by: by.clone(),
        paid: Vec::new(),
    };
    let note = format!("paid under reference {reference}{}", suffix(&request.note));
    let change = StatusChange { status: CommissionStatus::Paid, at: now, by, note, reference: Some(reference.clone()) };
    let (record, duplicate, refused) = match move_in_turn(&state, &operator, ids, change, Some(record.clone())).await? {
        MoveOutcome::Existing(existing) if existing.request_sha256 == record.request_sha256 => {
            (existing, true, Vec::new())
        }
        MoveOutcome::Existing(existing) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "reference_used",
                format!(
                    "reference {reference:?} paid another selection at {}: a reference is one payment; give this \
                     one its own",
                    format_time(existing.at)
                ),
            ));
        }
        MoveOutcome::Moved { moved, refused } => (PayoutRecord { paid: moved, ..record }, false, refused),
    };
    durable(&state).await?;
    let paid = lines(store, &operator.id, &record.paid)?;
    let mut totals: BTreeMap<(String, String), Decimal> = BTreeMap::new();
    for line in &paid {
        let total = totals.entry((line.affiliate.clone(), line.currency.clone())).or_default();
        checked_add(total, line.amount, || format!("payout to {} in {}", line.affiliate, line.currency))
            .map_err(|overflow| super::replay::overflow_error(&overflow))?;
    }
    Ok(Json(PayoutAnswer {
        reference: record.reference,
        duplicate,
        paid_at: format_time(record.at),
        paid,
        totals: totals
            .into_iter()
            .map(|((affiliate, currency), amount)| Total { affiliate, currency, amount })
            .collect(),
        carried_forward: if duplicate { Vec::new() } else { carried_forward },
        refused: refused.into_iter().map(|(id, problem)| Refused { problem: format!("{id} {problem}"), id }).collect(),
    }))
}

/// Moves the commissions in the operator's turn, so that in a cluster every node's view makes
/// the same moves: all of them (with the payment's record) or none.
async fn move_in_turn(
    state: &AppState,
    operator: &OperatorRecord,
    ids: Vec<String>,
    change: StatusChange,
    payout: Option<PayoutRecord>,
) -> Result<MoveOutcome, ApiError> {
    let store = state.pipeline.store();
    let commissions: Vec<CommissionRef> = ids
        .iter()
        .map(|id| store.commission_ref(&operator.id, id))
        .filter_map(Result::transpose)
        .collect::<Result<_, _>>()?;
    let moving = Command::MoveCommissions { commissions, change, payout };
    state.pipeline.command(operator, moving).await.and_then(Done::moved).map_err(super::events::ingest_error)
}

/// The commissions named in a payment, each checked: one of the operator's, named once, the
/// affiliate's if one is given.
fn named_ids(
    store: &Store,
    operator: &str,
    ids: &[String],
    affiliate: Option<&str>,
    problems: &mut Vec<FieldError>,
) -> Result<Vec<String>, ApiError> {
    if ids.is_empty() || ids.len() > MAX_IDS {
        problems.push(FieldError::new("commission_ids", format!("1 to {MAX_IDS} commission ids")));
        return Ok(Vec::new());
    }
    let mut seen = std::collections::HashSet::new();
    for (index, id) in ids.iter().enumerate() {
        let field = format!("commission_ids[{index}]");
        match store.commission(operator, id)? {
            _ if !seen.insert(id) => problems.push(FieldError::new(field, format!("{id} is named twice"))),
            None => problems.push(FieldError::new(field, format!("no commission {id:?}"))),
            Some(commission) if affiliate.is_some_and(|affiliate| affiliate != commission.affiliate) => problems
                .push(FieldError::new(field, format!("{id} is {}'s, not the affiliate's", commission.affiliate))),
            Some(_) => {}
        }
    }
    Ok(ids.to_vec())
}

/// One affiliate's balance in one currency for a month's payout (see the module's docs).
#[derive(Default, Serialize, utoipa::ToSchema)]
pub struct Balance {
    pub affiliate: String,
    pub currency: String,
    /// Approved and unpaid from before the month: a negative balance carried in, or earlier
    /// months not paid yet.
    #[schema(value_type = String)]
    pub carried_in: Decimal,
    /// Approved in the month, net of reversals.
    #[schema(value_type = String)]
    pub approved: Decimal,
    /// `carried_in` + `approved`.
    #[schema(value_type = String)]
    pub balance: Decimal,
    /// What to pay: the balance when it is above zero.
    #[schema(value_type = String)]
    pub payable: Decimal,
    /// The balance when it is below zero: not paid, deducted from the next month's.
    #[schema(value_type = String)]
    pub carried_forward: Decimal,
    /// The month's commissions not approved yet (on hold, or awaiting approval), net.
    #[schema(value_type = String)]
    pub pending: Decimal,
    /// The month's commissions paid already, net.
    #[schema(value_type = String)]
    pub paid: Decimal,
    /// The approved lines the balance is made of: what a payment by `period` pays.
    pub lines: Vec<PayoutLine>,
}

/// The month's balances, per affiliate and currency (one affiliate's, if given).
fn balances(store: &Store, operator: &str, period: &Period, affiliate: Option<&str>) -> Result<Vec<Balance>, ApiError> {
    let mut groups: BTreeMap<(String, String), Balance> = BTreeMap::new();
    for commission in store.all_commissions(operator) {
        let commission = commission?;
        if commission.occurred_at >= period.ends_at || affiliate.is_some_and(|wanted| wanted != commission.affiliate) {
            continue;
        }
        let status = store.commission_status(operator, &commission.id)?;
        let in_month = commission.occurred_at >= period.starts_at;
        // A reversal netted against an unpaid commission counts with that one (in its `net`).
        let counts_in: fn(&mut Balance) -> &mut Decimal = match status.status {
            _ if status.moves_with.is_some() => continue,
            CommissionStatus::Approved if in_month => |group| &mut group.approved,
            CommissionStatus::Approved => |group| &mut group.carried_in,
            CommissionStatus::Pending if in_month => |group| &mut group.pending,
            CommissionStatus::Paid if in_month => |group| &mut group.paid,
            _ => continue,
        };
        let line = line(&commission, &status);
        let key = (commission.affiliate, commission.currency);
        let group = groups.entry(key.clone()).or_insert_with(|| Balance {
            affiliate: key.0.clone(),
            currency: key.1.clone(),
            ..Balance::default()
        });
        checked_add(counts_in(group), line.net, || format!("a total of {} in {}", key.0, key.1))
            .map_err(|overflow| super::replay::overflow_error(&overflow))?;
        if status.status == CommissionStatus::Approved {
            group.lines.push(line);
        }
    }
    let mut balances = Vec::with_capacity(groups.len());
    for (_, mut group) in groups {
        let mut balance = group.carried_in;
        checked_add(&mut balance, group.approved, || {
            format!("the balance of {} in {}", group.affiliate, group.currency)
        })
        .map_err(|overflow| super::replay::overflow_error(&overflow))?;
        group.balance = balance;
        group.payable = balance.max(Decimal::ZERO);
        group.carried_forward = balance.min(Decimal::ZERO);
        balances.push(group);
    }
    Ok(balances)
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct PayoutReport {
    pub period: String,
    pub balances: Vec<Balance>,
}

/// `GET /v1/operators/{op}/payouts/report?period=YYYY-MM[&affiliate=A]`.
#[utoipa::path(
    get,
    path = "/v1/operators/{op}/payouts/report",
    tag = "payouts",
    params(
        ("op" = String, Path, description = "operator id"),
        ("period" = String, Query, description = "YYYY-MM"),
        ("affiliate" = Option<String>, Query, description = "one affiliate (an affiliate key: its own)"),
    ),
    responses(
        (status = 200, description = "per affiliate and currency, what to pay", body = PayoutReport),
        (status = 401, description = "no valid key"),
        (status = 403, description = "an affiliate key asking for another affiliate"),
        (status = 422, description = "a bad parameter, named; or a total that overflows"),
    ),
    security(("operator_key" = []), ("admin_token" = []), ("affiliate_key" = []))
)]
pub async fn report(
    State(state): State<Arc<AppState>>,
    Path(op): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Json<PayoutReport>, ApiError> {
    let (operator, reader) = auth::reader(&state, &headers, &op)?;
    let (mut period, mut affiliate, mut problems) = (None, None, Vec::new());
    for (key, value) in query_params(query.as_deref())? {
        match key.as_str() {
            "period" => match Period::parse(&value) {
                Ok(parsed) => period = Some(parsed),
                Err(problem) => problems.push(FieldError::new("period", problem)),
            },
            "affiliate" => match affiliate_id_problem(&value) {
                None => affiliate = Some(value),
                Some(problem) => problems.push(FieldError::new("affiliate", problem)),
            },
            other => problems.push(FieldError::new(other, "unknown parameter; known: period, affiliate")),
        }
    }
    if period.is_none() && problems.is_empty() {
        problems.push(FieldError::new("period", "required: the month, YYYY-MM"));
    }
    let (Some(period), true) = (period, problems.is_empty()) else {
        return Err(ApiError::fields("invalid_query", problems));
    };
    let affiliate = reader.scope(affiliate)?;
    let balances = balances(state.pipeline.store(), &operator.id, &period, affiliate.as_deref())?;
    Ok(Json(PayoutReport { period: period.id, balances }))
}

fn check_affiliate(affiliate: Option<&str>) -> Result<(), ApiError> {
    match affiliate.and_then(affiliate_id_problem) {
        Some(problem) => Err(ApiError::field("affiliate", problem)),
        None => Ok(()),
    }
}

fn check_note(note: &str) -> Result<(), ApiError> {
    if note.len() > 500 { Err(ApiError::field("note", "at most 500 bytes")) } else { Ok(()) }
}

fn suffix(note: &str) -> String {
    if note.is_empty() { String::new() } else { format!(": {note}") }
}

fn by(state: &AppState, headers: &HeaderMap) -> String {
    if auth::is_admin(state, headers) { "admin" } else { "operator" }.to_owned()
}

fn line(commission: &CommissionRecord, status: &StatusRecord) -> PayoutLine {
    let netted = status.clawed_back.as_ref().filter(|clawed| clawed.outcome == ClawBackOutcome::Netted);
    PayoutLine {
        id: commission.id.clone(),
        event_id: commission.event_id.clone(),
        affiliate: commission.affiliate.clone(),
        rule: commission.rule.clone(),
        amount: commission.amount,
        currency: commission.currency.clone(),
        occurred_at: format_time(commission.occurred_at),
        reverses: commission.reverses.clone(),
        netted_by: netted.map(|clawed| clawed.by.clone()),
        // A reversal is never larger than what it reverses, so this cannot overflow.
        net: commission.amount + netted.map_or(Decimal::ZERO, |clawed| clawed.amount),
        hold_until: None,
    }
}

/// The lines of `ids`, as they are now.
fn lines(store: &Store, operator: &str, ids: &[String]) -> Result<Vec<PayoutLine>, ApiError> {
    ids.iter()
        .map(|id| {
            let commission =
                store.commission(operator, id)?.ok_or_else(|| ApiError::internal(format!("{id} vanished")))?;
            Ok(line(&commission, &store.commission_status(operator, id)?))
        })
        .collect()
}
