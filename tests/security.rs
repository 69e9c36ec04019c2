//! Credentials and signatures: webhook timestamps outside the tolerance are refused, a replayed
//! signed webhook pays nothing again, the admin routes refuse everyone but the admin, and no
//! key, token or secret reaches the log, at the most verbose level, after every route ran.

mod common;

use common::{ADMIN_TOKEN, Host, answer, data_dir, dec, paid, plugin_wasm, sign_webhook, unix_now};
use reqwest::StatusCode;
use reqwest::blocking::RequestBuilder;
use serde_json::{Value, json};

#[test]
fn webhook_timestamps_outside_the_tolerance_are_refused_and_write_nothing() {
    let (_dir, data) = data_dir();
    let host = Host::start(&data);
    let acme = host.multi_event_with_aff1("acme");
    let body =
        json!({"id": "d1", "type": "deposit", "customer": "c1", "amount": "50", "affiliate": "aff1"}).to_string();
    // The tolerance is 5 minutes either way (Standard Webhooks' default).
    for (timestamp, why) in [(unix_now() - 400, "6 minutes old"), (unix_now() + 400, "6 minutes ahead"), (0, "1970")] {
        let (status, answer) =
            answer(host.signed_webhook("acme", &acme.webhook_secret, "msg_1", timestamp, &body).send());
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{why}: {answer}");
        assert!(answer["message"].as_str().unwrap().contains("tolerance"), "{why}: {answer}");
    }
    for (timestamp, why) in [("soon", "not a number"), ("99999999999999999999", "past i64")] {
        let (status, answer) = answer(
            host.client
                .post(host.url("/v1/operators/acme/events"))
                .header("webhook-id", "msg_1")
                .header("webhook-timestamp", timestamp)
                .header("webhook-signature", sign_webhook(&acme.webhook_secret, "msg_1", 0, &body))
                .body(body.clone())
                .send(),
        );
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{why}: {answer}");
    }
    assert_eq!(host.get(&acme, "/events/d1").0, StatusCode::NOT_FOUND, "a refused webhook wrote its event");

    // Inside the tolerance, it goes through.
    let (status, answer) =
        answer(host.signed_webhook("acme", &acme.webhook_secret, "msg_1", unix_now() - 200, &body).send());
    assert_eq!((status, answer["status"].as_str()), (StatusCode::OK, Some("accepted")), "{answer}");
}

/// A replay of a signed webhook (same id, timestamp, body, signature), inside the tolerance, is
/// the sender's retry or an attacker's copy; either way it is the same event, answered as a
/// duplicate with what was paid the first time, and pays nothing more. Outside the tolerance it
/// is refused. Re-signed under another webhook id, it is still the same event id: a duplicate.
#[test]
fn a_replayed_signed_webhook_is_a_duplicate_and_pays_nothing_again() {
    let (_dir, data) = data_dir();
    let host = Host::start(&data);
    let acme = host.multi_event_with_aff1("acme");
    let body =
        json!({"id": "d1", "type": "deposit", "customer": "c1", "amount": "50", "affiliate": "aff1"}).to_string();
    let at = unix_now();
    let first = host.signed_webhook("acme", &acme.webhook_secret, "msg_1", at, &body);
    let replay = first.try_clone().unwrap();
    let (status, first) = answer(first.send());
    assert_eq!((status, first["status"].as_str()), (StatusCode::OK, Some("accepted")), "{first}");
    assert_eq!(paid(&first), [("aff1".into(), dec("10"))]);

    let (status, again) = answer(replay.send());
    assert_eq!((status, again["status"].as_str()), (StatusCode::OK, Some("duplicate")), "{again}");
    assert_eq!(again["commissions"], first["commissions"], "the answer shows what was paid the first time");
    let (status, other_id) = answer(host.signed_webhook("acme", &acme.webhook_secret, "msg_2", at, &body).send());
    assert_eq!((status, other_id["status"].as_str()), (StatusCode::OK, Some("duplicate")), "{other_id}");
    assert_eq!(host.totals(&acme), [("aff1".to_owned(), dec("10"))].into(), "paid once");

    // A signature from one operator's secret does not open another's door.
    let globex = host.multi_event_with_aff1("globex");
    let (status, answer) = answer(host.signed_webhook("globex", &acme.webhook_secret, "msg_3", at, &body).send());
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{answer}");
    assert_eq!(host.commissions(&globex, ""), Vec::<Value>::new());
}

