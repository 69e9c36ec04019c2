//! The console: an operator's back office and an affiliate's portal, as HTML pages under
//! `/console/`, served by the host beside the JSON API (`serve --no-console` leaves them out).
//!
//! **It uses the public API and nothing else.** Every page is made from answers of the API's
//! own router, called in process: the console builds the request a client would send (method,
//! path, query, body, `Authorization: Bearer <the signed-in key>`, and the browser's peer
//! address for the failed-credential throttle) and hands it to the router with tower's
//! `oneshot`. We chose that over calling the handlers' service functions because it cannot go
//! around anything: the same routing, authentication, scoping of an affiliate key to its own
//! lines, validation and error bodies apply as over HTTP, and a change to the API's rules
//! changes the console with it. An affiliate signed in sees what its key opens, no more: a URL
//! naming another affiliate gets the API's 403 as a page.
//!
//! Pages are server-rendered with maud (escaped by default), charts are inline SVG drawn here,
//! and the only JavaScript is the plugin upload (a file sent as the body, as the API takes it).
//! The console's routes are HTML and are not part of the OpenAPI document.
//!
//! | file | pages |
//! | --- | --- |
//! | [`session`] | sign-in, sign-out, the session cookie and CSRF tokens |
//! | [`layout`] | the page frame, tables, the SVG bar chart, error pages |
//! | [`overview`] | an operator's overview |
//! | [`plugins`] | upload, activate, shadow, shadow report, backtest |
//! | [`affiliates`] | the affiliate tree and deals, edited |
//! | [`ledger`] | commissions with filters, bulk approve, payout run, CSV |
//! | [`trace`] | one event's trace |
//! | [`statement`] | a month's statement, line by line, closed and restated |
//! | [`periods`] | months: close (with a confirmation), statements as closed and restated |
//! | [`verify`] | verify as a job: from the first event or since the last, its progress, its report |
//! | [`portal`] | an affiliate's earnings, balances, commissions, statements, payouts |

mod affiliates;
mod layout;
mod ledger;
mod overview;
mod periods;
mod plugins;
mod portal;
mod session;
mod statement;
mod trace;
mod verify;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, HeaderValue, Method, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt as _;

/// The console's routes, merged in front of the API's router `api` (which they call).
pub fn router(api: Router) -> Router {
    let console = Arc::new(Console { api: api.clone(), sessions: session::Sessions::default() });
    let pages = Router::new()
        .route("/console", get(session::home))
        .route("/console/", get(session::home))
        .route("/console/sign-in", get(session::sign_in_page).post(session::sign_in))
        .route("/console/sign-out", post(session::sign_out))
        .route("/console/overview", get(overview::page))
        .route("/console/plugins", get(plugins::page).post(plugins::upload))
        .route("/console/plugins/{version}/activate", post(plugins::activate))
        .route("/console/plugins/{version}/shadow", get(plugins::shadow_report).post(plugins::set_shadow))
        .route("/console/plugins/{version}/backtest", post(plugins::backtest))
        .route("/console/affiliates", get(affiliates::page).post(affiliates::save))
        .route("/console/ledger", get(ledger::page))
        .route("/console/ledger.csv", get(ledger::csv))
        .route("/console/ledger/approve", post(ledger::approve))
        .route("/console/ledger/payout", post(ledger::payout))
        .route("/console/events/{id}", get(trace::page))
        .route("/console/periods", get(periods::page))
        .route("/console/periods/{period}/close", get(periods::confirm_close).post(periods::close))
        .route("/console/periods/{period}/statement", get(periods::statement))
        .route("/console/periods/{period}/statement.csv", get(periods::statement_csv))
        .route("/console/verify", post(verify::start))
        .route("/console/verify-jobs/{job}", get(verify::job))
        .route("/console/portal", get(portal::page))
        .route("/console/portal/statements", get(portal::pick))
        .route("/console/portal/statements/{period}", get(portal::statement))
        .route("/console/portal/commissions.csv", get(portal::csv))
        .route("/console/style.css", get(layout::stylesheet))
        .with_state(console);
    pages.merge(api)
}

/// What every console handler shares: the API it calls and the signed-in sessions.
pub struct Console {
    api: Router,
    sessions: session::Sessions,
}

