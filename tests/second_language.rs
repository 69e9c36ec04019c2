//! Language neutrality, shown: `plugins/multi-event-py` is the multi-event plugin written in
//! Python and built with componentize-py (from PyPI) against the same WIT. The host loads it
//! in the same sandbox, it passes the Rust twin's fixtures, and on the same events it pays,
//! logs and stores exactly what the Rust plugin does.
//!
//! componentize-py is used from PATH when there; otherwise it is installed with pip into
//! `target/python-tools` (CI installs it first, see `.ci/run`). Run with `--nocapture` to see
//! the measured size, compile and per-event figures the README quotes.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use commission_host::fixtures::{self, Fixture};
use commission_host::sandbox::{Limits, LoadedPlugin, Sandbox};
use commission_plugin_sdk::fixtures::{Action, Expectation, Step};
use commission_plugin_sdk::{Affiliate, Decimal, Event};
use common::{Host, data_dir, plugin_wasm};
use reqwest::StatusCode;
use serde_json::json;

const COMPONENTIZE_PY: &str = "componentize-py==0.25.1";

fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_commission-host")).parent().unwrap().parent().unwrap().to_path_buf()
}

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The Python plugin's component, built once per test run with componentize-py.
fn python_component() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let output = target_dir().join("python-plugins/multi_event_py.wasm");
        std::fs::create_dir_all(output.parent().unwrap()).unwrap();
        let mut command = componentize_py();
        command
            .args(["-d", repository().join("wit/since_v0.2.0").to_str().unwrap(), "-w", "plugin", "componentize"])
            .args(["-p", repository().join("plugins/multi-event-py").to_str().unwrap(), "app", "-o"])
            .arg(&output)
            // No __pycache__ left in the source tree.
            .env("PYTHONDONTWRITEBYTECODE", "1");
        let started = Instant::now();
        let result = command.output().expect("running componentize-py");
        assert!(
            result.status.success(),
            "componentize-py failed:\n{}{}",
            String::from_utf8_lossy(&result.stdout),
            String::from_utf8_lossy(&result.stderr)
        );
        eprintln!("componentize-py built the Python plugin in {:.1?}", started.elapsed());
        output
    })
}

/// componentize-py from PATH, or installed from PyPI into `target/python-tools`.
fn componentize_py() -> Command {
    if Command::new("componentize-py").arg("--version").output().is_ok_and(|output| output.status.success()) {
        return Command::new("componentize-py");
    }
    let tools = target_dir().join("python-tools");
    if !tools.join("componentize_py").is_dir() {
        let installed = Command::new("python3")
            .args(["-m", "pip", "install", "--quiet", "--target"])
            .arg(&tools)
            .arg(COMPONENTIZE_PY)
            .status()
            .expect("python3 with pip, to install componentize-py");
        assert!(installed.success(), "`pip install {COMPONENTIZE_PY}` failed");
    }
    let mut command = Command::new("python3");
    command.args(["-c", "import componentize_py; componentize_py.script()"]).env("PYTHONPATH", &tools);
    command
}

fn compile(sandbox: &Sandbox, wasm: &[u8]) -> (LoadedPlugin, Duration) {
    let started = Instant::now();
    let (_, artifact) = sandbox.compile(wasm).expect("a valid component");
    let plugin = sandbox.load(&artifact).unwrap();
    (plugin, started.elapsed())
}

#[test]
fn the_python_twin_passes_the_rust_twins_fixtures_in_plugin_test() {
    let fixtures = repository().join("plugins/multi-event/fixtures/multi-event.ndjson");
    let output = Command::new(env!("CARGO_BIN_EXE_commission-host"))
        .args(["plugin", "test"])
        .arg(python_component())
        .arg(&fixtures)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.ends_with("multi-event.ndjson: all 12 steps as expected\n"), "{stdout}");
}

