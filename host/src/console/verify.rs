//! Verify, as a job the page follows: the form (on the periods page) starts one through
//! `POST .../verify-jobs`, from the first event or from where the last verify left off, and
//! the job's page shows how far it has gone, refreshing itself each second while it runs, then
//! its report.
//!
//! Why a job and not `POST .../verify`: a verify replays the whole ledger, minutes at millions
//! of events, longer than a browser or a proxy waits for a page. A second start while one runs
//! leads to the running one (the API's 409 `verify_running`), so a double click does no harm.

use axum::extract::Path;
use axum::http::{HeaderValue, Method, header};
use maud::{Markup, html};
use serde_json::{Value, json};

use super::layout::{self, text};
use super::session::{Posted, Session, Signed};
use super::{Page, enc, failed, see_other};

/// The form on the periods page: verify from the first event, or only what came since the last
/// verify that ended.
pub fn form(session: &Session) -> Markup {
    html! {
        h2 { "Verify" }
        p { "Replays the accepted events through the versions that evaluated them and reports any difference from \
            the ledger. From the first event checks everything; since the last verify replays only what came after \
            the last checkpoint that verify confirmed, and takes what came before as it found it." }
        form method="post" action="/console/verify" {
            (layout::csrf(session))
            button type="submit" name="start" value="ledger" { "Verify the ledger from the first event" }
            " "
            button type="submit" name="start" value="last_verified" { "Verify what came since the last verify" }
        }
    }
}

/// Starts the job and goes to its page (to the running one's, if one runs).
pub async fn start(Posted { signed, form }: Posted) -> Page {
    let start = if form.get("start") == "last_verified" { "last_verified" } else { "ledger" };
    let answer = signed.api(Method::POST, "/verify-jobs", Some(&json!({ "start": start }))).await;
    if answer.ok() {
        let job = text(&answer.json()["job"]);
        return Ok(see_other(&format!("/console/verify-jobs/{}", enc(&job))));
    }
    if answer.json()["error"] == "verify_running" {
        return Ok(see_other("/console/verify-jobs/latest"));
    }
    Err(failed(&answer, "Verify refused"))
}

/// The job: its progress while it runs (the page refreshes itself), its report once done.
pub async fn job(signed: Signed, Path(job): Path<String>) -> Page {
    let answer = signed.get(&format!("/verify-jobs/{}", enc(&job))).await;
    if !answer.ok() {
        return Err(failed(&answer, "No such verify job"));
    }
    let job = answer.json();
    let running = job["status"] == "running";
    let body = html! {
        @match job["status"].as_str() {
            Some("running") => {
                p.notice role="status" data-status="running" {
                    "Verifying: entries verified through " (text(&job["verified_through"])) " of " (text(&job["upto"]))
                    ", " (text(&job["events_replayed"])) " events replayed. This page refreshes itself."
                }
            }
            Some("done") => { (report(&job)) }
            _ => { p.warn role="status" data-status="failed" { "The verify could not go on: " (text(&job["error"])) } }
        }
        p { "Started " (text(&job["started_at"])) "; it verifies the ledger up to entry " (text(&job["upto"])) "." }
    };
    let mut page = layout::page(&signed.session, "Verify", body);
    if running {
        page.headers_mut().insert(header::REFRESH, HeaderValue::from_static("1"));
    }
    Ok(page)
}

/// A done job's report: the verdict, where it replayed from, and each difference.
fn report(job: &Value) -> Markup {
    let report = &job["report"];
    let differences = report["differences"].as_array().cloned().unwrap_or_default();
    let checkpoints = report["checkpoints_differing"].as_array().cloned().unwrap_or_default();
    let state_clean = report["state_keys_differing"].as_array().is_none_or(|keys| keys.is_empty());
    let clean = report["complete"] == true && differences.is_empty() && checkpoints.is_empty() && state_clean;
    let from = report["verified_from"].as_u64().unwrap_or(1);
    html! {
        @if clean {
            p.notice role="status" data-status="done" { "The ledger verifies: " (text(&report["events_replayed"])) " events replayed, "
                (text(&report["events_matching"])) " matching, no difference." }
        } @else {
            p.warn role="status" data-status="done" { "Differences found (complete: " (text(&report["complete"])) ")." }
        }
        @if from > 1 {
            p data-verified-from=(from) { "Replayed from entry " (from) ", where the last verify left off; what came \
                before is as that verify found it. Verify from the first event to check everything again." }
        }
        @if !differences.is_empty() {
            table {
                tr { th { "event" } th { "what differs" } }
                @for difference in &differences {
                    tr.diff {
                        td { a href=(format!("/console/events/{}", enc(&text(&difference["event_id"])))) { (text(&difference["event_id"])) } }
                        td { code { (difference.to_string()) } }
                    }
                }
            }
        }
        @if !checkpoints.is_empty() {
            h2 { "Checkpoints that differ" }
            ul { @for checkpoint in &checkpoints {
                li { "entry " (text(&checkpoint["seq"])) ": " (text(&checkpoint["problem"])) }
            } }
        }
    }
}
