//! An export brought back in: `POST /v1/operators/{op}/imports?format=export` onto an operator
//! with no history. Each line is done as its route would do it (an upload, an activation, an
//! affiliate, rates, a setting, a close, a status move: a command in the operator's order, so
//! in a cluster through its log and into every node's view), and events go through the
//! ordinary event path in batches: the ledger is built again by the host itself, not copied, so `verify`
//! checks it like any other. Events keep the hash they were received with, so a sender's retry
//! of one after the move is still a `duplicate`.

use std::collections::BTreeMap;

use base64::Engine as _;
use rust_decimal::Decimal;
use sha2::{Digest, Sha256};

use super::history::{ExportLine, FORMAT};
use super::import_lines::webhook_event;
use super::imports::{Import, Stop, at_line};
use super::{ApiError, operators};
use crate::event::{IncomingEvent, affiliate_id_problem, parse_time};
use crate::pipeline::{Command, Done, IngestError, Period};
use crate::store::records::{AffiliateRecord, DatedActivation, FxRates, OperatorRecord, StatusChange};
use crate::store::{CommissionRef, MoveOutcome, Store};
use crate::terms;

/// A line of an export, ready to be done.
pub enum Action {
    Blank,
    Event(Box<IncomingEvent>),
    Line(Box<ExportLine>),
}

/// What the import has seen of the file.
#[derive(Default)]
pub struct Restore {
    ended: bool,
}

/// An export is imported onto an operator with no history: no events, plugins or affiliates.
pub fn check_empty(store: &Store, operator: &OperatorRecord) -> Result<(), ApiError> {
    if store.last_sequence(&operator.id)? > 0
        || store.plugin(&operator.id, 1)?.is_some()
        || !store.affiliate_ids(&operator.id)?.is_empty()
    {
        return Err(ApiError::field(
            "format",
            format!(
                "operator {:?} has history already; an export is imported onto a new operator (POST /v1/operators), \
                 or continued with ?job=",
                operator.id
            ),
        ));
    }
    Ok(())
}

fn time(line: u64, field: &str, text: &str) -> Result<i64, Stop> {
    parse_time(text).map_err(|problem| at_line(line, field, problem))
}