/// The fixtures, then 300 generated events over 12 customers and a three-level chain, through
/// both components: every step pays the same commissions (explanations included), fails the
/// same way, and reads and writes the same state.
#[test]
fn the_python_twin_pays_and_stores_exactly_what_the_rust_plugin_does() {
    let sandbox = Sandbox::new(Limits::default()).unwrap();
    let rust_wasm = plugin_wasm("multi-event");
    let python_wasm = std::fs::read(python_component()).unwrap();
    let (rust, rust_compile) = compile(&sandbox, &rust_wasm);
    let (python, python_compile) = compile(&sandbox, &python_wasm);

    let mut fixture = Fixture::load(repository().join("plugins/multi-event/fixtures/multi-event.ndjson")).unwrap();
    let fixture_steps = fixture.steps.len();
    fixture.steps.extend(generated_steps(300));
    let (rust_report, rust_traces) = fixtures::run(&sandbox, &rust, &fixture);
    let (python_report, python_traces) = fixtures::run(&sandbox, &python, &fixture);

    assert!(rust_report.steps[..fixture_steps].iter().all(|step| step.passed), "{rust_report}");
    let mut paying = 0;
    for (rust_step, python_step) in rust_report.steps.iter().zip(&python_report.steps) {
        assert_eq!(rust_step.got, python_step.got, "{}: {}", rust_step.location, rust_step.description);
        paying += usize::from(
            matches!(&rust_step.got, commission_plugin_sdk::fixtures::Outcome::Paid(paid) if !paid.is_empty()),
        );
    }
    assert!(paying > 30, "the generated events exercise the rules: {paying} steps paid");
    assert_eq!(rust_traces.len(), python_traces.len());
    for (rust_trace, python_trace) in rust_traces.iter().zip(&python_traces) {
        assert_eq!(rust_trace.state_writes, python_trace.state_writes, "{}", rust_trace.call);
        assert_eq!(rust_trace.state_reads, python_trace.state_reads, "{}", rust_trace.call);
        assert_eq!(rust_trace.logs, python_trace.logs, "{}", rust_trace.call);
    }

    let per_event = |traces: &[fixtures::Trace]| {
        let count = traces.len() as u32;
        let fuel: u64 = traces.iter().map(|trace| trace.fuel_used).sum();
        (traces.iter().map(|trace| trace.elapsed).sum::<Duration>() / count, fuel / u64::from(count))
    };
    let (rust_time, rust_fuel) = per_event(&rust_traces);
    let (python_time, python_fuel) = per_event(&python_traces);
    eprintln!("                 component      compile    per event    fuel per event");
    eprintln!("Rust   {:>18} B {:>10.1?} {:>12.1?} {:>12}", rust_wasm.len(), rust_compile, rust_time, rust_fuel);
    eprintln!(
        "Python {:>18} B {:>10.1?} {:>12.1?} {:>12}",
        python_wasm.len(),
        python_compile,
        python_time,
        python_fuel
    );
}

/// Deterministic events for customers g0..g11, all attributed to `sub` under `master` under
/// `network`: deposits, trades of varying lots, chargebacks of earlier deposits, and others.
fn generated_steps(count: usize) -> Vec<Step> {
    let chain = vec![
        Affiliate::new(
            "sub",
            [("ftd_cpa", "37.5"), ("ftd_min_deposit", "25"), ("volume_threshold_lots", "7.5")].into_iter().collect(),
        ),
        Affiliate::new("master", [("override_percent", "12.5")].into_iter().collect()),
        Affiliate::new("network", [("override_percent", "33")].into_iter().collect()),
    ];
    let mut seed: u64 = 0x5eed;
    let mut next = move |bound: u64| {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        (seed >> 33) % bound
    };
    (0..count)
        .map(|n| {
            let customer = format!("g{}", next(12));
            let mut event = Event::new(&format!("g-{n}"), "", &customer, 1_793_491_200_000 + n as i64 * 60_000);
            match next(10) {
                0..=3 => {
                    event.kind = "deposit".into();
                    event.amount = Some(Decimal::new(next(10_000) as i64, 2));
                    event.currency = Some("USD".into());
                }
                4..=7 => {
                    event.kind = "trade".into();
                    event = event.with_attribute("lots", &Decimal::new(next(400) as i64, 2).to_string());
                }
                8 => {
                    event.kind = "chargeback".into();
                    event = event.with_attribute("deposit", &format!("g-{}", next(n as u64 + 1)));
                }
                _ => event.kind = "registration".into(),
            }
            Step {
                location: format!("generated event {n}"),
                note: None,
                action: Action::Event { event, affiliate: None, chain: Some(chain.clone()) },
                expect: Expectation::Commissions(Vec::new()),
            }
        })
        .collect()
}

