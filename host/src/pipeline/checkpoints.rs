//! Restatement from checkpoints: a late event's cost is its month and the closed months after
//! it, not the operator's history (issue 15).
//!
//! **The rule.** Under `adjust`, a late event is evaluated as it arrives, like any event, over
//! the state as the events before it left it (a CPA it earns is paid then, once), and what it
//! wrote is **booked into the month it occurred in, after that month's on-time events**: the
//! month's settlements run again on the state they saw at the close (the month's checkpoint)
//! with the late events' writes on top, and each closed month after it runs its settlements
//! again on its own checkpoint with what the months before now carry (the carryover). The
//! order of the events that came in time does not change, and none of them runs again.
//!
//! A month's settlements are assumed to write keys that the events between two settlements do
//! not write (RevShare's carryover is written by its settlements only), and a month's late
//! events to write keys that later settlements did not change (a month's NGR): the reference
//! plugins do both. A restated value then simply replaces the one in a later checkpoint.
//!
//! **Where it comes from.** Each close stores its checkpoint and its month's book
//! ([`crate::store::checkpoints`]). A restatement reads them; if one is missing, stale (a
//! settlement committed since that the book does not know, a close interrupted) or altered (its
//! digest), it replays the ledger once ([`Pipeline::replay_ledger`]; `verify` replays with the same steps),
//! stores what that replay found, and goes on from there: the result is the same, only slower.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::restate::{RestateError, Totals, add_to};
use super::{Evaluated, IngestError, Period, Pipeline, RESERVED_PREFIX, Run, SETTLEMENT_PREFIX, settlement_period};
use crate::amounts::Payout;
use crate::sandbox::ScratchState;
use crate::store::checkpoints::{MonthSpan, PeriodBook, State, Writes, apply, decode_writes, encode_writes};
use crate::store::records::{CommissionRecord, EventRecord, EventStatus, OperatorRecord};

/// How many events between two periodic checkpoints, by default (`serve --checkpoint-every`;
/// 0: none but the closes'). A periodic checkpoint costs its operator's turn a swap of what the
/// store noted since the last one (microseconds; the whole state once per process, or
/// after a checkpoint that failed: [`crate::store::CheckpointCapture`]); the writer thread
/// stores it off the turn. In return a verify job saves a resume point at each, a verify's
/// helpers evaluate the stretches between them on other cores, and a replay that starts
/// mid-month (a backtest, a shadow, a re-derived checkpoint) starts from the one before it.
pub const DEFAULT_CHECKPOINT_EVERY: u64 = 100_000;

/// A settlement run again by a restatement.
pub(crate) struct Resettled {
    pub(crate) settlement: String,
    pub(crate) period: String,
    pub(crate) version: u32,
    pub(crate) totals: Totals,
    pub(crate) explanations: Vec<String>,
}

/// What a replay of the whole ledger found: the books and checkpoints of the closed months,
/// as the close and the late events since left them.
pub(crate) struct LedgerReplay {
    pub(crate) books: BTreeMap<String, PeriodBook>,
    pub(crate) checkpoints: BTreeMap<String, State>,
}

/// A replay of the ledger under way, what [`Pipeline::replay_step`] carries from one event to
/// the next: the scratch state, and the closed months' books and checkpoints as replayed so
/// far. A verify job keeps enough of it to build it again where it stopped (`crate::verify`).
#[derive(Default)]
pub(crate) struct ReplayState {
    pub(crate) scratch: Arc<ScratchState>,
    pub(crate) books: BTreeMap<String, PeriodBook>,
    pub(crate) checkpoints: BTreeMap<String, State>,
}

/// What a replayed late event's restatement gave: the adjustments it would pay, or why it
/// could not be computed.
pub(crate) type ReplayedAdjustments = Result<Vec<CommissionRecord>, String>;

/// What a replay calls for each event it replays: the record, its evaluation, and a late event's
/// adjustments as replayed.
pub(crate) type ReplayVisitor<'a> =
    dyn FnMut(&EventRecord, &Evaluated, Option<&ReplayedAdjustments>) -> Result<(), IngestError> + 'a;

