use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use commission_host::api::{self, AppState, BodyLimits};
use commission_host::cluster::{Cluster, ClusterConfig};
use commission_host::metrics::Metrics;
use commission_host::pipeline::{
    CacheBounds, DEFAULT_CACHE_BYTES, DEFAULT_OPERATOR_CACHE_BYTES, DEFAULT_QUEUE_EVENTS, Pipeline, Scheduling,
    default_verify_helpers,
};
use commission_host::plugins::PluginRegistry;
use commission_host::sandbox::{Limits, Sandbox};
use commission_host::store::Store;
use commission_host::{secrets, server, shadow};

mod cli;
mod demo;

/// mimalloc, not glibc's malloc: see the reason beside the dependency in Cargo.toml.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
        /// Seconds a request body (other than a plugin upload) may take to arrive, whole; a
        /// slower one gets 408 and its connection is closed.
        #[arg(long, default_value_t = BodyLimits::default().read_timeout.as_secs())]
        body_timeout_secs: u64,
        /// Seconds a plugin upload's body may take to arrive.
        #[arg(long, default_value_t = BodyLimits::default().plugin_read_timeout.as_secs())]
        plugin_body_timeout_secs: u64,
        /// Connections open at once, in all. Kept below the process's file limit (raised to its
        /// hard limit at start), less a reserve for the ledger's own files.
        #[arg(long, default_value_t = 10_000)]
        max_connections: usize,
        /// Connections open at once from one peer address (an IPv6 peer: its /64). A peer over
        /// it has new connections closed, so one address cannot take the others' places.
        #[arg(long, default_value_t = 256)]
        max_connections_per_peer: usize,
        /// Operators' turns that evaluate at once, over all operators, each on one thread
        /// (default: the cores available). Busy operators take turns on them, a few ms each.
        #[arg(long)]
        evaluation_threads: Option<usize>,
        /// Events one operator's queue holds while its sequencer works; a request that does not
        /// fit is refused with 503 and Retry-After, nothing of it written.
        #[arg(long, default_value_t = DEFAULT_QUEUE_EVENTS)]
        operator_queue_events: usize,
        /// Bytes of plugin state the sequencers keep in memory between turns, over all
        /// operators (the least recently used go first); 0 reads the ledger every time.
        #[arg(long, default_value_t = DEFAULT_CACHE_BYTES)]
        state_cache_bytes: usize,
        /// Bytes of plugin state kept in memory for one operator, within --state-cache-bytes.
        #[arg(long, default_value_t = DEFAULT_OPERATOR_CACHE_BYTES)]
        state_cache_operator_bytes: usize,
        /// The quota on the plugin state each operator stores, in bytes, for operators without
        /// their own (`state_bytes` in PUT /v1/operators/{op}/limits); none unless given.
        #[arg(long)]
        state_quota_bytes: Option<u64>,
        /// Keep a checkpoint of each operator's plugin state every this many events (what
        /// changed since the previous one, written off the operator's turn), where a verify
        /// job's resume points, a verify's helpers, a close's replay and a checkpoint's repair
        /// start. 0: only before each month's settlements.
        #[arg(long, default_value_t = commission_host::pipeline::checkpoints::DEFAULT_CHECKPOINT_EVERY)]
        checkpoint_every: u64,
        /// Threads a verify adds to its own to evaluate, ahead of it, the stretches between
        /// stored checkpoints (default: one per core but one). 0: a verify runs on one thread,
        /// leaving the other cores to live events.
        #[arg(long)]
        verify_helpers: Option<usize>,
        /// Bytes of the ledger sled keeps in memory (its page cache). A ledger past it is read
        /// from disk where it is not cached: raise it toward the directory's size when late
        /// events, statements or verify over a large history wait on the disk.
        #[arg(long, default_value_t = commission_host::store::DEFAULT_LEDGER_CACHE_BYTES)]
        ledger_cache_bytes: u64,
        /// Leave out the operator console and affiliate portal (the HTML pages under /console/).
        #[arg(long)]
        no_console: bool,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// Print the HTTP API's OpenAPI 3.1 document (what `GET /openapi.json` serves).
    Openapi {
        /// Write it to this file instead (the repository keeps it as `openapi.json`).
        #[arg(long)]
        write: Option<PathBuf>,
    },
    /// Write, build, test, check, upload and trace plugins: the plugin author's tools.
    Plugin {
        #[command(subcommand)]
        command: cli::PluginCommand,
    },
    /// Import a file of events (NDJSON, CSV, or an operator's export) into a running host, as a
    /// resumable job with its progress shown.
    Import(cli::import::Args),
}

