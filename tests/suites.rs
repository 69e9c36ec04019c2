//! Every end-to-end suite, as modules of one test binary.
//!
//! Each suite drives the real `commission-host` binary over HTTP, on real sled directories, with
//! the real wasm plugins; they share the harness in `common`. One binary rather than one per
//! suite (there were 32): each binary compiled the harness and the generic code of reqwest and
//! serde_json it uses again, in release, and linked them again. Run one suite with its module
//! as the filter:
//! `cargo test --release --test suites -- closes::`.

mod common;

mod bad_input;
mod batches;
mod checkpoints;
mod closes;
mod cluster;
mod console;
mod crash_loop;
mod disk_full;
mod durability;
mod fuzz_corpus;
mod guide;
mod ingest;
mod late_events;
mod listings;
mod migration;
mod models;
mod models_catalog;
mod openapi;
mod payouts;
mod platform;
mod plugin_cli;
mod properties;
mod replay;
mod restatement;
mod reversals;
mod rule_changes;
mod sandbox;
mod second_language;
mod security;
mod sequencer;
mod storage_quota;
mod transfer;
mod verify_ahead;
mod verify_jobs;
