//! The answers' wire types, for the OpenAPI document ([`super::openapi`]).
//!
//! The operator, plugin and affiliate answers are built from these types (they are what the
//! handlers serialize). The event, commission and statement views are still built with `json!`
//! where they are assembled from several records; the `*View` types here describe them, and
//! schemathesis checks every answer of the running host against them (`tests/openapi.rs`), so a
//! view and its description cannot drift apart unnoticed.

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use serde::Serialize;
use utoipa::ToSchema;

use crate::pipeline::Disposition;
use crate::store::records::{
    ActivationScope, ClawBack, CommissionStatus, CredentialKind, EventStatus, Failure, LateEventPolicy, LogLine,
    Restatement,
};

/// `POST /v1/operators`: the operator and its credentials, shown this once.
#[derive(Serialize, ToSchema)]
pub struct CreatedOperator {
    pub id: String,
    pub name: String,
    pub currency: String,
    pub api_key: String,
    pub postback_token: String,
    pub webhook_secret: String,
}

/// An uploaded plugin version.
#[derive(Serialize, ToSchema)]
pub struct PluginUploaded {
    pub version: u32,
    pub sha256: String,
    /// The WIT contract version the component was built against.
    pub contract: String,
    pub active: bool,
}

/// An activation: now (`active_plugin`), or from a date.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum Activated {
    Now {
        active_plugin: u32,
    },
    Dated {
        version: u32,
        /// RFC 3339.
        effective_from: String,
        scope: ActivationScope,
        affiliate: Option<String>,
    },
}

/// An affiliate, its parent and its deal terms.
#[derive(Serialize, ToSchema)]
pub struct Affiliate {
    pub id: String,
    pub parent: Option<String>,
    pub deal: BTreeMap<String, String>,
}

/// The limits in force for the operator after a `PUT .../limits`.
#[derive(Serialize, ToSchema)]
pub struct EffectiveLimits {
    pub fuel: u64,
    pub timeout_ms: u64,
    pub memory_bytes: usize,
    pub max_commissions: usize,
    pub max_state_write_bytes: usize,
    pub max_log_lines: usize,
    pub events_per_second: Option<u32>,
    pub stored_bytes: Option<u64>,
    pub state_bytes: Option<u64>,
}

/// A rotated credential's new value.
#[derive(Serialize, ToSchema)]
pub struct Rotated {
    pub kind: CredentialKind,
    pub value: String,
    /// RFC 3339: until when the values before it stay valid.
    pub previous_valid_until: String,
}

/// The FX rates in force.
#[derive(Serialize, ToSchema)]
pub struct FxRatesSet {
    pub currency: String,
    /// Units of the operator's currency per unit of each other currency, decimal strings.
    #[schema(value_type = BTreeMap<String, String>)]
    pub rates: BTreeMap<String, Decimal>,
    pub source: String,
    /// RFC 3339.
    pub updated_at: String,
}

#[derive(Serialize, ToSchema)]
pub struct Settings {
    pub late_events: LateEventPolicy,
}

#[derive(Serialize, ToSchema)]
pub struct ShadowSet {
    pub shadow_plugin: Option<u32>,
}

/// A commission as the ledger lists it (`status`, `clawed_back` and `moves_with` are there in
/// the listing and the view of one; `history` in the view of one).
#[derive(ToSchema)]
#[allow(dead_code)] // A description of `commissions::commission_json`.
pub struct CommissionView {
    id: String,
    event_id: String,
    affiliate: String,
    customer: String,
    #[schema(value_type = String)]
    amount: Decimal,
    currency: String,
    rule: String,
    explanation: String,
    plugin_version: u32,
    version_reason: String,
    /// RFC 3339.
    occurred_at: String,
    /// RFC 3339.
    created_at: String,
    /// RFC 3339: not to be approved before.
    hold_until: Option<String>,
    /// For a reversal: the commission it claws back.
    reverses: Option<String>,
    restates: Option<Restatement>,
    #[schema(value_type = Option<String>)]
    fx_rate: Option<Decimal>,
    #[schema(value_type = Option<String>)]
    unrounded_amount: Option<Decimal>,
    #[schema(required = false)]
    status: CommissionStatus,
    #[schema(required = false)]
    history: Vec<StatusMoveView>,
    #[schema(required = false)]
    clawed_back: Option<ClawBack>,
    #[schema(required = false)]
    moves_with: Option<String>,
}

/// One move of a commission's status: the audit trail.
#[derive(ToSchema)]
#[allow(dead_code)] // A description of `commissions::history_json`.
pub struct StatusMoveView {
    status: CommissionStatus,
    /// RFC 3339.
    at: String,
    /// `admin`, `operator`, or `host`.
    by: String,
    note: String,
    /// For a move to `paid` by a payout run: the payment's reference.
    #[schema(required = false)]
    reference: Option<String>,
}

