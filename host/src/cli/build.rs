//! `plugin build`: cargo for `wasm32-wasip2` with the crate's `plugin` profile (small, no
//! debug info), then the path of the component it made. A missing target is caught first and
//! answered with the command that adds it.

use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use anyhow::Context as _;

const TARGET: &str = "wasm32-wasip2";

#[derive(clap::Args)]
pub struct Args {
    /// The plugin crate (the directory of its Cargo.toml).
    #[arg(long, default_value = ".")]
    path: PathBuf,
    /// The cargo profile; the template's `plugin` profile is the one to upload.
    #[arg(long, default_value = "plugin")]
    profile: String,
}

pub fn run(Args { path, profile }: Args) -> anyhow::Result<ExitCode> {
    if !path.join("Cargo.toml").is_file() {
        anyhow::bail!(
            "{} has no Cargo.toml: run `plugin build` in the plugin's crate, or give it with --path \
             (`commission-host plugin new NAME` makes one)",
            path.display()
        );
    }
    check_target(&path)?;
    let mut cargo = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args(["build", "--profile", &profile, "--target", TARGET, "--message-format=json-render-diagnostics"])
        .current_dir(&path)
        .stdout(Stdio::piped())
        .spawn()
        .context("running cargo (is it installed, and on PATH?)")?;
    let mut components = Vec::new();
    for line in std::io::BufReader::new(cargo.stdout.take().expect("piped stdout")).lines() {
        let message: serde_json::Value = serde_json::from_str(&line?).unwrap_or_default();
        if message["reason"] == "compiler-artifact" {
            let files = message["filenames"].as_array().into_iter().flatten().filter_map(|file| file.as_str());
            components.extend(files.filter(|file| file.ends_with(".wasm")).map(PathBuf::from));
        }
    }
    let status = cargo.wait()?;
    if !status.success() {
        anyhow::bail!("cargo could not build the plugin ({status}); its messages are above");
    }
    match components.as_slice() {
        [] => anyhow::bail!(
            "cargo built no .wasm: the crate needs `crate-type = [\"cdylib\", \"rlib\"]` in its [lib] section"
        ),
        files => {
            for file in files {
                let size = std::fs::metadata(file).map(|metadata| metadata.len()).unwrap_or(0);
                println!("built {} ({size} bytes)", file.display());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Fails with the fix when rustup says the target is not installed for the crate's toolchain.
/// Without rustup (a distribution's Rust), cargo's own error will say it.
fn check_target(path: &Path) -> anyhow::Result<()> {
    let Ok(output) = Command::new("rustup").args(["target", "list", "--installed"]).current_dir(path).output() else {
        return Ok(());
    };
    let installed = String::from_utf8_lossy(&output.stdout);
    if output.status.success() && !installed.lines().any(|line| line.trim() == TARGET) {
        anyhow::bail!(
            "the {TARGET} target is not installed for this toolchain; add it with:\n\n    rustup target add {TARGET}\n"
        );
    }
    Ok(())
}
