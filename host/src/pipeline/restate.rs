//! Late events: restating the closed periods they change.
//!
//! A closed period is never edited. An event that occurred in one arrives *late*: it is
//! evaluated as usual (its own commissions are paid as usual), and the closed periods it changes
//! are **restated**: the ledger is replayed in scratch state in its *restated order* (below),
//! each settlement entry's replayed payout is compared, per affiliate, rule and currency, with
//! what the ledger paid for it (the settlement plus adjustments made before), and the
//! difference is paid as adjustment entries in the open period, each referencing the
//! settlement (and so the period) it restates. With negative carryover a late event changes
//! every later closed month, and all of them are restated at once, so the total difference is
//! paid once.
//!
//! The **restated order** is the ledger order, except that an event that arrived after its
//! period was closed, and restated it, is moved to just before the period's first settlement
//! entry (after the period's earlier late events): where it would have been had it come in
//! time. Under the `as_received` policy a late event restates nothing and is not moved.
//!
//! The live plugin state is kept equal to the state a replay in restated order ends with: a late
//! event's commit writes that state (the carryover the restated months leave, say), so the next
//! close settles on restated figures. The commit goes through only if no other event was
//! committed since the replay; otherwise the event is evaluated and restated again.
//!
//! A restatement is all or nothing. If any replayed event does not replay to the end (a limit
//! lowered since it was evaluated, say), or a total overflows a decimal, the replayed state is not
//! the ledger's, and writing it would wipe live state (a month's NGR): the late event is stored
//! as failed instead, with a message naming the replayed event and why, and nothing else is
//! written. Nothing is lost: `retry-failed` restates it once the cause is fixed.
//!
//! The **open period** adjustments are dated in is the month after the operator's latest closed
//! period: it is the next one to be closed and paid, whatever the host's clock says.
//!
//! Period statements are read off the same replay ([`super::statements`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use rust_decimal::Decimal;

use super::{Evaluated, IngestError, Period, Pipeline, SETTLEMENT_PREFIX, settlement_period};
use crate::amounts::{AmountOverflow, Payout, checked_add};
use crate::sandbox::ScratchState;
use crate::store::StoreError;
use crate::store::records::{CommissionRecord, EventRecord, Failure, FailureKind, OperatorRecord, Restatement};
use crate::terms::hold_until;

/// One ledger entry in restated order.
pub(crate) struct Entry {
    pub(crate) record: EventRecord,
    /// It arrived after its period was closed, and was moved before the period's settlements.
    pub(crate) late: bool,
}

/// The values, before an evaluation, of the state keys it wrote.
pub type Before = BTreeMap<String, Option<Vec<u8>>>;

/// The sequence number of each settled period's first settlement entry, by period id.
pub(crate) fn first_settlements<'a>(records: impl IntoIterator<Item = &'a EventRecord>) -> HashMap<String, u64> {
    let mut first_settlement: HashMap<String, u64> = HashMap::new();
    for record in records {
        if let Some(period) = settlement_period(&record.event) {
            let first = first_settlement.entry(period.id).or_insert(record.seq);
            *first = (*first).min(record.seq);
        }
    }
    first_settlement
}

/// Why the settlements of its period missed `record`, if they did: it occurred in a period
/// whose first settlement committed before it, and it was neither restated nor taken as
/// received. The ordering of closes with events makes this impossible; `verify` reports it.
pub(crate) fn missed_by_settlement(first_settlement: &HashMap<String, u64>, record: &EventRecord) -> Option<String> {
    if record.restated || record.taken_as_received || settlement_period(&record.event).is_some() {
        return None;
    }
    let period = Period::containing(record.event.occurred_at)?;
    let settled = *first_settlement.get(&period.id)?;
    (settled < record.seq).then(|| {
        format!(
            "occurred in {}, and was committed after the period's settlement (ledger entry {settled}) without being \
             restated: the settlement did not count it",
            period.id
        )
    })
}

/// Sorts ledger records (in ledger order) into restated order (see the module's docs).
pub(crate) fn restated_order(records: Vec<EventRecord>) -> Vec<Entry> {
    let first_settlement = first_settlements(&records);
    let mut keyed: Vec<((u64, u8, u64), Entry)> = records
        .into_iter()
        .map(|record| {
            let anchor = match settlement_period(&record.event) {
                Some(_) => None,
                None if !record.restated => None,
                None => Period::containing(record.event.occurred_at)
                    .and_then(|period| first_settlement.get(&period.id).copied())
                    .filter(|first| *first < record.seq),
            };
            let key = match anchor {
                Some(first) => (first, 0, record.seq),
                None => (record.seq, 1, 0),
            };
            (key, Entry { record, late: anchor.is_some() })
        })
        .collect();
    keyed.sort_by_key(|(key, _)| *key);
    keyed.into_iter().map(|(_, entry)| entry).collect()
}

