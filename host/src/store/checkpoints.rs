//! Checkpoints of plugin state and the books of closed months (issue 15).
//!
//! Why: every restatement, statement and verify used to replay the operator's whole ledger. A
//! **checkpoint** is the operator's plugin state as it stood at a ledger position (just before
//! a month's first settlement), so a restatement starts there instead of at event 1. It is
//! stored as a delta from the operator's previous checkpoint (the keys whose value changed, a
//! deleted key as `null`) with the sha256 of the whole state it stands for: reading one folds the
//! deltas up to it and checks the digest, so a checkpoint that is missing, or one that was
//! altered, or one after a missing delta, reads as absent (and the caller replays the ledger
//! instead) rather than as a wrong state. A periodic checkpoint may instead be **chained**
//! ([`super::checkpoint_chain`]): written from the keys committed since the one before, its digest
//! covers that one's digest and its own delta, and it is sound only if the one before is.
//!
//! A **period book** says, for one closed month, what a restatement needs besides the
//! checkpoint: the writes of the late events booked into the month, the writes its settlements
//! make as last restated, and what each settlement paid (at the close plus adjustments). A late
//! event's new books are written before its commit as `pending`, tagged with the sequence number
//! and id the event commits with; a reader takes the pending book only if that event is in the
//! ledger at that position, so a crash between the two writes leaves the book as it was.
//!
//! These trees are derived data: deleting them loses nothing (a restatement rebuilds them by a
//! replay of the ledger).

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use super::{Store, StoreError, decode, keys, to_json};

/// Plugin state writes: `None` deletes the key.
pub type Writes = BTreeMap<String, Option<Vec<u8>>>;
/// A whole plugin state.
pub type State = BTreeMap<String, Vec<u8>>;

pub(super) const CHECKPOINTS: &str = "checkpoints";
const BOOKS: &str = "period_books";

/// One stored checkpoint: a delta from the operator's previous one.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredCheckpoint {
    /// The state is the one just before the event of this sequence number.
    pub seq: u64,
    /// The month whose first settlement it precedes.
    pub period: Option<String>,
    /// sha256 (hex) of the whole state, see [`state_digest`]; for a `chained` one, of the
    /// checkpoint before it and its own delta, see [`link_digest`].
    pub digest: String,
    /// How many keys the whole state holds (not counted for a `chained` one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<usize>,
    /// The delta is the whole state (the first checkpoint, or one after a broken chain):
    /// reading starts over from it.
    #[serde(default)]
    pub full: bool,
    /// A periodic checkpoint written from the keys committed since the one before it
    /// ([`super::checkpoint_chain`]): its delta holds their values (a key may be there unchanged),
    /// and its digest links it to the one before, which must be sound itself.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub chained: bool,
    /// The keys changed since the previous checkpoint; `None`: deleted.
    pub delta: BTreeMap<String, Option<String>>,
}

