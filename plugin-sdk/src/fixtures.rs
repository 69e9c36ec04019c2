//! Fixture files: events, the deal terms they run under, and the commissions expected after
//! each, written once and run two ways.
//!
//! - natively, in the plugin crate's `cargo test`, through [`run_file`] (the rule logic as
//!   plain Rust, with the in-memory [`state`](crate::state));
//! - through the built component, in the host's own sandbox, by
//!   `commission-host plugin test PLUGIN.wasm FIXTURES`.
//!
//! Both share this module's parser, attribution and comparison (the host implements
//! [`Evaluator`] on its sandbox), so a fixture means the same thing to both.
//!
//! # The format
//!
//! A file is a sequence of JSON values: one per line (NDJSON), a single document, or both mixed.
//! Each value is one of:
//!
//! - a **setup**: `{"operator": {"id", "currency", "config"}, "affiliates": {ID: {"parent", "deal"}}}`
//!   (every part optional; the operator defaults to `acme` paying in `USD`). Affiliates given
//!   here are known to later steps, as `PUT /v1/operators/{op}/affiliates/{id}` would make them.
//! - a **step**: `{"event": EVENT, "expect": [COMMISSION, ...]}`, where `EVENT` has the shape of
//!   the webhook's JSON (`id`, `type`, `customer`, `occurred_at`, `amount`, `currency`,
//!   `affiliate`, `attributes`) and each expected commission is `{"affiliate", "amount"}` with
//!   optional `rule`, `currency`, `explanation` and `reverses: {"event_id", "rule"}`, each
//!   compared only when given. Amounts are decimal strings, compared by value. Instead of
//!   `expect`, `"expect_error": "TEXT"` expects the evaluation to fail with a message containing
//!   `TEXT`. A step may carry a `"note"`, shown when it fails, and a `"chain"`:
//!   `[{"id", "deal"}, ...]` (the attributed affiliate first), to give the referral chain
//!   directly instead of through `affiliates` and attribution.
//! - a **period close**: `{"close": "2026-11", "expect": [...]}`: settles the month for every
//!   affiliate of the setup, in id order, as `POST .../periods/2026-11/close` does.
//! - a document `{"operator", "affiliates", "steps": [STEP, ...]}` or an array of steps.
//!
//! A step without `expect` expects nothing paid.
//!
//! # What a run does, as the host does
//!
//! - State carries over from step to step; a step whose evaluation fails (an error, or an
//!   invalid answer) leaves no state behind.
//! - Attribution: the first event of a customer that names an `affiliate` binds the customer to
//!   it for good; later events are paid to that affiliate and its parents. An event of a customer
//!   not yet bound (and without a `chain`) is not evaluated and pays nothing.
//! - An event without `occurred_at` happened at 0 (1970-01-01), so that runs are reproducible.
//! - A reversal must name a commission paid earlier to the same affiliate, be negative and no
//!   larger than it, and claw it back once.
//!
//! ```
//! use commission_plugin_sdk::fixtures::Fixture;
//!
//! let fixture = Fixture::parse(r#"
//! {"affiliates": {"aff1": {"deal": {"ftd_cpa": "10"}}}}
//! {"event": {"id": "d-1", "type": "deposit", "customer": "c1", "amount": "100", "affiliate": "aff1"}, "expect": [{"affiliate": "aff1", "amount": "10", "rule": "ftd-cpa"}]}
//! "#).unwrap();
//! assert_eq!(fixture.steps.len(), 1);
//! ```

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::{self, Write as _};
use std::path::Path;

use rust_decimal::Decimal;
use serde_json::{Map, Value};

use crate::properties::parse_decimal;
use crate::{Affiliate, Commission, CommissionRef, Context, Event, Period, Properties};

/// How deep a referral chain is followed up the parents, as on the host.
const MAX_CHAIN_DEPTH: usize = 16;

/// A parsed fixture file: the operator, its affiliates, and the steps to run in order.
#[derive(Debug, Clone, PartialEq)]
pub struct Fixture {
    /// The operator the events are evaluated for.
    pub operator: OperatorSetup,
    /// The affiliates known to the steps, by id.
    pub affiliates: BTreeMap<String, AffiliateSetup>,
    /// What to run, in order.
    pub steps: Vec<Step>,
}

/// The operator of a fixture: what [`Context::operator`], [`Context::operator_currency`] and
/// [`Context::config`] hold.
#[derive(Debug, Clone, PartialEq)]
pub struct OperatorSetup {
    /// Defaults to `acme`.
    pub id: String,
    /// Defaults to `USD`.
    pub currency: String,
    /// The operator's config; empty by default.
    pub config: Properties,
}

impl Default for OperatorSetup {
    fn default() -> Self {
        Self { id: "acme".into(), currency: "USD".into(), config: Properties::default() }
    }
}

