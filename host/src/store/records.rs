//! What the ledger keeps, as it is kept: JSON values in sled trees.
//!
//! Everything here is append-only or immutable once written, except an event's status moving
//! from `failed` to `accepted` when it is retried; commissions are never edited.

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

pub type Properties = BTreeMap<String, String>;

/// A tenant: the business that pays its affiliates.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OperatorRecord {
    pub id: String,
    pub name: String,
    /// ISO 4217 code the operator pays in.
    pub currency: String,
    /// sha256 of the bearer key: a leaked database does not leak working keys.
    pub api_key_sha256: String,
    pub postback_token_sha256: String,
    /// Kept in clear: verifying a Standard Webhooks signature needs the key itself.
    pub webhook_secret: String,
    /// Given to the plugin as `context.config`.
    pub config: Properties,
    /// The plugin version that evaluates new events.
    pub active_plugin: Option<u32>,
    /// Versions activated from a date (and for a scope) rather than at once; the latest that
    /// applies to an event wins, else `active_plugin`.
    #[serde(default)]
    pub dated_activations: Vec<DatedActivation>,
    /// A candidate version evaluated beside the active one, paying nothing (shadow mode).
    #[serde(default)]
    pub shadow_plugin: Option<u32>,
    pub created_at: i64,
    /// The admin's overrides of the host's default limits for this operator.
    #[serde(default)]
    pub limits: OperatorLimits,
    /// Credentials replaced by a rotation, still accepted until they expire.
    #[serde(default)]
    pub previous_credentials: Vec<PreviousCredential>,
    /// The operator's exchange rates into its own currency.
    #[serde(default)]
    pub fx_rates: FxRates,
    /// What happens to an event that occurred in a period already closed.
    #[serde(default)]
    pub late_events: LateEventPolicy,
}

/// What the host does with an event whose time falls in a period the operator has closed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LateEventPolicy {
    /// Accept it; the closed periods it changes are restated, and the difference is paid as
    /// adjustments in the open period, each referencing the period it restates.
    #[default]
    Adjust,
    /// Refuse it with a 422 naming `occurred_at` and the closed period; nothing is written.
    Refuse,
    /// Evaluate it like any other, in the order it arrived; closed periods stay as they were
    /// paid. For per-event deals (CPA, milestones, lots), where what was paid follows the order
    /// events arrived in: restating would replay the customer's history in event-time order,
    /// and the plugin's state (which deposit was the first) would no longer match what it paid.
    AsReceived,
}

/// Units of the operator's currency per unit of each other currency, as the operator set them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FxRates {
    pub rates: BTreeMap<String, Decimal>,
    /// Where the rates came from (e.g. `ECB 2026-11-24`), kept on every conversion.
    pub source: String,
    pub updated_at: i64,
}

/// How an event's amount was converted into the operator's currency: fixed when the event was
/// accepted, so a replay months later converts alike.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FxConversion {
    pub rate: Decimal,
    pub source: String,
    pub rates_updated_at: i64,
    /// The amount in the operator's currency: what the plugin is given.
    pub amount: Decimal,
    pub currency: String,
}

/// Which events a dated activation takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ActivationScope {
    /// Events that occurred at or after `effective_from`.
    Events,
    /// Events of customers bound to an affiliate at or after `effective_from`: customers
    /// already there stay on the version they had.
    NewCustomers,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatedActivation {
    pub version: u32,
    pub effective_from: i64,
    pub scope: ActivationScope,
    /// Only this affiliate's customers; all when `None`.
    pub affiliate: Option<String>,
    pub activated_at: i64,
}

/// Per-operator limits set by the platform admin; `None` keeps the host's default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OperatorLimits {
    pub fuel: Option<u64>,
    pub timeout_ms: Option<u64>,
    pub memory_bytes: Option<usize>,
    pub max_commissions: Option<usize>,
    pub max_state_write_bytes: Option<usize>,
    pub max_log_lines: Option<usize>,
    /// Events accepted per second (a batch counts each event); beyond, 429.
    pub events_per_second: Option<u32>,
    /// What the operator may keep in the ledger, in bytes (events, commissions, plugin state,
    /// customers, affiliates and deal versions); beyond, its writes are refused with 403
    /// `quota_exceeded`. `None`: no quota.
    #[serde(default)]
    pub stored_bytes: Option<u64>,
    /// What the operator's plugin may keep in its state, in bytes (keys and values); an event
    /// whose writes would take it past is stored as failed (`state_quota`), writing nothing.
    /// `None`: the host's `--state-quota-bytes`, if set.
    #[serde(default)]
    pub state_bytes: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CredentialKind {
    ApiKey,
    PostbackToken,
    WebhookSecret,
}