/// What a restatement needs to know of one closed month besides its checkpoint.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PeriodBook {
    pub period: String,
    /// Its checkpoint's position: the sequence number of its first settlement.
    pub seq: u64,
    /// Its settlement entries' ids, in ledger order.
    pub settlements: Vec<String>,
    /// The ids of the late events booked into the month, in the order they arrived.
    #[serde(default)]
    pub late: Vec<String>,
    /// What the late events booked into the month wrote, in order (a later write wins).
    pub booked: BTreeMap<String, Option<String>>,
    /// What its settlements write, as last restated.
    pub settled: BTreeMap<String, Option<String>>,
    /// Per settlement id: (affiliate, rule, currency, amount) paid at the close and since.
    pub paid: BTreeMap<String, Vec<(String, String, String, Decimal)>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredBook {
    book: PeriodBook,
    pending: Option<PendingBook>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct PendingBook {
    seq: u64,
    event: String,
    book: PeriodBook,
}

/// A state value in a book or a checkpoint's delta: base64, so any bytes round-trip in JSON.
pub fn encode_value(value: &Option<Vec<u8>>) -> Option<String> {
    use base64::Engine as _;
    value.as_ref().map(|bytes| base64::engine::general_purpose::STANDARD.encode(bytes))
}

pub fn decode_value(value: &Option<String>) -> Option<Vec<u8>> {
    use base64::Engine as _;
    value.as_ref().and_then(|text| base64::engine::general_purpose::STANDARD.decode(text).ok())
}

pub fn encode_writes(writes: &Writes) -> BTreeMap<String, Option<String>> {
    writes.iter().map(|(key, value)| (key.clone(), encode_value(value))).collect()
}

pub fn decode_writes(writes: &BTreeMap<String, Option<String>>) -> Writes {
    writes.iter().map(|(key, value)| (key.clone(), decode_value(value))).collect()
}

/// The sha256 of a whole state: each key and value, length-prefixed, in key order.
pub fn state_digest(state: &State) -> String {
    let mut hasher = sha2::Sha256::new();
    for (key, value) in state {
        hasher.update((key.len() as u64).to_be_bytes());
        hasher.update(key.as_bytes());
        hasher.update((value.len() as u64).to_be_bytes());
        hasher.update(value);
    }
    hex::encode(hasher.finalize())
}

/// The digest of a chained checkpoint: sha256 of the digest of the checkpoint before it, its own
/// position, and its delta (each key and value, length-prefixed, in key order; a deleted key's
/// value marked apart from an empty one).
pub fn link_digest(previous: &str, seq: u64, delta: &BTreeMap<String, Option<String>>) -> String {
    let mut hasher = sha2::Sha256::new();
    hasher.update(previous.as_bytes());
    hasher.update(seq.to_be_bytes());
    for (key, value) in delta {
        hasher.update((key.len() as u64).to_be_bytes());
        hasher.update(key.as_bytes());
        match value {
            Some(value) => {
                hasher.update([1]);
                hasher.update((value.len() as u64).to_be_bytes());
                hasher.update(value.as_bytes());
            }
            None => hasher.update([0]),
        }
    }
    hex::encode(hasher.finalize())
}

/// The operator's checkpoints folded up to a position (see [`Store::fold_checkpoints`]).
struct Folded {
    state: State,
    /// Each checkpoint's position, and whether it is sound.
    sound: Vec<(u64, bool)>,
}

/// Applies `writes` to `state`.
pub fn apply(state: &mut State, writes: &Writes) {
    for (key, value) in writes {
        match value {
            Some(value) => state.insert(key.clone(), value.clone()),
            None => state.remove(key),
        };
    }
}

impl Store {
    fn checkpoint_tree(&self) -> Result<sled::Tree, StoreError> {
        Ok(self.db.open_tree(CHECKPOINTS)?)
    }

    fn book_tree(&self) -> Result<sled::Tree, StoreError> {
        Ok(self.db.open_tree(BOOKS)?)
    }

    /// The operator's stored checkpoints, in ledger order, undecodable ones left out.
    pub fn stored_checkpoints(&self, operator: &str) -> Result<Vec<StoredCheckpoint>, StoreError> {
        let mut checkpoints = Vec::new();
        for entry in self.checkpoint_tree()?.scan_prefix(keys::operator_prefix(operator)) {
            let (_, value) = entry?;
            if let Ok(checkpoint) = serde_json::from_slice::<StoredCheckpoint>(&value) {
                checkpoints.push(checkpoint);
            }
        }
        Ok(checkpoints)
    }

    /// The operator's latest stored checkpoint before `seq`, if it decodes.
    pub(super) fn checkpoint_before(&self, operator: &str, seq: u64) -> Result<Option<StoredCheckpoint>, StoreError> {
        let tree = self.checkpoint_tree()?;
        match tree.range(keys::sequence(operator, 0)..keys::sequence(operator, seq)).next_back() {
            Some(entry) => Ok(serde_json::from_slice(&entry?.1).ok()),
            None => Ok(None),
        }
    }

    /// The position of the operator's latest stored checkpoint.
    pub fn latest_checkpoint_seq(&self, operator: &str) -> Result<Option<u64>, StoreError> {
        let tree = self.checkpoint_tree()?;
        let last = tree.range(keys::sequence(operator, 0)..=keys::sequence(operator, u64::MAX)).next_back();
        Ok(last.transpose()?.map(|(key, _)| {
            key.len().checked_sub(8).and_then(|at| key[at..].try_into().ok()).map_or(0, u64::from_be_bytes)
        }))
    }

    /// The whole state at the checkpoint at `seq`: `None` if there is none, or it (or a delta
    /// before it) is missing or altered, so that its digest does not match.
    pub fn checkpoint_state(&self, operator: &str, seq: u64) -> Result<Option<State>, StoreError> {
        let folded = self.fold_checkpoints(operator, seq, false)?;
        Ok(folded.sound.last().filter(|(at, sound)| *at == seq && *sound).map(|_| folded.state))
    }

    /// Folds the operator's checkpoints up to `upto`, in order: the state at the last one, and
    /// whether each is sound. A whole-state one is sound if the state folded so far has its
    /// digest; a chained one if the one before it is sound and its link matches. The whole state
    /// is hashed only where it is asked: the last one, the root of a chain, or (`every`) all.
    fn fold_checkpoints(&self, operator: &str, upto: u64, every: bool) -> Result<Folded, StoreError> {
        let mut records = Vec::new();
        for entry in self.checkpoint_tree()?.range(keys::sequence(operator, 0)..=keys::sequence(operator, upto)) {
            let (_, value) = entry?;
            if let Ok(checkpoint) = serde_json::from_slice::<StoredCheckpoint>(&value) {
                records.push(checkpoint);
            }
        }
        let mut state = State::new();
        let mut sound: Vec<(u64, bool)> = Vec::with_capacity(records.len());
        for (i, checkpoint) in records.iter().enumerate() {
            if checkpoint.full {
                state.clear();
            }
            apply(&mut state, &decode_writes(&checkpoint.delta));
            let ok = if checkpoint.chained {
                i > 0
                    && sound[i - 1].1
                    && link_digest(&records[i - 1].digest, checkpoint.seq, &checkpoint.delta) == checkpoint.digest
            } else {
                let asked = every || i + 1 == records.len() || records[i + 1].chained;
                asked && state_digest(&state) == checkpoint.digest
            };
            sound.push((checkpoint.seq, ok));
        }
        Ok(Folded { state, sound })
    }

    /// Stores `state` as the checkpoint at `seq`, as a delta from the operator's latest
    /// checkpoint before it (if that one reads back whole; else in full), once the operator's
    /// periodic checkpoints waiting for the writer are written. Returns the bytes written.
    pub fn put_checkpoint(
        &self,
        operator: &str,
        seq: u64,
        period: Option<&str>,
        state: &State,
    ) -> Result<usize, StoreError> {
        self.settle_periodic_checkpoints(operator);
        let written = self.put_checkpoint_now(operator, seq, period, state)?;
        self.touched.forget_unless_after(operator, seq);
        Ok(written)
    }

    /// [`Store::put_checkpoint`] without waiting: for the periodic checkpoints' writer.
    pub(super) fn put_checkpoint_now(
        &self,
        operator: &str,
        seq: u64,
        period: Option<&str>,
        state: &State,
    ) -> Result<usize, StoreError> {
        let tree = self.checkpoint_tree()?;
        let previous = match self.checkpoint_before(operator, seq)? {
            Some(previous) => self.checkpoint_state(operator, previous.seq)?,
            None => None,
        };
        let full = previous.is_none();
        let delta: Writes = match previous {
            Some(previous) => previous
                .keys()
                .filter(|key| !state.contains_key(*key))
                .map(|key| (key.clone(), None))
                .chain(
                    state
                        .iter()
                        .filter(|(key, value)| previous.get(*key) != Some(*value))
                        .map(|(key, value)| (key.clone(), Some(value.clone()))),
                )
                .collect(),
            // The chain before it is broken: this one starts a new one, in full.
            None => state.iter().map(|(key, value)| (key.clone(), Some(value.clone()))).collect(),
        };
        let checkpoint = StoredCheckpoint {
            seq,
            period: period.map(str::to_owned),
            digest: state_digest(state),
            keys: Some(state.len()),
            full,
            chained: false,
            delta: encode_writes(&delta),
        };
        let bytes = to_json(&checkpoint);
        let written = bytes.len();
        tree.insert(keys::sequence(operator, seq), bytes)?;
        Ok(written)
    }

    /// The operator's books of closed months, by period id, each as committed (a pending one
    /// only once its late event is in the ledger where it said).
    pub fn period_books(&self, operator: &str) -> Result<BTreeMap<String, PeriodBook>, StoreError> {
        let mut books = BTreeMap::new();
        for entry in self.book_tree()?.scan_prefix(keys::operator_prefix(operator)) {
            let (_, value) = entry?;
            let stored: StoredBook = decode(BOOKS, &value)?;
            let book = match stored.pending {
                Some(pending) if self.committed_at(operator, &pending.event, pending.seq)? => pending.book,
                _ => stored.book,
            };
            books.insert(book.period.clone(), book);
        }
        Ok(books)
    }

    fn committed_at(&self, operator: &str, event: &str, seq: u64) -> Result<bool, StoreError> {
        Ok(self.event(operator, event)?.is_some_and(|record| record.seq == seq && record.restated))
    }

    /// Stores books as they stand (a close, or a rebuild: nothing pending).
    pub fn put_period_books<'a>(
        &self,
        operator: &str,
        books: impl IntoIterator<Item = &'a PeriodBook>,
    ) -> Result<(), StoreError> {
        let tree = self.book_tree()?;
        for book in books {
            let stored = StoredBook { book: book.clone(), pending: None };
            tree.insert(keys::text(operator, &book.period), to_json(&stored))?;
        }
        Ok(())
    }

    /// Stores books as a late event will leave them once it commits as `event` at `seq`.
    pub fn put_pending_books<'a>(
        &self,
        operator: &str,
        event: &str,
        seq: u64,
        books: impl IntoIterator<Item = &'a PeriodBook>,
    ) -> Result<(), StoreError> {
        let tree = self.book_tree()?;
        let current = self.period_books(operator)?;
        for book in books {
            let committed = current.get(&book.period).cloned().unwrap_or_else(|| book.clone());
            let pending = PendingBook { seq, event: event.to_owned(), book: book.clone() };
            let stored = StoredBook { book: committed, pending: Some(pending) };
            tree.insert(keys::text(operator, &book.period), to_json(&stored))?;
        }
        Ok(())
    }
}

