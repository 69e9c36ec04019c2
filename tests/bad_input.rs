//! The catalogue of bad input: every field of an event with the wrong type, size or encoding,
//! extreme decimals, duplicate keys, oversized headers, slow headers and thousands of idle
//! connections. Each gets a clear 4xx (JSON naming the field and the problem) or, for the
//! slow and the idle, a timeout; the host stays up, within a memory bound, and writes nothing.

mod common;

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
    let host = Host::start(&data);
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
