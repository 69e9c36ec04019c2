//! What travels through JetStream: an operator's checked request on its events stream, and the
//! owner's ledger entries (what it committed, and the answers) on the ledger stream.
//!
//! JSON, so that an operator's stream can be read with the `nats` tool when something goes
//! wrong. The types of the pipeline that are stored in sled already serialise (the event, its
//! record, its commissions); the rest are mirrored here, so that the pipeline's own types stay
//! free of the wire.

use serde::{Deserialize, Serialize};

use crate::event::{FieldError, IncomingEvent};
use crate::pipeline::{Command, Disposition, Done, EventOutcome, IngestError, RetryReport};
use crate::store::records::{CommissionRecord, EventRecord, EventStatus, PayoutRecord, StoredEvent};
use crate::store::{MoveOutcome, QuotaExceeded};

/// One request's checked events, as the receiving node published them.
#[derive(Debug, Serialize, Deserialize)]
pub struct Request {
    pub events: Vec<Event>,
    /// When the receiving node took the request: the events' `received_at`, whichever node
    /// evaluates them.
    pub received_at: i64,
    /// Names the waiting receiver's answer in the ledger entry.
    pub reply: String,
    /// An ordered command instead of events (then `events` is empty): run by the owner at
    /// this place of the operator's order, and by every view at the same place of the ledger.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Command>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Event {
    pub event: StoredEvent,
    pub content_sha256: String,
}

impl From<IncomingEvent> for Event {
    fn from(incoming: IncomingEvent) -> Self {
        Self { event: incoming.event, content_sha256: incoming.content_sha256 }
    }
}

impl From<Event> for IncomingEvent {
    fn from(event: Event) -> Self {
        Self { event: event.event, content_sha256: event.content_sha256 }
    }
}

/// One message on an operator's ledger subject. Each is published with the subject's last
/// sequence expected (the fence, see [`super::ownership`]).
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Entry {
    /// A node took the operator (its lease's revision): from here on, only its entries follow.
    Takeover { node: String, lease: u64, events_sequence: u64 },
    /// Requests of the events stream, in its order, as the owner committed them.
    Committed { node: String, lease: u64, requests: Vec<Committed> },
}

impl Entry {
    /// The last events-stream sequence this entry accounts for.
    pub fn events_sequence(&self) -> u64 {
        match self {
            Entry::Takeover { events_sequence, .. } => *events_sequence,
            Entry::Committed { requests, .. } => requests.last().map_or(0, |request| request.sequence),
        }
    }
}

/// One request of the events stream and what its commit answered.
#[derive(Debug, Serialize, Deserialize)]
pub struct Committed {
    /// Its sequence in the events stream.
    pub sequence: u64,
    pub reply: String,
    pub received_at: i64,
    pub events: Vec<Event>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Command>,
    pub answer: Answer,
}

/// What an event's commissions pay, in an order of their own: its id, then (affiliate, rule,
/// currency, amount) of each.
fn paid(outcome: &Outcome) -> (&str, Vec<(&str, &str, &str, rust_decimal::Decimal)>) {
    let mut paid: Vec<_> = outcome
        .commissions
        .iter()
        .map(|commission| {
            (commission.affiliate.as_str(), commission.rule.as_str(), commission.currency.as_str(), commission.amount)
        })
        .collect();
    paid.sort();
    (outcome.record.event.id.as_str(), paid)
}

/// [`crate::pipeline::Pipeline::ingest`]'s result, on the wire.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Answer {
    Outcomes {
        outcomes: Vec<Outcome>,
    },
    Conflict {
        ids: Vec<String>,
    },
    Invalid {
        problems: Vec<Problem>,
    },
    QuotaExceeded {
        event: Option<String>,
        used: u64,
        needed: u64,
        quota: u64,
    },
    /// Refused for a reason of the owner's node (a full disk, a full queue): nothing written.
    Unavailable {
        message: String,
    },
    /// A retry of the failed events did this.
    Retried {
        retried: usize,
        accepted: usize,
        still_failed: usize,
    },
    /// A change of the operator's record was applied (`found`: the operator exists).
    Changed {
        found: bool,
    },
    /// A run of commission moves did this (`existing`: the payment's reference was used).
    Moved {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        existing: Option<PayoutRecord>,
        #[serde(default)]
        moved: Vec<String>,
        #[serde(default)]
        refused: Vec<(String, String)>,
    },
}

