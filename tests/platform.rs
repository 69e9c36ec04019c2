//! What a platform team hosting many operators relies on: limits the admin sets per operator,
//! a rate per operator, credentials rotated without downtime, uploads refused before they can
//! hurt, and activation that never mixes two versions in one event.

use crate::common;

use std::sync::Arc;

use common::{ADMIN_TOKEN, Host, Operator, answer, data_dir, dec, paid, plugin_wasm};
use reqwest::StatusCode;
use serde_json::{Value, json};

fn admin(host: &Host, method: reqwest::Method, path: &str, body: Value) -> (StatusCode, Value) {
    answer(host.client.request(method, host.url(path)).bearer_auth(ADMIN_TOKEN).json(&body).send())
}

fn operator_with_plugin(host: &Host, id: &str) -> Operator {
    let operator = host.create_operator(id);
    host.install_plugin(&operator, "multi-event");
    host.put_affiliate(&operator, "master", None, json!({"override_percent": "10"}));
    host.put_affiliate(&operator, "aff1", Some("master"), json!({}));
    operator
}

#[test]
fn limits_set_by_the_admin_apply_to_that_operator_only() {
    let (_dir, data) = data_dir();
    let host = Host::start(&data);
    let tight = operator_with_plugin(&host, "tight");
    let roomy = operator_with_plugin(&host, "roomy");

    let (status, body) =
        admin(&host, reqwest::Method::PUT, "/v1/operators/tight/limits", json!({"fuel": 1000, "max_commissions": 1}));
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!((body["fuel"].as_u64(), body["max_commissions"].as_u64()), (Some(1000), Some(1)));
    let deposit = |id: &str| json!({"id": id, "type": "deposit", "customer": id, "amount": "50", "affiliate": "aff1"});
    let (_, starved) = host.post_events(&tight, &deposit("d-1"));
    assert_eq!(
        (starved["status"].as_str(), starved["failure"]["kind"].as_str()),
        (Some("failed"), Some("out_of_fuel")),
        "{starved}"
    );
    assert!(starved["failure"]["message"].as_str().unwrap().contains("1000"), "names the limit: {starved}");

    let (status, _) = admin(&host, reqwest::Method::PUT, "/v1/operators/tight/limits", json!({"max_commissions": 1}));
    assert_eq!(status, StatusCode::OK);
    let (_, capped) = host.post_events(&tight, &deposit("d-2"));
    assert_eq!(
        capped["failure"]["kind"], "invalid_result",
        "aff1 and its master: 2 commissions over a limit of 1: {capped}"
    );

    // The other operator keeps the defaults: both commissions paid.
    let (_, fine) = host.post_events(&roomy, &deposit("d-1"));
    assert_eq!(paid(&fine), [("aff1".into(), dec("10")), ("master".into(), dec("1"))]);

    for (limits, field) in [
        (json!({"fuel": 0}), "fuel"),
        (json!({"memory_bytes": 1u64 << 40}), "memory_bytes"),
        (json!({"fuel_": 5}), "fuel_"),
    ] {
        let (status, body) = admin(&host, reqwest::Method::PUT, "/v1/operators/tight/limits", limits);
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert!(body["message"].as_str().unwrap().contains(field), "{body}");
    }
    let (status, _) = answer(
        host.client
            .put(host.url("/v1/operators/tight/limits"))
            .bearer_auth(&tight.api_key)
            .json(&json!({"fuel": 1}))
            .send(),
    );
    assert_eq!(status, StatusCode::UNAUTHORIZED, "an operator cannot set its own limits");
}

