//! Period statements from checkpoints (issue 15): a closed month's restated statement, and what
//! its settlements paid, in time proportional to the month's late events and settlements.
//!
//! Under the rule for late events ([`crate::pipeline::checkpoints`]) the on-time events of a month never
//! change once it is closed, so their lines are those of the statement stored at the close.
//! The restated statement adds the month's late events, in the order they arrived, each
//! evaluated over the month's checkpoint as the months before now leave it, and runs the
//! settlements again on that state with the late events' writes as booked: what a restatement
//! ran. Each statement is stored per (operator, month, affiliate), so one affiliate's is one
//! key read, not a decode of every other affiliate's events. Without a book, checkpoint or
//! stored statement (a month closed before these were kept), the callers replay the ledger.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::restate::{AffiliateStatement, Before, SettlementPaid, StatementView, add_to_statements};
use super::{IngestError, Period, Pipeline};
use crate::sandbox::ScratchState;
use crate::store::checkpoints::{State, apply, decode_writes};
use crate::store::records::{EventRecord, OperatorRecord};

impl Pipeline {
    /// The month's statements as its close computes them, without a replay of the ledger's
    /// history: its events' lines from a replay that starts at the nearest sound checkpoint at or
    /// before the month's first event and stops at its last one before the close (`upto`), its
    /// settlements (`settlements`, in order) over `before`, the state they started from.
    pub(crate) fn closed_statements(
        &self,
        operator: &OperatorRecord,
        period: &Period,
        upto: u64,
        before: &State,
        settlements: &[String],
    ) -> Result<BTreeMap<String, AffiliateStatement>, IngestError> {
        let store = self.store();
        let mut statements = BTreeMap::new();
        if let Some(span) = self.month_span(operator, &period.id)?
            && span.first <= upto
        {
            let (start, state) = store.checkpoint_at_or_before(&operator.id, span.first)?.unwrap_or((1, State::new()));
            let scratch = Arc::new(ScratchState::from_state(state));
            for record in self.records_from(operator, start - 1, span.last.min(upto)) {
                let record = record?;
                self.replay_into(operator, period, &record, false, &scratch, &mut statements)?;
            }
        }
        let scratch = Arc::new(ScratchState::from_state(before.clone()));
        for id in settlements {
            self.add_replayed(operator, period, id, false, &scratch, &mut statements)?;
        }
        Ok(statements)
    }

    /// Stores the month's statements as this close computed them: those of the affiliates it
    /// settled (`settled`, in order, over `before`), and any not stored yet.
    pub(crate) fn store_closed_statements(
        &self,
        operator: &OperatorRecord,
        period: &Period,
        before: &State,
        settled: &[String],
    ) -> Result<(), IngestError> {
        let store = self.store();
        let statements = match store.period_books(&operator.id)?.remove(&period.id) {
            Some(book) => self.closed_statements(operator, period, book.seq.saturating_sub(1), before, settled)?,
            // No book (the close could not write one): from a replay of the ledger.
            None => self.period_statements(operator, period, StatementView::AsClosed)?,
        };
        for (affiliate, mut statement) in statements {
            if settled.contains(&period.settlement_id(&affiliate))
                || store.statement::<AffiliateStatement>(&operator.id, &period.id, &affiliate)?.is_none()
            {
                let lines = std::mem::take(&mut statement.lines);
                statement.line_count = Some(lines.len() as u64);
                store.put_statement(&operator.id, &period.id, &affiliate, &statement, &lines)?;
            }
        }
        Ok(())
    }

    /// `affiliate`'s statement of `period` as stored at the close, its lines left in storage.
    pub fn stored_statement(
        &self,
        operator: &OperatorRecord,
        period: &Period,
        affiliate: &str,
    ) -> Result<Option<PagedStatement>, IngestError> {
        let stored = self.store().statement::<AffiliateStatement>(&operator.id, &period.id, affiliate)?;
        Ok(stored.map(PagedStatement::from_stored))
    }

    /// The month's statements as restated now, per affiliate (only `only`'s, if given), from
    /// its checkpoint, the lines stored at the close left in storage; `None` when what that
    /// needs is not stored. Every late event and settlement of the month runs again (they
    /// change the state the others see), but only the statements asked for are read.
    pub fn restated_statements(
        &self,
        operator: &OperatorRecord,
        period: &Period,
        only: Option<&str>,
    ) -> Result<Option<BTreeMap<String, PagedStatement>>, IngestError> {
        let store = self.store();
        let Some(books) = self.checked_books(operator)? else { return Ok(None) };
        let Some(j) = books.iter().position(|book| book.period == period.id) else { return Ok(None) };
        let book = &books[j];
        let Some(mut base) = store.checkpoint_state(&operator.id, book.seq)? else { return Ok(None) };
        for earlier in &books[..j] {
            apply(&mut base, &decode_writes(&earlier.booked));
            apply(&mut base, &decode_writes(&earlier.settled));
        }
        let mut statements = BTreeMap::new();
        let mut stored_lines = BTreeMap::new();
        for id in &book.settlements {
            let Some(affiliate) = id.strip_prefix(&period.settlement_id("")) else { continue };
            if only.is_some_and(|wanted| wanted != affiliate) {
                continue;
            }
            let Some(stored) = self.stored_statement(operator, period, affiliate)? else { return Ok(None) };
            stored_lines.insert(affiliate.to_owned(), stored.stored_lines);
            statements.insert(affiliate.to_owned(), stored.statement);
        }
        let scratch = Arc::new(ScratchState::from_state(base));
        for id in &book.late {
            self.add_replayed(operator, period, id, true, &scratch, &mut statements)?;
        }
        // The state the restatement settled on: the late events' writes as they were booked.
        scratch.apply(decode_writes(&book.booked));
        for id in &book.settlements {
            self.add_replayed(operator, period, id, false, &scratch, &mut statements)?;
        }
        let paged = statements
            .into_iter()
            .filter(|(affiliate, _)| only.is_none_or(|wanted| wanted == affiliate))
            .map(|(affiliate, statement)| {
                let stored_lines = stored_lines.get(&affiliate).copied().unwrap_or(0);
                (affiliate, PagedStatement { statement, stored_lines })
            })
            .collect();
        Ok(Some(paged))
    }