/// An answer of the API: its status, headers and body.
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn ok(&self) -> bool {
        self.status.is_success()
    }

    /// The body as JSON (`null` if it is not).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// The API's refusal message, or the status's reason.
    pub fn message(&self) -> String {
        match self.json()["message"].as_str() {
            Some(message) => message.to_owned(),
            None => self.status.canonical_reason().unwrap_or("error").to_owned(),
        }
    }

    /// The problem the API named for `field`, if any (`details[].field`).
    pub fn problem(&self, field: &str) -> Option<String> {
        let json = self.json();
        json["details"]
            .as_array()?
            .iter()
            .find(|detail| detail["field"] == field)
            .map(|detail| detail["problem"].as_str().map(str::to_owned).unwrap_or_else(|| self.message()))
    }

    /// The answer passed on as it is (a CSV export, byte for byte).
    pub fn passed_on(self) -> Response {
        let mut response = Response::new(Body::from(self.body));
        *response.status_mut() = self.status;
        for name in [header::CONTENT_TYPE, header::CONTENT_DISPOSITION] {
            if let Some(value) = self.headers.get(&name) {
                response.headers_mut().insert(name, value.clone());
            }
        }
        response
    }
}

/// One request to the API as a client would send it.
pub struct Call<'a> {
    pub method: Method,
    pub path: String,
    pub key: &'a str,
    pub peer: Option<SocketAddr>,
    pub body: Option<(&'static str, Bytes)>,
}

impl Console {
    /// Sends `call` through the API's router and reads the whole answer.
    pub async fn call(&self, call: Call<'_>) -> Answer {
        let mut request = Request::builder().method(call.method).uri(&call.path);
        if let Ok(value) = HeaderValue::from_str(&format!("Bearer {}", call.key)) {
            request = request.header(header::AUTHORIZATION, value);
        }
        let body = match call.body {
            Some((content_type, bytes)) => {
                request = request.header(header::CONTENT_TYPE, content_type);
                Body::from(bytes)
            }
            None => Body::empty(),
        };
        let Ok(mut request) = request.body(body) else {
            return Answer::refused(StatusCode::BAD_REQUEST, "the request could not be built (a bad character in it?)");
        };
        if let Some(peer) = call.peer {
            request.extensions_mut().insert(ConnectInfo(peer));
        }
        let response = match self.api.clone().oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        };
        let (parts, body) = response.into_parts();
        match body.collect().await {
            Ok(collected) => Answer { status: parts.status, headers: parts.headers, body: collected.to_bytes() },
            Err(error) => Answer::refused(StatusCode::INTERNAL_SERVER_ERROR, &format!("reading the answer: {error}")),
        }
    }
}

impl Answer {
    fn refused(status: StatusCode, message: &str) -> Answer {
        let body = serde_json::json!({"error": "console", "message": message, "details": []});
        Answer { status, headers: HeaderMap::new(), body: Bytes::from(body.to_string()) }
    }

    /// A refusal made by the console itself, in the API's shape, naming `field` (a form that
    /// cannot be turned into a request: an empty id, a deal line without `=`).
    pub fn local(status: StatusCode, field: &str, problem: &str) -> Answer {
        let body = serde_json::json!({
            "error": "invalid_field",
            "message": format!("{field}: {problem}"),
            "details": [{"field": field, "problem": problem}],
        });
        Answer { status, headers: HeaderMap::new(), body: Bytes::from(body.to_string()) }
    }
}

/// A console page's result: the page, or an error page with the API's status and message.
pub type Page = Result<Response, Response>;

/// The error page for an API answer that was not a success.
pub fn failed(answer: &Answer, title: &str) -> Response {
    layout::error_page(answer.status, title, &answer.message())
}

/// What [`enc`] leaves as it is: letters, digits and RFC 3986's other unreserved characters.
const UNRESERVED: &percent_encoding::AsciiSet =
    &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

/// Percent-encodes one path segment or query value.
pub fn enc(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, UNRESERVED).to_string()
}

/// A redirect after a POST (303: the browser GETs the page).
pub fn see_other(to: &str) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, to.to_owned())]).into_response()
}

/// The most entries a page reads from one listing (pages of 1,000): the console shows the
/// first ones and says so, rather than reading a whole ledger for one screen.
pub const MAX_ROWS: usize = 5_000;

/// Every entry of a listing (`rest` with its query; `field` is the array in each page) up to
/// [`MAX_ROWS`], following `next`; and whether there were more.
pub async fn listing(signed: &session::Signed, rest: &str, field: &str) -> Result<(Vec<Value>, bool), Response> {
    let mut rows = Vec::new();
    let mut cursor: Option<String> = None;
    let joiner = if rest.contains('?') { '&' } else { '?' };
    loop {
        let page = match &cursor {
            None => format!("{rest}{joiner}limit=1000"),
            Some(cursor) => format!("{rest}{joiner}limit=1000&cursor={}", enc(cursor)),
        };
        let answer = signed.get(&page).await;
        if !answer.ok() {
            return Err(failed(&answer, "The API refused the listing"));
        }
        let json = answer.json();
        rows.extend(json[field].as_array().cloned().unwrap_or_default());
        match json["next"].as_str() {
            Some(next) if rows.len() < MAX_ROWS => cursor = Some(next.to_owned()),
            Some(_) => return Ok((rows, true)),
            None => return Ok((rows, false)),
        }
    }
}