/// A rotated-out credential: the sha256 of a key or token, or the webhook secret itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreviousCredential {
    pub kind: CredentialKind,
    pub value: String,
    pub expires_at: i64,
}

impl OperatorRecord {
    /// The values of a credential that are valid now: the current one, then rotated-out ones
    /// still in their grace period.
    pub fn valid_credentials(&self, kind: CredentialKind, now_ms: i64) -> impl Iterator<Item = &str> {
        let current = match kind {
            CredentialKind::ApiKey => &self.api_key_sha256,
            CredentialKind::PostbackToken => &self.postback_token_sha256,
            CredentialKind::WebhookSecret => &self.webhook_secret,
        };
        std::iter::once(current.as_str()).chain(
            self.previous_credentials
                .iter()
                .filter(move |previous| previous.kind == kind && previous.expires_at > now_ms)
                .map(|previous| previous.value.as_str()),
        )
    }

    /// Replaces a credential with `stored` (a key's or token's sha256, or the webhook secret)
    /// at `now`, keeping the old value valid until `expires_at`. The grace asked for now bounds
    /// every earlier value of this kind too, so a rotation with no grace cuts off all of them (a
    /// leaked key among them) at once.
    pub fn rotate_credential(&mut self, kind: CredentialKind, stored: &str, now: i64, expires_at: i64) {
        let slot = match kind {
            CredentialKind::ApiKey => &mut self.api_key_sha256,
            CredentialKind::PostbackToken => &mut self.postback_token_sha256,
            CredentialKind::WebhookSecret => &mut self.webhook_secret,
        };
        let old = std::mem::replace(slot, stored.to_owned());
        for previous in &mut self.previous_credentials {
            if previous.kind == kind {
                previous.expires_at = previous.expires_at.min(expires_at);
            }
        }
        self.previous_credentials.retain(|previous| previous.expires_at > now);
        if expires_at > now {
            self.previous_credentials.push(PreviousCredential { kind, value: old, expires_at });
        }
    }
}

/// One uploaded version of an operator's plugin. Immutable; the bytes are kept beside it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PluginRecord {
    pub version: u32,
    pub sha256: String,
    pub size: u64,
    /// The `commission:plugin` WIT version the component was built against.
    pub contract: String,
    pub uploaded_at: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AffiliateRecord {
    pub id: String,
    pub parent: Option<String>,
    pub deal: Properties,
    pub updated_at: i64,
}

/// The customer's attribution: set by the first event that names an affiliate, never moved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CustomerBinding {
    pub affiliate: String,
    pub bound_by_event: String,
    /// When the binding event occurred: the customer's start, for dated activations.
    pub bound_at: i64,
}

/// The event as the operator sent it, with its time resolved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredEvent {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub customer: String,
    /// Unix milliseconds; the receipt time when the sender gave none.
    pub occurred_at: i64,
    pub amount: Option<Decimal>,
    pub currency: Option<String>,
    pub affiliate: Option<String>,
    pub attributes: Properties,
    /// Set when `currency` is not the operator's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fx: Option<FxConversion>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventStatus {
    /// Evaluated (or kept unattributed); its commissions, if any, are in the ledger.
    Accepted,
    /// Kept, but not evaluated to the end; see `failure`. `retry-failed` runs it again.
    Failed,
}

/// Why an evaluation did not finish, by the limit or fault that stopped it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    NoActivePlugin,
    OutOfFuel,
    Timeout,
    OutOfMemory,
    StackOverflow,
    Trap,
    RuleError,
    InvalidResult,
    LimitExceeded,
    /// A late event whose restatement of the closed periods could not be computed: an earlier
    /// event did not replay to the end, or a total overflowed. Nothing of it was written.
    Restatement,
    /// Its state writes would have taken the operator's plugin state past its `state_bytes`
    /// quota. Nothing of it was written; retried once the quota is raised or state freed.
    StateQuota,
}

impl FailureKind {
    /// The name used in answers, records and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::NoActivePlugin => "no_active_plugin",
            FailureKind::OutOfFuel => "out_of_fuel",
            FailureKind::Timeout => "timeout",
            FailureKind::OutOfMemory => "out_of_memory",
            FailureKind::StackOverflow => "stack_overflow",
            FailureKind::Trap => "trap",
            FailureKind::RuleError => "rule_error",
            FailureKind::InvalidResult => "invalid_result",
            FailureKind::LimitExceeded => "limit_exceeded",
            FailureKind::Restatement => "restatement",
            FailureKind::StateQuota => "state_quota",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Failure {
    pub kind: FailureKind,
    pub message: String,
}

/// A link of an event's referral chain: the affiliate and the deal terms the plugin was given.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChainLink {
    pub affiliate: String,
    pub deal: Properties,
}

