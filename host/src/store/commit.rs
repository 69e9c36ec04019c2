//! An event's commit: one record per event in the `ledger` tree, under the operator's sequence
//! number, holding what a replay or a listing needs (the event, the deal versions its chain was
//! evaluated with, its commissions), beside only the indexes that queries read: the event id
//! (dedup and `GET /events/{id}`), the customer's attribution, the plugin's state, commissions by
//! affiliate, failed events, reversals and the statuses a reversal moves. Events waiting together
//! share one serializable transaction ([`Store::commit_events`], driven by the
//! [`crate::committer`]), each still all or nothing within it.
//!
//! What one event writes (unit-tested in `an_event_commit_writes_one_record_and_the_indexes_queries_read`):
//! the record, its id, each state key the plugin wrote, one index entry per commission, the
//! customer's binding on its first event, and per operator and transaction the sequence counter
//! and the stored-bytes count. The format before (1) also kept each event's place in the order and
//! each commission in trees of their own; [`super::migrate`] converts it.

use std::cell::RefCell;
use std::collections::BTreeMap;

use serde::Serialize;
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};

use super::deals::{deal_version, resolve_links};
use super::ledger::LedgerEntry;
use super::quota::{QuotaExceeded, read_u64};
use super::records::{CommissionRecord, CustomerBinding, EventRecord, EventStatus, StatusRecord, StoredLink};
use super::{Abort, Store, StoreError, TxResult, clawback, decode_in_tx, keys, parse_commission_id, to_json};

/// Everything one evaluated event writes, committed together by [`Store::commit_events`].
pub struct EventCommit {
    pub operator: String,
    /// The record to store; its `seq` and `commission_ids` are assigned by the commit.
    pub record: EventRecord,
    /// For a retry: the attempts count of the failed record it replaces. The commit goes
    /// through only if that record is still the one stored.
    pub replaces_failed_attempt: Option<u32>,
    pub new_binding: Option<CustomerBinding>,
    /// The state values the evaluation read; the commit goes through only if they are unchanged.
    pub state_reads: BTreeMap<String, Option<Vec<u8>>>,
    /// `None` deletes the key.
    pub state_writes: BTreeMap<String, Option<Vec<u8>>>,
    /// The commissions to store; their ids are assigned by the commit.
    pub commissions: Vec<CommissionRecord>,
    /// For an event computed from a replay of the whole ledger (a late event's restatement):
    /// the operator's last sequence number the replay saw. The commit goes through only if no
    /// event was committed since.
    pub expected_last_seq: Option<u64>,
    /// The operator's quota on stored bytes: the commit goes through only if what it adds
    /// keeps the operator within it.
    pub stored_bytes_quota: Option<u64>,
}

#[derive(Debug)]
pub enum CommitOutcome {
    /// Stored as the operator's next event in ledger order, with its commissions.
    Committed { record: Box<EventRecord>, commissions: Vec<CommissionRecord> },
    /// The event id is taken: by this event earlier (a retry) or by another one (a conflict).
    Exists(Box<EventRecord>),
    /// What the evaluation read has changed since: evaluate again.
    Stale,
    /// Nothing of it was written: it would take the operator past its quota.
    QuotaExceeded(QuotaExceeded),
}

/// The customers whose events a group holds back: one of their events in it was not committed,
/// so the ones after it, evaluated as if it were, must not be either.
#[derive(Default)]
pub struct HeldBack<'a>(std::collections::HashSet<(&'a str, &'a str)>);

impl<'a> HeldBack<'a> {
    pub fn holds(&self, commit: &'a EventCommit) -> bool {
        self.0.contains(&(commit.operator.as_str(), commit.record.event.customer.as_str()))
    }

    /// Notes what became of `commit` (`None`: it failed).
    pub fn note(&mut self, commit: &'a EventCommit, outcome: Option<&CommitOutcome>) {
        if !matches!(outcome, Some(CommitOutcome::Committed { .. })) {
            self.0.insert((commit.operator.as_str(), commit.record.event.customer.as_str()));
        }
    }
}

