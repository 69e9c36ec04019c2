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

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

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
        let log = data.with_extension("log");
        let stderr = std::fs::OpenOptions::new().create(true).append(true).open(&log).expect("host log file");
        let mut child = Command::new(env!("CARGO_BIN_EXE_commission-host"))
            .args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(data)
            .args(serve_args)
            .env("COMMISSION_HOST_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("RUST_LOG", "info")
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
