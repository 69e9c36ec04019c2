//! Where an operator's plugin runs: wasmtime, configured once for untrusted, deterministic code.
//!
//! - One [`Engine`] for the process; a plugin is validated and compiled once, at upload, and
//!   its compiled artifact is kept so that a restart does not compile again.
//! - A fresh instance per event, from an `InstancePre`: a plugin's memory never outlives the
//!   event, so the same events always give the same commissions and a trap cannot leave a
//!   poisoned instance behind. With the pooling allocator this costs tens of microseconds.
//! - Two meters: fuel (deterministic, counts wasm instructions) and an epoch deadline (wall
//!   clock, for time spent where fuel does not count). Memory, tables and instances are capped
//!   on every `Store`, and so are state writes and log lines.

mod contract;
mod host;
mod scratch;

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, Trap};

pub use contract::ContractError;
use contract::{v0_1_0, v0_2_0};
use host::{HostLimit, PluginHost};
pub use scratch::ScratchState;

use crate::store::records::{Failure, FailureKind};

/// Per-event limits of the sandbox.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Wasm instructions (roughly) an evaluation may execute.
    pub fuel: u64,
    /// Wall-clock backstop for what fuel does not count.
    pub timeout: Duration,
    pub memory_bytes: usize,
    pub table_elements: usize,
    pub instances: usize,
    pub max_state_key_bytes: usize,
    pub max_state_write_bytes: usize,
    pub max_log_lines: usize,
    pub max_log_line_bytes: usize,
    pub max_commissions: usize,
}

impl Limits {
    /// These limits without the wall-clock deadline, for replays (restatements, verify,
    /// statements, backtests, shadows). The deadline bounds a live event's latency, and a busy
    /// machine can trip it; a replay must give the answer the live evaluation gave, so it is
    /// bounded by fuel alone, which is deterministic. (A deadline some 136 years away: the epoch
    /// arithmetic stays in range.)
    pub fn without_deadline(self) -> Self {
        Self { timeout: Duration::from_secs(u64::from(u32::MAX)), ..self }
    }
}

/// The most any operator's limits may be raised to: what the engine is configured for.
pub const CEILINGS: Limits = Limits {
    fuel: 10_000_000_000,
    timeout: Duration::from_secs(30),
    memory_bytes: 256 << 20,
    table_elements: 1_000_000,
    instances: 32,
    max_state_key_bytes: 512,
    max_state_write_bytes: 64 << 20,
    max_log_lines: 10_000,
    max_log_line_bytes: 1024,
    max_commissions: 10_000,
};

impl Default for Limits {
    fn default() -> Self {
        Self {
            fuel: 50_000_000,
            timeout: Duration::from_secs(1),
            memory_bytes: 64 << 20,
            table_elements: 100_000,
            instances: 32,
            max_state_key_bytes: 512,
            max_state_write_bytes: 1 << 20,
            max_log_lines: 100,
            max_log_line_bytes: 1024,
            max_commissions: 100,
        }
    }
}

/// How many plugin instances may be alive at once; callers bound their concurrency to this.
pub const MAX_CONCURRENT_INSTANCES: u32 = 64;

const EPOCH_TICK: Duration = Duration::from_millis(10);

/// What each of the pool's memory slots may keep resident between instances, counting only
/// pages a plugin touched: the process keeps at most this times the pool's memories (512 MiB),
/// and only if every slot's plugin dirtied this much. A Rust plugin touches far less per event.
const KEEP_RESIDENT_MEMORY_BYTES: usize = 4 << 20;
const KEEP_RESIDENT_TABLE_BYTES: usize = 64 << 10;

/// The committed state a plugin reads through (its operator's, and only its operator's).
pub trait StateSource: Send + Sync {
    fn get(&self, key: &str) -> anyhow::Result<Option<Vec<u8>>>;
}

#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("{0}")]
    NotAComponent(String),
    #[error("the component is not valid: {0}")]
    Invalid(String),
    #[error(transparent)]
    Contract(#[from] ContractError),
    #[error("the smoke run on a synthetic `{SMOKE_EVENT_KIND}` event failed: {0}")]
    SmokeRun(String),
}

