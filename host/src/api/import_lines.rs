//! The lines of an import body, read as they arrive: the body is never held whole, only the
//! line being read (at most [`MAX_LINE_BYTES`]) and what the frame it came in holds beyond it.
//! Each line becomes an event in the webhook's shape, checked by the webhook's own parser, so
//! an import takes exactly what a webhook takes and refuses it with the same words.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::body::Body;
use http_body_util::BodyExt;
use serde_json::{Map, Value};

use crate::event::{self, BodyError, FieldError, IncomingEvent, now_ms};
use crate::store::imports::LineProblem;

/// The longest line taken: a webhook body's limit (an event is far smaller).
pub const MAX_LINE_BYTES: usize = 1 << 20;
/// How long the body may send nothing before the import stops (at the line it was on).
const IDLE: Duration = Duration::from_secs(30);
/// The event fields a CSV column can be mapped to; every other column is an attribute.
pub const CSV_FIELDS: &[&str] = &["id", "type", "customer", "occurred_at", "amount", "currency", "affiliate"];

/// Splits a streamed body into numbered lines (1-based), `\n` or `\r\n` ended.
pub struct Lines {
    body: Body,
    buffer: Vec<u8>,
    /// Where the unread part of `buffer` starts.
    start: usize,
    line: u64,
    ended: bool,
}

impl Lines {
    pub fn new(body: Body) -> Self {
        Self { body, buffer: Vec::new(), start: 0, line: 0, ended: false }
    }

    /// The next line and its number; `None` at the end of the body. An error names the line
    /// that could not be read whole.
    pub async fn next(&mut self) -> Result<Option<(u64, Vec<u8>)>, LineProblem> {
        loop {
            let unread = &self.buffer[self.start..];
            if let Some(end) = unread.iter().position(|byte| *byte == b'\n') {
                let mut line = unread[..end].to_vec();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                self.start += end + 1;
                self.line += 1;
                return Ok(Some((self.line, line)));
            }
            if self.ended {
                if unread.is_empty() {
                    return Ok(None);
                }
                let line = unread.to_vec();
                self.start = self.buffer.len();
                self.line += 1;
                return Ok(Some((self.line, line)));
            }
            if unread.len() > MAX_LINE_BYTES {
                return Err(self.problem(format!("longer than {MAX_LINE_BYTES} bytes: is this NDJSON or CSV?")));
            }
            // Keep only the unread part before reading more.
            self.buffer.drain(..self.start);
            self.start = 0;
            match tokio::time::timeout(IDLE, self.body.frame()).await {
                Err(_) => {
                    return Err(self.problem(format!(
                        "the body sent nothing for {} seconds; the import stopped here",
                        IDLE.as_secs()
                    )));
                }
                Ok(None) => self.ended = true,
                Ok(Some(Err(error))) => {
                    return Err(self.problem(format!("the body ended before the file did ({error})")));
                }
                Ok(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        self.buffer.extend_from_slice(&data);
                    }
                }
            }
        }
    }

    /// How many lines were read.
    pub fn count(&self) -> u64 {
        self.line
    }

    fn problem(&self, problem: String) -> LineProblem {
        LineProblem { line: self.line + 1, field: String::new(), problem }
    }
}

/// An NDJSON line as one webhook event; `None` for a blank line.
pub fn ndjson_event(line: &[u8], currency: &str) -> Result<Option<IncomingEvent>, (String, String)> {
    if line.trim_ascii().is_empty() {
        return Ok(None);
    }
    if line.trim_ascii_start().first() != Some(&b'{') {
        return Err((String::new(), "each line must be one event object, as a webhook takes it".into()));
    }
    webhook_event(line, currency).map(Some)
}

/// One event object through the webhook's parser: the first problem, by field, if it is refused.
pub fn webhook_event(json: &[u8], currency: &str) -> Result<IncomingEvent, (String, String)> {
    match event::parse_webhook(json, currency, now_ms()) {
        Ok((mut events, _)) if events.len() == 1 => Ok(events.remove(0)),
        Ok(_) => Err((String::new(), "one event object per line".into())),
        Err(BodyError::Syntax(message)) => Err((String::new(), format!("not JSON: {message}"))),
        Err(BodyError::Fields(problems)) => Err(first_problem(problems)),
    }
}

