//! `verify`: replaying the operator's ledger and comparing it with what is stored, so that a
//! verify can stop anywhere and go on (a job, [`crate::verify_jobs`]).
//!
//! Each accepted event is replayed through the version that evaluated it, in ledger order, as
//! live did ([`Pipeline::replay_step`]: a late event is evaluated where it arrived and restates
//! the closed months from their checkpoints), and compared: its own commissions, a late event's
//! adjustments, each stored checkpoint with the state the replay has at its place (as the replay
//! reaches it), and the final state.
//!
//! **Resuming.** What a replay needs to go on from position `next` is its scratch state there,
//! the closed months' books and checkpoints as replayed so far, and the report so far. The
//! scratch state is not stored: a resume point is taken only where a stored checkpoint lies that
//! the replay has just found equal to its own state, so the state is that checkpoint's (read
//! back and checked against the digest the verify saw). A month's replayed checkpoint is kept
//! the same way (the stored one, by digest) unless it differed, then in full. Without periodic
//! checkpoints (`serve --checkpoint-every`) the resume points are the months' checkpoints.
//!
//! **On other cores.** The stretches between stored checkpoints are evaluated ahead by helper
//! threads ([`crate::verify_ahead`]); the verify takes a stretch's evaluations where it confirms
//! the checkpoint the stretch starts from, and does everything else of each step itself, in
//! order, so the report is the one a single thread gives.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::amounts::Payout;
use crate::pipeline::checkpoints::{ReplayState, ReplayedAdjustments};
use crate::pipeline::restate::missed_by_settlement;
use crate::pipeline::{Evaluated, IngestError, Pipeline, settlement_period};
use crate::replay::{CheckpointDifference, EventDifference, VerifyReport, first_position};
use crate::sandbox::ScratchState;
use crate::store::checkpoints::{PeriodBook, State, decode_writes, encode_writes, state_digest};
use crate::store::records::{EventRecord, EventStatus, Failure, FailureKind, OperatorRecord};
use crate::verify_ahead::{Helpers, evaluated_ahead};

/// How far a verify has gone, and what it needs to go on (see the module's docs).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VerifyProgress {
    /// The ledger's last sequence number when the verify started: it verifies up to there.
    pub upto: u64,
    /// The next ledger position to replay: every event before it is verified.
    pub next: u64,
    /// The report so far (`state_keys_differing` is set at the end).
    pub report: VerifyReport,
    /// Where this verify started: 1, or the resume point of the verify it goes on from
    /// ([`Self::continued`]).
    #[serde(default = "first_position")]
    started_from: u64,
    /// The digest of the stored checkpoint at `next`, whose state is the replay's there; `None`
    /// at the start.
    anchor: Option<String>,
    /// The periodic checkpoints up to this position are compared already.
    periodic_compared: u64,
    first_settlement: HashMap<String, u64>,
    books: BTreeMap<String, PeriodBook>,
    months: BTreeMap<String, MonthCheckpoint>,
}

/// A closed month's checkpoint as the replay took it.
#[derive(Debug, Clone, Serialize, Deserialize)]
enum MonthCheckpoint {
    /// The stored one at `seq`, which was equal to it (its digest then).
    Stored { seq: u64, digest: String },
    /// The replayed state itself: the stored one differed, or there is none.
    Replayed(BTreeMap<String, Option<String>>),
}

impl VerifyProgress {
    /// A verify of the ledger up to `upto`, not started.
    pub fn new(upto: u64) -> Self {
        Self {
            upto,
            next: 1,
            report: VerifyReport {
                events_replayed: 0,
                events_matching: 0,
                differences: Vec::new(),
                state_keys_differing: None,
                checkpoints_differing: Vec::new(),
                complete: true,
                verified_from: 1,
            },
            started_from: 1,
            anchor: None,
            periodic_compared: 0,
            first_settlement: HashMap::new(),
            books: BTreeMap::new(),
            months: BTreeMap::new(),
        }
    }

    /// Where this verify started replaying.
    pub fn started_from(&self) -> u64 {
        self.started_from
    }

    /// A verify of the ledger up to `upto` that goes on from this one's last resume point: the
    /// entries before it are taken as this verify found them (its report so far, its books and
    /// months), and the state there is the stored checkpoint it confirmed, read back by digest
    /// when the new verify starts. With no resume point, a verify from the first event.
    ///
    /// Why: a ledger verified last night need not be replayed from event 1 again today; what
    /// arrived since is replayed from the latest checkpoint the last verify confirmed, in time
    /// proportional to that, not to history.
    pub fn continued(self, upto: u64) -> Self {
        if self.anchor.is_none() || upto + 1 < self.next {
            return Self::new(upto);
        }
        let started_from = self.next;
        Self { upto, started_from, ..self }
    }
}

