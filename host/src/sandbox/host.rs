//! What a plugin's instance sees of the host: its operator's state, a log, deterministic WASI,
//! and limits on every resource. One `PluginHost` per event, dropped with its `Store`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rand::SeedableRng;
use rand::rngs::StdRng;
use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::clocks::{HostMonotonicClock, HostWallClock};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::contract::v0_1_0::commission::plugin as v0_1_0;
use super::contract::v0_2_0::commission::plugin as v0_2_0;
use super::{Limits, StateSource};

/// A host-side limit a plugin ran into; classified as `limit_exceeded` or `out_of_memory`.
#[derive(Debug, thiserror::Error)]
pub enum HostLimit {
    #[error("plugin memory would grow to {desired} bytes, over the limit of {limit} bytes")]
    Memory { desired: usize, limit: usize },
    #[error("plugin table would grow to {desired} elements, over the limit of {limit}")]
    Table { desired: usize, limit: usize },
    #[error("state key of {size} bytes is over the limit of {limit} bytes")]
    StateKey { size: usize, limit: usize },
    #[error("state writes of this event reached {size} bytes, over the limit of {limit} bytes")]
    StateWrites { size: usize, limit: usize },
    #[error("reading state failed: {0}")]
    StateRead(String),
}

pub struct PluginHost {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: Limits,
    pub(super) state: StateAccess,
    pub(super) logs: Vec<(String, String)>,
    pub(super) logs_dropped: usize,
}

/// The plugin's view of its state: committed values read through, its own writes buffered.
pub(super) struct StateAccess {
    source: Arc<dyn StateSource>,
    pub(super) reads: BTreeMap<String, Option<Vec<u8>>>,
    pub(super) writes: BTreeMap<String, Option<Vec<u8>>>,
    written_bytes: usize,
}

impl PluginHost {
    pub fn new(limits: Limits, state: Arc<dyn StateSource>, event_time_ms: i64) -> Self {
        Self {
            wasi: deterministic_wasi(event_time_ms),
            table: ResourceTable::new(),
            limits,
            state: StateAccess { source: state, reads: BTreeMap::new(), writes: BTreeMap::new(), written_bytes: 0 },
            logs: Vec::new(),
            logs_dropped: 0,
        }
    }

    fn check_key(&self, key: &str) -> Result<(), HostLimit> {
        if key.len() > self.limits.max_state_key_bytes {
            return Err(HostLimit::StateKey { size: key.len(), limit: self.limits.max_state_key_bytes });
        }
        Ok(())
    }

    fn record_write(&mut self, key: String, value: Option<Vec<u8>>) -> Result<(), HostLimit> {
        self.state.written_bytes += key.len() + value.as_ref().map_or(0, Vec::len);
        if self.state.written_bytes > self.limits.max_state_write_bytes {
            return Err(HostLimit::StateWrites {
                size: self.state.written_bytes,
                limit: self.limits.max_state_write_bytes,
            });
        }
        self.state.writes.insert(key, value);
        Ok(())
    }
}

/// WASI with no authority and nothing that varies between runs: no preopened directories, no
/// environment, no arguments, sockets denied (TCP, UDP and name lookup switched off, and the
/// default address check refusing every address), stdin closed, stdout and stderr discarded, the wall
/// clock stopped at the event's time, the monotonic clock at zero, and randomness from a fixed
/// seed. A plugin that reads "now" gets the event's time; one that draws random numbers gets
/// the same ones on every replay.
fn deterministic_wasi(event_time_ms: i64) -> WasiCtx {
    const SEED: u64 = 0x636f_6d6d_6973_7369; // "commissi"
    WasiCtx::builder()
        .wall_clock(StoppedWallClock(Duration::from_millis(event_time_ms.max(0) as u64)))
        .monotonic_clock(StoppedMonotonicClock)
        .secure_random(StdRng::seed_from_u64(SEED))
        .insecure_random(StdRng::seed_from_u64(SEED))
        .insecure_random_seed(u128::from(SEED))
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .build()
}

