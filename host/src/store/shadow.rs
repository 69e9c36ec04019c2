//! Shadow mode's own trees: a shadow version's state, results and progress through the ledger,
//! apart from the live ledger, so a shadow can never change what is paid.

use std::collections::BTreeMap;

use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};

use super::checkpoints::State;
use super::records::ShadowResult;
use super::{Store, StoreError, decode, keys, to_json};

/// Held by the shadow follower for each entry it evaluates and by a restart: a restart never
/// lands in the middle of an evaluation, and the follower re-reads where the shadow is before
/// each.
pub static SHADOW_FOLLOWER: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl Store {
    /// Starts shadow `version` again from the operator's state at its latest checkpoint (its
    /// earlier state and results replaced): what the version would pay from there on, in time
    /// proportional to what follows. Answers where it starts (1 without a checkpoint: the
    /// ledger's start).
    pub fn restart_shadow_from_latest_checkpoint(&self, operator: &str, version: u32) -> Result<u64, StoreError> {
        let _follower = SHADOW_FOLLOWER.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let last = self.last_sequence(operator)?;
        let (next, state) = self.checkpoint_at_or_before(operator, last + 1)?.unwrap_or((1, State::new()));
        self.restart_shadow_at(operator, version, next, &state)?;
        tracing::info!(operator, version, next, keys = state.len(), "shadow started from a checkpoint");
        Ok(next)
    }

    /// How far shadow `version` of the operator has gone through the ledger (0: not started).
    pub fn shadow_progress(&self, operator: &str, version: u32) -> Result<u64, StoreError> {
        Ok(self
            .shadow_progress
            .get(keys::plugin(operator, version))?
            .and_then(|seq| seq.as_ref().try_into().ok().map(u64::from_be_bytes))
            .unwrap_or(0))
    }

    /// Where shadow `version` started following the ledger: 1, or the position of the
    /// checkpoint it was started from ([`Store::restart_shadow_at`]).
    pub fn shadow_started_from(&self, operator: &str, version: u32) -> Result<u64, StoreError> {
        Ok(self
            .shadow_progress
            .get(started_key(operator, version))?
            .and_then(|seq| seq.as_ref().try_into().ok().map(u64::from_be_bytes))
            .unwrap_or(1))
    }

    /// Starts shadow `version` again at ledger position `next`, from `state` (a checkpoint's):
    /// its earlier state and results go, in one transaction with the new state and progress, so
    /// a crash leaves the old shadow or the new one. The caller keeps the follower out meanwhile.
    pub fn restart_shadow_at(
        &self,
        operator: &str,
        version: u32,
        next: u64,
        state: &super::checkpoints::State,
    ) -> Result<(), StoreError> {
        let prefix = keys::key(operator, &[&version.to_be_bytes()]);
        let mut old_state = Vec::new();
        for entry in self.shadow_state.scan_prefix(&prefix) {
            old_state.push(entry?.0);
        }
        let mut old_results = Vec::new();
        for entry in self.shadow_results.scan_prefix(&prefix) {
            old_results.push(entry?.0);
        }
        let new_state: Vec<(Vec<u8>, &Vec<u8>)> = state
            .iter()
            .map(|(key, value)| (keys::key(operator, &[&version.to_be_bytes(), key.as_bytes()]), value))
            .collect();
        let (progress_key, started_key) = (keys::plugin(operator, version), started_key(operator, version));
        (&self.shadow_state, &self.shadow_results, &self.shadow_progress)
            .transaction(|(state, results, progress)| {
                for key in &old_state {
                    state.remove(key)?;
                }
                for key in &old_results {
                    results.remove(key)?;
                }
                for (key, value) in &new_state {
                    state.insert(key.as_slice(), value.as_slice())?;
                }
                progress.insert(progress_key.as_slice(), (next - 1).to_be_bytes().as_slice())?;
                progress.insert(started_key.as_slice(), next.to_be_bytes().as_slice())?;
                Ok::<_, ConflictableTransactionError<()>>(())
            })
            .map_err(|error| match error {
                TransactionError::Storage(error) => StoreError::Sled(error),
                TransactionError::Abort(()) => unreachable!("the shadow restart never aborts"),
            })
    }

    pub fn shadow_state_value(&self, operator: &str, version: u32, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let key = keys::key(operator, &[&version.to_be_bytes(), key.as_bytes()]);
        Ok(self.shadow_state.get(key)?.map(|value| value.to_vec()))
    }

    /// Records a shadow result with its state writes and progress, together. Shadow mode has one
    /// writer per (operator, version), so nothing here can conflict.
    pub fn commit_shadow(
        &self,
        operator: &str,
        version: u32,
        result: &ShadowResult,
        state_writes: &BTreeMap<String, Option<Vec<u8>>>,
    ) -> Result<(), StoreError> {
        let progress_key = keys::plugin(operator, version);
        let result_key = keys::key(operator, &[&version.to_be_bytes(), &result.seq.to_be_bytes()]);
        let result_value = to_json(result);
        let writes: Vec<(Vec<u8>, &Option<Vec<u8>>)> = state_writes
            .iter()
            .map(|(key, value)| (keys::key(operator, &[&version.to_be_bytes(), key.as_bytes()]), value))
            .collect();
        (&self.shadow_state, &self.shadow_results, &self.shadow_progress)
            .transaction(|(state, results, progress)| {
                for (key, value) in &writes {
                    match value {
                        Some(value) => state.insert(key.as_slice(), value.as_slice())?,
                        None => state.remove(key.as_slice())?,
                    };
                }
                results.insert(result_key.as_slice(), result_value.as_slice())?;
                progress.insert(progress_key.as_slice(), result.seq.to_be_bytes().as_slice())?;
                Ok::<_, ConflictableTransactionError<()>>(())
            })
            .map_err(|error| match error {
                TransactionError::Storage(error) => StoreError::Sled(error),
                TransactionError::Abort(()) => unreachable!("the shadow transaction never aborts"),
            })
    }

    /// Every result of shadow `version`, in ledger order.
    pub fn shadow_results(&self, operator: &str, version: u32) -> Result<Vec<ShadowResult>, StoreError> {
        self.shadow_results
            .scan_prefix(keys::key(operator, &[&version.to_be_bytes()]))
            .map(|entry| decode("shadow_results", &entry?.1))
            .collect()
    }
}

/// The key, beside a shadow's progress, of where it started (absent: the ledger's start).
fn started_key(operator: &str, version: u32) -> Vec<u8> {
    keys::key(operator, &[&version.to_be_bytes(), b"started_from"])
}
