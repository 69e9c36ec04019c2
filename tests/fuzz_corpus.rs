//! The fuzz targets (`fuzz/`) on their seed corpus and on every input a fuzz run found, as an
//! ordinary test: CI needs no nightly toolchain to keep the findings fixed.
//!
//! A finding goes into `fuzz/regressions/<target>/`, named after what it broke.

#[path = "../fuzz/src/lib.rs"]
mod targets;

use std::path::Path;

/// Feeds every file of the target's corpus and regressions to it; returns how many.
fn run(target: &str, body: fn(&[u8])) {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut inputs = 0;
    for kind in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(fuzz.join(kind).join(target)) else { continue };
        for entry in entries {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            let outcome = std::panic::catch_unwind(|| body(&data));
            assert!(outcome.is_ok(), "{target} failed on {}", path.display());
            inputs += 1;
        }
    }
    assert!(inputs > 0, "no corpus for {target}");
    println!("{target}: {inputs} inputs");
}

#[test]
fn postback_query() {
    run("postback_query", targets::postback_query);
}

#[test]
fn webhook_json() {
    run("webhook_json", targets::webhook_json);
}

#[test]
fn webhook_signature() {
    run("webhook_signature", targets::webhook_signature);
}

#[test]
fn plugin_result() {
    run("plugin_result", targets::plugin_result);
}