/// A chain link as the ledger keeps it. A deal is up to 16 KiB and a chain 16 links deep, so
/// a copy per event made one small event cost a quarter of a megabyte: each deal version is
/// kept once per operator in the `deals` tree, by the sha256 of its JSON, and events keep that.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum StoredLink {
    Reference {
        affiliate: String,
        deal_sha256: String,
    },
    /// Written before deal versions were kept apart: the deal itself. Still read, never written.
    Inline {
        affiliate: String,
        deal: Properties,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LogLine {
    pub level: String,
    pub message: String,
}

/// What the plugin was given and what it said: enough to explain and to replay the payout.
/// In memory the chain holds the deals themselves ([`ChainLink`]); the ledger stores it with
/// references to deal versions ([`StoredLink`]), and the store turns one into the other.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvaluationRecord<Link = ChainLink> {
    pub plugin_version: u32,
    /// Why that version evaluated it (the active version, or which dated activation).
    #[serde(default)]
    pub version_reason: String,
    pub chain: Vec<Link>,
    pub logs: Vec<LogLine>,
    pub fuel_used: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventRecord<Link = ChainLink> {
    /// Arrival order within the host; orders events and commissions for listing and replay.
    pub seq: u64,
    pub event: StoredEvent,
    /// sha256 of the event as sent: tells a retry (same) from a reused id (different).
    pub content_sha256: String,
    pub received_at: i64,
    pub status: EventStatus,
    pub failure: Option<Failure>,
    pub attributed_to: Option<String>,
    pub evaluation: Option<EvaluationRecord<Link>>,
    pub commission_ids: Vec<String>,
    /// How many times it was evaluated (1, plus one per retry of a failed event).
    pub attempts: u32,
    /// It arrived after its period was closed and restated the closed periods (policy
    /// `adjust`): replays put it where it would have been had it come in time.
    #[serde(default)]
    pub restated: bool,
    /// It occurred in a closed period and was taken as received (policy `as_received`): the
    /// closed periods stay as they were paid. `verify` reports an event committed after its
    /// period's settlement that is neither this nor `restated`: the settlement missed it.
    #[serde(default)]
    pub taken_as_received: bool,
}

impl<Link> EventRecord<Link> {
    /// The same record with each link of its chain turned by `link`.
    pub fn map_links<Other, E>(self, link: impl FnMut(Link) -> Result<Other, E>) -> Result<EventRecord<Other>, E> {
        let evaluation = match self.evaluation {
            Some(evaluation) => Some(EvaluationRecord {
                plugin_version: evaluation.plugin_version,
                version_reason: evaluation.version_reason,
                chain: evaluation.chain.into_iter().map(link).collect::<Result<_, _>>()?,
                logs: evaluation.logs,
                fuel_used: evaluation.fuel_used,
            }),
            None => None,
        };
        Ok(EventRecord {
            seq: self.seq,
            event: self.event,
            content_sha256: self.content_sha256,
            received_at: self.received_at,
            status: self.status,
            failure: self.failure,
            attributed_to: self.attributed_to,
            evaluation,
            commission_ids: self.commission_ids,
            attempts: self.attempts,
            restated: self.restated,
            taken_as_received: self.taken_as_received,
        })
    }
}

/// One payout, immutable. A correction is another commission that references it (later models).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommissionRecord {
    pub id: String,
    pub event_id: String,
    pub affiliate: String,
    pub customer: String,
    pub amount: Decimal,
    pub currency: String,
    pub rule: String,
    pub explanation: String,
    pub plugin_version: u32,
    pub occurred_at: i64,
    pub created_at: i64,
    /// The id of the commission this one claws back, for a reversal.
    #[serde(default)]
    pub reverses: Option<String>,
    /// The exchange rate the event's amount was converted at, if it was.
    #[serde(default)]
    pub fx_rate: Option<Decimal>,
    /// Why `plugin_version` evaluated the event.
    #[serde(default)]
    pub version_reason: String,
    /// Not to be approved before this time: the affiliate's deal's `hold_days` after creation.
    #[serde(default)]
    pub hold_until: Option<i64>,
    /// For an adjustment: the closed period's settlement it restates. Set by the host only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restates: Option<Restatement>,
    /// The plugin's own figure, when it had more decimals than the currency's minor units and
    /// `amount` is it rounded (see [`crate::pipeline::to_minor_units`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unrounded_amount: Option<Decimal>,
}