#[test]
fn the_admin_routes_refuse_everyone_but_the_admin() {
    let (_dir, data) = data_dir();
    let host = Host::start(&data);
    let acme = host.multi_event_with_aff1("acme");
    let wrong_tokens: [(&str, Option<&str>); 4] = [
        ("no token", None),
        ("the operator's key", Some(&acme.api_key)),
        ("a near miss", Some("test-admin-token-0123456788")),
        ("the admin token with a suffix", Some("test-admin-token-0123456789x")),
    ];
    for (who, token) in wrong_tokens {
        let with = |request: RequestBuilder| match token {
            Some(token) => request.bearer_auth(token),
            None => request,
        };
        let attempts = [
            (
                "create an operator",
                with(host.client.post(host.url("/v1/operators")))
                    .json(&json!({"id": "evil", "name": "Evil", "currency": "USD"})),
            ),
            (
                "set limits",
                with(host.client.put(host.url("/v1/operators/acme/limits"))).json(&json!({"events_per_second": 1})),
            ),
            ("rotate a key", with(host.client.post(host.url("/v1/operators/acme/credentials/api_key/rotate")))),
            ("read metrics", with(host.client.get(host.url("/metrics")))),
        ];
        for (what, request) in attempts {
            let (status, body) = answer(request.send());
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{who} could {what}: {body}");
        }
    }
    // Nothing changed: no operator was made, the key still works, no limit was set.
    let (status, _) = answer(host.client.post(host.url("/v1/operators/evil/verify")).bearer_auth(ADMIN_TOKEN).send());
    assert_eq!(status, StatusCode::NOT_FOUND);
    for n in 0..3 {
        host.accept(
            &acme,
            json!({"id": format!("d{n}"), "type": "deposit", "customer": format!("c{n}"), "amount": "1"}),
        );
    }
}

