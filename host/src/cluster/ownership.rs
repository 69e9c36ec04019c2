//! Who owns which operator: leases in the `ch_owners` bucket, and the fence on the ledger.
//!
//! **The lease.** An operator's owner holds the key `<operator>` of the `ch_owners` key-value
//! bucket. It takes it with a create (refused if the key holds a value: a compare-and-set on
//! "no owner"), renews it every third of the lease with an update that expects the revision
//! it last wrote (refused if anyone else wrote since), and loses it when a renewal is refused
//! or fails. The bucket's `max_age` is the lease: a key not renewed for that long is removed by
//! the servers, and any node may then create it. A clean shutdown deletes its keys, so the
//! next owner need not wait for them to expire.
//!
//! **Who takes a free operator.** Live nodes renew a key of their own in `ch_nodes` (same
//! lifetime). A free operator is taken first by the live node that ranks highest for it by
//! rendezvous hashing (so operators spread over nodes, and each moves only when its node
//! goes), and by any node once it has been free for [`CLAIM_GRACE`] sweeps (the preferred node
//! may not know the operator yet).
//!
//! **The fence.** A lease alone cannot stop a paused owner (a long GC pause, SIGSTOP, a VM
//! migration): it wakes up believing it still owns the operator and writes before its next
//! renewal fails. What it writes is what matters, and every ledger entry is published with
//! `Nats-Expected-Last-Subject-Sequence` = the sequence of the last entry the writer knows on
//! the operator's ledger subject: JetStream refuses it if anything was written there since. A
//! new owner's first write is a [`super::wire::Entry::Takeover`] entry, made the same way, so
//! from the moment it took over, the subject's last sequence is one the old owner never saw,
//! and every write it attempts is refused (it then stops owning the operator). The lease's
//! revision, written in each entry, says which tenure wrote it. Two owners may overlap for a
//! moment in evaluating (the old one's in-memory work), never in writing the ledger.

use std::collections::HashMap;
use std::sync::Arc;

use async_nats::jetstream::kv;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::Cluster;

/// Sweeps an operator must stay free before a node other than its preferred one takes it.
pub const CLAIM_GRACE: u32 = 3;

/// What a lease says about its holder.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Holder {
    pub node: String,
    /// Where the node serves HTTP.
    pub address: String,
}

/// The rank of `node` for `operator`: the highest live node is the preferred owner.
fn rank(operator: &str, node: &str) -> u64 {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(format!("{operator}\0{node}").as_bytes());
    u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
}

impl Cluster {
    fn holder(&self) -> Bytes {
        let holder = Holder { node: self.node.clone(), address: self.address.clone() };
        Bytes::from(serde_json::to_vec(&holder).expect("a holder serialises"))
    }

    /// Every third of the lease: says this node is alive, renews its leases, and takes free
    /// operators. Ends when the node stops.
    pub(super) async fn keep_leases(self: Arc<Self>) {
        let every = self.config.lease / 3;
        let mut free_for: HashMap<String, u32> = HashMap::new();
        loop {
            if *self.stopping.borrow() {
                return;
            }
            if let Err(error) = self.log.nodes.put(&self.node, self.holder()).await {
                tracing::warn!(%error, "could not say this node is alive");
            }
            self.renew().await;
            if let Err(error) = self.claim(&mut free_for).await {
                tracing::warn!(%error, "could not look for operators to own");
            }
            let mut stopping = self.stopping.clone();
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                _ = stopping.changed() => {}
            }
        }
    }

    /// Renews each lease held; one refused or failed is lost, and its owner stops.
    async fn renew(&self) {
        let held: Vec<(String, u64)> =
            self.owned.lock().expect("owned lock").iter().map(|(op, owned)| (op.clone(), owned.revision())).collect();
        for (operator, revision) in held {
            match self.log.owners.update(&operator, self.holder(), revision).await {
                Ok(revision) => {
                    if let Some(owned) = self.owned.lock().expect("owned lock").get(&operator) {
                        owned.renewed(revision);
                    }
                }
                Err(error) => {
                    tracing::warn!(%operator, %error, "lost the lease");
                    self.disown(&operator);
                }
            }
        }
    }

    /// Takes the free operators this node should own.
    async fn claim(self: &Arc<Self>, free_for: &mut HashMap<String, u32>) -> anyhow::Result<()> {
        let operators = self.pipeline.store().operators()?;
        // Without the live nodes, every node is the preferred one: the create decides.
        let nodes: Vec<String> = match self.log.nodes.keys().await {
            Ok(keys) => {
                use futures_util::TryStreamExt as _;
                keys.try_collect().await.unwrap_or_default()
            }
            Err(error) => {
                tracing::debug!(%error, "could not list the live nodes");
                Vec::new()
            }
        };
        for operator in operators {
            let operator = operator.id;
            if self.owned.lock().expect("owned lock").contains_key(&operator) {
                continue;
            }
            let free = match self.log.owners.entry(&operator).await? {
                None => true,
                Some(entry) => matches!(entry.operation, kv::Operation::Delete | kv::Operation::Purge),
            };
            if !free {
                free_for.remove(&operator);
                continue;
            }
            let sweeps = free_for.entry(operator.clone()).or_default();
            *sweeps += 1;
            let preferred = nodes.iter().max_by_key(|node| rank(&operator, node)).is_none_or(|node| *node == self.node);
            if !preferred && *sweeps < CLAIM_GRACE {
                continue;
            }
            match self.log.owners.create(&operator, self.holder()).await {
                Ok(revision) => {
                    free_for.remove(&operator);
                    tracing::info!(%operator, revision, "took the operator's lease");
                    self.own(operator, revision);
                }
                Err(error) => tracing::debug!(%operator, %error, "another node took the operator first"),
            }
        }
        Ok(())
    }

    /// Gives up the leases at a clean shutdown: deletes each key, so that another node takes
    /// the operator at its next sweep instead of after the lease.
    pub(super) async fn release(&self) {
        let held: Vec<(String, u64)> =
            self.owned.lock().expect("owned lock").iter().map(|(op, owned)| (op.clone(), owned.revision())).collect();
        for (operator, revision) in held {
            if let Err(error) = self.log.owners.delete_expect_revision(&operator, Some(revision)).await {
                tracing::warn!(%operator, %error, "could not release the lease; it expires by itself");
            }
        }
        if let Err(error) = self.log.nodes.delete(&self.node).await {
            tracing::debug!(%error, "could not remove this node from the live nodes");
        }
    }

    /// Stops owning `operator` (lease lost, or fenced off the ledger).
    pub(super) fn disown(&self, operator: &str) {
        if let Some(owned) = self.owned.lock().expect("owned lock").remove(operator) {
            owned.stop();
        }
    }
}