/// An affiliate of the setup: its parent (for the referral chain) and deal terms.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AffiliateSetup {
    /// The affiliate above this one, if any.
    pub parent: Option<String>,
    /// The deal terms the plugin sees on this affiliate.
    pub deal: Properties,
}

/// One step of a fixture: what runs, and what it should pay.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// Where the step is in the file (`line 4`, or `step 3`), for messages.
    pub location: String,
    /// The author's note, shown with a failure.
    pub note: Option<String>,
    /// The event or the period close.
    pub action: Action,
    /// The commissions (or the failure) expected.
    pub expect: Expectation,
}

/// What a step runs.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// One event, as the webhook would carry it.
    Event {
        /// The event as the plugin receives it.
        event: Event,
        /// The affiliate the event names (which binds its customer, if not yet bound).
        affiliate: Option<String>,
        /// The referral chain given directly, instead of through attribution.
        chain: Option<Vec<Affiliate>>,
    },
    /// The close of a period: [`crate::Plugin::settle`] for each affiliate of the setup.
    Close(Period),
}

/// What a step should give.
#[derive(Debug, Clone, PartialEq)]
pub enum Expectation {
    /// These commissions, in this order (none: nothing paid).
    Commissions(Vec<ExpectedCommission>),
    /// A failed evaluation whose message contains this text.
    Error(String),
}

/// A commission a step should pay. Fields left `None` are not compared.
#[derive(Debug, Clone, PartialEq)]
pub struct ExpectedCommission {
    /// Whom it pays.
    pub affiliate: String,
    /// How much, compared by value (`10` matches `10.00`).
    pub amount: Decimal,
    /// The rule id.
    pub rule: Option<String>,
    /// The currency; the operator's when the plugin does not say otherwise.
    pub currency: Option<String>,
    /// The explanation, exactly.
    pub explanation: Option<String>,
    /// The commission it reverses.
    pub reverses: Option<CommissionRef>,
}

impl ExpectedCommission {
    /// Whether `got` is this commission, on every field this one gives.
    pub fn matches(&self, got: &Commission) -> bool {
        self.affiliate == got.affiliate
            && self.amount == got.amount
            && self.rule.as_ref().is_none_or(|rule| *rule == got.rule)
            && self.currency.as_ref().is_none_or(|currency| *currency == got.currency)
            && self.explanation.as_ref().is_none_or(|explanation| *explanation == got.explanation)
            && self.reverses.as_ref().is_none_or(|reverses| Some(reverses) == got.reverses.as_ref())
    }
}

/// A fixture file that could not be read or understood; says where and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FixtureError(String);

impl fmt::Display for FixtureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for FixtureError {}

/// What runs a fixture's events: the plugin natively ([`Native`]) or, in the host, its
/// component in the sandbox.
///
/// Each call is followed by [`Evaluator::finish`], which says whether the host would commit the
/// evaluation: its state writes are kept only then.
pub trait Evaluator {
    /// Evaluates one event; `Err` is the failure's message.
    fn evaluate(&mut self, event: &Event, context: &Context) -> Result<Vec<Commission>, String>;
    /// Settles `period` for `context.affiliate()`; `Err` is the failure's message.
    fn settle(&mut self, period: &Period, context: &Context) -> Result<Vec<Commission>, String>;
    /// Keeps (`commit`) or drops the state writes of the last call.
    fn finish(&mut self, commit: bool);
}

/// Runs a plugin natively, on this thread's in-memory state (see [`crate::testing`]).
pub struct Native<P> {
    before: BTreeMap<String, Vec<u8>>,
    plugin: std::marker::PhantomData<P>,
}

impl<P: crate::Plugin> Native<P> {
    /// A native evaluator of `P`, starting from empty state and no log lines.
    pub fn new() -> Self {
        crate::testing::reset();
        Self { before: BTreeMap::new(), plugin: std::marker::PhantomData }
    }
}

impl<P: crate::Plugin> Default for Native<P> {
    fn default() -> Self {
        Self::new()
    }
}

impl<P: crate::Plugin> Evaluator for Native<P> {
    fn evaluate(&mut self, event: &Event, context: &Context) -> Result<Vec<Commission>, String> {
        self.before = crate::state::backend::snapshot();
        P::evaluate(event, context).map_err(|error| error.to_string())
    }

    fn settle(&mut self, period: &Period, context: &Context) -> Result<Vec<Commission>, String> {
        self.before = crate::state::backend::snapshot();
        P::settle(period, context).map_err(|error| error.to_string())
    }

    fn finish(&mut self, commit: bool) {
        if !commit {
            crate::state::backend::restore(std::mem::take(&mut self.before));
        }
    }
}

