//! Plugin state held in memory for a replay or a restatement, written nothing to the ledger: a
//! [`StateSource`] that starts empty or from a checkpoint and takes each evaluation's writes.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::StateSource;

/// The plugin state of a replay: starts empty, takes each successful evaluation's writes.
#[derive(Default)]
pub struct ScratchState(Mutex<BTreeMap<String, Vec<u8>>>);

impl StateSource for ScratchState {
    fn get(&self, key: &str) -> anyhow::Result<Option<Vec<u8>>> {
        Ok(self.0.lock().expect("scratch state lock").get(key).cloned())
    }
}

impl ScratchState {
    /// A replay that starts from a checkpoint.
    pub(crate) fn from_state(state: BTreeMap<String, Vec<u8>>) -> Self {
        Self(Mutex::new(state))
    }

    /// The state as it stands: a checkpoint of the replay.
    pub(crate) fn snapshot(&self) -> BTreeMap<String, Vec<u8>> {
        self.0.lock().expect("scratch state lock").clone()
    }

    pub(crate) fn value(&self, key: &str) -> Option<Vec<u8>> {
        self.0.lock().expect("scratch state lock").get(key).cloned()
    }

    pub(crate) fn into_entries(self) -> BTreeMap<String, Vec<u8>> {
        self.0.into_inner().expect("scratch state lock")
    }

    pub(crate) fn apply(&self, writes: BTreeMap<String, Option<Vec<u8>>>) {
        let mut state = self.0.lock().expect("scratch state lock");
        for (key, value) in writes {
            match value {
                Some(value) => state.insert(key, value),
                None => state.remove(&key),
            };
        }
    }
}
