//! The data directory on a full filesystem: a small tmpfs, filled up while the host serves.
//!
//! While the disk is full the host acknowledges nothing: events are answered 503 with a JSON
//! error and `/readyz` says not ready. Nothing is written half-way: once space returns and the
//! host is back, every refused event is either absent or there whole, with its commissions,
//! and a retry pays it exactly once.
//!
//! Mounting needs root (CI runs as root); elsewhere the test says why it skips. A second test
//! takes the same path anywhere, with a file-size limit in place of a full disk.

use crate::common;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Host, Operator, answer, assert_verifies, check_ledger_invariants, dec};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// Enough for sled's log and the plugin, not much more: it fills in a moment.
const TMPFS_BYTES: u64 = 48 << 20;

/// A tmpfs mounted for the test, unmounted at the end.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path) -> Result<Tmpfs, String> {
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={TMPFS_BYTES}"), "tmpfs"])
            .arg(dir)
            .output()
            .map_err(|error| format!("cannot run mount: {error}"))?;
        if !output.status.success() {
            return Err(format!("mount -t tmpfs failed: {}", String::from_utf8_lossy(&output.stderr).trim()));
        }
        Ok(Tmpfs(dir.to_owned()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Writes a file until the filesystem refuses more.
fn fill(path: &Path) -> u64 {
    let mut file = std::fs::File::create(path).expect("filler file");
    let block = vec![0xA5u8; 64 * 1024];
    let mut written = 0;
    loop {
        match file.write(&block) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(error) => {
                assert_eq!(error.raw_os_error(), Some(28), "ENOSPC expected, got {error}");
                break;
            }
        }
    }
    // The last partial pages too.
    while let Ok(n) = file.write(&block[..512]) {
        if n == 0 {
            break;
        }
        written += n as u64;
    }
    written
}

/// Starts the host on the full disk and sends one event; returns once the host has exited.
fn still_full_restart(data: &Path, api_key: &str) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_commission-host"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(data)
        .env("COMMISSION_HOST_ADMIN_TOKEN", common::ADMIN_TOKEN)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let listening = std::io::BufRead::lines(stdout)
        .map_while(Result::ok)
        .find_map(|line| line.strip_prefix("listening on ").map(str::to_owned));
    if let Some(base) = listening {
        let client = reqwest::blocking::Client::new();
        let sent = client
            .post(format!("{base}/v1/operators/acme/events"))
            .bearer_auth(api_key)
            .json(&deposit("still-full"))
            .send();
        if let Ok(response) = sent {
            assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        }
    }
    assert!(!child.wait().unwrap().success(), "the host stops with an error on a full disk");
}

fn deposit(id: &str) -> Value {
    json!({"id": id, "type": "deposit", "customer": format!("cust-{id}"), "amount": "50", "affiliate": "aff1"})
}

/// Sends deposits until the host refuses. Each refusal is a 503 in JSON naming `cause`, and from
/// the first on the host acknowledges nothing. sled cannot write again after a write error, so
/// the host then stops with an error of its own accord, for its supervisor to start it again.
/// Returns the ids acknowledged before the first refusal, and those refused.
fn send_until_refused(host: Host, acme: &Operator, cause: &str) -> (Vec<String>, Vec<String>) {
    let mut refused = Vec::new();
    let mut accepted = Vec::new();
    for n in 0..5000 {
        let id = format!("full-{n}");
        let response = host
            .client
            .post(host.url("/v1/operators/acme/events"))
            .bearer_auth(&acme.api_key)
            .json(&deposit(&id))
            .send();
        let Ok(response) = response else {
            // The host has stopped; this one may or may not have been committed.
            refused.push(id);
            break;
        };
        let (status, body) = answer(Ok(response));
        match status {
            StatusCode::OK => {
                assert!(refused.is_empty(), "acknowledged {id} after a refusal: {body}");
                accepted.push(id);
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                assert_eq!(body["error"], "storage_unavailable", "{body}");
                assert!(body["message"].as_str().unwrap().contains(cause), "{body}");
                refused.push(id);
            }
            other => panic!("{id}: {other} {body}"),
        }
    }
    assert!(!refused.is_empty(), "the ledger never ran out of room");
    let log = host.log();
    assert!(!host.wait_exit(), "the host must stop with an error once its ledger cannot write");
    assert!(log.contains(cause), "the log says why:\n{log}");
    (accepted, refused)
}

