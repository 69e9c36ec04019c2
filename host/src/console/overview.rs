//! An operator's overview: events and commissions per day (charts), the failures by kind, the
//! active and shadow plugin versions, and whether the ledger takes writes (`/readyz`). The
//! queue and flush figures of `/metrics` are the platform admin's (the operator's key does not
//! open them), so they are not shown here.

use std::collections::BTreeMap;

use axum::http::Method;
use maud::html;
use rust_decimal::Decimal;
use serde_json::Value;

use super::layout::{self, bar_chart, text};
use super::session::Signed;
use super::{Call, MAX_ROWS, Page, listing};

/// The days shown in the charts (the latest with events).
const DAYS: usize = 20;

pub async fn page(signed: Signed) -> Page {
    let (events, more_events) = listing(&signed, "/events", "events").await?;
    let (commissions, more_commissions) = listing(&signed, "/commissions", "commissions").await?;
    let (plugins, _) = listing(&signed, "/plugins", "plugins").await?;
    let ready = signed
        .console
        .call(Call { method: Method::GET, path: "/readyz".into(), key: "", peer: signed.peer, body: None })
        .await;

    let mut per_day: BTreeMap<String, (Decimal, Decimal)> = BTreeMap::new();
    let mut failures: BTreeMap<String, u64> = BTreeMap::new();
    for event in &events {
        let day = text(&event["occurred_at"]).chars().take(10).collect::<String>();
        per_day.entry(day).or_default().0 += Decimal::ONE;
        if event["status"] == "failed" {
            *failures.entry(text(&event["failure"]["kind"])).or_default() += 1;
        }
    }
    for commission in &commissions {
        let day = text(&commission["occurred_at"]).chars().take(10).collect::<String>();
        let amount: Decimal = text(&commission["amount"]).parse().unwrap_or_default();
        let entry = per_day.entry(day).or_default();
        entry.1 = entry.1.checked_add(amount).unwrap_or(entry.1);
    }
    let days: Vec<_> = per_day.into_iter().rev().take(DAYS).collect::<Vec<_>>().into_iter().rev().collect();
    let event_bars: Vec<(String, Decimal)> =
        days.iter().map(|(day, (events, _))| (day.get(5..).unwrap_or(day).to_owned(), *events)).collect();
    let paid_bars: Vec<(String, Decimal)> =
        days.iter().map(|(day, (_, paid))| (day.get(5..).unwrap_or(day).to_owned(), *paid)).collect();
    let failed: Vec<&Value> = events.iter().filter(|event| event["status"] == "failed").collect();
    let active = plugins.iter().find(|plugin| plugin["active"] == true);
    let shadow = plugins.iter().find(|plugin| plugin["shadow"] == true);

    let body = html! {
        @if more_events || more_commissions {
            p.warn { "Only the first " (MAX_ROWS) " events and commissions are counted here." }
        }
        div.cards {
            div.card { "Events" strong { (events.len()) } }
            div.card { "Commissions" strong { (commissions.len()) } }
            div.card { "Failed events" strong { (failed.len()) } }
            div.card { "Active version" strong { (active.map_or("none".into(), |p| text(&p["version"]))) } }
            div.card { "Shadow version" strong { (shadow.map_or("none".into(), |p| text(&p["version"]))) } }
            div.card { "Ledger" strong { @if ready.ok() { "ready" } @else { "flushes failing" } } }
        }
        h2 { "Events per day" }
        (bar_chart(&format!("Events per day, by the day they occurred (the latest {DAYS} days with events)"), &event_bars))
        h2 { "Commissions per day" }
        (bar_chart("Commission amounts per day, by the day the event occurred", &paid_bars))
        h2 { "Failures" }
        @if failures.is_empty() {
            p { "No failed events." }
        } @else {
            table {
                tr { th { "kind" } th.num { "events" } }
                @for (kind, count) in &failures { tr { td { (kind) } td.num { (count) } } }
            }
            table {
                tr { th { "event" } th { "kind" } th { "message" } }
                @for event in failed.iter().take(50) {
                    tr {
                        td { a href=(format!("/console/events/{}", super::enc(&text(&event["id"])))) { (text(&event["id"])) } }
                        td { (text(&event["failure"]["kind"])) }
                        td { (text(&event["failure"]["message"])) }
                    }
                }
            }
        }
        h2 { "Latest events" }
        table {
            tr { th { "event" } th { "type" } th { "customer" } th { "occurred" } th.num { "amount" } th { "status" } th { "affiliate" } }
            @for event in events.iter().rev().take(20) {
                tr {
                    td { a href=(format!("/console/events/{}", super::enc(&text(&event["id"])))) { (text(&event["id"])) } }
                    td { (text(&event["type"])) }
                    td { (text(&event["customer"])) }
                    td { (text(&event["occurred_at"])) }
                    td.num { (layout::amount(&text(&event["amount"]))) }
                    td { (text(&event["status"])) }
                    td { (text(&event["attributed_to"])) }
                }
            }
        }
    };
    Ok(layout::page(&signed.session, "Overview", body))
}
