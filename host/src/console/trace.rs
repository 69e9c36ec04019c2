//! One event's trace (`GET .../events/{id}`): what came in, who it was attributed to and
//! through which referral chain and deals, the plugin version and why it was chosen, fuel, the
//! plugin's log lines, and each commission with its explanation, the one it reverses and the
//! month it restates.

use axum::extract::Path;
use maud::html;

use super::layout::{self, text};
use super::session::Signed;
use super::{Page, enc, failed};

pub async fn page(signed: Signed, Path(id): Path<String>) -> Page {
    let answer = signed.get(&format!("/events/{}", enc(&id))).await;
    if !answer.ok() {
        return Err(failed(&answer, "Event not shown"));
    }
    let event = answer.json();
    let empty = Vec::new();
    let body = html! {
        table {
            @for (label, key) in [("type", "type"), ("customer", "customer"), ("occurred", "occurred_at"),
                ("received", "received_at"), ("amount", "amount"), ("currency", "currency"), ("status", "status"),
                ("attempts", "attempts"), ("affiliate given", "affiliate"), ("attributed to", "attributed_to"),
                ("plugin version", "plugin_version"), ("why that version", "version_reason"), ("fuel used", "fuel_used")] {
                tr { th scope="row" { (label) } td { (text(&event[key])) } }
            }
            @if !event["failure"].is_null() {
                tr.diff { th scope="row" { "failure" } td { (text(&event["failure"]["kind"])) ": " (text(&event["failure"]["message"])) } }
            }
            @if !event["fx"].is_null() {
                tr { th scope="row" { "FX" } td { code { (event["fx"].to_string()) } } }
            }
        }
        h2 { "Attributes" }
        @if event["attributes"].as_object().is_none_or(|attributes| attributes.is_empty()) { p { "None." } }
        @else {
            table { @for (key, value) in event["attributes"].as_object().into_iter().flatten() {
                tr { th scope="row" { (key) } td { (text(value)) } }
            } }
        }
        h2 { "Referral chain and deals" }
        table {
            tr { th { "level" } th { "affiliate" } th { "deal" } }
            @for (level, link) in event["referral_chain"].as_array().unwrap_or(&empty).iter().enumerate() {
                tr {
                    td.num { (level) }
                    td { (text(&link["affiliate"])) }
                    td { @for (key, value) in link["deal"].as_object().into_iter().flatten() {
                        code { (key) "=" (text(value)) } " "
                    } }
                }
            }
        }
        h2 { "Commissions" }
        table {
            tr { th { "id" } th { "affiliate" } th { "rule" } th.num { "amount" } th { "explanation" } th { "reverses" } th { "restates" } }
            @for commission in event["commissions"].as_array().unwrap_or(&empty) {
                tr {
                    td { code { (text(&commission["id"])) } }
                    td { (text(&commission["affiliate"])) }
                    td { (text(&commission["rule"])) }
                    td.num { (layout::amount(&text(&commission["amount"]))) " " (text(&commission["currency"])) }
                    td { (text(&commission["explanation"])) }
                    td { (text(&commission["reverses"])) }
                    td { @if !commission["restates"].is_null() {
                        a href=(format!("/console/periods/{}/statement", enc(&text(&commission["restates"]["period"])))) {
                            (text(&commission["restates"]["period"]))
                        }
                    } }
                }
            }
        }
        h2 { "Plugin log" }
        @if event["logs"].as_array().is_none_or(|logs| logs.is_empty()) { p { "No log lines." } }
        @else {
            table { @for line in event["logs"].as_array().unwrap_or(&empty) {
                tr { td { (text(&line["level"])) } td { code { (text(&line["message"])) } } }
            } }
        }
    };
    Ok(layout::page(&signed.session, &format!("Event {id}"), body))
}