impl Answer {
    /// Answers as this request was first answered the events this view committed from it
    /// before: those whose record has the request's own receipt time.
    ///
    /// Why: an owner fenced off after its sled committed a group, but before its ledger entry
    /// was written, keeps those commits in its view. Should it own the operator again before
    /// anyone else has written that group to the ledger, it sequences the same requests again,
    /// and its view finds their events stored already: `duplicate`. The ledger's answer must
    /// still say what the request did (`accepted`, or `failed`), or it would never record the
    /// event as accepted, and the client waiting on that request would read `duplicate` for
    /// an event it sent once. A genuine resend is another request, received at another time,
    /// and stays `duplicate`. Every view applying the entry commits the events either way.
    pub fn own_commits_as_first_answered(&mut self, received_at: i64) {
        let Answer::Outcomes { outcomes } = self else { return };
        for outcome in outcomes {
            if outcome.disposition == Disposition::Duplicate.as_str() && outcome.record.received_at == received_at {
                let first = match outcome.record.status {
                    EventStatus::Accepted => Disposition::Accepted,
                    EventStatus::Failed => Disposition::Failed,
                };
                outcome.disposition = first.as_str().to_owned();
            }
        }
    }

    /// Where this answer (a view's, applying a ledger entry) pays otherwise than `ledger` (the
    /// owner's answer in that entry): an event's commissions by affiliate, rule, currency and
    /// amount, a retry's counts, a money move's counts, or another kind of answer. `None` when
    /// they agree. Commission ids are not compared: each node numbers its own ledger.
    ///
    /// A view can apply an entry again (its position is noted without a sync, and after a
    /// refusal mid-entry): its events are then `duplicate`, paying what they paid, but a retry
    /// finds nothing left to retry and a move finds its commissions moved. So a retry or a move
    /// of which this view did nothing is taken as applied before, not as a difference.
    pub fn pays_otherwise_than(&self, ledger: &Answer) -> Option<String> {
        let differs = || Some(format!("{self:?} here, {ledger:?} in the ledger"));
        match (self, ledger) {
            (Answer::Outcomes { outcomes: here }, Answer::Outcomes { outcomes: there }) => {
                if here.len() != there.len() {
                    return Some(format!("{} events here, {} in the ledger", here.len(), there.len()));
                }
                here.iter().zip(there).find_map(|(here, there)| {
                    let (paid_here, paid_there) = (paid(here), paid(there));
                    (paid_here != paid_there).then(|| {
                        format!(
                            "event {}: paid {paid_here:?} here, {paid_there:?} in the ledger",
                            there.record.event.id
                        )
                    })
                })
            }
            (Answer::Retried { retried: 0, .. }, Answer::Retried { .. }) => None,
            (
                Answer::Retried { retried, accepted, still_failed },
                Answer::Retried { retried: r, accepted: a, still_failed: s },
            ) => ((retried, accepted, still_failed) != (r, a, s)).then(differs).flatten(),
            (Answer::Moved { moved, .. }, Answer::Moved { .. }) if moved.is_empty() => None,
            (Answer::Moved { existing, moved, refused }, Answer::Moved { existing: e, moved: m, refused: r }) => {
                ((existing.is_some(), moved.len(), refused.len()) != (e.is_some(), m.len(), r.len()))
                    .then(differs)
                    .flatten()
            }
            (Answer::Changed { found }, Answer::Changed { found: f }) => (found != f).then(differs).flatten(),
            _ if std::mem::discriminant(self) != std::mem::discriminant(ledger) => differs(),
            _ => None,
        }
    }

    /// Whether the request's events were committed (some of them may be duplicates).
    pub fn committed(&self) -> bool {
        matches!(self, Answer::Outcomes { .. } | Answer::Retried { .. } | Answer::Changed { .. } | Answer::Moved { .. })
    }
}