/// `serve`'s cluster mode: several nodes on NATS JetStream (see `host/src/cluster/mod.rs`).
#[derive(clap::Args)]
struct ClusterArgs {
    /// Join a cluster through these NATS servers (comma-separated `nats://host:port`), with
    /// JetStream. Without it the host runs alone on its sled directory, as always.
    #[arg(long, value_delimiter = ',', requires = "node")]
    cluster: Vec<String>,
    /// This node's name, unique in the cluster.
    #[arg(long, requires = "cluster")]
    node: Option<String>,
    /// Replicas of the cluster's streams and buckets (at most the NATS servers).
    #[arg(long, default_value_t = 3)]
    cluster_replicas: usize,
    /// How long an operator's lease lasts unrenewed, in ms: a dead owner is replaced after it.
    #[arg(long, default_value_t = 3000)]
    lease_ms: u64,
    /// How long a node waits for the owner's commit before answering 202 (the events are then
    /// durable in the log, not yet committed).
    #[arg(long, default_value_t = 10)]
    cluster_answer_secs: u64,
}

impl ClusterArgs {
    fn config(self) -> anyhow::Result<Option<ClusterConfig>> {
        let Some(node) = self.node else { return Ok(None) };
        if node.is_empty() || !node.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            anyhow::bail!("--node must be 1 or more of a-z, A-Z, 0-9, - and _");
        }
        if self.lease_ms < 300 || self.cluster_answer_secs == 0 || self.cluster_replicas == 0 {
            anyhow::bail!("--lease-ms must be at least 300, --cluster-answer-secs and --cluster-replicas at least 1");
        }
        Ok(Some(ClusterConfig {
            servers: self.cluster,
            node,
            replicas: self.cluster_replicas,
            lease: Duration::from_millis(self.lease_ms),
            answer_deadline: Duration::from_secs(self.cluster_answer_secs),
        }))
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> anyhow::Result<ExitCode> {
    match Cli::parse().command {
        Command::Serve {
            data,
            listen,
            demo,
            demo_plugin,
            log_format,
            max_plugin_bytes,
            body_timeout_secs,
            plugin_body_timeout_secs,
            max_connections,
            max_connections_per_peer,
            evaluation_threads,
            operator_queue_events,
            state_cache_bytes,
            state_cache_operator_bytes,
            state_quota_bytes,
            checkpoint_every,
            verify_helpers,
            ledger_cache_bytes,
            no_console,
            cluster,
        } => {
            init_tracing(log_format);
            let cluster = cluster.config()?;
            let limits = BodyLimits {
                plugin_bytes: max_plugin_bytes,
                read_timeout: Duration::from_secs(body_timeout_secs),
                plugin_read_timeout: Duration::from_secs(plugin_body_timeout_secs),
                ..BodyLimits::default()
            };
            if body_timeout_secs == 0 || plugin_body_timeout_secs == 0 {
                anyhow::bail!("--body-timeout-secs and --plugin-body-timeout-secs must be at least 1");
            }
            let connections = connection_limits(max_connections, max_connections_per_peer)?;
            if evaluation_threads == Some(0) || operator_queue_events == 0 {
                anyhow::bail!("--evaluation-threads and --operator-queue-events must be at least 1");
            }
            let scheduling = Scheduling {
                evaluation_threads: evaluation_threads.unwrap_or(Scheduling::default().evaluation_threads),
                queue_events: operator_queue_events,
                state_cache: CacheBounds { total_bytes: state_cache_bytes, operator_bytes: state_cache_operator_bytes },
                state_quota_bytes,
                checkpoint_every,
                verify_helpers: verify_helpers.unwrap_or_else(default_verify_helpers),
            };
            if ledger_cache_bytes < MIN_LEDGER_CACHE_BYTES {
                anyhow::bail!(
                    "--ledger-cache-bytes must be at least {MIN_LEDGER_CACHE_BYTES} (1 MiB); leave it out for 1 GiB"
                );
            }
            if state_quota_bytes == Some(0) {
                anyhow::bail!("--state-quota-bytes must be at least 1 (leave it out for no quota)");
            }
            let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            let served = runtime.block_on(serve(ServeConfig {
                data,
                listen,
                demo_plugin: demo.then_some(demo_plugin),
                body_limits: limits,
                connections,
                scheduling,
                console: !no_console,
                ledger_cache_bytes,
                cluster,
            }));
            // Work still on blocking threads (a backtest, a statement's recomputation) answers
            // no one any more: everything acknowledged is flushed, and the ledger may stop at
            // any point (the crash tests), so the process does not wait for it for ever.
            runtime.shutdown_timeout(BLOCKING_STOP);
            served?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Openapi { write } => {
            end_quietly_on_a_closed_stdout();
            let document = api::openapi_json();
            match write {
                Some(path) => std::fs::write(&path, document).with_context(|| format!("writing {}", path.display()))?,
                None => print!("{document}"),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Plugin { command } => {
            end_quietly_on_a_closed_stdout();
            Ok(cli::run(command))
        }
        Command::Import(args) => {
            end_quietly_on_a_closed_stdout();
            Ok(cli::finish(cli::import::run(args)))
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

/// File descriptors kept out of the connection cap: the ledger's files, the log, wasmtime's.
const RESERVED_FILES: u64 = 256;

/// Raises the soft limit on open files to the hard limit, and keeps the connection cap below
/// it: running out of descriptors fails `accept` for everyone, the probes included.
fn connection_limits(total: usize, per_peer: usize) -> anyhow::Result<server::ConnectionLimits> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    if total == 0 || per_peer == 0 {
        anyhow::bail!("--max-connections and --max-connections-per-peer must be at least 1");
    }
    let mut files = getrlimit(Resource::Nofile);
    if files.current != files.maximum {
        files.current = files.maximum;
        if let Err(error) = setrlimit(Resource::Nofile, files) {
            tracing::warn!(%error, "could not raise the open-file limit to its hard limit");
        }
    }
    let total = match getrlimit(Resource::Nofile).current {
        Some(files) if (total as u64).saturating_add(RESERVED_FILES) > files => {
            let capped = files.saturating_sub(RESERVED_FILES).max(1) as usize;
            tracing::warn!(files, asked = total, capped, "--max-connections is over the open-file limit; capped");
            capped
        }
        _ => total,
    };
    tracing::info!(total, per_peer, "connection caps");
    Ok(server::ConnectionLimits { total, per_peer: per_peer.min(total) })
}

/// The ledger holds webhook secrets in the clear (signatures need them): the data directory is
/// the owner's alone. The umask covers every file sled makes from now on; a directory written
/// by an earlier release (0755 and 0644) is brought to 0700 and 0600.
fn keep_data_private(data: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    std::fs::create_dir_all(data).with_context(|| format!("creating {}", data.display()))?;
    let mut pending = vec![data.to_path_buf()];
    while let Some(path) = pending.pop() {
        let metadata = std::fs::symlink_metadata(&path).with_context(|| format!("reading {}", path.display()))?;
        let mode = if metadata.is_dir() {
            for entry in std::fs::read_dir(&path).with_context(|| format!("listing {}", path.display()))? {
                pending.push(entry?.path());
            }
            0o700
        } else if metadata.is_file() {
            0o600
        } else {
            continue;
        };
        if (metadata.permissions().mode() & 0o777) != mode {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
                .with_context(|| format!("making {} private", path.display()))?;
        }
    }
    Ok(())
}

/// The shortest admin token taken: the admin routes are open to the network, and guessed at.
const MIN_ADMIN_TOKEN_CHARS: usize = 32;
/// Below a mebibyte sled would keep little more than the page being written.
const MIN_LEDGER_CACHE_BYTES: u64 = 1 << 20;

/// How long a stopping host waits for its verify jobs to reach their next event and end.
const VERIFY_JOBS_STOP: Duration = Duration::from_secs(5);

/// How long a stopping host waits for the periodic checkpoints taken to be written.
const CHECKPOINTS_STOP: Duration = Duration::from_secs(10);

/// How long a stopping host waits, once it has flushed, for work left on blocking threads.
const BLOCKING_STOP: Duration = Duration::from_secs(5);

/// What `serve` was asked for, once its flags are checked.
struct ServeConfig {
    data: PathBuf,
    listen: SocketAddr,
    demo_plugin: Option<PathBuf>,
    body_limits: BodyLimits,
    connections: server::ConnectionLimits,
    scheduling: Scheduling,
    /// Whether to serve the HTML console and affiliate portal under /console/.
    console: bool,
    /// sled's page cache, in bytes.
    ledger_cache_bytes: u64,
    cluster: Option<ClusterConfig>,
}

async fn serve(config: ServeConfig) -> anyhow::Result<()> {
    let ServeConfig {
        data,
        listen,
        demo_plugin,
        body_limits,
        connections,
        scheduling,
        console,
        ledger_cache_bytes,
        cluster,
    } = config;
    let admin_token = match std::env::var("COMMISSION_HOST_ADMIN_TOKEN") {
        Ok(token) if token.chars().count() >= MIN_ADMIN_TOKEN_CHARS => token,
        Ok(_) => {
            anyhow::bail!(
                "COMMISSION_HOST_ADMIN_TOKEN must be at least {MIN_ADMIN_TOKEN_CHARS} characters (`openssl rand -hex 32` makes one); unset it to have one generated"
            )
        }
        Err(_) => {
            let token = secrets::random_text();
            println!("admin token (set COMMISSION_HOST_ADMIN_TOKEN to choose one): {token}");
            token
        }
    };
    keep_data_private(&data)?;
    let store = Arc::new(
        Store::open_with_cache(&data, ledger_cache_bytes)
            .with_context(|| format!("opening the ledger in {}", data.display()))?,
    );
    let sandbox = Arc::new(Sandbox::new(Limits::default()).context("configuring the wasm sandbox")?);
    let metrics = Arc::new(Metrics::default());
    let plugins = Arc::new(PluginRegistry::new(store.clone(), sandbox.clone(), metrics.clone()));
    let pipeline = Pipeline::new(store, sandbox, plugins, metrics, scheduling);
    shadow::spawn_follower(pipeline.clone()).context("starting the shadow follower")?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on {listen} (is another host running there? choose one with --listen)"))?;
    let address = listener.local_addr()?;
    let cluster = match cluster {
        Some(config) => Some(Cluster::join(config, pipeline.clone(), data.clone(), format!("http://{address}")).await?),
        None => None,
    };
    if let Some(plugin) = demo_plugin {
        demo::set_up(&pipeline, &plugin, address).await?;
    }
    let mut state = AppState::new(pipeline, secrets::sha256_hex(&admin_token), body_limits);
    state.cluster = cluster.clone();
    let state = Arc::new(state);
    // The first line on stdout after start-up: scripts and tests read the address from it.
    println!("listening on http://{address}");
    tracing::info!(%address, data = %data.display(), "serving");
    // Verify jobs a previous run left running go on from their latest resume point.
    commission_host::verify_jobs::resume_all(&state.pipeline).context("resuming verify jobs")?;
    let pipeline = state.pipeline.clone();
    let stop = async move {
        tokio::select! {
            () = server::shutdown_signal() => None,
            error = pipeline.storage_failed() => Some(error),
        }
    };
    let router = match &cluster {
        Some(cluster) => cluster.route_reads(api::router(state.clone())),
        None => api::router(state.clone()),
    };
    // The console calls the API router in process, so in a cluster its reads are forwarded too.
    let router = if console { commission_host::console::router(router) } else { router };
    if let Some(error) = server::serve(listener, router, connections, stop).await {
        // Exiting with an error lets the supervisor (systemd, Kubernetes) start the host again;
        // opening the ledger anew recovers it from its log once the disk can take writes.
        anyhow::bail!("the ledger cannot write again in this process, so the host stops: {error}");
    }
    commission_host::verify_jobs::stop_all(VERIFY_JOBS_STOP).await;
    if let Some(cluster) = cluster {
        cluster.leave().await;
    }
    let pipeline = state.pipeline.clone();
    let written = tokio::task::spawn_blocking(move || pipeline.periodic_checkpoints_written(CHECKPOINTS_STOP)).await;
    if !matches!(written, Ok(true)) {
        tracing::warn!("periodic checkpoints still waiting to be written at shutdown: replays start from earlier ones");
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