/// Totals per (affiliate, rule, currency).
pub type Totals = BTreeMap<(String, String, String), Decimal>;

pub(crate) fn add_to(totals: &mut Totals, payout: &Payout) -> Result<(), AmountOverflow> {
    let total = totals.entry((payout.affiliate.clone(), payout.rule.clone(), payout.currency.clone())).or_default();
    checked_add(total, payout.amount, || {
        format!("total paid to {} under {} in {}", payout.affiliate, payout.rule, payout.currency)
    })
}

/// Why a late event's restatement was not computed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RestateError {
    /// The ledger cannot be restated as it stands: the late event is stored as failed with this
    /// (and `retry-failed` restates it once the cause is fixed).
    #[error("{}", .0.message)]
    Failed(Failure),
    #[error(transparent)]
    Ingest(#[from] IngestError),
}

impl From<StoreError> for RestateError {
    fn from(error: StoreError) -> Self {
        Self::Ingest(error.into())
    }
}

impl RestateError {
    pub(crate) fn failed(message: String) -> Self {
        Self::Failed(Failure { kind: FailureKind::Restatement, message })
    }
}

/// What a late event changes: the adjustments to pay, and the plugin state as restated.
pub(crate) struct Restated {
    pub(crate) adjustments: Vec<CommissionRecord>,
    pub(crate) state_writes: BTreeMap<String, Option<Vec<u8>>>,
    /// The operator's last sequence number the replay saw.
    pub(crate) last_seq: u64,
}

/// What a settlement entry paid: its own commissions, and the adjustments made for it since.
#[derive(Debug, Default)]
pub struct SettlementPaid {
    pub at_close: Vec<CommissionRecord>,
    pub adjustments: Vec<CommissionRecord>,
}

impl SettlementPaid {
    /// The total paid per (affiliate, rule, currency).
    pub fn totals(&self) -> Result<Totals, AmountOverflow> {
        let mut totals = Totals::new();
        for commission in self.at_close.iter().chain(&self.adjustments) {
            add_to(&mut totals, &Payout::from(commission))?;
        }
        Ok(totals)
    }
}

/// The period `at` falls in, if it is closed: months close in order, so every month up to the
/// operator's latest closed one is closed, settled or not (a month before the first one closed
/// had no event when it was closed, and never will be settled).
pub(crate) fn closed_period_of(
    pipeline: &Pipeline,
    operator: &str,
    at: i64,
) -> Result<Option<Period>, crate::store::StoreError> {
    let Some(period) = Period::containing(at) else { return Ok(None) };
    Ok(latest_closed(pipeline.store(), operator)?.filter(|latest| period.id <= *latest).map(|_| period))
}

/// The id (`YYYY-MM`) of the operator's latest closed month.
pub(crate) fn latest_closed(
    store: &crate::store::Store,
    operator: &str,
) -> Result<Option<String>, crate::store::StoreError> {
    let latest = store.latest_settlement_id(operator, SETTLEMENT_PREFIX)?;
    Ok(latest.and_then(|id| Some(id.strip_prefix(SETTLEMENT_PREFIX)?.split(':').next()?.to_owned())))
}

impl Pipeline {
    /// Replays `entries` (the accepted, evaluated ones) in scratch state, in order, giving each
    /// to `visit` with what its replay produced and the values it overwrote; returns the state
    /// the replay ends with. A replay that fails leaves no writes, as live; `visit` decides
    /// whether the replay goes on without them (a report) or stops (a restatement).
    pub(crate) fn replay_entries<E: From<IngestError>>(
        &self,
        operator: &OperatorRecord,
        entries: &[Entry],
        mut visit: impl FnMut(&Entry, &Evaluated, &Before) -> Result<(), E>,
    ) -> Result<BTreeMap<String, Vec<u8>>, E> {
        let scratch = Arc::new(ScratchState::default());
        for entry in entries {
            let record = &entry.record;
            let Some(evaluated) = self.replay_accepted(operator, record, scratch.clone())? else { continue };
            let before: Before = evaluated.state_writes.keys().map(|key| (key.clone(), scratch.value(key))).collect();
            visit(entry, &evaluated, &before)?;
            if evaluated.failure.is_none() {
                scratch.apply(evaluated.state_writes);
            }
        }
        let scratch =
            Arc::try_unwrap(scratch).map_err(|_| IngestError::Internal("scratch state still shared".into()))?;
        Ok(scratch.into_entries())
    }

