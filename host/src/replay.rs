//! Replaying an operator's stored events through its plugins, in scratch state, writing nothing.
//!
//! Events are replayed in ledger order (the order they took effect, see `Store::commit_events`),
//! each with the referral chain and deal terms it was evaluated with. Plugins are deterministic,
//! so this answers two questions exactly:
//!
//! - **verify**: does replaying each accepted event through the version that evaluated it give
//!   the same commissions, and the same final plugin state, as the ledger holds?
//! - **backtest**: what would plugin version N have paid over a time range, and how does that
//!   differ from what was paid? Every attributed event goes through N (failed ones included),
//!   so N's own state builds up as it would have live.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use rust_decimal::Decimal;
use serde::Serialize;

use crate::amounts::{AmountOverflow, Payout, checked_add};
use crate::pipeline::restate::missed_by_settlement;
use crate::pipeline::{IngestError, Pipeline, Run, settlement_period};
use crate::sandbox::ScratchState;
use crate::store::records::{EventRecord, Failure, FailureKind, OperatorRecord};

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EventDifference {
    pub event_id: String,
    #[serde(serialize_with = "crate::event::serialize_time")]
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

#[derive(Debug, Serialize, utoipa::ToSchema)]
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
}

/// A stored checkpoint that a replay of the ledger does not confirm.
#[derive(Debug, Serialize, utoipa::ToSchema)]
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
    pub events_compared: usize,
    pub events_changed: usize,
    pub affiliates: Vec<AffiliateTotal>,
    pub changes: Vec<EventDifference>,
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
    /// Replays every accepted event through the version that evaluated it, in ledger order, as
    /// live did (see [`crate::pipeline::checkpoints`]: a late event is evaluated where it arrived and
    /// restates the closed months from their checkpoints), and compares: each event's own
    /// commissions, a late event's adjustments, the final state, and each stored checkpoint
    /// with the state the replay had there. An event committed after its period's settlement,
    /// neither restated nor taken as received, is reported too: the settlement missed it.
    pub fn verify(&self, operator: &OperatorRecord) -> Result<VerifyReport, IngestError> {
        let store = self.store();
        let last_sequence = store.last_sequence(&operator.id)?;
        let mut first_settlement: HashMap<String, u64> = HashMap::new();
        let mut report = VerifyReport {
            events_replayed: 0,
            events_matching: 0,
            differences: Vec::new(),
            state_keys_differing: None,
            checkpoints_differing: Vec::new(),
            complete: true,
        };
        let stored = store.stored_checkpoints(&operator.id)?;
        let periodic: Vec<u64> =
            stored.iter().filter(|checkpoint| checkpoint.period.is_none()).map(|checkpoint| checkpoint.seq).collect();
        let replay = self.replay_ledger(operator, last_sequence, &periodic, |record, evaluated, adjustments| {
            if let Some(period) = settlement_period(&record.event) {
                first_settlement.entry(period.id).or_insert(record.seq);
            }
            let mut replayed: Vec<Payout> = evaluated.commissions.iter().map(Payout::from).collect();
            let mut paid = self.paid(operator, record)?;
            let mut matching = paid == replayed;
            let mut failure = evaluated.failure.clone();
            if let Some(adjustments) = adjustments {
                let ledger: Vec<Payout> = self
                    .store()
                    .commission_records(&operator.id, &record.commission_ids)?
                    .iter()
                    .filter(|commission| commission.restates.is_some())
                    .map(Payout::from)
                    .collect();
                let computed: Vec<Payout> = match adjustments {
                    Ok(adjustments) => adjustments.iter().map(Payout::from).collect(),
                    Err(message) => {
                        failure.get_or_insert(Failure { kind: FailureKind::Restatement, message: message.clone() });
                        Vec::new()
                    }
                };
                // By amount: an adjustment's explanation names when it was computed.
                let amounts = |payouts: &[Payout]| {
                    let mut amounts: Vec<_> = payouts
                        .iter()
                        .map(|p| (p.affiliate.clone(), p.rule.clone(), p.currency.clone(), p.amount))
                        .collect();
                    amounts.sort();
                    amounts
                };
                matching &= amounts(&ledger) == amounts(&computed);
                paid.extend(ledger);
                replayed.extend(computed);
            }
            report.events_replayed += 1;
            report.complete &= evaluated.failure.is_none();
            let problem = missed_by_settlement(&first_settlement, record);
            if failure.is_none() && matching && problem.is_none() {
                report.events_matching += 1;
            } else {
                report.differences.push(EventDifference {
                    event_id: record.event.id.clone(),
                    occurred_at: record.event.occurred_at,
                    paid,
                    replayed,
                    replay_failure: failure,
                    problem,
                });
            }
            Ok(())
        })?;
        for checkpoint in &stored {
            let replayed = match &checkpoint.period {
                Some(period) if replay.books.contains_key(period) => replay.checkpoints.get(period),
                Some(_) => None,
                None => replay.at.get(&checkpoint.seq),
            };
            let Some(replayed) = replayed else { continue };
            let difference = match store.checkpoint_state(&operator.id, checkpoint.seq)? {
                None => Some((
                    "the stored checkpoint does not read back: it, or one before it, is missing or was altered (its \
                     digest does not match)"
                        .to_owned(),
                    Vec::new(),
                )),
                Some(state) if state != *replayed => {
                    let keys: std::collections::BTreeSet<&String> = state.keys().chain(replayed.keys()).collect();
                    let differing =
                        keys.into_iter().filter(|key| state.get(*key) != replayed.get(*key)).cloned().collect();
                    Some(("the stored checkpoint differs from the state the replay had there".to_owned(), differing))
                }
                Some(_) => None,
            };
            if let Some((problem, keys)) = difference {
                report.checkpoints_differing.push(CheckpointDifference {
                    period: checkpoint.period.clone(),
                    seq: checkpoint.seq,
                    problem,
                    keys,
                });
            }
        }
        if store.last_sequence(&operator.id)? == last_sequence {
            let stored = store.state_entries(&operator.id)?;
            let replayed_state = &replay.state;
            let keys: std::collections::BTreeSet<&String> = stored.keys().chain(replayed_state.keys()).collect();
            report.state_keys_differing =
                Some(keys.into_iter().filter(|key| stored.get(*key) != replayed_state.get(*key)).cloned().collect());
        }
        Ok(report)
    }

    /// Replays every attributed event through `version` and compares, for the events that
    /// occurred in `range`, what it would have paid with what was paid.
    pub fn backtest(
        &self,
        operator: &OperatorRecord,
        version: u32,
        range: TimeRange,
    ) -> Result<BacktestReport, IngestError> {
        let last_sequence = self.store().last_sequence(&operator.id)?;
        let scratch = Arc::new(ScratchState::default());
        let mut totals = AffiliateTotals::default();
        let mut report = BacktestReport {
            version,
            events_compared: 0,
            events_changed: 0,
            affiliates: Vec::new(),
            changes: Vec::new(),
        };
        for record in self.records_in_order(operator, last_sequence) {
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

    /// What the event paid by itself: its commissions, without the adjustments a late event
    /// made for the periods it restated.
    fn paid(&self, operator: &OperatorRecord, record: &EventRecord) -> Result<Vec<Payout>, IngestError> {
        Ok(self
            .store()
            .commission_records(&operator.id, &record.commission_ids)?
            .iter()
            .filter(|commission| commission.restates.is_none())
            .map(Payout::from)
            .collect())
    }
}
