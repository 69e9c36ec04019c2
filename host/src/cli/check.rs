//! `plugin check PLUGIN.wasm`: what an upload validates, without a server: the component
//! header, imports and exports against the contract, compilation, and a smoke run on a
//! synthetic event. An author hears the upload's verdict before uploading.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context as _;
use commission_host::api::BodyLimits;
use commission_host::plugins;
use commission_host::sandbox::{Limits, Sandbox};
use sha2::{Digest, Sha256};

#[derive(clap::Args)]
pub struct Args {
    /// The component, as `plugin build` made it.
    plugin: PathBuf,
}

pub fn run(Args { plugin }: Args) -> anyhow::Result<ExitCode> {
    let wasm = super::read_component(&plugin)?;
    let sandbox = Sandbox::new(Limits::default()).context("configuring the wasm sandbox")?;
    let started = Instant::now();
    let validated = plugins::validate(&sandbox, "check", &wasm)
        .with_context(|| format!("{}: an upload would refuse it", plugin.display()))?;
    let elapsed = started.elapsed();
    println!("{}: an upload would accept it", plugin.display());
    println!("  contract   commission:plugin@{}", validated.contract);
    println!("  size       {} bytes", wasm.len());
    println!("  sha256     {}", hex::encode(Sha256::digest(&wasm)));
    println!("  compiled   {} bytes of native code and smoke-run in {:.2?}", validated.artifact.len(), elapsed);
    let limit = BodyLimits::default().plugin_bytes;
    if wasm.len() > limit {
        println!(
            "  note       larger than a host's default upload limit of {limit} bytes: the host must be started \
             with `serve --max-plugin-bytes {}` or more",
            wasm.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}