impl Restore {
    pub fn line(&mut self, number: u64, line: &[u8], currency: &str) -> Result<Action, Stop> {
        if line.trim_ascii().is_empty() {
            return Ok(Action::Blank);
        }
        if self.ended {
            return Err(at_line(number, "kind", "a line after the `end` line"));
        }
        let parsed: ExportLine = serde_json::from_slice(line)
            .map_err(|error| at_line(number, "", format!("not a line of an export: {error}")))?;
        match parsed {
            ExportLine::Operator { format, .. } if format != FORMAT => {
                Err(at_line(number, "format", format!("format {format}; this host reads format {FORMAT}")))
            }
            ExportLine::Operator { currency: exported, .. } if exported != currency => Err(at_line(
                number,
                "currency",
                format!(
                    "the export's operator pays in {exported}, this one in {currency}: create one paying in {exported}"
                ),
            )),
            ExportLine::Event { event, content_sha256, .. } => {
                let json = serde_json::to_vec(&event).expect("a JSON value serializes");
                let mut incoming = webhook_event(&json, currency)
                    .map_err(|(field, problem)| at_line(number, format!("event.{field}"), problem))?;
                if content_sha256.len() == 64 && content_sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                    incoming.content_sha256 = content_sha256;
                }
                Ok(Action::Event(Box::new(incoming)))
            }
            other => Ok(Action::Line(Box::new(other))),
        }
    }

    /// Does one line that is not an event, as its route would.
    pub async fn apply(&mut self, import: &mut Import<'_>, number: u64, action: Action) -> Result<(), Stop> {
        let Action::Line(line) = action else { return Ok(()) };
        let state = import.state;
        let op = import.operator.clone();
        match *line {
            ExportLine::Operator { config, .. } => {
                let wire = wire(config);
                let config = terms::checked_config("config", wire).map_err(|problems| first(number, problems))?;
                if config != import.operator_record()?.config {
                    // There is no operator route to change it: the admin sets it.
                    if !import.admin {
                        return Err(at_line(
                            number,
                            "config",
                            "the export's operator config differs from this operator's: the platform admin creates \
                             the operator with it (POST /v1/operators with \"config\") or imports the file with the \
                             admin token",
                        ));
                    }
                    ordered(import, number, Command::Config { config }).await?;
                }
            }
            ExportLine::Settings { late_events } => {
                ordered(import, number, Command::Settings { late_events }).await?;
            }
            ExportLine::FxRates { rates, source } => {
                let currency = import.operator_record()?.currency;
                if let Some((code, _)) = rates.iter().find(|(code, rate)| {
                    **code == currency || iso_currency::Currency::from_code(code).is_none() || **rate <= Decimal::ZERO
                }) {
                    return Err(at_line(
                        number,
                        format!("rates.{code}"),
                        "an ISO 4217 code other than the operator's, at a rate above zero",
                    ));
                }
                let rates: BTreeMap<String, Decimal> = rates;
                let fx_rates = FxRates { rates, source, updated_at: crate::event::now_ms() };
                ordered(import, number, Command::FxRates { fx_rates }).await?;
            }
            ExportLine::Plugin { version, wasm_base64, .. } => {
                let wasm = base64::engine::general_purpose::STANDARD
                    .decode(wasm_base64)
                    .map_err(|error| at_line(number, "wasm_base64", error.to_string()))?;
                if holds_plugin(import, version, &wasm).await? {
                    return import.save().await;
                }
                let record = operators::add_plugin(state, &op, wasm)
                    .await
                    .map_err(|error| at_line(number, "wasm_base64", error.message().to_owned()))?;
                if record.version != version {
                    return Err(at_line(
                        number,
                        "version",
                        format!(
                            "stored as version {}, not {version}: import onto an operator with no plugins",
                            record.version
                        ),
                    ));
                }
            }
            ExportLine::Activate { version, effective_from: None, .. } => {
                operators::set_active(state, &op, version)
                    .await
                    .map_err(|error| at_line(number, "version", error.message().to_owned()))?;
            }
            ExportLine::Activate { version, effective_from: Some(from), scope, affiliate } => {
                let effective_from = time(number, "effective_from", &from)?;
                let held = state.pipeline.hold_plugin(&op, version).await;
                if !held.map_err(|error| Stop::Error(super::events::ingest_error(error)))? {
                    return Err(at_line(number, "version", format!("no plugin version {version} before this line")));
                }
                let activation = DatedActivation {
                    version,
                    effective_from,
                    scope: scope.unwrap_or(crate::store::records::ActivationScope::Events),
                    affiliate,
                    activated_at: crate::event::now_ms(),
                };
                ordered(import, number, Command::ActivateDated { activation }).await?;
            }
            ExportLine::Affiliate { id, parent, deal } => {
                if let Some(problem) = affiliate_id_problem(&id) {
                    return Err(at_line(number, "id", problem));
                }
                let deal = terms::checked_deal("deal", wire(deal)).map_err(|problems| first(number, problems))?;
                let affiliate = AffiliateRecord { id, parent, deal, updated_at: crate::event::now_ms() };
                // The parent is checked in the operator's turn, as its route's is.
                ordered(import, number, Command::PutAffiliate { affiliate }).await?;
            }
            ExportLine::Close { period } => {
                let period = Period::parse(&period).map_err(|problem| at_line(number, "period", problem))?;
                let operator = import.operator_record()?;
                match state.pipeline.close_period(&operator, &period).await {
                    Ok(_) => {}
                    Err(IngestError::Invalid(problems)) => return Err(first(number, problems)),
                    Err(error) => return Err(Stop::Error(super::events::ingest_error(error))),
                }
            }
            ExportLine::Status { event, index, status, by, note, at, reference } => {
                let at = time(number, "at", &at)?;
                let Ok(index) = u16::try_from(index) else {
                    return Err(at_line(number, "index", format!("{index} is past any event's commissions")));
                };
                let change = StatusChange { status, at, by, note: format!("imported: {note}"), reference };
                if last_move_is(import, &event, index, &change)? {
                    return import.save().await;
                }
                let moving = Command::MoveCommissions {
                    commissions: vec![CommissionRef { event: event.clone(), index }],
                    change,
                    payout: None,
                };
                let moved = ordered(import, number, moving).await?.moved();
                if let MoveOutcome::Moved { refused, .. } =
                    moved.map_err(|error| Stop::Error(super::events::ingest_error(error)))?
                    && let Some((id, refusal)) = refused.into_iter().next()
                {
                    // A commission this ledger does not have is named by its event.
                    let field = if id.starts_with(&event) { "event" } else { "status" };
                    return Err(at_line(number, field, format!("{id} {refusal}")));
                }
            }
            ExportLine::End { .. } => self.ended = true,
            ExportLine::Event { .. } => {}
        }
        import.save().await
    }

    /// Whether the file had its `end` line: one without it was cut off.
    pub fn ended(&self) -> bool {
        self.ended
    }
}

