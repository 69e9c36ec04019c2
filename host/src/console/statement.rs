//! A month's statement, line by line (`GET .../periods/{YYYY-MM}/statement`), shown the same
//! to an operator and to an affiliate (whose key the API limits to its own): what was carried
//! in, each event's line and contribution, the settlement, what was carried out; as closed and
//! as restated with late events in place, every figure that differs highlighted; then what was
//! paid at the close and in adjustments since, with the month each adjustment was dated in.

use maud::{Markup, html};
use serde_json::Value;

use super::layout::{self, text};
use super::session::Signed;
use super::{Page, enc, failed};

/// The page for `period`, limited to `affiliate` if given (the API refuses another's), its
/// statements' lines from `lines_from`, a page of the API's default size at a time.
pub async fn page(signed: &Signed, period: &str, affiliate: Option<&str>, lines_from: u64) -> Page {
    let query = affiliate.map(|affiliate| format!("?affiliate={}", enc(affiliate))).unwrap_or_default();
    let separator = if query.is_empty() { '?' } else { '&' };
    let answer =
        signed.get(&format!("/periods/{}/statement{query}{separator}lines_from={lines_from}", enc(period))).await;
    if !answer.ok() {
        return Err(failed(&answer, "Statement not shown"));
    }
    let statement = answer.json();
    let csv = format!("/console/periods/{}/statement.csv{query}", enc(period));
    let entries: Vec<&Value> = statement["affiliates"].as_array().into_iter().flatten().collect();
    let views = entries.iter().flat_map(|entry| [&entry["as_closed"], &entry["restated"]]);
    let (shown, count) = views.fold((0, 0), |(shown, count), view| {
        let lines = view["lines"].as_array().map_or(0, Vec::len) as u64;
        (shown.max(lines), count.max(view["line_count"].as_u64().unwrap_or(lines)))
    });
    // The same page of lines of every statement shown: links to the pages before and after.
    let at = |from: u64| format!("{query}{separator}lines_from={from}");
    let paging = html! {
        @if count > shown {
            p.paging {
                "Lines " (lines_from + 1) "–" (lines_from + shown) " of " (count) ". "
                @if lines_from > 0 { a href=(at(lines_from.saturating_sub(shown.max(1000)))) { "Earlier lines" } " " }
                @if lines_from + shown < count { a href=(at(lines_from + shown)) rel="next" { "Later lines" } }
            }
        }
    };
    let body = html! {
        p { a href=(csv) download { "Download what this month paid as CSV" } }
        (paging)
        @for entry in entries {
            (affiliate_statement(entry))
        }
        (paging)
    };
    Ok(layout::page(&signed.session, &format!("Statement {period}"), body))
}

/// `lines_from` of a console address's query: 0 if absent or not a number.
pub fn lines_from(raw: Option<&str>) -> u64 {
    form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
        .find(|(key, _)| key == "lines_from")
        .and_then(|(_, value)| value.parse().ok())
        .unwrap_or(0)
}

