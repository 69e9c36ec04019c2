//! The ledger on sled: operators, plugins, affiliates, events, plugin state and commissions.
//!
//! Each event is one record in the `ledger` tree, committed in a serializable sled transaction
//! with the few indexes queries read (see [`commit`]): all or nothing, so an event is applied at
//! most once and never half. Events waiting together share one transaction
//! ([`Store::commit_events`], driven by the [`crate::committer`]), each still all or nothing
//! within it. Nothing is acknowledged until [`Durability`] has flushed it: sled keeps writes in
//! memory until a flush.
//!
//! A data directory of an earlier format is converted at start-up, once ([`migrate`]). On a
//! `Corruption` report at start-up the host refuses to serve (see the README's recovery section)
//! rather than guess.

mod checkpoint_chain;
pub use checkpoint_chain::{CheckpointCapture, CheckpointWritten};
pub mod checkpoints;
mod clawback;
mod commit;
mod deals;
mod durability;
pub mod imports;
pub mod keys;
mod ledger;
mod listings;
mod migrate;
mod payouts;
mod quota;
pub mod records;
mod shadow;
pub use shadow::SHADOW_FOLLOWER;
mod statements;
mod verify_jobs;

use std::collections::BTreeMap;
use std::path::Path;

use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::{Transactional, Tree};