/// Runs the fixture file at `path` natively through `P` and panics with the differences if any
/// step does not give what it expects: the one-line fixture test of a plugin crate.
///
/// ```no_run
/// # struct MyPlugin;
/// # impl commission_plugin_sdk::Plugin for MyPlugin {
/// #     fn evaluate(_: &commission_plugin_sdk::Event, _: &commission_plugin_sdk::Context)
/// #         -> commission_plugin_sdk::Result<Vec<commission_plugin_sdk::Commission>> { Ok(vec![]) }
/// # }
/// #[test]
/// fn fixtures() {
///     commission_plugin_sdk::fixtures::run_file::<MyPlugin>(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/basic.json"));
/// }
/// ```
#[track_caller]
pub fn run_file<P: crate::Plugin>(path: impl AsRef<Path>) {
    let path = path.as_ref();
    let fixture = Fixture::load(path).unwrap_or_else(|error| panic!("{error}"));
    let report = fixture.run(&mut Native::<P>::new());
    assert!(report.passed(), "{}: {report}", path.display());
}

impl Fixture {
    /// Reads and parses a fixture file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, FixtureError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|error| FixtureError(format!("reading the fixture file {}: {error}", path.display())))?;
        Self::parse(&text).map_err(|FixtureError(message)| FixtureError(format!("{}: {message}", path.display())))
    }

    /// Parses a fixture from its text (see the [module docs](self) for the format).
    pub fn parse(text: &str) -> Result<Self, FixtureError> {
        let mut fixture =
            Fixture { operator: OperatorSetup::default(), affiliates: BTreeMap::new(), steps: Vec::new() };
        let mut values = serde_json::Deserializer::from_str(text).into_iter::<Value>();
        let mut offset = 0;
        while let Some(value) = values.next() {
            let start = offset + text[offset..].len() - text[offset..].trim_start().len();
            let line = text[..start].matches('\n').count() + 1;
            offset = values.byte_offset();
            let value = value.map_err(|error| FixtureError(format!("not JSON: {error}")))?;
            fixture.add(value, line).map_err(|message| FixtureError(format!("line {line}: {message}")))?;
        }
        if fixture.steps.is_empty() {
            return Err(FixtureError("no steps: a fixture needs at least one `event` or `close`".into()));
        }
        let currency = fixture.operator.currency.clone();
        for step in &mut fixture.steps {
            let Action::Event { event, .. } = &mut step.action else { continue };
            match event.currency.as_deref() {
                // An amount without a currency is in the operator's, as on the host.
                Some("") => event.currency = Some(currency.clone()),
                Some(other) if other != currency => {
                    return Err(FixtureError(format!(
                        "{}: event {} is in {other}, the operator pays in {currency}: fixtures do not convert \
                         currencies; give the amount in {currency}",
                        step.location, event.id
                    )));
                }
                _ => {}
            }
        }
        Ok(fixture)
    }

    fn add(&mut self, value: Value, line: usize) -> Result<(), String> {
        match value {
            Value::Array(steps) => self.add_steps(steps, line),
            Value::Object(mut object) => {
                if object.contains_key("event") || object.contains_key("close") {
                    let step = parse_step(object, format!("line {line}"))?;
                    self.steps.push(step);
                    return Ok(());
                }
                if let Some(operator) = object.remove("operator") {
                    self.operator = parse_operator(operator)?;
                }
                if let Some(affiliates) = object.remove("affiliates") {
                    for (id, affiliate) in as_object(affiliates, "affiliates")? {
                        let affiliate = parse_affiliate(&id, affiliate)?;
                        self.affiliates.insert(id, affiliate);
                    }
                }
                if let Some(steps) = object.remove("steps") {
                    let Value::Array(steps) = steps else { return Err("`steps` must be an array".into()) };
                    self.add_steps(steps, line)?;
                }
                match object.keys().next() {
                    Some(key) => Err(format!(
                        "unknown field `{key}`: a line is a step (`event` or `close`, with `expect`) or a setup \
                         (`operator`, `affiliates`, `steps`)"
                    )),
                    None => Ok(()),
                }
            }
            _ => Err("expected a JSON object (a step or a setup) or an array of steps".into()),
        }
    }

    fn add_steps(&mut self, steps: Vec<Value>, line: usize) -> Result<(), String> {
        for (index, step) in steps.into_iter().enumerate() {
            let location = format!("step {} (line {line})", index + 1);
            let step = parse_step(as_object(step, "a step")?, location.clone())
                .map_err(|message| format!("{location}: {message}"))?;
            self.steps.push(step);
        }
        Ok(())
    }

    /// Runs every step through `evaluator`, as the host would, and reports each one.
    pub fn run(&self, evaluator: &mut dyn Evaluator) -> Report {
        let mut run = Run { fixture: self, bindings: HashMap::new(), ledger: Vec::new(), reversed: HashSet::new() };
        let steps = self.steps.iter().map(|step| run.step(step, evaluator)).collect();
        Report { steps }
    }

    /// The referral chain from `affiliate` up its parents, as the host builds it.
    pub fn chain(&self, affiliate: &str) -> Vec<Affiliate> {
        let mut chain: Vec<Affiliate> = Vec::new();
        let mut next = Some(affiliate.to_owned());
        while let Some(id) = next.take() {
            if chain.len() == MAX_CHAIN_DEPTH || chain.iter().any(|link| link.id == id) {
                break;
            }
            let Some(setup) = self.affiliates.get(&id) else { break };
            next = setup.parent.clone();
            chain.push(Affiliate { id, deal: setup.deal.clone() });
        }
        if chain.is_empty() {
            chain.push(Affiliate::new(affiliate, Properties::default()));
        }
        chain
    }

    fn context(&self, chain: Vec<Affiliate>) -> Context {
        Context {
            operator: self.operator.id.clone(),
            operator_currency: self.operator.currency.clone(),
            config: self.operator.config.clone(),
            referral_chain: chain,
        }
    }
}

