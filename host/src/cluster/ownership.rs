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
//! lifetime), naming the operators set up on them. A free operator is taken first by its
//! preferred node: of the live nodes that have it set up, the one that ranks highest for it by
//! rendezvous hashing (so operators spread over nodes, and each moves only when its node comes
//! or goes); by any node once it has been free for [`CLAIM_GRACE`] sweeps.
//!
//! **Moving back to the preferred node.** Whoever started first takes every operator, and a
//! node that restarts finds its operators owned elsewhere: without more, one node would end up
//! evaluating everything. So an owner hands an operator over when another live node is
//! preferred for it and has been seen alive for [`HANDOVER_AFTER`] sweeps in a row (a node
//! that flaps does not pull operators back and forth): it stops owning it (the group in hand is
//! finished and written, as at a clean shutdown) and deletes the lease, which the preferred
//! node takes at its next sweep. An operator handed over is not handed over again for
//! [`HANDOVER_PAUSE`] leases, should the preferred node not take it. A node whose entry has not
//! changed for [`STALE_AFTER`] sweeps counts as gone even while the bucket still lists it, so
//! that an operator is never handed to a node that just died.
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

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;

use async_nats::jetstream::kv;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::Cluster;
use super::owner::Owned;

/// Sweeps an operator must stay free before a node other than its preferred one takes it.
pub const CLAIM_GRACE: u32 = 3;
/// Sweeps in a row a preferred node must be seen alive before an owner hands it an operator.
pub const HANDOVER_AFTER: u32 = 6;
/// Leases after a handover during which the operator is not handed over again.
const HANDOVER_PAUSE: u32 = 10;
/// Sweeps in a row a node's entry may stay unchanged before it is taken as gone.
const STALE_AFTER: u32 = 4;
/// Handovers started in one sweep at most: operators move a few at a time.
const HANDOVERS_PER_SWEEP: usize = 16;

/// What a live node says of itself in `ch_nodes`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Alive {
    node: String,
    /// The operators set up on this node: only these may be preferred to it.
    operators: BTreeSet<String>,
}

/// What a sweep knows of the live nodes.
#[derive(Default)]
pub(super) struct Sweeps {
    /// Operator -> sweeps it has been seen free in a row.
    free_for: HashMap<String, u32>,
    /// Node -> sweeps it has been seen alive in a row.
    alive_for: HashMap<String, u32>,
    /// Operator -> when this node last handed it over.
    handed_over: HashMap<String, Instant>,
    /// Node -> the revision of its entry last seen, and in how many sweeps in a row.
    entries: HashMap<String, (u64, u32)>,
}

/// A live node's entry in `ch_nodes`.
pub(super) struct Node {
    pub name: String,
    /// The operators it has set up (`None`: it did not say).
    pub operators: Option<BTreeSet<String>>,
    /// The entry's revision: a live node writes it anew every sweep.
    revision: u64,
}

/// The live nodes.
pub(super) struct LiveNodes(pub(super) Vec<Node>);