/// Takes a resume point at `next`, where the stored checkpoint of digest `anchor` holds the
/// replay's state.
fn save(
    observer: &mut dyn VerifyObserver,
    progress: &mut VerifyProgress,
    replay: &ReplayState,
    next: u64,
    anchor: String,
) -> Result<(), IngestError> {
    progress.next = next;
    progress.anchor = Some(anchor);
    progress.books = replay.books.clone();
    observer.resume_point(progress)
}

/// What a verify tells its caller as it goes.
pub trait VerifyObserver {
    /// After each ledger entry: the next position, and the events replayed so far.
    /// An error ends the verify there (the host is stopping).
    fn replayed(&mut self, _next: u64, _events_replayed: usize) -> Result<(), IngestError> {
        Ok(())
    }
    /// At a resume point: everything needed to go on from `progress.next`.
    fn resume_point(&mut self, _progress: &VerifyProgress) -> Result<(), IngestError> {
        Ok(())
    }
}

impl VerifyObserver for () {}

impl Pipeline {
    /// Verifies the whole ledger in one go (`POST /v1/operators/{op}/verify`).
    pub fn verify(&self, operator: &OperatorRecord) -> Result<VerifyReport, IngestError> {
        let upto = self.store().last_sequence(&operator.id)?;
        self.verify_from(operator, VerifyProgress::new(upto), &mut ())
    }

    /// Verifies the ledger from `progress` (a new one, or one saved at a resume point) up to
    /// its `upto`. A saved one whose checkpoints no longer read back as they did starts over.
    pub fn verify_from(
        &self,
        operator: &OperatorRecord,
        progress: VerifyProgress,
        observer: &mut dyn VerifyObserver,
    ) -> Result<VerifyReport, IngestError> {
        let (mut progress, mut replay) = match self.resumed(operator, &progress)? {
            Some(replay) => (progress, replay),
            None => {
                if progress.next > 1 {
                    tracing::warn!(operator = %operator.id, next = progress.next, "the checkpoint a verify was to resume from does not read back as it did: verifying from the first event");
                }
                (VerifyProgress::new(progress.upto), ReplayState::default())
            }
        };
        let store = self.store();
        let stored = store.stored_checkpoints(&operator.id)?;
        let periodic: Vec<u64> = stored
            .iter()
            // Those stored since the verify started (past `upto + 1`) are not its to compare.
            .filter(|checkpoint| checkpoint.period.is_none())
            .filter(|checkpoint| checkpoint.seq > progress.periodic_compared && checkpoint.seq <= progress.upto + 1)
            .map(|checkpoint| checkpoint.seq)
            .collect();
        let mut periodic = periodic.into_iter().peekable();
        let by_month: HashMap<&str, u64> =
            stored.iter().filter_map(|checkpoint| Some((checkpoint.period.as_deref()?, checkpoint.seq))).collect();
        let starts: BTreeSet<u64> =
            stored.iter().map(|checkpoint| checkpoint.seq).filter(|seq| *seq > progress.next).collect();
        let starts: Vec<u64> = starts.into_iter().collect();
        let mut helpers = Helpers::start(self, operator, progress.next, &starts, progress.upto);
        let mut ahead = None;
        for record in self.records_from(operator, progress.next - 1, progress.upto) {
            let record = record?;
            let mut sound = None;
            while let Some(seq) = periodic.next_if(|seq| *seq <= record.seq) {
                progress.periodic_compared = seq;
                let digest = self.compare_checkpoint(operator, None, seq, &replay.scratch.snapshot(), &mut progress)?;
                sound = digest.map(|digest| (seq, digest));
            }
            let mut confirmed = sound.as_ref().map(|(seq, _)| *seq);
            let saved = sound.is_some();
            if let Some((seq, digest)) = sound {
                save(observer, &mut progress, &replay, seq, digest)?;
            }
            let month = match (record.status, &record.evaluation, settlement_period(&record.event)) {
                (EventStatus::Accepted, Some(_), Some(period)) if !replay.books.contains_key(&period.id) => {
                    Some(period.id)
                }
                _ => None,
            };
            if let Some(month) = month {
                let state = replay.scratch.snapshot();
                let stored_at = by_month.get(month.as_str()).copied();
                let digest = match stored_at {
                    Some(seq) => self.compare_checkpoint(operator, Some(&month), seq, &state, &mut progress)?,
                    None => None,
                };
                let kept = match (stored_at, digest.clone()) {
                    (Some(seq), Some(digest)) => MonthCheckpoint::Stored { seq, digest },
                    _ => MonthCheckpoint::Replayed(encode_writes(
                        &state.into_iter().map(|(key, value)| (key, Some(value))).collect(),
                    )),
                };
                progress.months.insert(month, kept);
                if digest.is_some() && stored_at == Some(record.seq) {
                    confirmed = Some(record.seq);
                }
                // A resume point only where the stored checkpoint is at this very entry, and
                // none was just taken.
                if let (false, Some(digest), true) = (saved, digest, stored_at == Some(record.seq)) {
                    save(observer, &mut progress, &replay, record.seq, digest)?;
                }
            }
            if let Some(entered) = helpers.reached(record.seq, confirmed) {
                ahead = entered;
            }
            let mut visit = |record: &EventRecord, evaluated: &Evaluated, adjustments: Option<&ReplayedAdjustments>| {
                self.compare_event(operator, &mut progress, record, evaluated, adjustments)
            };
            let given = evaluated_ahead(&mut ahead, &record);
            if given.is_some() {
                self.metrics().verify_evaluated_ahead.inc();
            }
            self.replay_step_with(operator, &mut replay, &record, given, &mut visit)?;
            progress.next = record.seq + 1;
            observer.replayed(progress.next, progress.report.events_replayed)?;
        }
        let last = replay.scratch.snapshot();
        for seq in periodic {
            self.compare_checkpoint(operator, None, seq, &last, &mut progress)?;
        }
        let mut report = progress.report;
        report.verified_from = progress.started_from;
        report.checkpoints_differing.sort_by_key(|difference| difference.seq);
        if store.last_sequence(&operator.id)? == progress.upto {
            let stored = store.state_entries(&operator.id)?;
            let keys: std::collections::BTreeSet<&String> = stored.keys().chain(last.keys()).collect();
            report.state_keys_differing =
                Some(keys.into_iter().filter(|key| stored.get(*key) != last.get(*key)).cloned().collect());
        }
        Ok(report)
    }

