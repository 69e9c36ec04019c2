use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use commission_host::api::{self, AppState, BodyLimits};
use commission_host::metrics::Metrics;
use commission_host::pipeline::Pipeline;
use commission_host::plugins::PluginRegistry;
use commission_host::sandbox::{Limits, Sandbox};
use commission_host::store::Store;
use commission_host::{secrets, server, shadow};

mod cli;
mod demo;

/// Event-driven affiliate commissions, with each operator's rules as a WebAssembly plugin.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the HTTP API on a sled ledger.
    Serve {
        /// Where the ledger lives (created if missing).
        #[arg(long, default_value = "./data")]
        data: PathBuf,
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Also set up a `demo` operator with the multi-event reference plugin and print
        /// example calls. Its credentials are issued anew at each start.
        #[arg(long)]
        demo: bool,
        /// The plugin the demo operator runs.
        #[arg(long, default_value = "target/wasm32-wasip2/plugin/multi_event.wasm")]
        demo_plugin: PathBuf,
        #[arg(long, value_enum, default_value_t = LogFormat::Text)]
        log_format: LogFormat,
        /// The largest plugin component an upload takes, in bytes. Components of languages that
        /// ship an interpreter are larger than Rust's (a Python plugin is about 18 MiB).
        #[arg(long, default_value_t = BodyLimits::default().plugin_bytes)]
        max_plugin_bytes: usize,
    },
    /// Write, build, test, check, upload and trace plugins: the plugin author's tools.
    Plugin {
        #[command(subcommand)]
        command: cli::PluginCommand,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> anyhow::Result<ExitCode> {
    match Cli::parse().command {
        Command::Serve { data, listen, demo, demo_plugin, log_format, max_plugin_bytes } => {
            init_tracing(log_format);
            let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            let limits = BodyLimits { plugin_bytes: max_plugin_bytes, ..BodyLimits::default() };
            runtime.block_on(serve(data, listen, demo.then_some(demo_plugin), limits))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Plugin { command } => {
            end_quietly_on_a_closed_stdout();
            Ok(cli::run(command))
        }
    }
}

/// A command-line tool whose reader goes away (`plugin check x.wasm | head -1`) should end
/// quietly, as `cat` does, not panic in `println!` with a broken-pipe backtrace. Rust ignores
/// SIGPIPE so that a write returns an error; the author's tools take the Unix default back.
/// `serve` keeps ignoring it: a client that hangs up must not stop the host.
fn end_quietly_on_a_closed_stdout() {
    // SAFETY: called before any other thread starts; SIG_DFL is a valid disposition for SIGPIPE.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

async fn serve(
    data: PathBuf,
    listen: SocketAddr,
    demo_plugin: Option<PathBuf>,
    body_limits: BodyLimits,
) -> anyhow::Result<()> {
    let admin_token = match std::env::var("COMMISSION_HOST_ADMIN_TOKEN") {
        Ok(token) if token.len() >= 16 => token,
        Ok(_) => {
            anyhow::bail!("COMMISSION_HOST_ADMIN_TOKEN must be at least 16 characters; unset it to have one generated")
        }
        Err(_) => {
            let token = secrets::random_text();
            println!("admin token (set COMMISSION_HOST_ADMIN_TOKEN to choose one): {token}");
            token
        }
    };
    let store = Arc::new(Store::open(&data).with_context(|| format!("opening the ledger in {}", data.display()))?);
    let sandbox = Arc::new(Sandbox::new(Limits::default()).context("configuring the wasm sandbox")?);
    let metrics = Arc::new(Metrics::default());
    let plugins = Arc::new(PluginRegistry::new(store.clone(), sandbox.clone(), metrics.clone()));
    let pipeline = Pipeline::new(store, sandbox, plugins, metrics);
    shadow::spawn_follower(pipeline.clone()).context("starting the shadow follower")?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on {listen} (is another host running there? choose one with --listen)"))?;
    let address = listener.local_addr()?;
    if let Some(plugin) = demo_plugin {
        demo::set_up(&pipeline, &plugin, address).await?;
    }
    let state = Arc::new(AppState::new(pipeline, secrets::sha256_hex(&admin_token), body_limits));
    // The first line on stdout after start-up: scripts and tests read the address from it.
    println!("listening on http://{address}");
    tracing::info!(%address, data = %data.display(), "serving");
    let pipeline = state.pipeline.clone();
    let stop = async move {
        tokio::select! {
            () = server::shutdown_signal() => None,
            error = pipeline.storage_failed() => Some(error),
        }
    };
    if let Some(error) = server::serve(listener, api::router(state.clone()), stop).await {
        // Exiting with an error lets the supervisor (systemd, Kubernetes) start the host again;
        // opening the ledger anew recovers it from its log once the disk can take writes.
        anyhow::bail!("the ledger cannot write again in this process, so the host stops: {error}");
    }
    state.pipeline.make_durable().await?;
    tracing::info!("stopped; the ledger is flushed");
    Ok(())
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,cranelift_codegen=warn,wasmtime=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
