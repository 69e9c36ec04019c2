//! Months: the list (`GET .../periods`), closing one behind a confirmation page, each closed
//! month's statement (as closed and restated, see [`super::statement`]) and its CSV; verify's
//! form ([`super::verify`]).
//!
//! The confirmation shows what the API can say before a close: the month's events and
//! commissions so far, and the affiliates `settle` will run for. What each settlement will pay
//! is known only once it runs (the API has no dry-run close); the close's answer shows it.

use axum::extract::{Path, RawQuery};
use axum::http::Method;
use axum::response::Response;
use maud::html;

use super::layout::{self, text};
use super::session::{Posted, Signed};
use super::{Answer, Page, enc, listing, statement};

pub async fn page(signed: Signed) -> Page {
    let (periods, _) = listing(&signed, "/periods", "periods").await?;
    let session = &signed.session;
    let body = html! {
        table {
            tr { th { "month" } th { "status" } th { "settled" } th.num { "events" } th.num { "commissions" } th.num { "totals" } th { "" } }
            @for period in periods.iter().rev() {
                @let id = text(&period["period"]);
                tr {
                    td { (id) }
                    td { (text(&period["status"])) }
                    td { (text(&period["settled_at"])) }
                    td.num { (text(&period["events"])) }
                    td.num { (text(&period["commissions"])) }
                    td.num { @for total in period["totals"].as_array().into_iter().flatten() {
                        (layout::amount(&text(&total["amount"]))) " " (text(&total["currency"])) br;
                    } }
                    td {
                        @if period["status"] == "closed" {
                            a href=(format!("/console/periods/{}/statement", enc(&id))) { "Statement " (id) }
                        } @else {
                            a href=(format!("/console/periods/{}/close", enc(&id))) { "Close " (id) "…" }
                        }
                    }
                }
            }
        }
        (super::verify::form(session))
    };
    Ok(layout::page(session, "Periods", body))
}

/// The confirmation before a close.
pub async fn confirm_close(signed: Signed, Path(period): Path<String>) -> Page {
    confirmation(&signed, &period, None).await
}

async fn confirmation(signed: &Signed, period: &str, refused: Option<&Answer>) -> Page {
    let (periods, _) = listing(signed, "/periods", "periods").await?;
    let (affiliates, more) = listing(signed, "/affiliates", "affiliates").await?;
    let month = periods.iter().find(|entry| entry["period"] == period);
    let body = html! {
        @if let Some(refused) = refused {
            p.problem role="alert" data-field="period" { (refused.problem("period").unwrap_or_else(|| refused.message())) }
        }
        @match month {
            Some(month) => {
                p { "So far " (period) " has " strong { (text(&month["events"])) " events" } " and "
                    strong { (text(&month["commissions"])) " commissions" } ":" }
                ul { @for total in month["totals"].as_array().into_iter().flatten() {
                    li { (layout::amount(&text(&total["amount"]))) " " (text(&total["currency"])) }
                } }
            }
            None => { p { (period) " has no events." } }
        }
        p { "Closing runs the plugin's " code { "settle" } " once for each of these "
            (affiliates.len()) @if more { "+" } " affiliates, and pays what it decides (RevShare on the month's NGR, \
            with any negative carryover). A close cannot be undone; late events afterwards restate it." }
        p { (affiliates.iter().map(|affiliate| text(&affiliate["id"])).collect::<Vec<_>>().join(", ")) }
        form method="post" action=(format!("/console/periods/{}/close", enc(period))) {
            (layout::csrf(&signed.session))
            button type="submit" { "Close " (period) " and settle it" }
            " " a href="/console/periods" { "Cancel" }
        }
    };
    let mut response = layout::page(&signed.session, &format!("Close {period}?"), body);
    if let Some(refused) = refused {
        *response.status_mut() = refused.status;
    }
    Ok(response)
}

pub async fn close(Path(period): Path<String>, Posted { signed, .. }: Posted) -> Page {
    let answer = signed.api(Method::POST, &format!("/periods/{}/close", enc(&period)), None).await;
    if !answer.ok() {
        return confirmation(&signed, &period, Some(&answer)).await;
    }
    let closed = answer.json();
    let body = html! {
        p.notice role="status" { (period) " is closed." }
        table {
            tr { th { "affiliate" } th { "status" } th { "paid" } th { "explanation" } }
            @for settlement in closed["settlements"].as_array().into_iter().flatten() {
                tr {
                    td { (text(&settlement["affiliate"])) }
                    td { (text(&settlement["status"])) }
                    td.num { @for commission in settlement["commissions"].as_array().into_iter().flatten() {
                        (layout::amount(&text(&commission["amount"]))) " " (text(&commission["currency"])) br;
                    } }
                    td { @for commission in settlement["commissions"].as_array().into_iter().flatten() {
                        (text(&commission["explanation"])) br;
                    } }
                }
            }
        }
        p { a href=(format!("/console/periods/{}/statement", enc(&period))) { "The statement of " (period) } }
    };
    Ok(layout::page(&signed.session, &format!("Closed {period}"), body))
}

fn affiliate_asked(raw: Option<String>) -> Option<String> {
    form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
        .find(|(key, _)| key == "affiliate")
        .map(|(_, value)| value.into_owned())
}

pub async fn statement(signed: Signed, Path(period): Path<String>, RawQuery(raw): RawQuery) -> Page {
    let lines_from = statement::lines_from(raw.as_deref());
    let affiliate = affiliate_asked(raw).or_else(|| signed.affiliate().map(str::to_owned));
    statement::page(&signed, &period, affiliate.as_deref(), lines_from).await
}

/// What the month paid, as the API's CSV, byte for byte.
pub async fn statement_csv(signed: Signed, Path(period): Path<String>, RawQuery(raw): RawQuery) -> Response {
    let mut rest = format!("/periods/{}/statement?format=csv", enc(&period));
    if let Some(affiliate) = affiliate_asked(raw).or_else(|| signed.affiliate().map(str::to_owned)) {
        rest.push_str(&format!("&affiliate={}", enc(&affiliate)));
    }
    signed.get(&rest).await.passed_on()
}
