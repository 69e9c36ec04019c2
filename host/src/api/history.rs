//! The way back out: `GET /v1/operators/{op}/export` streams an operator's whole history as one
//! NDJSON file that `POST /v1/operators/{op}/imports?format=export` on an operator with no
//! history turns into the same ledger (see [`super::restore`]). An online backup, and the
//! answer to an operator's fear of lock-in.
//!
//! The ledger's order (each event's sequence number, period settlements included) is the
//! spine of the file: every event is written in it, and a close where its settlements are.
//! What the ledger does not order against events is placed by what the events themselves
//! recorded, and otherwise by time:
//! - an affiliate's parent and deal as an event's referral chain saw them, just before it
//!   (a deal changed and changed back between two events is not seen; neither did the events);
//! - the plugin version and activation that evaluated each event (immediate activations are
//!   kept only as each event's version, so they are placed by the events that used them);
//! - dated activations, uploads and commission status moves by their time against the events'
//!   receipt times;
//! - the FX rates each converted event was converted at, just before it;
//! - the late-events setting each late event was taken under.
//!
//! Limits, credentials, shadow mode and compiled artifacts are not in it: they are the
//! platform's, not the operator's history.

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use hyper::body::Frame;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{ApiError, AppState, auth};
use crate::event::format_time;
use crate::pipeline::settlement_period;
use crate::store::records::{
    ActivationScope, CommissionStatus, EventRecord, LateEventPolicy, OperatorRecord, Properties, StoredEvent,
};
use crate::store::{Store, StoreError};

/// The file format's version, in its first line.
pub const FORMAT: u32 = 1;

/// One line of an export. Times are RFC 3339.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ExportLine {
    /// The first line: who this is.
    Operator {
        format: u32,
        id: String,
        name: String,
        currency: String,
        config: Properties,
        created_at: String,
    },
    Settings {
        late_events: LateEventPolicy,
    },
    FxRates {
        rates: BTreeMap<String, Decimal>,
        source: String,
    },
    /// A plugin version, its component in base64.
    Plugin {
        version: u32,
        sha256: String,
        contract: String,
        uploaded_at: String,
        wasm_base64: String,
    },
    /// Version `version` evaluates new events; with `effective_from`, a dated activation.
    Activate {
        version: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        effective_from: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        scope: Option<ActivationScope>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        affiliate: Option<String>,
    },
    Affiliate {
        id: String,
        parent: Option<String>,
        deal: Properties,
    },
    /// An event as received (the webhook's shape), with the hash its retries are matched by.
    Event {
        event: Value,
        content_sha256: String,
        received_at: String,
    },
    /// A period closed here: its settlements were committed at this point of the ledger.
    Close {
        period: String,
    },
    /// A move of the status of commission `index` of event `event`.
    Status {
        event: String,
        index: usize,
        status: CommissionStatus,
        by: String,
        note: String,
        at: String,
        /// The payment reference a `paid` move was made under.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reference: Option<String>,
    },
    /// The last line: a file without it was cut off.
    End {
        lines: u64,
    },
}

/// `GET /v1/operators/{op}/export`: the operator's history, streamed as NDJSON.
#[utoipa::path(
    get,
    path = "/v1/operators/{op}/export",
    tag = "imports",
    params(("op" = String, Path, description = "operator id")),
    responses(
        (status = 200, description = "the history, one JSON object per line (`kind`: operator, settings, fx_rates, plugin, activate, affiliate, event, close, status, end), in ledger order", content_type = "application/x-ndjson", body = String),
        (status = 401, description = "not the operator's key nor the admin token"),
    ),
    security(("operator_key" = []), ("admin_token" = []))
)]
pub async fn export(
    State(state): State<Arc<AppState>>,
    Path(op): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let operator = auth::operator(&state, &headers, &op)?;
    let (sender, receiver) = tokio::sync::mpsc::channel(64);
    let store = state.pipeline.store().clone();
    tokio::task::spawn_blocking(move || {
        let mut send = |line: &ExportLine| {
            let mut bytes = serde_json::to_vec(line).expect("export lines serialize");
            bytes.push(b'\n');
            sender.blocking_send(Ok(Bytes::from(bytes))).is_ok()
        };
        if let Err(error) = write_export(&store, &operator, &mut send) {
            tracing::error!(operator = %operator.id, %error, "export failed");
            // The body is cut off without its `end` line; an import of it says so.
            let _ = sender.blocking_send(Err(std::io::Error::other(error.to_string())));
        }
    });
    let disposition = format!("attachment; filename=\"{}-export.ndjson\"", op);
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson".to_owned()), (header::CONTENT_DISPOSITION, disposition)],
        Body::new(Lines(receiver)),
    )
        .into_response())
}

