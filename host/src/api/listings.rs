//! The back office's listings, each a page at a time with `cursor` and `limit` and a `next` to
//! continue from, like the commissions listing: operators (the platform admin's), and an
//! operator's affiliates, plugin versions and events. The periods overview is in
//! [`super::periods`]. Every time is RFC 3339; credentials are never listed.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use rust_decimal::Decimal;
use serde::Serialize;
use serde_json::json;

use super::commissions::{DEFAULT_LIMIT, MAX_LIMIT};
use super::operators::query_params;
use super::{ApiError, AppState, auth};
use crate::event::{FieldError, affiliate_id_problem, format_time, parse_time};
use crate::store::records::{
    AffiliateRecord, DatedActivation, EventRecord, EventStatus, OperatorLimits, OperatorRecord, PluginRecord,
    StoredLink,
};

/// A listing's `cursor` (parsed by the listing) and `limit`.
pub(super) struct Paging<C> {
    pub cursor: Option<C>,
    pub limit: usize,
}

/// Reads a listing's query: `cursor` (parsed by `cursor`, a `next` of the same listing),
/// `limit`, and the listing's own filters through `filter`, which returns `false` for a name it
/// does not know. Every problem is named, together, in one 422 `invalid_query`.
pub(super) fn read_query<C>(
    query: Option<&str>,
    known: &str,
    cursor: impl Fn(&str) -> Option<C>,
    mut filter: impl FnMut(&str, String, &mut Vec<FieldError>) -> bool,
) -> Result<Paging<C>, ApiError> {
    let mut paging = Paging { cursor: None, limit: DEFAULT_LIMIT };
    let mut problems = Vec::new();
    for (key, value) in query_params(query)? {
        match key.as_str() {
            "cursor" => match cursor(&value) {
                Some(position) => paging.cursor = Some(position),
                None => problems.push(FieldError::new("cursor", "not a cursor from a `next` of this listing")),
            },
            "limit" => match value.parse::<usize>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => paging.limit = n,
                _ => problems.push(FieldError::new("limit", format!("a number from 1 to {MAX_LIMIT}"))),
            },
            other => {
                if !filter(other, value, &mut problems) {
                    problems.push(FieldError::new(other, format!("unknown parameter; known: {known}cursor, limit")));
                }
            }
        }
    }
    if !problems.is_empty() {
        return Err(ApiError::fields("invalid_query", problems));
    }
    Ok(paging)
}

