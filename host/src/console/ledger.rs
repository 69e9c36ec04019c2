//! The ledger: commissions with filters (affiliate, customer, status, from, to), their hold
//! dates and statuses; bulk approve (each line through `POST .../commissions/{id}/status`);
//! a payout run (`POST .../payouts`); and the filtered ledger as the API's CSV, passed on byte
//! for byte.

use axum::extract::RawQuery;
use axum::http::{Method, StatusCode};
use axum::response::Response;
use maud::{Markup, html};
use serde_json::json;

use super::layout::{self, Field, text};
use super::session::{Posted, Signed};
use super::{Answer, Page, enc, failed};

/// The filters the page takes, passed to the API as they are.
const FILTERS: [(&str, &str); 5] = [
    ("affiliate", "Affiliate"),
    ("customer", "Customer"),
    ("status", "Status (pending, approved, paid, rejected, reversed)"),
    ("from", "Occurred from (RFC 3339)"),
    ("to", "Occurred before (RFC 3339)"),
];

/// The filter query of the page (only the known filters, non-empty, re-encoded).
fn filter_query(raw: Option<&str>) -> Vec<(String, String)> {
    form_urlencoded::parse(raw.unwrap_or("").as_bytes())
        .into_owned()
        .filter(|(key, value)| !value.is_empty() && (FILTERS.iter().any(|(name, _)| name == key) || key == "cursor"))
        .collect()
}

fn encode(pairs: &[(String, String)]) -> String {
    pairs.iter().map(|(key, value)| format!("{}={}", enc(key), enc(value))).collect::<Vec<_>>().join("&")
}

pub async fn page(signed: Signed, RawQuery(raw): RawQuery) -> Page {
    render(&signed, &filter_query(raw.as_deref()), None, None).await
}

async fn render(
    signed: &Signed,
    filters: &[(String, String)],
    notice: Option<Markup>,
    payout: Option<&Answer>,
) -> Page {
    let query = encode(filters);
    let answer = signed.get(&format!("/commissions?limit=200&{query}")).await;
    let value = |name: &str| filters.iter().find(|(key, _)| key == name).map_or("", |(_, value)| value.as_str());
    if !answer.ok() && answer.status != StatusCode::UNPROCESSABLE_ENTITY {
        return Err(failed(&answer, "Ledger not shown"));
    }
    let listing = answer.json();
    let empty = Vec::new();
    let lines = listing["commissions"].as_array().unwrap_or(&empty);
    let session = &signed.session;
    let csv_query = encode(&filters.iter().filter(|(key, _)| key != "cursor").cloned().collect::<Vec<_>>());
    let body = html! {
        @if let Some(notice) = notice { (notice) }
        h2 { "Filter" }
        form method="get" action="/console/ledger" {
            @for (name, label) in FILTERS {
                (layout::field(&Field::text(name, label, value(name)).problem(answer.problem(name))))
            }
            button type="submit" { "Filter" }
        }
        @if answer.ok() {
            p { a href=(format!("/console/ledger.csv?{csv_query}")) download { "Download these commissions as CSV" } }
            form method="post" action="/console/ledger/approve" {
                (layout::csrf(session))
                input type="hidden" name="back" value=(query);
                table {
                    tr {
                        th { "approve" } th { "id" } th { "occurred" } th { "affiliate" } th { "customer" } th { "rule" }
                        th.num { "amount" } th { "status" } th { "hold until" } th { "explanation" } th { "event" }
                    }
                    @for line in lines {
                        @let id = text(&line["id"]);
                        tr {
                            td { @if line["status"] == "pending" {
                                input type="checkbox" name="id" value=(id) id=(format!("approve-{id}"));
                                label for=(format!("approve-{id}")) { span style="position:absolute;left:-9999px" { "approve " (id) } }
                            } }
                            td { code { (id) } }
                            td { (text(&line["occurred_at"])) }
                            td { (text(&line["affiliate"])) }
                            td { (text(&line["customer"])) }
                            td { (text(&line["rule"])) }
                            td.num { (layout::amount(&text(&line["amount"]))) " " (text(&line["currency"])) }
                            td { (text(&line["status"])) }
                            td { (text(&line["hold_until"])) }
                            td { (text(&line["explanation"])) }
                            td { a href=(format!("/console/events/{}", enc(&text(&line["event_id"])))) { (text(&line["event_id"])) } }
                        }
                    }
                }
                button type="submit" { "Approve the ticked commissions" }
            }
            @if let Some(next) = listing["next"].as_str() {
                @let more: Vec<_> = filters.iter().filter(|(key, _)| key != "cursor").cloned()
                    .chain([("cursor".to_owned(), next.to_owned())]).collect();
                p { a href=(format!("/console/ledger?{}", encode(&more))) { "Next page" } }
            }
        }
        h2 { "Payout run" }
        p { "Marks paid what the payout report says is payable for the month (or the affiliate's share of it). \
             One payment per reference: sending it again pays nothing twice." }
        form method="post" action="/console/ledger/payout" {
            (layout::csrf(session))
            @if let Some(refused) = payout.filter(|answer| !answer.ok() && answer.problem("reference").is_none()
                && answer.problem("period").is_none() && answer.problem("affiliate").is_none()) {
                p.problem role="alert" { (refused.message()) }
            }
            (layout::field(&Field::text("reference", "Payment reference", "").problem(payout.and_then(|a| a.problem("reference")))))
            (layout::field(&Field::text("period", "Month (YYYY-MM)", "").problem(payout.and_then(|a| a.problem("period")))))
            (layout::field(&Field::text("affiliate", "Affiliate (empty: all)", "").problem(payout.and_then(|a| a.problem("affiliate")))))
            button type="submit" { "Pay" }
        }
    };
    let mut response = layout::page(session, "Ledger", body);
    if !answer.ok() {
        *response.status_mut() = answer.status;
    } else if let Some(payout) = payout.filter(|answer| !answer.ok()) {
        *response.status_mut() = payout.status;
    }
    Ok(response)
}

