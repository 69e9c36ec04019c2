//! Events in over HTTP, the operator's plugin decides, commissions out: the core path, end to
//! end, with amounts worked out by hand from the deal terms.

use crate::common;

use std::sync::Arc;

use common::{Host, Operator, amount, answer, data_dir, dec, paid};
use reqwest::StatusCode;
use serde_json::{Value, json};

fn multi_event_operator(host: &Host, id: &str) -> Operator {
    let operator = host.create_operator(id);
    host.install_plugin(&operator, "multi-event");
    operator
}

fn trade(id: &str, customer: &str, lots: &str) -> Value {
    json!({"id": id, "type": "trade", "customer": customer, "attributes": {"lots": lots}})
}

#[test]
fn the_glossary_example_pays_10_then_5_then_20_to_the_referring_affiliate() {
    let (_dir, data) = data_dir();
    let host = Host::start(&data);
    let acme = multi_event_operator(&host, "acme");
    host.put_affiliate(&acme, "aff1", None, json!({}));

    let deposit = host.accept(
        &acme,
        json!({
            "id": "d-1", "type": "deposit", "customer": "c1", "occurred_at": "2026-11-01T10:00:00Z",
            "amount": "100.00", "currency": "USD", "affiliate": "aff1", "attributes": {"method": "card"}
        }),
    );
    assert_eq!(paid(&deposit), [("aff1".into(), dec("10"))]);
    assert_eq!(deposit["commissions"][0]["explanation"], "first deposit: CPA 10 on deposit 100.00 USD");

    // 4 + 6 = 10 lots is not over 10; the third trade takes it to 10.5.
    assert_eq!(paid(&host.accept(&acme, trade("t-1", "c1", "4"))), [("aff1".into(), dec("5"))]);
    assert_eq!(paid(&host.accept(&acme, trade("t-2", "c1", "6"))), []);
    let third = host.accept(&acme, trade("t-3", "c1", "0.5"));
    assert_eq!(paid(&third), [("aff1".into(), dec("20"))]);
    assert_eq!(third["commissions"][0]["rule"], "volume-bonus");
    // Nothing is paid twice: a second deposit, more trades.
    assert_eq!(
        paid(&host.accept(&acme, json!({"id": "d-2", "type": "deposit", "customer": "c1", "amount": "50"}))),
        []
    );
    assert_eq!(paid(&host.accept(&acme, trade("t-4", "c1", "30"))), []);

    assert_eq!(host.totals(&acme), [("aff1".to_owned(), dec("35"))].into());
    let listed = host.commissions(&acme, "affiliate=aff1&customer=c1");
    let events: Vec<&str> = listed.iter().map(|c| c["event_id"].as_str().unwrap()).collect();
    assert_eq!(events, ["d-1", "t-1", "t-3"], "in ledger order");
    assert!(listed.iter().all(|c| c["plugin_version"] == 1 && c["customer"] == "c1"));

    // The event view explains the payout: the chain, the plugin version, the commission.
    let (status, view) = host.get(&acme, "/events/t-3");
    assert_eq!(status, StatusCode::OK);
    assert_eq!(view["status"], "accepted");
    assert_eq!(view["plugin_version"], 1);
    assert_eq!(view["attributed_to"], "aff1");
    assert_eq!(view["referral_chain"][0]["affiliate"], "aff1");
    assert_eq!(view["commissions"][0]["explanation"], "volume bonus: 20 as cumulative lots reached 10.5 (over 10)");
    assert!(view["fuel_used"].as_u64().unwrap() > 0);
    // The period filters use the time the event occurred.
    let november = host.commissions(&acme, "from=2026-11-01T00:00:00Z&to=2026-11-01T23:59:59Z");
    assert_eq!(november.len(), 1, "only the deposit carried occurred_at on Nov 1: {november:?}");
}