/// A listing that takes no filter.
fn no_filter(_: &str, _: String, _: &mut Vec<FieldError>) -> bool {
    false
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct OperatorsPage {
    operators: Vec<OperatorView>,
    /// The `cursor` of the next page; `null` on the last.
    next: Option<String>,
}

/// An operator and its settings; never its credentials.
#[derive(Serialize, utoipa::ToSchema)]
pub struct OperatorView {
    id: String,
    name: String,
    currency: String,
    created_at: String,
    settings: OperatorSettings,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct OperatorSettings {
    /// `adjust`, `refuse` or `as_received`.
    late_events: String,
    active_plugin: Option<u32>,
    shadow_plugin: Option<u32>,
    /// The platform admin's overrides of the host's limits; a field left out keeps the default.
    #[schema(value_type = Object)]
    limits: OperatorLimits,
    /// The currencies the operator has exchange rates for, where they came from, and when.
    fx_currencies: Vec<String>,
    fx_source: String,
    fx_updated_at: Option<String>,
}

fn operator_view(operator: &OperatorRecord) -> OperatorView {
    let late_events = json!(operator.late_events).as_str().unwrap_or_default().to_owned();
    let fx = &operator.fx_rates;
    OperatorView {
        id: operator.id.clone(),
        name: operator.name.clone(),
        currency: operator.currency.clone(),
        created_at: format_time(operator.created_at),
        settings: OperatorSettings {
            late_events,
            active_plugin: operator.active_plugin,
            shadow_plugin: operator.shadow_plugin,
            limits: operator.limits,
            fx_currencies: fx.rates.keys().cloned().collect(),
            fx_source: fx.source.clone(),
            fx_updated_at: (fx.updated_at > 0).then(|| format_time(fx.updated_at)),
        },
    }
}

/// `GET /v1/operators`: every operator, by id (platform admin only).
#[utoipa::path(
    get,
    path = "/v1/operators",
    tag = "listings",
    params(
        ("cursor" = Option<String>, Query, description = "The `next` of the page before"),
        ("limit" = Option<usize>, Query, description = "1 to 1000; 100 by default"),
    ),
    responses(
        (status = 200, description = "A page of operators, by id", body = OperatorsPage),
        (status = 401, description = "Not the admin token (an operator's key is refused too)"),
        (status = 422, description = "A bad parameter, named in `details`"),
    ),
    security(("admin_token" = [])),
)]
pub async fn operators(
    State(state): State<Arc<AppState>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Json<OperatorsPage>, ApiError> {
    auth::require_admin(&state, &headers)?;
    let paging = read_query(query.as_deref(), "", |id| Some(id.to_owned()), no_filter)?;
    let (operators, next) = state.pipeline.store().operators_page(paging.cursor.as_deref(), paging.limit)?;
    Ok(Json(OperatorsPage { operators: operators.iter().map(operator_view).collect(), next }))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct AffiliatesPage {
    affiliates: Vec<AffiliateView>,
    next: Option<String>,
}

/// An affiliate, its parent in the referral tree and its current deal.
#[derive(Serialize, utoipa::ToSchema)]
pub struct AffiliateView {
    id: String,
    parent: Option<String>,
    deal: BTreeMap<String, String>,
    updated_at: String,
}

fn affiliate_view(record: AffiliateRecord) -> AffiliateView {
    AffiliateView {
        id: record.id,
        parent: record.parent,
        deal: record.deal,
        updated_at: format_time(record.updated_at),
    }
}

/// `GET /v1/operators/{op}/affiliates`: the operator's affiliates, by id.
#[utoipa::path(
    get,
    path = "/v1/operators/{op}/affiliates",
    tag = "listings",
    params(
        ("op" = String, Path, description = "The operator's id"),
        ("cursor" = Option<String>, Query, description = "The `next` of the page before"),
        ("limit" = Option<usize>, Query, description = "1 to 1000; 100 by default"),
    ),
    responses(
        (status = 200, description = "A page of affiliates, by id", body = AffiliatesPage),
        (status = 401, description = "Not the operator's key nor the admin token"),
        (status = 422, description = "A bad parameter, named in `details`"),
    ),
    security(("operator_key" = []), ("admin_token" = [])),
)]
pub async fn affiliates(
    State(state): State<Arc<AppState>>,
    Path(op): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Json<AffiliatesPage>, ApiError> {
    let operator = auth::operator(&state, &headers, &op)?;
    let cursor = |id: &str| affiliate_id_problem(id).is_none().then(|| id.to_owned());
    let paging = read_query(query.as_deref(), "", cursor, no_filter)?;
    let (affiliates, next) =
        state.pipeline.store().affiliates_page(&operator.id, paging.cursor.as_deref(), paging.limit)?;
    Ok(Json(AffiliatesPage { affiliates: affiliates.into_iter().map(affiliate_view).collect(), next }))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct PluginsPage {
    plugins: Vec<PluginView>,
    next: Option<String>,
}

/// A plugin version: what was uploaded, and how it is used now.
#[derive(Serialize, utoipa::ToSchema)]
pub struct PluginView {
    version: u32,
    size: u64,
    sha256: String,
    /// The `commission:plugin` WIT version it was built against.
    contract: String,
    uploaded_at: String,
    /// It evaluates new events (those no dated activation takes).
    active: bool,
    /// It runs in shadow mode beside the active version, paying nothing.
    shadow: bool,
    /// Its activations from a date, oldest first.
    activations: Vec<ActivationView>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ActivationView {
    effective_from: String,
    /// `events` or `new_customers`.
    scope: String,
    affiliate: Option<String>,
    activated_at: String,
}

fn plugin_view(operator: &OperatorRecord, record: PluginRecord) -> PluginView {
    let activation = |activation: &DatedActivation| ActivationView {
        effective_from: format_time(activation.effective_from),
        scope: json!(activation.scope).as_str().unwrap_or_default().to_owned(),
        affiliate: activation.affiliate.clone(),
        activated_at: format_time(activation.activated_at),
    };
    PluginView {
        active: operator.active_plugin == Some(record.version),
        shadow: operator.shadow_plugin == Some(record.version),
        activations: operator
            .dated_activations
            .iter()
            .filter(|activation| activation.version == record.version)
            .map(activation)
            .collect(),
        version: record.version,
        size: record.size,
        sha256: record.sha256,
        contract: record.contract,
        uploaded_at: format_time(record.uploaded_at),
    }
}

/// `GET /v1/operators/{op}/plugins`: the operator's plugin versions, oldest first.
#[utoipa::path(
    get,
    path = "/v1/operators/{op}/plugins",
    tag = "listings",
    params(
        ("op" = String, Path, description = "The operator's id"),
        ("cursor" = Option<String>, Query, description = "The `next` of the page before"),
        ("limit" = Option<usize>, Query, description = "1 to 1000; 100 by default"),
    ),
    responses(
        (status = 200, description = "A page of plugin versions, oldest first", body = PluginsPage),
        (status = 401, description = "Not the operator's key nor the admin token"),
        (status = 422, description = "A bad parameter, named in `details`"),
    ),
    security(("operator_key" = []), ("admin_token" = [])),
)]
pub async fn plugins(
    State(state): State<Arc<AppState>>,
    Path(op): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Json<PluginsPage>, ApiError> {
    let operator = auth::operator(&state, &headers, &op)?;
    let paging = read_query(query.as_deref(), "", |version| version.parse::<u32>().ok(), no_filter)?;
    let (plugins, next) = state.pipeline.store().plugins_page(&operator.id, paging.cursor, paging.limit)?;
    Ok(Json(PluginsPage {
        plugins: plugins.into_iter().map(|record| plugin_view(&operator, record)).collect(),
        next: next.map(|version| version.to_string()),
    }))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct EventsPage {
    events: Vec<ListedEvent>,
    next: Option<String>,
}

/// An event as the ledger keeps it, without its evaluation's details (`GET .../events/{id}`
/// has those).
#[derive(Serialize, utoipa::ToSchema)]
pub struct ListedEvent {
    id: String,
    #[serde(rename = "type")]
    kind: String,
    customer: String,
    occurred_at: String,
    #[schema(value_type = Option<String>)]
    amount: Option<Decimal>,
    currency: Option<String>,
    affiliate: Option<String>,
    received_at: String,
    /// `accepted` or `failed`.
    status: String,
    failure: Option<FailureView>,
    attempts: u32,
    attributed_to: Option<String>,
    plugin_version: Option<u32>,
    commission_ids: Vec<String>,
    /// It arrived after its period was closed and restated it.
    restated: bool,
    /// It occurred in a closed period and was taken as received.
    taken_as_received: bool,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct FailureView {
    kind: String,
    message: String,
}

fn event_view(record: EventRecord<StoredLink>) -> ListedEvent {
    let event = record.event;
    ListedEvent {
        id: event.id,
        kind: event.kind,
        customer: event.customer,
        occurred_at: format_time(event.occurred_at),
        amount: event.amount,
        currency: event.currency,
        affiliate: event.affiliate,
        received_at: format_time(record.received_at),
        status: status_name(record.status).to_owned(),
        failure: record
            .failure
            .map(|failure| FailureView { kind: failure.kind.as_str().to_owned(), message: failure.message }),
        attempts: record.attempts,
        attributed_to: record.attributed_to,
        plugin_version: record.evaluation.map(|evaluation| evaluation.plugin_version),
        commission_ids: record.commission_ids,
        restated: record.restated,
        taken_as_received: record.taken_as_received,
    }
}

fn status_name(status: EventStatus) -> &'static str {
    match status {
        EventStatus::Accepted => "accepted",
        EventStatus::Failed => "failed",
    }
}

/// What the events listing keeps: each filter given must match.
#[derive(Default)]
struct EventFilter {
    status: Option<EventStatus>,
    kind: Option<String>,
    customer: Option<String>,
    from: Option<i64>,
    to: Option<i64>,
}

impl EventFilter {
    fn read(&mut self, key: &str, value: String, problems: &mut Vec<FieldError>) -> bool {
        match key {
            "status" => match value.as_str() {
                "accepted" => self.status = Some(EventStatus::Accepted),
                "failed" => self.status = Some(EventStatus::Failed),
                _ => problems.push(FieldError::new("status", "one of accepted, failed")),
            },
            "type" if value.is_empty() => problems.push(FieldError::new("type", "must not be empty")),
            "type" => self.kind = Some(value),
            "customer" if value.is_empty() => problems.push(FieldError::new("customer", "must not be empty")),
            "customer" => self.customer = Some(value),
            "occurred_from" | "occurred_to" => match parse_time(&value) {
                Ok(ms) if key == "occurred_from" => self.from = Some(ms),
                Ok(ms) => self.to = Some(ms),
                Err(problem) => problems.push(FieldError::new(key, problem)),
            },
            _ => return false,
        }
        true
    }

    fn keeps(&self, record: &EventRecord<StoredLink>) -> bool {
        let event = &record.event;
        self.status.is_none_or(|status| record.status == status)
            && self.kind.as_ref().is_none_or(|kind| event.kind == *kind)
            && self.customer.as_ref().is_none_or(|customer| event.customer == *customer)
            && self.from.is_none_or(|from| event.occurred_at >= from)
            && self.to.is_none_or(|to| event.occurred_at < to)
    }
}

/// An events cursor: the ledger position (sequence number) of the last event a page looked at.
fn event_cursor(seq: u64) -> String {
    format!("ev_{seq:016x}")
}

fn parse_event_cursor(cursor: &str) -> Option<u64> {
    u64::from_str_radix(cursor.strip_prefix("ev_").filter(|hex| hex.len() == 16)?, 16).ok()
}

/// `GET /v1/operators/{op}/events`: the operator's events in ledger order (the order they took
/// effect; a retried failed event takes effect, and so moves, when it is retried), the host's
/// period settlements among them.
#[utoipa::path(
    get,
    path = "/v1/operators/{op}/events",
    tag = "listings",
    params(
        ("op" = String, Path, description = "The operator's id"),
        ("status" = Option<String>, Query, description = "`accepted` or `failed`"),
        ("type" = Option<String>, Query, description = "The event type, exactly"),
        ("customer" = Option<String>, Query, description = "The customer id, exactly"),
        ("occurred_from" = Option<String>, Query, description = "RFC 3339; events that occurred at or after it"),
        ("occurred_to" = Option<String>, Query, description = "RFC 3339; events that occurred before it"),
        ("cursor" = Option<String>, Query, description = "The `next` of the page before"),
        ("limit" = Option<usize>, Query, description = "1 to 1000; 100 by default"),
    ),
    responses(
        (status = 200, description = "A page of events, in ledger order", body = EventsPage),
        (status = 401, description = "Not the operator's key nor the admin token"),
        (status = 422, description = "A bad filter, named in `details`"),
    ),
    security(("operator_key" = []), ("admin_token" = [])),
)]
pub async fn events(
    State(state): State<Arc<AppState>>,
    Path(op): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Json<EventsPage>, ApiError> {
    let operator = auth::operator(&state, &headers, &op)?;
    let mut filter = EventFilter::default();
    let known = "status, type, customer, occurred_from, occurred_to, ";
    let paging = read_query(query.as_deref(), known, parse_event_cursor, |key, value, problems| {
        filter.read(key, value, problems)
    })?;
    let (events, next) =
        state.pipeline.store().events_page(&operator.id, paging.cursor, paging.limit, |record| filter.keeps(record))?;
    Ok(Json(EventsPage { events: events.into_iter().map(event_view).collect(), next: next.map(event_cursor) }))
}