const MONTHS: &str = "month_spans";
/// The key, among an operator's months, of how far its ledger is indexed ("~" sorts after
/// every `YYYY-MM`).
const INDEXED: &str = "~indexed";

/// Where the events dated in one month lie in the ledger: the first and last sequence numbers.
/// A replay of the month starts at the nearest checkpoint at or before `first`, not at event 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MonthSpan {
    pub first: u64,
    pub last: u64,
}

/// What indexing reads of a ledger entry: the event's id and date only.
#[derive(Deserialize)]
struct DatedEntry {
    record: DatedRecord,
}

#[derive(Deserialize)]
struct DatedRecord {
    event: DatedEvent,
}

#[derive(Deserialize)]
struct DatedEvent {
    id: String,
    occurred_at: i64,
}

impl Store {
    /// The operator's records after `after`, in ledger order, each decoded once (a replay's
    /// read: an id walk then a lookup by id decodes every record twice).
    pub fn records_after<'a>(
        &'a self,
        operator: &'a str,
        after: u64,
    ) -> impl Iterator<Item = Result<super::records::EventRecord, StoreError>> + 'a {
        self.entries_after(operator, after).map(move |entry| {
            let (_, value) = entry?;
            let entry: super::ledger::LedgerEntry = decode("ledger", &value)?;
            self.resolved(operator, entry.record)
        })
    }

    /// The latest checkpoint at or before `seq` that reads back whole (its digest matches),
    /// with its position: an altered or missing one falls back on the one before it.
    pub fn checkpoint_at_or_before(&self, operator: &str, seq: u64) -> Result<Option<(u64, State)>, StoreError> {
        let folded = self.fold_checkpoints(operator, seq, true)?;
        // Folded once more up to the sound one: cheaper than cloning the state at each.
        match folded.sound.iter().rev().find(|(_, sound)| *sound) {
            Some((at, _)) => Ok(self.checkpoint_state(operator, *at)?.map(|state| (*at, state))),
            None => Ok(None),
        }
    }

    /// Indexes, by the month each is dated in, the operator's entries from where the index
    /// stands up to `upto` (`skip`: the host's own entries, by id). Reads each entry's id and
    /// date only, each once over the ledger's life.
    pub fn index_months(
        &self,
        operator: &str,
        upto: u64,
        month_of: impl Fn(i64) -> Option<String>,
        skip: impl Fn(&str) -> bool,
    ) -> Result<(), StoreError> {
        let tree = self.db.open_tree(MONTHS)?;
        let indexed = match tree.get(keys::text(operator, INDEXED))? {
            Some(bytes) => decode::<u64>(MONTHS, &bytes)?,
            None => 0,
        };
        if indexed >= upto {
            return Ok(());
        }
        let mut spans: BTreeMap<String, MonthSpan> = BTreeMap::new();
        for entry in self.entries_after(operator, indexed) {
            let (seq, value) = entry?;
            if seq > upto {
                break;
            }
            let entry: DatedEntry = decode("ledger", &value)?;
            if skip(&entry.record.event.id) {
                continue;
            }
            let Some(month) = month_of(entry.record.event.occurred_at) else { continue };
            spans.entry(month).and_modify(|span| span.last = seq).or_insert(MonthSpan { first: seq, last: seq });
        }
        for (month, span) in spans {
            let key = keys::text(operator, &month);
            let merged = match tree.get(&key)? {
                Some(bytes) => {
                    let known: MonthSpan = decode(MONTHS, &bytes)?;
                    MonthSpan { first: known.first.min(span.first), last: known.last.max(span.last) }
                }
                None => span,
            };
            tree.insert(key, to_json(&merged))?;
        }
        tree.insert(keys::text(operator, INDEXED), to_json(&upto))?;
        Ok(())
    }

    /// The first ledger position of an event dated in `month` or after it, as far as the ledger
    /// is indexed: where a replay of what occurred from `month` on must start.
    pub fn first_seq_dated_from(&self, operator: &str, month: &str) -> Result<Option<u64>, StoreError> {
        let tree = self.db.open_tree(MONTHS)?;
        let mut first: Option<u64> = None;
        // Months sort as `YYYY-MM`; the "~indexed" key sorts after them all.
        for entry in tree.range(keys::text(operator, month)..keys::text(operator, INDEXED)) {
            let span: MonthSpan = decode(MONTHS, &entry?.1)?;
            first = Some(first.map_or(span.first, |first| first.min(span.first)));
        }
        Ok(first)
    }

    /// Where the events dated in `month` lie, as far as the ledger is indexed.
    pub fn month_span(&self, operator: &str, month: &str) -> Result<Option<MonthSpan>, StoreError> {
        let tree = self.db.open_tree(MONTHS)?;
        tree.get(keys::text(operator, month))?.map(|bytes| decode(MONTHS, &bytes)).transpose()
    }
}