#[test]
fn deal_terms_and_a_parents_override_change_the_amounts() {
    let (_dir, data) = data_dir();
    let host = Host::start(&data);
    let acme = multi_event_operator(&host, "acme");
    host.put_affiliate(&acme, "master", None, json!({"override_percent": "10"}));
    host.put_affiliate(
        &acme,
        "sub",
        Some("master"),
        json!({"ftd_cpa": "40", "first_trade_cpa": 7.5, "volume_bonus": "25"}),
    );

    let deposit = host
        .accept(&acme, json!({"id": "d-1", "type": "deposit", "customer": "c9", "amount": "20", "affiliate": "sub"}));
    assert_eq!(paid(&deposit), [("sub".into(), dec("40")), ("master".into(), dec("4"))]);
    // One trade of 11 lots: the first-trade CPA and the volume bonus together.
    let big = host.accept(&acme, trade("t-1", "c9", "11"));
    assert_eq!(
        paid(&big),
        [
            ("sub".into(), dec("7.5")),
            ("sub".into(), dec("25")),
            ("master".into(), dec("0.75")),
            ("master".into(), dec("2.5"))
        ]
    );
    assert_eq!(host.totals(&acme), [("master".to_owned(), dec("7.25")), ("sub".to_owned(), dec("72.5"))].into());
    assert_eq!(host.commissions(&acme, "affiliate=master").len(), 3);
}

#[test]
fn the_first_named_affiliate_keeps_the_customer() {
    let (_dir, data) = data_dir();
    let host = Host::start(&data);
    let acme = multi_event_operator(&host, "acme");
    host.put_affiliate(&acme, "aff1", None, json!({}));
    host.put_affiliate(&acme, "aff2", None, json!({}));

    let unbound = host.accept(&acme, json!({"id": "r-1", "type": "registration", "customer": "c1"}));
    assert_eq!(unbound["attributed_to"], Value::Null);
    assert_eq!(paid(&unbound), []);
    let bound = host
        .accept(&acme, json!({"id": "d-1", "type": "deposit", "customer": "c1", "amount": "30", "affiliate": "aff1"}));
    assert_eq!(paid(&bound), [("aff1".into(), dec("10"))]);
    let later = host.accept(
        &acme,
        json!({"id": "t-1", "type": "trade", "customer": "c1", "affiliate": "aff2", "attributes": {"lots": "1"}}),
    );
    assert_eq!(paid(&later), [("aff1".into(), dec("5"))], "aff2 came too late");
    let (_, view) = host.get(&acme, "/events/r-1");
    assert_eq!(view["status"], "accepted");
    assert_eq!(view["commissions"], json!([]));
}

#[test]
fn the_same_postback_sent_50_times_at_once_pays_once() {
    let (_dir, data) = data_dir();
    let host = Arc::new(Host::start(&data));
    let acme = Arc::new(multi_event_operator(&host, "acme"));
    host.put_affiliate(&acme, "aff1", None, json!({}));

    let query = "type=deposit&id=pb-1&customer=c1&amount=100.00&currency=USD&affiliate=aff1&click_id=abc";
    let senders: Vec<_> = (0..50)
        .map(|_| {
            let (host, acme) = (host.clone(), acme.clone());
            std::thread::spawn(move || host.postback(&acme, query))
        })
        .collect();
    let answers: Vec<(StatusCode, Value)> = senders.into_iter().map(|sender| sender.join().unwrap()).collect();
    assert!(answers.iter().all(|(status, _)| *status == StatusCode::OK), "{answers:?}");
    let accepted = answers.iter().filter(|(_, body)| body["status"] == "accepted").count();
    let duplicates = answers.iter().filter(|(_, body)| body["status"] == "duplicate").count();
    assert_eq!((accepted, duplicates), (1, 49));
    // A duplicate answers with what the original paid.
    assert!(answers.iter().all(|(_, body)| paid(body) == [("aff1".into(), dec("10"))]));
    assert_eq!(host.commissions(&acme, "").len(), 1);
    let (_, view) = host.get(&acme, "/events/pb-1");
    assert_eq!(
        view["attributes"],
        json!({"click_id": "abc"}),
        "unknown parameters become attributes; the token does not"
    );
}

