//! The back office's listings and exports through the real host: operators (admin only),
//! affiliates, plugin versions, events with their filters, periods; paged with cursors while
//! another client writes; and the commissions listing and a period statement as CSV, which
//! parse back (RFC 4180 quoting of commas and quotes) to the JSON's values row for row.

use crate::common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::{ADMIN_TOKEN, Host, Operator, answer, data_dir, plugin_wasm};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::Digest;

/// Every item of an operator's listing, following `next` a page of `limit` at a time.
fn all_pages(host: &Host, operator: &Operator, path: &str, items: &str, limit: usize) -> Vec<Value> {
    let mut all = Vec::new();
    let mut cursor: Option<String> = None;
    let separator = if path.contains('?') { '&' } else { '?' };
    for _ in 0..1000 {
        let page = match &cursor {
            Some(cursor) => format!("{path}{separator}limit={limit}&cursor={cursor}"),
            None => format!("{path}{separator}limit={limit}"),
        };
        let (status, body) = host.get(operator, &page);
        assert_eq!(status, StatusCode::OK, "{page}: {body}");
        let listed = body[items].as_array().unwrap_or_else(|| panic!("{page}: {body}"));
        assert!(listed.len() <= limit, "{page}: a page is at most `limit` long");
        all.extend(listed.iter().cloned());
        match body["next"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return all,
        }
    }
    panic!("{path}: more than 1000 pages");
}

fn ids(items: &[Value]) -> Vec<String> {
    items.iter().map(|item| item["id"].as_str().unwrap().to_owned()).collect()
}

/// A 422 `invalid_query` whose details name `field`.
fn refused_naming(host: &Host, operator: &Operator, path: &str, field: &str) {
    let (status, body) = host.get(operator, path);
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{path}: {body}");
    assert_eq!((body["error"].as_str(), body["details"][0]["field"].as_str()), (Some("invalid_query"), Some(field)));
}

fn deposit(id: &str, customer: &str, at: &str) -> Value {
    json!({"id": id, "type": "deposit", "customer": customer, "amount": "100", "affiliate": "aff1", "occurred_at": at})
}

#[test]
fn paging_while_another_client_writes_repeats_nothing_and_misses_nothing() {
    let (_dir, data) = data_dir();
    let host = Host::start(&data);
    let acme = host.multi_event_with_aff1("acme");
    // 30 first deposits: 30 events, 30 CPAs.
    let first: Vec<Value> =
        (0..30).map(|n| deposit(&format!("d{n:03}"), &format!("c{n:03}"), "2026-11-02T10:00:00Z")).collect();
    assert_eq!(host.post_events(&acme, &json!(first)).0, StatusCode::OK);
    let events_at_start = ids(&all_pages(&host, &acme, "/events", "events", 1000));
    let commissions_at_start = ids(&host.commissions(&acme, ""));
    assert_eq!((events_at_start.len(), commissions_at_start.len()), (30, 30));

    let (base, key) = (host.base.clone(), acme.api_key.clone());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let client = reqwest::blocking::Client::new();
            let started = Instant::now();
            let mut written = 0;
            // Bounded in count and time; ends early once the readers are done.
            while written < 60
                && started.elapsed() < Duration::from_secs(20)
                && !stop.load(std::sync::atomic::Ordering::SeqCst)
            {
                let batch: Vec<Value> = (written..written + 3)
                    .map(|n| deposit(&format!("w{n:03}"), &format!("w{n:03}"), "2026-11-03T10:00:00Z"))
                    .collect();
                let response =
                    client.post(format!("{base}/v1/operators/acme/events")).bearer_auth(&key).json(&batch).send();
                assert_eq!(response.unwrap().status(), StatusCode::OK);
                written += 3;
            }
            written
        })
    };
    let events = all_pages(&host, &acme, "/events", "events", 4);
    let commissions = all_pages(&host, &acme, "/commissions", "commissions", 4);
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let written = writer.join().unwrap();

    for (listing, listed, at_start) in
        [("events", ids(&events), &events_at_start), ("commissions", ids(&commissions), &commissions_at_start)]
    {
        let unique: HashSet<&String> = listed.iter().collect();
        assert_eq!(unique.len(), listed.len(), "{listing}: an item listed twice");
        for id in at_start {
            assert!(unique.contains(id), "{listing}: {id}, there from the start, was missed");
        }
        assert!(listed.len() <= 30 + written, "{listing}");
    }
    // Ledger order: the commission ids sort so, and the events follow the same order.
    let commission_ids = ids(&commissions);
    assert!(commission_ids.windows(2).all(|pair| pair[0] < pair[1]), "{commission_ids:?}");
    assert_eq!(&ids(&events)[..30], &events_at_start[..]);
}

