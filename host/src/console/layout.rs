//! The page frame (navigation, sign-out), form fields with the API's problem beside them,
//! tables of amounts, the inline SVG bar chart, error pages and the stylesheet.
//!
//! Accessibility: every input has a `<label for>`, every action is a real link or button (so
//! the keyboard reaches it, with a visible focus ring), and text is dark on a light background
//! (contrast above 7:1 for body text).

use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use maud::{DOCTYPE, Markup, PreEscaped, html};
use rust_decimal::Decimal;

use super::session::{Session, Who};

const STYLE: &str = "
body{font:15px/1.45 system-ui,sans-serif;color:#111;background:#fff;margin:0}
header{background:#f1f3f5;border-bottom:1px solid #ccd;padding:.5rem 1rem;display:flex;gap:1rem;align-items:center;flex-wrap:wrap}
header nav a{margin-right:.8rem}
main{padding:1rem 1.2rem;max-width:1200px}
a{color:#0645ad}
a:focus,button:focus,input:focus,select:focus,textarea:focus{outline:3px solid #b35900;outline-offset:2px}
table{border-collapse:collapse;margin:.5rem 0 1rem}
th,td{border:1px solid #bbc;padding:.25rem .5rem;text-align:left;vertical-align:top}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
th{background:#eef0f3}
tr.diff td,td.diff{background:#fff1b8}
.neg{color:#a00000}
.problem{color:#a00000;font-weight:600;margin:.2rem 0}
.field{margin:.5rem 0}
label{display:block;font-weight:600}
input,select,textarea{font:inherit;padding:.25rem;border:1px solid #667;color:#111;background:#fff}
button{font:inherit;padding:.3rem .8rem;border:1px solid #234;background:#1d3557;color:#fff;cursor:pointer}
.cards{display:flex;gap:1rem;flex-wrap:wrap}
.card{border:1px solid #bbc;padding:.6rem 1rem;min-width:10rem}
.card strong{display:block;font-size:1.3rem}
.notice{background:#e8f4ea;border:1px solid #5a8f66;padding:.5rem}
.warn{background:#fff1b8;border:1px solid #a67c00;padding:.5rem}
code{background:#f4f4f4}
";

pub async fn stylesheet() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE).into_response()
}

/// The document around `body`: the doctype, the language, the title and the stylesheet.
fn document(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · commission-host" }
                link rel="stylesheet" href="/console/style.css";
            }
            body { (body) }
        }
    }
}

/// A page without the signed-in frame (the sign-in form).
pub fn bare(title: &str, body: Markup) -> Response {
    Html(document(title, html! { main { (body) } }).into_string()).into_response()
}

/// A signed-in page: the navigation of the session's role, then `body`.
pub fn page(session: &Session, title: &str, body: Markup) -> Response {
    let html = document(
        title,
        html! {
                    header {
                        strong { "commission-host" }
                        nav aria-label="console" {
                            @match &session.who {
                                Who::Affiliate(_) => { a href="/console/portal" { "Portal" } }
                                _ => {
                                    a href="/console/overview" { "Overview" }
                                    a href="/console/plugins" { "Plugins" }
                                    a href="/console/affiliates" { "Affiliates" }
                                    a href="/console/ledger" { "Ledger" }
                                    a href="/console/periods" { "Periods" }
                                }
                            }
                        }
                        span {
                            "Operator " code { (session.operator) }
                            @if let Who::Affiliate(affiliate) = &session.who { ", affiliate " code { (affiliate) } }
                        }
                        form method="post" action="/console/sign-out" {
                            (csrf(session))
                            button type="submit" { "Sign out" }
                        }
                    }
                    main { h1 { (title) } (body) }
        },
    );
    Html(html.into_string()).into_response()
}

/// An error page: the status and what went wrong (the API's message).
pub fn error_page(status: StatusCode, title: &str, message: &str) -> Response {
    let html = document(
        title,
        html! { main {
                h1 { (title) }
                p.problem role="alert" { (status.as_u16()) " " (status.canonical_reason().unwrap_or("")) ": " (message) }
                p { a href="/console/" { "Back to the console" } }
        } },
    );
    (status, Html(html.into_string())).into_response()
}

/// The hidden CSRF field every form carries.
pub fn csrf(session: &Session) -> Markup {
    html! { input type="hidden" name="csrf" value=(session.csrf); }
}

/// One labelled input, with the API's problem for it beside it.
pub struct Field<'a> {
    /// Makes the input's id unique when a page has several forms with this field.
    prefix: String,
    name: &'a str,
    label: &'a str,
    kind: &'a str,
    value: String,
    problem: Option<String>,
}

impl<'a> Field<'a> {
    pub fn text(name: &'a str, label: &'a str, value: &str) -> Self {
        Field { prefix: String::new(), name, label, kind: "text", value: value.to_owned(), problem: None }
    }

    pub fn password(name: &'a str, label: &'a str) -> Self {
        Field { prefix: String::new(), name, label, kind: "password", value: String::new(), problem: None }
    }

    pub fn within(mut self, prefix: &str) -> Self {
        self.prefix = prefix.to_owned();
        self
    }

    pub fn kind(mut self, kind: &'a str) -> Self {
        self.kind = kind;
        self
    }

    pub fn problem(mut self, problem: Option<String>) -> Self {
        self.problem = problem;
        self
    }
}

pub fn field(field: &Field) -> Markup {
    let id = format!("f-{}{}", field.prefix, field.name);
    let problem_id = format!("{id}-problem");
    html! {
        div.field {
            label for=(id) { (field.label) }
            @if field.kind == "textarea" {
                textarea id=(id) name=(field.name) rows="4" cols="40" aria-invalid=[field.problem.as_ref().map(|_| "true")] { (field.value) }
            } @else {
                input id=(id) name=(field.name) type=(field.kind) value=(field.value)
                    aria-invalid=[field.problem.as_ref().map(|_| "true")]
                    aria-describedby=[field.problem.as_ref().map(|_| problem_id.as_str())];
            }
            @if let Some(problem) = &field.problem {
                p.problem id=(problem_id) data-field=(field.name) role="alert" { (problem) }
            }
        }
    }
}

/// A decimal string as shown: negative amounts marked.
pub fn amount(text: &str) -> Markup {
    html! {
        @if text.starts_with('-') { span.neg { (text) } } @else { (text) }
    }
}

/// The text of a JSON value (strings without quotes, null as "").
pub fn text(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::Null => String::new(),
        serde_json::Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// A bar chart of `bars` (label, value) as inline SVG: drawn here, no script, with each bar's
/// figure as its title (a tooltip, and read by screen readers). Negative bars go down from the
/// zero line on the same scale, cut at the chart's edge.
pub fn bar_chart(caption: &str, bars: &[(String, Decimal)]) -> Markup {
    const WIDTH: usize = 640;
    const HEIGHT: usize = 200;
    let negative = bars.iter().any(|(_, value)| value.is_sign_negative() && !value.is_zero());
    let zero: usize = if negative { 120 } else { 170 };
    let top = bars.iter().map(|(_, value)| value.abs()).max().unwrap_or_default();
    let step = WIDTH / bars.len().max(1);
    let bar_width = step.saturating_sub(6).max(2);
    let scaled = |value: &Decimal| -> usize {
        let room = Decimal::from(zero - 10);
        let height = (value.abs() * room).checked_div(top).unwrap_or_default().trunc();
        rust_decimal::prelude::ToPrimitive::to_usize(&height).unwrap_or(0)
    };
    html! {
        figure {
            svg width=(WIDTH) height=(HEIGHT) viewBox=(format!("0 0 {WIDTH} {HEIGHT}")) role="img" aria-label=(caption) {
                line x1="0" y1=(zero) x2=(WIDTH) y2=(zero) stroke="#333" {}
                @for (i, (label, value)) in bars.iter().enumerate() {
                    @let x = i * step + 3;
                    @let height = scaled(value);
                    @let (y, height, fill) = if value.is_sign_negative() {
                        (zero, height.min(HEIGHT - 16 - zero), "#a00000")
                    } else {
                        (zero - height, height, "#1d3557")
                    };
                    rect x=(x) y=(y) width=(bar_width) height=(height) fill=(fill) { title { (label) ": " (value) } }
                    text x=(x) y=(HEIGHT - 3) font-size="10" fill="#111" { (label) }
                }
            }
            figcaption { (caption) }
        }
    }
}

/// A literal chunk of markup known to be safe (the upload script).
pub fn script(source: &'static str) -> Markup {
    html! { script { (PreEscaped(source)) } }
}
