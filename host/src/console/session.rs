//! Sign-in, sign-out, the session cookie and CSRF.
//!
//! The cookie holds a **server-side session id** (256 random bits), not the key: the key stays
//! in this process's memory, so a stolen or logged cookie is worth nothing once signed out or
//! after the host restarts, signing out really ends the session, and no sealing key has to be
//! kept. The price is that a restart signs everyone out, which suits a back office. The cookie
//! is `HttpOnly` (no script reads it), `SameSite=Strict` (no other site's page sends it) and
//! `Path=/console` (the JSON API never sees it); it is not `Secure`, because the host serves
//! plain HTTP (a TLS proxy in front should add it).
//!
//! Each session, the anonymous one that shows the sign-in form included, has its own CSRF
//! token, put in every form and checked on every POST (a constant-time comparison); a POST
//! without it gets a 403 page. Signing in replaces the session with a new id (no fixation).
//!
//! Who signed in is found through the API, like everything else: the key opens
//! `GET .../affiliates` (an operator's) or is refused with 403 there (an affiliate's key), and an
//! affiliate's key opens `GET .../commissions?affiliate=ID` only for its own id.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use maud::html;
use serde_json::Value;

use super::layout::{self, Field};
use super::{Answer, Call, Console, enc, see_other};
use crate::secrets;

const COOKIE: &str = "chc_session";
/// How long a session lasts from sign-in.
const LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept at most; beyond, the oldest goes (anonymous ones cost a sign-in page each).
const MAX_SESSIONS: usize = 10_000;
/// The largest form body read.
const MAX_FORM_BYTES: usize = 1 << 20;

/// Who a session is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Who {
    /// Not signed in: only the sign-in form.
    Anonymous,
    Operator,
    Affiliate(String),
}

pub struct Session {
    pub operator: String,
    pub key: String,
    pub who: Who,
    pub csrf: String,
    started: Instant,
}

#[derive(Default)]
pub struct Sessions {
    open: Mutex<HashMap<String, Arc<Session>>>,
}

impl Sessions {
    fn get(&self, id: &str) -> Option<Arc<Session>> {
        let open = self.open.lock().expect("sessions lock");
        open.get(id).filter(|session| session.started.elapsed() < LIFETIME).cloned()
    }

    /// A new session and its id.
    fn start(&self, operator: String, key: String, who: Who) -> (String, Arc<Session>) {
        let id = secrets::random_text();
        let session = Arc::new(Session { operator, key, who, csrf: secrets::random_text(), started: Instant::now() });
        let mut open = self.open.lock().expect("sessions lock");
        if open.len() >= MAX_SESSIONS {
            open.retain(|_, session| session.started.elapsed() < LIFETIME);
        }
        if open.len() >= MAX_SESSIONS
            && let Some(oldest) = open.iter().min_by_key(|(_, session)| session.started).map(|(id, _)| id.clone())
        {
            open.remove(&oldest);
        }
        open.insert(id.clone(), session.clone());
        (id, session)
    }

    fn end(&self, id: &str) {
        self.open.lock().expect("sessions lock").remove(id);
    }
}

fn cookie_value(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .find_map(|pair| pair.trim().strip_prefix(COOKIE)?.strip_prefix('=').map(str::to_owned))
}

fn set_cookie(id: &str, max_age: u64) -> (header::HeaderName, String) {
    (header::SET_COOKIE, format!("{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/console; Max-Age={max_age}"))
}

/// A signed-in session, with what a handler needs to call the API for it. Pages that need one
/// redirect a browser without one to the sign-in form.
pub struct Signed {
    pub session: Arc<Session>,
    pub console: Arc<Console>,
    pub peer: Option<SocketAddr>,
    id: String,
}

impl FromRequestParts<Arc<Console>> for Signed {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, console: &Arc<Console>) -> Result<Self, Response> {
        let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|ConnectInfo(peer)| *peer);
        let found = cookie_value(&parts.headers).and_then(|id| console.sessions.get(&id).map(|session| (id, session)));
        match found {
            Some((id, session)) if session.who != Who::Anonymous => {
                Ok(Signed { session, console: console.clone(), peer, id })
            }
            _ => Err(see_other("/console/sign-in")),
        }
    }
}