/// The state of one run: attribution and the ledger, for reversals.
struct Run<'a> {
    fixture: &'a Fixture,
    bindings: HashMap<String, String>,
    /// (event id, affiliate, rule, amount) of every commission paid so far.
    ledger: Vec<(String, String, String, Decimal)>,
    /// Ledger indexes already clawed back.
    reversed: HashSet<usize>,
}

impl Run<'_> {
    fn step(&mut self, step: &Step, evaluator: &mut dyn Evaluator) -> StepReport {
        let (description, got) = match &step.action {
            Action::Event { event, affiliate, chain } => {
                let description = format!("event {} ({} of customer {})", event.id, event.kind, event.customer);
                let chain = match chain {
                    Some(chain) => Some(chain.clone()),
                    None => {
                        if let Some(affiliate) = affiliate {
                            self.bindings.entry(event.customer.clone()).or_insert_with(|| affiliate.clone());
                        }
                        self.bindings.get(&event.customer).map(|bound| self.fixture.chain(bound))
                    }
                };
                let got = match chain {
                    None => Outcome::NotAttributed,
                    Some(chain) => {
                        let context = self.fixture.context(chain);
                        let result = evaluator.evaluate(event, &context);
                        self.commit(&event.id, result, evaluator)
                    }
                };
                (description, got)
            }
            Action::Close(period) => {
                let mut paid = Vec::new();
                let mut failures = Vec::new();
                for id in self.fixture.affiliates.keys() {
                    let context = self.fixture.context(self.fixture.chain(id));
                    let result = evaluator.settle(period, &context);
                    match self.commit(&format!("commission-host.period:{period}:{id}"), result, evaluator) {
                        Outcome::Paid(commissions) => paid.extend(commissions),
                        Outcome::Failed(message) => failures.push(format!("{id}: {message}")),
                        Outcome::NotAttributed => {}
                    }
                }
                let got = if failures.is_empty() { Outcome::Paid(paid) } else { Outcome::Failed(failures.join("; ")) };
                (format!("close of {period}"), got)
            }
        };
        let passed = match (&step.expect, &got) {
            (Expectation::Commissions(expected), Outcome::Paid(paid)) => {
                expected.len() == paid.len() && expected.iter().zip(paid).all(|(e, g)| e.matches(g))
            }
            (Expectation::Commissions(expected), Outcome::NotAttributed) => expected.is_empty(),
            (Expectation::Error(text), Outcome::Failed(message)) => message.contains(text.as_str()),
            _ => false,
        };
        StepReport {
            location: step.location.clone(),
            note: step.note.clone(),
            description,
            expected: step.expect.clone(),
            got,
            passed,
        }
    }

    /// Checks an answer's reversals against the ledger, then keeps or drops it (and its state).
    fn commit(
        &mut self,
        event_id: &str,
        result: Result<Vec<Commission>, String>,
        evaluator: &mut dyn Evaluator,
    ) -> Outcome {
        let checked = result.and_then(|commissions| {
            let mut reversing = Vec::new();
            for (index, commission) in commissions.iter().enumerate() {
                let Some(reference) = &commission.reverses else { continue };
                let found = self.ledger.iter().position(|(event, affiliate, rule, _)| {
                    *event == reference.event_id && *affiliate == commission.affiliate && *rule == reference.rule
                });
                let Some(position) = found.filter(|position| !self.reversed.contains(position)) else {
                    return Err(format!(
                        "invalid result: commission {index} reverses {}/{}: {} has no such commission (or it was \
                         reversed already)",
                        reference.event_id, reference.rule, commission.affiliate
                    ));
                };
                let original = self.ledger[position].3;
                if !commission.amount.is_sign_negative() || -commission.amount > original {
                    return Err(format!(
                        "invalid result: commission {index}: a reversal of {original} must be negative and at most \
                         {original} in size; got {}",
                        commission.amount
                    ));
                }
                reversing.push(position);
            }
            Ok((commissions, reversing))
        });
        evaluator.finish(checked.is_ok());
        match checked {
            Ok((commissions, reversing)) => {
                self.reversed.extend(reversing);
                self.ledger.extend(commissions.iter().map(|commission| {
                    (event_id.to_owned(), commission.affiliate.clone(), commission.rule.clone(), commission.amount)
                }));
                Outcome::Paid(commissions)
            }
            Err(message) => Outcome::Failed(message),
        }
    }
}

