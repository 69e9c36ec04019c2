//! Replaying an operator's stored events through its plugins, in scratch state, writing nothing.
//!
//! Events are replayed in ledger order (the order they took effect, see `Store::commit_events`),
//! each with the referral chain and deal terms it was evaluated with. Plugins are deterministic,
//! so this answers two questions exactly:
//!
//! - **verify** ([`crate::verify`]): does replaying each accepted event through the version that
//!   evaluated it give the same commissions, and the same final plugin state, as the ledger holds?
//! - **backtest**: what would plugin version N have paid over a time range, and how does that
//!   differ from what was paid? Every attributed event goes through N (failed ones included),
//!   so N's own state builds up as it would have live.

use std::collections::BTreeMap;
use std::sync::Arc;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::amounts::{AmountOverflow, Payout, checked_add};
use crate::pipeline::{IngestError, Period, Pipeline, Run, settlement_period};
use crate::sandbox::ScratchState;
use crate::store::checkpoints::State;
use crate::store::records::{EventRecord, Failure, OperatorRecord};

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EventDifference {
    pub event_id: String,
    #[serde(serialize_with = "crate::event::serialize_time", deserialize_with = "crate::event::deserialize_time")]
    #[schema(value_type = String, format = DateTime)]
    pub occurred_at: i64,
    pub paid: Vec<Payout>,
    pub replayed: Vec<Payout>,
    /// Why the replay did not finish, if it did not.
    pub replay_failure: Option<Failure>,
    /// What else is wrong with the event: its period's settlement missed it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VerifyReport {
    pub events_replayed: usize,
    pub events_matching: usize,
    pub differences: Vec<EventDifference>,
    /// State keys whose replayed value differs from the stored one; `None` when events arrived
    /// during the verify, so the stored state had moved on and was not compared.
    pub state_keys_differing: Option<Vec<String>>,
    /// Stored checkpoints (of plugin state, before each month's settlements) that do not read
    /// back or differ from the state the replay had at their place.
    pub checkpoints_differing: Vec<CheckpointDifference>,
    /// Every accepted event replayed to the end. `false` when a replay failed (a limit lowered
    /// since, say: see the differences' `replay_failure`): the ledger could not be reproduced,
    /// and the replayed state compared is one the live ledger never had.
    pub complete: bool,
    /// The ledger position this verify replayed from: 1, or, for a job started with
    /// `"start": "last_verified"`, the resume point of the operator's previous verify job. The
    /// entries before it are reported as that job found them; the state there is the stored
    /// checkpoint that job confirmed, read back and checked against the digest it saw.
    #[serde(default = "first_position")]
    pub verified_from: u64,
}

pub(crate) fn first_position() -> u64 {
    1
}

/// A stored checkpoint that a replay of the ledger does not confirm.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CheckpointDifference {
    /// The month whose settlements it precedes; `null` for a periodic one
    /// (`serve --checkpoint-every`).
    pub period: Option<String>,
    /// Its ledger position: the state is the one just before this sequence number.
    pub seq: u64,
    pub problem: String,
    /// The state keys whose stored value differs from the replayed one.
    pub keys: Vec<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AffiliateTotal {
    pub affiliate: String,
    pub currency: String,
    #[schema(value_type = String)]
    pub paid: Decimal,
    #[schema(value_type = String)]
    pub would_pay: Decimal,
    #[schema(value_type = String)]
    pub difference: Decimal,
}

/// What was paid and what a replay would pay, per (affiliate, currency): backtests and shadows.
#[derive(Default)]
pub(crate) struct AffiliateTotals(BTreeMap<(String, String), (Decimal, Decimal)>);

impl AffiliateTotals {
    pub(crate) fn add(&mut self, paid: &[Payout], would_pay: &[Payout]) -> Result<(), AmountOverflow> {
        for (payouts, is_paid) in [(paid, true), (would_pay, false)] {
            for payout in payouts {
                let total = self.0.entry((payout.affiliate.clone(), payout.currency.clone())).or_default();
                let (total, side) =
                    if is_paid { (&mut total.0, "paid") } else { (&mut total.1, "the replay would pay") };
                checked_add(total, payout.amount, || {
                    format!("total {side} to {} in {}", payout.affiliate, payout.currency)
                })?;
            }
        }
        Ok(())
    }