/// What an adjustment restates: a closed period, through one of its settlement entries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Restatement {
    /// `YYYY-MM`.
    pub period: String,
    /// The id of the settlement entry (`commission-host.period:{period}:{affiliate}`) whose
    /// payout the adjustment corrects.
    pub settlement: String,
}

/// What a shadow version said about one ledger entry: recorded apart, never paid.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShadowResult {
    pub seq: u64,
    pub event_id: String,
    pub occurred_at: i64,
    pub commissions: Vec<CommissionRecord>,
    pub failure: Option<Failure>,
}

/// Where a commission is in its life. Every commission starts `pending`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CommissionStatus {
    #[default]
    Pending,
    Approved,
    Paid,
    /// Clawed back by a reversal (set by the host when the reversal is committed).
    Reversed,
    Rejected,
}

impl CommissionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CommissionStatus::Pending => "pending",
            CommissionStatus::Approved => "approved",
            CommissionStatus::Paid => "paid",
            CommissionStatus::Reversed => "reversed",
            CommissionStatus::Rejected => "rejected",
        }
    }

    /// The moves an operator or admin may make; `reversed` is the host's alone.
    pub fn may_become(self, next: CommissionStatus) -> bool {
        use CommissionStatus::*;
        matches!((self, next), (Pending, Approved) | (Pending, Rejected) | (Approved, Paid) | (Approved, Rejected))
    }
}

/// One move of a commission's status: the audit trail.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StatusChange {
    pub status: CommissionStatus,
    pub at: i64,
    /// `admin`, `operator`, or `host`.
    pub by: String,
    pub note: String,
    /// For a move to `paid` by a payout run: the payment's reference (the bank transfer's, say),
    /// which also makes the run idempotent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StatusRecord {
    pub status: CommissionStatus,
    pub history: Vec<StatusChange>,
    /// For a commission clawed back: by which reversal, how much, and what it did to the pair.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clawed_back: Option<ClawBack>,
    /// For a reversal netted against its unpaid original: the original's id. It takes each of
    /// the original's moves and makes none of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moves_with: Option<String>,
}

/// What a reversal did, decided by the status of the commission it claws back when it is
/// committed (the README's "Reversals" states the rules).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ClawBack {
    /// The reversal's id.
    pub by: String,
    /// The reversal's amount (negative): what it takes back.
    #[schema(value_type = String)]
    pub amount: Decimal,
    pub outcome: ClawBackOutcome,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ClawBackOutcome {
    /// Unpaid and reversed in full: both sides `reversed`, neither payable.
    Voided,
    /// Unpaid and reversed in part: the reversal takes the original's status and moves with it,
    /// so what is paid is the rest.
    Netted,
    /// Paid already: the original stays `paid`; the reversal is a deduction, payable on its own.
    Deducted,
    /// Rejected (never paid): the reversal is `rejected`, as there is nothing to claw back.
    NothingToClawBack,
}

impl StatusRecord {
    /// Why an operator or admin may not move this commission to `next`, if not: the end of a
    /// sentence that starts with the commission's id.
    pub fn refusal(&self, next: CommissionStatus) -> Option<String> {
        if let Some(original) = &self.moves_with {
            return Some(format!(
                "is a reversal netted against {original}, which is not paid: it moves with {original}, not on its own"
            ));
        }
        (!self.status.may_become(next))
            .then(|| format!("is {}; it cannot become {}", self.status.as_str(), next.as_str()))
    }
}

impl CommissionRecord {
    /// Ids sort in ledger order: the event's sequence number, then the commission's place in
    /// the plugin's answer.
    pub fn id_for(seq: u64, index: usize) -> String {
        format!("cm_{seq:016x}_{index:04x}")
    }
}

/// A read-only key an operator issued for one affiliate (an affiliate portal): only its sha256
/// is kept, like the operator's own API key. Revoked keys stay, for the record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AffiliateKeyRecord {
    /// Public: the part of the key that finds this record, and the name to revoke it by.
    pub id: String,
    pub affiliate: String,
    pub sha256: String,
    pub created_at: i64,
    #[serde(default)]
    pub revoked_at: Option<i64>,
}

/// A payout run as it was made: its reference, what it asked for, and each commission it
/// moved to `paid` (with the reversals netted against them). Kept so that the same reference
/// sent again answers the same payout and pays nothing more.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PayoutRecord {
    pub reference: String,
    /// sha256 of the selection asked for: tells a retry (same) from a reused reference.
    pub request_sha256: String,
    pub at: i64,
    pub by: String,
    pub paid: Vec<String>,
}
