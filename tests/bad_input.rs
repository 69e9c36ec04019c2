//! The catalogue of bad input: every field of an event with the wrong type, size or encoding,
//! extreme decimals, duplicate keys, oversized headers, slow headers and thousands of idle
//! connections. Each gets a clear 4xx (JSON naming the field and the problem) or, for the
//! slow and the idle, a timeout; the host stays up, within a memory bound, and writes nothing.

use crate::common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{Host, Operator, answer, data_dir};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// A valid deposit with `field` replaced by `value` (or removed, for `null` on a required field).
fn with(field: &str, value: Value) -> String {
    let mut event = json!({"id": "bad-1", "type": "deposit", "customer": "c1", "amount": "50", "affiliate": "aff1"});
    match field.strip_prefix("attributes.") {
        Some(key) => event["attributes"] = json!({ key: value }),
        None => event[field] = value,
    }
    event.to_string()
}

/// Posts `body` and checks the refusal: `status`, JSON, and the field named where there is one.
fn refused(host: &Host, operator: &Operator, case: &str, body: Vec<u8>, status: StatusCode, field: Option<&str>) {
    let (got, answer) = answer(
        host.client
            .post(host.url(&format!("/v1/operators/{}/events", operator.id)))
            .bearer_auth(&operator.api_key)
            .header("content-type", "application/json")
            .body(body)
            .send(),
    );
    assert_eq!(got, status, "{case}: {answer}");
    assert!(answer["error"].is_string() && !answer["message"].as_str().unwrap().is_empty(), "{case}: {answer}");
    if let Some(field) = field {
        let fields: Vec<&str> =
            answer["details"].as_array().into_iter().flatten().filter_map(|d| d["field"].as_str()).collect();
        assert!(fields.contains(&field), "{case}: expected a problem with {field}: {answer}");
    }
}