    /// Replays stored event `id` over `scratch` and adds it to the statements.
    fn add_replayed(
        &self,
        operator: &OperatorRecord,
        period: &Period,
        id: &str,
        late: bool,
        scratch: &Arc<ScratchState>,
        statements: &mut BTreeMap<String, AffiliateStatement>,
    ) -> Result<(), IngestError> {
        let Some(record) = self.store().event(&operator.id, id)? else { return Ok(()) };
        self.replay_into(operator, period, &record, late, scratch, statements)
    }

    /// Replays `record` over `scratch` and adds it to the statements.
    fn replay_into(
        &self,
        operator: &OperatorRecord,
        period: &Period,
        record: &EventRecord,
        late: bool,
        scratch: &Arc<ScratchState>,
        statements: &mut BTreeMap<String, AffiliateStatement>,
    ) -> Result<(), IngestError> {
        let Some(evaluated) = self.replay_accepted(operator, record, scratch.clone())? else { return Ok(()) };
        let before: Before = evaluated.state_writes.keys().map(|key| (key.clone(), scratch.value(key))).collect();
        add_to_statements(statements, period, record, late, &evaluated, &before);
        if evaluated.failure.is_none() {
            scratch.apply(evaluated.state_writes);
        }
        Ok(())
    }

    /// What each of the month's settlements paid, at the close and in adjustments since, from
    /// its book: the settlements' own commissions and those of the late events into it or into
    /// a month before it; `None` without a book.
    pub fn period_paid_from_books(
        &self,
        operator: &OperatorRecord,
        period: &Period,
    ) -> Result<Option<BTreeMap<String, SettlementPaid>>, IngestError> {
        let store = self.store();
        let Some(books) = self.checked_books(operator)? else { return Ok(None) };
        let Some(j) = books.iter().position(|book| book.period == period.id) else { return Ok(None) };
        let mut paid: BTreeMap<String, SettlementPaid> = BTreeMap::new();
        for id in &books[j].settlements {
            let Some(record) = store.event(&operator.id, id)? else { continue };
            paid.entry(id.clone()).or_default().at_close =
                store.commission_records(&operator.id, &record.commission_ids)?;
        }
        let mut late: Vec<EventRecord> = Vec::new();
        for id in books[..=j].iter().flat_map(|book| &book.late) {
            late.extend(store.event(&operator.id, id)?);
        }
        late.sort_by_key(|record| record.seq);
        for record in late {
            for commission in store.commission_records(&operator.id, &record.commission_ids)? {
                if let Some(restates) = &commission.restates
                    && restates.period == period.id
                {
                    paid.entry(restates.settlement.clone()).or_default().adjustments.push(commission);
                }
            }
        }
        Ok(Some(paid))
    }
}

/// One affiliate's statement with the lines stored at its close left in storage until a page
/// of them is asked for: a statement of a month with a million events reads only its page.
#[derive(Debug)]
pub struct PagedStatement {
    /// All but the lines stored apart; its `lines` are those after them (a restatement's late
    /// lines), or all of them for a statement computed in hand.
    statement: AffiliateStatement,
    /// How many lines, stored apart at the close, come before `statement.lines`.
    stored_lines: u64,
}

impl PagedStatement {
    /// A statement computed in hand, every line in it.
    pub fn in_hand(mut statement: AffiliateStatement) -> Self {
        statement.line_count = None;
        Self { statement, stored_lines: 0 }
    }

    /// A statement as stored: its lines apart (`line_count` set, none inline), or inline (a
    /// statement stored before lines were kept apart).
    fn from_stored(mut statement: AffiliateStatement) -> Self {
        match statement.line_count.take() {
            Some(count) if statement.lines.is_empty() => Self { statement, stored_lines: count },
            _ => Self { statement, stored_lines: 0 },
        }
    }

    /// The statement with lines `from..from + limit` (0-based) and `line_count`, the number of
    /// lines in all.
    pub fn page(
        mut self,
        pipeline: &Pipeline,
        operator: &OperatorRecord,
        period: &Period,
        from: u64,
        limit: u64,
    ) -> Result<AffiliateStatement, IngestError> {
        let count = self.stored_lines + self.statement.lines.len() as u64;
        let mut lines = Vec::new();
        if from < self.stored_lines {
            let wanted = limit.min(self.stored_lines - from);
            let affiliate = &self.statement.affiliate;
            lines = pipeline.store().statement_lines(&operator.id, &period.id, affiliate, from, wanted)?;
        }
        let skip = from.saturating_sub(self.stored_lines) as usize;
        let room = limit.saturating_sub(lines.len() as u64) as usize;
        lines.extend(std::mem::take(&mut self.statement.lines).into_iter().skip(skip).take(room));
        self.statement.lines = lines;
        self.statement.line_count = Some(count);
        Ok(self.statement)
    }
}