#[test]
fn each_event_filter_keeps_what_it_names_and_a_bad_value_is_named() {
    let (_dir, data) = data_dir();
    let host = Host::start(&data);
    let acme = host.multi_event_with_aff1("acme");
    host.accept(&acme, deposit("e1", "c1", "2026-10-30T10:00:00Z"));
    host.accept(&acme, deposit("e2", "c2", "2026-11-01T00:00:00Z"));
    host.accept(&acme, json!({"id": "e3", "type": "trade", "customer": "c1", "attributes": {"lots": "2"}, "occurred_at": "2026-11-05T10:00:00Z"}));
    // Negative lots: the plugin refuses the event, which is kept as failed.
    let (status, failed) = host.post_events(
        &acme,
        &json!({"id": "e4", "type": "trade", "customer": "c2", "attributes": {"lots": "-1"}, "occurred_at": "2026-11-06T10:00:00Z"}),
    );
    assert_eq!((status, failed["status"].as_str()), (StatusCode::OK, Some("failed")), "{failed}");

    let listed = |query: &str| ids(&all_pages(&host, &acme, &format!("/events?{query}"), "events", 2));
    assert_eq!(listed(""), ["e1", "e2", "e3", "e4"], "ledger order");
    assert_eq!(listed("status=failed"), ["e4"]);
    assert_eq!(listed("status=accepted"), ["e1", "e2", "e3"]);
    assert_eq!(listed("type=trade"), ["e3", "e4"]);
    assert_eq!(listed("customer=c2"), ["e2", "e4"]);
    assert_eq!(listed("occurred_from=2026-11-01T00:00:00Z"), ["e2", "e3", "e4"], "from is inclusive");
    assert_eq!(listed("occurred_to=2026-11-05T10:00:00Z"), ["e1", "e2"], "to is exclusive");
    assert_eq!(listed("type=trade&customer=c1&occurred_from=2026-11-01T00:00:00Z&status=accepted"), ["e3"]);

    let (_, page) = host.get(&acme, "/events?status=failed");
    let e4 = &page["events"][0];
    assert_eq!((e4["failure"]["kind"].as_str(), e4["attempts"].as_u64()), (Some("rule_error"), Some(1)), "{e4}");
    assert_eq!(e4["occurred_at"], "2026-11-06T10:00:00Z");
    assert!(e4["received_at"].as_str().unwrap().ends_with('Z'), "{e4}");
    let (_, page) = host.get(&acme, "/events?customer=c1&limit=1");
    assert_eq!(page["events"][0]["commission_ids"].as_array().unwrap().len(), 1, "{page}");
    assert_eq!(page["events"][0]["amount"], "100");

    refused_naming(&host, &acme, "/events?status=pending", "status");
    refused_naming(&host, &acme, "/events?occurred_from=yesterday", "occurred_from");
    refused_naming(&host, &acme, "/events?occurred_to=2026-13-01T00:00:00Z", "occurred_to");
    refused_naming(&host, &acme, "/events?type=", "type");
    refused_naming(&host, &acme, "/events?cursor=cm_0000000000000001_0000", "cursor");
    refused_naming(&host, &acme, "/events?limit=0", "limit");
    refused_naming(&host, &acme, "/events?kind=trade", "kind");
    refused_naming(&host, &acme, "/affiliates?cursor=AFF", "cursor");
    refused_naming(&host, &acme, "/plugins?cursor=first", "cursor");
    refused_naming(&host, &acme, "/periods?cursor=2026-13", "cursor");
    refused_naming(&host, &acme, "/commissions?format=xlsx", "format");
}

