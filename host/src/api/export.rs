//! CSV exports, for a finance team's spreadsheet and payment run: the commissions listing and a
//! period statement, asked for with `Accept: text/csv` or `?format=csv`, with the same filters
//! as their JSON. One header row, then a row per commission with the JSON's fields in the same
//! text (amounts as decimal strings, times RFC 3339, an absent value empty), quoted by the `csv`
//! crate as RFC 4180 says: a field with a comma, a quote or a line break is quoted, its quotes
//! doubled.
//!
//! The listing is streamed a page of the ledger at a time, so an export of a whole ledger holds
//! one page in memory, and a client that hangs up stops it. A failure part way aborts the body:
//! the client sees a broken transfer, never a short file that looks whole.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use http_body_util::channel::Channel;

use super::ApiError;
use super::commissions::CommissionFilter;
use crate::event::{FieldError, format_time};
use crate::store::records::{CommissionRecord, CommissionStatus};
use crate::store::{LedgerPosition, Store, StoreError};

/// Commissions read from the ledger per chunk of the stream.
const PAGE: usize = 500;

/// The columns of a commission row, in order.
pub const COMMISSION_COLUMNS: [&str; 18] = [
    "id",
    "event_id",
    "affiliate",
    "customer",
    "amount",
    "currency",
    "status",
    "rule",
    "explanation",
    "plugin_version",
    "version_reason",
    "occurred_at",
    "created_at",
    "hold_until",
    "reverses",
    "restates_period",
    "fx_rate",
    "unrounded_amount",
];

/// The answer's format: `?format=` when given, else CSV when the `Accept` header names
/// `text/csv`, else JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    #[default]
    Json,
    Csv,
}

impl Format {
    /// Reads `?format=`; a value other than `json` or `csv` is a problem named `format`.
    pub fn read(value: &str, problems: &mut Vec<FieldError>) -> Option<Format> {
        match value {
            "json" => Some(Format::Json),
            "csv" => Some(Format::Csv),
            _ => {
                problems.push(FieldError::new("format", "json or csv (or `Accept: text/csv`)"));
                None
            }
        }
    }

    pub fn wanted(asked: Option<Format>, headers: &HeaderMap) -> Format {
        asked.unwrap_or_else(|| {
            let accept = headers.get(header::ACCEPT).and_then(|value| value.to_str().ok()).unwrap_or_default();
            let names_csv = accept.split(',').any(|range| {
                range.split(';').next().is_some_and(|media| media.trim().eq_ignore_ascii_case("text/csv"))
            });
            if names_csv { Format::Csv } else { Format::Json }
        })
    }
}

/// A commission's row: the fields of its JSON, as text.
pub fn commission_row(commission: &CommissionRecord, status: CommissionStatus) -> [String; 18] {
    let text = |value: Option<String>| value.unwrap_or_default();
    [
        commission.id.clone(),
        commission.event_id.clone(),
        commission.affiliate.clone(),
        commission.customer.clone(),
        commission.amount.to_string(),
        commission.currency.clone(),
        status.as_str().to_owned(),
        commission.rule.clone(),
        commission.explanation.clone(),
        commission.plugin_version.to_string(),
        commission.version_reason.clone(),
        format_time(commission.occurred_at),
        format_time(commission.created_at),
        text(commission.hold_until.map(format_time)),
        text(commission.reverses.clone()),
        text(commission.restates.as_ref().map(|restates| restates.period.clone())),
        text(commission.fx_rate.map(|rate| rate.to_string())),
        text(commission.unrounded_amount.map(|amount| amount.to_string())),
    ]
}

/// Rows as CSV bytes (RFC 4180; `\r\n` ends each row).
pub fn csv_rows<R: AsRef<[u8]>>(rows: impl IntoIterator<Item = impl IntoIterator<Item = R>>) -> Vec<u8> {
    let mut writer = csv::WriterBuilder::new().terminator(csv::Terminator::CRLF).from_writer(Vec::new());
    for row in rows {
        writer.write_record(row).expect("writing to memory does not fail");
    }
    writer.into_inner().expect("flushing to memory does not fail")
}