impl Signed {
    /// `METHOD /v1/operators/{op}{rest}` with this session's key, and a JSON body if given.
    pub async fn api(&self, method: Method, rest: &str, json: Option<&Value>) -> Answer {
        let body = json.map(|json| ("application/json", Bytes::from(json.to_string())));
        self.api_body(method, rest, body).await
    }

    pub async fn api_body(&self, method: Method, rest: &str, body: Option<(&'static str, Bytes)>) -> Answer {
        let path = format!("/v1/operators/{}{rest}", enc(&self.session.operator));
        self.console.call(Call { method, path, key: &self.session.key, peer: self.peer, body }).await
    }

    pub async fn get(&self, rest: &str) -> Answer {
        self.api(Method::GET, rest, None).await
    }

    /// The affiliate this session is limited to, if an affiliate signed in.
    pub fn affiliate(&self) -> Option<&str> {
        match &self.session.who {
            Who::Affiliate(id) => Some(id),
            _ => None,
        }
    }
}

/// A POSTed form whose CSRF token matched its session's.
pub struct Posted {
    pub signed: Signed,
    pub form: Form,
}

/// The fields of a urlencoded form, in order.
pub struct Form(Vec<(String, String)>);

impl Form {
    pub fn parse(body: &[u8]) -> Form {
        Form(form_urlencoded::parse(body).into_owned().collect())
    }

    /// The field's value, trimmed ("" when absent).
    pub fn get(&self, name: &str) -> &str {
        self.0.iter().find(|(key, _)| key == name).map_or("", |(_, value)| value.trim())
    }

    /// Every value given for `name` (checkboxes).
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.0.iter().filter(|(key, _)| key == name).map(|(_, value)| value.as_str()).collect()
    }
}

fn csrf_refused() -> Response {
    layout::error_page(
        StatusCode::FORBIDDEN,
        "Refused: the form's security token is missing or wrong",
        "This form was not sent from a page of this console session (its CSRF token is missing or \
         does not match). Reload the page and send the form again.",
    )
}

/// Whether `presented` is the session's CSRF token (constant time).
pub fn csrf_matches(session: &Session, presented: &str) -> bool {
    secrets::matches(presented, &secrets::sha256_hex(&session.csrf))
}

impl FromRequest<Arc<Console>> for Posted {
    type Rejection = Response;

    async fn from_request(request: Request, console: &Arc<Console>) -> Result<Self, Response> {
        let (mut parts, body) = request.into_parts();
        let signed = <Signed as FromRequestParts<Arc<Console>>>::from_request_parts(&mut parts, console).await?;
        let body = axum::body::to_bytes(body, MAX_FORM_BYTES)
            .await
            .map_err(|_| layout::error_page(StatusCode::PAYLOAD_TOO_LARGE, "Form too large", "Send less."))?;
        let form = Form::parse(&body);
        if !csrf_matches(&signed.session, form.get("csrf")) {
            return Err(csrf_refused());
        }
        Ok(Posted { signed, form })
    }
}

/// `/console/`: the signed-in home, or the sign-in form.
pub async fn home(signed: Option<Signed>) -> Response {
    match signed.map(|signed| signed.session.who.clone()) {
        Some(Who::Affiliate(_)) => see_other("/console/portal"),
        Some(_) => see_other("/console/overview"),
        None => see_other("/console/sign-in"),
    }
}

impl axum::extract::OptionalFromRequestParts<Arc<Console>> for Signed {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, console: &Arc<Console>) -> Result<Option<Self>, Response> {
        Ok(<Signed as FromRequestParts<Arc<Console>>>::from_request_parts(parts, console).await.ok())
    }
}

/// The sign-in form, in an anonymous session of its own (for its CSRF token).
pub async fn sign_in_page(State(console): State<Arc<Console>>, headers: HeaderMap) -> Response {
    let existing = cookie_value(&headers).and_then(|id| console.sessions.get(&id).map(|session| (id, session)));
    let (id, session) = match existing {
        Some(found) => found,
        None => console.sessions.start(String::new(), String::new(), Who::Anonymous),
    };
    let mut response = sign_in_form(&session, &SignInInput::default(), None).into_response();
    let (name, value) = set_cookie(&id, LIFETIME.as_secs());
    if let Ok(value) = value.parse() {
        response.headers_mut().insert(name, value);
    }
    response
}