/// The lines as a response body, as the export writes them.
struct Lines(tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>);

impl hyper::body::Body for Lines {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.0.poll_recv(cx).map(|line| line.map(|line| line.map(Frame::data)))
    }
}

/// Rate sets by when they were set: (source, rates).
type FxSets = BTreeMap<i64, (String, BTreeMap<String, Decimal>)>;

/// Stops the export when the reader is gone.
struct Gone;

/// Where the export is: what it has written of the things the ledger does not order.
struct Writer<'a> {
    store: &'a Store,
    operator: &'a OperatorRecord,
    send: &'a mut dyn FnMut(&ExportLine) -> bool,
    lines: u64,
    plugins: Vec<crate::store::records::PluginRecord>,
    plugins_written: usize,
    dated_written: usize,
    active: Option<u32>,
    affiliates: HashMap<String, (Option<String>, Properties)>,
    fx_written: Option<i64>,
    /// FX rate sets by the time they were set, as the converted events recorded them.
    fx_sets: FxSets,
    policy: LateEventPolicy,
    /// Status moves not written yet, by time.
    statuses: BTreeMap<(i64, u64), ExportLine>,
}

/// Writes the operator's history up to its last committed event now, line by line.
pub fn write_export(
    store: &Store,
    operator: &OperatorRecord,
    send: &mut dyn FnMut(&ExportLine) -> bool,
) -> Result<(), StoreError> {
    let last = store.last_sequence(&operator.id)?;
    let mut plugins = Vec::new();
    while let Some(plugin) = store.plugin(&operator.id, plugins.len() as u32 + 1)? {
        plugins.push(plugin);
    }
    let mut writer = Writer {
        store,
        operator,
        send,
        lines: 0,
        plugins,
        plugins_written: 0,
        dated_written: 0,
        active: None,
        affiliates: HashMap::new(),
        fx_written: None,
        fx_sets: fx_sets(store, operator, last)?,
        policy: operator.late_events,
        statuses: BTreeMap::new(),
    };
    match writer.write_all(last) {
        Ok(result) => result,
        Err(Gone) => Ok(()),
    }
}

/// Every rate set the operator's converted events were converted at, by when it was set.
fn fx_sets(store: &Store, operator: &OperatorRecord, last: u64) -> Result<FxSets, StoreError> {
    let mut sets = FxSets::new();
    for entry in store.events_after(&operator.id, 0) {
        let (seq, id) = entry?;
        if seq > last {
            break;
        }
        let Some(record) = store.event(&operator.id, &id)? else { continue };
        if let (Some(fx), Some(currency)) = (&record.event.fx, &record.event.currency) {
            let set = sets.entry(fx.rates_updated_at).or_insert_with(|| (fx.source.clone(), BTreeMap::new()));
            set.1.insert(currency.clone(), fx.rate);
        }
    }
    // The set in force now is known whole.
    let current = &operator.fx_rates;
    if !current.rates.is_empty() {
        sets.insert(current.updated_at, (current.source.clone(), current.rates.clone()));
    }
    Ok(sets)
}