struct StoppedWallClock(Duration);

impl HostWallClock for StoppedWallClock {
    fn resolution(&self) -> Duration {
        Duration::from_millis(1)
    }
    fn now(&self) -> Duration {
        self.0
    }
}

struct StoppedMonotonicClock;

impl HostMonotonicClock for StoppedMonotonicClock {
    fn resolution(&self) -> u64 {
        1
    }
    fn now(&self) -> u64 {
        0
    }
}

impl WasiView for PluginHost {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl ResourceLimiter for PluginHost {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.limits.memory_bytes {
            return Err(HostLimit::Memory { desired, limit: self.limits.memory_bytes }.into());
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.limits.table_elements {
            return Err(HostLimit::Table { desired, limit: self.limits.table_elements }.into());
        }
        Ok(true)
    }

    fn instances(&self) -> usize {
        self.limits.instances
    }
    fn tables(&self) -> usize {
        self.limits.instances
    }
    fn memories(&self) -> usize {
        self.limits.instances
    }
}

/// What both contract versions' `state` and `log` imports do; the per-version trait impls
/// below only convert their types.
impl PluginHost {
    fn state_get(&mut self, key: String) -> wasmtime::Result<Option<Vec<u8>>> {
        self.check_key(&key)?;
        if let Some(written) = self.state.writes.get(&key) {
            return Ok(written.clone());
        }
        if let Some(read) = self.state.reads.get(&key) {
            return Ok(read.clone());
        }
        let value = self.state.source.get(&key).map_err(|error| HostLimit::StateRead(error.to_string()))?;
        self.state.reads.insert(key, value.clone());
        Ok(value)
    }

    fn state_set(&mut self, key: String, value: Vec<u8>) -> wasmtime::Result<()> {
        self.check_key(&key)?;
        if value.len() > self.limits.max_state_write_bytes {
            return Err(HostLimit::StateWrites { size: value.len(), limit: self.limits.max_state_write_bytes }.into());
        }
        Ok(self.record_write(key, Some(value))?)
    }

    fn state_delete(&mut self, key: String) -> wasmtime::Result<()> {
        self.check_key(&key)?;
        Ok(self.record_write(key, None)?)
    }

    fn log_line(&mut self, level: &'static str, message: String) -> wasmtime::Result<()> {
        if self.logs.len() >= self.limits.max_log_lines {
            self.logs_dropped += 1;
            return Ok(());
        }
        let mut message = message;
        if message.len() > self.limits.max_log_line_bytes {
            let mut end = self.limits.max_log_line_bytes;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
            message.push_str("...");
        }
        tracing::debug!(target: "plugin", level, %message);
        self.logs.push((level.to_owned(), message));
        Ok(())
    }
}

/// Implements one contract version's imports on [`PluginHost`].
macro_rules! imports_for {
    ($version:ident) => {
        impl $version::types::Host for PluginHost {}

        impl $version::state::Host for PluginHost {
            fn get(&mut self, key: String) -> wasmtime::Result<Option<Vec<u8>>> {
                self.state_get(key)
            }
            fn set(&mut self, key: String, value: Vec<u8>) -> wasmtime::Result<()> {
                self.state_set(key, value)
            }
            fn delete(&mut self, key: String) -> wasmtime::Result<()> {
                self.state_delete(key)
            }
        }

        impl $version::log::Host for PluginHost {
            fn log(&mut self, level: $version::log::Level, message: String) -> wasmtime::Result<()> {
                use $version::log::Level;
                let level = match level {
                    Level::Debug => "debug",
                    Level::Info => "info",
                    Level::Warn => "warn",
                    Level::Error => "error",
                };
                self.log_line(level, message)
            }
        }
    };
}

imports_for!(v0_1_0);
imports_for!(v0_2_0);
