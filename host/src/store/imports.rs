//! Import jobs: how far each bulk import of an operator has gone, kept in sled so that its
//! status (and the line to continue at) outlives the request that ran it and a restart.
//! Not counted in the operator's quota: a job record is a few hundred bytes, one per import.

use serde::{Deserialize, Serialize};

use super::{Store, StoreError, decode, keys, to_json};

const TREE: &str = "import_jobs";

/// How long a job recorded `running` by another node of a cluster is taken to be running there
/// without progress: it saves its progress after every batch, so one that did not for this long
/// was cut off (its node stopped, or its client went away).
const RUNNING_ELSEWHERE_FOR: i64 = 60_000;

/// The node a run id (`node/run`) names; `""` for a single host's.
pub fn node_of(run: &str) -> &str {
    run.split_once('/').map_or("", |(node, _)| node)
}

/// Where an import is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ImportState {
    /// Reading and committing lines now.
    Running,
    /// Every line was read and committed.
    Done,
    /// Stopped at `stopped_at`: a bad line, a body cut off, or the host stopping. Everything
    /// before that line is committed; sending the file again with `?job=` continues there.
    Stopped,
}

/// The first line an import could not take, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LineProblem {
    /// 1-based line number in the file (for CSV, the header is line 1).
    pub line: u64,
    /// The field at fault, empty when the line as a whole is.
    pub field: String,
    pub problem: String,
}

/// One import job of an operator, as its status route shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportJob {
    pub id: String,
    pub operator: String,
    /// `ndjson`, `csv` or `export`.
    pub format: String,
    pub state: ImportState,
    /// The line this run started at (`from_line`, or where the job had stopped).
    pub from_line: u64,
    /// The last line read and committed (0 before the first).
    pub lines_read: u64,
    pub accepted: u64,
    pub duplicate: u64,
    pub failed: u64,
    /// Set when `state` is `stopped`.
    pub stopped_at: Option<LineProblem>,
    pub started_at: i64,
    pub updated_at: i64,
    /// Which run of the host is running it: a `running` job of an earlier run was cut off.
    pub run: String,
}

impl ImportJob {
    /// Whether the job, as stored, is running at `now` on a node other than the one of `run`:
    /// recorded so by a run of that node, which saved its progress lately. A job a run of the
    /// same node recorded running was cut off (by a restart), or is this node's own to refuse.
    pub fn running_elsewhere(&self, run: &str, now: i64) -> bool {
        self.state == ImportState::Running
            && node_of(&self.run) != node_of(run)
            && now.saturating_sub(self.updated_at) < RUNNING_ELSEWHERE_FOR
    }
}

impl Store {
    pub fn import_job(&self, operator: &str, id: &str) -> Result<Option<ImportJob>, StoreError> {
        let tree = self.db.open_tree(TREE)?;
        tree.get(keys::text(operator, id))?.map(|bytes| decode(TREE, &bytes)).transpose()
    }

    /// Writes the job's record; durable with the next flush (each batch of the import waits
    /// for one).
    pub fn put_import_job(&self, job: &ImportJob) -> Result<(), StoreError> {
        let tree = self.db.open_tree(TREE)?;
        tree.insert(keys::text(&job.operator, &job.id), to_json(job))?;
        Ok(())
    }
}
