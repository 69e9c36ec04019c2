//! The harness of the end-to-end suites: the real `commission-host` binary, on a real sled
//! directory, over real HTTP, with plugins built from `plugins/` and `tests/plugins/` by
//! `cargo build-plugins`.
#![allow(dead_code)] // Each suite uses a different part of the harness.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::blocking::{Client, Response};
use rust_decimal::Decimal;
use serde_json::{Value, json};

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789abcdef";

/// A running host. Killed (SIGKILL) when dropped.
pub struct Host {
    child: Child,
    pub base: String,
    pub client: Client,
    log: PathBuf,
}

impl Host {
    /// Starts the host on `data` and waits until it listens.
    pub fn start(data: &Path) -> Host {
        Host::start_with(data, &[])
    }

    /// [`Host::start`] with more `serve` arguments.
    pub fn start_with(data: &Path, serve_args: &[&str]) -> Host {
        Host::start_env(data, serve_args, &[("RUST_LOG", "info")])
    }

    /// [`Host::start_with`] with environment variables (`RUST_LOG` is `info` unless given).
    pub fn start_env(data: &Path, serve_args: &[&str], env: &[(&str, &str)]) -> Host {
        Host::spawn(Command::new(env!("CARGO_BIN_EXE_commission-host")), data, serve_args, env)
    }

    /// [`Host::start`] by bash after `setup` (such as `ulimit -f 1024`), which the host inherits;
    /// bash then becomes the host (`exec`), so the pid is the host's.
    pub fn start_after(data: &Path, setup: &str) -> Host {
        let mut bash = Command::new("bash");
        bash.arg("-c").arg(format!("{setup}; exec \"$0\" \"$@\"")).arg(env!("CARGO_BIN_EXE_commission-host"));
        Host::spawn(bash, data, &[], &[])
    }

