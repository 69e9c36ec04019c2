//! `commission-host import FILE --operator OP --url URL`: a file of events (NDJSON, CSV, or an
//! export) streamed to the import route (`POST /v1/operators/{op}/imports`), with the job's
//! progress as it goes: a bar on a terminal, a plain line a second otherwise (a CI log, a pipe).
//! Ends with the job's summary, or the bad line's number and the command that continues there.

use std::io::{IsTerminal as _, Read};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::Value;

#[derive(clap::Args)]
pub struct Args {
    /// The file: NDJSON (one webhook event per line), CSV with a header row, or an export.
    file: PathBuf,
    #[command(flatten)]
    host: super::Remote,
    /// `ndjson`, `csv` or `export`; by default from the file's extension (`.csv` is CSV).
    #[arg(long)]
    format: Option<String>,
    /// The import job: a stopped job continues at the line it stopped at. A new one by default.
    #[arg(long)]
    job: Option<String>,
    /// Start at this line.
    #[arg(long)]
    from_line: Option<u64>,
    /// CSV: which column holds which event field, `FIELD=COLUMN` (e.g. `id=txn_id`), repeated.
    #[arg(long = "map", value_name = "FIELD=COLUMN")]
    mapping: Vec<String>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let base = args.host.base().to_owned();
    let file = std::fs::File::open(&args.file).with_context(|| format!("opening {}", args.file.display()))?;
    let size = file.metadata().map(|metadata| metadata.len()).unwrap_or(0);
    let format = args.format.clone().unwrap_or_else(|| {
        if args.file.extension().is_some_and(|extension| extension == "csv") { "csv" } else { "ndjson" }.to_owned()
    });
    // Named here, so that its progress can be asked for while the file is sent.
    let job = args.job.clone().unwrap_or_else(|| {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        format!("cli-{:x}", nanos.as_nanos())
    });
    let mut url = format!("{base}/v1/operators/{}/imports?format={format}&job={job}", args.host.operator);
    if let Some(line) = args.from_line {
        url.push_str(&format!("&from_line={line}"));
    }
    for mapping in &args.mapping {
        let (field, column) =
            mapping.split_once('=').with_context(|| format!("--map {mapping:?}: write it FIELD=COLUMN"))?;
        let column: String = form_urlencoded::byte_serialize(column.as_bytes()).collect();
        url.push_str(&format!("&map.{field}={column}"));
    }

    let terminal = std::io::stderr().is_terminal();
    let bar = if terminal {
        let bar = ProgressBar::with_draw_target(Some(size), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {msg}")
                .unwrap_or(ProgressStyle::default_bar()),
        );
        bar
    } else {
        ProgressBar::hidden()
    };
    let done = Arc::new(AtomicBool::new(false));
    let watcher = watch(
        format!("{base}/v1/operators/{}/imports/{job}", args.host.operator),
        args.host.api_key.clone(),
        bar.clone(),
        done.clone(),
    );
    let reader = Counted { inner: file, bar: bar.clone() };
    let content_type = if format == "csv" { "text/csv" } else { "application/x-ndjson" };
    // An import of months of history takes as long as it takes: no overall timeout.
    let client = reqwest::blocking::Client::builder().timeout(None).build()?;
    let sent = client
        .post(&url)
        .bearer_auth(&args.host.api_key)
        .header(reqwest::header::CONTENT_TYPE, content_type)
        .body(reqwest::blocking::Body::new(reader))
        .send();
    done.store(true, Ordering::Relaxed);
    let _ = watcher.join();
    bar.finish_and_clear();
    let response =
        sent.with_context(|| format!("sending {} to {url} (is the host running there?)", args.file.display()))?;
    let status = response.status();
    let body: Value = response.json().with_context(|| {
        format!("the answer of {url} ({status}) is not the host's JSON: is --url a commission-host?")
    })?;
    let job_view = if status.is_success() { &body } else { &body["job"] };
    if status.is_success() {
        println!(
            "imported {}: {} lines, {} accepted, {} duplicate, {} failed (job {job})",
            args.file.display(),
            job_view["lines_read"],
            job_view["accepted"],
            job_view["duplicate"],
            job_view["failed"]
        );
        return Ok(ExitCode::SUCCESS);
    }
    if body["error"] == "import_stopped" {
        let stopped = &job_view["stopped_at"];
        eprintln!(
            "line {}: {}{}",
            stopped["line"],
            stopped["field"]
                .as_str()
                .filter(|field| !field.is_empty())
                .map(|field| format!("{field}: "))
                .unwrap_or_default(),
            stopped["problem"].as_str().unwrap_or("refused")
        );
        eprintln!(
            "the {} lines before it are committed ({} accepted, {} duplicate, {} failed). Fix line {} and continue with:",
            job_view["lines_read"], job_view["accepted"], job_view["duplicate"], job_view["failed"], stopped["line"]
        );
        eprintln!(
            "  commission-host import {} --operator {} --url {} --format {format} --job {job}",
            args.file.display(),
            args.host.operator,
            args.host.url
        );
        return Ok(ExitCode::from(1));
    }
    let message = body["message"].as_str().unwrap_or("no message");
    let hint = match status.as_u16() {
        401 => " (check --operator and the key: --api-key or COMMISSION_HOST_API_KEY)",
        _ => "",
    };
    anyhow::bail!("the host refused the import ({status}): {message}{hint}");
}

/// The file as it is read for sending, moving the bar.
struct Counted {
    inner: std::fs::File,
    bar: ProgressBar,
}

impl Read for Counted {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        let read = self.inner.read(buffer)?;
        self.bar.inc(read as u64);
        Ok(read)
    }
}

/// Asks for the job's status once a second while the file is sent: the bar's message on a
/// terminal, a line on stdout otherwise (when it changed).
fn watch(url: String, key: String, bar: ProgressBar, done: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let Ok(client) = reqwest::blocking::Client::builder().timeout(Duration::from_secs(5)).build() else { return };
        let mut last = String::new();
        while !done.load(Ordering::Relaxed) {
            for _ in 0..10 {
                if done.load(Ordering::Relaxed) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let Ok(response) = client.get(&url).bearer_auth(&key).send() else { continue };
            let Ok(job) = response.json::<Value>() else { continue };
            if job["lines_read"].is_null() {
                continue;
            }
            let line = format!(
                "{} lines committed: {} accepted, {} duplicate, {} failed",
                job["lines_read"], job["accepted"], job["duplicate"], job["failed"]
            );
            if line != last {
                if bar.is_hidden() {
                    println!("{line}");
                } else {
                    bar.set_message(line.clone());
                }
                last = line;
            }
        }
    })
}
