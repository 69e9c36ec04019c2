//! Reads for the back office's listings: operators, affiliates, plugin versions and events, a
//! page at a time in key order, and whole-ledger scans for the periods overview.
//!
//! A page starts strictly after the key its cursor names, so a listing paged while writers add
//! entries neither repeats an entry nor skips one that was there when it started: new entries
//! sort in where their keys put them (new events and commissions at the end of the ledger).

use std::ops::Bound;

use sled::Tree;

use super::ledger::LedgerEntry;
use super::records::{AffiliateRecord, EventRecord, OperatorRecord, PluginRecord, StoredLink};
use super::{Store, StoreError, decode, keys};

/// A page looks at a bounded number of entries, so a filter that matches little cannot make one
/// request scan the whole ledger (as the commissions listing).
const SCAN_LIMIT: usize = 10_000;

/// One page of a listing and, when there may be more, the key to continue after.
pub type Page<T, Position> = (Vec<T>, Option<Position>);

impl Store {
    /// Up to `limit` operators after the id `after`, by id.
    pub fn operators_page(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<OperatorRecord, String>, StoreError> {
        let (records, next) = keyed_page(&self.operators, b"", after.map(str::as_bytes), limit, "operators")?;
        Ok((records, next.map(|key| String::from_utf8_lossy(&key).into_owned())))
    }

    /// Up to `limit` affiliates of `operator` after the id `after`, by id.
    pub fn affiliates_page(
        &self,
        operator: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<AffiliateRecord, String>, StoreError> {
        let prefix = keys::operator_prefix(operator);
        let start = after.map(|id| keys::text(operator, id));
        let (records, next) = keyed_page(&self.affiliates, &prefix, start.as_deref(), limit, "affiliates")?;
        Ok((records, next.map(|key| String::from_utf8_lossy(&key[prefix.len()..]).into_owned())))
    }

    /// Up to `limit` plugin versions of `operator` after version `after`, in version order.
    pub fn plugins_page(
        &self,
        operator: &str,
        after: Option<u32>,
        limit: usize,
    ) -> Result<Page<PluginRecord, u32>, StoreError> {
        let start = after.map(|version| keys::plugin(operator, version));
        let (records, next) =
            keyed_page(&self.plugins, &keys::operator_prefix(operator), start.as_deref(), limit, "plugins")?;
        let version = |key: &[u8]| Some(u32::from_be_bytes(key.get(key.len().checked_sub(4)?..)?.try_into().ok()?));
        Ok((records, next.as_deref().and_then(version)))
    }

    /// Up to `limit` events of `operator` after sequence number `after`, in ledger order (the
    /// order they took effect), that pass `keep`. Their chains are left as stored: a listing
    /// does not show deal terms.
    pub fn events_page(
        &self,
        operator: &str,
        after: Option<u64>,
        limit: usize,
        keep: impl Fn(&EventRecord<StoredLink>) -> bool,
    ) -> Result<Page<EventRecord<StoredLink>, u64>, StoreError> {
        let mut found = Vec::new();
        let mut last = None;
        for (scanned, entry) in self.entries_after(operator, after.unwrap_or(0)).enumerate() {
            let (seq, value) = entry?;
            if found.len() == limit || scanned == SCAN_LIMIT {
                return Ok((found, last));
            }
            last = Some(seq);
            let record = decode::<LedgerEntry>("ledger", &value)?.record;
            if keep(&record) {
                found.push(record);
            }
        }
        Ok((found, None))
    }
}

/// Up to `limit` records under `prefix` after the key `after` (exclusive), with the last key
/// read when there may be more.
fn keyed_page<T: serde::de::DeserializeOwned>(
    tree: &Tree,
    prefix: &[u8],
    after: Option<&[u8]>,
    limit: usize,
    name: &'static str,
) -> Result<Page<T, Vec<u8>>, StoreError> {
    let lower = match after {
        Some(after) => Bound::Excluded(after.to_vec()),
        None => Bound::Included(prefix.to_vec()),
    };
    let mut found = Vec::new();
    let mut last: Option<Vec<u8>> = None;
    for entry in tree.range::<Vec<u8>, _>((lower, Bound::Unbounded)) {
        let (key, value) = entry?;
        if !key.starts_with(prefix) {
            break;
        }
        if found.len() == limit {
            return Ok((found, last));
        }
        found.push(decode(name, &value)?);
        last = Some(key.to_vec());
    }
    Ok((found, None))
}
