//! Periodic checkpoints written from what changed, not from the whole state, and off the
//! operator's turn.
//!
//! Why: a periodic checkpoint (`serve --checkpoint-every N`) holds the operator's state as it
//! stands at a position of its ledger, so it is taken in the operator's turn, and its events
//! wait for it. Written as a diff of the whole state against the previous checkpoint, it read
//! every key of the operator's state, folded the previous checkpoints to diff against, and
//! hashed the whole state: at 30,000 customers, tens of milliseconds every N events, in every
//! operator's p99. Here the store notes, as it commits, what each operator's events wrote since
//! its latest periodic checkpoint (each key's latest value). The turn only takes those notes
//! ([`Store::capture_periodic_checkpoint`]: a swap, whatever the state's size); a writer thread
//! encodes them, links the new checkpoint's digest to the one before ([`link_digest`]) and
//! stores it ([`Store::write_periodic_checkpoint`]). A reader checks the chain link by link, and
//! hashes the whole state only at the chain's root.
//!
//! What is noted lives in this process's memory only, and only for operators with periodic
//! checkpoints (notes start at one, or at a close's): after a restart, after a checkpoint stored
//! another way at or past the notes' start (re-derived, or a close's restated by a late event),
//! or past [`MAX_NOTED_KEYS`] or [`MAX_NOTED_BYTES`], the next periodic checkpoint captures the
//! whole state in the turn, and the notes start again from it. A write is noted only once its
//! commit went through, so the notes never miss a write the state holds: the committer is the
//! one writer of plugin state.
//!
//! A checkpoint waiting for the writer is not in the store yet: one stored another way waits
//! for the operator's to be written first ([`Store::put_checkpoint`]), so that each delta is
//! taken against the checkpoint before it, and a stopping host waits for them all
//! ([`Store::periodic_checkpoints_written`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use super::checkpoints::{State, StoredCheckpoint, Writes, encode_value, link_digest};
use super::commit::{CommitOutcome, EventCommit};
use super::{Store, StoreError, keys, to_json};

/// Past this many keys noted for one operator, its notes are dropped (the next periodic
/// checkpoint is taken from the whole state): a checkpoint of that many keys costs about what
/// the whole state's does.
const MAX_NOTED_KEYS: usize = 1 << 20;

/// Past this many bytes of keys and values noted for one operator, its notes are dropped: they
/// are memory.
const MAX_NOTED_BYTES: usize = 64 << 20;

/// Per operator, the state written since its latest periodic checkpoint.
#[derive(Default)]
pub(super) struct TouchedKeys(Mutex<HashMap<String, Touched>>);

struct Touched {
    /// The position of the checkpoint the writes came after.
    since: u64,
    /// Each key's latest value (`None`: deleted).
    writes: Writes,
    /// The bytes of `writes`' keys and values.
    bytes: usize,
}

fn noted_bytes(key: &str, value: &Option<Vec<u8>>) -> usize {
    key.len() + value.as_ref().map_or(0, Vec::len)
}

impl TouchedKeys {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Touched>> {
        self.0.lock().expect("touched keys lock")
    }

    /// After a group's transaction: what each committed event wrote, for the operators whose
    /// notes have a start.
    pub(super) fn note(&self, group: &[EventCommit], outcomes: &[CommitOutcome]) {
        let mut touched = self.lock();
        if touched.is_empty() {
            return;
        }
        for (commit, outcome) in group.iter().zip(outcomes) {
            let (CommitOutcome::Committed { .. }, Some(notes)) = (outcome, touched.get_mut(&commit.operator)) else {
                continue;
            };
            for (key, value) in &commit.state_writes {
                notes.bytes += noted_bytes(key, value);
                if let Some(before) = notes.writes.insert(key.clone(), value.clone()) {
                    notes.bytes -= noted_bytes(key, &before);
                }
            }
            if notes.writes.len() > MAX_NOTED_KEYS || notes.bytes > MAX_NOTED_BYTES {
                touched.remove(&commit.operator);
            }
        }
    }

