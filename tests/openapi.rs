//! The API as a published contract. The committed `openapi.json` is what the binary prints and
//! serves, and schemathesis (from PyPI, pinned), run against the real host with it, finds
//! nothing: no 5xx on any generated input, every answer's status, type, headers and body as the
//! document says, every schema-violating request refused, and nothing written by the refused
//! ones. schemathesis is used from PATH when there, otherwise installed with pip into
//! `target/python-tools` (as the Python plugin's test installs componentize-py).

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;

use std::collections::BTreeSet;

use common::*;
use serde_json::{Value, json};

const SCHEMATHESIS: &str = "schemathesis==4.32.5";

fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_commission-host")).parent().unwrap().parent().unwrap().to_path_buf()
}

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn the_committed_document_is_the_one_the_binary_prints_and_serves() {
    let printed = Command::new(env!("CARGO_BIN_EXE_commission-host")).arg("openapi").output().expect("openapi");
    assert!(printed.status.success());
    let printed = String::from_utf8(printed.stdout).unwrap();
    let committed = std::fs::read_to_string(repository().join("openapi.json")).unwrap_or_default();
    assert!(
        printed == committed,
        "openapi.json is not the document the binary generates; from the repository root, run\n  \
         cargo run --release -- openapi --write openapi.json\nand commit it"
    );
    let (_dir, data) = data_dir();
    let host = Host::start(&data);
    let served = host.client.get(host.url("/openapi.json")).send().unwrap();
    assert_eq!(served.status(), 200);
    assert_eq!(served.headers()["content-type"], "application/json");
    assert_eq!(served.text().unwrap(), printed);
}

/// schemathesis's command line, from PATH or installed into `target/python-tools/schemathesis`.
fn schemathesis() -> Command {
    if Command::new("schemathesis").arg("--version").output().is_ok_and(|output| output.status.success()) {
        let mut command = Command::new("schemathesis");
        command.env("PYTHONPATH", repository().join("tests/openapi"));
        return command;
    }
    let tools = target_dir().join("python-tools/schemathesis");
    if !tools.join("schemathesis").is_dir() {
        let installed = Command::new("python3")
            .args(["-m", "pip", "install", "--quiet", "--target"])
            .arg(&tools)
            .arg(SCHEMATHESIS)
            .status()
            .expect("python3 with pip, to install schemathesis");
        assert!(installed.success(), "`pip install {SCHEMATHESIS}` failed");
    }
    let mut command = Command::new("python3");
    let path = std::env::join_paths([tools, repository().join("tests/openapi")]).unwrap();
    command.args(["-c", "import schemathesis.cli; schemathesis.cli.schemathesis()"]).env("PYTHONPATH", path);
    command
}

/// The events of the requests schemathesis sent to `POST .../events`, from its HAR report: the
/// ids of the events in requests answered 2xx, and of those in requests refused (4xx).
fn sent_event_ids(reports: &Path) -> (BTreeSet<String>, BTreeSet<String>) {
    let (mut accepted, mut refused) = (BTreeSet::new(), BTreeSet::new());
    for report in std::fs::read_dir(reports).expect("schemathesis's report directory") {
        let har: Value = serde_json::from_slice(&std::fs::read(report.unwrap().path()).unwrap()).unwrap();
        for entry in har["log"]["entries"].as_array().into_iter().flatten() {
            let request = &entry["request"];
            if request["method"] != "POST" || !request["url"].as_str().unwrap_or_default().ends_with("/events") {
                continue;
            }
            let Ok(body) = serde_json::from_str::<Value>(request["postData"]["text"].as_str().unwrap_or_default())
            else {
                continue;
            };
            let events = if body.is_array() { body.as_array().unwrap().clone() } else { vec![body] };
            let status = entry["response"]["status"].as_u64().unwrap_or_default();
            let ids = if (200..300).contains(&status) { &mut accepted } else { &mut refused };
            ids.extend(events.iter().filter_map(|event| event["id"].as_str().map(str::to_owned)));
        }
    }
    (accepted, refused)
}