impl Writer<'_> {
    fn write(&mut self, line: ExportLine) -> Result<(), Gone> {
        self.lines += 1;
        if (self.send)(&line) { Ok(()) } else { Err(Gone) }
    }

    fn write_all(&mut self, last: u64) -> Result<Result<(), StoreError>, Gone> {
        let operator = self.operator;
        self.write(ExportLine::Operator {
            format: FORMAT,
            id: operator.id.clone(),
            name: operator.name.clone(),
            currency: operator.currency.clone(),
            config: operator.config.clone(),
            created_at: format_time(operator.created_at),
        })?;
        self.write(ExportLine::Settings { late_events: self.policy })?;
        let mut order = self.store.events_after(&operator.id, 0);
        let store = self.store;
        let read = |entry: Result<(u64, String), StoreError>| -> Result<Option<EventRecord>, StoreError> {
            let (seq, id) = entry?;
            if seq > last { Ok(None) } else { store.event(&operator.id, &id) }
        };
        let mut next = order.next().map(read).transpose();
        loop {
            let record = match next {
                Ok(Some(Some(record))) => record,
                Ok(Some(None)) | Ok(None) => break,
                Err(error) => return Ok(Err(error)),
            };
            next = order.next().map(read).transpose();
            self.until(record.received_at)?;
            let Some(period) = settlement_period(&record.event) else {
                self.prerequisites(&record)?;
                self.write(ExportLine::Event {
                    event: wire_event(&record.event),
                    content_sha256: record.content_sha256.clone(),
                    received_at: format_time(record.received_at),
                })?;
                if let Err(error) = self.note_statuses(&record) {
                    return Ok(Err(error));
                }
                continue;
            };
            // A close's settlements are one run in the ledger (a close holds the operator's
            // events back): what each was evaluated with goes before the one close line.
            let mut run = vec![record];
            while let Ok(Some(Some(following))) = &next
                && settlement_period(&following.event).is_some_and(|next_period| next_period.id == period.id)
            {
                let Ok(Some(Some(following))) = std::mem::replace(&mut next, order.next().map(read).transpose()) else {
                    unreachable!("matched just above")
                };
                run.push(following);
            }
            for settlement in &run {
                self.prerequisites(settlement)?;
            }
            self.write(ExportLine::Close { period: period.id })?;
            for settlement in &run {
                if let Err(error) = self.note_statuses(settlement) {
                    return Ok(Err(error));
                }
            }
        }
        self.until(i64::MAX)?;
        if let Err(error) = self.final_state() {
            return Ok(Err(error));
        }
        let lines = self.lines + 1;
        self.write(ExportLine::End { lines })?;
        Ok(Ok(()))
    }

    /// Uploads, dated activations and status moves made up to `time`, in the order they were made.
    fn until(&mut self, time: i64) -> Result<(), Gone> {
        loop {
            let upload = self.plugins.get(self.plugins_written).map(|plugin| plugin.uploaded_at);
            let activation =
                self.operator.dated_activations.get(self.dated_written).map(|activation| activation.activated_at);
            let status = self.statuses.first_key_value().map(|(key, _)| key.0);
            let next = [upload, activation, status].into_iter().flatten().min().filter(|at| *at <= time);
            let Some(at) = next else { return Ok(()) };
            if upload == Some(at) {
                self.write_plugin()?;
            } else if activation == Some(at) {
                let activation = self.operator.dated_activations[self.dated_written].clone();
                self.write_plugins_to(activation.version)?;
                self.dated_written += 1;
                self.write(ExportLine::Activate {
                    version: activation.version,
                    effective_from: Some(format_time(activation.effective_from)),
                    scope: Some(activation.scope),
                    affiliate: activation.affiliate,
                })?;
            } else if let Some((_, line)) = self.statuses.pop_first() {
                self.write(line)?;
            }
        }
    }

    fn write_plugin(&mut self) -> Result<(), Gone> {
        let plugin = self.plugins[self.plugins_written].clone();
        self.plugins_written += 1;
        // A version whose bytes are gone cannot be exported; the import stops at its line.
        let wasm = self.store.plugin_wasm(&plugin.sha256).ok().flatten().unwrap_or_default();
        self.write(ExportLine::Plugin {
            version: plugin.version,
            sha256: plugin.sha256,
            contract: plugin.contract,
            uploaded_at: format_time(plugin.uploaded_at),
            wasm_base64: base64::engine::general_purpose::STANDARD.encode(wasm),
        })
    }

    fn write_plugins_to(&mut self, version: u32) -> Result<(), Gone> {
        while self.plugins_written < (version as usize).min(self.plugins.len()) {
            self.write_plugin()?;
        }
        Ok(())
    }

    /// What the event was evaluated with, written before it if it differs from what was.
    fn prerequisites(&mut self, record: &EventRecord) -> Result<(), Gone> {
        if let Some(evaluation) = &record.evaluation {
            let version = evaluation.plugin_version;
            self.write_plugins_to(version)?;
            if evaluation.version_reason.ends_with("the operator's active version") && self.active != Some(version) {
                self.active = Some(version);
                self.write(ExportLine::Activate { version, effective_from: None, scope: None, affiliate: None })?;
            }
            // From the top of the chain down: a parent exists before its child names it.
            let chain = &evaluation.chain;
            for (index, link) in chain.iter().enumerate().rev() {
                let parent = chain.get(index + 1).map(|parent| parent.affiliate.clone());
                let seen = (parent.clone(), link.deal.clone());
                if self.affiliates.get(&link.affiliate) != Some(&seen) {
                    self.affiliates.insert(link.affiliate.clone(), seen);
                    self.write(ExportLine::Affiliate { id: link.affiliate.clone(), parent, deal: link.deal.clone() })?;
                }
            }
        }
        if let Some(fx) = &record.event.fx
            && self.fx_written != Some(fx.rates_updated_at)
            && let Some((source, rates)) = self.fx_sets.get(&fx.rates_updated_at)
        {
            self.fx_written = Some(fx.rates_updated_at);
            let line = ExportLine::FxRates { rates: rates.clone(), source: source.clone() };
            self.write(line)?;
        }
        let needs = if record.restated {
            Some(LateEventPolicy::Adjust)
        } else if record.taken_as_received {
            Some(LateEventPolicy::AsReceived)
        } else {
            None
        };
        if let Some(needs) = needs
            && needs != self.policy
        {
            self.policy = needs;
            self.write(ExportLine::Settings { late_events: needs })?;
        }
        Ok(())
    }

    /// The operator's and admin's moves of the event's commissions, to be written at their time.
    /// A netted reversal's moves are its original's, made again by the import; the host's own
    /// moves (a reversal's) are made again by the reversal.
    fn note_statuses(&mut self, record: &EventRecord) -> Result<(), StoreError> {
        for (index, id) in record.commission_ids.iter().enumerate() {
            let status = self.store.commission_status(&self.operator.id, id)?;
            if status.moves_with.is_some() {
                continue;
            }
            for change in status.history.into_iter().filter(|change| change.by != "host") {
                let key = (change.at, self.statuses.len() as u64 + self.lines);
                self.statuses.insert(
                    key,
                    ExportLine::Status {
                        event: record.event.id.clone(),
                        index,
                        status: change.status,
                        by: change.by,
                        note: change.note,
                        at: format_time(change.at),
                        reference: change.reference,
                    },
                );
            }
        }
        Ok(())
    }

    /// What is true now and was not written by the history: the rest of the plugin versions,
    /// the active one, affiliates as they are now, the rates and setting in force.
    fn final_state(&mut self) -> Result<(), StoreError> {
        let _ = self.write_plugins_to(u32::MAX);
        if let Some(active) = self.operator.active_plugin
            && self.active != Some(active)
        {
            self.active = Some(active);
            let _ = self.write(ExportLine::Activate {
                version: active,
                effective_from: None,
                scope: None,
                affiliate: None,
            });
        }
        // Parents before children: each pass writes those whose parent is written.
        let mut waiting = Vec::new();
        for id in self.store.affiliate_ids(&self.operator.id)? {
            if let Some(record) = self.store.affiliate(&self.operator.id, &id)? {
                waiting.push(record);
            }
        }
        let mut written: std::collections::HashSet<String> = self.affiliates.keys().cloned().collect();
        for _ in 0..=crate::pipeline::MAX_CHAIN_DEPTH {
            let (ready, rest): (Vec<_>, Vec<_>) = waiting
                .into_iter()
                .partition(|record| record.parent.as_ref().is_none_or(|parent| written.contains(parent)));
            for record in ready {
                written.insert(record.id.clone());
                let now = (record.parent.clone(), record.deal.clone());
                if self.affiliates.get(&record.id) != Some(&now) {
                    let _ =
                        self.write(ExportLine::Affiliate { id: record.id, parent: record.parent, deal: record.deal });
                }
            }
            waiting = rest;
        }
        let current = &self.operator.fx_rates;
        if !current.rates.is_empty() && self.fx_written != Some(current.updated_at) {
            let _ = self.write(ExportLine::FxRates { rates: current.rates.clone(), source: current.source.clone() });
        }
        if self.policy != self.operator.late_events {
            let _ = self.write(ExportLine::Settings { late_events: self.operator.late_events });
        }
        Ok(())
    }
}

/// The event in the webhook's shape, its time as stored.
fn wire_event(event: &StoredEvent) -> Value {
    let mut wire = json!({
        "id": event.id,
        "type": event.kind,
        "customer": event.customer,
        "occurred_at": format_time(event.occurred_at),
        "attributes": event.attributes,
    });
    if let Some(amount) = event.amount {
        wire["amount"] = json!(amount.to_string());
    }
    if let Some(currency) = &event.currency {
        wire["currency"] = json!(currency);
    }
    if let Some(affiliate) = &event.affiliate {
        wire["affiliate"] = json!(affiliate);
    }
    wire
}