    /// What each settlement entry among `entries` paid, by settlement id. Adjustments are only
    /// ever made on late events, so only those are read besides the settlements.
    pub(crate) fn settlements_paid(
        &self,
        operator: &OperatorRecord,
        entries: &[Entry],
    ) -> Result<BTreeMap<String, SettlementPaid>, IngestError> {
        let mut paid: BTreeMap<String, SettlementPaid> = BTreeMap::new();
        for entry in entries {
            let is_settlement = settlement_period(&entry.record.event).is_some();
            if !is_settlement && !entry.late {
                continue;
            }
            let commissions = self.store().commission_records(&operator.id, &entry.record.commission_ids)?;
            if is_settlement {
                paid.entry(entry.record.event.id.clone()).or_default().at_close = commissions;
            } else {
                for commission in commissions {
                    if let Some(restates) = &commission.restates {
                        paid.entry(restates.settlement.clone()).or_default().adjustments.push(commission);
                    }
                }
            }
        }
        Ok(paid)
    }

    /// Restates the closed periods with `draft`, a late event evaluated but not committed, whose
    /// evaluation wrote `writes`: books them into its month and re-runs that month's settlements
    /// and those of the closed months after it from their checkpoints ([`crate::pipeline::checkpoints`]).
    pub(crate) fn restate(
        &self,
        operator: &OperatorRecord,
        draft: &EventRecord,
        writes: &BTreeMap<String, Option<Vec<u8>>>,
    ) -> Result<Restated, RestateError> {
        let store = self.store();
        let last_seq = store.last_sequence(&operator.id)?;
        let month = Period::containing(draft.event.occurred_at)
            .ok_or_else(|| IngestError::Internal("a late event outside the calendar".into()))?;
        let mut rebuilt = None;
        let mut books = match self.checked_books(operator)? {
            Some(books) => books,
            None => {
                let replay = self.rebuild_books(operator)?;
                let books = replay.books.values().cloned().collect();
                rebuilt = Some(replay.checkpoints);
                books
            }
        };
        // Booked into its month; into the next closed one if its month was closed with nothing
        // to settle.
        let Some(k) = books.iter().position(|book| book.period >= month.id) else {
            return Ok(Restated { adjustments: Vec::new(), state_writes: writes.clone(), last_seq });
        };
        let resettled = match &rebuilt {
            Some(checkpoints) => {
                self.resettle(operator, &mut books, k, writes, &mut |book| Ok(checkpoints.get(&book.period).cloned()))?
            }
            None => self.resettle(operator, &mut books, k, writes, &mut |book| {
                self.checkpoint_or_rederived(operator, book.seq, Some(&book.period))
            })?,
        };
        let (resettled, live) = match resettled {
            Some(found) => found,
            // A checkpoint is missing or altered: replay the ledger once, and go on from it.
            None => {
                tracing::warn!(operator = %operator.id, late = %draft.event.id, "a checkpoint could not be read; replaying the ledger");
                let replay = self.rebuild_books(operator)?;
                books = replay.books.values().cloned().collect();
                let checkpoints = replay.checkpoints;
                self.resettle(operator, &mut books, k, writes, &mut |book| Ok(checkpoints.get(&book.period).cloned()))?
                    .ok_or_else(|| IngestError::Internal("a replayed checkpoint is missing".into()))?
            }
        };
        let adjustments = self.adjustments(operator, draft, &resettled, &books, draft.received_at)?;
        for adjustment in &adjustments {
            if let Some(restates) = &adjustment.restates
                && let Some(book) = books.iter_mut().find(|book| book.period == restates.period)
            {
                super::checkpoints::add_paid(book, &restates.settlement, std::slice::from_ref(adjustment));
            }
        }
        books[k].late.push(draft.event.id.clone());
        store.put_pending_books(&operator.id, &draft.event.id, last_seq + 1, &books[k..])?;
        let mut state_writes = writes.clone();
        state_writes.extend(live);
        Ok(Restated { adjustments, state_writes, last_seq })
    }

