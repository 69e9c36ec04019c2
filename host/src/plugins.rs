//! The plugin versions of every operator: uploaded, compiled once, kept compiled.
//!
//! Upload validates and compiles; the compiled artifact is stored beside the component under a
//! key that names this engine's compatibility, so a restart (or a thousand operators) loads
//! artifacts instead of compiling. A version is loaded into memory on first use, and once per
//! component: operators running the same reference plugin share one compiled copy of it.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use anyhow::Context as _;
use sha2::{Digest, Sha256};

use crate::event::now_ms;
use crate::metrics::{LoadLabels, Metrics};
use crate::sandbox::{
    LoadedPlugin, PluginAffiliate, PluginContext, PluginEvent, PluginInput, SMOKE_EVENT_KIND, Sandbox, StateSource,
    UploadError,
};
use crate::store::records::FailureKind;
use crate::store::records::PluginRecord;
use crate::store::{Store, StoreError};

pub struct PluginRegistry {
    store: Arc<Store>,
    sandbox: Arc<Sandbox>,
    loaded: RwLock<HashMap<(String, u32), Arc<LoadedPlugin>>>,
    /// By artifact key: a component's compiled code is immutable and every event gets a fresh
    /// instance of it, so operators (and versions) with the same component can share it. On a
    /// platform where most operators run an unmodified reference plugin this keeps memory flat.
    shared: RwLock<HashMap<String, Arc<LoadedPlugin>>>,
    metrics: Arc<Metrics>,
}

impl PluginRegistry {
    pub fn new(store: Arc<Store>, sandbox: Arc<Sandbox>, metrics: Arc<Metrics>) -> Self {
        Self { store, sandbox, loaded: RwLock::new(HashMap::new()), shared: RwLock::new(HashMap::new()), metrics }
    }

    /// Validates, compiles and smoke-runs a component for `operator`, storing nothing: the
    /// slow half of an upload, which a caller may abandon.
    pub fn prepare(&self, operator: &str, wasm: Vec<u8>) -> Result<PreparedPlugin, UploadError> {
        let Validated { contract, artifact, plugin } = validate(&self.sandbox, operator, &wasm)?;
        self.metrics.plugin_loads.get_or_create(&LoadLabels { source: "compiled" }).inc();
        Ok(PreparedPlugin { sha256: hex::encode(Sha256::digest(&wasm)), wasm, contract, artifact, plugin })
    }

    /// Stores a prepared component as the operator's next version, or as `numbered` (the
    /// record the cluster gave it, [`crate::cluster`]).
    pub fn add(
        &self,
        operator: &str,
        prepared: PreparedPlugin,
        numbered: Option<PluginRecord>,
    ) -> Result<PluginRecord, StoreError> {
        let artifact_key = self.sandbox.artifact_key(&prepared.sha256);
        let uploaded_at = numbered.as_ref().map_or_else(now_ms, |record| record.uploaded_at);
        let make_record = |version| PluginRecord {
            version,
            sha256: prepared.sha256.clone(),
            size: prepared.wasm.len() as u64,
            contract: prepared.contract.to_owned(),
            uploaded_at,
        };
        let version = numbered.map(|record| record.version);
        let record =
            self.store.add_plugin(operator, &prepared.wasm, &artifact_key, &prepared.artifact, make_record, version)?;
        let plugin = self.share(&artifact_key, || Ok(prepared.plugin)).expect("a prepared plugin needs no loading");
        self.loaded.write().expect("registry lock").insert((operator.to_owned(), record.version), plugin);
        tracing::info!(operator, version = record.version, sha256 = %record.sha256, contract = prepared.contract, "plugin uploaded");
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
        let plugin = self.share(&artifact_key, || self.load(operator, version, &record.sha256, &artifact_key))?;
        self.loaded.write().expect("registry lock").insert(key, plugin.clone());
        Ok(plugin)
    }

    /// The component under `artifact_key`, already in memory for some operator, or `load`ed.
    fn share(
        &self,
        artifact_key: &str,
        load: impl FnOnce() -> anyhow::Result<LoadedPlugin>,
    ) -> anyhow::Result<Arc<LoadedPlugin>> {
        if let Some(plugin) = self.shared.read().expect("registry lock").get(artifact_key) {
            return Ok(plugin.clone());
        }
        let plugin = Arc::new(load()?);
        Ok(self.shared.write().expect("registry lock").entry(artifact_key.to_owned()).or_insert(plugin).clone())
    }