#[test]
fn an_operator_over_its_rate_gets_429_and_nothing_is_written() {
    let (_dir, data) = data_dir();
    let host = Host::start(&data);
    let acme = operator_with_plugin(&host, "acme");
    let (status, body) =
        admin(&host, reqwest::Method::PUT, "/v1/operators/acme/limits", json!({"events_per_second": 5}));
    assert_eq!(status, StatusCode::OK, "{body}");

    let batch: Vec<Value> = (0..10)
        .map(|n| json!({"id": format!("b-{n}"), "type": "deposit", "customer": format!("c{n}"), "amount": "10", "affiliate": "aff1"}))
        .collect();
    let response =
        host.client.post(host.url("/v1/operators/acme/events")).bearer_auth(&acme.api_key).json(&batch).send().unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(response.headers().get("retry-after").is_some());
    let body: Value = response.json().unwrap();
    assert_eq!(body["error"], "rate_limited");
    assert_eq!(host.get(&acme, "/events/b-0").0, StatusCode::NOT_FOUND);

    // Within the rate, events go through; the refusals are counted for the platform team.
    let (status, body) = host.post_events(&acme, &json!(batch[..3]));
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(host.metrics().contains(r#"commission_host_rate_limited_total{operator="acme"} 1"#));
}

#[test]
fn rotated_credentials_stay_valid_for_their_grace_period_only() {
    let (_dir, data) = data_dir();
    let host = Host::start(&data);
    let acme = operator_with_plugin(&host, "acme");
    let commissions =
        |key: &str| answer(host.client.get(host.url("/v1/operators/acme/commissions")).bearer_auth(key).send()).0;

    let (status, rotated) = admin(
        &host,
        reqwest::Method::POST,
        "/v1/operators/acme/credentials/api_key/rotate",
        json!({"grace_seconds": 3600}),
    );
    assert_eq!(status, StatusCode::OK, "{rotated}");
    let new_key = rotated["value"].as_str().unwrap().to_owned();
    assert_ne!(new_key, acme.api_key);
    assert_eq!(
        (commissions(&acme.api_key), commissions(&new_key)),
        (StatusCode::OK, StatusCode::OK),
        "both during the grace"
    );

    let (_, again) = admin(
        &host,
        reqwest::Method::POST,
        "/v1/operators/acme/credentials/api_key/rotate",
        json!({"grace_seconds": 0}),
    );
    let newest = again["value"].as_str().unwrap().to_owned();
    assert_eq!(commissions(&new_key), StatusCode::UNAUTHORIZED, "no grace: the previous key stops at once");
    // And so does every earlier one (issue 20.3): a leaked key can be cut off before its grace ends.
    assert_eq!(commissions(&acme.api_key), StatusCode::UNAUTHORIZED, "no grace: the first key stops too");
    assert_eq!(commissions(&newest), StatusCode::OK);

    let (_, token) =
        admin(&host, reqwest::Method::POST, "/v1/operators/acme/credentials/postback_token/rotate", json!({}));
    let new_token = token["value"].as_str().unwrap();
    for (token, id) in [(acme.postback_token.as_str(), "p-old"), (new_token, "p-new")] {
        let (status, body) = answer(
            host.client
                .get(host.url(&format!("/postback/acme?token={token}&type=registration&id={id}&customer=c1")))
                .send(),
        );
        assert_eq!(status, StatusCode::OK, "{body}");
    }

    let (_, secret) = admin(
        &host,
        reqwest::Method::POST,
        "/v1/operators/acme/credentials/webhook_secret/rotate",
        json!({"grace_seconds": 60}),
    );
    let new_secret = secret["value"].as_str().unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    for (secret, id) in [(acme.webhook_secret.as_str(), "w-old"), (new_secret, "w-new")] {
        let body = format!(r#"{{"id":"{id}","type":"registration","customer":"c2"}}"#);
        let (status, answer) = answer(
            host.client
                .post(host.url("/v1/operators/acme/events"))
                .header("webhook-id", format!("msg_{id}"))
                .header("webhook-timestamp", now.to_string())
                .header("webhook-signature", common::sign_webhook(secret, &format!("msg_{id}"), now, &body))
                .body(body)
                .send(),
        );
        assert_eq!(status, StatusCode::OK, "signed with the {id} secret: {answer}");
    }
    let (status, _) = admin(&host, reqwest::Method::POST, "/v1/operators/acme/credentials/password/rotate", json!({}));
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
}

#[test]
fn upload_refuses_a_plugin_that_traps_on_its_smoke_run() {
    let (_dir, data) = data_dir();
    let host = Host::start(&data);
    let acme = host.create_operator("acme");
    let (status, body) = host.upload_plugin(&acme, &plugin_wasm("broken"), true);
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body["message"].as_str().unwrap().contains("smoke run"), "{body}");
    assert_eq!(host.install_plugin(&acme, "multi-event"), 1, "the refused upload took no version");
}

#[test]
fn activation_under_load_never_mixes_versions_and_loses_nothing() {
    let (_dir, data) = data_dir();
    let host = Arc::new(Host::start(&data));
    let acme = Arc::new(operator_with_plugin(&host, "acme"));
    let (status, candidate) = host.upload_plugin(&acme, &plugin_wasm("hostile"), false);
    assert_eq!(status, StatusCode::CREATED, "{candidate}");

    let senders: Vec<_> = (0..4)
        .map(|sender| {
            let (host, acme) = (host.clone(), acme.clone());
            std::thread::spawn(move || {
                (0..40)
                    .map(|n| {
                        let id = format!("s{sender}-{n}");
                        let (status, body) = host.post_events(
                            &acme,
                            &json!({"id": id, "type": "deposit", "customer": id, "amount": "20", "affiliate": "aff1"}),
                        );
                        assert_eq!(status, StatusCode::OK, "{body}");
                        id
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    while host.commissions(&acme, "").len() < 40 {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let (status, _) =
        answer(host.client.post(host.url("/v1/operators/acme/plugins/2/activate")).bearer_auth(&acme.api_key).send());
    assert_eq!(status, StatusCode::OK);
    let ids: Vec<String> = senders.into_iter().flat_map(|sender| sender.join().unwrap()).collect();

    // Version 1 pays 10 to aff1 and 1 to its master; version 2 pays a flat 1 to aff1 only.
    let mut by_version = [0, 0];
    for id in &ids {
        let (status, event) = host.get(&acme, &format!("/events/{id}"));
        assert_eq!(status, StatusCode::OK, "{id} lost");
        let version = event["plugin_version"].as_u64().unwrap();
        let expected = match version {
            1 => vec![("aff1".to_owned(), dec("10")), ("master".to_owned(), dec("1"))],
            2 => vec![("aff1".to_owned(), dec("1"))],
            other => panic!("version {other}"),
        };
        assert_eq!(paid(&event), expected, "{id} was evaluated by v{version} alone");
        assert!(event["commissions"].as_array().unwrap().iter().all(|c| c["plugin_version"] == version));
        by_version[version as usize - 1] += 1;
    }
    assert!(by_version[0] >= 20 && by_version[1] >= 1, "both versions served: {by_version:?}");
}
