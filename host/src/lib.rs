//! commission-host: a multi-tenant engine for event-driven affiliate commissions.
//!
//! Follow an event from the socket to the store:
//! [`server`] (hyper) -> [`api`] (routes, auth, JSON errors; [`console`]'s pages call it) -> [`event`] (parse and check) ->
//! [`pipeline`] (one sequencer per operator: attribute, evaluate in order, commit, flush) -> [`sandbox`] (the
//! operator's WebAssembly plugin) -> [`committer`] (one sled transaction for every event
//! waiting) -> [`store`] (sled, group flush).
//!
//! For plugin authors, offline: [`fixtures`] runs fixture files through a component in the same
//! sandbox, and [`plugins::validate`] is the validation an upload does.

pub mod amounts;
pub mod api;
pub mod cluster;
pub mod committer;
pub mod console;
pub mod event;
pub mod fixtures;
#[cfg(test)]
mod layering;
pub mod metrics;
pub mod pipeline;
pub mod plugins;
pub mod replay;
pub mod sandbox;
pub mod secrets;
pub mod server;
pub mod shadow;
pub mod store;
pub mod terms;
pub mod verify;
mod verify_ahead;
pub mod verify_jobs;
