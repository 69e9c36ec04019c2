//! What each operator stores, in bytes, for its `stored_bytes` quota: the keys and values of
//! the trees that grow with its traffic and its own writes ([`COUNTED_TREES`]). The count is
//! kept per operator in the `stored_bytes` tree by the same transactions that write those trees
//! (an event's commit, an affiliate's write), so it cannot drift from them; a write that would
//! take the operator past its quota is refused whole in that transaction.

use std::collections::BTreeMap;

use super::{Store, StoreError, keys};

/// The trees whose keys and values count. Not counted: plugins (a few per operator, bounded by
/// the upload limit), shadow results, statements, commission statuses and the small indexes
/// (sequences, failed events, reversals).
const COUNTED_TREES: [&str; 7] =
    ["affiliates", "customers", "ledger", "events", "state", "commissions_by_affiliate", "deals"];

/// The key in `stored_bytes` that says every operator's bytes were counted. Operator ids start
/// with a letter or digit, so it is no operator's.
const COUNTED_MARKER: &[u8] = b"\0counted";

/// An operator's write that would take its stored bytes past its quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaExceeded {
    /// What the operator keeps now.
    pub used: u64,
    /// What the refused write would have added (0: refused before it was evaluated).
    pub needed: u64,
    pub quota: u64,
}

/// A count as stored: 8 bytes, big-endian.
pub(super) fn read_u64(bytes: &[u8]) -> u64 {
    bytes.try_into().map(u64::from_be_bytes).unwrap_or_default()
}

/// Counts every operator's stored bytes once, when a data directory written before the count
/// existed is first opened (at start-up, before anything writes); from then on the writes keep
/// the count.
pub(super) fn count_once(db: &sled::Db, stored_bytes: &sled::Tree) -> Result<(), StoreError> {
    if stored_bytes.contains_key(COUNTED_MARKER)? {
        return Ok(());
    }
    let mut totals: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
    for name in COUNTED_TREES {
        for entry in db.open_tree(name)?.iter() {
            let (key, value) = entry?;
            // Every key of these trees starts with the operator's id and a NUL.
            let operator = key.split(|byte| *byte == keys::SEPARATOR).next().unwrap_or_default();
            *totals.entry(operator.to_vec()).or_default() += (key.len() + value.len()) as u64;
        }
    }
    let mut batch = sled::Batch::default();
    for (operator, total) in &totals {
        batch.insert(operator.as_slice(), total.to_be_bytes().as_slice());
    }
    batch.insert(COUNTED_MARKER, &[]);
    stored_bytes.apply_batch(batch)?;
    if !totals.is_empty() {
        tracing::info!(operators = totals.len(), "counted each operator's stored bytes, once");
    }
    Ok(())
}

/// Has the counts made again by the next [`count_once`] (after a change of the trees' format).
pub(super) fn recount(db: &sled::Db) -> Result<(), StoreError> {
    db.open_tree("stored_bytes")?.remove(COUNTED_MARKER)?;
    Ok(())
}

impl Store {
    /// The bytes of plugin state the operator stores (its keys without the operator's prefix,
    /// and their values), counted now over its range of the state tree: what its `state_bytes`
    /// quota holds. The pipeline counts once per process and keeps the count from then on.
    pub fn plugin_state_bytes(&self, operator: &str) -> Result<u64, StoreError> {
        let prefix = keys::operator_prefix(operator);
        let mut total = 0u64;
        for entry in self.state.scan_prefix(&prefix) {
            let (key, value) = entry?;
            total += (key.len() - prefix.len() + value.len()) as u64;
        }
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{deposit, reopen};
    use super::super::{CommitOutcome, Store};
    use crate::store::records::AffiliateRecord;

    fn affiliate(id: &str, deal_bytes: usize) -> AffiliateRecord {
        AffiliateRecord {
            id: id.into(),
            parent: None,
            deal: [("terms".into(), "x".repeat(deal_bytes))].into(),
            updated_at: 0,
        }
    }

    #[test]
    fn the_count_kept_by_the_commits_is_what_a_count_of_the_trees_finds() {
        let directory = tempfile::tempdir().expect("a temporary directory");
        let kept = {
            let store = Store::open(directory.path()).expect("sled opens");
            store.put_affiliate("op", &affiliate("aff", 500), None).unwrap().unwrap();
            store.put_affiliate("op", &affiliate("aff", 100), None).unwrap().unwrap();
            let mut deletes = deposit("e2", "c2", "customer:c2");
            deletes.state_writes.insert("customer:c1".into(), None);
            let outcomes = store.commit_events(&[deposit("e1", "c1", "customer:c1"), deletes]).unwrap();
            assert!(outcomes.iter().all(|outcome| matches!(outcome, CommitOutcome::Committed { .. })));
            store.put_affiliate("other", &affiliate("aff", 10), None).unwrap().unwrap();
            let kept = (store.stored_bytes("op").unwrap(), store.stored_bytes("other").unwrap());
            // As a data directory from before the count: no count at all.
            store.stored_bytes.clear().unwrap();
            store.db.flush().unwrap();
            kept
        };
        let store = reopen(directory.path());
        assert!(kept.0 > 0 && kept.1 > 0, "{kept:?}");
        assert_eq!((store.stored_bytes("op").unwrap(), store.stored_bytes("other").unwrap()), kept);
    }

    #[test]
    fn a_write_past_the_quota_is_refused_whole() {
        let directory = tempfile::tempdir().expect("a temporary directory");
        let store = Store::open(directory.path()).expect("sled opens");
        store.put_affiliate("op", &affiliate("aff", 100), None).unwrap().unwrap();
        let used = store.stored_bytes("op").unwrap();
        let quota = Some(used + 50);

        let refused = store.put_affiliate("op", &affiliate("big", 100), quota).unwrap().unwrap_err();
        assert_eq!((refused.used, refused.quota), (used, used + 50));
        assert!(store.affiliate("op", "big").unwrap().is_none());
        let mut commit = deposit("e1", "c1", "customer:c1");
        commit.stored_bytes_quota = quota;
        let mut other = deposit("e2", "c2", "customer:c2");
        other.operator = "other".into();
        let outcomes = store.commit_events(&[commit, other]).unwrap();
        assert!(matches!(outcomes[0], CommitOutcome::QuotaExceeded(_)), "{outcomes:?}");
        assert!(store.event("op", "e1").unwrap().is_none());
        assert!(store.binding("op", "c1").unwrap().is_none());
        assert!(store.state_value("op", "customer:c1").unwrap().is_none());
        // Another operator's event in the same transaction goes on.
        assert!(matches!(outcomes[1], CommitOutcome::Committed { .. }), "{outcomes:?}");
        // Writes that store less are never refused.
        store.put_affiliate("op", &affiliate("aff", 10), quota).unwrap().unwrap();
    }
}