impl Pipeline {
    /// Re-runs the settlements of `books[k..]` (see the module's docs), after booking `writes`
    /// into `books[k]`. Returns the settlements as re-run and the state writes they leave, or
    /// `None` if a month's checkpoint could not be read.
    pub(crate) fn resettle(
        &self,
        operator: &OperatorRecord,
        books: &mut [PeriodBook],
        k: usize,
        writes: &Writes,
        checkpoint: &mut dyn FnMut(&PeriodBook) -> Result<Option<State>, IngestError>,
    ) -> Result<Option<(Vec<Resettled>, Writes)>, RestateError> {
        books[k].booked.extend(encode_writes(writes));
        let mut carried = Writes::new();
        for book in &books[..k] {
            carried.extend(decode_writes(&book.booked));
            carried.extend(decode_writes(&book.settled));
        }
        let mut resettled = Vec::new();
        let mut live = Writes::new();
        for book in &mut books[k..] {
            let Some(mut base) = checkpoint(book)? else { return Ok(None) };
            apply(&mut base, &carried);
            apply(&mut base, &decode_writes(&book.booked));
            let scratch = Arc::new(ScratchState::from_state(base));
            let mut settled = Writes::new();
            for id in &book.settlements {
                let Some(record) = self.store().event(&operator.id, id)? else { continue };
                let (EventStatus::Accepted, Some(evaluation), Some(period)) =
                    (record.status, &record.evaluation, settlement_period(&record.event))
                else {
                    continue;
                };
                let evaluated = self.run_plugin(
                    operator,
                    &record.event,
                    evaluation.chain.clone(),
                    evaluation.plugin_version,
                    Some(&period),
                    scratch.clone(),
                    Run::Replay,
                )?;
                if let Some(failure) = &evaluated.failure {
                    return Err(RestateError::failed(format!(
                        "restating the closed periods failed: the settlement {id} did not finish ({}: {}). Nothing \
                         was restated and the live state is unchanged; fix the cause (raise the operator's limits \
                         with PUT /v1/operators/{}/limits, say), then POST /v1/operators/{}/events/retry-failed",
                        failure.kind.as_str(),
                        failure.message,
                        operator.id,
                        operator.id
                    )));
                }
                let mut totals = Totals::new();
                for commission in &evaluated.commissions {
                    add_to(&mut totals, &Payout::from(commission)).map_err(super::restate::overflow)?;
                }
                resettled.push(Resettled {
                    settlement: id.clone(),
                    period: book.period.clone(),
                    version: evaluation.plugin_version,
                    totals,
                    explanations: evaluated.commissions.iter().map(|c| c.explanation.clone()).collect(),
                });
                settled.extend(evaluated.state_writes.clone());
                scratch.apply(evaluated.state_writes);
            }
            book.settled = encode_writes(&settled);
            carried.extend(decode_writes(&book.booked));
            carried.extend(settled.clone());
            live.extend(settled);
        }
        Ok(Some((resettled, live)))
    }

    /// The operator's books, checked against the ledger: one per settled month, each knowing
    /// exactly the month's accepted settlements. `None` if any is missing or stale.
    pub(crate) fn checked_books(&self, operator: &OperatorRecord) -> Result<Option<Vec<PeriodBook>>, IngestError> {
        let store = self.store();
        let books = store.period_books(&operator.id)?;
        let mut accepted: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for id in store.settlement_ids(&operator.id, SETTLEMENT_PREFIX, None)? {
            let Some(record) = store.event(&operator.id, &id)? else { continue };
            let Some(period) = settlement_period(&record.event) else { continue };
            let ids = accepted.entry(period.id).or_default();
            if record.status == EventStatus::Accepted {
                ids.push(id);
            }
        }
        for (period, mut ids) in accepted {
            let Some(book) = books.get(&period) else { return Ok(None) };
            let mut known = book.settlements.clone();
            known.sort();
            ids.sort();
            if known != ids {
                return Ok(None);
            }
        }
        Ok(Some(books.into_values().collect()))
    }

    /// Replays the ledger (see the module's docs) and stores the books and checkpoints it
    /// found: what a restatement falls back on.
    pub(crate) fn rebuild_books(&self, operator: &OperatorRecord) -> Result<LedgerReplay, IngestError> {
        let last_seq = self.store().last_sequence(&operator.id)?;
        let replay = self.replay_ledger(operator, last_seq)?;
        tracing::info!(operator = %operator.id, months = replay.books.len(), "rebuilt the books of the closed months from the ledger");
        for (period, state) in &replay.checkpoints {
            if let Some(book) = replay.books.get(period) {
                self.store().put_checkpoint(&operator.id, book.seq, Some(period), state)?;
            }
        }
        self.store().put_period_books(&operator.id, replay.books.values())?;
        Ok(replay)
    }

