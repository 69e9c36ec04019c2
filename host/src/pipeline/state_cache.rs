//! What the sequencers read and wrote of their operators' plugin state, kept in memory between
//! turns, within a bound per operator and one in total.
//!
//! Why: an operator's sequencer is the only writer of its state ([`super::sequencer`]), so the
//! committed value of a key it read or wrote stays what it was until the sequencer itself
//! commits over it; a hot key (an affiliate's month NGR, a tier count) need not be read from
//! sled on every event. Why bounded: 1,000 operators with large state would otherwise keep all
//! of it in memory. The least recently used entries go first, the operator's own when it is over
//! its bound, anyone's when the total is.
//!
//! Why it stays correct across a restart or a crash: it is only a copy, in this process, of
//! committed values. A turn reads through it ([`super::batch::PendingWrites`]: the turn's
//! pending writes, then this cache, then the store), and only after a commit does it take the
//! committed events' writes. When a commit's outcome is anything but "all committed" (a storage
//! error, an event stale or refused), the operator's entries are dropped, so the next read goes
//! to the store again. A new process starts empty.
//!
//! It also keeps each operator's count of stored state bytes once asked for one (for its
//! `state_bytes` quota): counted once from the store, then moved by the committed writes.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::metrics::Metrics;

/// What an entry costs besides its key and value: the map's and the order's bookkeeping.
const ENTRY_OVERHEAD: usize = 64;
/// The default bound on the cache, over all operators.
pub const DEFAULT_CACHE_BYTES: usize = 256 << 20;
/// The default bound on one operator's part of it.
pub const DEFAULT_OPERATOR_CACHE_BYTES: usize = 16 << 20;

/// How much state the cache may keep.
#[derive(Debug, Clone, Copy)]
pub struct CacheBounds {
    /// Over all operators; 0 turns the cache off.
    pub total_bytes: usize,
    /// For one operator.
    pub operator_bytes: usize,
}

impl Default for CacheBounds {
    fn default() -> Self {
        Self { total_bytes: DEFAULT_CACHE_BYTES, operator_bytes: DEFAULT_OPERATOR_CACHE_BYTES }
    }
}

pub(super) struct StateCache {
    bounds: CacheBounds,
    metrics: Arc<Metrics>,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    operators: HashMap<String, Entries>,
    /// Every entry's last use -> its operator: the oldest first.
    order: BTreeMap<u64, String>,
    bytes: usize,
    clock: u64,
    /// Operator -> the bytes of plugin state it stores, once counted.
    state_bytes: HashMap<String, u64>,
}

#[derive(Default)]
struct Entries {
    values: HashMap<String, Cached>,
    /// Last use -> key: the oldest first.
    order: BTreeMap<u64, String>,
    bytes: usize,
}

struct Cached {
    /// `None`: the key is not in the store.
    value: Option<Vec<u8>>,
    used: u64,
}

fn size(key: &str, value: &Option<Vec<u8>>) -> usize {
    ENTRY_OVERHEAD + key.len() + value.as_ref().map_or(0, Vec::len)
}

impl StateCache {
    pub(super) fn new(bounds: CacheBounds, metrics: Arc<Metrics>) -> Self {
        Self { bounds, metrics, inner: Mutex::default() }
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().expect("state cache lock")
    }

    /// The committed value of `key`, if the cache has it (`Some(None)`: the key is absent).
    pub(super) fn get(&self, operator: &str, key: &str) -> Option<Option<Vec<u8>>> {
        let mut inner = self.inner();
        let Inner { operators, order, clock, .. } = &mut *inner;
        let Some(entries) = operators.get_mut(operator) else {
            self.metrics.state_cache_misses.inc();
            return None;
        };
        let Some(cached) = entries.values.get_mut(key) else {
            self.metrics.state_cache_misses.inc();
            return None;
        };
        *clock += 1;
        entries.order.remove(&cached.used);
        order.remove(&cached.used);
        cached.used = *clock;
        entries.order.insert(*clock, key.to_owned());
        order.insert(*clock, operator.to_owned());
        self.metrics.state_cache_hits.inc();
        Some(cached.value.clone())
    }

    /// Keeps `value` as the committed value of `key`, then evicts down to the bounds.
    pub(super) fn put(&self, operator: &str, key: &str, value: Option<Vec<u8>>) {
        let mut inner = self.inner();
        inner.remove(operator, key);
        let bytes = size(key, &value);
        if bytes <= self.bounds.operator_bytes.min(self.bounds.total_bytes) {
            inner.clock += 1;
            let used = inner.clock;
            inner.order.insert(used, operator.to_owned());
            inner.bytes += bytes;
            let entries = inner.operators.entry(operator.to_owned()).or_default();
            entries.order.insert(used, key.to_owned());
            entries.values.insert(key.to_owned(), Cached { value, used });
            entries.bytes += bytes;
            self.evict(&mut inner, operator);
        }
        self.metrics.state_cache_bytes.set(inner.bytes as i64);
    }

