//! An affiliate's portal, read-only, with what its key opens: its commissions (earnings by
//! month as a chart, balance cards by status, each line with its status, hold date and
//! explanation, a reversal beside what it reverses), its months' statements line by line, the
//! payout report of each month it was paid in, and the commissions as CSV.
//!
//! The months listed are those its commissions are dated in or restate (an affiliate's key
//! does not open the operator's list of periods); any other closed month opens by its number.

use std::collections::BTreeMap;

use axum::extract::{Path, RawQuery};
use axum::response::Response;
use maud::html;
use rust_decimal::Decimal;
use serde_json::Value;

use super::layout::{self, Field, bar_chart, text};
use super::session::Signed;
use super::{MAX_ROWS, Page, enc, failed, listing, statement};

fn add(total: &mut Decimal, amount: &Value) {
    let amount: Decimal = text(amount).parse().unwrap_or_default();
    *total = total.checked_add(amount).unwrap_or(*total);
}

pub async fn page(signed: Signed) -> Page {
    let Some(affiliate) = signed.affiliate().map(str::to_owned) else {
        return Ok(super::see_other("/console/overview"));
    };
    let (lines, more) = listing(&signed, &format!("/commissions?affiliate={}", enc(&affiliate)), "commissions").await?;
    let mut by_month: BTreeMap<String, Decimal> = BTreeMap::new();
    let mut by_status: BTreeMap<String, Decimal> = BTreeMap::new();
    let mut months = std::collections::BTreeSet::new();
    for line in &lines {
        let month: String = text(&line["occurred_at"]).chars().take(7).collect();
        add(by_month.entry(month.clone()).or_default(), &line["amount"]);
        add(by_status.entry(text(&line["status"])).or_default(), &line["amount"]);
        if let Some(period) = text(&line["event_id"]).strip_prefix("commission-host.period:") {
            months.insert(period.chars().take(7).collect::<String>());
        }
        if let Some(period) = line["restates"]["period"].as_str() {
            months.insert(period.to_owned());
        }
    }
    // The carryover: what the latest listed month's restated statement carried out, if negative.
    let mut carried = Vec::new();
    if let Some(latest) = months.iter().next_back() {
        let answer = signed.get(&format!("/periods/{}/statement?affiliate={}", enc(latest), enc(&affiliate))).await;
        for entry in answer.json()["affiliates"].as_array().into_iter().flatten() {
            let view = if entry["restated"].is_null() { &entry["as_closed"] } else { &entry["restated"] };
            for (key, value) in view["carried_out"].as_object().into_iter().flatten() {
                if text(value).starts_with('-') {
                    carried.push((key.clone(), text(value)));
                }
            }
        }
    }
    let mut payouts = Vec::new();
    for month in months.iter().rev().take(12) {
        let answer = signed.get(&format!("/payouts/report?period={}&affiliate={}", enc(month), enc(&affiliate))).await;
        if !answer.ok() {
            return Err(failed(&answer, "Payout report not shown"));
        }
        for balance in answer.json()["balances"].as_array().into_iter().flatten() {
            payouts.push((month.clone(), balance.clone()));
        }
    }
    // Reversals right after what they reverse.
    let reversal_of = |line: &Value| line["reverses"].as_str().map(str::to_owned);
    let mut ordered: Vec<&Value> = lines.iter().filter(|line| reversal_of(line).is_none()).collect();
    for reversal in lines.iter().filter(|line| reversal_of(line).is_some()) {
        let at = ordered.iter().position(|line| Some(text(&line["id"])) == reversal_of(reversal));
        match at {
            Some(at) => ordered.insert(at + 1, reversal),
            None => ordered.push(reversal),
        }
    }
    let bars: Vec<(String, Decimal)> = by_month.into_iter().collect();
    let card = |status: &str| by_status.get(status).copied().unwrap_or_default().to_string();
    let body = html! {
        @if more { p.warn { "Only your first " (MAX_ROWS) " commissions are counted here." } }
        div.cards {
            @for (status, label) in [("pending", "Pending"), ("approved", "Approved"), ("paid", "Paid")] {
                div.card data-balance=(status) { (label) strong { (layout::amount(&card(status))) } }
            }
            div.card data-balance="carried" { "Carried negative"
                strong { @if carried.is_empty() { "0" } @for (_, value) in &carried { (layout::amount(value)) } }
            }
        }
        h2 { "Earnings by month" }
        (bar_chart("Commissions by the month they are dated in", &bars))
        h2 { "Statements" }
        ul { @for month in months.iter().rev() {
            li { a href=(format!("/console/portal/statements/{}", enc(month))) { "Statement " (month) } }
        } }
        form method="get" action="/console/portal/statements" {
            (layout::field(&Field::text("period", "Another closed month (YYYY-MM)", "").kind("month")))
            button type="submit" { "Open its statement" }
        }
        h2 { "Commissions" }
        p { a href="/console/portal/commissions.csv" download { "Download your commissions as CSV" } }
        table {
            tr { th { "id" } th { "dated" } th { "rule" } th.num { "amount" } th { "status" } th { "hold until" } th { "explanation" } }
            @for line in &ordered {
                tr {
                    td { code { (text(&line["id"])) } @if let Some(of) = reversal_of(line) { br; "reverses " code { (of) } } }
                    td { (text(&line["occurred_at"])) }
                    td { (text(&line["rule"])) }
                    td.num { (layout::amount(&text(&line["amount"]))) " " (text(&line["currency"])) }
                    td { (text(&line["status"])) }
                    td { (text(&line["hold_until"])) }
                    td { (text(&line["explanation"])) }
                }
            }
        }
        h2 { "Payouts" }
        table {
            tr { th { "month" } th { "currency" } th.num { "carried in" } th.num { "approved" } th.num { "payable" }
                 th.num { "carried forward" } th.num { "pending" } th.num { "paid" } }
            @for (month, balance) in &payouts {
                tr {
                    td { (month) } td { (text(&balance["currency"])) }
                    @for key in ["carried_in", "approved", "payable", "carried_forward", "pending", "paid"] {
                        td.num { (layout::amount(&text(&balance[key]))) }
                    }
                }
            }
        }
    };
    Ok(layout::page(&signed.session, "Your earnings", body))
}

/// One month's statement (`?affiliate=` is passed on: the API refuses another affiliate's).
pub async fn statement(signed: Signed, Path(period): Path<String>, RawQuery(raw): RawQuery) -> Page {
    let lines_from = statement::lines_from(raw.as_deref());
    let asked = form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
        .find(|(key, _)| key == "affiliate")
        .map(|(_, value)| value.into_owned());
    let affiliate = asked.or_else(|| signed.affiliate().map(str::to_owned));
    statement::page(&signed, &period, affiliate.as_deref(), lines_from).await
}

/// `?period=` from the month picker, as the statement's own address.
pub async fn pick(RawQuery(raw): RawQuery) -> Response {
    let period = form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
        .find(|(key, _)| key == "period")
        .map(|(_, value)| value.into_owned())
        .unwrap_or_default();
    super::see_other(&format!("/console/portal/statements/{}", enc(&period)))
}

/// The affiliate's commissions as the API's CSV, byte for byte.
pub async fn csv(signed: Signed) -> Response {
    let affiliate = signed.affiliate().unwrap_or_default().to_owned();
    signed.get(&format!("/commissions?format=csv&affiliate={}", enc(&affiliate))).await.passed_on()
}