/// An [`EventCommit`] with its keys made before the transaction, which holds sled's global lock
/// while it runs: what is left in it is the reads, the writes, and encoding what depends on the
/// sequence number the transaction assigns.
struct PreparedCommit<'a> {
    commit: &'a EventCommit,
    event_key: Vec<u8>,
    /// The record as stored, its chain referencing deal versions; `seq` and `commission_ids`
    /// are set in place by the transaction (each time it runs), which so copies no record.
    stored: RefCell<EventRecord<StoredLink>>,
    /// The deal versions the chain references, each once: (key, JSON).
    deals: Vec<(Vec<u8>, Vec<u8>)>,
    binding: Option<(Vec<u8>, Vec<u8>)>,
    reads: Vec<(Vec<u8>, &'a Option<Vec<u8>>)>,
    writes: Vec<(Vec<u8>, &'a Option<Vec<u8>>)>,
    /// For each commission that claws another back, the reversed commission's keys.
    reversed: Vec<Option<ReversedKeys>>,
}

/// A [`LedgerEntry`] as written, borrowing what it holds: the same JSON, without a copy of the
/// record and its commissions per event inside the transaction (which holds sled's lock).
#[derive(Serialize)]
struct LedgerEntryRef<'a> {
    record: &'a EventRecord<StoredLink>,
    commissions: &'a [CommissionRecord],
}

/// Where a reversed commission is kept.
struct ReversedKeys {
    /// Under its id: in `reversals` and `commission_status`.
    by_id: Vec<u8>,
    /// Its event's record in `ledger` and its index there; `None` for an id that is not a
    /// commission's.
    record: Option<(Vec<u8>, usize)>,
}

impl<'a> PreparedCommit<'a> {
    fn new(commit: &'a EventCommit) -> Self {
        let operator = commit.operator.as_str();
        let key = |name: &str| keys::text(operator, name);
        let mut deals: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let stored = commit
            .record
            .clone()
            .map_links(|link| {
                let (sha256, json) = deal_version(&link.deal);
                let deal_key = key(&sha256);
                if !deals.iter().any(|(known, _)| *known == deal_key) {
                    deals.push((deal_key, json));
                }
                Ok::<_, std::convert::Infallible>(StoredLink::Reference {
                    affiliate: link.affiliate,
                    deal_sha256: sha256,
                })
            })
            .unwrap_or_else(|never| match never {});
        Self {
            commit,
            event_key: key(&commit.record.event.id),
            stored: RefCell::new(stored),
            deals,
            binding: commit.new_binding.as_ref().map(|binding| (key(&commit.record.event.customer), to_json(binding))),
            reads: commit.state_reads.iter().map(|(name, value)| (key(name), value)).collect(),
            writes: commit.state_writes.iter().map(|(name, value)| (key(name), value)).collect(),
            reversed: commit
                .commissions
                .iter()
                .map(|commission| {
                    commission.reverses.as_deref().map(|id| ReversedKeys {
                        by_id: key(id),
                        record: parse_commission_id(id)
                            .map(|(seq, index)| (keys::sequence(operator, seq), usize::from(index))),
                    })
                })
                .collect(),
        }
    }
}

/// The trees an event commit touches, as one transaction sees them.
struct LedgerTx<'t> {
    ledger: &'t TransactionalTree,
    events: &'t TransactionalTree,
    sequences: &'t TransactionalTree,
    failed_events: &'t TransactionalTree,
    customers: &'t TransactionalTree,
    state: &'t TransactionalTree,
    by_affiliate: &'t TransactionalTree,
    reversals: &'t TransactionalTree,
    statuses: &'t TransactionalTree,
    deals: &'t TransactionalTree,
    stored_bytes: &'t TransactionalTree,
}

