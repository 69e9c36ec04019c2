//! `plugin upload PLUGIN.wasm --operator OP --url URL [--activate]`: the upload route
//! (`POST /v1/operators/{op}/plugins`) from the command line, with the operator's API key.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;

#[derive(clap::Args)]
pub struct Args {
    /// The component, as `plugin build` made it.
    plugin: PathBuf,
    #[command(flatten)]
    host: super::Remote,
    /// Make the new version evaluate new events at once.
    #[arg(long)]
    activate: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let wasm = super::read_component(&args.plugin)?;
    let url = format!("{}/v1/operators/{}/plugins?activate={}", args.host.base(), args.host.operator, args.activate);
    // The host compiles the component before it answers: minutes for a large one.
    let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(300)).build()?;
    let response = client
        .post(&url)
        .bearer_auth(&args.host.api_key)
        .header(reqwest::header::CONTENT_TYPE, "application/wasm")
        .body(wasm)
        .send()
        .with_context(|| format!("sending the component to {url} (is the host running there? check --url)"))?;
    let status = response.status();
    let body: serde_json::Value = response.json().with_context(|| {
        format!("the answer of {url} ({status}) is not the host's JSON: is --url a commission-host?")
    })?;
    if !status.is_success() {
        let message = body["message"].as_str().unwrap_or("no message");
        let hint = match status.as_u16() {
            401 | 403 => " (check --operator and the API key: --api-key or COMMISSION_HOST_API_KEY)",
            413 => " (start the host with a larger `serve --max-plugin-bytes`)",
            422 => " (`commission-host plugin check` shows the same verdict offline)",
            _ => "",
        };
        anyhow::bail!("the host refused the upload ({status}): {message}{hint}");
    }
    println!(
        "uploaded {} as version {} of operator {} (contract {}, sha256 {}){}",
        args.plugin.display(),
        body["version"],
        args.host.operator,
        body["contract"].as_str().unwrap_or("?"),
        body["sha256"].as_str().unwrap_or("?"),
        if args.activate { ", active" } else { "; activate it with POST .../plugins/{version}/activate" }
    );
    Ok(ExitCode::SUCCESS)
}