fn first_problem(problems: Vec<FieldError>) -> (String, String) {
    let more = problems.len().saturating_sub(1);
    let first = problems.into_iter().next().unwrap_or_else(|| FieldError::new("", "refused"));
    let problem = if more > 0 { format!("{} (and {more} more problems)", first.problem) } else { first.problem };
    (first.field, problem)
}

/// CSV: the header row names the columns; `mapping` says which column holds which event field
/// (a field not mapped is read from the column of its own name, if there is one).
pub struct Csv {
    /// Column index -> the event field it fills, or the attribute it is.
    columns: Vec<Column>,
    /// A record whose quoted field runs over more than one line: its first line and text so far.
    open: Option<(u64, Vec<u8>)>,
}

enum Column {
    Field(&'static str),
    Attribute(String),
}

/// A CSV line read: nothing yet (a quoted field goes on), a blank line, or a record's event.
pub enum CsvLine {
    Incomplete,
    Blank,
    Event(u64, Box<IncomingEvent>),
}

impl Csv {
    /// Reads the header row against the mapping (`field -> column name`).
    pub fn new(header: &[u8], mapping: &BTreeMap<String, String>) -> Result<Self, (String, String)> {
        let names = record(header).map_err(|problem| (String::new(), problem))?;
        let mut columns: Vec<Column> = names.iter().map(|name| Column::Attribute(name.clone())).collect();
        for field in CSV_FIELDS {
            let wanted = mapping.get(*field).map_or(*field, String::as_str);
            match names.iter().position(|name| name == wanted) {
                Some(index) => columns[index] = Column::Field(field),
                None if mapping.contains_key(*field) => {
                    return Err((
                        format!("map.{field}"),
                        format!("the header has no column {wanted:?}; its columns: {}", names.join(", ")),
                    ));
                }
                None => {}
            }
        }
        Ok(Self { columns, open: None })
    }

    /// Takes one physical line; a record is complete once its quotes are balanced.
    pub fn line(&mut self, number: u64, line: Vec<u8>, currency: &str) -> Result<CsvLine, (u64, String, String)> {
        let (first, text) = match self.open.take() {
            Some((first, mut text)) => {
                text.push(b'\n');
                text.extend_from_slice(&line);
                (first, text)
            }
            None if line.trim_ascii().is_empty() => return Ok(CsvLine::Blank),
            None => (number, line),
        };
        if text.iter().filter(|byte| **byte == b'"').count() % 2 == 1 {
            if text.len() > MAX_LINE_BYTES {
                return Err((first, String::new(), "a quoted field is not closed".into()));
            }
            self.open = Some((first, text));
            return Ok(CsvLine::Incomplete);
        }
        let cells = record(&text).map_err(|problem| (first, String::new(), problem))?;
        if cells.len() != self.columns.len() {
            return Err((
                first,
                String::new(),
                format!("{} cells; the header has {} columns", cells.len(), self.columns.len()),
            ));
        }
        let mut event = Map::new();
        let mut attributes = Map::new();
        for (column, cell) in self.columns.iter().zip(cells) {
            if cell.is_empty() {
                continue;
            }
            match column {
                Column::Field(field) => event.insert((*field).to_owned(), Value::String(cell)),
                Column::Attribute(name) => attributes.insert(name.clone(), Value::String(cell)),
            };
        }
        if !attributes.is_empty() {
            event.insert("attributes".into(), Value::Object(attributes));
        }
        let json = serde_json::to_vec(&event).expect("strings serialize");
        let incoming = webhook_event(&json, currency).map_err(|(field, problem)| (first, field, problem))?;
        Ok(CsvLine::Event(first, Box::new(incoming)))
    }

    /// A record still open at the end of the body: its quote was never closed.
    pub fn unclosed(&self) -> Option<u64> {
        self.open.as_ref().map(|(first, _)| *first)
    }
}

/// One CSV record (RFC 4180 quoting, by the csv crate).
fn record(text: &[u8]) -> Result<Vec<String>, String> {
    let mut reader = csv::ReaderBuilder::new().has_headers(false).flexible(true).from_reader(text);
    match reader.records().next() {
        Some(Ok(record)) => Ok(record.iter().map(str::to_owned).collect()),
        Some(Err(error)) => Err(format!("not a CSV record: {error}")),
        None => Ok(Vec::new()),
    }
}