    /// Loads a component from the artifact cache, or compiles it again (after a wasmtime
    /// upgrade) and caches the artifact.
    fn load(&self, operator: &str, version: u32, sha256: &str, artifact_key: &str) -> anyhow::Result<LoadedPlugin> {
        let artifact = match self.store.artifact(artifact_key)? {
            Some(artifact) => {
                self.metrics.plugin_loads.get_or_create(&LoadLabels { source: "cache" }).inc();
                tracing::info!(operator, version, "plugin loaded from the compiled-artifact cache");
                artifact
            }
            None => {
                let wasm = self
                    .store
                    .plugin_wasm(sha256)?
                    .with_context(|| format!("the component of {operator} v{version} is missing"))?;
                let (_, artifact) = self.sandbox.compile(&wasm)?;
                self.metrics.plugin_loads.get_or_create(&LoadLabels { source: "compiled" }).inc();
                self.store.put_artifact(artifact_key, &artifact)?;
                tracing::info!(operator, version, "plugin recompiled for this engine");
                artifact
            }
        };
        self.sandbox.load(&artifact)
    }
}

/// What [`validate`] gives for a component that passed.
pub struct Validated {
    /// The `commission:plugin` version the component was built against.
    pub contract: &'static str,
    /// The compiled artifact, as kept beside an uploaded component.
    pub artifact: Vec<u8>,
    /// The component, ready to run.
    pub plugin: LoadedPlugin,
}

/// Everything an upload checks, with no store: the component's header, imports and exports
/// against the contract, its compilation, and one run on a synthetic event. `plugin check` runs
/// it offline, so an author hears what an upload would say before uploading.
pub fn validate(sandbox: &Sandbox, operator: &str, wasm: &[u8]) -> Result<Validated, UploadError> {
    let (contract, artifact) = sandbox.compile(wasm)?;
    let plugin = sandbox.load(&artifact).map_err(|error| UploadError::Invalid(format!("{error:#}")))?;
    smoke_run(sandbox, operator, &plugin)?;
    Ok(Validated { contract, artifact, plugin })
}

/// Runs the plugin once on a synthetic event, under the default limits, with empty state.
/// A trap or an exhausted limit refuses the upload; a rule error does not (rules may refuse
/// what they do not know).
fn smoke_run(sandbox: &Sandbox, operator: &str, plugin: &LoadedPlugin) -> Result<(), UploadError> {
    let input = PluginInput {
        event: PluginEvent {
            id: "smoke-1".into(),
            kind: SMOKE_EVENT_KIND.into(),
            customer: "smoke-customer".into(),
            occurred_at: 0,
            amount: None,
            currency: None,
            attributes: Vec::new(),
        },
        context: PluginContext {
            operator: operator.to_owned(),
            operator_currency: "USD".into(),
            config: Vec::new(),
            referral_chain: vec![PluginAffiliate { id: "smoke-affiliate".into(), deal: Vec::new() }],
        },
    };
    let evaluation = sandbox.evaluate(plugin, &input, Arc::new(EmptyState), sandbox.limits());
    match evaluation.result {
        Err(failure) if failure.kind != FailureKind::RuleError => Err(UploadError::SmokeRun(failure.message)),
        _ => Ok(()),
    }
}

/// A component that passed validation, compilation and the smoke run, not yet stored.
pub struct PreparedPlugin {
    sha256: String,
    wasm: Vec<u8>,
    contract: &'static str,
    artifact: Vec<u8>,
    plugin: LoadedPlugin,
}

impl PreparedPlugin {
    /// The record it would be stored under as `version`, uploaded now.
    pub fn record(&self, version: u32) -> PluginRecord {
        PluginRecord {
            version,
            sha256: self.sha256.clone(),
            size: self.wasm.len() as u64,
            contract: self.contract.to_owned(),
            uploaded_at: now_ms(),
        }
    }

    pub fn wasm(&self) -> &[u8] {
        &self.wasm
    }
}

struct EmptyState;

impl StateSource for EmptyState {
    fn get(&self, _key: &str) -> anyhow::Result<Option<Vec<u8>>> {
        Ok(None)
    }
}