    pub(crate) fn into_rows(self) -> Result<Vec<AffiliateTotal>, AmountOverflow> {
        self.0
            .into_iter()
            .map(|((affiliate, currency), (paid, would_pay))| {
                let difference = would_pay.checked_sub(paid).ok_or_else(|| AmountOverflow {
                    what: format!("difference between what {affiliate} would be paid and was paid in {currency}"),
                    total: would_pay,
                    amount: -paid,
                })?;
                Ok(AffiliateTotal { affiliate, currency, paid, would_pay, difference })
            })
            .collect()
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BacktestReport {
    pub version: u32,
    /// The ledger position the replay started from: 1 from the ledger's start, or the
    /// checkpoint's (`start: checkpoint`).
    pub replayed_from: u64,
    pub events_compared: usize,
    pub events_changed: usize,
    pub affiliates: Vec<AffiliateTotal>,
    pub changes: Vec<EventDifference>,
}

/// Where a backtest's or a shadow's version starts building its plugin state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReplayStart {
    /// From the ledger's first event, with empty state: the version builds its own state over
    /// all history, as if it had been live from the start. Takes time in proportion to history.
    #[default]
    Ledger,
    /// From the operator's state as it stood at a checkpoint: for a backtest, the one at or
    /// before the range's first event (`from` is required); for a shadow, the latest. What
    /// switching to the version then would have paid, in time proportional to what follows
    /// the checkpoint, not to history. For the version that was live, the same as `ledger`.
    Checkpoint,
}

/// Which events a replay reports on, by the time they occurred: `from` inclusive, `to` exclusive.
#[derive(Debug, Clone, Copy, Default)]
pub struct TimeRange {
    pub from: Option<i64>,
    pub to: Option<i64>,
}

impl TimeRange {
    fn contains(&self, ms: i64) -> bool {
        self.from.is_none_or(|from| ms >= from) && self.to.is_none_or(|to| ms < to)
    }
}

impl Pipeline {
    /// Replays every attributed event through `version` and compares, for the events that
    /// occurred in `range`, what it would have paid with what was paid.
    pub fn backtest(
        &self,
        operator: &OperatorRecord,
        version: u32,
        range: TimeRange,
        start: ReplayStart,
    ) -> Result<BacktestReport, IngestError> {
        let last_sequence = self.store().last_sequence(&operator.id)?;
        let (after, state) = match (start, range.from) {
            (ReplayStart::Checkpoint, Some(from)) => self.checkpoint_before(operator, from)?,
            _ => (0, State::new()),
        };
        let scratch = Arc::new(ScratchState::from_state(state));
        let mut totals = AffiliateTotals::default();
        let mut report = BacktestReport {
            version,
            replayed_from: after + 1,
            events_compared: 0,
            events_changed: 0,
            affiliates: Vec::new(),
            changes: Vec::new(),
        };
        for record in self.records_from(operator, after, last_sequence) {
            let record = record?;
            let Some(affiliate) = &record.attributed_to else { continue };
            let chain = match &record.evaluation {
                Some(evaluation) => evaluation.chain.clone(),
                None => self.referral_chain(&operator.id, affiliate)?,
            };
            let evaluated = self.run_plugin(
                operator,
                &record.event,
                chain,
                version,
                settlement_period(&record.event).as_ref(),
                scratch.clone(),
                Run::Replay,
            )?;
            let replayed: Vec<Payout> = evaluated.commissions.iter().map(Payout::from).collect();
            if evaluated.failure.is_none() {
                scratch.apply(evaluated.state_writes);
            }
            if !range.contains(record.event.occurred_at) {
                continue;
            }
            let paid = self.paid(operator, &record)?;
            totals.add(&paid, &replayed)?;
            report.events_compared += 1;
            if paid != replayed || evaluated.failure.is_some() {
                report.events_changed += 1;
                report.changes.push(EventDifference {
                    event_id: record.event.id.clone(),
                    occurred_at: record.event.occurred_at,
                    paid,
                    replayed,
                    replay_failure: evaluated.failure,
                    problem: None,
                });
            }
        }
        report.affiliates = totals.into_rows()?;
        Ok(report)
    }

    /// Where a backtest that starts from a checkpoint starts: the sound checkpoint at or before
    /// the first event dated in `from`'s month or after it (`after` is the position before it),
    /// with the state it holds; the ledger's start if there is none.
    fn checkpoint_before(&self, operator: &OperatorRecord, from: i64) -> Result<(u64, State), IngestError> {
        let Some(month) = Period::containing(from) else { return Ok((0, State::new())) };
        self.month_span(operator, &month.id)?; // brings the months' index up to date
        let Some(first) = self.store().first_seq_dated_from(&operator.id, &month.id)? else {
            return Ok((0, State::new()));
        };
        Ok(match self.store().checkpoint_at_or_before(&operator.id, first)? {
            Some((seq, state)) => (seq - 1, state),
            None => (0, State::new()),
        })
    }

    /// What the event paid by itself: its commissions, without the adjustments a late event
    /// made for the periods it restated.
    pub(crate) fn paid(&self, operator: &OperatorRecord, record: &EventRecord) -> Result<Vec<Payout>, IngestError> {
        Ok(self
            .store()
            .commission_records(&operator.id, &record.commission_ids)?
            .iter()
            .filter(|commission| commission.restates.is_none())
            .map(Payout::from)
            .collect())
    }
}
