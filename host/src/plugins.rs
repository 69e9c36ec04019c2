//! The plugin versions of every operator: uploaded, compiled once, kept compiled.
//!
//! Upload validates and compiles; the compiled artifact is stored beside the component under a
//! key that names this engine's compatibility, so a restart (or a thousand operators) loads
//! artifacts instead of compiling. A version is loaded into memory on first use.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use anyhow::Context as _;
use sha2::{Digest, Sha256};

use crate::event::now_ms;
use crate::metrics::{LoadLabels, Metrics};
use crate::sandbox::{LoadedPlugin, Sandbox, UploadError};
use crate::store::Store;
use crate::store::records::PluginRecord;

pub struct PluginRegistry {
    store: Arc<Store>,
    sandbox: Arc<Sandbox>,
    loaded: RwLock<HashMap<(String, u32), Arc<LoadedPlugin>>>,
    metrics: Arc<Metrics>,
}

impl PluginRegistry {
    pub fn new(store: Arc<Store>, sandbox: Arc<Sandbox>, metrics: Arc<Metrics>) -> Self {
        Self { store, sandbox, loaded: RwLock::new(HashMap::new()), metrics }
    }

    /// Validates, compiles and stores a new version of `operator`'s plugin.
    pub fn upload(&self, operator: &str, wasm: &[u8]) -> Result<PluginRecord, UploadFailure> {
        let sha256 = hex::encode(Sha256::digest(wasm));
        let (contract, artifact) = self.sandbox.compile(wasm)?;
        self.metrics.plugin_loads.get_or_create(&LoadLabels { source: "compiled" }).inc();
        let artifact_key = self.sandbox.artifact_key(&sha256);
        let record = self.store.add_plugin(operator, wasm, &artifact_key, &artifact, |version| PluginRecord {
            version,
            sha256: sha256.clone(),
            size: wasm.len() as u64,
            contract: contract.to_owned(),
            uploaded_at: now_ms(),
        })?;
        let plugin = self.sandbox.load(record.version, &artifact).map_err(UploadFailure::Internal)?;
        self.loaded.write().expect("registry lock").insert((operator.to_owned(), record.version), Arc::new(plugin));
        tracing::info!(operator, version = record.version, sha256 = %record.sha256, contract, "plugin uploaded");
        Ok(record)
    }

    /// The compiled plugin, from memory, the artifact cache, or (after a wasmtime upgrade) a
    /// fresh compile of the stored component.
    pub fn get(&self, operator: &str, version: u32) -> anyhow::Result<Arc<LoadedPlugin>> {
        let key = (operator.to_owned(), version);
        if let Some(plugin) = self.loaded.read().expect("registry lock").get(&key) {
            return Ok(plugin.clone());
        }
        let record = self
            .store
            .plugin(operator, version)?
            .with_context(|| format!("operator {operator} has no plugin version {version}"))?;
        let artifact_key = self.sandbox.artifact_key(&record.sha256);
        let artifact = match self.store.artifact(&artifact_key)? {
            Some(artifact) => {
                self.metrics.plugin_loads.get_or_create(&LoadLabels { source: "cache" }).inc();
                tracing::info!(operator, version, "plugin loaded from the compiled-artifact cache");
                artifact
            }
            None => {
                let wasm = self
                    .store
                    .plugin_wasm(&record.sha256)?
                    .with_context(|| format!("the component of {operator} v{version} is missing"))?;
                let (_, artifact) = self.sandbox.compile(&wasm)?;
                self.metrics.plugin_loads.get_or_create(&LoadLabels { source: "compiled" }).inc();
                self.store.put_artifact(&artifact_key, &artifact)?;
                tracing::info!(operator, version, "plugin recompiled for this engine");
                artifact
            }
        };
        let plugin = Arc::new(self.sandbox.load(version, &artifact)?);
        self.loaded.write().expect("registry lock").insert(key, plugin.clone());
        Ok(plugin)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UploadFailure {
    #[error(transparent)]
    Rejected(#[from] UploadError),
    #[error(transparent)]
    Storage(#[from] crate::store::StoreError),
    #[error("{0:#}")]
    Internal(anyhow::Error),
}
