//! A **period statement** is recomputed from the stored events and the plugin versions that
//! evaluated and settled them, by the replay a restatement runs ([`super::restate`]): per
//! affiliate, the state the settlement carried in and out (the values, before and after, of the
//! keys it wrote), each of the period's events with the state it changed and its contribution,
//! the settlement, and the log lines. An upline's statement also lists the events of affiliates
//! below it that paid it an override, each naming the affiliate it came `through`. The statement
//! as the close computed it is stored at the close; the "as closed" view recomputes it from the
//! ledger up to the close, and must equal it.
//!
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

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::restate::{Before, SettlementPaid, restated_order};
use super::{Evaluated, IngestError, Period, Pipeline, SETTLEMENT_PREFIX, settlement_period};
use crate::amounts::Payout;
use crate::event::format_time;
use crate::sandbox::ScratchState;
use crate::store::checkpoints::{State, apply, decode_writes};
use crate::store::records::{EventRecord, LogLine, OperatorRecord};

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

    /// The statements of `period`, per affiliate, from a replay of the ledger: as the close
    /// computed them (up to the period's last settlement entry), or as restated now.
    pub fn period_statements(
        &self,
        operator: &OperatorRecord,
        period: &Period,
        view: StatementView,
    ) -> Result<BTreeMap<String, AffiliateStatement>, IngestError> {
        let store = self.store();
        let settlements = store.settlement_ids(&operator.id, SETTLEMENT_PREFIX, Some(&period.id))?;
        let upto = match view {
            StatementView::Restated => store.last_sequence(&operator.id)?,
            StatementView::AsClosed => {
                let mut last = 0;
                for id in &settlements {
                    if let Some(record) = store.event(&operator.id, id)? {
                        last = last.max(record.seq);
                    }
                }
                last
            }
        };
        let records: Vec<EventRecord> = self.records_in_order(operator, upto).collect::<Result<_, _>>()?;
        let entries = restated_order(records);
        let mut statements: BTreeMap<String, AffiliateStatement> = BTreeMap::new();
        self.replay_entries(operator, &entries, |entry, evaluated, before| -> Result<(), IngestError> {
            add_to_statements(&mut statements, period, &entry.record, entry.late, evaluated, before);
            Ok(())
        })?;
        Ok(statements)
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

/// Adds what one replayed ledger entry shows to `period`'s statements: a settlement of the
/// period its affiliate's carried-in, settlement and carried-out; an event of the period a line
/// (on its affiliate's statement, and on those of the uplines it paid an override).
pub(crate) fn add_to_statements(
    statements: &mut BTreeMap<String, AffiliateStatement>,
    period: &Period,
    record: &EventRecord,
    late: bool,
    evaluated: &Evaluated,
    before: &Before,
) {
    let Some(affiliate) = &record.attributed_to else { return };
    let statement = |of: &String| AffiliateStatement { affiliate: of.clone(), ..AffiliateStatement::default() };
    match settlement_period(&record.event) {
        Some(settled) if settled.id == period.id => {
            let statement = statements.entry(affiliate.clone()).or_insert_with(|| statement(affiliate));
            statement.carried_in = before.iter().map(|(key, value)| (key.clone(), text(value))).collect();
            statement.carried_out =
                evaluated.state_writes.iter().map(|(key, value)| (key.clone(), text(value))).collect();
            statement.settlement = Some(SettlementLine {
                event_id: record.event.id.clone(),
                plugin_version: record.evaluation.as_ref().map_or(0, |e| e.plugin_version),
                commissions: evaluated.commissions.iter().map(Payout::from).collect(),
                failure: evaluated.failure.as_ref().map(|failure| failure.message.clone()),
                logs: evaluated_logs(evaluated),
            });
        }
        Some(_) => {}
        None if (period.starts_at..period.ends_at).contains(&record.event.occurred_at) => {
            let changes: Vec<StateChange> = before
                .iter()
                .map(|(key, was)| StateChange {
                    key: key.clone(),
                    before: text(was),
                    after: text(evaluated.state_writes.get(key).unwrap_or(&None)),
                })
                .collect();
            let event = &record.event;
            let (amount, currency) = match &event.fx {
                Some(fx) => (Some(fx.amount), Some(fx.currency.clone())),
                None => (event.amount, event.currency.clone()),
            };
            let line = StatementLine {
                event_id: event.id.clone(),
                kind: event.kind.clone(),
                occurred_at: format_time(event.occurred_at),
                received_at: format_time(record.received_at),
                amount,
                currency,
                late,
                through: None,
                contribution: contribution(&changes),
                changes,
                commissions: evaluated.commissions.iter().map(Payout::from).collect(),
                logs: evaluated_logs(evaluated),
            };
            // An upline the event paid (an override) sees it on its own statement too:
            // what it needs to check the override against the sub-affiliate's activity.
            let uplines: std::collections::BTreeSet<&String> = evaluated
                .commissions
                .iter()
                .map(|commission| &commission.affiliate)
                .filter(|paid| *paid != affiliate)
                .collect();
            for upline in uplines {
                statements
                    .entry(upline.clone())
                    .or_insert_with(|| statement(upline))
                    .lines
                    .push(StatementLine { through: Some(affiliate.clone()), ..line.clone() });
            }
            statements.entry(affiliate.clone()).or_insert_with(|| statement(affiliate)).lines.push(line);
        }
        None => {}
    }
}

fn evaluated_logs(evaluated: &Evaluated) -> Vec<LogLine> {
    evaluated.record.as_ref().map(|record| record.logs.clone()).unwrap_or_default()
}

fn text(value: &Option<Vec<u8>>) -> Option<String> {
    value.as_ref().map(|bytes| String::from_utf8_lossy(bytes).into_owned())
}

/// The change of the one decimal state value an event changed: what it contributed to the
/// running total the plugin keeps (a month's NGR, say). `None` when it changed no value or
/// several, or values that are not decimals, or a change too large for a decimal.
fn contribution(changes: &[StateChange]) -> Option<Decimal> {
    let [change] = changes else { return None };
    let decimal = |value: &Option<String>| match value {
        None => Some(Decimal::ZERO),
        Some(text) => text.parse::<Decimal>().ok(),
    };
    decimal(&change.after)?.checked_sub(decimal(&change.before)?)
}

/// Which statement to compute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatementView {
    /// From the ledger up to the period's close: what the close computed.
    AsClosed,
    /// From the whole ledger, late events in place.
    Restated,
}