fn affiliate_statement(entry: &Value) -> Markup {
    let (closed, restated) = (&entry["as_closed"], &entry["restated"]);
    let differs = closed != restated && !restated.is_null();
    html! {
        section aria-label=(format!("affiliate {}", text(&entry["affiliate"]))) {
            h2 { "Affiliate " (text(&entry["affiliate"])) }
            p {
                @match entry["stored_at_close"].as_str() {
                    Some("stored") => { "As closed: the statement stored at the close." }
                    Some("matches") => { "As closed, recomputed from the ledger: equal to the statement stored at the close." }
                    Some("differs") => { strong { "As closed, recomputed from the ledger: it differs from the statement stored at the close." } }
                    _ => { "As closed, recomputed from the ledger: no statement was stored at the close." }
                }
            }
            @if differs {
                p.warn { "Late events changed this month: the restated statement differs; the differences are highlighted." }
            }
            div style="display:flex;gap:2rem;flex-wrap:wrap" {
                div { h3 { "As closed" } (view(closed, restated, "closed")) }
                @if !restated.is_null() { div { h3 { "Restated" } (view(restated, closed, "restated")) } }
            }
            h3 { "Paid" }
            table {
                tr { th { "commission" } th { "as" } th { "dated" } th { "rule" } th.num { "amount" } th { "explanation" } }
                @for (kind, lines) in [("at the close", &entry["paid"]["at_close"]), ("adjustment", &entry["paid"]["adjustments"])] {
                    @for line in lines.as_array().into_iter().flatten() {
                        tr.diff[kind == "adjustment"] {
                            td { code { (text(&line["id"])) } }
                            td { (kind) }
                            td { (text(&line["occurred_at"]).chars().take(7).collect::<String>()) }
                            td { (text(&line["rule"])) }
                            td.num data-paid=(kind) { (layout::amount(&text(&line["amount"]))) " " (text(&line["currency"])) }
                            td { (text(&line["explanation"])) }
                        }
                    }
                }
                @for total in entry["paid"]["total"].as_array().into_iter().flatten() {
                    tr { th colspan="4" { "total " (text(&total["rule"])) }
                         th.num data-total=(text(&total["rule"])) { (layout::amount(&text(&total["amount"]))) " " (text(&total["currency"])) }
                         th {} }
                }
            }
        }
    }
}

/// One view of the statement; each figure that is not the same in `other` is highlighted.
fn view(this: &Value, other: &Value, name: &str) -> Markup {
    let carried = |key: &str| this[key].as_object().cloned().unwrap_or_default();
    let other_lines: Vec<&Value> = other["lines"].as_array().into_iter().flatten().collect();
    let settlement = &this["settlement"];
    html! {
        table data-view=(name) {
            tr { th colspan="2" { "Carried in" } }
            @for (key, value) in carried("carried_in") {
                tr { td { code { (key) } } td.num.diff[other["carried_in"][&key] != value] data-carried-in=(key) { (layout::amount(&text(&value))) } }
            }
        }
        table data-view=(name) {
            tr { th { "event" } th { "type" } th { "occurred" } th.num { "amount" } th.num { "contribution" } th { "late" } }
            @for line in this["lines"].as_array().into_iter().flatten() {
                tr.diff[!other_lines.contains(&line)] {
                    td { a href=(format!("/console/events/{}", enc(&text(&line["event_id"])))) { (text(&line["event_id"])) } }
                    td { (text(&line["kind"])) }
                    td { (text(&line["occurred_at"])) }
                    td.num { (layout::amount(&text(&line["amount"]))) }
                    td.num data-contribution=(text(&line["event_id"])) { (layout::amount(&text(&line["contribution"]))) }
                    td { @if line["late"] == true { "late" } }
                }
            }
        }
        table data-view=(name) {
            tr { th colspan="3" { "Settlement" } }
            @if settlement.is_null() { tr { td colspan="3" { "none" } } }
            @if let Some(failure) = settlement["failure"].as_str() { tr.diff { td colspan="3" { "failed: " (failure) } } }
            @for payout in settlement["commissions"].as_array().into_iter().flatten() {
                tr.diff[other["settlement"] != *settlement] {
                    td { (text(&payout["rule"])) }
                    td.num data-settled=(name) { (layout::amount(&text(&payout["amount"]))) " " (text(&payout["currency"])) }
                    td { (text(&payout["explanation"])) }
                }
            }
            @if settlement["commissions"].as_array().is_some_and(|payouts| payouts.is_empty()) {
                tr { td colspan="3" { "nothing paid" } }
            }
        }
        table data-view=(name) {
            tr { th colspan="2" { "Carried out" } }
            @for (key, value) in carried("carried_out") {
                tr { td { code { (key) } } td.num.diff[other["carried_out"][&key] != value] data-carried-out=(key) { (layout::amount(&text(&value))) } }
            }
        }
    }
}