/// The host's resident memory, from /proc.
fn rss_kib(host: &Host) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", host.pid())).unwrap();
    let line = status.lines().find(|line| line.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn assert_nothing_written(host: &Host, operator: &Operator) {
    assert_eq!(host.commissions(operator, ""), Vec::<Value>::new(), "a bad request wrote commissions");
    for id in ["bad-1", "ok-1"] {
        assert_eq!(host.get(operator, &format!("/events/{id}")).0, StatusCode::NOT_FOUND, "{id} was stored");
    }
    assert_eq!(common::assert_verifies(host, operator), 0, "no event is in the ledger");
}

#[test]
fn every_field_wrong_is_refused_by_name_and_nothing_is_written() {
    let (_dir, data) = data_dir();
    let host = Host::start(&data);
    let acme = host.multi_event_with_aff1("acme");
    let unprocessable = StatusCode::UNPROCESSABLE_ENTITY;

    // Wrong types, field by field.
    for (field, value) in [
        ("id", json!(12)),
        ("id", json!(["a"])),
        ("type", json!({"a": 1})),
        ("customer", json!(true)),
        ("amount", json!(50)),
        ("amount", json!(50.5)),
        ("currency", json!(840)),
        ("affiliate", json!(["aff1"])),
        ("occurred_at", json!(1.5)),
        ("attributes", json!(["lots", "1"])),
        ("attributes", json!("lots=1")),
        ("attributes.lots", json!({"n": 1})),
        ("attributes.lots", json!(null)),
        ("unknown_field", json!("x")),
    ] {
        refused(&host, &acme, &format!("{field} = {value}"), with(field, value).into(), unprocessable, Some(field));
    }
    // Missing, empty and null required fields.
    for field in ["id", "type", "customer"] {
        refused(&host, &acme, &format!("{field} empty"), with(field, json!("")).into(), unprocessable, Some(field));
        refused(&host, &acme, &format!("{field} null"), with(field, json!(null)).into(), unprocessable, Some(field));
    }

    // Sizes.
    let long = |n: usize| "x".repeat(n);
    for (field, value) in [
        ("id", long(129)),
        ("id", long(100_000)),
        ("type", long(65)),
        ("customer", long(129)),
        ("affiliate", long(129)),
        ("amount", format!("1{}", "0".repeat(64))),
        ("attributes.lots", long(1025)),
        (&format!("attributes.{}", long(65)), "1".into()),
    ] {
        refused(
            &host,
            &acme,
            &format!("{field} of {} chars", value.len()),
            with(field, json!(value)).into(),
            unprocessable,
            None,
        );
    }
    let many: serde_json::Map<String, Value> = (0..65).map(|n| (format!("k{n}"), json!("v"))).collect();
    refused(
        &host,
        &acme,
        "65 attributes",
        with("attributes", Value::Object(many)).into(),
        unprocessable,
        Some("attributes"),
    );
    let batch: Vec<Value> = (0..1001)
        .map(|n| json!({"id": format!("ok-{n}"), "type": "deposit", "customer": format!("c{n}"), "amount": "1"}))
        .collect();
    refused(&host, &acme, "a batch of 1001", json!(batch).to_string().into(), unprocessable, None);
    let mut big = with("id", json!("bad-1")).into_bytes();
    big.extend(std::iter::repeat_n(b' ', 2 << 20));
    refused(&host, &acme, "a 2 MiB body", big, StatusCode::PAYLOAD_TOO_LARGE, None);
    refused(&host, &acme, "an empty batch", b"[]".to_vec(), unprocessable, None);
    refused(&host, &acme, "an empty body", Vec::new(), unprocessable, None);

    // Encodings.
    let mut latin1 = br#"{"id":"bad-1","type":"deposit","customer":"c"#.to_vec();
    latin1.extend([0xE9, b'"', b'}']);
    refused(&host, &acme, "Latin-1 bytes", latin1, StatusCode::BAD_REQUEST, None);
    refused(
        &host,
        &acme,
        "a BOM",
        [&[0xEF, 0xBB, 0xBF][..], with("id", json!("bad-1")).as_bytes()].concat(),
        unprocessable,
        None,
    );
    refused(
        &host,
        &acme,
        "a lone surrogate",
        br#"{"id":"\ud800","type":"deposit","customer":"c1"}"#.to_vec(),
        unprocessable,
        Some("id"),
    );
    for (field, value) in
        [("id", "a\u{0}b"), ("customer", "c\n1"), ("type", "dep\u{7f}osit"), ("attributes.lots", "1\r")]
    {
        refused(
            &host,
            &acme,
            &format!("control character in {field}"),
            with(field, json!(value)).into(),
            unprocessable,
            Some(field),
        );
    }
    refused(&host, &acme, "truncated JSON", br#"{"id":"bad-1","type":"dep"#.to_vec(), StatusCode::BAD_REQUEST, None);
    refused(&host, &acme, "a JSON string", br#""deposit""#.to_vec(), unprocessable, None);
    refused(&host, &acme, "nested 10000 deep", "[".repeat(10_000).into_bytes(), StatusCode::BAD_REQUEST, None);

    // Decimals: exact, at most 28 fraction digits, in 96 bits, or refused.
    for amount in [
        format!("0.{}1", "0".repeat(28)),
        "1e400".into(),
        "1E5".into(),
        "NaN".into(),
        "-NaN".into(),
        "Infinity".into(),
        "-inf".into(),
        "79228162514264337593543950336".into(),
        "+5".into(),
        " 5".into(),
        "5 ".into(),
        "0x10".into(),
        "1,5".into(),
        "1_000".into(),
        "--1".into(),
        ".".into(),
        "１２".into(),
    ] {
        refused(
            &host,
            &acme,
            &format!("amount {amount:?}"),
            with("amount", json!(amount)).into(),
            unprocessable,
            Some("amount"),
        );
    }
    for time in ["yesterday", "2026-13-01T00:00:00Z", "-1", "99999999999999999999", "2026-11-01"] {
        refused(
            &host,
            &acme,
            &format!("occurred_at {time:?}"),
            with("occurred_at", json!(time)).into(),
            unprocessable,
            Some("occurred_at"),
        );
    }
    for currency in ["usd", "XXXX", "", "€"] {
        refused(
            &host,
            &acme,
            &format!("currency {currency:?}"),
            with("currency", json!(currency)).into(),
            unprocessable,
            Some("currency"),
        );
    }

    // Duplicate keys, anywhere.
    for body in [
        r#"{"id":"bad-1","type":"deposit","customer":"c1","amount":"1","amount":"1000","affiliate":"aff1"}"#,
        r#"{"id":"bad-1","id":"bad-2","type":"deposit","customer":"c1"}"#,
        r#"{"id":"bad-1","type":"trade","customer":"c1","attributes":{"lots":"1","lots":"100"}}"#,
    ] {
        refused(&host, &acme, body, body.into(), unprocessable, None);
    }
    // Unknown references: nothing half-applied from a batch with one bad event.
    let batch = json!([
        {"id": "ok-1", "type": "deposit", "customer": "c1", "amount": "50", "affiliate": "aff1"},
        {"id": "bad-1", "type": "deposit", "customer": "c2", "amount": "50", "affiliate": "nobody"},
    ]);
    refused(
        &host,
        &acme,
        "a batch with an unknown affiliate",
        batch.to_string().into(),
        unprocessable,
        Some("affiliate"),
    );

    // Postbacks: the same checks, from a query string.
    for (query, field) in [
        ("id=bad-1&type=deposit&customer=c1&amount=1e400", "amount"),
        ("id=bad-1&type=deposit&customer=c1&amount=NaN", "amount"),
        ("id=bad-1&type=deposit&customer=c1&amount=1&amount=1000", "amount"),
        ("id=bad-1&type=deposit&customer=c%00", "customer"),
        ("id=bad-1&type=deposit", "customer"),
        ("id=bad-1&type=deposit&customer=c1&occurred_at=soon", "occurred_at"),
        ("id=bad-1&type=deposit&customer=c1&lots=1&lots=2", "lots"),
        ("id=bad%FF&type=deposit&customer=c1", "id"),
    ] {
        let (status, body) = host.postback(&acme, query);
        assert_eq!(status, unprocessable, "{query}: {body}");
        let fields: Vec<&str> =
            body["details"].as_array().unwrap().iter().filter_map(|d| d["field"].as_str()).collect();
        assert!(fields.contains(&field), "{query}: expected a problem with {field}: {body}");
    }

    assert_eq!(host.client.get(host.url("/healthz")).send().unwrap().status(), StatusCode::OK);
    assert_nothing_written(&host, &acme);
}

#[test]
fn negative_zero_is_zero() {
    let (_dir, data) = data_dir();
    let host = Host::start(&data);
    let acme = host.multi_event_with_aff1("acme");
    host.accept(
        &acme,
        json!({"id": "z-1", "type": "deposit", "customer": "c1", "amount": "-0.00", "affiliate": "aff1"}),
    );
    let (_, event) = host.get(&acme, "/events/z-1");
    assert_eq!(event["amount"], "0.00", "no negative zero in the ledger");
    // The same money without the sign is the same event, a duplicate.
    let (status, again) = host.post_events(
        &acme,
        &json!({"id": "z-1", "type": "deposit", "customer": "c1", "amount": "0.0", "affiliate": "aff1"}),
    );
    assert_eq!((status, again["status"].as_str()), (StatusCode::OK, Some("duplicate")), "{again}");
}

#[test]
fn oversized_and_slow_headers_and_idle_connections_are_cut_off() {
    let (_dir, data) = data_dir();
    // Every connection here comes from 127.0.0.1: the per-peer share (256 by default, tested in
    // tests/security.rs) is raised so this test measures what thousands of idle connections cost.
    let host = Host::start_with(&data, &["--max-connections-per-peer", "20000"]);
    let acme = host.multi_event_with_aff1("acme");
    let address = host.base.strip_prefix("http://").unwrap().to_owned();
    let rss_before = rss_kib(&host);

    // A 1 MB header: refused with 431 before the body is read.
    let mut stream = TcpStream::connect(&address).unwrap();
    let request = format!(
        "POST /v1/operators/acme/events HTTP/1.1\r\nhost: x\r\nx-padding: {}\r\ncontent-length: 2\r\n\r\n{{}}",
        "a".repeat(1 << 20)
    );
    // The host may stop reading once it has seen enough; the answer is what matters.
    let _ = stream.write_all(request.as_bytes());
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 431"), "{:.200}", answer);

    // Thousands of idle connections, held while the slow header goes on.
    let limit = open_files_limit();
    let idle = 10_000.min(limit.saturating_sub(200));
    println!("idle connections: {idle} (open files limit {limit})");
    let started = std::time::Instant::now();
    // Opened from several threads, as many clients would.
    let connections: Vec<TcpStream> = std::thread::scope(|scope| {
        let openers: Vec<_> = (0..8)
            .map(|_| {
                let address = &address;
                scope.spawn(move || {
                    (0..idle / 8)
                        .map(|n| TcpStream::connect(address).unwrap_or_else(|error| panic!("connection {n}: {error}")))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        openers.into_iter().flat_map(|opener| opener.join().unwrap()).collect()
    });
    println!("opened {} idle connections in {:?}", connections.len(), started.elapsed());
    // Slowloris: headers one byte a second are cut off by the header timeout (10 s), long
    // before the 60 bytes are sent.
    let mut slow = TcpStream::connect(&address).unwrap();
    slow.set_read_timeout(Some(Duration::from_millis(10))).unwrap();
    let header = format!("GET /healthz HTTP/1.1\r\nhost: x\r\nx-slow: {}\r\n\r\n", "s".repeat(20));
    let mut cut_after = None;
    for (sent, byte) in header.bytes().enumerate() {
        if slow.write_all(&[byte]).is_err() {
            cut_after = Some(sent);
            break;
        }
        let mut buffer = [0u8; 512];
        match slow.read(&mut buffer) {
            Ok(0) => {
                cut_after = Some(sent);
                break;
            }
            Ok(n) => panic!("answered a request that never finished: {}", String::from_utf8_lossy(&buffer[..n])),
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => {
                cut_after = Some(sent);
                break;
            }
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    let cut_after = cut_after.expect("a header sent one byte a second was never cut off");
    println!("slowloris: cut off after {cut_after} bytes at one a second");
    assert!(cut_after < header.len());

    // The host keeps serving others, within a memory bound.
    let (status, body) = host.post_events(
        &acme,
        &json!({"id": "ok-1", "type": "deposit", "customer": "c1", "amount": "50", "affiliate": "aff1"}),
    );
    assert_eq!(status, StatusCode::OK, "{body}");
    let rss_during = rss_kib(&host);
    println!("host RSS: {rss_before} KiB before, {rss_during} KiB with {idle} idle connections");
    assert!(rss_during < rss_before + 256 * 1024, "over 256 MiB more for {idle} idle connections");
    // An idle connection is closed by the same timeout: no request came.
    let mut first = &connections[0];
    first.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut buffer = [0u8; 512];
    match first.read(&mut buffer) {
        Ok(0) => {}
        Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("an idle connection was not closed: {other:?}"),
    }
    drop(connections);
    assert_eq!(host.client.get(host.url("/healthz")).send().unwrap().status(), StatusCode::OK);
    assert_eq!(host.commissions(&acme, "").len(), 1, "only the one good event paid");
}

/// The soft limit on open files of this process (the host inherits it).
fn open_files_limit() -> usize {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    let line = limits.lines().find(|line| line.starts_with("Max open files")).unwrap();
    line.split_whitespace().nth(3).unwrap().parse().unwrap()
}

/// `PUT .../affiliates/{path}` with a raw JSON body, as a client would write it (the test's
/// own `serde_json` would round numbers through floats and merge duplicate keys).
fn put_affiliate_raw(host: &Host, operator: &Operator, path: &str, body: &str) -> (StatusCode, Value) {
    answer(
        host.client
            .put(host.url(&format!("/v1/operators/{}/affiliates/{path}", operator.id)))
            .bearer_auth(&operator.api_key)
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send(),
    )
}

/// `POST /v1/operators` (admin) with a raw JSON body.
fn create_operator_raw(host: &Host, body: &str) -> (StatusCode, Value) {
    answer(
        host.client
            .post(host.url("/v1/operators"))
            .bearer_auth(common::ADMIN_TOKEN)
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send(),
    )
}

/// Checks a 422 whose details name `field` (or, with a trailing `*`, a field starting so).
fn assert_names(case: &str, (status, answer): (StatusCode, Value), field: &str) {
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{case}: {answer}");
    let fields: Vec<&str> =
        answer["details"].as_array().into_iter().flatten().filter_map(|d| d["field"].as_str()).collect();
    let named = match field.strip_suffix('*') {
        Some(prefix) => fields.iter().any(|f| f.starts_with(prefix)),
        None => fields.contains(&field),
    };
    assert!(named, "{case}: expected a problem with {field}: {answer}");
}

#[test]
fn hold_days_is_never_silently_bypassed() {
    let (_dir, data) = data_dir();
    let host = Host::start(&data);
    let acme = host.multi_event_with_aff1("acme");
    for hold in ["\"30.0\"", "\"-1\"", "\"+3\"", "\"\"", "\"3651\"", "\"99999999999999999999\"", "9999999999999999"] {
        let body = format!(r#"{{"deal": {{"hold_days": {hold}}}}}"#);
        let refused = put_affiliate_raw(&host, &acme, "held", &body);
        assert!(refused.1.to_string().contains("whole number of days"), "{hold}: {}", refused.1);
        assert_names(&format!("hold_days {hold}"), refused, "deal.hold_days");
    }
    assert_eq!(host.get(&acme, "/affiliates/held").0, StatusCode::NOT_FOUND, "a refused deal was stored");
    // The accepted form holds the commission, and the hold is checked at approval.
    host.put_affiliate(&acme, "held", None, json!({"hold_days": "30"}));
    let paid = host
        .accept(&acme, json!({"id": "d-1", "type": "deposit", "customer": "c1", "amount": "50", "affiliate": "held"}));
    let id = paid["commissions"][0]["id"].as_str().unwrap();
    let (_, commission) = host.get(&acme, &format!("/commissions/{id}"));
    let time = |field: &str| commission_host::event::parse_time(commission[field].as_str().unwrap()).unwrap();
    assert_eq!(time("hold_until") - time("created_at"), 30 * 86_400_000, "{commission}");
}

#[test]
fn json_numbers_are_kept_exact_not_rounded_through_floats() {
    let (_dir, data) = data_dir();
    let host = Host::start(&data);
    let acme = host.multi_event_with_aff1("acme");
    let (status, affiliate) =
        put_affiliate_raw(&host, &acme, "exact", r#"{"deal": {"ftd_cpa": 33.333333333333333333, "hold_days": 0}}"#);
    assert_eq!(status, StatusCode::OK, "{affiliate}");
    assert_eq!(affiliate["deal"], json!({"ftd_cpa": "33.333333333333333333", "hold_days": "0"}));
    let paid = host
        .accept(&acme, json!({"id": "d-1", "type": "deposit", "customer": "c1", "amount": "50", "affiliate": "exact"}));
    // Paid in cents (the host rounds once to the currency's minor units), the exact figure kept.
    assert_eq!(paid["commissions"][0]["amount"], "33.33", "{paid}");
    assert_eq!(paid["commissions"][0]["unrounded_amount"], "33.333333333333333333", "{paid}");
    // An attribute sent as a number is the same content as the same digits sent as a string.
    let trade = |lots: &str| {
        answer(
            host.client
                .post(host.url("/v1/operators/acme/events"))
                .bearer_auth(&acme.api_key)
                .header("content-type", "application/json")
                .body(format!(
                    r#"{{"id": "t-1", "type": "trade", "customer": "c1", "attributes": {{"lots": {lots}}}}}"#
                ))
                .send(),
        )
    };
    let (status, first) = trade("1.50");
    assert_eq!((status, first["status"].as_str()), (StatusCode::OK, Some("accepted")), "{first}");
    let (status, again) = trade("\"1.50\"");
    assert_eq!((status, again["status"].as_str()), (StatusCode::OK, Some("duplicate")), "{again}");
    assert_eq!(host.get(&acme, "/events/t-1").1["attributes"]["lots"], "1.50");
}

/// `count` affiliates `{prefix}0` <- `{prefix}1` <- ..., each paying its child a 10% override.
fn chain(host: &Host, operator: &Operator, prefix: &str, count: usize) {
    for n in 0..count {
        let parent = (n > 0).then(|| format!("{prefix}{}", n - 1));
        host.put_affiliate(operator, &format!("{prefix}{n}"), parent.as_deref(), json!({"override_percent": "10"}));
    }
}

#[test]
fn moving_an_affiliate_under_a_deep_one_cannot_bypass_the_chain_depth_limit() {
    let (_dir, data) = data_dir();
    let host = Host::start(&data);
    let acme = host.create_operator("acme");
    host.install_plugin(&acme, "multi-event");
    chain(&host, &acme, "l", 10);
    chain(&host, &acme, "m", 10);
    // m0 and the nine levels below it, under l9 (ten deep): twenty levels.
    assert_names("m0 under l9", put_affiliate_raw(&host, &acme, "m0", r#"{"parent": "l9"}"#), "parent");
    assert_eq!(host.get(&acme, "/affiliates/m0").1["parent"], Value::Null, "the refused move was written");
    // m4 and its five levels (m4..m9) under l9 make sixteen: the limit, taken.
    let (status, moved) =
        put_affiliate_raw(&host, &acme, "m4", r#"{"parent": "l9", "deal": {"override_percent": "10"}}"#);
    assert_eq!(status, StatusCode::OK, "{moved}");
    // l0 now carries sixteen levels: under m3 (four deep) it would make twenty.
    assert_names("l0 under m3", put_affiliate_raw(&host, &acme, "l0", r#"{"parent": "m3"}"#), "parent");
    let paid = host
        .accept(&acme, json!({"id": "d-1", "type": "deposit", "customer": "c1", "amount": "50", "affiliate": "m9"}));
    assert_eq!(paid["commissions"].as_array().unwrap().len(), 16, "every level of the chain is paid: {paid}");
}

#[test]
fn an_over_deep_chain_from_old_data_fails_its_event_and_is_never_cut() {
    let (_dir, data) = data_dir();
    let host = Host::start(&data);
    let acme = host.create_operator("acme");
    host.install_plugin(&acme, "multi-event");
    host.kill();
    // A ledger written before moves were checked: twenty levels, stored as they were.
    {
        let store = commission_host::store::Store::open(&data).unwrap();
        for n in 0..20 {
            let record = commission_host::store::records::AffiliateRecord {
                id: format!("d{n}"),
                parent: (n > 0).then(|| format!("d{}", n - 1)),
                deal: [("override_percent".to_owned(), "10".to_owned())].into_iter().collect(),
                updated_at: 0,
            };
            store.put_affiliate("acme", &record, None).unwrap().expect("no quota is set");
        }
    }
    let host = Host::start(&data);
    let (status, answer) = host.post_events(
        &acme,
        &json!({"id": "d-1", "type": "deposit", "customer": "c1", "amount": "50", "affiliate": "d19"}),
    );
    assert_eq!((status, answer["status"].as_str()), (StatusCode::OK, Some("failed")), "{answer}");
    assert!(answer["failure"]["message"].as_str().unwrap().contains("deeper than 16"), "{answer}");
    assert_eq!(host.commissions(&acme, ""), Vec::<Value>::new(), "a cut chain was paid");
}

#[test]
fn a_deposit_of_nothing_pays_no_first_deposit_cpa() {
    let (_dir, data) = data_dir();
    let host = Host::start(&data);
    let acme = host.multi_event_with_aff1("acme");
    let (status, rates) = answer(
        host.client
            .put(host.url("/v1/operators/acme/fx-rates"))
            .bearer_auth(&acme.api_key)
            .json(&json!({"rates": {"EUR": "0.5"}, "source": "test"}))
            .send(),
    );
    assert_eq!(status, StatusCode::OK, "{rates}");
    let tiny = "0.0000000000000000000000000001";
    // The host takes each (an amount's meaning is the plugin's); the plugin pays none of them.
    for (n, (amount, currency)) in
        [("0", "USD"), ("-0", "USD"), ("-100", "USD"), (tiny, "USD"), (tiny, "EUR")].into_iter().enumerate()
    {
        let paid = host.accept(
            &acme,
            json!({"id": format!("d-{n}"), "type": "deposit", "customer": format!("c{n}"), "amount": amount, "currency": currency, "affiliate": "aff1"}),
        );
        assert_eq!(paid["commissions"], json!([]), "a deposit of {amount} {currency} paid: {paid}");
    }
    // Those customers' first real deposit is still their first deposit.
    let paid = host.accept(&acme, json!({"id": "d-real", "type": "deposit", "customer": "c2", "amount": "100"}));
    assert_eq!(common::paid(&paid), [("aff1".to_owned(), common::dec("10"))], "{paid}");
    // The other reference plugins with a first-deposit CPA ignore them too.
    for plugin in ["cpa", "revshare"] {
        let operator = host.create_operator(plugin);
        host.install_plugin(&operator, plugin);
        host.put_affiliate(&operator, "aff1", None, json!({"cpa": "50"}));
        for (n, amount) in ["0", "-100"].into_iter().enumerate() {
            let paid = host.accept(
                &operator,
                json!({"id": format!("d-{n}"), "type": "deposit", "customer": "c1", "amount": amount, "affiliate": "aff1"}),
            );
            assert_eq!(paid["commissions"], json!([]), "{plugin}: a deposit of {amount} paid: {paid}");
        }
        let paid =
            host.accept(&operator, json!({"id": "d-real", "type": "deposit", "customer": "c1", "amount": "100"}));
        assert_eq!(common::paid(&paid), [("aff1".to_owned(), common::dec("50"))], "{plugin}: {paid}");
    }
}

#[test]
fn duplicate_empty_and_nul_deal_keys_are_refused() {
    let (_dir, data) = data_dir();
    let host = Host::start(&data);
    let acme = host.multi_event_with_aff1("acme");
    for (case, body, field) in [
        ("a key twice", r#"{"deal": {"ftd_cpa": "10", "ftd_cpa": "1000"}}"#, "deal"),
        ("an empty key", r#"{"deal": {"": "10"}}"#, "deal."),
        ("a NUL in a key", r#"{"deal": {"ftd\u0000cpa": "10"}}"#, "deal.ftd*"),
        ("a NUL in a value", r#"{"deal": {"ftd_cpa": "10\u0000"}}"#, "deal.ftd_cpa"),
    ] {
        let refused = put_affiliate_raw(&host, &acme, "dup", body);
        assert_names(case, refused, field);
    }
    assert_eq!(host.get(&acme, "/affiliates/dup").0, StatusCode::NOT_FOUND, "a refused deal was stored");
    // An operator's config, the same.
    for (case, config, field) in [
        ("a config key twice", r#"{"a": "1", "a": "2"}"#, "config"),
        ("an empty config key", r#"{"": "1"}"#, "config."),
    ] {
        let body = format!(r#"{{"id": "dup", "name": "Dup", "currency": "USD", "config": {config}}}"#);
        assert_names(case, create_operator_raw(&host, &body), field);
    }
    host.create_operator("dup");
}

#[test]
fn look_alike_affiliate_ids_are_refused_everywhere() {
    let (_dir, data) = data_dir();
    let host = Host::start(&data);
    let acme = host.multi_event_with_aff1("acme");
    for (case, path, id) in [
        ("a trailing space", "aff1%20", "aff1 "),
        ("upper case", "AFF1", "AFF1"),
        ("a Cyrillic a", "%D0%B0ff1", "\u{430}ff1"),
        ("a zero-width space", "aff%E2%80%8B1", "aff\u{200b}1"),
        ("a right-to-left override", "%E2%80%AEaff1", "\u{202e}aff1"),
    ] {
        assert_names(case, put_affiliate_raw(&host, &acme, path, "{}"), "affiliate");
        assert_names(case, host.get(&acme, &format!("/affiliates/{path}")), "affiliate");
        let as_parent = json!({ "parent": id }).to_string();
        assert_names(case, put_affiliate_raw(&host, &acme, "sub", &as_parent), "parent");
        refused(
            &host,
            &acme,
            case,
            with("affiliate", json!(id)).into(),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("affiliate"),
        );
        assert_names(case, host.get(&acme, &format!("/commissions?affiliate={path}")), "affiliate");
    }
    assert_eq!(host.get(&acme, "/affiliates/sub").0, StatusCode::NOT_FOUND);
    assert_nothing_written(&host, &acme);
}

#[test]
fn smaller_probe_findings_are_each_refused_with_a_clear_4xx() {
    let (_dir, data) = data_dir();
    let host = Host::start(&data);
    let acme = host.multi_event_with_aff1("acme");
    // A signed timestamp: `+` and the digits, signed as sent.
    let body = with("id", json!("bad-1"));
    let timestamp = format!("+{}", common::unix_now());
    let signature = {
        use base64::Engine as _;
        use hmac::Mac as _;
        let engine = base64::engine::general_purpose::STANDARD;
        let key = engine.decode(acme.webhook_secret.strip_prefix("whsec_").unwrap()).unwrap();
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
        mac.update(format!("msg-1.{timestamp}.{body}").as_bytes());
        format!("v1,{}", engine.encode(mac.finalize().into_bytes()))
    };
    let (status, refused) = answer(
        host.client
            .post(host.url("/v1/operators/acme/events"))
            .header("webhook-id", "msg-1")
            .header("webhook-timestamp", &timestamp)
            .header("webhook-signature", signature)
            .header("content-type", "application/json")
            .body(body)
            .send(),
    );
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{refused}");
    assert!(refused["message"].as_str().unwrap().contains("webhook-timestamp"), "{refused}");
    // Control characters in an operator's name.
    for name in ["Evil\u{0}Op", "Evil\u{1b}[31mOp"] {
        let body = json!({"id": "ctl", "name": name, "currency": "USD"}).to_string();
        assert_names(&format!("name {name:?}"), create_operator_raw(&host, &body), "name");
    }
    // A NUL after an affiliate filter, and a parameter given twice, on every query-parsing route.
    for (case, path, field) in [
        ("affiliate=aff1%00", "/commissions?affiliate=aff1%00", "affiliate"),
        ("statement affiliate=aff1%00", "/periods/2025-10/statement?affiliate=aff1%00", "affiliate"),
        ("limit twice", "/commissions?limit=2&limit=3", "limit"),
        ("affiliate twice", "/periods/2025-10/statement?affiliate=aff1&affiliate=aff2", "affiliate"),
    ] {
        assert_names(case, host.get(&acme, path), field);
    }
    let (status, upload) = answer(
        host.client
            .post(host.url("/v1/operators/acme/plugins?activate=false&activate=true"))
            .bearer_auth(&acme.api_key)
            .header("content-type", "application/wasm")
            .body(common::plugin_wasm("multi-event"))
            .send(),
    );
    assert_names("activate twice", (status, upload), "activate");
    assert_eq!(host.get(&acme, "/plugins/2/shadow-report").0, StatusCode::NOT_FOUND, "a refused upload was stored");
    assert_nothing_written(&host, &acme);
    let (status, _) = create_operator_raw(&host, &json!({"id": "ctl", "name": "Ctl", "currency": "USD"}).to_string());
    assert_eq!(status, StatusCode::CREATED, "a refused operator was stored");
}

#[test]
fn deal_and_config_sizes_are_capped_by_key() {
    let (_dir, data) = data_dir();
    let host = Host::start(&data);
    let acme = host.multi_event_with_aff1("acme");
    let terms = |pairs: Vec<(String, String)>| Value::Object(pairs.into_iter().map(|(k, v)| (k, json!(v))).collect());
    let numbered =
        |count: usize, value: &str| (0..count).map(|n| (format!("k{n}"), value.to_owned())).collect::<Vec<_>>();
    let long_key = "k".repeat(64);
    // At the caps: 100 keys, a 64-byte key, a 1,024-byte value, 15 KiB and more in all.
    for (case, deal) in [
        ("100 keys", terms(numbered(100, "v"))),
        ("a 64-byte key", terms(vec![(long_key.clone(), "v".into())])),
        ("15 values of 1,024 bytes", terms(numbered(15, &"v".repeat(1024)))),
    ] {
        let (status, answer) = put_affiliate_raw(&host, &acme, "capped", &json!({ "deal": deal }).to_string());
        assert_eq!(status, StatusCode::OK, "{case}: {answer}");
    }
    let long_key = format!("{long_key}k");
    for (case, deal, field) in [
        ("101 keys", terms(numbered(101, "v")), "deal".to_owned()),
        ("a 65-byte key", terms(vec![(long_key.clone(), "v".into())]), format!("deal.{long_key}")),
        ("a 1,025-byte value", terms(vec![("big".into(), "v".repeat(1025))]), "deal.big".to_owned()),
        ("over 16 KiB in all", terms(numbered(16, &"v".repeat(1024))), "deal".to_owned()),
    ] {
        let refused = put_affiliate_raw(&host, &acme, "over", &json!({ "deal": deal.clone() }).to_string());
        assert_names(case, refused, &field);
        let operator = json!({"id": "over", "name": "Over", "currency": "USD", "config": deal}).to_string();
        assert_names(case, create_operator_raw(&host, &operator), &field.replacen("deal", "config", 1));
    }
    assert_eq!(host.get(&acme, "/affiliates/over").0, StatusCode::NOT_FOUND, "a refused deal was stored");
    host.create_operator("over");
}

#[test]
fn two_affiliates_moved_under_each_other_at_once_never_make_a_loop() {
    let (_dir, data) = data_dir();
    let host = Host::start(&data);
    let acme = host.create_operator("acme");
    let put = |id: &str, parent: Option<&str>| {
        answer(
            host.client
                .put(host.url(&format!("/v1/operators/acme/affiliates/{id}")))
                .bearer_auth(&acme.api_key)
                .json(&json!({"parent": parent, "deal": {}}))
                .send(),
        )
    };
    // Each round, a fresh pair and the two moves sent at once: each alone is valid, both
    // together would make each the other's parent (a loop no chain walk can end).
    for round in 0..1000 {
        let (a, b) = (format!("a{round}"), format!("b{round}"));
        assert_eq!(put(&a, None).0, StatusCode::OK);
        assert_eq!(put(&b, None).0, StatusCode::OK);
        let (first, second) = std::thread::scope(|threads| {
            let first = threads.spawn(|| put(&a, Some(&b)));
            let second = threads.spawn(|| put(&b, Some(&a)));
            (first.join().unwrap(), second.join().unwrap())
        });
        let taken = [&first, &second].iter().filter(|(status, _)| *status == StatusCode::OK).count();
        assert_eq!(taken, 1, "round {round}: {first:?} {second:?}");
        let refused = if first.0 == StatusCode::OK { &second.1 } else { &first.1 };
        assert_eq!(refused["details"][0]["field"], "parent", "{refused}");
        assert!(refused["message"].as_str().unwrap_or_default().contains("loop"), "{refused}");
    }
}