    /// Notes start again from a periodic checkpoint of the operator's state at `since`.
    fn restart(&self, operator: &str, since: u64) {
        self.lock().insert(operator.to_owned(), Touched { since, writes: BTreeMap::new(), bytes: 0 });
    }

    /// Where the operator's notes start, if they do.
    fn since(&self, operator: &str) -> Option<u64> {
        self.lock().get(operator).map(|notes| notes.since)
    }

    /// The writes since the notes' start, which restart at `seq`; `None` if there are no notes.
    fn take(&self, operator: &str, seq: u64) -> Option<(u64, Writes)> {
        let mut touched = self.lock();
        let notes = touched.get_mut(operator)?;
        let since = std::mem::replace(&mut notes.since, seq);
        notes.bytes = 0;
        Some((since, std::mem::take(&mut notes.writes)))
    }

    /// Drops the operator's notes unless they start after `seq`, where another checkpoint was
    /// stored: after the notes' start, the next periodic one cannot chain to it; at it, the
    /// checkpoint the notes are writes since may now hold another state (a close's, restated by
    /// a late event), which the notes would be folded onto.
    pub(super) fn forget_unless_after(&self, operator: &str, seq: u64) {
        let mut touched = self.lock();
        if touched.get(operator).is_some_and(|notes| notes.since <= seq) {
            touched.remove(operator);
        }
    }

    fn forget(&self, operator: &str) {
        self.lock().remove(operator);
    }
}

/// Periodic checkpoints captured in a turn and not written yet, per operator.
#[derive(Default)]
pub(super) struct PendingCheckpoints {
    pending: Mutex<HashMap<String, usize>>,
    written: Condvar,
}

/// How long a checkpoint stored another way waits for the operator's periodic ones.
const PENDING_WAIT: Duration = Duration::from_secs(30);

impl PendingCheckpoints {
    fn begin(&self, operator: &str) {
        *self.pending.lock().expect("pending checkpoints lock").entry(operator.to_owned()).or_default() += 1;
    }

    fn end(&self, operator: &str) {
        let mut pending = self.pending.lock().expect("pending checkpoints lock");
        if let Some(count) = pending.get_mut(operator) {
            *count -= 1;
            if *count == 0 {
                pending.remove(operator);
            }
        }
        self.written.notify_all();
    }

    fn total(&self) -> usize {
        self.pending.lock().expect("pending checkpoints lock").values().sum()
    }

    /// Waits, up to `within`, until nothing is pending for `operator` (`None`: any operator);
    /// whether nothing is.
    pub(super) fn wait(&self, operator: Option<&str>, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        let mut pending = self.pending.lock().expect("pending checkpoints lock");
        loop {
            let waiting = match operator {
                Some(operator) => pending.contains_key(operator),
                None => !pending.is_empty(),
            };
            let left = deadline.saturating_duration_since(Instant::now());
            if !waiting || left.is_zero() {
                return !waiting;
            }
            pending = self.written.wait_timeout(pending, left).expect("pending checkpoints lock").0;
        }
    }
}

/// What a turn took of the operator's state for a periodic checkpoint, to be written off the
/// turn ([`Store::write_periodic_checkpoint`]).
pub enum CheckpointCapture {
    /// What was written since the periodic checkpoint at `since`, which the new one chains to.
    Chained { since: u64, writes: Writes },
    /// The whole state: a chain starts.
    Whole(State),
}

/// What writing a captured checkpoint did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointWritten {
    /// Stored, chained to the one before, in so many bytes.
    Chained(usize),
    /// Stored whole (a delta from the one before, its digest of the whole state).
    Whole(usize),
    /// Not stored: the checkpoint it was to chain to is not the latest before it (it failed to
    /// be written, or one was stored another way between). The next one is taken whole.
    Skipped,
}

impl Store {
    /// Whether a periodic checkpoint is due at `next` (the next position), `every` events after
    /// the latest one, stored or waiting for the writer.
    pub fn periodic_checkpoint_due(&self, operator: &str, next: u64, every: u64) -> Result<bool, StoreError> {
        let latest = match self.touched.since(operator) {
            Some(since) => since,
            None => self.latest_checkpoint_seq(operator)?.unwrap_or(1),
        };
        Ok(next.saturating_sub(latest) >= every)
    }