#[derive(Default)]
struct SignInInput {
    operator: String,
    affiliate: String,
    problems: Vec<(&'static str, String)>,
}

fn sign_in_form(session: &Session, input: &SignInInput, status: Option<StatusCode>) -> Response {
    let problem = |field: &str| input.problems.iter().find(|(name, _)| *name == field).map(|(_, text)| text.clone());
    let body = html! {
        h1 { "Sign in" }
        p { "With the operator's API key (the back office) or an affiliate's portal key (" code { "chka_…" } ")." }
        form method="post" action="/console/sign-in" {
            (layout::csrf(session))
            (layout::field(&Field::text("operator", "Operator id", &input.operator).problem(problem("operator"))))
            (layout::field(&Field::password("key", "API key or affiliate key").problem(problem("key"))))
            (layout::field(&Field::text("affiliate", "Affiliate id (affiliate keys only)", &input.affiliate)
                .problem(problem("affiliate"))))
            button type="submit" { "Sign in" }
        }
    };
    let mut response = layout::bare("Sign in", body);
    if let Some(status) = status {
        *response.status_mut() = status;
    }
    response
}

/// Signs in: finds who the key is through the API, then starts a new session.
pub async fn sign_in(State(console): State<Arc<Console>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|ConnectInfo(peer)| *peer);
    let Some((old_id, old)) = cookie_value(&parts.headers).and_then(|id| console.sessions.get(&id).map(|s| (id, s)))
    else {
        return csrf_refused();
    };
    let Ok(body) = axum::body::to_bytes(body, MAX_FORM_BYTES).await else { return csrf_refused() };
    let form = Form::parse(&body);
    if !csrf_matches(&old, form.get("csrf")) {
        return csrf_refused();
    }
    let (operator, key, affiliate) = (form.get("operator"), form.get("key"), form.get("affiliate"));
    let mut input = SignInInput { operator: operator.to_owned(), affiliate: affiliate.to_owned(), problems: vec![] };
    if operator.is_empty() {
        input.problems.push(("operator", "the operator id is required".into()));
    }
    if key.is_empty() {
        input.problems.push(("key", "the key is required".into()));
    }
    if !input.problems.is_empty() {
        return sign_in_form(&old, &input, Some(StatusCode::UNPROCESSABLE_ENTITY));
    }
    let call = |path: String| Call { method: Method::GET, path, key, peer, body: None };
    let base = format!("/v1/operators/{}", enc(operator));
    let probe = console.call(call(format!("{base}/affiliates?limit=1"))).await;
    let who = match probe.status {
        StatusCode::OK => Who::Operator,
        StatusCode::FORBIDDEN if affiliate.is_empty() => {
            input
                .problems
                .push(("affiliate", "this is an affiliate's key: give the affiliate id it was issued for".into()));
            return sign_in_form(&old, &input, Some(StatusCode::UNPROCESSABLE_ENTITY));
        }
        StatusCode::FORBIDDEN => {
            let own = console.call(call(format!("{base}/commissions?limit=1&affiliate={}", enc(affiliate)))).await;
            if !own.ok() {
                input.problems.push(("affiliate", own.problem("affiliate").unwrap_or_else(|| own.message())));
                return sign_in_form(&old, &input, Some(own.status));
            }
            Who::Affiliate(affiliate.to_owned())
        }
        _ => {
            input.problems.push(("key", probe.message()));
            return sign_in_form(&old, &input, Some(probe.status));
        }
    };
    console.sessions.end(&old_id);
    let home = if matches!(who, Who::Affiliate(_)) { "/console/portal" } else { "/console/overview" };
    let (id, _) = console.sessions.start(operator.to_owned(), key.to_owned(), who);
    let mut response = see_other(home);
    let (name, value) = set_cookie(&id, LIFETIME.as_secs());
    if let Ok(value) = value.parse() {
        response.headers_mut().insert(name, value);
    }
    response
}

/// Signs out: the session ends here, and the cookie is cleared.
pub async fn sign_out(posted: Posted) -> Response {
    posted.signed.console.sessions.end(&posted.signed.id);
    let mut response = see_other("/console/sign-in");
    let (name, value) = set_cookie("", 0);
    if let Ok(value) = value.parse() {
        response.headers_mut().insert(name, value);
    }
    response
}
