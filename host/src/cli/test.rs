//! `plugin test PLUGIN.wasm FIXTURES...`: each fixture file through the real component, in the
//! server's sandbox, with the differences shown per step (expected `-`, got `+`). Exits
//! non-zero when any step differs, so it fits a CI job.

use std::path::PathBuf;
use std::process::ExitCode;

use commission_host::fixtures::{self, Fixture};

#[derive(clap::Args)]
pub struct Args {
    /// The component, as `plugin build` made it.
    plugin: PathBuf,
    /// Fixture files (NDJSON or JSON): events, deal terms and the commissions expected.
    #[arg(required = true)]
    fixtures: Vec<PathBuf>,
}

pub fn run(Args { plugin, fixtures: files }: Args) -> anyhow::Result<ExitCode> {
    let fixtures = files.iter().map(Fixture::load).collect::<Result<Vec<_>, _>>()?;
    let (sandbox, component) = super::load_component(&plugin)?;
    let mut failed = false;
    for (path, fixture) in files.iter().zip(&fixtures) {
        let (report, _) = fixtures::run(&sandbox, &component, fixture);
        failed |= !report.passed();
        // The report starts on its own line when it lists differences.
        let separator = if report.passed() { " " } else { "" };
        print!("{}:{separator}{report}", path.display());
    }
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}
