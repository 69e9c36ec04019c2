//! One customer's events are evaluated one at a time, in arrival order; different customers'
//! run concurrently.
//!
//! A plugin's per-customer state (first deposit paid, lots so far) is read and written by each
//! event, so two events of one customer evaluated side by side would race. Locks are striped:
//! a fixed set of FIFO mutexes indexed by a hash of (operator, customer). Two customers may
//! share a stripe and wait for each other briefly; in exchange nothing grows with the number of
//! customers. State shared across customers (an affiliate's tier count) is protected by the
//! optimistic check at commit instead (see `Store::commit_events`).

use std::collections::BTreeSet;
use std::hash::BuildHasher;
use std::sync::Arc;

use tokio::sync::{Mutex, OwnedMutexGuard};

const STRIPES: usize = 4096;

pub struct CustomerLocks {
    stripes: Vec<Arc<Mutex<()>>>,
    hasher: std::hash::RandomState,
}

impl Default for CustomerLocks {
    fn default() -> Self {
        Self {
            stripes: (0..STRIPES).map(|_| Arc::new(Mutex::new(()))).collect(),
            hasher: std::hash::RandomState::new(),
        }
    }
}

impl CustomerLocks {
    /// Waits for the customer's turn; tokio's mutex is fair, so turns follow arrival order.
    pub async fn lock(&self, operator: &str, customer: &str) -> OwnedMutexGuard<()> {
        self.stripes[self.stripe(operator, customer)].clone().lock_owned().await
    }

    /// Waits for the turns of several customers at once, as a batch evaluated in one go needs.
    /// Stripes are taken in index order, so two batches never wait for each other in a circle.
    pub async fn lock_all<'a>(
        &self,
        operator: &str,
        customers: impl IntoIterator<Item = &'a str>,
    ) -> Vec<OwnedMutexGuard<()>> {
        let stripes: BTreeSet<usize> = customers.into_iter().map(|customer| self.stripe(operator, customer)).collect();
        let mut turns = Vec::with_capacity(stripes.len());
        for stripe in stripes {
            turns.push(self.stripes[stripe].clone().lock_owned().await);
        }
        turns
    }

    fn stripe(&self, operator: &str, customer: &str) -> usize {
        (self.hasher.hash_one((operator, customer)) % STRIPES as u64) as usize
    }
}