pub use commit::{CommitOutcome, EventCommit, HeldBack};
pub use durability::{Durability, DurabilityError};
pub use payouts::{CommissionRef, MoveOutcome};
pub use quota::QuotaExceeded;
use quota::read_u64;
use records::{
    AffiliateRecord, CommissionRecord, CustomerBinding, OperatorRecord, PluginRecord, StatusChange, StatusRecord,
};

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error(
        "the data directory {path} is corrupt ({detail}); restore it from a backup, or move it \
         aside and start on an empty one"
    )]
    Corrupt { path: String, detail: String },
    #[error("storage failed: {0}")]
    Sled(#[from] sled::Error),
    #[error("stored record under {tree} is unreadable: {detail}")]
    Decode { tree: &'static str, detail: String },
}

/// A cursor position in the commission ledger: (event sequence, index in the event).
pub type LedgerPosition = (u64, u16);

pub struct Store {
    db: sled::Db,
    operators: Tree,
    plugins: Tree,
    plugin_wasm: Tree,
    artifacts: Tree,
    affiliates: Tree,
    customers: Tree,
    /// (operator, sequence number) -> the event's record with its commissions (see [`commit`]):
    /// the ledger, in the order events took effect.
    ledger: Tree,
    /// (operator, event id) -> its sequence number: dedup and look-ups by id.
    events: Tree,
    /// Per operator, the number of the last committed event: the ledger's order.
    sequences: Tree,
    failed_events: Tree,
    state: Tree,
    /// (operator, affiliate, sequence number, index) -> the commission's position.
    commissions_by_affiliate: Tree,
    /// A reversed commission's key -> the key of the reversal: each is clawed back once.
    reversals: Tree,
    /// A commission's id -> its status and their history; absent while `pending`.
    commission_status: Tree,
    /// Shadow mode, per (operator, version): its own plugin state, its results per ledger
    /// entry, and how far through the ledger it is.
    shadow_state: Tree,
    shadow_results: Tree,
    shadow_progress: Tree,
    /// (operator, period, affiliate) -> the period statement as its close computed it, without
    /// its lines; and (operator, period, affiliate, chunk) -> its lines, a chunk at a time (see
    /// [`statements`]).
    statements: Tree,
    statement_lines: Tree,
    /// (operator, sha256 of the deal's JSON) -> the deal: each version an event was evaluated
    /// with, kept once and referenced by the events' chains.
    deals: Tree,
    /// Operator -> the bytes it keeps in the trees counted against its quota (see [`quota`]),
    /// kept by the same transactions that write them.
    stored_bytes: Tree,
    /// (operator, key id) -> an affiliate's read-only key (its sha256).
    affiliate_keys: Tree,
    /// (operator, reference) -> the payout made under that reference.
    payouts: Tree,
    /// The plugin state keys each operator's events wrote since its latest checkpoint (see
    /// [`checkpoint_chain`]).
    touched: checkpoint_chain::TouchedKeys,
    /// Periodic checkpoints taken in a turn and not written yet (see [`checkpoint_chain`]).
    pending_checkpoints: checkpoint_chain::PendingCheckpoints,
}

enum Abort {
    Decode(String),
}

type TxResult<T> = Result<T, ConflictableTransactionError<Abort>>;

/// Bytes of the ledger sled keeps decoded in memory, unless `serve --ledger-cache-bytes` says
/// otherwise: sled's own default (1 GiB).
pub const DEFAULT_LEDGER_CACHE_BYTES: u64 = 1 << 30;

impl Store {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with_cache(path, DEFAULT_LEDGER_CACHE_BYTES)
    }

    /// Opens the ledger with `cache_bytes` of sled's page cache. A ledger larger than its cache
    /// is read from disk for what is not in it: where the machine's page cache is small or
    /// reclaimed (BENCHMARKS.md, history), a late event or a verify then waits on the disk.
    pub fn open_with_cache(path: &Path, cache_bytes: u64) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(cache_bytes)
            // Durability comes from explicit, grouped flushes before each answer; the
            // background flush only bounds what an unacknowledged write can lose.
            .flush_every_ms(Some(1000))
            .open()
            .map_err(|error| match error {
                sled::Error::Corruption { .. } => {
                    StoreError::Corrupt { path: path.display().to_string(), detail: error.to_string() }
                }
                other => StoreError::Sled(other),
            })?;
        let tree = |name: &str| db.open_tree(name);
        let store = Self {
            operators: tree("operators")?,
            plugins: tree("plugins")?,
            plugin_wasm: tree("plugin_wasm")?,
            artifacts: tree("artifacts")?,
            affiliates: tree("affiliates")?,
            customers: tree("customers")?,
            ledger: tree("ledger")?,
            events: tree("events")?,
            sequences: tree("sequences")?,
            failed_events: tree("failed_events")?,
            state: tree("state")?,
            commissions_by_affiliate: tree("commissions_by_affiliate")?,
            reversals: tree("reversals")?,
            commission_status: tree("commission_status")?,
            shadow_state: tree("shadow_state")?,
            shadow_results: tree("shadow_results")?,
            shadow_progress: tree("shadow_progress")?,
            statements: tree("statements")?,
            statement_lines: tree("statement_lines")?,
            deals: tree("deals")?,
            stored_bytes: tree("stored_bytes")?,
            affiliate_keys: tree("affiliate_keys")?,
            payouts: tree("payouts")?,
            touched: Default::default(),
            pending_checkpoints: Default::default(),
            db,
        };
        migrate::to_current(&store.db)?;
        quota::count_once(&store.db, &store.stored_bytes)?;
        Ok(store)
    }

    /// What `operator` keeps in the ledger, in bytes: the keys and values of its events,
    /// commissions, plugin state, customers, affiliates and deal versions. Counted by the
    /// transactions that write them, so it does not drift.
    pub fn stored_bytes(&self, operator: &str) -> Result<u64, StoreError> {
        Ok(self.stored_bytes.get(operator.as_bytes())?.as_deref().map_or(0, read_u64))
    }

    /// Starts the group-flush task; each flush's duration is observed in `flush_seconds`.
    pub fn durability(&self, flush_seconds: prometheus_client::metrics::histogram::Histogram) -> Durability {
        Durability::start(self.db.clone(), flush_seconds)
    }

    // Operators

    pub fn operator(&self, id: &str) -> Result<Option<OperatorRecord>, StoreError> {
        get_json(&self.operators, "operators", id.as_bytes())
    }

    /// Inserts a new operator; `false` if the id is taken.
    pub fn create_operator(&self, operator: &OperatorRecord) -> Result<bool, StoreError> {
        Ok(self.operators.compare_and_swap(operator.id.as_bytes(), None::<&[u8]>, Some(to_json(operator)))?.is_ok())
    }

    /// Applies `change` to the stored operator atomically: concurrent updates (an activation
    /// and a rotation, say) each see the other's result. `change` may run more than once.
    pub fn update_operator(
        &self,
        id: &str,
        change: impl Fn(&mut OperatorRecord),
    ) -> Result<Option<OperatorRecord>, StoreError> {
        loop {
            let Some(current) = self.operators.get(id.as_bytes())? else { return Ok(None) };
            let mut operator: OperatorRecord = decode("operators", &current)?;
            change(&mut operator);
            let swapped = self.operators.compare_and_swap(id.as_bytes(), Some(current), Some(to_json(&operator)))?;
            if swapped.is_ok() {
                return Ok(Some(operator));
            }
        }
    }

    pub fn put_operator(&self, operator: &OperatorRecord) -> Result<(), StoreError> {
        self.operators.insert(operator.id.as_bytes(), to_json(operator))?;
        Ok(())
    }

    pub fn operators(&self) -> Result<Vec<OperatorRecord>, StoreError> {
        self.operators.iter().map(|entry| decode("operators", &entry?.1)).collect()
    }

    // Plugins

    /// Stores a new plugin version (the next number) with its bytes and compiled artifact.
    pub fn add_plugin(
        &self,
        operator: &str,
        wasm: &[u8],
        artifact_key: &str,
        artifact: &[u8],
        make_record: impl Fn(u32) -> PluginRecord,
        numbered: Option<u32>,
    ) -> Result<PluginRecord, StoreError> {
        let result =
            (&self.plugins, &self.plugin_wasm, &self.artifacts).transaction(|(plugins, plugin_wasm, artifacts)| {
                // Versions are dense per operator: the next one is one more than the last, unless
                // the cluster numbered it (then a version stored already is kept as it is).
                let version = match numbered {
                    Some(version) => {
                        if let Some(stored) = plugins.get(keys::plugin(operator, version))? {
                            let stored: PluginRecord =
                                serde_json::from_slice(&stored).map_err(|_| ConflictableTransactionError::Abort(()))?;
                            return Ok(stored);
                        }
                        version
                    }
                    None => {
                        let mut version = 1;
                        while plugins.get(keys::plugin(operator, version))?.is_some() {
                            version += 1;
                        }
                        version
                    }
                };
                let record = make_record(version);
                plugins.insert(keys::plugin(operator, version), to_json(&record))?;
                plugin_wasm.insert(record.sha256.as_bytes(), wasm)?;
                artifacts.insert(artifact_key.as_bytes(), artifact)?;
                Ok::<_, ConflictableTransactionError<()>>(record)
            });
        result.map_err(|error| match error {
            TransactionError::Storage(error) => StoreError::Sled(error),
            TransactionError::Abort(()) => {
                StoreError::Decode { tree: "plugins", detail: format!("{operator}'s version {numbered:?}") }
            }
        })
    }

    pub fn plugin(&self, operator: &str, version: u32) -> Result<Option<PluginRecord>, StoreError> {
        get_json(&self.plugins, "plugins", &keys::plugin(operator, version))
    }

    pub fn plugin_wasm(&self, sha256: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.plugin_wasm.get(sha256.as_bytes())?.map(|bytes| bytes.to_vec()))
    }

    pub fn artifact(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.artifacts.get(key.as_bytes())?.map(|bytes| bytes.to_vec()))
    }

    pub fn put_artifact(&self, key: &str, artifact: &[u8]) -> Result<(), StoreError> {
        self.artifacts.insert(key.as_bytes(), artifact)?;
        Ok(())
    }

    // Affiliates and attribution

    pub fn affiliate(&self, operator: &str, id: &str) -> Result<Option<AffiliateRecord>, StoreError> {
        get_json(&self.affiliates, "affiliates", &keys::text(operator, id))
    }

    /// Stores an affiliate, counted in the operator's stored bytes, unless that would take them
    /// past `quota`.
    pub fn put_affiliate(
        &self,
        operator: &str,
        affiliate: &AffiliateRecord,
        quota: Option<u64>,
    ) -> Result<Result<(), QuotaExceeded>, StoreError> {
        let key = keys::text(operator, &affiliate.id);
        let value = to_json(affiliate);
        let result = (&self.affiliates, &self.stored_bytes).transaction(|(affiliates, stored_bytes)| {
            let earlier = affiliates.get(&key)?.map_or(0, |old| key.len() + old.len());
            let added = (key.len() + value.len()) as i64 - earlier as i64;
            let used = stored_bytes.get(operator.as_bytes())?.as_deref().map_or(0, read_u64);
            let after = used.saturating_add_signed(added);
            if let Some(quota) = quota
                && added > 0
                && after > quota
            {
                return Ok(Err(QuotaExceeded { used, needed: added as u64, quota }));
            }
            affiliates.insert(key.as_slice(), value.as_slice())?;
            stored_bytes.insert(operator.as_bytes(), after.to_be_bytes().as_slice())?;
            Ok::<_, ConflictableTransactionError<()>>(Ok(()))
        });
        result.map_err(|error| match error {
            TransactionError::Storage(error) => StoreError::Sled(error),
            TransactionError::Abort(()) => unreachable!("the affiliate transaction never aborts"),
        })
    }

    /// The ids of the operator's affiliates, in order.
    pub fn affiliate_ids(&self, operator: &str) -> Result<Vec<String>, StoreError> {
        let prefix = keys::operator_prefix(operator);
        self.affiliates
            .scan_prefix(&prefix)
            .map(|entry| Ok(String::from_utf8_lossy(&entry?.0[prefix.len()..]).into_owned()))
            .collect()
    }

    pub fn binding(&self, operator: &str, customer: &str) -> Result<Option<CustomerBinding>, StoreError> {
        get_json(&self.customers, "customers", &keys::text(operator, customer))
    }

    // Events

    /// Ids of the operator's failed events, oldest first.
    pub fn failed_event_ids(&self, operator: &str) -> Result<Vec<String>, StoreError> {
        self.failed_events
            .scan_prefix(keys::operator_prefix(operator))
            .map(|entry| Ok(String::from_utf8_lossy(&entry?.1).into_owned()))
            .collect()
    }

    pub fn state_value(&self, operator: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.state.get(keys::text(operator, key))?.map(|value| value.to_vec()))
    }

    /// The ids of the operator's settlement entries (`{prefix}{period}:{affiliate}`), in
    /// period then affiliate order; only those of `period` if given.
    pub fn settlement_ids(
        &self,
        operator: &str,
        prefix: &str,
        period: Option<&str>,
    ) -> Result<Vec<String>, StoreError> {
        let skip = keys::operator_prefix(operator).len();
        self.events
            .scan_prefix(settlement_key_prefix(operator, prefix, period))
            .map(|entry| Ok(String::from_utf8_lossy(&entry?.0[skip..]).into_owned()))
            .collect()
    }

    /// The id of the operator's last settlement entry, of its latest closed period: the ids
    /// (`{prefix}YYYY-MM:affiliate`) sort by period. One key read, asked for every event.
    pub fn latest_settlement_id(&self, operator: &str, prefix: &str) -> Result<Option<String>, StoreError> {
        let skip = keys::operator_prefix(operator).len();
        let last = self.events.scan_prefix(settlement_key_prefix(operator, prefix, None)).next_back().transpose()?;
        Ok(last.map(|(key, _)| String::from_utf8_lossy(&key[skip..]).into_owned()))
    }

    /// The sequence number of the operator's last committed event (0 before the first).
    pub fn last_sequence(&self, operator: &str) -> Result<u64, StoreError> {
        Ok(self
            .sequences
            .get(operator.as_bytes())?
            .and_then(|last| last.as_ref().try_into().ok().map(u64::from_be_bytes))
            .unwrap_or(0))
    }

    /// Every state key and value of the operator.
    pub fn state_entries(&self, operator: &str) -> Result<BTreeMap<String, Vec<u8>>, StoreError> {
        let prefix = keys::operator_prefix(operator);
        self.state
            .scan_prefix(&prefix)
            .map(|entry| {
                let (key, value) = entry?;
                Ok((String::from_utf8_lossy(&key[prefix.len()..]).into_owned(), value.to_vec()))
            })
            .collect()
    }

    pub fn commission_status(&self, operator: &str, id: &str) -> Result<StatusRecord, StoreError> {
        Ok(get_json(&self.commission_status, "commission_status", &keys::text(operator, id))?.unwrap_or_default())
    }

    /// Moves a commission's status, unless [`StatusRecord::refusal`] refuses the move (then
    /// `Err` with the reason). A reversal netted against the commission moves with it, in the
    /// same transaction; the move is atomic against other moves and against the commit of a
    /// reversal. Returns the commission's record as it is after the move.
    pub fn change_commission_status(
        &self,
        operator: &str,
        id: &str,
        change: StatusChange,
    ) -> Result<Result<StatusRecord, String>, StoreError> {
        let result = self.commission_status.transaction(|statuses| {
            Ok(payouts::move_status(statuses, operator, id, &change)?.map(|(record, _)| record))
        });
        result.map_err(|error| match error {
            TransactionError::Storage(error) => StoreError::Sled(error),
            TransactionError::Abort(Abort::Decode(detail)) => StoreError::Decode { tree: "commission_status", detail },
        })
    }

    /// Whether the commission `id` has been clawed back already.
    pub fn is_reversed(&self, operator: &str, id: &str) -> Result<bool, StoreError> {
        Ok(self.reversals.contains_key(keys::text(operator, id))?)
    }
}