impl LedgerTx<'_> {
    /// Applies one commit, or nothing of it: every check comes before the first write, so a
    /// commit that is `Exists`, `Stale` or `QuotaExceeded` leaves the transaction as it found
    /// it, and the other commits of the group go on. A stored record that cannot be decoded
    /// aborts the whole transaction instead (see the committer, which then commits the group's
    /// events alone).
    fn apply(&self, prepared: &PreparedCommit<'_>) -> TxResult<CommitOutcome> {
        let commit = prepared.commit;
        let operator = commit.operator.as_str();
        let retried = match self.events.get(&prepared.event_key)? {
            Some(earlier_seq) => {
                let earlier_seq = read_seq(&earlier_seq)?;
                let existing = self.ledger.get(keys::sequence(operator, earlier_seq))?.ok_or_else(|| {
                    let id = &commit.record.event.id;
                    ConflictableTransactionError::Abort(Abort::Decode(format!("event {id}'s record is missing")))
                })?;
                let stored_bytes = existing.len();
                let existing: LedgerEntry = decode_in_tx(&existing)?;
                let existing = self.resolve(operator, existing.record)?;
                let is_the_failure_we_retry =
                    commit.replaces_failed_attempt == Some(existing.attempts) && existing.status == EventStatus::Failed;
                if !is_the_failure_we_retry {
                    return Ok(CommitOutcome::Exists(Box::new(existing)));
                }
                Some((earlier_seq, stored_bytes))
            }
            None if commit.replaces_failed_attempt.is_some() => return Ok(CommitOutcome::Stale),
            None => None,
        };
        if let Some((key, _)) = &prepared.binding
            && self.customers.get(key)?.is_some()
        {
            return Ok(CommitOutcome::Stale);
        }
        for (key, expected) in &prepared.reads {
            if self.state.get(key)?.as_deref() != expected.as_deref() {
                return Ok(CommitOutcome::Stale);
            }
        }
        let seq = match self.sequences.get(operator.as_bytes())? {
            Some(last) => read_seq(&last)? + 1,
            None => 1,
        };
        if commit.expected_last_seq.is_some_and(|expected| expected + 1 != seq) {
            return Ok(CommitOutcome::Stale);
        }
        // Checked before the commit too; here it is a race, settled by evaluating again.
        let reversed: Vec<&Vec<u8>> = prepared.reversed.iter().flatten().map(|keys| &keys.by_id).collect();
        for (index, key) in reversed.iter().enumerate() {
            if reversed[..index].contains(key) || self.reversals.get(key)?.is_some() {
                return Ok(CommitOutcome::Stale);
            }
        }

        let commissions: Vec<CommissionRecord> = commit
            .commissions
            .iter()
            .enumerate()
            .map(|(index, commission)| CommissionRecord {
                id: CommissionRecord::id_for(seq, index),
                ..commission.clone()
            })
            .collect();
        let commission_ids: Vec<String> = commissions.iter().map(|commission| commission.id.clone()).collect();
        let stored = {
            let mut record = prepared.stored.borrow_mut();
            record.seq = seq;
            record.commission_ids.clone_from(&commission_ids);
            to_json(&LedgerEntryRef { record: &record, commissions: &commissions })
        };
        let ledger_key = keys::sequence(operator, seq);
        // Commissions by affiliate: the commission's position, which names its event's record.
        let by_affiliate: Vec<(Vec<u8>, Vec<u8>)> = commissions
            .iter()
            .enumerate()
            .map(|(index, commission)| {
                let index = index as u16;
                let position = keys::commission(operator, seq, index);
                (keys::commission_by_affiliate(operator, &commission.affiliate, seq, index), position)
            })
            .collect();
        let mut new_deals = Vec::new();
        for (key, deal) in &prepared.deals {
            if self.deals.get(key)?.is_none() {
                new_deals.push((key, deal));
            }
        }

        // What the commit adds to the operator's stored bytes, before anything is written.
        let entry = |key: &[u8], value: usize| (key.len() + value) as i64;
        let mut added = entry(&ledger_key, stored.len());
        match retried {
            // A retry replaces the failed record (under a key as long), and its id's entry by
            // one as long.
            Some((_, earlier)) => added -= entry(&ledger_key, earlier),
            None => added += entry(&prepared.event_key, SEQ_BYTES),
        }
        if let Some((key, value)) = &prepared.binding {
            added += entry(key, value.len());
        }
        for (key, value) in &prepared.writes {
            added += value.as_ref().map_or(0, |value| entry(key, value.len()));
            added -= self.state.get(key)?.map_or(0, |old| entry(key, old.len()));
        }
        for (key, position) in &by_affiliate {
            added += entry(key, position.len());
        }
        for (key, deal) in &new_deals {
            added += entry(key, deal.len());
        }
        let used = self.stored_bytes.get(operator.as_bytes())?.as_deref().map_or(0, read_u64);
        let after = used.saturating_add_signed(added);
        if let Some(quota) = commit.stored_bytes_quota
            && added > 0
            && after > quota
        {
            return Ok(CommitOutcome::QuotaExceeded(QuotaExceeded { used, needed: added as u64, quota }));
        }

        if let Some((earlier_seq, _)) = retried {
            // The retry takes effect now: it moves to the end of the ledger order.
            self.ledger.remove(keys::sequence(operator, earlier_seq))?;
            self.failed_events.remove(keys::sequence(operator, earlier_seq))?;
        }
        if let Some((key, value)) = &prepared.binding {
            self.customers.insert(key.as_slice(), value.as_slice())?;
        }
        for (key, value) in &prepared.writes {
            match value {
                Some(value) => self.state.insert(key.as_slice(), value.as_slice())?,
                None => self.state.remove(key.as_slice())?,
            };
        }
        for (key, deal) in new_deals {
            self.deals.insert(key.as_slice(), deal.as_slice())?;
        }
        self.stored_bytes.insert(operator.as_bytes(), after.to_be_bytes().as_slice())?;
        self.sequences.insert(operator.as_bytes(), seq.to_be_bytes().as_slice())?;
        self.events.insert(prepared.event_key.as_slice(), seq.to_be_bytes().as_slice())?;
        self.ledger.insert(ledger_key.as_slice(), stored)?;
        if commit.record.status == EventStatus::Failed {
            self.failed_events.insert(ledger_key.as_slice(), commit.record.event.id.as_bytes())?;
        }
        for ((commission, (by_affiliate, position)), reversed) in
            commissions.iter().zip(by_affiliate).zip(&prepared.reversed)
        {
            if let Some(reversed) = reversed {
                self.reversals.insert(reversed.by_id.as_slice(), position.as_slice())?;
                let mut status: StatusRecord = match self.statuses.get(&reversed.by_id)? {
                    Some(bytes) => decode_in_tx(&bytes)?,
                    None => StatusRecord::default(),
                };
                let original: Option<CommissionRecord> = match &reversed.record {
                    Some((record, index)) => match self.ledger.get(record)? {
                        Some(bytes) => decode_in_tx::<LedgerEntry>(&bytes)?.commissions.into_iter().nth(*index),
                        None => None,
                    },
                    None => None,
                };
                let original = original.ok_or_else(|| {
                    let id = commission.reverses.as_deref().unwrap_or_default();
                    ConflictableTransactionError::Abort(Abort::Decode(format!(
                        "the reversed commission {id} is missing"
                    )))
                })?;
                if let Some(own) = clawback::claw_back(&mut status, original.amount, commission) {
                    self.statuses.insert(keys::text(operator, &commission.id), to_json(&own))?;
                }
                self.statuses.insert(reversed.by_id.as_slice(), to_json(&status))?;
            }
            self.by_affiliate.insert(by_affiliate, position)?;
        }
        let record = EventRecord { seq, commission_ids, ..commit.record.clone() };
        Ok(CommitOutcome::Committed { record: Box::new(record), commissions })
    }

    /// A stored record with its deals, read in this transaction.
    fn resolve(&self, operator: &str, record: EventRecord<StoredLink>) -> TxResult<EventRecord> {
        resolve_links(
            operator,
            record,
            |key| Ok(self.deals.get(key)?),
            |detail| ConflictableTransactionError::Abort(Abort::Decode(detail)),
        )
    }
}