/// The kind of the synthetic event every upload is run on. Plugins usually pay nothing for a
/// kind they do not know; what the smoke run catches is a plugin that cannot run at all.
pub const SMOKE_EVENT_KIND: &str = "commission-host.smoke";

/// A compiled plugin, ready to instantiate, built against one of the contract versions.
pub enum LoadedPlugin {
    V0_1_0(v0_1_0::PluginPre<PluginHost>),
    V0_2_0(v0_2_0::PluginPre<PluginHost>),
}

/// The event and context as the plugin receives them (in the latest contract's types).
pub struct PluginInput {
    pub event: PluginEvent,
    pub context: PluginContext,
}

pub use v0_2_0::commission::plugin::types::{
    Affiliate as PluginAffiliate, Commission as PluginCommission, CommissionRef as PluginCommissionRef,
    Context as PluginContext, Event as PluginEvent, Period as PluginPeriod,
};

/// What a plugin is asked.
enum Call<'a> {
    Evaluate(&'a PluginInput),
    Settle(&'a PluginPeriod, &'a PluginContext),
}

/// What one evaluation did, whether or not it succeeded.
pub struct Evaluation {
    pub result: Result<Vec<PluginCommission>, Failure>,
    pub state_reads: BTreeMap<String, Option<Vec<u8>>>,
    pub state_writes: BTreeMap<String, Option<Vec<u8>>>,
    /// (level, message)
    pub logs: Vec<(String, String)>,
    pub fuel_used: u64,
}

pub struct Sandbox {
    engine: Engine,
    linker: Linker<PluginHost>,
    limits: Limits,
}