fn parse_commission_id(id: &str) -> Option<LedgerPosition> {
    let rest = id.strip_prefix("cm_")?;
    let (seq, index) = rest.split_once('_')?;
    Some((u64::from_str_radix(seq, 16).ok()?, u16::from_str_radix(index, 16).ok()?))
}

/// Parses a cursor as returned in `next`.
fn settlement_key_prefix(operator: &str, prefix: &str, period: Option<&str>) -> Vec<u8> {
    keys::text(operator, &format!("{prefix}{}", period.map(|p| format!("{p}:")).unwrap_or_default()))
}

pub fn parse_cursor(cursor: &str) -> Option<LedgerPosition> {
    parse_commission_id(cursor)
}

pub fn format_cursor(position: LedgerPosition) -> String {
    CommissionRecord::id_for(position.0, position.1 as usize)
}

fn decode_in_tx<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ConflictableTransactionError<Abort>> {
    serde_json::from_slice(bytes).map_err(|error| ConflictableTransactionError::Abort(Abort::Decode(error.to_string())))
}

fn to_json<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("records serialize: they hold no maps with non-string keys")
}

fn decode<T: serde::de::DeserializeOwned>(tree: &'static str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|error| StoreError::Decode { tree, detail: error.to_string() })
}

fn get_json<T: serde::de::DeserializeOwned>(
    tree: &Tree,
    name: &'static str,
    key: &[u8],
) -> Result<Option<T>, StoreError> {
    tree.get(key)?.map(|bytes| decode(name, &bytes)).transpose()
}

#[cfg(test)]
mod tests;
