//! Closing a month: its settlements, ordered with the operator's events and its other closes.
//!
//! A close is a job on the operator's queue ([`super::sequencer`]), and runs alone in its turn,
//! from its order check through its settlements' commits and stored statements; every request
//! is checked for closed periods in its own turn. So an event of the month either commits before
//! the month's first settlement (and counts in it), or is checked after the close and is late
//! (refused, restated or taken as received, by the operator's policy); and two closes of one
//! operator never overlap.
//!
//! Months close in order, one after the other from the first one closed, and every month up to
//! the latest closed one is closed: a carryover flows from each month into the next, so a month
//! closed out of turn would settle on figures that are not final, and a month skipped would
//! never settle. Hence the checks before a close ([`Pipeline::check_close_order`]).

use sha2::Digest as _;

use super::restate::latest_closed;
use super::{EventOutcome, IngestError, Period, Pipeline, RESERVED_PREFIX, SETTLEMENT_KIND, SETTLEMENT_PREFIX};
use crate::event::{FieldError, format_time};
use crate::store::records::{EventStatus, OperatorRecord, StoredEvent};

/// At most this many affiliates are named in a refusal.
const NAMED: usize = 10;

impl Pipeline {
    /// Closes a period: asks the active plugin to settle it for each of the operator's
    /// affiliates, and commits each settlement as a ledger entry of its own. The entries'
    /// ids name the period and the affiliate, so closing the period again finds them and
    /// pays nothing twice.
    pub async fn close_period(
        &self,
        operator: &OperatorRecord,
        period: &Period,
    ) -> Result<Vec<EventOutcome>, IngestError> {
        self.command(operator, super::Command::Close { period: period.id.clone() }).await?.closed()
    }

    /// [`Self::close_period`], in the operator's turn: its settlements are evaluated and
    /// committed here, not queued behind the close itself.
    pub(super) fn close_in_turn(
        &self,
        operator: &OperatorRecord,
        period: &Period,
        received_at: i64,
    ) -> Result<Vec<EventOutcome>, IngestError> {
        self.check_close_order(operator, period)?;
        // The state the settlements start from: the month's checkpoint (issue 15).
        let before = self.checkpoint_close(operator, period)?;
        let mut outcomes = Vec::new();
        for affiliate in self.store.affiliate_ids(&operator.id)? {
            let event = StoredEvent {
                id: period.settlement_id(&affiliate),
                kind: SETTLEMENT_KIND.to_owned(),
                customer: String::new(),
                occurred_at: period.ends_at - 1,
                amount: None,
                currency: None,
                affiliate: Some(affiliate),
                attributes: [("period".to_owned(), period.id.clone())].into(),
                fx: None,
            };
            let content_sha256 = hex::encode(sha2::Sha256::digest(event.id.as_bytes()));
            outcomes.push(self.evaluate_and_commit(operator, event, content_sha256, received_at, None)?);
        }
        let committed: Vec<_> = outcomes
            .iter()
            .filter(|outcome| outcome.disposition == super::Disposition::Accepted)
            .filter(|outcome| outcome.record.status == EventStatus::Accepted)
            .map(|outcome| (outcome.record.event.id.clone(), outcome.commissions.clone()))
            .collect();
        self.book_close(operator, period, &before, &committed)?;
        // The statements as this close computed them, kept to compare later recomputations with.
        let settled: Vec<String> = committed.into_iter().map(|(id, _)| id).collect();
        self.store_closed_statements(operator, period, &before, &settled)?;
        Ok(outcomes)
    }