    fn spawn(mut command: Command, data: &Path, serve_args: &[&str], env: &[(&str, &str)]) -> Host {
        let log = data.with_extension("log");
        let stderr = std::fs::OpenOptions::new().create(true).append(true).open(&log).expect("host log file");
        let mut child = command
            .args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(data)
            .args(serve_args)
            .env("COMMISSION_HOST_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("starting commission-host");
        let stdout = child.stdout.take().expect("piped stdout");
        let (address_tx, address_rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(address) = line.strip_prefix("listening on ") {
                    let _ = address_tx.send(address.to_owned());
                }
            }
        });
        let base = match address_rx.recv_timeout(Duration::from_secs(120)) {
            Ok(base) => base,
            Err(_) => {
                let _ = child.kill();
                panic!("the host did not start; its log:\n{}", std::fs::read_to_string(&log).unwrap_or_default());
            }
        };
        Host { child, base, client: Client::builder().timeout(Duration::from_secs(60)).build().unwrap(), log }
    }

    /// SIGKILL: no shutdown, no flush, as a crash or an OOM kill would.
    pub fn kill(mut self) {
        self.child.kill().expect("SIGKILL the host");
        self.child.wait().expect("reap the host");
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the host to exit (after a signal); returns whether it exited cleanly.
    pub fn wait_exit(mut self) -> bool {
        self.child.wait().expect("reap the host").success()
    }

    /// Sends SIGTERM and waits up to `limit` for the host to exit: whether it exited cleanly,
    /// and its log. A host that does not stop when asked is SIGKILLed and the test fails.
    pub fn terminate_within(mut self, limit: std::time::Duration) -> (bool, String) {
        let pid = self.pid().to_string();
        assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        let asked = std::time::Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("poll the host") {
                return (status.success(), self.log());
            }
            if asked.elapsed() > limit {
                self.child.kill().expect("SIGKILL the host");
                self.child.wait().expect("reap the host");
                panic!("the host did not stop within {limit:?} of SIGTERM: {}", self.log());
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The Prometheus text of `GET /metrics`.
    pub fn metrics(&self) -> String {
        let response = self.client.get(self.url("/metrics")).bearer_auth(ADMIN_TOKEN).send().expect("metrics");
        assert_eq!(response.status(), StatusCode::OK);
        response.text().unwrap()
    }

    pub fn admin_post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        answer(self.client.post(self.url(path)).bearer_auth(ADMIN_TOKEN).json(&body).send())
    }

    /// Sets the operator's limits as the admin (`PUT /v1/operators/{op}/limits`).
    pub fn put_limits(&self, operator: &Operator, limits: Value) {
        let (status, body) = answer(
            self.client
                .put(self.url(&format!("/v1/operators/{}/limits", operator.id)))
                .bearer_auth(ADMIN_TOKEN)
                .json(&limits)
                .send(),
        );
        assert_eq!(status, StatusCode::OK, "{body}");
    }

    pub fn create_operator(&self, id: &str) -> Operator {
        let (status, body) =
            self.admin_post("/v1/operators", json!({"id": id, "name": format!("Operator {id}"), "currency": "USD"}));
        assert_eq!(status, StatusCode::CREATED, "{body}");
        Operator {
            id: id.to_owned(),
            api_key: body["api_key"].as_str().unwrap().to_owned(),
            postback_token: body["postback_token"].as_str().unwrap().to_owned(),
            webhook_secret: body["webhook_secret"].as_str().unwrap().to_owned(),
        }
    }

    /// An operator running the multi-event plugin, with one affiliate, `aff1`, on default terms.
    pub fn multi_event_with_aff1(&self, id: &str) -> Operator {
        let operator = self.create_operator(id);
        self.install_plugin(&operator, "multi-event");
        self.put_affiliate(&operator, "aff1", None, json!({}));
        operator
    }

    /// Uploads and activates a plugin built by `cargo build-plugins`.
    pub fn install_plugin(&self, operator: &Operator, plugin: &str) -> u64 {
        let (status, body) = self.upload_plugin(operator, &plugin_wasm(plugin), true);
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["version"].as_u64().unwrap()
    }

    pub fn upload_plugin(&self, operator: &Operator, wasm: &[u8], activate: bool) -> (StatusCode, Value) {
        answer(
            self.client
                .post(self.url(&format!("/v1/operators/{}/plugins?activate={activate}", operator.id)))
                .bearer_auth(&operator.api_key)
                .header("content-type", "application/wasm")
                .body(wasm.to_vec())
                // The host validates, compiles and smoke-runs the component before it answers:
                // a Python one (tens of MB) takes more than a minute on two busy cores.
                .timeout(Duration::from_secs(300))
                .send(),
        )
    }

    pub fn put_affiliate(&self, operator: &Operator, id: &str, parent: Option<&str>, deal: Value) {
        let (status, body) = answer(
            self.client
                .put(self.url(&format!("/v1/operators/{}/affiliates/{id}", operator.id)))
                .bearer_auth(&operator.api_key)
                .json(&json!({"parent": parent, "deal": deal}))
                .send(),
        );
        assert_eq!(status, StatusCode::OK, "{body}");
    }

    /// Posts events (an object or an array) with the operator's key.
    pub fn post_events(&self, operator: &Operator, events: &Value) -> (StatusCode, Value) {
        answer(
            self.client
                .post(self.url(&format!("/v1/operators/{}/events", operator.id)))
                .bearer_auth(&operator.api_key)
                .json(events)
                .send(),
        )
    }

    /// Posts one event and expects it accepted; returns its answer.
    pub fn accept(&self, operator: &Operator, event: Value) -> Value {
        let (status, body) = self.post_events(operator, &event);
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["status"], "accepted", "{body}");
        body
    }

    /// A webhook as a sender signs it (Standard Webhooks), at `timestamp`, with `secret`.
    pub fn signed_webhook(
        &self,
        operator: &str,
        secret: &str,
        id: &str,
        timestamp: i64,
        body: &str,
    ) -> reqwest::blocking::RequestBuilder {
        self.client
            .post(self.url(&format!("/v1/operators/{operator}/events")))
            .header("webhook-id", id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", sign_webhook(secret, id, timestamp, body))
            .header("content-type", "application/json")
            .body(body.to_owned())
    }

    /// A postback with the operator's token and the given query.
    pub fn postback(&self, operator: &Operator, query: &str) -> (StatusCode, Value) {
        answer(
            self.client
                .get(self.url(&format!("/postback/{}?token={}&{query}", operator.id, operator.postback_token)))
                .send(),
        )
    }

    pub fn get(&self, operator: &Operator, path: &str) -> (StatusCode, Value) {
        answer(
            self.client
                .get(self.url(&format!("/v1/operators/{}{path}", operator.id)))
                .bearer_auth(&operator.api_key)
                .send(),
        )
    }

    /// Closes a month: `POST /v1/operators/{op}/periods/{period}/close`.
    pub fn close(&self, operator: &Operator, period: &str) -> (StatusCode, Value) {
        answer(
            self.client
                .post(self.url(&format!("/v1/operators/{}/periods/{period}/close", operator.id)))
                .bearer_auth(&operator.api_key)
                .send(),
        )
    }

    /// The report of `POST /v1/operators/{op}/verify`, expected to be a 200.
    pub fn verify(&self, operator: &Operator) -> Value {
        let (status, report) = answer(
            self.client
                .post(self.url(&format!("/v1/operators/{}/verify", operator.id)))
                .bearer_auth(&operator.api_key)
                .send(),
        );
        assert_eq!(status, StatusCode::OK, "{report}");
        report
    }

    /// Every commission of the operator, following cursors.
    pub fn commissions(&self, operator: &Operator, filter: &str) -> Vec<Value> {
        let mut all = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let page = match &cursor {
                Some(cursor) => format!("/commissions?limit=7&{filter}&cursor={cursor}"),
                None => format!("/commissions?limit=7&{filter}"),
            };
            let (status, body) = self.get(operator, &page);
            assert_eq!(status, StatusCode::OK, "{body}");
            all.extend(body["commissions"].as_array().unwrap().iter().cloned());
            match body["next"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => return all,
            }
        }
    }

    /// Sum of commissions per affiliate, as decimals.
    pub fn totals(&self, operator: &Operator) -> std::collections::BTreeMap<String, Decimal> {
        let mut totals = std::collections::BTreeMap::new();
        for commission in self.commissions(operator, "") {
            *totals.entry(commission["affiliate"].as_str().unwrap().to_owned()).or_insert(Decimal::ZERO) +=
                amount(&commission["amount"]);
        }
        totals
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Clone)]
pub struct Operator {
    pub id: String,
    pub api_key: String,
    pub postback_token: String,
    pub webhook_secret: String,
}