    /// Replays every accepted event up to `upto` in ledger order, over a scratch state, as
    /// live did it (see [`Pipeline::replay_step`]).
    pub(crate) fn replay_ledger(&self, operator: &OperatorRecord, upto: u64) -> Result<LedgerReplay, IngestError> {
        let mut replay = ReplayState::default();
        for record in self.records_in_order(operator, upto) {
            self.replay_step(operator, &mut replay, &record?, &mut |_, _, _| Ok(()))?;
        }
        Ok(LedgerReplay { books: replay.books, checkpoints: replay.checkpoints })
    }

    /// Replays one event of the ledger, in order, as live did it: a settlement takes its
    /// month's checkpoint first, and a late event restates the closed months as its commit
    /// did. `visit` sees the event if it is replayed (accepted), and, for a late one, the
    /// adjustments its restatement would pay.
    pub(crate) fn replay_step(
        &self,
        operator: &OperatorRecord,
        replay: &mut ReplayState,
        record: &EventRecord,
        visit: &mut ReplayVisitor<'_>,
    ) -> Result<(), IngestError> {
        self.replay_step_with(operator, replay, record, None, visit)
    }

    /// [`Self::replay_step`], with the event's own evaluation `given` if it was made already
    /// over the same state ([`Self::replay_accepted`] on another core, `crate::verify_ahead`):
    /// everything else of the step is done here, in order.
    pub(crate) fn replay_step_with(
        &self,
        operator: &OperatorRecord,
        replay: &mut ReplayState,
        record: &EventRecord,
        given: Option<Evaluated>,
        visit: &mut ReplayVisitor<'_>,
    ) -> Result<(), IngestError> {
        let ReplayState { scratch, books, checkpoints } = replay;
        let (EventStatus::Accepted, Some(evaluation)) = (record.status, &record.evaluation) else { return Ok(()) };
        let period = settlement_period(&record.event);
        if let Some(period) = &period
            && !books.contains_key(&period.id)
        {
            checkpoints.insert(period.id.clone(), scratch.snapshot());
            books.insert(
                period.id.clone(),
                PeriodBook { period: period.id.clone(), seq: record.seq, ..PeriodBook::default() },
            );
        }
        let evaluated = match given {
            Some(evaluated) => evaluated,
            None => self.run_plugin(
                operator,
                &record.event,
                evaluation.chain.clone(),
                evaluation.plugin_version,
                period.as_ref(),
                scratch.clone(),
                Run::Replay,
            )?,
        };
        let writes = if evaluated.failure.is_none() { evaluated.state_writes.clone() } else { Writes::new() };
        scratch.apply(writes.clone());
        let ledger = self.store().commission_records(&operator.id, &record.commission_ids)?;
        if let Some(period) = &period {
            let book = books.get_mut(&period.id).expect("the book was made above");
            book.settlements.push(record.event.id.clone());
            book.settled.extend(encode_writes(&writes));
            book.paid.insert(record.event.id.clone(), Vec::new());
            add_paid(book, &record.event.id, &ledger);
            return visit(record, &evaluated, None);
        }
        let month = Period::containing(record.event.occurred_at).map(|period| period.id);
        let k = month.and_then(|month| books.keys().position(|period| *period >= month));
        let (true, Some(k)) = (record.restated, k) else { return visit(record, &evaluated, None) };
        let mut list: Vec<PeriodBook> = books.values().cloned().collect();
        list[k].late.push(record.event.id.clone());
        let mut read = |book: &PeriodBook| Ok(checkpoints.get(&book.period).cloned());
        let adjustments = match self.resettle(operator, &mut list, k, &writes, &mut read) {
            Ok(Some((resettled, live))) => {
                scratch.apply(live);
                self.adjustments(operator, record, &resettled, &list, record.received_at)
                    .map_err(|error| error.to_string())
            }
            Ok(None) => Err("a checkpoint of the replay is missing".to_owned()),
            Err(RestateError::Ingest(error)) => return Err(error),
            Err(RestateError::Failed(failure)) => Err(failure.message),
        };
        // What was paid is the ledger's: a difference reported here does not carry on.
        for commission in &ledger {
            if let Some(restates) = &commission.restates
                && let Some(book) = list.iter_mut().find(|book| book.period == restates.period)
            {
                add_paid(book, &restates.settlement, std::slice::from_ref(commission));
            }
        }
        *books = list.into_iter().map(|book| (book.period.clone(), book)).collect();
        visit(record, &evaluated, Some(&adjustments))
    }