/// After space returned and the host started again: whatever was refused is absent or there
/// whole, never half (an event with its commission); a retry of each pays it once; the ledger
/// holds 10 per customer (`acknowledged` before, plus the refused), keeps its invariants and
/// replays exactly.
fn check_recovered(host: &Host, acme: &Operator, acknowledged: usize, refused: &[String]) {
    for id in refused {
        let (status, event) = host.get(acme, &format!("/events/{id}"));
        match status {
            StatusCode::NOT_FOUND => {}
            StatusCode::OK => {
                assert_eq!(event["status"], "accepted", "{event}");
                assert_eq!(event["commissions"].as_array().unwrap().len(), 1, "{event}");
            }
            other => panic!("{id}: {other} {event}"),
        }
    }
    for id in refused {
        let (status, body) = host.post_events(acme, &deposit(id));
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(["accepted", "duplicate"].contains(&body["status"].as_str().unwrap()), "{body}");
        assert_eq!(body["commissions"].as_array().unwrap().len(), 1, "{body}");
    }
    let ledger = check_ledger_invariants(host, acme);
    let customers = acknowledged + refused.len();
    assert_eq!(ledger.len(), customers);
    assert_eq!(host.totals(acme), [("aff1".to_owned(), dec("10") * rust_decimal::Decimal::from(customers))].into());
    assert_verifies(host, acme);
}

#[test]
fn a_full_disk_is_answered_503_writes_nothing_half_way_and_recovers_when_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    // The mount is the data directory itself, so the host's log (beside it) stays writable.
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let mount = match Tmpfs::mount(&data) {
        Ok(mount) => mount,
        Err(reason) => {
            println!("SKIPPED: a full disk needs a tmpfs mount: {reason}");
            return;
        }
    };
    let host = Host::start(&data);
    let acme = host.multi_event_with_aff1("acme");
    for n in 0..5 {
        host.accept(&acme, deposit(&format!("before-{n}")));
    }
    let filler = data.join("filler");
    let filled = fill(&filler);

    let (accepted, refused) = send_until_refused(host, &acme, "No space left on device");
    println!(
        "filled {filled} bytes; {} events accepted in the space left, then {} refused",
        accepted.len(),
        refused.len()
    );

    // Started again while the disk is still full, the host acknowledges nothing: it stops at
    // start-up or at its first write.
    still_full_restart(&data, &acme.api_key);

    // Space returns; the supervisor starts the host again.
    std::fs::remove_file(&filler).unwrap();
    let host = Host::start(&data);
    check_recovered(&host, &acme, 5 + accepted.len(), &refused);
    drop(host);
    drop(mount);
}

/// The same path without root: a file-size limit (`ulimit -f`, with SIGXFSZ ignored so the write
/// fails with EFBIG instead of killing the host) just above the ledger's size. Runs everywhere,
/// beside the tmpfs test, which needs a mount.
#[test]
fn a_file_size_limit_is_answered_503_and_recovers_without_it() {
    let (_dir, data) = common::data_dir();
    let host = Host::start(&data);
    let acme = host.multi_event_with_aff1("acme");
    for n in 0..5 {
        host.accept(&acme, deposit(&format!("before-{n}")));
    }
    host.kill();
    let largest =
        std::fs::read_dir(&data).unwrap().map(|entry| entry.unwrap().metadata().unwrap().len()).max().unwrap();
    // bash counts `ulimit -f` in KiB. sled starts new 512 KiB segments past the end of its file
    // when it opens; 2 MiB more lets it open and take a few hundred events.
    let limit_kib = largest / 1024 + 2048;
    let host = Host::start_after(&data, &format!("trap '' XFSZ; ulimit -f {limit_kib}"));
    let (accepted, refused) = send_until_refused(host, &acme, "File too large");
    println!("file size limit {limit_kib} KiB; {} events accepted, then {} refused", accepted.len(), refused.len());

    let host = Host::start(&data);
    check_recovered(&host, &acme, 5 + accepted.len(), &refused);
}
