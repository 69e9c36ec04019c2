//! The plugin author's guide (`plugin-sdk/README.md`), run as written: its ```` ```sh guide ````
//! blocks, in order, as one bash script, in a fresh directory, with the `commission-host` this
//! build made on `PATH` and a host of this test's at `$H`. That is also the template's test:
//! `plugin new` writes the crate, its `cargo test` passes, `plugin build` makes the component,
//! and `plugin test` passes its fixtures through it.

use crate::common;

use std::path::Path;
use std::process::Command;

use common::{ADMIN_TOKEN, Host, data_dir};

/// The shell blocks CI runs, in order.
fn guide_script(guide: &str) -> String {
    let mut script = String::from("set -euo pipefail\n");
    let mut in_block = false;
    for line in guide.lines() {
        match (in_block, line.trim_end()) {
            (false, "```sh guide") => in_block = true,
            (true, "```") => in_block = false,
            (true, line) => {
                script.push_str(line);
                script.push('\n');
            }
            _ => {}
        }
    }
    script
}

#[test]
fn the_plugin_authors_guide_runs_as_written() {
    let repository = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let guide = std::fs::read_to_string(repository.join("plugin-sdk/README.md")).unwrap();
    let script = guide_script(&guide);
    for command in
        ["plugin new", "cargo test", "plugin build", "plugin test", "plugin trace", "plugin check", "plugin upload"]
    {
        assert!(script.contains(command), "the guide runs `{command}`:\n{script}");
    }

    // Under the repository's target directory: its toolchain file applies, and `plugin new`
    // finds the SDK of this checkout. The plugin's cargo gets a target directory of its own.
    let target = Path::new(env!("CARGO_BIN_EXE_commission-host")).parent().unwrap().parent().unwrap();
    std::fs::create_dir_all(target.join("guide-test")).unwrap();
    let work = tempfile::tempdir_in(target.join("guide-test")).unwrap();
    let (_dir, data) = data_dir();
    let host = Host::start(&data);
    let bin = Path::new(env!("CARGO_BIN_EXE_commission-host")).parent().unwrap();
    let path = std::env::join_paths(
        std::iter::once(bin.to_path_buf()).chain(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())),
    )
    .unwrap();
    let output = Command::new("bash")
        .args(["-c", &script])
        .current_dir(work.path())
        .env("PATH", path)
        .env("H", &host.base)
        .env("ADMIN", ADMIN_TOKEN)
        .env_remove("CARGO_TARGET_DIR")
        .output()
        .expect("running bash");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the guide failed:\n{script}\n--- stdout\n{stdout}\n--- stderr\n{stderr}");

    for expected in [
        "created the plugin crate my-deal",
        "fixtures/basic.ndjson: all 6 steps as expected",
        "== event d-9\nlog (1 lines)\n  info  deposit 15 is below ftd_min_deposit 20",
        "an upload would accept it",
        "as version 1 of operator acme (contract 0.2.0",
        "\"status\":\"accepted\"",
        "\"rule\":\"ftd-cpa\"",
        "\"explanation\":\"first deposit of 100.00: CPA 25\"",
    ] {
        assert!(stdout.contains(expected), "missing {expected:?} in:\n{stdout}\n--- stderr\n{stderr}");
    }
    assert!(stdout.contains("built ") && stdout.contains("my_deal.wasm"), "{stdout}");
    assert!(stdout.contains("test result: ok. 3 passed"), "the template's native tests: {stdout}");
}
