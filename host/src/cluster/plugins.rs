//! Plugin versions uploaded once for the whole cluster: the component in the `ch_plugin_wasm`
//! object store, its record in the `ch_plugins` bucket under `<operator>.<version>`.
//!
//! Why: an operator's events are evaluated by whichever node owns it, and every node's view
//! evaluates them again, so every node needs every version, under the same number. The node
//! that takes the upload validates it as one host does (a bad component is refused there,
//! nothing shared), stores the component, then numbers it: the bucket's `create` of
//! `<operator>.<n>` succeeds for one upload only, so two uploads at once on two nodes get two
//! numbers; it stores the version itself, with the operator's installs on this node held back
//! meanwhile, so that its own watch finds it stored rather than compiling it twice. Every node
//! follows the bucket from its start and compiles each version it does not hold (each node
//! keeps its own compiled artifact: its engine may differ); a request naming a version this
//! node has not compiled yet (an activation sent to another node than the upload) fetches it
//! first ([`Cluster::held_plugin`]). A version must be
//! held before it evaluates anything, so an activation, run in the operator's order by its
//! owner and by every view, first makes sure this node holds it ([`Cluster::hold_plugin`]).

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv::{CreateErrorKind, Operation};
use futures_util::StreamExt as _;
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt as _;

use super::Cluster;
use crate::pipeline::IngestError;
use crate::plugins::PreparedPlugin;
use crate::store::records::PluginRecord;

/// How many numbers an upload tries past the last this node holds, should other uploads of
/// the same operator be numbered at the same moment.
const NUMBERING_TRIES: u32 = 1_000;

/// How long fetching a component may take.
const FETCH_WAIT: Duration = Duration::from_secs(60);

fn key(operator: &str, version: u32) -> String {
    format!("{operator}.{version}")
}

impl Cluster {
    /// Shares a validated component with every node as the operator's next version, and
    /// stores it here under that number; the record it is stored under.
    pub(super) async fn add_plugin(
        &self,
        operator: &str,
        prepared: PreparedPlugin,
    ) -> Result<PluginRecord, IngestError> {
        let unavailable = |error: &dyn std::fmt::Display| IngestError::LogUnavailable(error.to_string());
        let mut record = prepared.record(0);
        self.keep_component(&record.sha256, prepared.wasm()).await.map_err(|error| unavailable(&error))?;
        // Numbered and stored with the operator's installs held back: this node's own watch
        // sees the number at once and must find the version stored, not compile it again.
        let installing = self.installing(operator);
        let _installing = installing.lock().await;
        let mut version = 1;
        while self.pipeline.store().plugin(operator, version)?.is_some() {
            version += 1;
        }
        for _ in 0..NUMBERING_TRIES {
            record.version = version;
            let value = serde_json::to_vec(&record).map_err(|error| IngestError::Internal(error.to_string()))?;
            match self.log.plugins.create(key(operator, version), value.into()).await {
                Ok(_) => {
                    let plugins = self.pipeline.plugins().clone();
                    let owned = operator.to_owned();
                    let adding = move || plugins.add(&owned, prepared, Some(record));
                    return Ok(tokio::task::spawn_blocking(adding)
                        .await
                        .map_err(|error| IngestError::Internal(error.to_string()))??);
                }
                Err(error) if error.kind() == CreateErrorKind::AlreadyExists => version += 1,
                Err(error) => return Err(unavailable(&error)),
            }
        }
        Err(IngestError::Internal(format!("no free plugin version for {operator} in {NUMBERING_TRIES} tries")))
    }

    /// The lock that one operator's uploads and installs on this node take, one at a time.
    fn installing(&self, operator: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.installing.lock().expect("installing lock").entry(operator.to_owned()).or_default().clone()
    }

    /// Offers the operator's versions this node holds that the bucket does not: a data
    /// directory from before the bucket.
    pub(super) async fn offer_plugins(&self, operator: &str) -> anyhow::Result<()> {
        let store = self.pipeline.store();
        let mut version = 1;
        while let Some(record) = store.plugin(operator, version)? {
            if self.log.plugins.get(key(operator, version)).await?.is_none() {
                let Some(wasm) = store.plugin_wasm(&record.sha256)? else {
                    anyhow::bail!("{operator}'s plugin version {version} has no stored component");
                };
                self.keep_component(&record.sha256, &wasm).await?;
                match self.log.plugins.create(key(operator, version), serde_json::to_vec(&record)?.into()).await {
                    Ok(_) => tracing::info!(operator, version, "plugin version offered to the cluster"),
                    Err(error) if error.kind() == CreateErrorKind::AlreadyExists => {}
                    Err(error) => return Err(error.into()),
                }
            }
            version += 1;
        }
        Ok(())
    }