/// What a step gave.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The evaluation succeeded and paid these (none: nothing).
    Paid(Vec<Commission>),
    /// The evaluation failed (or its answer was invalid); nothing was kept.
    Failed(String),
    /// The customer is not attributed to any affiliate: the plugin was not called.
    NotAttributed,
}

/// One step's result, beside what it expected.
#[derive(Debug, Clone, PartialEq)]
pub struct StepReport {
    /// Where the step is in the file.
    pub location: String,
    /// The step's note, if it has one.
    pub note: Option<String>,
    /// `event d-1 (deposit of customer c1)`, or `close of 2026-11`.
    pub description: String,
    /// What the step expected.
    pub expected: Expectation,
    /// What it gave.
    pub got: Outcome,
    /// Whether the two agree.
    pub passed: bool,
}

/// The results of a fixture run. Its `Display` is the readable diff: each step that differs,
/// with expected (`-`) and got (`+`) commissions, and a count.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// Every step, in order.
    pub steps: Vec<StepReport>,
}

impl Report {
    /// Whether every step gave what it expected.
    pub fn passed(&self) -> bool {
        self.steps.iter().all(|step| step.passed)
    }

    /// How many steps did not.
    pub fn failures(&self) -> usize {
        self.steps.iter().filter(|step| !step.passed).count()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for step in self.steps.iter().filter(|step| !step.passed) {
            writeln!(f, "\n{}: {}: not as expected", step.location, step.description)?;
            if let Some(note) = &step.note {
                writeln!(f, "  note: {note}")?;
            }
            f.write_str(&render_difference(&step.expected, &step.got))?;
        }
        let total = self.steps.len();
        match self.failures() {
            0 => writeln!(f, "all {total} steps as expected"),
            failures => writeln!(f, "\n{failures} of {total} steps not as expected (- expected, + got)"),
        }
    }
}

/// The lines of one failed step: commissions matching at the same position unmarked, the others
/// as `- expected` and `+ got`.
fn render_difference(expected: &Expectation, got: &Outcome) -> String {
    let mut out = String::new();
    let paid: &[Commission] = match got {
        Outcome::Paid(paid) => paid,
        _ => &[],
    };
    match expected {
        Expectation::Commissions(expected) => {
            if expected.is_empty() {
                out.push_str("  - (nothing paid)\n");
            }
            for index in 0..expected.len().max(paid.len()) {
                match (expected.get(index), paid.get(index)) {
                    (Some(e), Some(g)) if e.matches(g) => {
                        let _ = writeln!(out, "    {}", render_paid(g));
                    }
                    (e, g) => {
                        if let Some(e) = e {
                            let _ = writeln!(out, "  - {}", render_expected(e));
                        }
                        if let Some(g) = g {
                            let _ = writeln!(out, "  + {}", render_paid(g));
                        }
                    }
                }
            }
        }
        Expectation::Error(text) => {
            let _ = writeln!(out, "  - a failure containing {text:?}");
            for commission in paid {
                let _ = writeln!(out, "  + {}", render_paid(commission));
            }
        }
    }
    match got {
        Outcome::Paid(paid) if paid.is_empty() => out.push_str("  + (nothing paid)\n"),
        Outcome::Paid(_) => {}
        Outcome::Failed(message) => {
            let _ = writeln!(out, "  + failed: {message}");
        }
        Outcome::NotAttributed => out.push_str(
            "  + (not evaluated: the customer is not attributed; name an `affiliate` on its first event, or give a \
             `chain`)\n",
        ),
    }
    out
}

fn render_expected(commission: &ExpectedCommission) -> String {
    let mut line = format!("{} {}", commission.affiliate, commission.amount);
    if let Some(currency) = &commission.currency {
        let _ = write!(line, " {currency}");
    }
    if let Some(rule) = &commission.rule {
        let _ = write!(line, " {rule}");
    }
    if let Some(reverses) = &commission.reverses {
        let _ = write!(line, " reverses {}/{}", reverses.event_id, reverses.rule);
    }
    if let Some(explanation) = &commission.explanation {
        let _ = write!(line, " \"{explanation}\"");
    }
    line
}