    /// Takes, in the operator's turn, what a periodic checkpoint at `seq` (the next position)
    /// needs: the writes noted since the latest periodic one, or, without notes, the whole state.
    /// The capture must then be written ([`Store::write_periodic_checkpoint`]); until it is, a
    /// checkpoint stored another way for the operator waits for it.
    pub fn capture_periodic_checkpoint(&self, operator: &str, seq: u64) -> Result<CheckpointCapture, StoreError> {
        let capture = match self.touched.take(operator, seq) {
            Some((since, writes)) => CheckpointCapture::Chained { since, writes },
            None => {
                let state = self.state_entries(operator)?;
                self.touched.restart(operator, seq);
                CheckpointCapture::Whole(state)
            }
        };
        self.pending_checkpoints.begin(operator);
        Ok(capture)
    }

    /// Stores a captured periodic checkpoint at `seq`, off the operator's turn; captures of one
    /// operator must be written in the order taken.
    pub fn write_periodic_checkpoint(
        &self,
        operator: &str,
        seq: u64,
        capture: CheckpointCapture,
    ) -> Result<CheckpointWritten, StoreError> {
        let written = self.write_captured(operator, seq, capture);
        if !matches!(written, Ok(CheckpointWritten::Chained(_) | CheckpointWritten::Whole(_))) {
            // The chain is broken here: the next periodic checkpoint is taken whole.
            self.touched.forget(operator);
        }
        self.pending_checkpoints.end(operator);
        written
    }

    fn write_captured(
        &self,
        operator: &str,
        seq: u64,
        capture: CheckpointCapture,
    ) -> Result<CheckpointWritten, StoreError> {
        let (since, writes) = match capture {
            CheckpointCapture::Whole(state) => {
                return Ok(CheckpointWritten::Whole(self.put_checkpoint_now(operator, seq, None, &state)?));
            }
            CheckpointCapture::Chained { since, writes } => (since, writes),
        };
        let Some(previous) = self.checkpoint_before(operator, seq)?.filter(|latest| latest.seq == since) else {
            return Ok(CheckpointWritten::Skipped);
        };
        let delta: BTreeMap<String, Option<String>> =
            writes.into_iter().map(|(key, value)| (key, encode_value(&value))).collect();
        let checkpoint = StoredCheckpoint {
            seq,
            period: None,
            digest: link_digest(&previous.digest, seq, &delta),
            keys: None,
            full: false,
            chained: true,
            delta,
        };
        let bytes = to_json(&checkpoint);
        let written = bytes.len();
        self.db.open_tree(super::checkpoints::CHECKPOINTS)?.insert(keys::sequence(operator, seq), bytes)?;
        Ok(CheckpointWritten::Chained(written))
    }

    /// The checkpoint at `seq` was just stored in the operator's turn from its current state (a
    /// close's): the next periodic one chains to it, instead of being taken whole.
    pub fn chain_periodic_checkpoints_from(&self, operator: &str, seq: u64) {
        self.touched.restart(operator, seq);
    }

    /// Captured periodic checkpoints not written yet, over all operators.
    pub fn periodic_checkpoints_pending(&self) -> usize {
        self.pending_checkpoints.total()
    }

    /// Waits, up to `within`, for every captured periodic checkpoint to be written (a stopping
    /// host); whether they all were.
    pub fn periodic_checkpoints_written(&self, within: Duration) -> bool {
        self.pending_checkpoints.wait(None, within)
    }

