//! Operators created once for the whole cluster, through the `ch_operators` bucket.
//!
//! Why a bucket and not the operator's events stream: an operator must exist before anything
//! is ordered on its stream (its credentials decide who may publish there), and its id must be
//! unique across the cluster. The bucket's `create` is both: it succeeds on one node only, so
//! two nodes asked for the same id at once answer 201 once and 409 once. The value is the
//! operator as it was created (its credentials' hashes, its webhook secret, its defaults):
//! every node follows the bucket from its start and sets up each operator it does not hold, so
//! the credentials shown once at creation work on every node. Later changes of the operator
//! (an activation, a rotation, settings) are ordered commands on its stream, applied by every
//! view at the same place ([`super::view`]).
//!
//! The node that created the operator holds it when it answers; the others within moments
//! (the time for the bucket's entry to reach their watchers), or at once when a request names
//! it first ([`Cluster::hold_operator`]). A data directory from before the
//! bucket offers its operators at start-up: each that the bucket does not hold is put there
//! as this node holds it.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::kv::{CreateErrorKind, Operation};
use futures_util::StreamExt as _;

use super::Cluster;
use crate::pipeline::IngestError;
use crate::store::records::OperatorRecord;

/// How long an operator id the bucket did not have is taken as unknown without asking again.
const UNKNOWN_FOR: Duration = Duration::from_secs(1);
/// The most unknown ids remembered; past it (made-up ids by the thousand) each is asked again.
const UNKNOWN_KEPT: usize = 10_000;
/// Bucket lookups of ids this node does not hold, at most, per second: past it (made-up ids by
/// the thousand) an id is answered as unknown without asking, so a flood of them costs the
/// cluster this many requests a second, not one each.
const LOOKUPS_PER_SECOND: u32 = 100;

impl Cluster {
    /// Creates `operator` for the whole cluster; `false` if its id is taken.
    pub(super) async fn create_operator(&self, operator: &OperatorRecord) -> Result<bool, IngestError> {
        let value = serde_json::to_vec(operator).map_err(|error| IngestError::Internal(error.to_string()))?;
        match self.log.operators.create(&operator.id, value.into()).await {
            Ok(_) => {}
            Err(error) if error.kind() == CreateErrorKind::AlreadyExists => return Ok(false),
            Err(error) => return Err(IngestError::LogUnavailable(error.to_string())),
        }
        // Held here before the answer, so that this node's next request finds it.
        self.set_up(operator)?;
        Ok(true)
    }

    /// Sets up an operator the bucket holds, if this node does not hold it yet.
    fn set_up(&self, operator: &OperatorRecord) -> Result<(), IngestError> {
        if self.pipeline.store().create_operator(operator)? {
            tracing::info!(node = %self.node, operator = %operator.id, "operator set up from the cluster");
        }
        Ok(())
    }

    /// Sets up `id` from the bucket if this node does not hold it yet: a request for an
    /// operator created through another node a moment ago, before this node's watch saw it,
    /// finds it rather than a 404.
    ///
    /// This runs before the request is authenticated, for any id a client names. An id the
    /// bucket did not have is not looked up again for [`UNKNOWN_FOR`]: a tracker posting to a
    /// mistyped operator id thousands of times a second costs the cluster one lookup a second,
    /// not one per request (`cluster_operator_lookups`). An operator created meanwhile is still
    /// found within that second, or at once once this node's watch has set it up. Made-up ids
    /// by the thousand are looked up [`LOOKUPS_PER_SECOND`] a second at most; past that, an id
    /// is answered as unknown (an operator created through another node a moment ago then
    /// waits for the watch, milliseconds).
    pub(super) async fn hold_operator(&self, id: &str) -> anyhow::Result<()> {
        if self.pipeline.store().operator(id)?.is_some() {
            return Ok(());
        }
        let looked_up_lately =
            |unknown: &HashMap<String, Instant>| unknown.get(id).is_some_and(|at| at.elapsed() < UNKNOWN_FOR);
        if looked_up_lately(&self.unknown_operators.lock().expect("unknown operators lock")) {
            return Ok(());
        }
        if !self.take_lookup() {
            return Ok(());
        }
        self.pipeline.metrics().cluster_operator_lookups.inc();
        match self.log.operators.get(id).await? {
            Some(value) => self.set_up(&serde_json::from_slice(&value)?)?,
            None => {
                let mut unknown = self.unknown_operators.lock().expect("unknown operators lock");
                if unknown.len() >= UNKNOWN_KEPT {
                    unknown.retain(|_, at| at.elapsed() < UNKNOWN_FOR);
                }
                if unknown.len() < UNKNOWN_KEPT {
                    unknown.insert(id.to_owned(), Instant::now());
                }
            }
        }
        Ok(())
    }

    /// Whether this second's budget of lookups ([`LOOKUPS_PER_SECOND`]) has one left: takes it.
    fn take_lookup(&self) -> bool {
        let mut lookups = self.lookups.lock().expect("lookups lock");
        let (since, taken) = &mut *lookups;
        if since.elapsed() >= Duration::from_secs(1) {
            (*since, *taken) = (Instant::now(), 0);
        }
        *taken = taken.saturating_add(1);
        *taken <= LOOKUPS_PER_SECOND
    }

    /// Offers this node's operators, and their plugin versions, to the buckets: those created
    /// before the buckets existed.
    pub(super) async fn offer_operators(&self) -> anyhow::Result<()> {
        for operator in self.pipeline.store().operators()? {
            match self.log.operators.create(&operator.id, serde_json::to_vec(&operator)?.into()).await {
                Ok(_) => tracing::info!(operator = %operator.id, "operator offered to the cluster"),
                Err(error) if error.kind() == CreateErrorKind::AlreadyExists => {}
                Err(error) => return Err(error.into()),
            }
            self.offer_plugins(&operator.id).await?;
        }
        Ok(())
    }

    /// Follows a bucket from its start (again a second after each end) until the node leaves;
    /// `what` names it in the log.
    pub(super) async fn keep_following<F>(self: Arc<Self>, what: &'static str, follow: impl Fn(Arc<Self>) -> F)
    where
        F: Future<Output = anyhow::Result<()>>,
    {
        let mut stopping = self.stopping.clone();
        while !*stopping.borrow() {
            tokio::select! {
                result = follow(self.clone()) => {
                    if let Err(error) = result {
                        tracing::warn!(%error, what, "following a bucket of the cluster; again in a second");
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                _ = stopping.changed() => {}
            }
        }
    }

    /// Sets up each operator of the bucket, from its start.
    pub(super) async fn follow_operators(self: Arc<Self>) -> anyhow::Result<()> {
        let mut entries = self.log.operators.watch_with_history(">").await?;
        while let Some(entry) = entries.next().await {
            let entry = entry?;
            if entry.operation != Operation::Put {
                continue;
            }
            match serde_json::from_slice::<OperatorRecord>(&entry.value) {
                Ok(operator) => self.set_up(&operator)?,
                Err(error) => tracing::error!(key = %entry.key, %error, "an operator in the bucket does not read"),
            }
        }
        anyhow::bail!("the operators' watch ended")
    }
}