#[test]
fn operators_affiliates_and_plugin_versions_are_listed_without_credentials() {
    let (_dir, data) = data_dir();
    let host = Host::start(&data);
    let acme = host.multi_event_with_aff1("acme");
    let beta = host.create_operator("beta");
    host.put_affiliate(&acme, "sub", Some("aff1"), json!({"override_percent": "10"}));
    host.put_affiliate(&acme, "aff2", None, json!({"ftd_cpa": "25"}));
    let wasm = plugin_wasm("multi-event");
    assert_eq!(host.upload_plugin(&acme, &wasm, false).0, StatusCode::CREATED);
    assert_eq!(host.upload_plugin(&acme, &wasm, false).0, StatusCode::CREATED);
    let op = |path: &str| host.url(&format!("/v1/operators/acme{path}"));
    let dated = json!({"effective_from": "2026-12-01T00:00:00Z", "scope": "new_customers", "affiliate": "aff2"});
    let (status, body) =
        answer(host.client.post(op("/plugins/2/activate")).bearer_auth(&acme.api_key).json(&dated).send());
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) =
        answer(host.client.put(op("/shadow")).bearer_auth(&acme.api_key).json(&json!({"version": 3})).send());
    assert_eq!(status, StatusCode::OK, "{body}");

    // Operators: the admin's alone, by id, a page at a time.
    let admin_get = |path: &str| answer(host.client.get(host.url(path)).bearer_auth(ADMIN_TOKEN).send());
    let (status, first) = admin_get("/v1/operators?limit=1");
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!((first["operators"][0]["id"].as_str(), first["next"].as_str()), (Some("acme"), Some("acme")));
    let (_, second) = admin_get("/v1/operators?limit=1&cursor=acme");
    assert_eq!((second["operators"][0]["id"].as_str(), &second["next"]), (Some("beta"), &Value::Null), "{second}");
    let acme_view = &first["operators"][0];
    assert_eq!(acme_view["currency"], "USD");
    assert!(acme_view["created_at"].as_str().unwrap().ends_with('Z'), "{acme_view}");
    assert_eq!(
        (
            &acme_view["settings"]["active_plugin"],
            &acme_view["settings"]["shadow_plugin"],
            &acme_view["settings"]["late_events"]
        ),
        (&json!(1), &json!(3), &json!("adjust"))
    );
    let (_, everything) = admin_get("/v1/operators");
    let text = everything.to_string();
    for secret in [&acme.api_key, &acme.webhook_secret, &acme.postback_token, &beta.api_key, &beta.webhook_secret] {
        assert!(!text.contains(secret.as_str()), "a credential is listed: {text}");
    }
    assert!(!text.contains("sha256"), "a credential's hash is listed: {text}");
    for key in [&acme.api_key, &beta.api_key] {
        let (status, body) = answer(host.client.get(host.url("/v1/operators")).bearer_auth(key).send());
        assert_eq!(status, StatusCode::UNAUTHORIZED, "an operator key lists operators: {body}");
    }
    assert_eq!(answer(host.client.get(host.url("/v1/operators")).send()).0, StatusCode::UNAUTHORIZED);

    // Affiliates, by id, with parent and deal.
    let affiliates = all_pages(&host, &acme, "/affiliates", "affiliates", 1);
    assert_eq!(ids(&affiliates), ["aff1", "aff2", "sub"]);
    assert_eq!(
        (&affiliates[2]["parent"], &affiliates[2]["deal"]),
        (&json!("aff1"), &json!({"override_percent": "10"}))
    );
    assert_eq!(affiliates[1]["deal"], json!({"ftd_cpa": "25"}));
    assert!(affiliates[0]["updated_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(all_pages(&host, &beta, "/affiliates", "affiliates", 5), Vec::<Value>::new(), "beta has none");

    // Plugin versions, oldest first.
    let plugins = all_pages(&host, &acme, "/plugins", "plugins", 2);
    let sha256 = hex::encode(sha2::Sha256::digest(&wasm));
    let summary: Vec<(u64, bool, bool, usize)> = plugins
        .iter()
        .map(|p| {
            assert_eq!((p["size"].as_u64(), p["sha256"].as_str()), (Some(wasm.len() as u64), Some(sha256.as_str())));
            assert!(p["uploaded_at"].as_str().unwrap().ends_with('Z'), "{p}");
            assert!(p["contract"].as_str().is_some_and(|contract| !contract.is_empty()), "{p}");
            let activations = p["activations"].as_array().unwrap().len();
            (
                p["version"].as_u64().unwrap(),
                p["active"].as_bool().unwrap(),
                p["shadow"].as_bool().unwrap(),
                activations,
            )
        })
        .collect();
    assert_eq!(summary, [(1, true, false, 0), (2, false, false, 1), (3, false, true, 0)]);
    assert_eq!(
        plugins[1]["activations"][0],
        json!({"effective_from": "2026-12-01T00:00:00Z", "scope": "new_customers", "affiliate": "aff2",
               "activated_at": plugins[1]["activations"][0]["activated_at"]}),
    );
}

/// RevShare 30% for `carry`: November's NGR 1,400 pays 420 at its close; then a wager of 1,000
/// on 10 November arrives late, restating November to 2,400 x 30% = 720: an adjustment of 300,
/// dated in the open month, December.
fn november_closed_then_restated(host: &Host) -> Operator {
    let casino = host.create_operator("casino");
    host.install_plugin(&casino, "revshare");
    host.put_affiliate(&casino, "carry", None, json!({"revshare_percent": "30"}));
    let money = |id: &str, kind: &str, amount: &str, at: &str| {
        host.accept(&casino, json!({"id": id, "type": kind, "customer": "p1", "amount": amount, "occurred_at": at}));
    };
    host.accept(
        &casino,
        json!({"id": "p1-d", "type": "deposit", "customer": "p1", "amount": "200", "affiliate": "carry", "occurred_at": "2025-11-01T08:00:00Z"}),
    );
    money("n1", "wager", "10000", "2025-11-02T10:00:00Z");
    money("n2", "win", "8000", "2025-11-03T10:00:00Z");
    money("n3", "bonus", "500", "2025-11-04T10:00:00Z");
    money("n4", "fee", "100", "2025-11-05T10:00:00Z");
    let (status, closed) = host.close(&casino, "2025-11");
    assert_eq!(status, StatusCode::OK, "{closed}");
    assert_eq!(common::paid(&closed["settlements"][0]), [("carry".into(), common::dec("420"))]);
    let late = host.accept(&casino, json!({"id": "late", "type": "wager", "customer": "p1", "amount": "1000", "occurred_at": "2025-11-10T10:00:00Z"}));
    assert_eq!(common::paid(&late), [("carry".into(), common::dec("300"))], "{late}");
    casino
}

#[test]
fn periods_say_closed_or_open_when_settled_and_what_they_total() {
    let (_dir, data) = data_dir();
    let host = Host::start(&data);
    let casino = november_closed_then_restated(&host);
    host.accept(
        &casino,
        json!({"id": "jan", "type": "wager", "customer": "p1", "amount": "5", "occurred_at": "2026-01-03T10:00:00Z"}),
    );

    let periods = all_pages(&host, &casino, "/periods", "periods", 1);
    let summary: Vec<(&str, &str, u64, u64, &Value)> = periods
        .iter()
        .map(|p| {
            let events = p["events"].as_u64().unwrap();
            (
                p["period"].as_str().unwrap(),
                p["status"].as_str().unwrap(),
                events,
                p["commissions"].as_u64().unwrap(),
                &p["totals"],
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            // The settlement's 420; the late wager counts in November, where it occurred.
            ("2025-11", "closed", 6, 1, &json!([{"currency": "USD", "amount": "420.00"}])),
            // The adjustment, dated in the open month it was made in.
            ("2025-12", "open", 0, 1, &json!([{"currency": "USD", "amount": "300.00"}])),
            ("2026-01", "open", 1, 0, &json!([])),
        ]
    );
    assert_eq!(
        (periods[0]["starts_at"].as_str(), periods[0]["ends_at"].as_str()),
        (Some("2025-11-01T00:00:00Z"), Some("2025-12-01T00:00:00Z"))
    );
    assert!(periods[0]["settled_at"].as_str().unwrap().ends_with('Z'), "{}", periods[0]);
    assert_eq!((&periods[1]["settled_at"], &periods[2]["settled_at"]), (&Value::Null, &Value::Null));
}

/// The CSV's rows as maps from its header's names.
fn csv_records(text: &str) -> Vec<std::collections::BTreeMap<String, String>> {
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let header: Vec<String> = reader.headers().unwrap().iter().map(str::to_owned).collect();
    reader
        .records()
        .map(|record| header.iter().cloned().zip(record.unwrap().iter().map(str::to_owned)).collect())
        .collect()
}

/// The JSON's value of a CSV column, as text (`null` as empty).
fn json_text(commission: &Value, column: &str) -> String {
    let value = match column {
        "restates_period" => &commission["restates"]["period"],
        other => &commission[other],
    };
    match value {
        Value::Null => String::new(),
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

fn get_csv(host: &Host, operator: &Operator, path: &str, accept: Option<&str>) -> String {
    let mut request =
        host.client.get(host.url(&format!("/v1/operators/{}{path}", operator.id))).bearer_auth(&operator.api_key);
    if let Some(accept) = accept {
        request = request.header("accept", accept);
    }
    let response = request.send().unwrap();
    assert_eq!(response.status(), StatusCode::OK, "{path}");
    let content_type = response.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(content_type.starts_with("text/csv"), "{path}: {content_type}");
    response.text().unwrap()
}

#[test]
fn a_csv_export_matches_the_json_listing_row_for_row_with_its_quotes_and_commas() {
    let (_dir, data) = data_dir();
    let host = Host::start(&data);
    let acme = host.multi_event_with_aff1("acme");
    // Ids with commas and quotes; the chargeback's explanation names the deposit it claws back.
    let awkward = r#"d,"1""#;
    host.accept(&acme, deposit(awkward, r#"c,1 "q""#, "2026-11-02T10:00:00Z"));
    for n in 0..12 {
        host.accept(&acme, deposit(&format!("d{n}"), &format!("c{n}"), "2026-11-03T10:00:00Z"));
    }
    host.accept(
        &acme,
        json!({"id": "cb", "type": "chargeback", "customer": r#"c,1 "q""#, "attributes": {"deposit": awkward}}),
    );

    let json_rows = host.commissions(&acme, "");
    assert_eq!(json_rows.len(), 14);
    let reversal = json_rows.last().unwrap();
    assert!(reversal["explanation"].as_str().unwrap().contains(awkward), "{reversal}");
    let text = get_csv(&host, &acme, "/commissions?format=csv", None);
    assert_eq!(text, get_csv(&host, &acme, "/commissions", Some("text/csv")), "Accept: text/csv is the same");
    assert!(text.contains(r#""c,1 ""q""""#), "a field with a comma and quotes is quoted, its quotes doubled: {text}");
    let records = csv_records(&text);
    assert_eq!(records.len(), json_rows.len(), "{text}");
    for (record, commission) in records.iter().zip(&json_rows) {
        assert_eq!(record.len(), 18, "{record:?}");
        for (column, value) in record {
            assert_eq!(value, &json_text(commission, column), "{column} of {}", commission["id"]);
        }
    }
    assert_eq!(records[0]["customer"], r#"c,1 "q""#);
    assert_eq!((records[13]["amount"].as_str(), records[13]["status"].as_str()), ("-10", "reversed"));

    // The same filters, and a cursor and limit: the JSON's rows.
    let filtered = get_csv(&host, &acme, &format!("/commissions?format=csv&customer={}", "c%2C1%20%22q%22"), None);
    let filtered: Vec<String> = csv_records(&filtered).iter().map(|r| r["id"].clone()).collect();
    assert_eq!(filtered, ids(&host.commissions(&acme, "customer=c%2C1%20%22q%22")));
    assert_eq!(filtered.len(), 2);
    let cursor = json_rows[4]["id"].as_str().unwrap();
    let rest = csv_records(&get_csv(&host, &acme, &format!("/commissions?format=csv&cursor={cursor}&limit=3"), None));
    assert_eq!(rest.iter().map(|r| r["id"].clone()).collect::<Vec<_>>(), ids(&json_rows[5..8]));
    let none = get_csv(&host, &acme, "/commissions?format=csv&status=approved", None);
    assert_eq!(csv_records(&none).len(), 0);
    assert!(none.starts_with("id,event_id,affiliate,customer,amount,"), "a header row even when empty: {none}");
}

#[test]
fn a_period_statement_as_csv_lists_what_was_paid_at_the_close_and_since() {
    let (_dir, data) = data_dir();
    let host = Host::start(&data);
    let casino = november_closed_then_restated(&host);
    let (status, statement) = host.get(&casino, "/periods/2025-11/statement");
    assert_eq!(status, StatusCode::OK, "{statement}");
    let paid = &statement["affiliates"][0]["paid"];
    let json_rows: Vec<(&str, &Value)> = paid["at_close"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| ("at_close", c))
        .chain(paid["adjustments"].as_array().unwrap().iter().map(|c| ("adjustment", c)))
        .collect();

    let text = get_csv(&host, &casino, "/periods/2025-11/statement?affiliate=carry", Some("text/csv"));
    let records = csv_records(&text);
    assert_eq!(records.len(), 2, "{text}");
    for (record, (paid_as, commission)) in records.iter().zip(&json_rows) {
        assert_eq!((record["period"].as_str(), record["settlement_affiliate"].as_str()), ("2025-11", "carry"));
        assert_eq!(record["paid_as"], *paid_as);
        for column in ["id", "affiliate", "amount", "currency", "rule", "occurred_at", "restates_period"] {
            assert_eq!(record[column], json_text(commission, column), "{column}");
        }
    }
    assert_eq!((records[0]["amount"].as_str(), records[1]["amount"].as_str()), ("420.00", "300.00"));
    assert_eq!(records[1]["restates_period"], "2025-11");
    assert_eq!(text, get_csv(&host, &casino, "/periods/2025-11/statement?format=csv", None), "one affiliate: the same");
    refused_naming(&host, &casino, "/periods/2025-11/statement?format=pdf", "format");
}
