//! `commission-host plugin ...`: the plugin author's path from nothing to an uploaded plugin,
//! without reading the host's code. One file per step:
//!
//! | command | file |
//! | --- | --- |
//! | `plugin new NAME` | [`new`]: a ready crate from the template shipped in this binary |
//! | `plugin build` | [`build`]: cargo for `wasm32-wasip2`, with the fix when the target is missing |
//! | `plugin test PLUGIN.wasm FIXTURES...` | [`test`]: fixture files through the component, in the server's sandbox |
//! | `plugin check PLUGIN.wasm` | [`check`]: the validation an upload does, offline |
//! | `plugin upload PLUGIN.wasm --operator OP --url URL` | [`upload`] |
//! | `plugin trace PLUGIN.wasm EVENT` | [`trace`]: one event's logs, state, commissions and fuel |

mod build;
mod check;
pub mod import;
mod new;
mod test;
mod trace;
mod upload;

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Subcommand;
use commission_host::sandbox::{Limits, LoadedPlugin, Sandbox};

#[derive(Subcommand)]
pub enum PluginCommand {
    /// Write a new plugin crate, ready to build and test, from the template in this binary.
    New(new::Args),
    /// Build the plugin crate in the current directory (or --path) into a wasm component.
    Build(build::Args),
    /// Run fixture files through the component, in the server's sandbox; show any difference.
    Test(test::Args),
    /// Validate the component as an upload would: contract, compilation, a smoke run.
    Check(check::Args),
    /// Upload the component to a running host as the operator's next version.
    Upload(upload::Args),
    /// Run one event through the component and show its logs, state, commissions and fuel.
    Trace(trace::Args),
}

/// Runs a plugin command. An error is printed with its causes, each a sentence that says the
/// fix, and exits with 2 (1 is `plugin test`'s "some step differs").
pub fn run(command: PluginCommand) -> ExitCode {
    finish(execute(command))
}

/// A command's exit: an error printed with its causes, each a sentence that says the fix, and 2.
pub fn finish(result: anyhow::Result<ExitCode>) -> ExitCode {
    result.unwrap_or_else(|error| {
        eprintln!("error: {error}");
        for cause in error.chain().skip(1) {
            eprintln!("  because: {cause}");
        }
        ExitCode::from(2)
    })
}

fn execute(command: PluginCommand) -> anyhow::Result<ExitCode> {
    // Only warnings: the commands' own output is the answer.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match command {
        PluginCommand::New(args) => new::run(args),
        PluginCommand::Build(args) => build::run(args),
        PluginCommand::Test(args) => test::run(args),
        PluginCommand::Check(args) => check::run(args),
        PluginCommand::Upload(args) => upload::run(args),
        PluginCommand::Trace(args) => trace::run(args),
    }
}

/// Reads a component file, saying how to make one when it is missing.
fn read_component(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| {
        format!(
            "reading the component {}: build it first with `commission-host plugin build` (it prints the path of \
             the .wasm)",
            path.display()
        )
    })
}

/// A sandbox with the server's default limits, and the component compiled into it.
fn load_component(path: &Path) -> anyhow::Result<(Sandbox, LoadedPlugin)> {
    let wasm = read_component(path)?;
    let sandbox = Sandbox::new(Limits::default()).context("configuring the wasm sandbox")?;
    let (_, artifact) = sandbox
        .compile(&wasm)
        .with_context(|| format!("{} is not a plugin this host can run; `plugin check` says more", path.display()))?;
    let plugin = sandbox.load(&artifact)?;
    Ok((sandbox, plugin))
}

/// Where a command that talks to a running host sends its requests, and as whom.
#[derive(clap::Args)]
pub struct Remote {
    /// The operator.
    #[arg(long)]
    operator: String,
    /// The host, e.g. `http://127.0.0.1:8080`.
    #[arg(long)]
    url: String,
    /// The operator's API key (or the admin token).
    #[arg(long, env = "COMMISSION_HOST_API_KEY", hide_env_values = true)]
    api_key: String,
}

impl Remote {
    /// The host's URL without a trailing `/`, for paths to follow.
    fn base(&self) -> &str {
        self.url.trim_end_matches('/')
    }
}
