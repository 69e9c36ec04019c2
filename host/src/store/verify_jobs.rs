//! Verify jobs (`POST /v1/operators/{op}/verify-jobs`, see `crate::verify_jobs`): each
//! operator's latest one, with how far it has gone and what it needs to go on, kept in sled so
//! that a host restarted mid-job (SIGKILL included) resumes it where it last saved rather than
//! at event 1. Not counted in the operator's quota: derived data, one record per operator.

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Store, StoreError, decode, keys, to_json};

const TREE: &str = "verify_jobs";
const LATEST: &str = "latest";

impl Store {
    /// The operator's latest verify job.
    pub fn verify_job<T: DeserializeOwned>(&self, operator: &str) -> Result<Option<T>, StoreError> {
        let tree = self.db.open_tree(TREE)?;
        tree.get(keys::text(operator, LATEST))?.map(|bytes| decode(TREE, &bytes)).transpose()
    }

    /// Writes the operator's latest verify job; durable with the next flush.
    pub fn put_verify_job<T: Serialize>(&self, operator: &str, job: &T) -> Result<(), StoreError> {
        self.db.open_tree(TREE)?.insert(keys::text(operator, LATEST), to_json(job))?;
        Ok(())
    }

    /// Every operator's latest verify job: what a host starting up looks through.
    pub fn verify_jobs<T: DeserializeOwned>(&self) -> Result<Vec<T>, StoreError> {
        self.db.open_tree(TREE)?.iter().map(|entry| decode(TREE, &entry?.1)).collect()
    }
}