    /// Puts a component in the object store under its sha256, unless it is there: an object is
    /// never written twice, so a node reading it never finds its chunks replaced under it.
    async fn keep_component(&self, sha256: &str, wasm: &[u8]) -> anyhow::Result<()> {
        if self.log.plugin_wasm.info(sha256).await.is_ok_and(|info| info.size == wasm.len()) {
            return Ok(());
        }
        self.log.plugin_wasm.put(sha256, &mut &wasm[..]).await?;
        Ok(())
    }

    /// Makes sure this node holds `version` of the operator's plugin, fetching and compiling
    /// it from the cluster if not.
    pub(super) async fn hold_plugin(&self, operator: &str, version: u32) -> anyhow::Result<()> {
        if !self.held_plugin(operator, version).await? {
            anyhow::bail!("the cluster has no plugin version {version} of {operator}");
        }
        Ok(())
    }

    /// Whether `version` of the operator's plugin exists in the cluster, held on this node
    /// once this answers `true`: a request naming a version uploaded through another node a
    /// moment ago finds it, rather than a 404 until this node's watch compiled it.
    pub(super) async fn held_plugin(&self, operator: &str, version: u32) -> anyhow::Result<bool> {
        if self.pipeline.store().plugin(operator, version)?.is_some() {
            return Ok(true);
        }
        let installing = self.installing(operator);
        let _installing = installing.lock().await;
        if self.pipeline.store().plugin(operator, version)?.is_some() {
            return Ok(true);
        }
        let Some(value) = self.log.plugins.get(key(operator, version)).await? else {
            return Ok(false);
        };
        self.install(operator, serde_json::from_slice(&value)?).await?;
        Ok(true)
    }

    /// Fetches, validates, compiles and stores a version the cluster numbered.
    async fn install(&self, operator: &str, record: PluginRecord) -> anyhow::Result<()> {
        let mut wasm = Vec::with_capacity(record.size as usize);
        let fetching = async {
            self.log.plugin_wasm.get(record.sha256.as_str()).await?.read_to_end(&mut wasm).await?;
            anyhow::Ok(())
        };
        // Bounded: a server being replaced can leave a read waiting without end.
        tokio::time::timeout(FETCH_WAIT, fetching)
            .await
            .map_err(|_| anyhow::anyhow!("fetching the component timed out"))??;
        if hex::encode(Sha256::digest(&wasm)) != record.sha256 {
            anyhow::bail!("the cluster's component {} does not match its sha256", record.sha256);
        }
        let plugins = self.pipeline.plugins().clone();
        let slots = self.pipeline.replay_slots().await;
        let owned = operator.to_owned();
        let version = record.version;
        tokio::task::spawn_blocking(move || {
            let _slots = slots;
            let prepared = plugins.prepare(&owned, wasm)?;
            anyhow::Ok(plugins.add(&owned, prepared, Some(record))?)
        })
        .await??;
        tracing::info!(node = %self.node, operator, version, "plugin version set up from the cluster");
        Ok(())
    }

    /// Holds each plugin version of the bucket, from its start.
    pub(super) async fn follow_plugins(self: Arc<Self>) -> anyhow::Result<()> {
        let mut entries = self.log.plugins.watch_with_history(">").await?;
        while let Some(entry) = entries.next().await {
            let entry = entry?;
            let Some((operator, version)) = entry.key.rsplit_once('.') else { continue };
            let Ok(version) = version.parse() else { continue };
            // A version that does not set up ends this watch: the next, a second later, starts
            // from the bucket's start again and skips what is held.
            if entry.operation == Operation::Put {
                self.hold_plugin(operator, version)
                    .await
                    .map_err(|error| error.context(format!("setting up {operator}'s plugin version {version}")))?;
            }
        }
        anyhow::bail!("the plugins' watch ended")
    }
}