impl From<Result<Done, IngestError>> for Answer {
    fn from(result: Result<Done, IngestError>) -> Self {
        match result {
            Ok(Done::Closed(outcomes)) => Answer::from(Ok::<_, IngestError>(outcomes)),
            Ok(Done::Retried(RetryReport { retried, accepted, still_failed })) => {
                Answer::Retried { retried, accepted, still_failed }
            }
            Ok(Done::Changed(found)) => Answer::Changed { found },
            Ok(Done::Moved(MoveOutcome::Existing(payout))) => {
                Answer::Moved { existing: Some(payout), moved: Vec::new(), refused: Vec::new() }
            }
            Ok(Done::Moved(MoveOutcome::Moved { moved, refused })) => Answer::Moved { existing: None, moved, refused },
            Err(error) => Answer::from(Err::<Vec<EventOutcome>, _>(error)),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Outcome {
    pub disposition: String,
    pub record: EventRecord,
    pub commissions: Vec<CommissionRecord>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Problem {
    pub index: Option<usize>,
    pub field: String,
    pub problem: String,
}

impl From<Result<Vec<EventOutcome>, IngestError>> for Answer {
    fn from(result: Result<Vec<EventOutcome>, IngestError>) -> Self {
        match result {
            Ok(outcomes) => Answer::Outcomes {
                outcomes: outcomes
                    .into_iter()
                    .map(|outcome| Outcome {
                        disposition: outcome.disposition.as_str().to_owned(),
                        record: outcome.record,
                        commissions: outcome.commissions,
                    })
                    .collect(),
            },
            Err(IngestError::Conflict(ids)) => Answer::Conflict { ids },
            Err(IngestError::Invalid(problems)) => Answer::Invalid {
                problems: problems
                    .into_iter()
                    .map(|problem| Problem { index: problem.index, field: problem.field, problem: problem.problem })
                    .collect(),
            },
            Err(IngestError::QuotaExceeded { event, refused, .. }) => {
                Answer::QuotaExceeded { event, used: refused.used, needed: refused.needed, quota: refused.quota }
            }
            Err(other) => Answer::Unavailable { message: other.to_string() },
        }
    }
}

impl Answer {
    /// The answer as the pipeline gives it, for `operator`.
    pub fn into_result(self, operator: &str) -> Result<Vec<EventOutcome>, IngestError> {
        match self {
            Answer::Outcomes { outcomes } => Ok(outcomes
                .into_iter()
                .map(|outcome| EventOutcome {
                    disposition: disposition(&outcome.disposition),
                    record: outcome.record,
                    commissions: outcome.commissions,
                })
                .collect()),
            Answer::Conflict { ids } => Err(IngestError::Conflict(ids)),
            Answer::Invalid { problems } => Err(IngestError::Invalid(
                problems
                    .into_iter()
                    .map(|problem| FieldError { index: problem.index, field: problem.field, problem: problem.problem })
                    .collect(),
            )),
            Answer::QuotaExceeded { event, used, needed, quota } => Err(IngestError::QuotaExceeded {
                operator: operator.to_owned(),
                event,
                refused: QuotaExceeded { used, needed, quota },
            }),
            Answer::Unavailable { message } => Err(IngestError::LogUnavailable(message)),
            Answer::Retried { .. } | Answer::Changed { .. } | Answer::Moved { .. } => {
                Err(IngestError::Internal("events were answered as a command".into()))
            }
        }
    }

    /// The answer of a command, for `operator` (a close's is its settlements' outcomes).
    pub fn into_done(self, operator: &str) -> Result<Done, IngestError> {
        match self {
            Answer::Retried { retried, accepted, still_failed } => {
                Ok(Done::Retried(RetryReport { retried, accepted, still_failed }))
            }
            Answer::Changed { found } => Ok(Done::Changed(found)),
            Answer::Moved { existing: Some(payout), .. } => Ok(Done::Moved(MoveOutcome::Existing(payout))),
            Answer::Moved { existing: None, moved, refused } => Ok(Done::Moved(MoveOutcome::Moved { moved, refused })),
            other => other.into_result(operator).map(Done::Closed),
        }
    }
}

fn disposition(text: &str) -> Disposition {
    match text {
        "duplicate" => Disposition::Duplicate,
        "failed" => Disposition::Failed,
        "conflict" => Disposition::Conflict,
        _ => Disposition::Accepted,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(id: &str, disposition: &str, received_at: i64, status: EventStatus) -> Outcome {
        let event = StoredEvent {
            id: id.to_owned(),
            kind: "deposit".to_owned(),
            customer: "c1".to_owned(),
            occurred_at: 1_000,
            amount: None,
            currency: None,
            affiliate: None,
            attributes: Default::default(),
            fx: None,
        };
        let record = EventRecord {
            seq: 1,
            event,
            content_sha256: String::new(),
            received_at,
            status,
            failure: None,
            attributed_to: None,
            evaluation: None,
            commission_ids: Vec::new(),
            attempts: 1,
            restated: false,
            taken_as_received: false,
        };
        Outcome { disposition: disposition.to_owned(), record, commissions: Vec::new() }
    }

    fn dispositions(answer: &Answer) -> Vec<&str> {
        let Answer::Outcomes { outcomes } = answer else { panic!("outcomes") };
        outcomes.iter().map(|outcome| outcome.disposition.as_str()).collect()
    }

    /// Events this request committed before a fence read as it first answered them; an event
    /// stored by an earlier request (another receipt time) stays a duplicate.
    #[test]
    fn a_request_sequenced_again_is_answered_as_it_first_was() {
        let mut answer = Answer::Outcomes {
            outcomes: vec![
                outcome("mine", "duplicate", 7_000, EventStatus::Accepted),
                outcome("mine-failed", "duplicate", 7_000, EventStatus::Failed),
                outcome("resent", "duplicate", 6_000, EventStatus::Accepted),
                outcome("new", "accepted", 7_000, EventStatus::Accepted),
            ],
        };
        answer.own_commits_as_first_answered(7_000);
        assert_eq!(dispositions(&answer), ["accepted", "failed", "duplicate", "accepted"]);
    }

    fn paying(id: &str, disposition: &str, amounts: &[(&str, &str)]) -> Outcome {
        let mut outcome = outcome(id, disposition, 7_000, EventStatus::Accepted);
        outcome.commissions = amounts
            .iter()
            .enumerate()
            .map(|(index, (affiliate, amount))| CommissionRecord {
                id: format!("cm_{index}"),
                event_id: id.to_owned(),
                affiliate: (*affiliate).to_owned(),
                customer: "c1".to_owned(),
                amount: amount.parse().unwrap(),
                currency: "USD".to_owned(),
                rule: "cpa".to_owned(),
                explanation: String::new(),
                plugin_version: 1,
                occurred_at: 1_000,
                created_at: 7_000,
                reverses: None,
                fx_rate: None,
                version_reason: String::new(),
                hold_until: None,
                restates: None,
                unrounded_amount: None,
            })
            .collect();
        outcome
    }

    /// A view that applies an entry and pays what the owner paid agrees, whatever its own
    /// commission ids and whether it held the events already; one that pays another amount or
    /// another affiliate is told where.
    #[test]
    fn a_view_paying_otherwise_than_the_ledger_is_told_where() {
        let ledger = Answer::Outcomes {
            outcomes: vec![
                paying("d1", "accepted", &[("aff1", "10"), ("aff2", "1.50")]),
                paying("d2", "accepted", &[]),
            ],
        };
        let mut same = Answer::Outcomes {
            outcomes: vec![
                paying("d1", "duplicate", &[("aff2", "1.5"), ("aff1", "10.00")]),
                paying("d2", "accepted", &[]),
            ],
        };
        assert_eq!(same.pays_otherwise_than(&ledger), None);
        let Answer::Outcomes { outcomes } = &mut same else { unreachable!() };
        outcomes[0].commissions[0].amount = "1.51".parse().unwrap();
        let told = same.pays_otherwise_than(&ledger).expect("another amount");
        assert!(told.starts_with("event d1: "), "{told}");
        let fewer = Answer::Outcomes { outcomes: vec![paying("d1", "accepted", &[("aff1", "10"), ("aff2", "1.50")])] };
        assert!(fewer.pays_otherwise_than(&ledger).is_some());
        let retried = Answer::Retried { retried: 0, accepted: 0, still_failed: 0 };
        assert!(retried.pays_otherwise_than(&ledger).is_some(), "another kind of answer");
    }

    #[test]
    fn a_move_or_retry_is_compared_by_its_counts_unless_the_view_applied_it_before() {
        let moved = |moved: usize, refused: usize| Answer::Moved {
            existing: None,
            moved: (0..moved).map(|n| format!("com_{n}")).collect(),
            refused: (0..refused).map(|n| (format!("com_r{n}"), "is paid".to_owned())).collect(),
        };
        // Other ids on another node: the counts are what is compared.
        let mut renumbered = moved(3, 1);
        if let Answer::Moved { moved, .. } = &mut renumbered {
            moved[0] = "com_99".into();
        }
        assert_eq!(renumbered.pays_otherwise_than(&moved(3, 1)), None);
        assert!(moved(2, 1).pays_otherwise_than(&moved(3, 1)).is_some(), "a commission fewer moved");
        assert!(moved(3, 0).pays_otherwise_than(&moved(3, 1)).is_some(), "one refused in the ledger only");
        // The same entry applied again: everything moved already.
        assert_eq!(moved(0, 4).pays_otherwise_than(&moved(3, 1)), None);

        let retried = |retried, accepted| Answer::Retried { retried, accepted, still_failed: retried - accepted };
        assert_eq!(retried(2, 1).pays_otherwise_than(&retried(2, 1)), None);
        assert!(retried(2, 2).pays_otherwise_than(&retried(2, 1)).is_some());
        assert_eq!(retried(0, 0).pays_otherwise_than(&retried(2, 1)), None, "applied again: nothing left to retry");
        assert!(Answer::Changed { found: false }.pays_otherwise_than(&Answer::Changed { found: true }).is_some());
    }
}