/// Forty customers' first deposits at once, through one affiliate on CPA tiers: every
/// evaluation reads and writes the affiliate's count of the month, so commits grouped together
/// find it changed under them and are evaluated again. Each customer is still paid once, at the
/// rate of its place in the count: 10 at 100, then 30 at 150.
#[test]
fn concurrent_commits_on_shared_state_count_every_customer_once() {
    let (_dir, data) = data_dir();
    let host = Arc::new(Host::start(&data));
    let casino = Arc::new(host.create_operator("casino"));
    host.install_plugin(&casino, "cpa");
    host.put_affiliate(&casino, "tiered", None, json!({"tiers": "1:100,11:150"}));

    let senders: Vec<_> = (0..40)
        .map(|n| {
            let (host, casino) = (host.clone(), casino.clone());
            std::thread::spawn(move || {
                host.post_events(
                    &casino,
                    &json!({"id": format!("ftd-{n}"), "type": "deposit", "customer": format!("k{n}"), "amount": "50",
                            "affiliate": "tiered", "occurred_at": "2025-11-10T12:00:00Z"}),
                )
            })
        })
        .collect();
    for sender in senders {
        let (status, body) = sender.join().unwrap();
        assert_eq!((status, body["status"].as_str()), (StatusCode::OK, Some("accepted")), "{body}");
    }
    let mut rates: Vec<_> = host.commissions(&casino, "").iter().map(|c| amount(&c["amount"])).collect();
    rates.sort();
    assert_eq!(rates, [vec![dec("100"); 10], vec![dec("150"); 30]].concat());
    common::assert_verifies(&host, &casino);

    // The committer's metrics count every commit it was given: the forty, and any that found the
    // count changed and came back evaluated again.
    let metrics = host.metrics();
    let reading = |name: &str| -> f64 {
        let line =
            metrics.lines().find(|line| line.starts_with(name)).unwrap_or_else(|| panic!("{name} in\n{metrics}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    let (commits, groups) = (
        reading("commission_host_ledger_commit_group_events_sum "),
        reading("commission_host_ledger_commit_group_events_count "),
    );
    assert!(commits >= 40.0 && (1.0..=commits).contains(&groups), "{commits} commits in {groups} groups");
}

/// Every event counts itself in one state key that all customers share (the hostile plugin's
/// `contend`, after some work): a hot key. Under load from many senders, every event must be
/// answered and counted once, none refused after so many tries.
#[test]
fn a_hot_state_key_under_load_answers_every_event() {
    let (_dir, data) = data_dir();
    let host = Arc::new(Host::start(&data));
    let casino = Arc::new(host.create_operator("casino"));
    host.install_plugin(&casino, "hostile");
    host.put_affiliate(&casino, "aff1", None, json!({}));

    let senders: Vec<_> = (0..32)
        .map(|sender| {
            let (host, casino) = (host.clone(), casino.clone());
            std::thread::spawn(move || {
                (0..16)
                    .map(|n| {
                        host.post_events(
                            &casino,
                            &json!({"id": format!("e-{sender}-{n}"), "type": "deposit", "customer": format!("k{sender}-{n}"),
                                    "affiliate": "aff1", "attributes": {"attack": "contend", "spin": "2000000"}}),
                        )
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    for sender in senders {
        for (status, body) in sender.join().unwrap() {
            assert_eq!((status, body["status"].as_str()), (StatusCode::OK, Some("accepted")), "{body}");
        }
    }
    assert_eq!(host.commissions(&casino, "").len(), 32 * 16);
    common::assert_verifies(&host, &casino);
}

#[test]
fn an_id_reused_with_other_content_is_409_and_changes_nothing() {
    let (_dir, data) = data_dir();
    let host = Host::start(&data);
    let acme = multi_event_operator(&host, "acme");
    host.put_affiliate(&acme, "aff1", None, json!({}));
    host.accept(&acme, json!({"id": "d-1", "type": "deposit", "customer": "c1", "amount": "100", "affiliate": "aff1"}));

    // The same content written differently is the same event.
    let (status, same) = host.post_events(&acme, &json!({"id": "d-1", "type": "deposit", "customer": "c1", "amount": "100.00", "currency": "USD", "affiliate": "aff1"}));
    assert_eq!((status, same["status"].as_str()), (StatusCode::OK, Some("duplicate")), "{same}");

    let (status, body) = host.post_events(
        &acme,
        &json!({"id": "d-1", "type": "deposit", "customer": "c1", "amount": "200", "affiliate": "aff1"}),
    );
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"], "event_id_conflict");
    assert!(body["message"].as_str().unwrap().contains("d-1"));

    // In a batch, the conflict refuses the whole batch.
    let (status, _) = host.post_events(
        &acme,
        &json!([
            {"id": "d-2", "type": "deposit", "customer": "c2", "amount": "100", "affiliate": "aff1"},
            {"id": "d-1", "type": "deposit", "customer": "c1", "amount": "300"}
        ]),
    );
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(host.get(&acme, "/events/d-2").0, StatusCode::NOT_FOUND);
    let (_, stored) = host.get(&acme, "/events/d-1");
    assert_eq!(stored["amount"], "100");
    assert_eq!(host.commissions(&acme, "").len(), 1);
}

#[test]
fn a_bad_batch_is_refused_whole_with_the_field_named() {
    let (_dir, data) = data_dir();
    let host = Host::start(&data);
    let acme = multi_event_operator(&host, "acme");
    host.put_affiliate(&acme, "aff1", None, json!({}));
    let good = json!({"id": "ok-1", "type": "deposit", "customer": "c1", "amount": "100", "affiliate": "aff1"});

    let cases = [
        (json!({"id": "b", "type": "deposit", "customer": "c2", "amount": "12,50"}), "amount", "not a decimal amount"),
        (json!({"id": "b", "type": "deposit", "amount": "10"}), "customer", "required"),
        (
            json!({"id": "b", "type": "deposit", "customer": "c2", "amount": "10", "currency": "XYZ"}),
            "currency",
            "ISO 4217",
        ),
        (json!({"id": "b", "type": "deposit", "customer": "c2", "amount": 10.5}), "amount", "expected a string"),
        (json!({"id": "b", "type": "deposit", "customer": "c2", "amount": "1e400"}), "amount", "not a decimal amount"),
        (
            json!({"id": "b", "type": "deposit", "customer": "c2", "amount": "0.00000000000000000000000000001"}),
            "amount",
            "28 fraction digits",
        ),
        (
            json!({"id": "b", "type": "deposit", "customer": "c2", "affiliate": "nobody"}),
            "affiliate",
            "unknown affiliate",
        ),
        (json!({"id": "b", "type": "deposit", "customer": "c2", "amout": "10"}), "amout", "unknown field"),
        (
            json!({"id": "b", "type": "deposit", "customer": "c2", "occurred_at": "yesterday"}),
            "occurred_at",
            "RFC 3339",
        ),
    ];
    for (bad, field, problem) in cases {
        let (status, body) = host.post_events(&acme, &json!([good, bad]));
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {body}");
        assert_eq!(body["error"], "invalid_event");
        let detail = &body["details"][0];
        assert_eq!((detail["index"].as_u64(), detail["field"].as_str()), (Some(1), Some(field)), "{body}");
        assert!(detail["problem"].as_str().unwrap().contains(problem), "{body}");
    }

    let (status, body) = answer(
        host.client
            .post(host.url("/v1/operators/acme/events"))
            .bearer_auth(&acme.api_key)
            .body(r#"[{"id": "ok-1", "type": "deposit""#)
            .send(),
    );
    assert_eq!((status, body["error"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_json")), "{body}");

    let huge = json!([good, {"id": "big", "type": "x", "customer": "c", "attributes": {"blob": "x".repeat(2 << 20)}}]);
    let (status, body) = host.post_events(&acme, &huge);
    assert_eq!((status, body["error"].as_str()), (StatusCode::PAYLOAD_TOO_LARGE, Some("body_too_large")), "{body}");

    let (status, body) = host.postback(&acme, "type=deposit&id=p-1&customer=c1&amount=ten");
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["details"][0]["field"], "amount");

    assert_eq!(host.get(&acme, "/events/ok-1").0, StatusCode::NOT_FOUND, "nothing of a refused batch is written");
    assert_eq!(host.get(&acme, "/events/p-1").0, StatusCode::NOT_FOUND);
    assert!(host.commissions(&acme, "").is_empty());
}

#[test]
fn credentials_are_checked_on_every_route_and_never_cross_operators() {
    let (_dir, data) = data_dir();
    let host = Host::start(&data);
    let acme = multi_event_operator(&host, "acme");
    let globex = multi_event_operator(&host, "globex");
    host.put_affiliate(&acme, "aff1", None, json!({}));
    let event = json!({"id": "e-1", "type": "deposit", "customer": "c1", "amount": "10", "affiliate": "aff1"});
    let client = &host.client;

    let (status, _) = answer(client.post(host.url("/v1/operators/acme/events")).json(&event).send());
    assert_eq!(status, StatusCode::UNAUTHORIZED, "no credentials");
    let (status, _) =
        answer(client.post(host.url("/v1/operators/acme/events")).bearer_auth("chk_wrong").json(&event).send());
    assert_eq!(status, StatusCode::UNAUTHORIZED, "a wrong key");
    let requests = [
        client.post(host.url("/v1/operators/acme/events")).json(&event),
        client.get(host.url("/v1/operators/acme/commissions")),
        client.get(host.url("/v1/operators/acme/events/e-1")),
        client.put(host.url("/v1/operators/acme/affiliates/aff9")).json(&json!({})),
        client.get(host.url("/v1/operators/acme/affiliates/aff1")),
        client.post(host.url("/v1/operators/acme/events/retry-failed")),
        client.post(host.url("/v1/operators/acme/plugins/1/activate")),
        client.post(host.url("/v1/operators/acme/plugins")).header("content-type", "application/wasm").body(vec![0u8]),
        client.post(host.url("/v1/operators/acme/plugins/1/replay")),
        client.post(host.url("/v1/operators/acme/verify")),
        client.put(host.url("/v1/operators/acme/limits")).json(&json!({"fuel": 1})),
        client.post(host.url("/v1/operators/acme/credentials/api_key/rotate")),
        client.get(host.url("/metrics")),
    ];
    for request in requests {
        let (status, body) = answer(request.bearer_auth(&globex.api_key).send());
        assert_eq!(status, StatusCode::UNAUTHORIZED, "globex's key on acme's data: {body}");
    }
    let (status, _) = answer(
        client
            .get(host.url(&format!("/postback/acme?token={}&type=deposit&id=e-2&customer=c1", globex.postback_token)))
            .send(),
    );
    assert_eq!(status, StatusCode::UNAUTHORIZED, "globex's postback token for acme");
    let (status, _) = answer(client.get(host.url("/postback/acme?type=deposit&id=e-2&customer=c1")).send());
    assert_eq!(status, StatusCode::UNAUTHORIZED, "no postback token");
    let (status, _) = answer(
        client
            .post(host.url("/v1/operators"))
            .bearer_auth(&acme.api_key)
            .json(&json!({"id": "x", "name": "x", "currency": "USD"}))
            .send(),
    );
    assert_eq!(status, StatusCode::UNAUTHORIZED, "an operator key is not the admin token");

    assert_eq!(host.get(&acme, "/events/e-1").0, StatusCode::NOT_FOUND, "no refused request wrote anything");
    assert_eq!(host.get(&acme, "/affiliates/aff9").0, StatusCode::NOT_FOUND);
    // The admin reaches every operator.
    let (status, _) =
        answer(client.get(host.url("/v1/operators/acme/commissions")).bearer_auth(common::ADMIN_TOKEN).send());
    assert_eq!(status, StatusCode::OK);
}

#[test]
fn a_standard_webhooks_signature_authenticates_and_a_tampered_one_does_not() {
    let (_dir, data) = data_dir();
    let host = Host::start(&data);
    let acme = multi_event_operator(&host, "acme");
    host.put_affiliate(&acme, "aff1", None, json!({}));
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let body = r#"{"id":"w-1","type":"deposit","customer":"c1","amount":"100.00","currency":"USD","affiliate":"aff1"}"#;
    let send = |body: &str, timestamp: i64, signature: &str| {
        answer(
            host.client
                .post(host.url("/v1/operators/acme/events"))
                .header("webhook-id", "msg_1")
                .header("webhook-timestamp", timestamp.to_string())
                .header("webhook-signature", signature)
                .body(body.to_owned())
                .send(),
        )
    };

    let tampered = body.replace("100.00", "900.00");
    let (status, refused) = send(&tampered, now, &common::sign_webhook(&acme.webhook_secret, "msg_1", now, body));
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{refused}");
    assert!(refused["message"].as_str().unwrap().contains("signature"));
    let stale = now - 600;
    let (status, _) = send(body, stale, &common::sign_webhook(&acme.webhook_secret, "msg_1", stale, body));
    assert_eq!(status, StatusCode::UNAUTHORIZED, "outside the 5-minute tolerance");
    assert_eq!(host.get(&acme, "/events/w-1").0, StatusCode::NOT_FOUND);

    let (status, accepted) = send(
        body,
        now,
        &format!("v1,bm90IHRoaXMgb25l {}", common::sign_webhook(&acme.webhook_secret, "msg_1", now, body)),
    );
    assert_eq!(status, StatusCode::OK, "{accepted}");
    assert_eq!(paid(&accepted), [("aff1".into(), dec("10"))]);
    assert_eq!(amount(&host.get(&acme, "/events/w-1").1["amount"]), dec("100"));
}