/// One schemathesis run against the host, as the operator (its API key and postback token),
/// on the operator's own routes (the admin's, tagged `operators` and `cluster`, are excluded:
/// they take the admin token only).
fn run_schemathesis(host: &Host, config: &Path, extra: &[&str], reports: &[&str]) -> (bool, String) {
    let output = schemathesis()
        .arg("--config-file")
        .arg(config)
        .arg("run")
        .args(reports)
        .arg(repository().join("openapi.json"))
        .args(["--url", &host.base, "--seed", "1", "--max-examples", "10", "--workers", "1"])
        .args(["--exclude-tag", "operators", "--exclude-tag", "cluster", "--exclude-path", "/metrics"])
        .args(["--request-timeout", "30"])
        .args(extra)
        .env("SCHEMATHESIS_HOOKS", "hooks")
        .env("NO_COLOR", "1")
        .output()
        .expect("running schemathesis");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

#[test]
fn schemathesis_finds_nothing_against_the_running_host() {
    let (dir, data) = data_dir();
    let host = Host::start(&data);
    let operator = host.multi_event_with_aff1("acme");
    host.put_affiliate(&operator, "sub1", Some("aff1"), json!({"ftd_cpa": "7"}));
    let answer = host.accept(
        &operator,
        json!({"id": "d-1", "type": "deposit", "customer": "c1", "amount": "100.00", "affiliate": "aff1"}),
    );
    assert_eq!(answer["status"], "accepted", "{answer}");
    let config = dir.path().join("schemathesis.toml");
    std::fs::write(
        &config,
        format!(
            "[parameters]\n\"path.op\" = \"acme\"\n\"path.version\" = 1\n\n\
             [auth.openapi.operator_key]\nbearer = \"{}\"\n\n[auth.openapi.postback_token]\napi_key = \"{}\"\n",
            operator.api_key, operator.postback_token
        ),
    )
    .unwrap();

    // Requests that break the document: each must be refused, and an event of a refused request
    // must not be in the ledger (unless a request that was accepted sent it too).
    let reports = dir.path().join("negative");
    let report_dir = reports.to_str().unwrap();
    let (passed, output) = run_schemathesis(
        &host,
        &config,
        &["--mode", "negative", "--checks", "not_a_server_error,negative_data_rejection"],
        &["--report", "har", "--report-dir", report_dir],
    );
    assert!(passed, "schemathesis (negative) found something:\n{output}");
    let (accepted, refused) = sent_event_ids(&reports);
    assert!(!refused.is_empty(), "the negative run sent no event: {output}");
    for id in refused.difference(&accepted).filter(|id| *id != "d-1") {
        let path = format!("/events/{}", urlencoding(id));
        // Bounded: the failed-credential throttle the run set off lets a request in every 0.5 s.
        let (status, body) = (0..20)
            .map(|_| host.get(&operator, &path))
            .find(|(status, _)| {
                let throttled = *status == 429;
                if throttled {
                    std::thread::sleep(std::time::Duration::from_millis(500));
                }
                !throttled
            })
            .expect("the throttle let the check in");
        assert_eq!(status, 404, "event {id:?} of a refused request was written: {body}");
    }

    // Everything: examples, boundaries, fuzzing and stateful sequences (the links schemathesis
    // infers), every answer checked against the document.
    let checks = "not_a_server_error,status_code_conformance,content_type_conformance,\
                  response_headers_conformance,response_schema_conformance";
    let (passed, output) = run_schemathesis(&host, &config, &["--checks", checks], &[]);
    assert!(passed, "schemathesis found something:\n{output}");
    assert!(output.contains("passed"), "{output}");
    // Schemathesis's wrong credentials set off the failed-credential throttle of this address,
    // which the test's own client shares: wait until it lets a request in (bounded: 20 s).
    let started = std::time::Instant::now();
    while host.get(&operator, "/events").0 == 429 && started.elapsed() < std::time::Duration::from_secs(20) {
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    assert_verifies(&host, &operator);
}

/// schemathesis's finding: serde reads a struct from an array of its fields in order, so
/// `[null, null]` was taken as a backtest body and `["refuse"]` as the settings. A body is an
/// object; an array is refused, naming the body, and changes nothing.
#[test]
fn a_body_given_as_an_array_of_fields_is_refused() {
    let (_dir, data) = data_dir();
    let host = Host::start(&data);
    let operator = host.multi_event_with_aff1("acme");
    let post = |path: &str, body: &str| {
        answer(
            host.client
                .post(host.url(path))
                .bearer_auth(&operator.api_key)
                .header("content-type", "application/json")
                .body(body.to_owned())
                .send(),
        )
    };
    let (status, body) = post("/v1/operators/acme/plugins/1/replay", "[null, null]");
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["details"][0]["field"], "", "{body}");
    assert!(body["message"].as_str().unwrap().contains("JSON object"), "{body}");
    let (status, body) = answer(
        host.client
            .put(host.url("/v1/operators/acme/settings"))
            .bearer_auth(&operator.api_key)
            .body(r#" ["refuse"]"#)
            .send(),
    );
    assert_eq!(status, 422, "{body}");
    // The setting is still the default: a late event is adjusted for, not refused.
    let (status, body) = answer(
        host.client
            .put(host.url("/v1/operators/acme/settings"))
            .bearer_auth(&operator.api_key)
            .json(&json!({"late_events": "adjust"}))
            .send(),
    );
    assert_eq!((status.as_u16(), &body["late_events"]), (200, &json!("adjust")), "{body}");
    let (status, body) = post("/v1/operators/acme/plugins/1/replay", "{}");
    assert_eq!(status, 200, "{body}");
}

/// A path segment, percent-encoded (event ids from a fuzzer hold anything).
fn urlencoding(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