/// Every route, with the credentials it takes; then the log, at trace level for every crate,
/// holds none of them.
#[test]
fn no_key_token_or_secret_reaches_the_log() {
    let (_dir, data) = data_dir();
    let host = Host::start_env(&data, &[], &[("RUST_LOG", "trace")]);
    let acme = host.multi_event_with_aff1("acme");
    let op = |path: &str| host.url(&format!("/v1/operators/acme{path}"));
    let key = acme.api_key.clone();
    let mut secrets = vec![ADMIN_TOKEN.to_owned(), acme.api_key.clone(), acme.postback_token.clone()];
    secrets.push(acme.webhook_secret.clone());
    secrets.push(acme.webhook_secret.strip_prefix("whsec_").unwrap().to_owned());

    let expect = |what: &str, request: RequestBuilder, status: StatusCode| -> Value {
        let (got, body) = answer(request.send());
        assert_eq!(got, status, "{what}: {body}");
        body
    };
    let ok = StatusCode::OK;
    assert_eq!(host.client.get(host.url("/healthz")).send().unwrap().status(), ok);
    assert_eq!(host.client.get(host.url("/readyz")).send().unwrap().status(), ok);
    host.metrics();
    host.put_affiliate(&acme, "sub", Some("aff1"), json!({"ftd_cpa": "40"}));
    expect("get affiliate", host.client.get(op("/affiliates/sub")).bearer_auth(&key), ok);
    let (status, _) = host.upload_plugin(&acme, &plugin_wasm("multi-event"), false);
    assert_eq!(status, StatusCode::CREATED);
    expect("activate", host.client.post(op("/plugins/2/activate")).bearer_auth(&key), ok);
    let deposit = json!({"id": "d1", "type": "deposit", "customer": "c1", "amount": "50", "affiliate": "sub", "occurred_at": "2026-10-05T00:00:00Z"});
    host.accept(&acme, deposit);
    let body = json!({"id": "t1", "type": "trade", "customer": "c1", "attributes": {"lots": "11"}}).to_string();
    expect("signed webhook", host.signed_webhook("acme", &acme.webhook_secret, "msg_t1", unix_now(), &body), ok);
    let bad = host
        .client
        .post(op("/events"))
        .header("webhook-id", "msg_x")
        .header("webhook-timestamp", unix_now().to_string())
        .header("webhook-signature", format!("v1,{}", acme.api_key))
        .body(body.clone());
    expect("badly signed webhook", bad, StatusCode::UNAUTHORIZED);
    let (status, _) = host.postback(&acme, "id=p1&type=deposit&customer=c2&amount=20&affiliate=aff1");
    assert_eq!(status, ok);
    let (status, _) = answer(
        host.client
            .get(host.url(&format!("/postback/acme?token={}x&id=p2&type=deposit&customer=c3", acme.postback_token)))
            .send(),
    );
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    expect("wrong key", host.client.get(op("/commissions")).bearer_auth(format!("{key}x")), StatusCode::UNAUTHORIZED);
    expect("get event", host.client.get(op("/events/d1")).bearer_auth(&key), ok);
    let listed = expect("commissions", host.client.get(op("/commissions")).bearer_auth(&key), ok);
    let first = listed["commissions"][0]["id"].as_str().unwrap().to_owned();
    expect("commission", host.client.get(op(&format!("/commissions/{first}"))).bearer_auth(&key), ok);
    expect(
        "approve",
        host.client
            .post(op(&format!("/commissions/{first}/status")))
            .bearer_auth(&key)
            .json(&json!({"status": "approved", "note": "ok"})),
        ok,
    );
    expect("retry failed", host.client.post(op("/events/retry-failed")).bearer_auth(&key), ok);
    expect("close period", host.client.post(op("/periods/2026-10/close")).bearer_auth(&key), ok);
    expect("verify", host.client.post(op("/verify")).bearer_auth(&key), ok);
    expect("replay", host.client.post(op("/plugins/1/replay")).bearer_auth(&key), ok);
    expect("shadow", host.client.put(op("/shadow")).bearer_auth(&key).json(&json!({"version": 1})), ok);
    expect("shadow report", host.client.get(op("/plugins/1/shadow-report")).bearer_auth(&key), ok);
    expect(
        "fx rates",
        host.client.put(op("/fx-rates")).bearer_auth(&key).json(&json!({"rates": {"EUR": "1.1"}, "source": "test"})),
        ok,
    );
    expect(
        "limits",
        host.client.put(op("/limits")).bearer_auth(ADMIN_TOKEN).json(&json!({"events_per_second": 1000})),
        ok,
    );
    for kind in ["api_key", "postback_token", "webhook_secret"] {
        let rotated = expect(
            "rotate",
            host.client
                .post(op(&format!("/credentials/{kind}/rotate")))
                .bearer_auth(ADMIN_TOKEN)
                .json(&json!({"grace_seconds": 60})),
            ok,
        );
        let value = rotated["value"].as_str().unwrap().to_owned();
        if let Some(key) = value.strip_prefix("whsec_") {
            secrets.push(key.to_owned());
        }
        secrets.push(value);
    }
    expect("unknown route", host.client.get(host.url("/nowhere")).bearer_auth(&key), StatusCode::NOT_FOUND);

    let log = host.log();
    assert!(log.lines().count() > 20, "the log is at trace level:\n{log}");
    for secret in &secrets {
        assert!(!log.contains(secret.as_str()), "a secret ({}...) is in the log", &secret[..6]);
    }
}