    /// Waits for the operator's captured periodic checkpoints to be written, before a
    /// checkpoint is stored another way.
    pub(super) fn settle_periodic_checkpoints(&self, operator: &str) {
        if !self.pending_checkpoints.wait(Some(operator), PENDING_WAIT) {
            tracing::warn!(%operator, "a periodic checkpoint is still waiting to be written; storing another one beside it");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{deposit, reopen};
    use super::*;
    use crate::store::checkpoints::State;

    /// Commits a deposit writing `key` (state reads not checked: `deposit` reads it as absent,
    /// so each key is written once).
    fn write(store: &Store, id: &str, key: &str) {
        let mut commit = deposit(id, id, key);
        commit.state_reads.clear();
        commit.new_binding = None;
        let outcomes = store.commit_events(&[commit]).expect("committed");
        assert!(matches!(outcomes[0], CommitOutcome::Committed { .. }), "{outcomes:?}");
    }

    /// A periodic checkpoint at `seq`, captured and written as the host does: its bytes, and
    /// whether it is chained.
    fn periodic(store: &Store, seq: u64) -> (usize, bool) {
        let capture = store.capture_periodic_checkpoint("op", seq).unwrap();
        match store.write_periodic_checkpoint("op", seq, capture).unwrap() {
            CheckpointWritten::Chained(bytes) => (bytes, true),
            CheckpointWritten::Whole(bytes) => (bytes, false),
            CheckpointWritten::Skipped => panic!("the checkpoint at {seq} was skipped"),
        }
    }

    fn next(store: &Store) -> u64 {
        store.last_sequence("op").unwrap() + 1
    }

    fn alter(store: &Store, seq: u64, change: impl FnOnce(&mut serde_json::Value)) {
        let tree = store.db.open_tree(super::super::checkpoints::CHECKPOINTS).unwrap();
        let key = keys::sequence("op", seq);
        let mut checkpoint: serde_json::Value = serde_json::from_slice(&tree.get(&key).unwrap().unwrap()).unwrap();
        change(&mut checkpoint);
        tree.insert(key, serde_json::to_vec(&checkpoint).unwrap()).unwrap();
    }

    #[test]
    fn a_chained_checkpoint_reads_back_as_the_whole_state_and_a_broken_link_reads_as_absent() {
        let directory = tempfile::tempdir().unwrap();
        let store = Store::open(directory.path()).unwrap();
        write(&store, "e1", "a");
        write(&store, "e2", "b");
        // The first one of this process is written from the whole state.
        let root = next(&store);
        assert!(!periodic(&store, root).1);
        write(&store, "e3", "c");
        let first = next(&store);
        assert!(periodic(&store, first).1, "chained from the keys written since");
        write(&store, "e4", "d");
        let second = next(&store);
        let (bytes, chained) = periodic(&store, second);
        assert!(chained);
        assert!(bytes < 300, "only the key written since: {bytes} bytes");
        let whole: State = store.state_entries("op").unwrap();
        assert_eq!(whole.len(), 4);
        assert_eq!(store.checkpoint_state("op", second).unwrap(), Some(whole.clone()));
        assert_eq!(store.checkpoint_at_or_before("op", u64::MAX).unwrap(), Some((second, whole)));

        // A delta altered: that one and the one chained after it do not read back; the one
        // before still does.
        alter(&store, first, |checkpoint| checkpoint["delta"]["c"] = serde_json::json!("ZmFrZQ=="));
        assert_eq!(store.checkpoint_state("op", first).unwrap(), None);
        assert_eq!(store.checkpoint_state("op", second).unwrap(), None);
        assert_eq!(store.checkpoint_at_or_before("op", u64::MAX).unwrap().map(|(seq, _)| seq), Some(root));
    }

    #[test]
    fn a_chain_whose_root_was_altered_reads_as_absent_and_a_restarted_store_starts_from_the_whole_state() {
        let directory = tempfile::tempdir().unwrap();
        {
            let store = Store::open(directory.path()).unwrap();
            write(&store, "e1", "a");
            let root = next(&store);
            periodic(&store, root);
            write(&store, "e2", "b");
            let chained = next(&store);
            assert!(periodic(&store, chained).1);
            // The root's own values changed, its digest kept: the chain after it is not sound.
            alter(&store, root, |checkpoint| checkpoint["delta"]["a"] = serde_json::json!("ZmFrZQ=="));
            assert_eq!(store.checkpoint_state("op", chained).unwrap(), None);
            store.db.flush().unwrap();
        }
        let store = reopen(directory.path());
        write(&store, "e3", "c");
        let after = next(&store);
        assert!(!periodic(&store, after).1, "nothing noted in this process yet");
        assert_eq!(store.checkpoint_state("op", after).unwrap(), Some(store.state_entries("op").unwrap()));
    }

    #[test]
    fn a_checkpoint_written_after_later_commits_holds_the_state_it_was_taken_at() {
        let directory = tempfile::tempdir().unwrap();
        let store = Store::open(directory.path()).unwrap();
        write(&store, "e1", "a");
        periodic(&store, next(&store));
        write(&store, "e2", "b");
        let taken = next(&store);
        let capture = store.capture_periodic_checkpoint("op", taken).unwrap();
        let at_capture: State = store.state_entries("op").unwrap();
        // The operator's next events commit before the writer gets to the capture.
        write(&store, "e3", "c");
        assert!(matches!(
            store.write_periodic_checkpoint("op", taken, capture).unwrap(),
            CheckpointWritten::Chained(_)
        ));
        assert_eq!(store.checkpoint_state("op", taken).unwrap(), Some(at_capture));
        // The next one chains on, with what came after the capture.
        let later = next(&store);
        assert!(periodic(&store, later).1);
        assert_eq!(store.checkpoint_state("op", later).unwrap(), Some(store.state_entries("op").unwrap()));
    }

    #[test]
    fn a_checkpoint_stored_another_way_waits_for_the_captured_one_and_the_next_is_taken_whole() {
        let directory = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(Store::open(directory.path()).unwrap());
        write(&store, "e1", "a");
        periodic(&store, next(&store));
        write(&store, "e2", "b");
        let taken = next(&store);
        let capture = store.capture_periodic_checkpoint("op", taken).unwrap();
        write(&store, "e3", "c");
        // A close's checkpoint, after the captured one: it waits until that one is written, so
        // that its delta is taken against it.
        let close = next(&store);
        let state: State = store.state_entries("op").unwrap();
        let closing = {
            let (store, state) = (store.clone(), state.clone());
            std::thread::spawn(move || store.put_checkpoint("op", close, Some("2025-10"), &state).unwrap())
        };
        std::thread::sleep(Duration::from_millis(50));
        assert!(!closing.is_finished(), "the close's checkpoint waits for the captured one");
        store.write_periodic_checkpoint("op", taken, capture).unwrap();
        closing.join().unwrap();
        assert!(store.checkpoint_state("op", taken).unwrap().is_some());
        assert_eq!(store.checkpoint_state("op", close).unwrap(), Some(state));
        // The notes started before the close's checkpoint: the next periodic one is whole.
        write(&store, "e4", "d");
        assert!(!periodic(&store, next(&store)).1);
    }

    /// A close's checkpoint, stored in the turn from the current state: the next periodic one
    /// chains to it.
    fn close(store: &Store, period: &str) -> u64 {
        let seq = next(store);
        store.put_checkpoint("op", seq, Some(period), &store.state_entries("op").unwrap()).unwrap();
        store.chain_periodic_checkpoints_from("op", seq);
        seq
    }

    #[test]
    fn periodic_checkpoints_chain_to_a_close_s_unless_it_is_stored_again_with_another_state() {
        let directory = tempfile::tempdir().unwrap();
        let store = Store::open(directory.path()).unwrap();
        write(&store, "e1", "a");
        close(&store, "2025-10");
        write(&store, "e2", "b");
        let chained = next(&store);
        assert!(periodic(&store, chained).1, "chained to the close's");
        assert_eq!(store.checkpoint_state("op", chained).unwrap(), Some(store.state_entries("op").unwrap()));

        let november = close(&store, "2025-11");
        write(&store, "e3", "c");
        // A late event restates November: its checkpoint is stored again, with another state.
        // The notes since it, folded onto that, would not give the live state: the next one is
        // taken whole.
        let mut restated = store.checkpoint_state("op", november).unwrap().unwrap();
        restated.insert("late".into(), b"1".to_vec());
        store.put_checkpoint("op", november, Some("2025-11"), &restated).unwrap();
        write(&store, "e4", "d");
        let later = next(&store);
        assert!(!periodic(&store, later).1, "taken whole, not folded onto the restated one");
        assert_eq!(store.checkpoint_state("op", later).unwrap(), Some(store.state_entries("op").unwrap()));
    }
}
