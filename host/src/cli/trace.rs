//! `plugin trace PLUGIN.wasm EVENT`: the author's debugger. Runs one event through the real
//! component and prints everything the host saw of it: log lines, every state key read (with
//! its value) and written, the answer, the host's verdict on it, fuel and time.
//!
//! The event runs on the state that `--fixtures FILE` builds (its steps run first), so the
//! fifth event of a scenario can be traced as it would run fifth. Its referral chain is the
//! fixture's attribution, or `--affiliate` with `--deal` terms.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use commission_host::fixtures::{self, Fixture, Trace};
use commission_plugin_sdk::fixtures::{Action, Step};
use commission_plugin_sdk::{Affiliate, Properties};

#[derive(clap::Args)]
pub struct Args {
    /// The component, as `plugin build` made it.
    plugin: PathBuf,
    /// The event: webhook JSON (`{"id","type","customer",...}`) or a fixture step
    /// (`{"event": ..., "chain": ...}`), inline or in a file.
    event: String,
    /// Run this fixture file's steps first, for their state, affiliates and attribution.
    #[arg(long)]
    fixtures: Option<PathBuf>,
    /// The affiliate the event is paid to (default: the event's `affiliate`, else `aff1`).
    #[arg(long)]
    affiliate: Option<String>,
    /// A deal term of that affiliate, `KEY=VALUE`; repeat for more.
    #[arg(long = "deal", value_parser = key_value)]
    deal: Vec<(String, String)>,
    /// Print the calls of the fixture's steps too, not only the event's.
    #[arg(long)]
    all: bool,
}

fn key_value(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .ok_or_else(|| format!("{text:?} is not KEY=VALUE"))
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut fixture = match &args.fixtures {
        Some(path) => Fixture::load(path)?,
        None => Fixture { operator: Default::default(), affiliates: Default::default(), steps: Vec::new() },
    };
    let earlier_steps = fixture.steps.len();
    let mut step = event_step(&args.event)?;
    if let Action::Event { affiliate, chain, .. } = &mut step.action {
        // Without a scenario, or when told, the chain is the one affiliate given here.
        if chain.is_none() && (args.fixtures.is_none() || args.affiliate.is_some() || !args.deal.is_empty()) {
            let id = args.affiliate.clone().or_else(|| affiliate.clone()).unwrap_or_else(|| "aff1".to_owned());
            let deal: Properties = args.deal.iter().cloned().collect();
            *chain = Some(vec![Affiliate { id, deal }]);
        }
    }
    fixture.steps.push(step);
    let (sandbox, component) = super::load_component(&args.plugin)?;
    let (report, traces) = fixtures::run(&sandbox, &component, &fixture);
    let last = report.steps.last().expect("the traced step");
    let event_traces = traces.iter().filter(|trace| trace.call == format!("event {}", event_id(&fixture)));
    let shown: Vec<&Trace> = if args.all { traces.iter().collect() } else { event_traces.collect() };
    if shown.is_empty() {
        println!("{}: not evaluated: its customer is not attributed to an affiliate", last.description);
        println!("  (name an `affiliate` in the event, pass --affiliate, or give a `chain`)");
    }
    for trace in shown {
        print!("{}", render(trace, sandbox.limits().fuel));
    }
    if earlier_steps > 0 && !report.steps[..earlier_steps].iter().all(|step| step.passed) {
        println!("note: some steps of the fixture file did not give what they expect; `plugin test` shows which");
    }
    Ok(ExitCode::SUCCESS)
}

fn event_id(fixture: &Fixture) -> String {
    match fixture.steps.last().map(|step| &step.action) {
        Some(Action::Event { event, .. }) => event.id.clone(),
        _ => String::new(),
    }
}

/// The event as a fixture step: inline JSON or a file holding it.
fn event_step(event: &str) -> anyhow::Result<Step> {
    let text = if event.trim_start().starts_with('{') {
        event.to_owned()
    } else {
        std::fs::read_to_string(event)
            .with_context(|| format!("reading the event file {event:?} (or give the event's JSON inline)"))?
    };
    let value: serde_json::Value =
        serde_json::from_str(&text).context("the event is not JSON: give one event object or one fixture step")?;
    let step = if value.get("event").is_some() { value } else { serde_json::json!({ "event": value }) };
    let fixture = Fixture::parse(&step.to_string()).context("the event is not one the webhook would take")?;
    fixture.steps.into_iter().next().context("no event given")
}

fn render(trace: &Trace, fuel_limit: u64) -> String {
    let mut out = String::new();
    let text = |value: &Option<Vec<u8>>| match value {
        None => "(none)".to_owned(),
        Some(bytes) => match std::str::from_utf8(bytes) {
            Ok(text) => format!("{text:?}"),
            Err(_) => format!("{} bytes: {}", bytes.len(), hex::encode(bytes)),
        },
    };
    let _ = writeln!(out, "== {}", trace.call);
    let _ = writeln!(out, "log ({} lines)", trace.logs.len());
    for (level, message) in &trace.logs {
        let _ = writeln!(out, "  {level:<5} {message}");
    }
    let _ = writeln!(out, "state read ({} keys)", trace.state_reads.len());
    for (key, value) in &trace.state_reads {
        let _ = writeln!(out, "  {key} = {}", text(value));
    }
    let _ = writeln!(
        out,
        "state written ({} keys{})",
        trace.state_writes.len(),
        match &trace.outcome {
            Ok(_) => "",
            Err(_) => ", dropped: the event failed",
        }
    );
    for (key, value) in &trace.state_writes {
        match value {
            Some(_) => {
                let _ = writeln!(out, "  {key} = {}", text(value));
            }
            None => {
                let _ = writeln!(out, "  {key} deleted");
            }
        }
    }
    match &trace.outcome {
        Ok(commissions) => {
            let _ = writeln!(out, "commissions ({})", commissions.len());
            for c in commissions {
                let reverses =
                    c.reverses.as_ref().map(|r| format!(" reverses {}/{}", r.event_id, r.rule)).unwrap_or_default();
                let _ = writeln!(
                    out,
                    "  {} {} {} {}{reverses} \"{}\"",
                    c.affiliate, c.amount, c.currency, c.rule, c.explanation
                );
            }
        }
        Err(message) => {
            let _ = writeln!(out, "failed: {message}");
            if let Ok(answer) = &trace.answer {
                let _ = writeln!(out, "  (the plugin answered {} commissions, which the host refused)", answer.len());
            }
        }
    }
    let _ = writeln!(
        out,
        "fuel {} of {fuel_limit} ({:.3}%), {:.2?} with instantiation",
        trace.fuel_used,
        trace.fuel_used as f64 * 100.0 / fuel_limit as f64,
        trace.elapsed
    );
    out
}