impl Sandbox {
    pub fn new(limits: Limits) -> anyhow::Result<Self> {
        let engine = build_engine()?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
        v0_1_0::Plugin::add_to_linker::<_, wasmtime::component::HasSelf<_>>(&mut linker, |host| host)?;
        v0_2_0::Plugin::add_to_linker::<_, wasmtime::component::HasSelf<_>>(&mut linker, |host| host)?;
        let ticker = engine.weak();
        std::thread::Builder::new().name("epoch-ticker".into()).spawn(move || {
            while let Some(engine) = ticker.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        })?;
        Ok(Self { engine, linker, limits })
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Names a compiled artifact by the component's hash and everything about this engine that
    /// makes compiled code incompatible (wasmtime version, target, settings).
    pub fn artifact_key(&self, sha256: &str) -> String {
        let mut hasher = DefaultHasher::new();
        self.engine.precompile_compatibility_hash().hash(&mut hasher);
        format!("{sha256}-{:016x}", hasher.finish())
    }

    /// Validates an uploaded component against the contract and compiles it. Returns the
    /// contract version and the compiled artifact to keep.
    pub fn compile(&self, wasm: &[u8]) -> Result<(&'static str, Vec<u8>), UploadError> {
        match wasm.get(..8) {
            Some([0, b'a', b's', b'm', 0x0d, 0x00, 0x01, 0x00]) => {}
            Some([0, b'a', b's', b'm', 0x01, 0x00, 0x00, 0x00]) => {
                return Err(UploadError::NotAComponent(
                    "this is a core wasm module, not a component: build the plugin for the \
                     wasm32-wasip2 target (cargo build-plugins)"
                        .into(),
                ));
            }
            _ => {
                return Err(UploadError::NotAComponent(
                    "this is not a WebAssembly component (it does not start with the component \
                     header): upload the .wasm built for wasm32-wasip2"
                        .into(),
                ));
            }
        }
        // Validates the whole binary before compiling any of it.
        let artifact =
            self.engine.precompile_component(wasm).map_err(|error| UploadError::Invalid(format!("{error:#}")))?;
        let component = self.deserialize(&artifact).map_err(|error| UploadError::Invalid(format!("{error:#}")))?;
        let contract = contract::check(&self.engine, &component)?;
        self.linker.instantiate_pre(&component).map_err(|error| UploadError::Invalid(format!("{error:#}")))?;
        Ok((contract, artifact))
    }

    /// Loads an artifact made by [`Sandbox::compile`] on an engine with the same artifact key.
    pub fn load(&self, artifact: &[u8]) -> anyhow::Result<LoadedPlugin> {
        let component = self.deserialize(artifact)?;
        let contract = contract::check(&self.engine, &component)?;
        let pre = self.linker.instantiate_pre(&component)?;
        Ok(match contract {
            "0.1.0" => LoadedPlugin::V0_1_0(v0_1_0::PluginPre::new(pre)?),
            _ => LoadedPlugin::V0_2_0(v0_2_0::PluginPre::new(pre)?),
        })
    }

    fn deserialize(&self, artifact: &[u8]) -> anyhow::Result<Component> {
        // SAFETY: artifacts come only from `Engine::precompile_component` of this host, kept in
        // its own store under a key that includes the engine's compatibility hash; wasmtime
        // still checks the version and settings recorded in the artifact.
        Ok(unsafe { Component::deserialize(&self.engine, artifact) }?)
    }

    /// Runs one event through a fresh instance of the plugin, under `limits` (the host's
    /// defaults with the operator's overrides).
    pub fn evaluate(
        &self,
        plugin: &LoadedPlugin,
        input: &PluginInput,
        state: Arc<dyn StateSource>,
        limits: Limits,
    ) -> Evaluation {
        self.call(plugin, Call::Evaluate(input), input.event.occurred_at, state, limits)
    }

    /// Runs several events through one instance, one after the other, as a host that reused
    /// instances would: what the host does not do, because the plugin's memory would then carry
    /// from one event to the next and results would depend on which events shared an instance.
    /// It is here to be measured beside [`Sandbox::evaluate`] (the `plugin_call` benchmark), so
    /// that the price of a fresh instance per event stays known. The instance keeps the first
    /// event's clock and one meter of fuel for all of them.
    pub fn evaluate_on_one_instance(
        &self,
        plugin: &LoadedPlugin,
        inputs: &[PluginInput],
        state: Arc<dyn StateSource>,
        limits: Limits,
    ) -> anyhow::Result<Vec<Result<Vec<PluginCommission>, String>>> {
        let LoadedPlugin::V0_2_0(pre) = plugin else {
            anyhow::bail!("measured for the latest contract only");
        };
        let clock_ms = inputs.first().map_or(0, |input| input.event.occurred_at);
        let mut store = Store::new(&self.engine, PluginHost::new(limits, state, clock_ms));
        store.limiter(|host| host);
        store.set_fuel(limits.fuel)?;
        store.set_epoch_deadline((limits.timeout.as_millis() / EPOCH_TICK.as_millis()).max(1) as u64);
        let instance = pre.instantiate(&mut store)?;
        let rules = instance.commission_plugin_rules();
        inputs.iter().map(|input| Ok(rules.call_evaluate(&mut store, &input.event, &input.context)?)).collect()
    }

    /// Asks the plugin what the head of `context.referral_chain` earns for `period` as a whole.
    /// A plugin built against 0.1.0 has no `settle`: it earns nothing, and is not instantiated.
    pub fn settle(
        &self,
        plugin: &LoadedPlugin,
        period: &PluginPeriod,
        context: &PluginContext,
        state: Arc<dyn StateSource>,
        limits: Limits,
    ) -> Evaluation {
        // The period's last instant is the settlement's clock.
        self.call(plugin, Call::Settle(period, context), period.ends_at - 1, state, limits)
    }

    fn call(
        &self,
        plugin: &LoadedPlugin,
        call: Call<'_>,
        clock_ms: i64,
        state: Arc<dyn StateSource>,
        limits: Limits,
    ) -> Evaluation {
        let host = PluginHost::new(limits, state, clock_ms);
        let mut store = Store::new(&self.engine, host);
        store.limiter(|host| host);
        let fuel = limits.fuel;
        let ready = store
            .set_fuel(fuel)
            .map(|()| store.set_epoch_deadline((limits.timeout.as_millis() / EPOCH_TICK.as_millis()).max(1) as u64));
        let outcome = ready.and_then(|()| match (plugin, call) {
            (LoadedPlugin::V0_2_0(pre), call) => {
                let rules = pre.instantiate(&mut store)?;
                let rules = rules.commission_plugin_rules();
                match call {
                    Call::Evaluate(input) => rules.call_evaluate(&mut store, &input.event, &input.context),
                    Call::Settle(period, context) => rules.call_settle(&mut store, period, context),
                }
            }
            (LoadedPlugin::V0_1_0(pre), Call::Evaluate(input)) => {
                let rules = pre.instantiate(&mut store)?;
                let answer = rules.commission_plugin_rules().call_evaluate(
                    &mut store,
                    &(&input.event).into(),
                    &(&input.context).into(),
                )?;
                Ok(answer.map(|commissions| commissions.into_iter().map(Into::into).collect()))
            }
            (LoadedPlugin::V0_1_0(_), Call::Settle(..)) => Ok(Ok(Vec::new())),
        });
        let fuel_used = fuel - store.get_fuel().unwrap_or(0);
        let result = match outcome {
            Ok(Ok(commissions)) => Ok(commissions),
            Ok(Err(message)) => Err(Failure { kind: FailureKind::RuleError, message }),
            Err(error) => Err(classify(&error, &limits)),
        };
        let host = store.into_data();
        let mut logs = host.logs;
        if host.logs_dropped > 0 {
            logs.push((
                "warn".into(),
                format!("{} more log lines dropped (limit {})", host.logs_dropped, limits.max_log_lines),
            ));
        }
        Evaluation { result, state_reads: host.state.reads, state_writes: host.state.writes, logs, fuel_used }
    }
}

fn classify(error: &wasmtime::Error, limits: &Limits) -> Failure {
    if let Some(limit) = error.chain().find_map(|cause| cause.downcast_ref::<HostLimit>()) {
        let kind = match limit {
            HostLimit::Memory { .. } => FailureKind::OutOfMemory,
            _ => FailureKind::LimitExceeded,
        };
        return Failure { kind, message: limit.to_string() };
    }
    let (kind, message) = match error.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => {
            (FailureKind::OutOfFuel, format!("the plugin ran out of fuel ({} units per event)", limits.fuel))
        }
        Some(Trap::Interrupt) => {
            (FailureKind::Timeout, format!("the plugin ran past its deadline of {:?}", limits.timeout))
        }
        Some(Trap::StackOverflow) => (FailureKind::StackOverflow, "the plugin overflowed its stack".to_owned()),
        Some(trap) => (FailureKind::Trap, format!("the plugin trapped: {trap}")),
        None => (FailureKind::Trap, format!("the plugin failed: {error:#}")),
    };
    Failure { kind, message }
}

