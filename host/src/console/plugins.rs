//! Plugin versions: the list, upload, activate (now, or effective-dated with its scope), start
//! and stop the shadow, the shadow report, and a backtest over a date range as differences per
//! affiliate and per event, each event linked to its trace.
//!
//! The upload is the one place with JavaScript: the API takes the component as the body
//! (`Content-Type: application/wasm`), which a plain form cannot send; the script sends the
//! chosen file so, with the session's CSRF token in a header, and shows the API's answer.

use axum::body::Body;
use axum::extract::{Path, RawQuery};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};
use serde_json::{Value, json};

use super::layout::{self, Field, text};
use super::session::{Posted, Signed, csrf_matches};
use super::{Answer, Page, enc, failed, listing, see_other};

const UPLOAD_SCRIPT: &str = r#"
document.getElementById('upload').addEventListener('submit', async (event) => {
  event.preventDefault();
  const form = event.target, status = document.getElementById('f-component-problem');
  const file = document.getElementById('f-component').files[0];
  if (!file) { status.textContent = 'component: choose a .wasm file'; return; }
  status.textContent = 'Uploading…';
  const response = await fetch('/console/plugins', {method: 'POST', body: file,
    headers: {'Content-Type': 'application/wasm', 'X-CSRF-Token': form.csrf.value}});
  const answer = await response.json().catch(() => ({message: response.statusText}));
  if (response.ok) { location.href = '/console/plugins?uploaded=' + answer.version; }
  else { status.textContent = answer.message; }
});
"#;

/// The largest upload the console reads (the API refuses beyond its own, smaller, limit).
const MAX_UPLOAD_BYTES: usize = 256 << 20;

pub async fn page(signed: Signed, RawQuery(raw): RawQuery) -> Page {
    let uploaded = form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
        .find(|(key, _)| key == "uploaded")
        .map(|(_, value)| value.into_owned());
    render(&signed, uploaded, None).await
}

async fn render(signed: &Signed, uploaded: Option<String>, refused: Option<(&str, &Answer)>) -> Page {
    let (plugins, _) = listing(signed, "/plugins", "plugins").await?;
    let session = &signed.session;
    let problem = |version: &str, field: &str| {
        refused.filter(|(which, _)| *which == version).and_then(|(_, answer)| answer.problem(field))
    };
    let body = html! {
        @if let Some(version) = uploaded { p.notice role="status" { "Version " (version) " uploaded." } }
        @if let Some((version, answer)) = refused {
            p.problem role="alert" { "Version " (version) ": " (answer.message()) }
        }
        h2 { "Upload a version" }
        form id="upload" method="post" action="/console/plugins" {
            (layout::csrf(session))
            div.field {
                label for="f-component" { "Component (.wasm)" }
                input id="f-component" name="component" type="file" accept=".wasm,application/wasm";
                p.problem id="f-component-problem" role="alert" {}
            }
            button type="submit" { "Upload" }
        }
        (layout::script(UPLOAD_SCRIPT))
        h2 { "Versions" }
        @for plugin in plugins.iter().rev() {
            @let version = text(&plugin["version"]);
            section aria-label=(format!("version {version}")) {
                h3 { "Version " (version)
                    @if plugin["active"] == true { " (active)" }
                    @if plugin["shadow"] == true { " (shadow)" } }
                p { "sha256 " code { (text(&plugin["sha256"])) } ", contract " (text(&plugin["contract"]))
                    ", " (text(&plugin["size"])) " bytes, uploaded " (text(&plugin["uploaded_at"])) }
                @for activation in plugin["activations"].as_array().into_iter().flatten() {
                    p { "Dated activation: " code { (activation.to_string()) } }
                }
                form method="post" action=(format!("/console/plugins/{version}/activate")) {
                    (layout::csrf(session))
                    (layout::field(&Field::text("effective_from", "Effective from (RFC 3339; empty: now)", "").within(&format!("v{version}-")).problem(problem(&version, "effective_from"))))
                    div.field {
                        label for=(format!("scope-{version}")) { "Scope" }
                        select id=(format!("scope-{version}")) name="scope" {
                            option value="events" { "events that occur from then" }
                            option value="new_customers" { "only customers who start from then" }
                        }
                    }
                    (layout::field(&Field::text("affiliate", "Only for affiliate (optional)", "").within(&format!("v{version}-")).problem(problem(&version, "affiliate"))))
                    button type="submit" { "Activate version " (version) }
                }
                form method="post" action=(format!("/console/plugins/{version}/shadow")) {
                    (layout::csrf(session))
                    @if plugin["shadow"] == true {
                        input type="hidden" name="action" value="stop";
                        button type="submit" { "Stop the shadow" }
                        " " a href=(format!("/console/plugins/{version}/shadow")) { "Shadow report" }
                    } @else {
                        input type="hidden" name="action" value="start";
                        button type="submit" { "Run version " (version) " in shadow" }
                    }
                }
                (backtest_form(session, &version, "", "", None))
            }
        }
    };
    let mut response = layout::page(session, "Plugins", body);
    if let Some((_, answer)) = refused {
        *response.status_mut() = answer.status;
    }
    Ok(response)
}

fn backtest_form(
    session: &super::session::Session,
    version: &str,
    from: &str,
    to: &str,
    refused: Option<&Answer>,
) -> Markup {
    html! {
        form method="post" action=(format!("/console/plugins/{version}/backtest")) {
            (layout::csrf(session))
            @let prefix = format!("v{version}-");
            (layout::field(&Field::text("from", "Backtest from (RFC 3339)", from).within(&prefix).problem(refused.and_then(|a| a.problem("from")))))
            (layout::field(&Field::text("to", "to (RFC 3339, exclusive)", to).within(&prefix).problem(refused.and_then(|a| a.problem("to")))))
            button type="submit" { "Backtest version " (version) }
        }
    }
}