/// The length of a sequence number as stored: 8 bytes, big-endian.
const SEQ_BYTES: usize = 8;

fn read_seq(bytes: &[u8]) -> TxResult<u64> {
    let bytes: [u8; SEQ_BYTES] = bytes
        .try_into()
        .map_err(|_| ConflictableTransactionError::Abort(Abort::Decode("a sequence number is not 8 bytes".into())))?;
    Ok(u64::from_be_bytes(bytes))
}

impl Store {
    /// Commits a group of events in one transaction, each with everything it caused or with
    /// nothing (see [`CommitOutcome`]), in the order given: a later commit sees the earlier
    /// ones' writes, as if each had its own transaction.
    ///
    /// A customer's events keep their order: once one of them is not committed (`Exists`,
    /// `Stale`), its later events in the group are `Stale` too, since they were evaluated after
    /// it (a batch evaluates its events before committing them; see the pipeline's `batch`).
    ///
    /// An event's sequence number is taken from the operator's counter inside the
    /// transaction, so the numbers are the exact order in which events took effect, with no
    /// gaps: replaying events by number reproduces the state and the ledger.
    pub fn commit_events(&self, group: &[EventCommit]) -> Result<Vec<CommitOutcome>, StoreError> {
        let prepared: Vec<PreparedCommit<'_>> = group.iter().map(PreparedCommit::new).collect();
        let trees = (
            &self.ledger,
            &self.events,
            &self.sequences,
            &self.failed_events,
            &self.customers,
            &self.state,
            &self.commissions_by_affiliate,
            &self.reversals,
            &self.commission_status,
            &self.deals,
            &self.stored_bytes,
        );
        let result = trees.transaction(
            |(
                ledger,
                events,
                sequences,
                failed_events,
                customers,
                state,
                by_affiliate,
                reversals,
                statuses,
                deals,
                stored_bytes,
            )| {
                let tx = LedgerTx {
                    ledger,
                    events,
                    sequences,
                    failed_events,
                    customers,
                    state,
                    by_affiliate,
                    reversals,
                    statuses,
                    deals,
                    stored_bytes,
                };
                let mut held_back = HeldBack::default();
                // Once an operator's event is refused for its quota, so are its later ones in
                // the group: none is written after one that was not.
                let mut over_quota: BTreeMap<&str, QuotaExceeded> = BTreeMap::new();
                prepared
                    .iter()
                    .map(|commit| {
                        if let Some(refused) = over_quota.get(commit.commit.operator.as_str()) {
                            return Ok(CommitOutcome::QuotaExceeded(*refused));
                        }
                        if held_back.holds(commit.commit) {
                            return Ok(CommitOutcome::Stale);
                        }
                        let outcome = tx.apply(commit)?;
                        if let CommitOutcome::QuotaExceeded(refused) = &outcome {
                            over_quota.insert(&commit.commit.operator, *refused);
                        }
                        held_back.note(commit.commit, Some(&outcome));
                        Ok(outcome)
                    })
                    .collect::<TxResult<Vec<_>>>()
            },
        );
        let outcomes = result.map_err(|error| match error {
            TransactionError::Abort(Abort::Decode(detail)) => StoreError::Decode { tree: "events", detail },
            TransactionError::Storage(error) => StoreError::Sled(error),
        })?;
        self.touched.note(group, &outcomes);
        Ok(outcomes)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::super::tests::{cpa_of_ten, deposit};
    use super::*;

    /// Every key of every tree, with its value: (tree, key) -> value.
    fn snapshot(store: &Store) -> BTreeMap<(String, Vec<u8>), Vec<u8>> {
        let mut all = BTreeMap::new();
        for name in store.db.tree_names() {
            for entry in store.db.open_tree(&name).unwrap().iter() {
                let (key, value) = entry.unwrap();
                all.insert((String::from_utf8_lossy(&name).into_owned(), key.to_vec()), value.to_vec());
            }
        }
        all
    }

    /// The trees of the keys `commit` wrote (added, changed or removed), one name per key.
    fn keys_written(store: &Store, group: &[EventCommit]) -> Vec<String> {
        let before = snapshot(store);
        let outcomes = store.commit_events(group).unwrap();
        assert!(outcomes.iter().all(|outcome| matches!(outcome, CommitOutcome::Committed { .. })), "{outcomes:?}");
        let after = snapshot(store);
        let keys: std::collections::BTreeSet<&(String, Vec<u8>)> = before.keys().chain(after.keys()).collect();
        let mut written: Vec<String> =
            keys.into_iter().filter(|key| before.get(*key) != after.get(*key)).map(|(tree, _)| tree.clone()).collect();
        written.sort();
        written
    }

    fn paying(id: &str, customer: &str, affiliates: &[&str]) -> EventCommit {
        let mut event = deposit(id, customer, &format!("customer:{customer}"));
        event.commissions = affiliates.iter().map(|affiliate| cpa_of_ten(id, affiliate, customer)).collect();
        event
    }

    #[test]
    fn an_event_commit_writes_one_record_and_the_indexes_queries_read() {
        let directory = tempfile::tempdir().expect("a temporary directory");
        let store = Store::open(directory.path()).expect("sled opens");
        store.commit_events(&[deposit("e0", "c0", "customer:c0")]).unwrap();

        // A new customer's deposit paying its affiliate and the parent, writing one state key:
        // the record, its id, the binding, the state key, a commission index entry each, and
        // the operator's counters. (Format 1 wrote 10: also the place in the order and each
        // commission on its own.)
        let written = keys_written(&store, &[paying("e1", "c1", &["aff", "parent"])]);
        let expected = [
            "commissions_by_affiliate",
            "commissions_by_affiliate",
            "customers",
            "events",
            "ledger",
            "sequences",
            "state",
            "stored_bytes",
        ];
        assert_eq!(written, expected);

        // A group of ten: four keys an event, and the operator's two counters once.
        let group: Vec<EventCommit> =
            (0..10).map(|n| deposit(&format!("g{n}"), &format!("gc{n}"), &format!("customer:gc{n}"))).collect();
        let written = keys_written(&store, &group);
        assert_eq!(written.len(), 10 * 4 + 2, "{written:?}");
        for tree in ["ledger", "events", "customers", "state"] {
            assert_eq!(written.iter().filter(|name| *name == tree).count(), 10, "{tree}: {written:?}");
        }
    }
}