    /// The adjustments that pay the difference between what each re-run settlement pays now and
    /// what `books` say it paid (at the close plus earlier adjustments), on `draft`'s behalf.
    pub(crate) fn adjustments(
        &self,
        operator: &OperatorRecord,
        draft: &EventRecord,
        resettled: &[super::checkpoints::Resettled],
        books: &[crate::store::checkpoints::PeriodBook],
        now: i64,
    ) -> Result<Vec<CommissionRecord>, RestateError> {
        let store = self.store();
        let open = self.open_period(operator)?;
        let mut adjustments = Vec::new();
        for settled in resettled {
            let super::checkpoints::Resettled { settlement, period, version, totals: replayed, explanations } = settled;
            let before = match books.iter().find(|book| book.period == *period) {
                Some(book) => super::checkpoints::paid_totals(book, settlement).map_err(overflow)?,
                None => Totals::new(),
            };
            let keys: std::collections::BTreeSet<_> = before.keys().chain(replayed.keys()).cloned().collect();
            for key in keys {
                let was = before.get(&key).copied().unwrap_or_default();
                let now_pays = replayed.get(&key).copied().unwrap_or_default();
                let difference = now_pays.checked_sub(was).ok_or_else(|| {
                    overflow(AmountOverflow {
                        what: format!("difference between what {period} now pays {} and what it paid", key.0),
                        total: now_pays,
                        amount: -was,
                    })
                })?;
                if difference.is_zero() {
                    continue;
                }
                let (affiliate, rule, currency) = key;
                // Held like any commission of the affiliate's: a late event is no more final.
                let held = match store.affiliate(&operator.id, &affiliate)? {
                    Some(record) => hold_until(&record.deal, now)
                        .map_err(|problem| IngestError::Internal(format!("affiliate {affiliate}: {problem}")))?,
                    None => None,
                };
                let why = if explanations.is_empty() { "nothing to pay".to_owned() } else { explanations.join("; ") };
                adjustments.push(CommissionRecord {
                    id: String::new(),
                    event_id: draft.event.id.clone(),
                    affiliate,
                    customer: draft.event.customer.clone(),
                    amount: difference,
                    currency: currency.clone(),
                    rule,
                    explanation: format!(
                        "restates {period} after late event {}: {period} now pays {now_pays} {currency} ({why}); {was} paid before",
                        draft.event.id
                    ),
                    plugin_version: *version,
                    occurred_at: open.starts_at,
                    created_at: now,
                    reverses: None,
                    fx_rate: None,
                    version_reason: format!("v{version}: the version that settled {period}"),
                    hold_until: held,
                    restates: Some(Restatement { period: period.clone(), settlement: settlement.clone() }),
                    // A difference of settlements the host rounded already.
                    unrounded_amount: None,
                });
            }
        }
        Ok(adjustments)
    }

    /// The period adjustments are paid in: the month after the operator's latest closed one.
    fn open_period(&self, operator: &OperatorRecord) -> Result<Period, IngestError> {
        latest_closed(self.store(), &operator.id)?
            .and_then(|period| Period::parse(&period).ok()?.next())
            .ok_or_else(|| IngestError::Internal("restating with no closed period".into()))
    }

    /// What each of the period's settlement entries paid, at the close and in adjustments since.
    pub fn period_paid(
        &self,
        operator: &OperatorRecord,
        period: &Period,
    ) -> Result<BTreeMap<String, SettlementPaid>, IngestError> {
        let last_seq = self.store().last_sequence(&operator.id)?;
        let records: Vec<EventRecord> = self.records_in_order(operator, last_seq).collect::<Result<_, _>>()?;
        let mut paid = self.settlements_paid(operator, &restated_order(records))?;
        let prefix = period.settlement_id("");
        paid.retain(|settlement, _| settlement.starts_with(&prefix));
        Ok(paid)
    }
}