#[test]
fn a_server_takes_the_python_plugin_within_its_upload_limit_and_pays_as_the_rust_one() {
    let python_wasm = std::fs::read(python_component()).unwrap();
    let (_dir, data) = data_dir();
    {
        let host = Host::start(&data);
        let acme = host.create_operator("acme");
        let (status, body) = host.upload_plugin(&acme, &python_wasm, true);
        assert_eq!((status, body["error"].as_str()), (StatusCode::PAYLOAD_TOO_LARGE, Some("body_too_large")), "{body}");
    }
    let (_dir, data) = data_dir();
    let host = Host::start_with(&data, &["--max-plugin-bytes", &(32 << 20).to_string()]);
    let python = host.create_operator("python");
    let rust = host.create_operator("rust");
    let started = Instant::now();
    let (status, body) = host.upload_plugin(&python, &python_wasm, true);
    assert_eq!(status, StatusCode::CREATED, "{body}");
    eprintln!("uploading (validating, compiling, smoke-running) the Python plugin took {:.1?}", started.elapsed());
    host.install_plugin(&rust, "multi-event");
    for operator in [&python, &rust] {
        host.put_affiliate(operator, "master", None, json!({"override_percent": "10"}));
        host.put_affiliate(operator, "aff1", Some("master"), json!({"ftd_cpa": "12.50"}));
    }
    let events = [
        json!({"id": "d-1", "type": "deposit", "customer": "c1", "amount": "100.00", "affiliate": "aff1"}),
        json!({"id": "t-1", "type": "trade", "customer": "c1", "attributes": {"lots": "4"}}),
        json!({"id": "t-2", "type": "trade", "customer": "c1", "attributes": {"lots": "6.5"}}),
        json!({"id": "cb-1", "type": "chargeback", "customer": "c1", "attributes": {"deposit": "d-1"}}),
        json!({"id": "t-3", "type": "trade", "customer": "c1"}),
    ];
    let mut paid = 0;
    for event in events {
        let (_, from_python) = host.post_events(&python, &event);
        let (_, from_rust) = host.post_events(&rust, &event);
        for field in ["status", "attributed_to", "failure"] {
            assert_eq!(from_python[field], from_rust[field], "{field}: {from_python} vs {from_rust}");
        }
        let strip = |answer: &serde_json::Value| -> Vec<serde_json::Value> {
            let commissions = answer["commissions"].as_array().unwrap();
            // Amounts by value: rust_decimal keeps the scale of a division (5 * 10 / 100 is
            // 0.50) where Python's decimal gives 0.5; the same money.
            let amount = |value: &serde_json::Value| common::amount(value).normalize().to_string();
            commissions
                .iter()
                .map(|c| {
                    json!([
                        c["affiliate"],
                        amount(&c["amount"]),
                        c["rule"],
                        c["explanation"],
                        c["reverses"].is_string()
                    ])
                })
                .collect()
        };
        assert_eq!(strip(&from_python), strip(&from_rust), "{event}");
        paid += strip(&from_rust).len();
    }
    assert_eq!(
        paid, 8,
        "CPA, first trade and volume bonus with their overrides, and the clawback of the CPA and its override"
    );
}