    /// Evicts the operator's oldest entries while it is over its bound, then anyone's oldest
    /// while the cache is over the total.
    fn evict(&self, inner: &mut Inner, operator: &str) {
        let mut evicted = 0;
        while inner.operators.get(operator).is_some_and(|entries| entries.bytes > self.bounds.operator_bytes) {
            let oldest = inner.operators[operator].order.first_key_value().map(|(_, key)| key.clone());
            let Some(key) = oldest else { break };
            inner.remove(operator, &key);
            evicted += 1;
        }
        while inner.bytes > self.bounds.total_bytes {
            let Some((used, of)) = inner.order.first_key_value().map(|(used, of)| (*used, of.clone())) else { break };
            let key = inner.operators.get(&of).and_then(|entries| entries.order.get(&used).cloned());
            match key {
                Some(key) => inner.remove(&of, &key),
                None => {
                    inner.order.remove(&used);
                }
            }
            evicted += 1;
        }
        if evicted > 0 {
            self.metrics.state_cache_evictions.inc_by(evicted);
        }
    }

    /// Drops what the cache holds of the operator, its count of state bytes included: the next
    /// reads go to the store.
    pub(super) fn forget(&self, operator: &str) {
        let mut inner = self.inner();
        if let Some(entries) = inner.operators.remove(operator) {
            for used in entries.order.keys() {
                inner.order.remove(used);
            }
            inner.bytes -= entries.bytes;
        }
        inner.state_bytes.remove(operator);
        self.metrics.state_cache_bytes.set(inner.bytes as i64);
    }

    /// The bytes of plugin state the operator stores: counted by `count` the first time, then
    /// kept by [`Self::stored`].
    pub(super) fn state_bytes<E>(&self, operator: &str, count: impl FnOnce() -> Result<u64, E>) -> Result<u64, E> {
        if let Some(bytes) = self.inner().state_bytes.get(operator) {
            return Ok(*bytes);
        }
        // Counted outside the lock: only the operator's sequencer writes its state, and it is
        // the one asking.
        let bytes = count()?;
        self.inner().state_bytes.insert(operator.to_owned(), bytes);
        Ok(bytes)
    }

    /// Takes committed writes: each value, and `added` bytes into the operator's count if one
    /// is kept.
    pub(super) fn stored<'a>(
        &self,
        operator: &str,
        writes: impl IntoIterator<Item = (&'a String, &'a Option<Vec<u8>>)>,
        added: i64,
    ) {
        for (key, value) in writes {
            self.put(operator, key, value.clone());
        }
        if let Some(bytes) = self.inner().state_bytes.get_mut(operator) {
            *bytes = bytes.saturating_add_signed(added);
        }
    }
}

impl Inner {
    fn remove(&mut self, operator: &str, key: &str) {
        let Some(entries) = self.operators.get_mut(operator) else { return };
        if let Some(cached) = entries.values.remove(key) {
            let bytes = size(key, &cached.value);
            entries.order.remove(&cached.used);
            entries.bytes -= bytes;
            self.order.remove(&cached.used);
            self.bytes -= bytes;
            if entries.values.is_empty() {
                self.operators.remove(operator);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(total_bytes: usize, operator_bytes: usize) -> StateCache {
        StateCache::new(CacheBounds { total_bytes, operator_bytes }, Arc::new(Metrics::default()))
    }

    #[test]
    fn the_oldest_entries_go_first_and_the_bounds_hold() {
        let entry = size("k1", &Some(vec![0; 100]));
        let cache = cache(3 * entry, 2 * entry);
        cache.put("a", "k1", Some(vec![0; 100]));
        cache.put("a", "k2", Some(vec![0; 100]));
        assert!(cache.get("a", "k1").is_some(), "k1 used last: k2 is now the oldest");
        cache.put("a", "k3", Some(vec![0; 100]));
        assert!(cache.get("a", "k2").is_none(), "over the operator's bound, its oldest went");
        assert!(cache.get("a", "k1").is_some() && cache.get("a", "k3").is_some());
        cache.put("b", "k1", Some(vec![0; 100]));
        cache.put("b", "k2", Some(vec![0; 100]));
        // Over the total: the oldest of all, a's k1, went.
        assert_eq!(cache.inner().bytes, 3 * entry);
        assert!(cache.get("a", "k1").is_none());
        assert!(cache.get("a", "k3").is_some() && cache.get("b", "k1").is_some());
        assert_eq!(cache.metrics.state_cache_evictions.get(), 2);
        assert_eq!(cache.metrics.state_cache_bytes.get(), 3 * entry as i64);
    }

    #[test]
    fn a_value_over_the_bound_is_not_kept_and_forget_drops_everything() {
        let cache = cache(1000, 500);
        cache.put("a", "k", Some(vec![0; 10]));
        cache.put("a", "k", Some(vec![0; 600]));
        assert!(cache.get("a", "k").is_none(), "neither the old value nor the new one");
        cache.put("a", "absent", None);
        assert_eq!(cache.get("a", "absent"), Some(None));
        assert_eq!(cache.state_bytes::<()>("a", || Ok(7)), Ok(7));
        cache.stored("a", [(&"k".to_owned(), &Some(vec![1]))], 3);
        assert_eq!(cache.state_bytes::<()>("a", || Ok(0)), Ok(10));
        cache.forget("a");
        assert!(cache.get("a", "k").is_none());
        assert_eq!(cache.state_bytes::<()>("a", || Ok(1)), Ok(1));
        assert_eq!(cache.inner().bytes, 0);
    }

    #[test]
    fn a_cache_of_zero_bytes_keeps_nothing() {
        let cache = cache(0, DEFAULT_OPERATOR_CACHE_BYTES);
        cache.put("a", "k", Some(vec![1]));
        assert!(cache.get("a", "k").is_none());
    }
}