impl LiveNodes {
    /// The preferred owner of `operator`: of the live nodes that have it set up, the one that
    /// ranks highest. `None` if no live node is known (every node may then take it).
    pub(super) fn preferred(&self, operator: &str) -> Option<&str> {
        self.0
            .iter()
            .filter(|node| node.operators.as_ref().is_none_or(|set| set.contains(operator)))
            .max_by_key(|node| rank(operator, &node.name))
            .map(|node| node.name.as_str())
    }
}

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

    /// This node's entry in `ch_nodes`: its name and the operators set up on it.
    fn alive(&self) -> anyhow::Result<Bytes> {
        let operators = self.pipeline.store().operators()?.into_iter().map(|operator| operator.id).collect();
        Ok(Bytes::from(serde_json::to_vec(&Alive { node: self.node.clone(), operators })?))
    }

    /// Every third of the lease: says this node is alive, renews its leases, takes free
    /// operators, and hands operators over to their preferred nodes. Ends when the node stops.
    pub(super) async fn keep_leases(self: Arc<Self>) {
        let every = self.config.lease / 3;
        let mut sweeps = Sweeps::default();
        loop {
            if *self.stopping.borrow() {
                return;
            }
            match self.alive() {
                Ok(alive) => {
                    if let Err(error) = self.log.nodes.put(&self.node, alive).await {
                        tracing::warn!(%error, "could not say this node is alive");
                    }
                }
                Err(error) => tracing::warn!(%error, "could not list this node's operators"),
            }
            self.renew().await;
            // Reading the live nodes is bounded by a third of the lease, so that a slow read (a
            // NATS server being replaced) never delays the next renewal past the lease. Without
            // them every node is preferred (the create decides) and nothing is handed over.
            let live = tokio::time::timeout(every, self.live_nodes(&mut sweeps)).await.ok();
            let unknown = LiveNodes(Vec::new());
            if let Err(error) = self.claim(live.as_ref().unwrap_or(&unknown), &mut sweeps).await {
                tracing::warn!(%error, "could not look for operators to own");
            }
            if let Some(live) = &live {
                self.hand_over(live, &mut sweeps);
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

    /// The live nodes, from `ch_nodes`; counts how long each has been seen alive.
    async fn live_nodes(&self, sweeps: &mut Sweeps) -> LiveNodes {
        let mut live = self.read_live_nodes().await;
        // A node that died is listed until its entry expires, and the servers may be slow to
        // expire it (one of them restarting, say): a node whose entry has not changed for
        // [`STALE_AFTER`] sweeps is taken as gone, so that nothing is handed over to it.
        let listed: Vec<String> = live.0.iter().map(|node| node.name.clone()).collect();
        sweeps.entries.retain(|node, _| listed.contains(node));
        live.0.retain(|node| {
            let seen = sweeps.entries.entry(node.name.clone()).or_insert((node.revision, 0));
            if seen.0 == node.revision {
                seen.1 += 1;
            } else {
                *seen = (node.revision, 1);
            }
            node.name == self.node || seen.1 <= STALE_AFTER
        });
        sweeps.alive_for.retain(|name, _| live.0.iter().any(|node| node.name == *name));
        for node in &live.0 {
            *sweeps.alive_for.entry(node.name.clone()).or_default() += 1;
        }
        live
    }

    /// The live nodes, from `ch_nodes`, with the operators each says it has set up.
    pub(super) async fn read_live_nodes(&self) -> LiveNodes {
        use futures_util::TryStreamExt as _;
        let names: Vec<String> = match self.log.nodes.keys().await {
            Ok(keys) => keys.try_collect().await.unwrap_or_default(),
            Err(error) => {
                tracing::debug!(%error, "could not list the live nodes");
                Vec::new()
            }
        };
        let entries = futures_util::future::join_all(names.iter().map(|name| self.log.nodes.entry(name))).await;
        let mut live = Vec::with_capacity(names.len());
        for (name, entry) in names.into_iter().zip(entries) {
            let Ok(Some(entry)) = entry else { continue };
            if matches!(entry.operation, kv::Operation::Delete | kv::Operation::Purge) {
                continue;
            }
            // A node that did not say which operators it has counts as having them all: the
            // create decides.
            let operators = serde_json::from_slice::<Alive>(&entry.value).ok().map(|alive| alive.operators);
            live.push(Node { name, operators, revision: entry.revision });
        }
        LiveNodes(live)
    }

    /// Takes the free operators this node should own.
    async fn claim(self: &Arc<Self>, live: &LiveNodes, sweeps: &mut Sweeps) -> anyhow::Result<()> {
        let operators = self.pipeline.store().operators()?;
        let free_for = &mut sweeps.free_for;
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
            // Without the live nodes, every node is the preferred one: the create decides.
            let preferred = live.preferred(&operator).is_none_or(|node| node == self.node);
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

    /// Hands each owned operator whose preferred node is another, seen alive long enough, over
    /// to it: stops owning it, and once the owner's task has written its last group, deletes
    /// the lease (in the background: the sweep goes on renewing the other leases meanwhile).
    fn hand_over(self: &Arc<Self>, live: &LiveNodes, sweeps: &mut Sweeps) {
        let pause = self.config.lease * HANDOVER_PAUSE;
        sweeps.handed_over.retain(|_, at| at.elapsed() < pause);
        let owned: Vec<(String, Arc<Owned>)> =
            self.owned.lock().expect("owned lock").iter().map(|(op, owned)| (op.clone(), owned.clone())).collect();
        let mut started = 0;
        for (operator, owned) in owned {
            if started == HANDOVERS_PER_SWEEP {
                break;
            }
            let Some(preferred) = live.preferred(&operator) else { continue };
            let settled = sweeps.alive_for.get(preferred).is_some_and(|sweeps| *sweeps >= HANDOVER_AFTER);
            if preferred == self.node || !settled || sweeps.handed_over.contains_key(&operator) {
                continue;
            }
            sweeps.handed_over.insert(operator.clone(), Instant::now());
            started += 1;
            tracing::info!(%operator, to = preferred, "handing the operator over to its preferred node");
            self.owned.lock().expect("owned lock").remove(&operator);
            owned.stop();
            let (cluster, lease) = (self.clone(), self.config.lease);
            tokio::spawn(async move {
                if tokio::time::timeout(lease, owned.ended()).await.is_err() {
                    tracing::warn!(%operator, "the owner did not finish its group within the lease; the lease expires");
                    return;
                }
                if let Err(error) = cluster.log.owners.delete_expect_revision(&operator, Some(owned.revision())).await {
                    tracing::warn!(%operator, %error, "could not release the lease; it expires by itself");
                }
            });
        }
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