/// A late event whose restatement overflows a decimal fails with a message that says which total.
pub(crate) fn overflow(error: AmountOverflow) -> RestateError {
    RestateError::failed(format!("restating the closed periods failed: {error}; nothing was restated"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::SETTLEMENT_KIND;
    use crate::store::records::{EventStatus, StoredEvent};

    const NOV_2: i64 = 1_762_041_600_000; // 2025-11-02T00:00:00Z
    const DEC_2: i64 = 1_764_633_600_000; // 2025-12-02T00:00:00Z

    fn record(seq: u64, id: &str, kind: &str, occurred_at: i64, period: Option<&str>) -> EventRecord {
        EventRecord {
            seq,
            event: StoredEvent {
                id: id.into(),
                kind: kind.into(),
                customer: "c1".into(),
                occurred_at,
                amount: None,
                currency: None,
                affiliate: None,
                attributes: period.map(|period| ("period".to_owned(), period.to_owned())).into_iter().collect(),
                fx: None,
            },
            content_sha256: String::new(),
            received_at: 0,
            status: EventStatus::Accepted,
            failure: None,
            attributed_to: Some("aff1".into()),
            evaluation: None,
            commission_ids: Vec::new(),
            attempts: 1,
            restated: false,
            taken_as_received: false,
        }
    }

    /// A record committed as late under the `adjust` policy.
    fn restating(record: EventRecord) -> EventRecord {
        EventRecord { restated: true, ..record }
    }

    #[test]
    fn late_events_move_before_their_periods_first_settlement_in_arrival_order() {
        let order = restated_order(vec![
            record(1, "nov-a", "wager", NOV_2, None),
            record(2, "settle-nov-aff1", SETTLEMENT_KIND, DEC_2 - 1, Some("2025-11")),
            record(3, "settle-nov-aff2", SETTLEMENT_KIND, DEC_2 - 1, Some("2025-11")),
            record(4, "dec-a", "wager", DEC_2, None),
            restating(record(5, "nov-late-1", "wager", NOV_2, None)),
            record(6, "dec-b", "wager", DEC_2, None),
            restating(record(7, "nov-late-2", "win", NOV_2 + 1, None)),
            // Late too, but taken as received (the operator's policy then): it stays in place.
            record(8, "nov-as-received", "wager", NOV_2, None),
        ]);
        let ids: Vec<(&str, bool)> = order.iter().map(|e| (e.record.event.id.as_str(), e.late)).collect();
        assert_eq!(
            ids,
            [
                ("nov-a", false),
                ("nov-late-1", true),
                ("nov-late-2", true),
                ("settle-nov-aff1", false),
                ("settle-nov-aff2", false),
                ("dec-a", false),
                ("dec-b", false),
                ("nov-as-received", false),
            ]
        );
    }

    /// What `verify` reports: an event of a settled month committed after its settlement,
    /// neither restated nor taken as received (an event that raced the close, before closes
    /// were ordered with events).
    #[test]
    fn an_event_committed_after_its_months_settlement_unrestated_was_missed_by_it() {
        let records = [
            record(1, "nov-a", "wager", NOV_2, None),
            record(2, "settle-nov-aff1", SETTLEMENT_KIND, DEC_2 - 1, Some("2025-11")),
            record(3, "nov-raced", "wager", NOV_2, None),
            restating(record(4, "nov-late", "wager", NOV_2, None)),
            EventRecord { taken_as_received: true, ..record(5, "nov-as-received", "wager", NOV_2, None) },
            record(6, "dec-a", "wager", DEC_2, None),
        ];
        let first = first_settlements(&records);
        let missed: Vec<&str> = records
            .iter()
            .filter(|record| missed_by_settlement(&first, record).is_some())
            .map(|record| record.event.id.as_str())
            .collect();
        assert_eq!(missed, ["nov-raced"]);
        assert!(missed_by_settlement(&first, &records[2]).unwrap().contains("2025-11"));
    }

    #[test]
    fn a_total_that_would_overflow_a_decimal_is_an_error_and_is_left_as_it_was() {
        let payout = |amount| Payout {
            affiliate: "aff1".into(),
            amount,
            currency: "USD".into(),
            rule: "revshare".into(),
            explanation: String::new(),
        };
        let mut totals = Totals::new();
        add_to(&mut totals, &payout(Decimal::MAX)).unwrap();
        let error = add_to(&mut totals, &payout(Decimal::ONE)).unwrap_err();
        assert!(error.to_string().contains("total paid to aff1 under revshare in USD overflows"), "{error}");
        assert_eq!(totals.values().collect::<Vec<_>>(), [&Decimal::MAX]);
        let failure = match overflow(error) {
            RestateError::Failed(failure) => failure,
            other => panic!("{other}"),
        };
        assert_eq!(failure.kind, FailureKind::Restatement);
        assert!(
            failure.message.starts_with("restating the closed periods failed: the total paid"),
            "{}",
            failure.message
        );
    }
}