    /// Where the events dated in `month` lie in the ledger, the index brought up to date first.
    pub(crate) fn month_span(&self, operator: &OperatorRecord, month: &str) -> Result<Option<MonthSpan>, IngestError> {
        let store = self.store();
        let month_of = |at| Period::containing(at).map(|period| period.id);
        store.index_months(&operator.id, store.last_sequence(&operator.id)?, month_of, |id| {
            id.starts_with(RESERVED_PREFIX)
        })?;
        Ok(store.month_span(&operator.id, month)?)
    }

    /// The state at the checkpoint at `seq`, or, if it does not read back (missing, altered),
    /// re-derived from the previous sound checkpoint by replaying the events between (and
    /// stored again): a fallback that costs the events since that checkpoint, not the ledger.
    /// `None` if no earlier checkpoint is sound, or a late event lies between (its restatement
    /// wrote what a plain replay does not: that needs the books as they stood, a full replay).
    pub(crate) fn checkpoint_or_rederived(
        &self,
        operator: &OperatorRecord,
        seq: u64,
        period: Option<&str>,
    ) -> Result<Option<State>, IngestError> {
        let store = self.store();
        if let Some(state) = store.checkpoint_state(&operator.id, seq)? {
            return Ok(Some(state));
        }
        let Some((from, state)) = store.checkpoint_at_or_before(&operator.id, seq.saturating_sub(1))? else {
            return Ok(None);
        };
        let scratch = Arc::new(ScratchState::from_state(state));
        for record in self.records_from(operator, from - 1, seq - 1) {
            let record = record?;
            if record.status == EventStatus::Accepted && record.restated {
                return Ok(None);
            }
            let Some(evaluated) = self.replay_accepted(operator, &record, scratch.clone())? else { continue };
            if evaluated.failure.is_none() {
                scratch.apply(evaluated.state_writes);
            }
        }
        let state = scratch.snapshot();
        store.put_checkpoint(&operator.id, seq, period, &state)?;
        tracing::warn!(operator = %operator.id, seq, from, "a checkpoint did not read back: re-derived from the previous sound one");
        Ok(Some(state))
    }

    /// Before a close's settlements, in the operator's turn: the checkpoint of the month (its
    /// first close only), which the next periodic one chains to. Returns the state it stands
    /// for, to book the close with.
    pub(crate) fn checkpoint_close(&self, operator: &OperatorRecord, period: &Period) -> Result<State, IngestError> {
        let store = self.store();
        let state = store.state_entries(&operator.id)?;
        if store.settlement_ids(&operator.id, SETTLEMENT_PREFIX, Some(&period.id))?.is_empty() {
            let seq = store.last_sequence(&operator.id)? + 1;
            let bytes = store.put_checkpoint(&operator.id, seq, Some(&period.id), &state)?;
            if self.checkpoint_every() > 0 {
                store.chain_periodic_checkpoints_from(&operator.id, seq);
            }
            let book = PeriodBook { period: period.id.clone(), seq, ..PeriodBook::default() };
            store.put_period_books(&operator.id, [&book])?;
            tracing::info!(operator = %operator.id, period = %period.id, seq, bytes, keys = state.len(), "checkpoint before the month's settlements");
        }
        Ok(state)
    }