    /// The replay as it stood at `progress.next`, built from the stored checkpoints it names;
    /// `None` to start over (a new verify, or a checkpoint that no longer reads back as it did).
    fn resumed(
        &self,
        operator: &OperatorRecord,
        progress: &VerifyProgress,
    ) -> Result<Option<ReplayState>, IngestError> {
        let Some(anchor) = &progress.anchor else { return Ok(None) };
        let store = self.store();
        let read = |seq: u64, digest: &str| -> Result<Option<State>, IngestError> {
            Ok(store.checkpoint_state(&operator.id, seq)?.filter(|state| state_digest(state) == digest))
        };
        let Some(scratch) = read(progress.next, anchor)? else { return Ok(None) };
        let mut checkpoints = BTreeMap::new();
        for (month, kept) in &progress.months {
            let state = match kept {
                MonthCheckpoint::Stored { seq, digest } => match read(*seq, digest)? {
                    Some(state) => state,
                    None => return Ok(None),
                },
                MonthCheckpoint::Replayed(entries) => {
                    decode_writes(entries).into_iter().filter_map(|(key, value)| Some((key, value?))).collect()
                }
            };
            checkpoints.insert(month.clone(), state);
        }
        // The month whose checkpoint is the anchor itself is taken again by its settlement.
        checkpoints.retain(|month, _| progress.books.contains_key(month));
        tracing::info!(operator = %operator.id, next = progress.next, "verify resumed from a checkpoint it had confirmed");
        Ok(Some(ReplayState {
            scratch: Arc::new(ScratchState::from_state(scratch)),
            books: progress.books.clone(),
            checkpoints,
        }))
    }

    /// Compares the stored checkpoint at `seq` with the replay's `state`: a difference goes into
    /// the report; an equal one answers its digest (a resume point).
    fn compare_checkpoint(
        &self,
        operator: &OperatorRecord,
        period: Option<&str>,
        seq: u64,
        state: &State,
        progress: &mut VerifyProgress,
    ) -> Result<Option<String>, IngestError> {
        let (problem, keys) = match self.store().checkpoint_state(&operator.id, seq)? {
            None => (
                "the stored checkpoint does not read back: it, or one before it, is missing or was altered (its digest \
                 does not match)"
                    .to_owned(),
                Vec::new(),
            ),
            Some(stored) if stored != *state => {
                let keys: std::collections::BTreeSet<&String> = stored.keys().chain(state.keys()).collect();
                let differing = keys.into_iter().filter(|key| stored.get(*key) != state.get(*key)).cloned().collect();
                ("the stored checkpoint differs from the state the replay had there".to_owned(), differing)
            }
            Some(stored) => return Ok(Some(state_digest(&stored))),
        };
        progress.report.checkpoints_differing.push(CheckpointDifference {
            period: period.map(str::to_owned),
            seq,
            problem,
            keys,
        });
        Ok(None)
    }

    /// Compares one replayed event with the ledger: its own commissions, a late event's
    /// adjustments (by amount: an adjustment's explanation names when it was computed), and
    /// whether its period's settlement missed it.
    fn compare_event(
        &self,
        operator: &OperatorRecord,
        progress: &mut VerifyProgress,
        record: &EventRecord,
        evaluated: &Evaluated,
        adjustments: Option<&ReplayedAdjustments>,
    ) -> Result<(), IngestError> {
        if let Some(period) = settlement_period(&record.event) {
            progress.first_settlement.entry(period.id).or_insert(record.seq);
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
        let report = &mut progress.report;
        report.events_replayed += 1;
        report.complete &= evaluated.failure.is_none();
        let problem = missed_by_settlement(&progress.first_settlement, record);
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
    }
}