/// Uploads the body as a version: the API's answer, as JSON, for the script.
pub async fn upload(signed: Signed, headers: HeaderMap, body: Body) -> Response {
    let token = headers.get("x-csrf-token").and_then(|value| value.to_str().ok()).unwrap_or("");
    if !csrf_matches(&signed.session, token) {
        let refused = json!({"error": "forbidden", "message": "the CSRF token is missing or wrong: reload the page"});
        return (StatusCode::FORBIDDEN, axum::Json(refused)).into_response();
    }
    let Ok(bytes) = axum::body::to_bytes(body, MAX_UPLOAD_BYTES).await else {
        let refused = json!({"error": "body_too_large", "message": "the component is too large"});
        return (StatusCode::PAYLOAD_TOO_LARGE, axum::Json(refused)).into_response();
    };
    let answer = signed.api_body(Method::POST, "/plugins", Some(("application/wasm", bytes))).await;
    (answer.status, [(axum::http::header::CONTENT_TYPE, "application/json")], answer.body).into_response()
}

pub async fn activate(Path(version): Path<String>, Posted { signed, form }: Posted) -> Page {
    let body = (!form.get("effective_from").is_empty()).then(|| {
        let mut body = json!({"effective_from": form.get("effective_from"), "scope": form.get("scope")});
        if !form.get("affiliate").is_empty() {
            body["affiliate"] = json!(form.get("affiliate"));
        }
        body
    });
    let answer = signed.api(Method::POST, &format!("/plugins/{}/activate", enc(&version)), body.as_ref()).await;
    if answer.ok() { Ok(see_other("/console/plugins")) } else { render(&signed, None, Some((&version, &answer))).await }
}

pub async fn set_shadow(Path(version): Path<String>, Posted { signed, form }: Posted) -> Page {
    let shadow = if form.get("action") == "stop" { Value::Null } else { json!(version.parse::<u64>().unwrap_or(0)) };
    let answer = signed.api(Method::PUT, "/shadow", Some(&json!({ "version": shadow }))).await;
    if answer.ok() { Ok(see_other("/console/plugins")) } else { render(&signed, None, Some((&version, &answer))).await }
}

pub async fn shadow_report(signed: Signed, Path(version): Path<String>) -> Page {
    let answer = signed.get(&format!("/plugins/{}/shadow-report", enc(&version))).await;
    if !answer.ok() {
        return Err(failed(&answer, "Shadow report not shown"));
    }
    let body = differences(&answer.json());
    Ok(layout::page(&signed.session, &format!("Shadow report of version {version}"), body))
}

pub async fn backtest(Path(version): Path<String>, Posted { signed, form }: Posted) -> Page {
    let (from, to) = (form.get("from"), form.get("to"));
    let answer = signed
        .api(Method::POST, &format!("/plugins/{}/replay", enc(&version)), Some(&json!({"from": from, "to": to})))
        .await;
    let refused = (!answer.ok()).then_some(&answer);
    let body = html! {
        (backtest_form(&signed.session, &version, from, to, refused))
        @if let Some(refused) = refused.filter(|a| a.problem("from").is_none() && a.problem("to").is_none()) {
            p.problem role="alert" { (refused.message()) }
        }
        @if answer.ok() { (differences(&answer.json())) }
    };
    let mut response = layout::page(&signed.session, &format!("Backtest of version {version}"), body);
    *response.status_mut() = if answer.ok() { StatusCode::OK } else { answer.status };
    Ok(response)
}

/// A backtest's or shadow report's differences: per affiliate, then per event.
fn differences(report: &Value) -> Markup {
    let payouts = |list: &Value| -> Markup {
        html! { @for payout in list.as_array().into_iter().flatten() {
            (text(&payout["affiliate"])) " " (layout::amount(&text(&payout["amount"]))) " " (text(&payout["rule"])) br;
        } }
    };
    html! {
        p { (text(&report["events_compared"])) " events compared, " (text(&report["events_changed"])) " changed." }
        h2 { "Per affiliate" }
        table id="per-affiliate" {
            tr { th { "affiliate" } th { "currency" } th.num { "paid" } th.num { "would pay" } th.num { "difference" } }
            @for row in report["affiliates"].as_array().into_iter().flatten() {
                @let difference = text(&row["difference"]);
                tr.diff[difference.parse::<rust_decimal::Decimal>().is_ok_and(|d| !d.is_zero())] data-affiliate=(text(&row["affiliate"])) {
                    td { (text(&row["affiliate"])) }
                    td { (text(&row["currency"])) }
                    td.num { (layout::amount(&text(&row["paid"]))) }
                    td.num { (layout::amount(&text(&row["would_pay"]))) }
                    td.num.difference { (layout::amount(&difference)) }
                }
            }
        }
        h2 { "Per event" }
        table id="per-event" {
            tr { th { "event" } th { "occurred" } th { "paid" } th { "would pay" } th { "replay failure" } }
            @for change in report["changes"].as_array().into_iter().flatten() {
                tr {
                    td { a href=(format!("/console/events/{}", enc(&text(&change["event_id"])))) { (text(&change["event_id"])) } }
                    td { (text(&change["occurred_at"])) }
                    td { (payouts(&change["paid"])) }
                    td { (payouts(&change["replayed"])) }
                    td { @if !change["replay_failure"].is_null() {
                        (text(&change["replay_failure"]["kind"])) ": " (text(&change["replay_failure"]["message"]))
                    } }
                }
            }
        }
    }
}