/// A page of the ledger; `next` is the cursor of the next page, null on the last.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct CommissionPage {
    commissions: Vec<CommissionView>,
    next: Option<String>,
}

/// A status move's result.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct StatusMoved {
    id: String,
    status: CommissionStatus,
    history: Vec<StatusMoveView>,
    clawed_back: Option<ClawBack>,
    moves_with: Option<String>,
}

/// A commission as an event's answer gives it.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct PaidCommission {
    id: String,
    affiliate: String,
    #[schema(value_type = String)]
    amount: Decimal,
    currency: String,
    rule: String,
    explanation: String,
    #[schema(required = false)]
    restates: Option<Restatement>,
    #[schema(required = false, value_type = Option<String>)]
    unrounded_amount: Option<Decimal>,
}

/// What became of one event: `accepted`, `duplicate` (sent before with the same content),
/// `failed` (stored; see `failure`) or `conflict` (the id was taken by other content).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct EventOutcomeView {
    id: String,
    status: Disposition,
    attributed_to: Option<String>,
    commissions: Vec<PaidCommission>,
    #[schema(required = false)]
    failure: Option<Failure>,
}

/// A batch's answer: each event's outcome, in order.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct BatchOutcome {
    results: Vec<EventOutcomeView>,
}

/// `POST /v1/operators/{op}/events`: one event's outcome, or a batch's.
#[derive(ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum WebhookAnswer {
    One(EventOutcomeView),
    Batch(BatchOutcome),
}

/// A settlement of a period close: an event's outcome, with the affiliate settled.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct SettlementView {
    id: String,
    affiliate: Option<String>,
    status: Disposition,
    attributed_to: Option<String>,
    commissions: Vec<PaidCommission>,
    #[schema(required = false)]
    failure: Option<Failure>,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct PeriodClosed {
    /// `YYYY-MM`.
    period: String,
    settlements: Vec<SettlementView>,
}

/// A link of the referral chain: the affiliate and the deal terms the plugin was given.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ChainLinkView {
    affiliate: String,
    deal: BTreeMap<String, String>,
}

/// How an amount in another currency was converted.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct FxConversionView {
    #[schema(value_type = String)]
    rate: Decimal,
    source: String,
    /// RFC 3339: when the operator's rates were last set.
    rates_updated_at: String,
    #[schema(value_type = String)]
    amount: Decimal,
    currency: String,
}

/// One event: what was sent, how it was evaluated and what it paid.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct EventView {
    id: String,
    #[serde(rename = "type")]
    kind: String,
    customer: String,
    /// RFC 3339.
    occurred_at: String,
    #[schema(value_type = Option<String>)]
    amount: Option<Decimal>,
    currency: Option<String>,
    affiliate: Option<String>,
    attributes: BTreeMap<String, String>,
    fx: Option<FxConversionView>,
    /// RFC 3339.
    received_at: String,
    status: EventStatus,
    failure: Option<Failure>,
    attempts: u32,
    attributed_to: Option<String>,
    plugin_version: Option<u32>,
    version_reason: Option<String>,
    referral_chain: Option<Vec<ChainLinkView>>,
    fuel_used: Option<u64>,
    logs: Option<Vec<LogLine>>,
    commissions: Vec<CommissionView>,
}

/// `POST /v1/operators/{op}/events`: one event, or a batch of up to 1,000 checked whole first.
#[derive(ToSchema)]
#[serde(untagged)]
#[allow(dead_code)] // A description of what `event::parse_webhook` reads.
pub enum WebhookBody {
    One(crate::event::WireEvent),
    /// Up to 1,000 events.
    Batch(Vec<crate::event::WireEvent>),
}

/// A paid-out total of a statement, per affiliate, rule and currency.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct PaidTotal {
    affiliate: String,
    rule: String,
    currency: String,
    #[schema(value_type = String)]
    amount: Decimal,
}

/// What a closed period's settlement paid: at the close, and in adjustments since.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct PeriodPaid {
    at_close: Vec<CommissionView>,
    adjustments: Vec<CommissionView>,
    total: Vec<PaidTotal>,
}

/// One affiliate's statement of a closed period.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct AffiliateStatementView {
    affiliate: String,
    /// `matches`, `differs` or `missing`: the statement stored at the close against this one.
    stored_at_close: String,
    as_closed: crate::pipeline::statements::AffiliateStatement,
    restated: Option<crate::pipeline::statements::AffiliateStatement>,
    paid: PeriodPaid,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct PeriodStatement {
    period: String,
    affiliates: Vec<AffiliateStatementView>,
}

/// 409 on an event: its id was used before with other content. Refused whole (`Error`,
/// `event_id_conflict`; nothing written), or, for an event that lost a race for its id between
/// the check and the commit, its outcome with the status `conflict`.
#[derive(ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum IdConflict {
    Refused(super::openapi::ErrorSchema),
    Outcome(EventOutcomeView),
}
