//! The plugin author's tools, through the real binary and real components: `plugin test` on
//! good and wrong fixtures, `plugin check`, `plugin trace`, `plugin upload`, and the fixture
//! runner's agreement with the server itself.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use commission_plugin_sdk::fixtures::{Action, Expectation, Fixture};
use common::{Host, data_dir, paid, plugin_wasm};
use reqwest::StatusCode;
use rust_decimal::Decimal;
use serde_json::{Value, json};

/// `commission-host ARGS`, its output captured.
fn cli(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_commission-host")).args(args).output().expect("running commission-host")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn component(name: &str) -> String {
    let path = Path::new(env!("CARGO_BIN_EXE_commission-host")).parent().unwrap().parent().unwrap();
    let path = path.join("wasm32-wasip2/plugin").join(format!("{name}.wasm"));
    assert!(path.is_file(), "{}: build the plugins first with `cargo build-plugins`", path.display());
    path.to_string_lossy().into_owned()
}

fn multi_event_fixtures() -> String {
    repository().join("plugins/multi-event/fixtures/multi-event.ndjson").to_string_lossy().into_owned()
}

#[test]
fn plugin_test_passes_good_fixtures_and_shows_a_readable_diff_for_a_wrong_one() {
    let good = cli(&["plugin", "test", &component("multi_event"), &multi_event_fixtures()]);
    assert!(good.status.success(), "{}{}", stdout(&good), stderr(&good));
    assert!(stdout(&good).ends_with("multi-event.ndjson: all 12 steps as expected\n"), "{}", stdout(&good));

    // The same file with two expectations wrong: a bonus of 25 instead of 20, and nothing
    // instead of the failure a trade without lots is.
    let dir = tempfile::tempdir().unwrap();
    let wrong = dir.path().join("wrong.ndjson");
    let text = std::fs::read_to_string(multi_event_fixtures()).unwrap();
    let text = text
        .replace(r#""amount": "20", "rule": "volume-bonus""#, r#""amount": "25", "rule": "volume-bonus""#)
        .replace(r#""expect_error": "lots""#, r#""expect": []"#);
    std::fs::write(&wrong, text).unwrap();
    let output = cli(&["plugin", "test", &component("multi_event"), wrong.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1), "{}", stdout(&output));
    let expected_diff = "
line 6: event t-3 (trade of customer c1): not as expected
  note: $20 once the total (10.5) exceeds 10
  - aff1 25 volume-bonus \"volume bonus: 20 as cumulative lots reached 10.5 (over 10)\"
  + aff1 20 USD volume-bonus \"volume bonus: 20 as cumulative lots reached 10.5 (over 10)\"

line 7: event t-4 (trade of customer c1): not as expected
  note: a trade without lots fails, and leaves no state behind
  - (nothing paid)
  + failed: rule_error: trade without the attribute `lots`

2 of 12 steps not as expected (- expected, + got)
";
    assert!(stdout(&output).ends_with(expected_diff), "{}", stdout(&output));

    // A fixture that is not one says where and why, and so does a missing component.
    let malformed = dir.path().join("malformed.ndjson");
    std::fs::write(
        &malformed,
        "{\"affiliates\": {}}\n{\"event\": {\"id\": \"e\", \"type\": \"x\", \"customer\": \"c\", \"amount\": 5}}\n",
    )
    .unwrap();
    let output = cli(&["plugin", "test", &component("multi_event"), malformed.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("malformed.ndjson: line 2: `event.amount` must be a decimal string"),
        "{}",
        stderr(&output)
    );
    let output = cli(&["plugin", "test", "nowhere.wasm", &multi_event_fixtures()]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("build it first with `commission-host plugin build`"), "{}", stderr(&output));
}

/// Each step of the reference fixtures, sent to a real server, pays what `plugin test` says:
/// the runner attributes, carries state and checks answers as the pipeline does.
#[test]
fn the_server_pays_what_the_fixture_runner_expects() {
    let fixture = Fixture::load(multi_event_fixtures()).unwrap();
    let (_dir, data) = data_dir();
    let host = Host::start(&data);
    let acme = host.create_operator(&fixture.operator.id);
    host.install_plugin(&acme, "multi-event");
    let deal_json = |deal: &commission_plugin_sdk::Properties| -> Value {
        deal.iter().map(|(key, value)| (key.to_owned(), json!(value))).collect::<serde_json::Map<_, _>>().into()
    };
    // Parents before their children, as the API requires.
    let mut created = std::collections::BTreeSet::new();
    while created.len() < fixture.affiliates.len() {
        for (id, setup) in &fixture.affiliates {
            let parent_ready = setup.parent.as_ref().is_none_or(|parent| created.contains(parent));
            if parent_ready && !created.contains(id) {
                host.put_affiliate(&acme, id, setup.parent.as_deref(), deal_json(&setup.deal));
                created.insert(id.clone());
            }
        }
    }
    let mut checked = 0;
    for step in &fixture.steps {
        let Action::Event { event, affiliate, chain } = &step.action else { panic!("no period closes here") };
        let affiliate = match chain {
            // A chain given inline becomes affiliates on the server, the first one attributed.
            Some(chain) => {
                for (index, link) in chain.iter().enumerate().rev() {
                    let parent = chain.get(index + 1).map(|parent| parent.id.as_str());
                    host.put_affiliate(&acme, &link.id, parent, deal_json(&link.deal));
                }
                Some(chain[0].id.clone())
            }
            None => affiliate.clone(),
        };
        let body = json!({
            "id": event.id, "type": event.kind, "customer": event.customer,
            "occurred_at": event.occurred_at.to_string(),
            "amount": event.amount.map(|amount| amount.to_string()), "currency": event.currency,
            "affiliate": affiliate,
            "attributes": event.attributes.iter().collect::<std::collections::BTreeMap<_, _>>(),
        });
        let (status, answer) = host.post_events(&acme, &body);
        assert_eq!(status, StatusCode::OK, "{answer}");
        match &step.expect {
            Expectation::Commissions(expected) => {
                assert_eq!(answer["status"], "accepted", "{}: {answer}", step.location);
                let got = answer["commissions"].as_array().unwrap();
                assert_eq!(got.len(), expected.len(), "{}: {answer}", step.location);
                for (commission, expected) in got.iter().zip(expected) {
                    assert_eq!(commission["affiliate"], json!(expected.affiliate), "{}: {answer}", step.location);
                    assert_eq!(common::amount(&commission["amount"]), expected.amount, "{}", step.location);
                    for (field, value) in [("rule", &expected.rule), ("explanation", &expected.explanation)] {
                        if let Some(value) = value {
                            assert_eq!(commission[field], json!(value), "{}: {answer}", step.location);
                        }
                    }
                }
            }
            Expectation::Error(text) => {
                assert_eq!(answer["status"], "failed", "{}: {answer}", step.location);
                assert!(answer["failure"]["message"].as_str().unwrap().contains(text.as_str()), "{answer}");
            }
        }
        checked += 1;
    }
    assert_eq!(checked, 12);
}

#[test]
fn check_gives_the_verdict_of_an_upload_offline() {
    let output = cli(&["plugin", "check", &component("multi_event")]);
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    assert!(text.contains("an upload would accept it") && text.contains("commission:plugin@0.2.0"), "{text}");

    for (plugin, reason) in [
        ("smuggler", "imports `example:exfiltrate/sink`"),
        ("broken", "the smoke run on a synthetic `commission-host.smoke` event failed"),
    ] {
        let output = cli(&["plugin", "check", &component(plugin)]);
        assert_eq!(output.status.code(), Some(2), "{plugin}: {}", stdout(&output));
        assert!(stderr(&output).contains("an upload would refuse it"), "{}", stderr(&output));
        assert!(stderr(&output).contains(reason), "{plugin}: {}", stderr(&output));
    }
    let dir = tempfile::tempdir().unwrap();
    let core = dir.path().join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").unwrap();
    let output = cli(&["plugin", "check", core.to_str().unwrap()]);
    assert!(stderr(&output).contains("core wasm module, not a component"), "{}", stderr(&output));
}

/// `plugin check x.wasm | head -1`: a reader that goes away ends the command quietly, as it
/// ends `cat`, with no panic or backtrace (issue 17).
#[test]
fn a_closed_stdout_ends_a_command_quietly() {
    // `true` exits at once, so the pipe is closed before `check` writes its verdict.
    let output = Command::new("bash")
        .arg("-c")
        .arg(r#""$0" plugin check "$1" | true; exit "${PIPESTATUS[0]}""#)
        .arg(env!("CARGO_BIN_EXE_commission-host"))
        .arg(component("multi_event"))
        .output()
        .unwrap();
    let stderr = stderr(&output);
    assert!(!stderr.contains("panicked") && !stderr.contains("Broken pipe"), "{stderr}");
    // Ended by SIGPIPE, as Unix tools are: the shell reports 128 + 13.
    assert_eq!(output.status.code(), Some(141), "{stderr}");
}

#[test]
fn trace_shows_the_logs_state_commissions_and_fuel_of_one_event() {
    // A deposit below the minimum: the plugin says why in its log, and pays nothing.
    let output = cli(&[
        "plugin",
        "trace",
        &component("multi_event"),
        r#"{"id": "d-1", "type": "deposit", "customer": "c1", "amount": "20"}"#,
        "--deal",
        "ftd_min_deposit=50",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    assert!(
        text.contains("== event d-1\nlog (1 lines)\n  info  deposit 20 below ftd_min_deposit 50: no FTD yet\n"),
        "{text}"
    );
    assert!(text.contains("commissions (0)\n"), "{text}");

    // The fifth trade of a scenario, on the state the fixture's steps built: reads and writes.
    let output = cli(&[
        "plugin",
        "trace",
        &component("multi_event"),
        r#"{"id": "t-9", "type": "trade", "customer": "c1", "attributes": {"lots": "3"}}"#,
        "--fixtures",
        &multi_event_fixtures(),
    ]);
    let text = stdout(&output);
    assert!(text.contains("  customer:c1:lots = \"10.5\"\n"), "read as the fixture left it: {text}");
    assert!(text.contains("state written (1 keys)\n  customer:c1:lots = \"13.5\"\n"), "{text}");
    let fuel: u64 = text.split("\nfuel ").nth(1).and_then(|rest| rest.split(' ').next()).unwrap().parse().unwrap();
    assert!(fuel > 0, "{text}");

    // A clawback on a fresh customer: the host's verdict, not only the plugin's answer.
    let output = cli(&[
        "plugin",
        "trace",
        &component("multi_event"),
        r#"{"event": {"id": "d-1", "type": "deposit", "customer": "c1", "amount": "100"}, "chain": [{"id": "sub", "deal": {"ftd_cpa": "40"}}, {"id": "master", "deal": {"override_percent": "10"}}]}"#,
    ]);
    let text = stdout(&output);
    assert!(
        text.contains("commissions (2)\n  sub 40 USD ftd-cpa \"first deposit: CPA 40 on deposit 100 USD\"\n  master 4 USD override-l1"),
        "{text}"
    );
}

#[test]
fn upload_puts_the_component_on_a_running_host() {
    let (_dir, data) = data_dir();
    let host = Host::start(&data);
    let acme = host.create_operator("acme");
    let upload = |key: &str| {
        Command::new(env!("CARGO_BIN_EXE_commission-host"))
            .args(["plugin", "upload", &component("multi_event"), "--operator", "acme", "--url", &host.base])
            .arg("--activate")
            .env("COMMISSION_HOST_API_KEY", key)
            .output()
            .unwrap()
    };
    let refused = upload("chk_not-the-key");
    assert_eq!(refused.status.code(), Some(2));
    assert!(stderr(&refused).contains("(401 Unauthorized)"), "{}", stderr(&refused));
    assert!(stderr(&refused).contains("check --operator and the API key"), "{}", stderr(&refused));

    let output = upload(&acme.api_key);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stdout(&output).contains("as version 1 of operator acme (contract 0.2.0"), "{}", stdout(&output));
    assert!(stdout(&output).trim_end().ends_with(", active"), "{}", stdout(&output));
    host.put_affiliate(&acme, "aff1", None, json!({}));
    let answer = host
        .accept(&acme, json!({"id": "d-1", "type": "deposit", "customer": "c1", "amount": "100", "affiliate": "aff1"}));
    assert_eq!(paid(&answer), [("aff1".to_owned(), Decimal::TEN)]);
    // The uploaded bytes are the built ones.
    let sha256 = stdout(&output).split("sha256 ").nth(1).unwrap()[..64].to_owned();
    use sha2::Digest as _;
    assert_eq!(sha256, hex::encode(sha2::Sha256::digest(plugin_wasm("multi-event"))));
}

/// Where rustup says `wasm32-wasip2` is not installed, `plugin build` stops before cargo and
/// gives the command that adds it. (A stand-in `rustup` first on PATH plays the toolchain
/// without the target.)
#[test]
fn build_says_how_to_add_a_missing_target() {
    use std::os::unix::fs::PermissionsExt as _;

    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let rustup = bin.join("rustup");
    std::fs::write(&rustup, "#!/bin/sh\necho x86_64-unknown-linux-gnu\n").unwrap();
    std::fs::set_permissions(&rustup, std::fs::Permissions::from_mode(0o755)).unwrap();
    let plugin = dir.path().join("plugin");
    std::fs::create_dir_all(&plugin).unwrap();
    std::fs::write(plugin.join("Cargo.toml"), "[package]\nname = \"plugin\"\nversion = \"0.1.0\"\n").unwrap();
    let path = std::env::join_paths(
        std::iter::once(bin).chain(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())),
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_commission-host"))
        .args(["plugin", "build", "--path"])
        .arg(&plugin)
        .env("PATH", path)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{}", stdout(&output));
    assert!(stderr(&output).contains("the wasm32-wasip2 target is not installed"), "{}", stderr(&output));
    assert!(stderr(&output).contains("    rustup target add wasm32-wasip2\n"), "{}", stderr(&output));

    let output = cli(&["plugin", "build", "--path", dir.path().to_str().unwrap()]);
    assert!(stderr(&output).contains("has no Cargo.toml"), "{}", stderr(&output));
}

/// `plugin new` outside the repository, with `--sdk-path`: a crate of its own workspace whose
/// SDK dependency resolves to the SDK; names that are not crate names and existing directories
/// are refused with the fix. (The guide's test builds and tests a generated crate.)
#[test]
fn new_writes_a_crate_that_depends_on_the_sdk_given() {
    let dir = tempfile::tempdir().unwrap();
    let sdk = repository().join("plugin-sdk");
    let new = |name: &str| {
        Command::new(env!("CARGO_BIN_EXE_commission-host"))
            .args(["plugin", "new", name, "--sdk-path"])
            .arg(&sdk)
            .current_dir(dir.path())
            .output()
            .unwrap()
    };
    let output = new("cpa-rules");
    assert!(output.status.success(), "{}", stderr(&output));
    let crate_dir = dir.path().join("cpa-rules");
    let manifest = std::fs::read_to_string(crate_dir.join("Cargo.toml")).unwrap();
    assert!(manifest.contains("name = \"cpa-rules\"") && manifest.contains("\n[workspace]\n"), "{manifest}");
    let sdk_path = manifest.split("commission-plugin-sdk = { path = \"").nth(1).unwrap().split('"').next().unwrap();
    assert_eq!(crate_dir.join(sdk_path).canonicalize().unwrap(), sdk.canonicalize().unwrap(), "{manifest}");
    for file in ["src/lib.rs", "fixtures/basic.ndjson", ".gitignore", "Cargo.lock"] {
        assert!(crate_dir.join(file).is_file(), "{file}");
    }
    assert!(std::fs::read_to_string(crate_dir.join("src/lib.rs")).unwrap().starts_with("//! cpa-rules: "));

    let again = new("cpa-rules");
    assert_eq!(again.status.code(), Some(2));
    assert!(stderr(&again).contains("exists already"), "{}", stderr(&again));
    let bad = new("Not A Name");
    assert!(stderr(&bad).contains("is not a crate name"), "{}", stderr(&bad));
    let output = cli(&["plugin", "new", "x", "--sdk-path", dir.path().to_str().unwrap()]);
    assert!(stderr(&output).contains("is not the SDK"), "{}", stderr(&output));
}
