//! Affiliates: the tree of parents, each one's deal, a form that creates or edits one
//! (`PUT .../affiliates/{id}`, the API's problems shown next to the fields), and a portal key
//! issued for one (`POST .../affiliates/{id}/keys`, shown once).

use std::collections::BTreeMap;

use axum::http::{Method, StatusCode};
use maud::{Markup, html};
use serde_json::{Map, Value, json};

use super::layout::{self, Field, text};
use super::session::{Posted, Signed};
use super::{Answer, Page, enc, listing};

/// What the form shows again after the API refused it.
#[derive(Default)]
struct Input {
    id: String,
    parent: String,
    deal: String,
}

pub async fn page(signed: Signed) -> Page {
    render(&signed, &Input::default(), None, None).await
}

/// The API's problem for `field` or any field under it (`deal.revshare_percent`).
fn problem(answer: Option<&Answer>, field: &str) -> Option<String> {
    let answer = answer.filter(|answer| !answer.ok())?;
    let json = answer.json();
    let found = json["details"].as_array()?.iter().find(|detail| {
        let named = detail["field"].as_str().unwrap_or("");
        named == field || named.starts_with(&format!("{field}.")) || named.starts_with(&format!("{field}["))
    })?;
    Some(text(&found["problem"]))
}

async fn render(signed: &Signed, input: &Input, refused: Option<&Answer>, notice: Option<Markup>) -> Page {
    let (affiliates, more) = listing(signed, "/affiliates", "affiliates").await?;
    let mut children: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for affiliate in &affiliates {
        children.entry(text(&affiliate["parent"])).or_default().push(affiliate);
    }
    let session = &signed.session;
    let named = ["id", "parent", "deal"].iter().any(|field| problem(refused, field).is_some());
    let body = html! {
        @if let Some(notice) = notice { (notice) }
        @if more { p.warn { "Only the first affiliates are shown." } }
        h2 { "The tree" }
        (tree(&children, "", 0))
        h2 { "Create or edit an affiliate" }
        form method="post" action="/console/affiliates" {
            (layout::csrf(session))
            @if let Some(refused) = refused.filter(|_| !named) { p.problem role="alert" { (refused.message()) } }
            (layout::field(&Field::text("id", "Affiliate id", &input.id).problem(problem(refused, "id"))))
            (layout::field(&Field::text("parent", "Parent (empty: none)", &input.parent).problem(problem(refused, "parent"))))
            (layout::field(&Field::text("deal", "Deal, one term a line: key=value", &input.deal).kind("textarea").problem(problem(refused, "deal"))))
            button type="submit" name="action" value="save" { "Save" }
            " "
            button type="submit" name="action" value="key" { "Issue a portal key for this affiliate" }
        }
    };
    let mut response = layout::page(session, "Affiliates", body);
    if let Some(refused) = refused.filter(|answer| !answer.ok()) {
        *response.status_mut() = refused.status;
    }
    Ok(response)
}

/// The affiliates under `parent`, nested, each with its deal and an edit link.
fn tree(children: &BTreeMap<String, Vec<&Value>>, parent: &str, depth: usize) -> Markup {
    html! {
        @if let Some(list) = children.get(parent).filter(|_| depth <= 16) {
            ul { @for affiliate in list {
                @let id = text(&affiliate["id"]);
                li data-affiliate=(id) {
                    strong { (id) } " "
                    @for (key, value) in affiliate["deal"].as_object().into_iter().flatten() {
                        code { (key) "=" (text(value)) } " "
                    }
                    " " a href=(format!("/console/ledger?affiliate={}", enc(&id))) { "ledger" }
                    (tree(children, &id, depth + 1))
                }
            } }
        }
    }
}

/// Saves the form as `PUT .../affiliates/{id}`, or issues a portal key.
pub async fn save(Posted { signed, form }: Posted) -> Page {
    let input = Input { id: form.get("id").into(), parent: form.get("parent").into(), deal: form.get("deal").into() };
    if input.id.is_empty() {
        let answer = Answer::local(StatusCode::UNPROCESSABLE_ENTITY, "id", "the affiliate id is required");
        return render(&signed, &input, Some(&answer), None).await;
    }
    let path = format!("/affiliates/{}", enc(&input.id));
    if form.get("action") == "key" {
        let answer = signed.api(Method::POST, &format!("{path}/keys"), None).await;
        if !answer.ok() {
            return render(&signed, &input, Some(&answer), None).await;
        }
        let key = answer.json();
        let notice = html! { div.notice role="status" {
            p { "Portal key for " code { (input.id) } " (shown once; the affiliate signs in with it):" }
            p { code id="issued-key" { (text(&key["key"])) } }
        } };
        return render(&signed, &Input::default(), None, Some(notice)).await;
    }
    let mut deal = Map::new();
    for line in input.deal.lines().map(str::trim).filter(|line| !line.is_empty()) {
        let Some((key, value)) = line.split_once('=') else {
            let problem = format!("{line:?} is not key=value");
            let answer = Answer::local(StatusCode::UNPROCESSABLE_ENTITY, "deal", &problem);
            return render(&signed, &input, Some(&answer), None).await;
        };
        deal.insert(key.trim().to_owned(), json!(value.trim()));
    }
    let parent = if input.parent.is_empty() { Value::Null } else { json!(input.parent) };
    let answer = signed.api(Method::PUT, &path, Some(&json!({"parent": parent, "deal": deal}))).await;
    if !answer.ok() {
        return render(&signed, &input, Some(&answer), None).await;
    }
    let notice = html! { p.notice role="status" { "Affiliate " code { (input.id) } " saved." } };
    render(&signed, &Input::default(), None, Some(notice)).await
}