fn render_paid(commission: &Commission) -> String {
    let mut line =
        format!("{} {} {} {}", commission.affiliate, commission.amount, commission.currency, commission.rule);
    if let Some(reverses) = &commission.reverses {
        let _ = write!(line, " reverses {}/{}", reverses.event_id, reverses.rule);
    }
    let _ = write!(line, " \"{}\"", commission.explanation);
    line
}

fn as_object(value: Value, what: &str) -> Result<Map<String, Value>, String> {
    match value {
        Value::Object(object) => Ok(object),
        other => Err(format!("{what} must be an object; got {other}")),
    }
}

fn text(value: Value, field: &str) -> Result<String, String> {
    match value {
        Value::String(text) if !text.is_empty() => Ok(text),
        Value::String(_) => Err(format!("`{field}` must not be empty")),
        other => Err(format!("`{field}` must be a string; got {other}")),
    }
}

fn optional_text(object: &mut Map<String, Value>, field: &str) -> Result<Option<String>, String> {
    match object.remove(field) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => text(value, field).map(Some),
    }
}

fn no_more_fields(object: &Map<String, Value>, what: &str, known: &str) -> Result<(), String> {
    match object.keys().next() {
        Some(key) => Err(format!("{what}: unknown field `{key}` (known: {known})")),
        None => Ok(()),
    }
}

/// Key/value terms; values may be strings, numbers or booleans, kept as text (as the API does).
fn properties(value: Value, field: &str) -> Result<Properties, String> {
    as_object(value, field)?
        .into_iter()
        .map(|(key, value)| match value {
            Value::String(text) => Ok((key, text)),
            Value::Number(number) => Ok((key, number.to_string())),
            Value::Bool(flag) => Ok((key, flag.to_string())),
            other => Err(format!("`{field}.{key}` must be a string, number or boolean; got {other}")),
        })
        .collect()
}

fn amount(value: Value, field: &str) -> Result<Decimal, String> {
    match value {
        Value::String(text) => parse_decimal(field, &text).map_err(|error| error.to_string()),
        other => Err(format!("`{field}` must be a decimal string such as \"10.50\" (not a JSON number); got {other}")),
    }
}

fn parse_operator(value: Value) -> Result<OperatorSetup, String> {
    let mut object = as_object(value, "`operator`")?;
    let defaults = OperatorSetup::default();
    let operator = OperatorSetup {
        id: optional_text(&mut object, "id")?.unwrap_or(defaults.id),
        currency: optional_text(&mut object, "currency")?.unwrap_or(defaults.currency),
        config: object.remove("config").map(|config| properties(config, "config")).transpose()?.unwrap_or_default(),
    };
    no_more_fields(&object, "operator", "id, currency, config")?;
    Ok(operator)
}

fn parse_affiliate(id: &str, value: Value) -> Result<AffiliateSetup, String> {
    let mut object = as_object(value, &format!("affiliate {id:?}"))?;
    let affiliate = AffiliateSetup {
        parent: optional_text(&mut object, "parent")?,
        deal: object.remove("deal").map(|deal| properties(deal, "deal")).transpose()?.unwrap_or_default(),
    };
    no_more_fields(&object, &format!("affiliate {id:?}"), "parent, deal")?;
    Ok(affiliate)
}

fn parse_step(mut object: Map<String, Value>, location: String) -> Result<Step, String> {
    let note = optional_text(&mut object, "note")?;
    let action = match (object.remove("event"), object.remove("close")) {
        (Some(event), None) => {
            let chain = match object.remove("chain") {
                None | Some(Value::Null) => None,
                Some(Value::Array(links)) if !links.is_empty() => Some(
                    links
                        .into_iter()
                        .map(|link| {
                            let mut link = as_object(link, "a `chain` entry")?;
                            let id = text(link.remove("id").unwrap_or(Value::Null), "chain[].id")?;
                            let deal = link.remove("deal").map(|deal| properties(deal, "deal")).transpose()?;
                            no_more_fields(&link, "a `chain` entry", "id, deal")?;
                            Ok(Affiliate { id, deal: deal.unwrap_or_default() })
                        })
                        .collect::<Result<Vec<_>, String>>()?,
                ),
                Some(_) => return Err("`chain` must be a non-empty array of {\"id\", \"deal\"}".into()),
            };
            let (event, affiliate) = parse_event(event)?;
            Action::Event { event, affiliate, chain }
        }
        (None, Some(close)) => {
            let id = text(close, "close")?;
            Action::Close(Period::of_month(&id).map_err(|error| format!("`close`: {error}"))?)
        }
        _ => return Err("a step has either `event` or `close`".into()),
    };
    let expect = match (object.remove("expect"), object.remove("expect_error")) {
        (Some(_), Some(_)) => return Err("give `expect` or `expect_error`, not both".into()),
        (_, Some(error)) => Expectation::Error(text(error, "expect_error")?),
        (None, None) => Expectation::Commissions(Vec::new()),
        (Some(Value::Array(expected)), None) => {
            Expectation::Commissions(expected.into_iter().map(parse_expected).collect::<Result<_, _>>()?)
        }
        (Some(_), None) => return Err("`expect` must be an array of commissions (`[]` for nothing)".into()),
    };
    no_more_fields(&object, "a step", "event, close, chain, expect, expect_error, note")?;
    Ok(Step { location, note, action, expect })
}