/// A `text/csv` answer, to be saved as `filename`.
pub fn csv_response(body: Body, filename: &str) -> Response {
    let disposition = HeaderValue::from_str(&format!("attachment; filename=\"{filename}\""))
        .unwrap_or_else(|_| HeaderValue::from_static("attachment"));
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("text/csv; charset=utf-8")),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        body,
    )
        .into_response()
}

/// The commissions listing as CSV, streamed: every commission from `cursor` on that passes
/// `filter`, in ledger order, at most `limit` if given.
pub fn commissions_csv(
    store: Arc<Store>,
    operator: String,
    filter: CommissionFilter,
    cursor: Option<LedgerPosition>,
    limit: Option<usize>,
) -> Result<Response, ApiError> {
    let (mut sender, body) = Channel::<Bytes, std::io::Error>::new(2);
    let filename = format!("{operator}-commissions.csv");
    tokio::spawn(async move {
        let mut chunk = csv_rows([COMMISSION_COLUMNS]);
        let mut position = cursor;
        let mut left = limit.unwrap_or(usize::MAX);
        loop {
            let page = rows_after(&store, &operator, &filter, position, PAGE.min(left));
            let (rows, next) = match page {
                Ok(page) => page,
                Err(error) => {
                    tracing::error!(%error, operator, "a CSV export failed part way; its body is cut off");
                    sender.abort(std::io::Error::other(error));
                    return;
                }
            };
            left -= rows.len();
            chunk.extend(csv_rows(rows));
            // The client hung up: nothing more to read for it.
            if sender.send_data(Bytes::from(std::mem::take(&mut chunk))).await.is_err() {
                return;
            }
            match next {
                Some(next) if left > 0 => position = Some(next),
                _ => return,
            }
        }
    });
    Ok(csv_response(Body::new(body), &filename))
}

type Rows = Vec<[String; 18]>;

fn rows_after(
    store: &Store,
    operator: &str,
    filter: &CommissionFilter,
    after: Option<LedgerPosition>,
    limit: usize,
) -> Result<(Rows, Option<LedgerPosition>), StoreError> {
    let (commissions, next) = filter.page(store, operator, after, limit)?;
    let rows = commissions
        .iter()
        .map(|commission| Ok(commission_row(commission, store.commission_status(operator, &commission.id)?.status)))
        .collect::<Result<_, StoreError>>()?;
    Ok((rows, next))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_with_commas_quotes_and_line_breaks_are_quoted_and_read_back_as_written() {
        let awkward = ["plain", "a, b", "say \"hi\"", "two\nlines", "cr\r\nlf", "", " padded "];
        let bytes = csv_rows([awkward, awkward]);
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(
            text.starts_with("plain,\"a, b\",\"say \"\"hi\"\"\",\"two\nlines\",\"cr\r\nlf\",, padded \r\n"),
            "{text:?}"
        );
        let mut reader = csv::ReaderBuilder::new().has_headers(false).from_reader(bytes.as_slice());
        let rows: Vec<csv::StringRecord> = reader.records().collect::<Result<_, _>>().unwrap();
        assert_eq!(rows.len(), 2);
        for row in rows {
            assert_eq!(row.iter().collect::<Vec<_>>(), awkward);
        }
    }

    #[test]
    fn the_format_is_the_query_s_then_the_accept_header_s() {
        let mut headers = HeaderMap::new();
        assert_eq!(Format::wanted(None, &headers), Format::Json);
        headers.insert(header::ACCEPT, HeaderValue::from_static("application/json;q=0.5, Text/CSV; charset=utf-8"));
        assert_eq!(Format::wanted(None, &headers), Format::Csv);
        assert_eq!(Format::wanted(Some(Format::Json), &headers), Format::Json);
        let mut problems = Vec::new();
        assert_eq!(Format::read("xlsx", &mut problems), None);
        assert_eq!(problems[0].field, "format");
    }
}