fn build_engine() -> anyhow::Result<Engine> {
    let mut config = Config::new();
    config
        .wasm_component_model(true)
        .consume_fuel(true)
        .epoch_interruption(true)
        // Determinism: the same inputs give the same outputs on every machine.
        .cranelift_nan_canonicalization(true)
        .relaxed_simd_deterministic(true)
        .max_wasm_stack(1 << 20);
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(MAX_CONCURRENT_INSTANCES)
        .total_core_instances(MAX_CONCURRENT_INSTANCES * 8)
        .total_memories(MAX_CONCURRENT_INSTANCES * 2)
        .total_tables(MAX_CONCURRENT_INSTANCES * 8)
        .total_stacks(MAX_CONCURRENT_INSTANCES)
        .max_memory_size(CEILINGS.memory_bytes);
    // Most of a fresh instance's cost is the kernel's: the previous event's pages given back
    // with madvise, then a page fault for each page the next event touches (BENCHMARKS.md).
    // Where Linux can say which pages an instance dirtied (PAGEMAP_SCAN, Linux 6.7 and later),
    // the pool keeps memory resident and rewrites only those pages to their initial contents:
    // the next instance starts from the same bytes, without the faults. Without the ioctl,
    // keeping memory resident would mean a memset of all of it per event, so it stays off.
    if PoolingAllocationConfig::is_pagemap_scan_available() {
        pool.pagemap_scan(Enabled::Yes)
            .linear_memory_keep_resident(KEEP_RESIDENT_MEMORY_BYTES)
            .table_keep_resident(KEEP_RESIDENT_TABLE_BYTES);
    }
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    match Engine::new(&config) {
        Ok(engine) => Ok(engine),
        Err(error) => {
            // Pooling reserves virtual address space up front; small or restricted machines
            // refuse it. Instances then cost more to create, but everything else holds.
            tracing::warn!(%error, "the pooling allocator is unavailable; allocating instances on demand");
            config.allocation_strategy(InstanceAllocationStrategy::OnDemand);
            Ok(Engine::new(&config)?)
        }
    }
}