fn parse_expected(value: Value) -> Result<ExpectedCommission, String> {
    let mut object = as_object(value, "an expected commission")?;
    let affiliate = text(object.remove("affiliate").unwrap_or(Value::Null), "expect[].affiliate")?;
    let amount = amount(object.remove("amount").unwrap_or(Value::Null), "expect[].amount")?;
    let reverses = match object.remove("reverses") {
        None | Some(Value::Null) => None,
        Some(reference) => {
            let mut reference = as_object(reference, "`reverses`")?;
            let event_id = text(reference.remove("event_id").unwrap_or(Value::Null), "reverses.event_id")?;
            let rule = text(reference.remove("rule").unwrap_or(Value::Null), "reverses.rule")?;
            no_more_fields(&reference, "`reverses`", "event_id, rule")?;
            Some(CommissionRef { event_id, rule })
        }
    };
    let expected = ExpectedCommission {
        affiliate,
        amount,
        rule: optional_text(&mut object, "rule")?,
        currency: optional_text(&mut object, "currency")?,
        explanation: optional_text(&mut object, "explanation")?,
        reverses,
    };
    no_more_fields(&object, "an expected commission", "affiliate, amount, rule, currency, explanation, reverses")?;
    Ok(expected)
}

/// An event in the webhook's shape. Returns it and the affiliate it names.
fn parse_event(value: Value) -> Result<(Event, Option<String>), String> {
    let mut object = as_object(value, "`event`")?;
    let field = |object: &mut Map<String, Value>, name: &str| match object.remove(name) {
        Some(value) => text(value, &format!("event.{name}")),
        None => Err(format!("`event.{name}` is required")),
    };
    let id = field(&mut object, "id")?;
    let kind = field(&mut object, "type")?;
    let customer = field(&mut object, "customer")?;
    let occurred_at = match optional_text(&mut object, "occurred_at")? {
        None => 0,
        Some(time) => parse_time(&time).map_err(|problem| format!("`event.occurred_at`: {problem}"))?,
    };
    let amount = object.remove("amount").map(|value| amount(value, "event.amount")).transpose()?;
    let currency = optional_text(&mut object, "currency")?;
    let affiliate = optional_text(&mut object, "affiliate")?;
    let attributes =
        object.remove("attributes").map(|value| properties(value, "attributes")).transpose()?.unwrap_or_default();
    no_more_fields(
        &object,
        "`event`",
        "id, type, customer, occurred_at, amount, currency, affiliate, attributes (as the webhook takes them)",
    )?;
    let event = Event {
        id,
        kind,
        customer,
        occurred_at,
        // An amount without a currency is in the operator's; the run fills that in.
        currency: currency.or_else(|| amount.map(|_| String::new())),
        amount,
        attributes,
    };
    Ok((event, affiliate))
}