// A job resumed at a line it had done (its progress is saved after each line, so a host that
// stopped between the two, or a client sending `from_line` back, goes over it again): the lines
// that are not idempotent by themselves are found done and passed over.

/// Whether the operator holds this very component as `version` already.
async fn holds_plugin(import: &Import<'_>, version: u32, wasm: &[u8]) -> Result<bool, Stop> {
    let pipeline = &import.state.pipeline;
    let stop = |error: IngestError| Stop::Error(super::events::ingest_error(error));
    if !pipeline.hold_plugin(&import.operator, version).await.map_err(stop)? {
        return Ok(false);
    }
    let stored = pipeline.store().plugin(&import.operator, version).map_err(|error| stop(error.into()))?;
    Ok(stored.is_some_and(|record| record.sha256 == hex::encode(Sha256::digest(wasm))))
}

/// Whether the last move of the event's `index`th commission is `change` already.
fn last_move_is(import: &Import<'_>, event: &str, index: u16, change: &StatusChange) -> Result<bool, Stop> {
    let store = import.state.pipeline.store();
    let stop = |error: crate::store::StoreError| Stop::Error(ApiError::from(error));
    let Some(record) = store.event(&import.operator, event).map_err(stop)? else { return Ok(false) };
    let Some(id) = record.commission_ids.get(usize::from(index)) else { return Ok(false) };
    Ok(store.commission_status(&import.operator, id).map_err(stop)?.history.last() == Some(change))
}

/// Stored terms as they arrive on the wire, to be checked as a route checks them.
fn wire(terms: crate::store::records::Properties) -> terms::WireTerms {
    crate::event::UniqueKeys(terms.into_iter().map(|(key, value)| (key, crate::event::Scalar(value))).collect())
}

fn first(line: u64, problems: Vec<crate::event::FieldError>) -> Stop {
    let first = problems.into_iter().next().unwrap_or_else(|| crate::event::FieldError::new("", "refused"));
    at_line(line, first.field, first.problem)
}

/// Does a line's change as its route would: in the operator's order, in a cluster through its
/// log, so that every node's view makes it.
async fn ordered(import: &Import<'_>, number: u64, command: Command) -> Result<Done, Stop> {
    let operator = import.operator_record()?;
    match import.state.pipeline.command(&operator, command).await {
        Ok(done) => Ok(done),
        Err(IngestError::Invalid(problems)) => Err(first(number, problems)),
        Err(IngestError::QuotaExceeded { refused, .. }) => {
            Err(at_line(number, "stored_bytes", format!("over the operator's quota ({refused:?})")))
        }
        Err(error) => Err(Stop::Error(super::events::ingest_error(error))),
    }
}