    /// Which month may close now (see the module's docs): from 1970 on; the first one closed not
    /// before the operator existed (its creation, or its earliest event if that came first) and
    /// not after a month with events; then each month after the latest closed, once that one is
    /// settled for every affiliate. Closing a closed month again is allowed: it settles the
    /// affiliates added since, and pays nothing twice.
    fn check_close_order(&self, operator: &OperatorRecord, period: &Period) -> Result<(), IngestError> {
        if period.starts_at < 0 {
            return refuse(format!("{} is before 1970: months from 1970-01 on can be closed", period.id));
        }
        let Some(latest) = latest_closed(&self.store, &operator.id)? else {
            return self.check_first_close(operator, period);
        };
        if period.id <= latest {
            if self.store.settlement_ids(&operator.id, SETTLEMENT_PREFIX, Some(&period.id))?.is_empty() {
                return refuse(format!("{} comes before {latest}, which is closed: months close in order", period.id));
            }
            return Ok(());
        }
        let latest = Period::parse(&latest).map_err(IngestError::Internal)?;
        let next = latest.next().ok_or_else(|| IngestError::Internal(format!("no month after {}", latest.id)))?;
        if period.id != next.id {
            return refuse(format!(
                "close {} first: months close in order, and the latest closed is {}",
                next.id, latest.id
            ));
        }
        self.check_settled(operator, &latest, period)
    }

    /// The operator's first close: not of a month that ended before anything of the
    /// operator's, and skipping no month with events.
    fn check_first_close(&self, operator: &OperatorRecord, period: &Period) -> Result<(), IngestError> {
        let earliest = self.store.earliest_event(&operator.id, RESERVED_PREFIX)?;
        let start = earliest.as_ref().map_or(operator.created_at, |(at, _)| operator.created_at.min(*at));
        if period.ends_at <= start {
            let first_event = match &earliest {
                Some((at, id)) => format!(" and its earliest event, {id}, occurred at {}", format_time(*at)),
                None => " and it has no event yet".to_owned(),
            };
            return refuse(format!(
                "{} ends before operator {} existed: it was created at {}{first_event}. Close the month of its first \
                 event or a later one; months then close in order from the first one closed",
                period.id,
                operator.id,
                format_time(operator.created_at),
            ));
        }
        match earliest {
            Some((at, id)) if at < period.starts_at => {
                let first = Period::containing(at).map_or_else(|| format_time(at), |month| month.id);
                refuse(format!(
                    "close {first} first: event {id} occurred then, before {}, and months close in order from the \
                     first one closed (a month skipped would never be settled)",
                    period.id
                ))
            }
            _ => Ok(()),
        }
    }

    /// `latest` (closed) has a settlement for every affiliate, and none failed: `next` would
    /// otherwise settle on a carryover that is not final, and a later retry of `latest` would
    /// settle it on today's state.
    fn check_settled(&self, operator: &OperatorRecord, latest: &Period, next: &Period) -> Result<(), IngestError> {
        let op = &operator.id;
        let settled = self.store.settlement_ids(op, SETTLEMENT_PREFIX, Some(&latest.id))?;
        let mut failed = Vec::new();
        for id in &settled {
            if let Some(record) = self.store.event(op, id)?
                && record.status == EventStatus::Failed
            {
                let reason = record.failure.map(|failure| failure.message).unwrap_or_default();
                failed.push(format!("{} ({reason})", record.event.affiliate.unwrap_or_default()));
            }
        }
        if !failed.is_empty() {
            return refuse(format!(
                "{} is not settled: its settlement failed for {}. Remove the cause (a limit: PUT \
                 /v1/operators/{op}/limits; the plugin: upload and activate a fixed version), then POST \
                 /v1/operators/{op}/events/retry-failed settles it; then close {}",
                latest.id,
                named(failed),
                next.id
            ));
        }
        let missing: Vec<String> = self
            .store
            .affiliate_ids(op)?
            .into_iter()
            .filter(|affiliate| !settled.contains(&latest.settlement_id(affiliate)))
            .collect();
        if !missing.is_empty() {
            return refuse(format!(
                "{} has no settlement for {} (added since it closed, or its close was interrupted): close it again \
                 with POST /v1/operators/{op}/periods/{}/close, which settles them and pays nothing twice; then \
                 close {}",
                latest.id,
                named(missing),
                latest.id,
                next.id
            ));
        }
        Ok(())
    }
}

fn refuse(problem: String) -> Result<(), IngestError> {
    Err(IngestError::Invalid(vec![FieldError::new("period", problem)]))
}

/// The first few of `names`, and how many more.
fn named(names: Vec<String>) -> String {
    let more = names.len().saturating_sub(NAMED);
    let mut text = names.into_iter().take(NAMED).collect::<Vec<_>>().join(", ");
    if more > 0 {
        text.push_str(&format!(" and {more} more"));
    }
    text
}