/// RFC 3339 (`2026-11-01T10:00:00Z`, offsets and fractions allowed) or unix milliseconds.
fn parse_time(text: &str) -> Result<i64, String> {
    let problem = || format!("{text:?} is not an RFC 3339 time (2026-11-01T10:00:00Z) or unix milliseconds");
    if !text.is_empty() && text.len() <= 15 && text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse().map_err(|_| problem());
    }
    let bytes = text.as_bytes();
    let number = |range: std::ops::Range<usize>| -> Result<i64, String> {
        let part = text.get(range).ok_or_else(problem)?;
        if part.bytes().all(|b| b.is_ascii_digit()) { part.parse().map_err(|_| problem()) } else { Err(problem()) }
    };
    if bytes.len() < 20 || bytes[4] != b'-' || bytes[7] != b'-' || !matches!(bytes[10], b'T' | b't' | b' ') {
        return Err(problem());
    }
    if bytes[13] != b':' || bytes[16] != b':' {
        return Err(problem());
    }
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    let (hour, minute, second) = (number(11..13)?, number(14..16)?, number(17..19)?);
    let mut rest = &text[19..];
    let mut millis = 0;
    if let Some(fraction) = rest.strip_prefix('.') {
        let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(problem());
        }
        let padded = format!("{:0<3}", &fraction[..digits.min(3)]);
        millis = padded.parse::<i64>().map_err(|_| problem())?;
        rest = &fraction[digits..];
    }
    let offset_minutes = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 && matches!(&rest[..1], "+" | "-") && &rest[3..4] == ":" => {
            let sign = if rest.starts_with('-') { -1 } else { 1 };
            let hours: i64 = rest[1..3].parse().map_err(|_| problem())?;
            let minutes: i64 = rest[4..6].parse().map_err(|_| problem())?;
            sign * (hours * 60 + minutes)
        }
        _ => return Err(problem()),
    };
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return Err(problem());
    }
    let days = crate::period::days_from_civil(year, month as u32, day as u32);
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset_minutes * 60;
    if seconds < 0 {
        return Err(format!("{text:?} is before 1970"));
    }
    Ok(seconds * 1000 + millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pays 1 per event while its counter is under 2; an event of type `fail` bumps the counter
    /// and then fails, which must leave the counter as it was.
    struct Counting;

    impl crate::Plugin for Counting {
        fn evaluate(event: &Event, context: &Context) -> crate::Result<Vec<Commission>> {
            let count = crate::state::add_decimal("count", Decimal::ONE)?;
            if event.kind == "fail" {
                return Err(crate::Error::new("failing on purpose"));
            }
            if count > Decimal::TWO {
                return Ok(vec![]);
            }
            Ok(vec![context.pay(context.affiliate(), Decimal::ONE).rule("one").because(format!("event {count}"))])
        }
    }

    #[test]
    fn a_run_rolls_back_failed_steps_and_reports_each_difference() {
        let fixture = Fixture::parse(
            r#"{"event": {"id": "e1", "type": "x", "customer": "c1", "affiliate": "a"}, "expect": [{"affiliate": "a", "amount": "1", "explanation": "event 1"}]}
{"event": {"id": "e2", "type": "fail", "customer": "c1"}, "expect_error": "on purpose"}
{"event": {"id": "e3", "type": "x", "customer": "c1"}, "expect": [{"affiliate": "a", "amount": "1", "explanation": "event 2"}]}
{"event": {"id": "e4", "type": "x", "customer": "c1"}, "expect": [{"affiliate": "a", "amount": "9"}]}
{"event": {"id": "e5", "type": "x", "customer": "c2"}, "expect": [{"affiliate": "a", "amount": "1"}]}"#,
        )
        .unwrap();
        let report = fixture.run(&mut Native::<Counting>::new());
        let passed: Vec<bool> = report.steps.iter().map(|step| step.passed).collect();
        assert_eq!(passed, [true, true, true, false, false], "{report}");
        let text = report.to_string();
        assert!(
            text.contains("line 4: event e4 (x of customer c1): not as expected\n  - a 9\n  + (nothing paid)\n"),
            "{text}"
        );
        assert!(text.contains("  + (not evaluated: the customer is not attributed"), "{text}");
        assert!(text.ends_with("2 of 5 steps not as expected (- expected, + got)\n"), "{text}");
    }

    #[test]
    fn times_are_rfc3339_or_unix_milliseconds() {
        assert_eq!(parse_time("2026-11-01T10:00:00Z").unwrap(), 1_793_527_200_000);
        assert_eq!(parse_time("2026-11-01T12:00:00.5+02:00").unwrap(), 1_793_527_200_500);
        assert_eq!(parse_time("1793527200000").unwrap(), 1_793_527_200_000);
        assert!(parse_time("yesterday").is_err());
        assert!(parse_time("2026-13-01T10:00:00Z").is_err());
    }

    #[test]
    fn ndjson_documents_and_arrays_all_parse_with_locations() {
        let text = r#"{"affiliates": {"a": {"deal": {"cpa": 10}}, "b": {"parent": "a"}}}
{"event": {"id": "e1", "type": "deposit", "customer": "c1", "amount": "5", "affiliate": "b"}, "expect": [{"affiliate": "b", "amount": "10.0"}]}
[{"close": "2026-11"}]"#;
        let fixture = Fixture::parse(text).unwrap();
        assert_eq!(fixture.affiliates["a"].deal.get("cpa"), Some("10"));
        assert_eq!(fixture.chain("b").iter().map(|a| a.id.as_str()).collect::<Vec<_>>(), ["b", "a"]);
        let locations: Vec<_> = fixture.steps.iter().map(|step| step.location.as_str()).collect();
        assert_eq!(locations, ["line 2", "step 1 (line 3)"]);
        let error = Fixture::parse(r#"{"event": {"id": "e", "type": "x", "customer": "c", "amount": 5}}"#).unwrap_err();
        assert!(error.to_string().contains("not a JSON number"), "{error}");
        let error = Fixture::parse("{\"affiliates\": {}}\n{\"event\": {\"id\": \"e\"}, \"expct\": []}").unwrap_err();
        assert!(error.to_string().starts_with("line 2: "), "{error}");
    }
}