pub fn answer(response: reqwest::Result<Response>) -> (StatusCode, Value) {
    let response = response.expect("the host answers");
    let status = response.status();
    let text = response.text().expect("a body");
    let body = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}"));
    (status, body)
}

pub fn amount(value: &Value) -> Decimal {
    value.as_str().expect("amounts are decimal strings").parse().expect("a decimal")
}

/// Unix seconds now, as webhook timestamps are.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

pub fn dec(text: &str) -> Decimal {
    text.parse().unwrap()
}

/// The commissions in an event's answer, as (affiliate, amount).
pub fn paid(answer: &Value) -> Vec<(String, Decimal)> {
    answer["commissions"]
        .as_array()
        .expect("commissions")
        .iter()
        .map(|c| (c["affiliate"].as_str().unwrap().to_owned(), amount(&c["amount"])))
        .collect()
}

/// A Standard Webhooks signature header value, computed as the reference libraries do.
pub fn sign_webhook(secret: &str, id: &str, timestamp: i64, body: &str) -> String {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use hmac::{Hmac, Mac};

    let key = STANDARD.decode(secret.strip_prefix("whsec_").unwrap()).unwrap();
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{timestamp}.{body}").as_bytes());
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

/// The bytes of a plugin component built by `cargo build-plugins`.
pub fn plugin_wasm(name: &str) -> Vec<u8> {
    let target = Path::new(env!("CARGO_BIN_EXE_commission-host")).parent().and_then(Path::parent).expect("target dir");
    let path = target.join("wasm32-wasip2/plugin").join(format!("{}.wasm", name.replace('-', "_")));
    std::fs::read(&path).unwrap_or_else(|error| {
        panic!("{}: {error}. Build the plugins first: `cargo build-plugins` (see the README)", path.display())
    })
}

/// A fresh data directory, removed at the end of the test.
pub fn data_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    (dir, data)
}

/// A small seeded generator (SplitMix64): the suites that draw at random print their seed, and
/// the same seed draws the same run.
pub struct Rng(u64);

impl Rng {
    /// The seed from `env` if set (to re-run a failure), else from the clock; printed either way.
    pub fn from_env(env: &str) -> Rng {
        let seed = std::env::var(env).ok().and_then(|seed| seed.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
        });
        println!("{env}={seed} (set it to run this draw again)");
        Rng(seed)
    }

    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `range`.
    pub fn below(&mut self, range: std::ops::Range<u64>) -> u64 {
        range.start + self.next_u64() % (range.end - range.start)
    }

    /// True with probability `percent` in 100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(0..100) < percent
    }
}

