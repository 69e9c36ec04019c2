//! Periodic checkpoints written from what changed, not from the whole state.
//!
//! Why: a periodic checkpoint (`serve --checkpoint-every N`) is taken in the operator's turn,
//! so its events wait for it. Written as a diff of the whole state against the previous
//! checkpoint, it read every key of the operator's state, folded the previous checkpoints to
//! diff against, and hashed the whole state: at 30,000 customers, tens of milliseconds every N
//! events, in every operator's p99. Here the store notes, as it commits, which plugin state keys
//! each operator's events wrote since its latest periodic checkpoint; the next one holds those
//! keys' current values, and its digest links it to the checkpoint
//! before ([`link_digest`]), so a reader checks the chain link by link and the whole state is
//! hashed only at the chain's root. Its cost follows the keys written since, not the state.
//!
//! What is noted lives in this process's memory only, and only for operators with periodic
//! checkpoints (notes start at one): after a restart, or when the latest stored checkpoint is
//! not the one the notes start from (a month's, or one re-derived since), or past
//! [`MAX_NOTED_KEYS`], the next periodic checkpoint is written the whole-state way, and the
//! notes start again from it. A key is noted only once its commit went through, so the notes never
//! miss a write the state holds: the committer is the one writer of plugin state.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use super::checkpoints::{StoredCheckpoint, encode_value, link_digest};
use super::commit::{CommitOutcome, EventCommit};
use super::{Store, StoreError, keys, to_json};

/// Past this many keys noted for one operator, its notes are dropped (the next periodic
/// checkpoint is written from the whole state): they are memory, and a checkpoint of that many
/// keys costs about what the whole state's does.
const MAX_NOTED_KEYS: usize = 1 << 20;

/// Per operator, the state keys committed since its latest periodic checkpoint.
#[derive(Default)]
pub(super) struct TouchedKeys(Mutex<HashMap<String, Touched>>);

struct Touched {
    /// The position of the checkpoint the keys were written after.
    since: u64,
    keys: BTreeSet<String>,
}

impl TouchedKeys {
    /// After a group's transaction: the keys each committed event wrote, for the operators
    /// whose notes have a start.
    pub(super) fn note(&self, group: &[EventCommit], outcomes: &[CommitOutcome]) {
        let mut touched = self.0.lock().expect("touched keys lock");
        for (commit, outcome) in group.iter().zip(outcomes) {
            if let (CommitOutcome::Committed { .. }, Some(notes)) = (outcome, touched.get_mut(&commit.operator)) {
                notes.keys.extend(commit.state_writes.keys().cloned());
                if notes.keys.len() > MAX_NOTED_KEYS {
                    touched.remove(&commit.operator);
                }
            }
        }
    }

    /// A periodic checkpoint of the operator's current state was stored at `since`: the notes
    /// start again from it.
    pub(super) fn restart(&self, operator: &str, since: u64) {
        let mut touched = self.0.lock().expect("touched keys lock");
        touched.insert(operator.to_owned(), Touched { since, keys: BTreeSet::new() });
    }

    /// The keys written since the checkpoint at `since`; `None` if the notes do not start there.
    fn since(&self, operator: &str, since: u64) -> Option<BTreeSet<String>> {
        let touched = self.0.lock().expect("touched keys lock");
        touched.get(operator).filter(|notes| notes.since == since).map(|notes| notes.keys.clone())
    }
}

impl Store {
    /// Stores a periodic checkpoint of the operator's current state at `seq` (the next
    /// position): chained to the latest one from the keys written since, when this process
    /// noted them from it; else from the whole state. Returns the bytes written and whether it
    /// is chained.
    pub fn put_periodic_checkpoint(&self, operator: &str, seq: u64) -> Result<(usize, bool), StoreError> {
        let tree = self.db.open_tree(super::checkpoints::CHECKPOINTS)?;
        let latest = match tree.range(keys::sequence(operator, 0)..keys::sequence(operator, seq)).next_back() {
            Some(entry) => serde_json::from_slice::<StoredCheckpoint>(&entry?.1).ok(),
            None => None,
        };
        let chained = latest.and_then(|latest| Some((self.touched.since(operator, latest.seq)?, latest.digest)));
        let Some((touched, previous)) = chained else {
            let state = self.state_entries(operator)?;
            let written = self.put_checkpoint(operator, seq, None, &state)?;
            self.touched.restart(operator, seq);
            return Ok((written, false));
        };
        let mut delta = std::collections::BTreeMap::new();
        for key in touched {
            let value = self.state_value(operator, &key)?;
            delta.insert(key, encode_value(&value));
        }
        let checkpoint = StoredCheckpoint {
            seq,
            period: None,
            digest: link_digest(&previous, seq, &delta),
            keys: None,
            full: false,
            chained: true,
            delta,
        };
        let bytes = to_json(&checkpoint);
        let written = bytes.len();
        tree.insert(keys::sequence(operator, seq), bytes)?;
        self.touched.restart(operator, seq);
        Ok((written, true))
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
        assert!(!store.put_periodic_checkpoint("op", root).unwrap().1);
        write(&store, "e3", "c");
        let first = next(&store);
        assert!(store.put_periodic_checkpoint("op", first).unwrap().1, "chained from the keys written since");
        write(&store, "e4", "d");
        let second = next(&store);
        let (bytes, chained) = store.put_periodic_checkpoint("op", second).unwrap();
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
            store.put_periodic_checkpoint("op", root).unwrap();
            write(&store, "e2", "b");
            let chained = next(&store);
            assert!(store.put_periodic_checkpoint("op", chained).unwrap().1);
            // The root's own values changed, its digest kept: the chain after it is not sound.
            alter(&store, root, |checkpoint| checkpoint["delta"]["a"] = serde_json::json!("ZmFrZQ=="));
            assert_eq!(store.checkpoint_state("op", chained).unwrap(), None);
            store.db.flush().unwrap();
        }
        let store = reopen(directory.path());
        write(&store, "e3", "c");
        let after = next(&store);
        assert!(!store.put_periodic_checkpoint("op", after).unwrap().1, "nothing noted in this process yet");
        assert_eq!(store.checkpoint_state("op", after).unwrap(), Some(store.state_entries("op").unwrap()));
    }
}