/// The filtered ledger as the API's CSV, byte for byte.
pub async fn csv(signed: Signed, RawQuery(raw): RawQuery) -> Response {
    let query = encode(&filter_query(raw.as_deref()));
    signed.get(&format!("/commissions?format=csv&{query}")).await.passed_on()
}

/// Approves each ticked commission; shows what was approved and what the API refused.
pub async fn approve(Posted { signed, form }: Posted) -> Page {
    let mut approved = Vec::new();
    let mut refused = Vec::new();
    for id in form.all("id") {
        let body = json!({"status": "approved", "note": "approved in the console"});
        let answer = signed.api(Method::POST, &format!("/commissions/{}/status", enc(id)), Some(&body)).await;
        if answer.ok() { approved.push(id.to_owned()) } else { refused.push((id.to_owned(), answer.message())) }
    }
    let notice = html! {
        div.notice role="status" {
            p { "Approved " (approved.len()) " commission(s)." }
            @if !refused.is_empty() {
                ul { @for (id, message) in &refused { li.problem { code { (id) } ": " (message) } } }
            }
        }
    };
    render(&signed, &filter_query(Some(form.get("back"))), Some(notice), None).await
}

/// Runs a payout for a month (or named commissions' affiliate); the API's problems are shown
/// next to the fields.
pub async fn payout(Posted { signed, form }: Posted) -> Page {
    let mut body = json!({"reference": form.get("reference"), "period": form.get("period")});
    if !form.get("affiliate").is_empty() {
        body["affiliate"] = json!(form.get("affiliate"));
    }
    let answer = signed.api(Method::POST, "/payouts", Some(&body)).await;
    if !answer.ok() {
        return render(&signed, &[], None, Some(&answer)).await;
    }
    let paid = answer.json();
    let notice = html! {
        div.notice role="status" {
            p { "Payout " code { (form.get("reference")) } " made" @if paid["duplicate"] == true { " before (nothing paid twice)" } "." }
            pre { (serde_json::to_string_pretty(&paid).unwrap_or_default()) }
        }
    };
    render(&signed, &[], Some(notice), None).await
}