/// The ledger's invariants, checked through the API as an auditor would:
/// - per affiliate, the sum of its commissions (the affiliate index) equals the sum of the
///   full ledger's entries for it, and the sum of its entries by status;
/// - every reversal names a commission of the same affiliate, and is no larger than it;
/// - every commission's event exists, is accepted and lists the commission;
/// - no commission is paid twice: one per (event, affiliate, rule).
///
/// Returns the ledger in order.
pub fn check_ledger_invariants(host: &Host, operator: &Operator) -> Vec<Value> {
    let ledger = host.commissions(operator, "");
    let by_id: std::collections::HashMap<&str, &Value> =
        ledger.iter().map(|c| (c["id"].as_str().expect("commission id"), c)).collect();
    assert_eq!(by_id.len(), ledger.len(), "commission ids are unique");

    let mut paid_for = std::collections::HashSet::new();
    let mut reversed = std::collections::HashSet::new();
    for commission in &ledger {
        let key = (commission["event_id"].clone(), commission["affiliate"].clone(), commission["rule"].clone());
        assert!(paid_for.insert(key), "paid twice: {commission}");
        if let Some(target) = commission["reverses"].as_str() {
            let original =
                by_id.get(target).unwrap_or_else(|| panic!("reversal of a missing commission: {commission}"));
            assert_eq!(original["affiliate"], commission["affiliate"], "a reversal is the same affiliate's");
            assert!(amount(&commission["amount"]).is_sign_negative(), "a reversal is negative: {commission}");
            assert!(-amount(&commission["amount"]) <= amount(&original["amount"]), "reverses more than paid");
            assert!(reversed.insert(target.to_owned()), "{target} reversed twice");
        }
    }
    let mut events_seen = std::collections::HashMap::new();
    for commission in &ledger {
        let event_id = commission["event_id"].as_str().unwrap().to_owned();
        let listed = events_seen.entry(event_id.clone()).or_insert_with(|| {
            let (status, event) = host.get(operator, &format!("/events/{event_id}"));
            assert_eq!(status, StatusCode::OK, "commission {commission} lacks its event");
            assert_eq!(event["status"], "accepted", "{event}");
            event["commissions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["id"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        });
        assert!(listed.iter().any(|id| commission["id"] == id.as_str()), "{event_id} does not list {commission}");
    }

    let totals = host.totals(operator);
    for (affiliate, total) in &totals {
        let indexed: Decimal =
            host.commissions(operator, &format!("affiliate={affiliate}")).iter().map(|c| amount(&c["amount"])).sum();
        assert_eq!(indexed, *total, "{affiliate}: the affiliate index and the ledger disagree");
        let by_status: Decimal = ["pending", "approved", "paid", "reversed", "rejected"]
            .iter()
            .flat_map(|status| host.commissions(operator, &format!("affiliate={affiliate}&status={status}")))
            .map(|c| amount(&c["amount"]))
            .sum();
        assert_eq!(by_status, *total, "{affiliate}: the entries by status do not add up to the total");
    }
    ledger
}

/// `POST /v1/operators/{op}/verify` finds no difference: replaying the stored events through
/// the same plugin versions gives the same commissions and the same plugin state. Returns how
/// many events it replayed.
pub fn assert_verifies(host: &Host, operator: &Operator) -> u64 {
    let report = host.verify(operator);
    assert_eq!(report["differences"], json!([]), "verify found differences");
    assert_eq!(report["state_keys_differing"], json!([]), "verify found state differences");
    assert_eq!(report["events_matching"], report["events_replayed"]);
    report["events_replayed"].as_u64().unwrap()
}

/// One commission as compared between two ledgers: (event, affiliate, rule, amount).
pub type Entry = (String, String, String, Decimal);

/// The ledger's commissions as comparable entries, sorted.
pub fn entries(ledger: &[Value]) -> Vec<Entry> {
    let mut entries: Vec<Entry> = ledger
        .iter()
        .map(|c| {
            let text = |field: &str| c[field].as_str().unwrap().to_owned();
            (text("event_id"), text("affiliate"), text("rule"), amount(&c["amount"]))
        })
        .collect();
    entries.sort();
    entries
}

/// The value of the metric line that starts with `name` (labels included), if there is one.
pub fn metric(metrics: &str, name: &str) -> Option<f64> {
    metrics.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// The bytes the data directory takes on disk, as `du` counts them.
pub fn disk_usage(path: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(path)
        .unwrap()
        .map(|entry| {
            let entry = entry.unwrap();
            let metadata = entry.metadata().unwrap();
            if metadata.is_dir() { disk_usage(&entry.path()) } else { metadata.blocks() * 512 }
        })
        .sum()
}