    /// After a close's settlements: what they wrote and paid, in the month's book. A book that
    /// is missing is left so (a restatement rebuilds it).
    pub(crate) fn book_close(
        &self,
        operator: &OperatorRecord,
        period: &Period,
        before: &State,
        committed: &[(String, Vec<CommissionRecord>)],
    ) -> Result<(), IngestError> {
        let store = self.store();
        let Some(mut book) = store.period_books(&operator.id)?.remove(&period.id) else { return Ok(()) };
        let after = store.state_entries(&operator.id)?;
        let mut settled = decode_writes(&book.settled);
        for key in before.keys().filter(|key| !after.contains_key(*key)) {
            settled.insert(key.clone(), None);
        }
        for (key, value) in after.iter().filter(|(key, value)| before.get(*key) != Some(*value)) {
            settled.insert(key.clone(), Some(value.clone()));
        }
        book.settled = encode_writes(&settled);
        for (id, commissions) in committed {
            book.settlements.push(id.clone());
            book.paid.insert(id.clone(), Vec::new());
            add_paid(&mut book, id, commissions);
        }
        store.put_period_books(&operator.id, [&book])?;
        Ok(())
    }
}

/// Adds `commissions` to what `book` says settlement `settlement` paid.
pub(crate) fn add_paid(book: &mut PeriodBook, settlement: &str, commissions: &[CommissionRecord]) {
    let lines = book.paid.entry(settlement.to_owned()).or_default();
    for commission in commissions {
        lines.push((
            commission.affiliate.clone(),
            commission.rule.clone(),
            commission.currency.clone(),
            commission.amount,
        ));
    }
}

/// What `book` says settlement `settlement` paid, per (affiliate, rule, currency).
pub(crate) fn paid_totals(book: &PeriodBook, settlement: &str) -> Result<Totals, crate::amounts::AmountOverflow> {
    let mut totals = Totals::new();
    for (affiliate, rule, currency, amount) in book.paid.get(settlement).into_iter().flatten() {
        let total = totals.entry((affiliate.clone(), rule.clone(), currency.clone())).or_default();
        crate::amounts::checked_add(total, *amount, || {
            format!("total paid to {affiliate} under {rule} in {currency}")
        })?;
    }
    Ok(totals)
}

impl Pipeline {
    /// The operator's event records in ledger order, up to `last_sequence`.
    pub(crate) fn records_in_order(
        &self,
        operator: &OperatorRecord,
        last_sequence: u64,
    ) -> impl Iterator<Item = Result<EventRecord, IngestError>> + 'static {
        self.records_from(operator, 0, last_sequence)
    }

    /// The records after `after` up to `last_sequence`, in ledger order: a replay from the
    /// checkpoint at `after + 1`.
    ///
    /// A thread of its own reads and decodes them, a few batches ahead of the caller: a
    /// replay spends about a fifth of its time there (perf, BENCHMARKS.md), and a replay is
    /// one thread evaluating, so the second core takes that fifth off its path. The reader
    /// stops at the first error (sent on), at `last_sequence`, or when the caller drops the
    /// iterator.
    pub(crate) fn records_from(
        &self,
        operator: &OperatorRecord,
        after: u64,
        last_sequence: u64,
    ) -> impl Iterator<Item = Result<EventRecord, IngestError>> + 'static {
        let (sender, receiver) = std::sync::mpsc::sync_channel::<Vec<Result<EventRecord, IngestError>>>(BATCHES_AHEAD);
        let (store, operator) = (self.store().clone(), operator.id.clone());
        let reader = move || {
            let mut batch = Vec::with_capacity(READ_BATCH);
            for record in store.records_after(&operator, after) {
                let stop = match &record {
                    Ok(record) if record.seq > last_sequence => break,
                    Ok(record) => record.seq == last_sequence,
                    Err(_) => true,
                };
                batch.push(record.map_err(IngestError::from));
                if stop {
                    break;
                }
                if batch.len() == READ_BATCH && sender.send(std::mem::take(&mut batch)).is_err() {
                    return;
                }
            }
            let _ = sender.send(batch);
        };
        let spawned = std::thread::Builder::new().name("ledger-reader".into()).spawn(reader);
        let failed = spawned.err().map(|error| Err(IngestError::Internal(format!("reading the ledger: {error}"))));
        failed.into_iter().chain(receiver.into_iter().flatten())
    }
}

/// Records the reader hands over at a time: one at a time, the two threads would wake each
/// other for every record (measured: slower than reading on the replay's own thread).
const READ_BATCH: usize = 128;
/// Batches the reader decodes ahead of the replay: enough to keep it busy, bounded so that a
/// replay of a million events does not hold them all.
const BATCHES_AHEAD: usize = 8;