/// One affiliate's statement for one period.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AffiliateStatement {
    pub affiliate: String,
    /// The settlement's state keys as they were before it: what earlier periods carried in.
    pub carried_in: BTreeMap<String, Option<String>>,
    /// The period's events attributed to the affiliate, in the order they count: in an
    /// answer, the page asked for (`lines_from`, `lines_limit`).
    pub lines: Vec<StatementLine>,
    /// How many lines the statement has in all. Absent from a statement stored before lines
    /// were kept apart from it (its lines are then inline).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line_count: Option<u64>,
    pub settlement: Option<SettlementLine>,
    /// The same keys as the settlement left them: what it carries into the next period.
    pub carried_out: BTreeMap<String, Option<String>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StatementLine {
    pub event_id: String,
    pub kind: String,
    pub occurred_at: String,
    /// In the operator's currency (converted at the rate stored with the event).
    #[schema(value_type = Option<String>)]
    pub amount: Option<Decimal>,
    pub currency: Option<String>,
    /// When the host received it.
    pub received_at: String,
    /// It arrived after the period was closed.
    pub late: bool,
    /// On an upline's statement: the affiliate below it the event is attributed to. The line is
    /// here because the event paid this affiliate (an override).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub through: Option<String>,
    /// What the event added to the one running total it changed (NGR, for RevShare).
    #[schema(value_type = Option<String>)]
    pub contribution: Option<Decimal>,
    /// Every state value the event changed.
    pub changes: Vec<StateChange>,
    /// What the event paid by itself (a CPA, say).
    pub commissions: Vec<Payout>,
    pub logs: Vec<LogLine>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StateChange {
    pub key: String,
    pub before: Option<String>,
    pub after: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SettlementLine {
    pub event_id: String,
    pub plugin_version: u32,
    pub commissions: Vec<Payout>,
    /// Why the replayed settlement did not finish, if it did not.
    pub failure: Option<String>,
    pub logs: Vec<LogLine>,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_contribution_is_the_change_of_the_one_decimal_an_event_changed() {
        let change = |before: Option<&str>, after: Option<&str>| StateChange {
            key: "k".into(),
            before: before.map(Into::into),
            after: after.map(Into::into),
        };
        assert_eq!(contribution(&[change(None, Some("3000"))]), Some(Decimal::from(3000)));
        assert_eq!(contribution(&[change(Some("3000"), Some("-2000"))]), Some(Decimal::from(-5000)));
        assert_eq!(contribution(&[]), None);
        assert_eq!(contribution(&[change(None, Some("yes"))]), None);
        assert_eq!(contribution(&[change(None, Some("1")), change(None, Some("2"))]), None);
    }

    #[test]
    fn a_change_too_large_for_a_decimal_is_no_contribution() {
        // Rather than a panic.
        let change = StateChange {
            key: "k".into(),
            before: Some(Decimal::MIN.to_string()),
            after: Some(Decimal::MAX.to_string()),
        };
        assert_eq!(contribution(&[change]), None);
    }
}
