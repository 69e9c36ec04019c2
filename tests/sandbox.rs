//! An operator's plugin is untrusted code: whatever it does, the event is kept, the reason is
//! recorded, and the host and other operators carry on.

use crate::common;

use std::sync::Arc;

use common::{Host, data_dir, dec, paid, plugin_wasm};
use reqwest::StatusCode;
use serde_json::json;

#[test]
fn a_looping_allocating_recursing_or_trapping_plugin_fails_only_its_event() {
    let (_dir, data) = data_dir();
    let host = Arc::new(Host::start(&data));
    let evil = host.create_operator("evil");
    host.install_plugin(&evil, "hostile");
    host.put_affiliate(&evil, "aff1", None, json!({}));
    let acme = Arc::new(host.create_operator("acme"));
    host.install_plugin(&acme, "multi-event");
    host.put_affiliate(&acme, "aff1", None, json!({}));

    // Another operator keeps being served, correctly, while the hostile plugin runs.
    let neighbour = {
        let (host, acme) = (host.clone(), acme.clone());
        std::thread::spawn(move || {
            for n in 0..40 {
                let answer = host.accept(&acme, json!({"id": format!("d-{n}"), "type": "deposit", "customer": format!("c{n}"), "amount": "100", "affiliate": "aff1"}));
                assert_eq!(paid(&answer), [("aff1".into(), dec("10"))]);
            }
        })
    };

    let attacks = [
        ("loop", "out_of_fuel", "fuel"),
        ("allocate", "out_of_memory", "over the limit"),
        ("recurse", "stack_overflow", "stack"),
        ("trap", "trap", "trapped"),
        ("fail", "rule_error", "rule failed on purpose"),
        ("flood", "invalid_result", "at most 100 per event"),
        ("hoard", "limit_exceeded", "state writes"),
    ];
    for (attack, kind, reason) in attacks {
        let (status, answer) = host.post_events(&evil, &json!({"id": attack, "type": "deposit", "customer": "c1", "affiliate": "aff1", "attributes": {"attack": attack}}));
        assert_eq!(status, StatusCode::OK, "{answer}");
        assert_eq!(answer["status"], "failed", "{answer}");
        assert_eq!(answer["failure"]["kind"], kind, "{answer}");
        assert!(answer["failure"]["message"].as_str().unwrap().contains(reason), "{answer}");
        assert_eq!(paid(&answer), []);
        let (_, stored) = host.get(&evil, &format!("/events/{attack}"));
        assert_eq!((stored["status"].as_str(), stored["failure"]["kind"].as_str()), (Some("failed"), Some(kind)));
    }
    // Many looping events at once fill only the hostile operator's own evaluation slots.
    let loops: Vec<_> = (0..8)
        .map(|n| {
            let host = host.clone();
            let evil = evil.clone();
            std::thread::spawn(move || {
                let (_, answer) = host.post_events(&evil, &json!({"id": format!("loop-{n}"), "type": "x", "customer": format!("l{n}"), "affiliate": "aff1", "attributes": {"attack": "loop"}}));
                assert_eq!(answer["failure"]["kind"], "out_of_fuel", "{answer}");
            })
        })
        .collect();
    neighbour.join().expect("the other operator was served throughout");
    loops.into_iter().for_each(|sender| sender.join().unwrap());

    // A plugin that logs without end is cut at the log limit, and its event still succeeds.
    let chatter = host.accept(&evil, json!({"id": "chatter", "type": "x", "customer": "c2", "affiliate": "aff1", "attributes": {"attack": "chatter"}}));
    assert_eq!(paid(&chatter), [("aff1".into(), dec("1"))]);
    let (_, stored) = host.get(&evil, "/events/chatter");
    let logs = stored["logs"].as_array().unwrap();
    assert_eq!(logs.len(), 101, "100 lines and a note of the rest");
    assert_eq!(logs[100]["message"], "9900 more log lines dropped (limit 100)");

    // The same plugin, fresh for the next event, behaves: no poisoned instance.
    let calm = host.accept(&evil, json!({"id": "calm", "type": "deposit", "customer": "c1"}));
    assert_eq!(paid(&calm), [("aff1".into(), dec("1"))]);
    // Clawing the same commission back twice in one answer is refused at once, not retried.
    let (_, twice) = host.post_events(&evil, &json!({"id": "twice", "type": "chargeback", "customer": "c1", "attributes": {"attack": "clawback-twice", "of": "calm"}}));
    assert_eq!(
        (twice["status"].as_str(), twice["failure"]["kind"].as_str()),
        (Some("failed"), Some("invalid_result")),
        "{twice}"
    );
    assert!(twice["failure"]["message"].as_str().unwrap().contains("which an earlier one reverses already"), "{twice}");
    assert_eq!((host.commissions(&evil, "").len(), host.commissions(&acme, "").len()), (2, 40));
    assert_eq!(host.client.get(host.url("/healthz")).send().unwrap().status(), StatusCode::OK);

    // The platform team sees it in the metrics.
    let metrics = host.metrics();
    assert!(
        metrics.contains(r#"commission_host_plugin_failures_total{operator="evil",kind="out_of_fuel"} 9"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"commission_host_events_total{operator="acme",kind="deposit",status="accepted"} 40"#),
        "{metrics}"
    );
}

/// Instances are pooled and their memory is reset between events, not unmapped: whatever the
/// reset, each event must see the component's initial memory, or a replay could pay otherwise.
#[test]
fn every_event_starts_from_the_plugins_initial_memory() {
    let (_dir, data) = data_dir();
    let host = Arc::new(Host::start(&data));
    let evil = Arc::new(host.create_operator("evil"));
    host.install_plugin(&evil, "hostile");
    host.put_affiliate(&evil, "aff1", None, json!({}));

    let senders: Vec<_> = (0..4)
        .map(|sender| {
            let (host, evil) = (host.clone(), evil.clone());
            std::thread::spawn(move || {
                for n in 0..25 {
                    let id = format!("r-{sender}-{n}");
                    let answer = host.accept(&evil, json!({"id": id, "type": "x", "customer": id, "affiliate": "aff1", "attributes": {"attack": "remember"}}));
                    assert_eq!(paid(&answer), [("aff1".into(), dec("1"))], "{answer}");
                }
            })
        })
        .collect();
    senders.into_iter().for_each(|sender| sender.join().expect("every event saw a clean memory"));
    assert_eq!(host.commissions(&evil, "").len(), 100);
}

#[test]
fn events_failed_for_want_of_a_plugin_are_paid_by_retry_failed() {
    let (_dir, data) = data_dir();
    let host = Host::start(&data);
    let acme = host.create_operator("acme");
    host.put_affiliate(&acme, "aff1", None, json!({}));

    let (_, answer) = host.post_events(
        &acme,
        &json!({"id": "d-1", "type": "deposit", "customer": "c1", "amount": "80", "affiliate": "aff1"}),
    );
    assert_eq!(
        (answer["status"].as_str(), answer["failure"]["kind"].as_str()),
        (Some("failed"), Some("no_active_plugin")),
        "{answer}"
    );
    host.install_plugin(&acme, "multi-event");

    let (status, report) = common::answer(
        host.client.post(host.url("/v1/operators/acme/events/retry-failed")).bearer_auth(&acme.api_key).send(),
    );
    assert_eq!(status, StatusCode::OK);
    assert_eq!(report, json!({"retried": 1, "accepted": 1, "still_failed": 0}));
    let (_, event) = host.get(&acme, "/events/d-1");
    assert_eq!((event["status"].as_str(), event["attempts"].as_u64()), (Some("accepted"), Some(2)));
    assert_eq!(paid(&event).len(), 1);
    // Retrying again finds nothing to do, and pays nothing twice.
    let (_, report) = common::answer(
        host.client.post(host.url("/v1/operators/acme/events/retry-failed")).bearer_auth(&acme.api_key).send(),
    );
    assert_eq!(report["retried"], 0);
    assert_eq!(host.commissions(&acme, "").len(), 1);
}

#[test]
fn upload_refuses_what_is_not_a_well_behaved_component_and_says_why() {
    let (_dir, data) = data_dir();
    let host = Host::start(&data);
    let acme = host.create_operator("acme");

    let (status, body) = host.upload_plugin(&acme, &plugin_wasm("smuggler"), true);
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body["message"].as_str().unwrap().contains("`example:exfiltrate/sink`"), "names the import: {body}");

    let core_module = b"\0asm\x01\0\0\0";
    let (status, body) = host.upload_plugin(&acme, core_module, true);
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(body["message"].as_str().unwrap().contains("core wasm module"), "{body}");

    let mut truncated = plugin_wasm("multi-event");
    truncated.truncate(truncated.len() / 2);
    let (status, body) = host.upload_plugin(&acme, &truncated, true);
    assert_eq!((status, body["error"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("invalid_plugin")), "{body}");

    let (status, body) = common::answer(
        host.client
            .post(host.url("/v1/operators/acme/plugins"))
            .bearer_auth(&acme.api_key)
            .body(plugin_wasm("multi-event"))
            .send(),
    );
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{body}");

    // Nothing refused took a version number or became active.
    let (_, answer) = host.post_events(&acme, &json!({"id": "e", "type": "deposit", "customer": "c"}));
    assert_eq!(answer["status"], "accepted", "unattributed: no plugin call: {answer}");
    assert_eq!(host.install_plugin(&acme, "multi-event"), 1);
}

/// `wasi:sockets` may be imported (every libc-based language does) but not used: the plugin's
/// connection, to a listener of this test, is refused inside the sandbox and never arrives.
#[test]
fn a_plugin_that_opens_a_socket_is_denied_and_nothing_connects() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let (_dir, data) = data_dir();
    let host = Host::start(&data);
    let acme = host.create_operator("acme");
    host.install_plugin(&acme, "networked");
    host.put_affiliate(&acme, "aff1", None, json!({}));

    let (status, answer) = host.post_events(
        &acme,
        &json!({"id": "e-1", "type": "x", "customer": "c1", "affiliate": "aff1", "attributes": {"address": address}}),
    );
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!((answer["status"].as_str(), answer["failure"]["kind"].as_str()), (Some("failed"), Some("rule_error")));
    let message = answer["failure"]["message"].as_str().unwrap();
    assert!(message.contains(&address) && message.contains("denied"), "{answer}");
    match listener.accept() {
        Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("the plugin reached the listener: {other:?}"),
    }
}

#[test]
fn a_restart_loads_plugins_from_the_compiled_cache() {
    let (_dir, data) = data_dir();
    let host = Host::start(&data);
    let operators = ["acme", "globex", "initech"].map(|id| {
        let operator = host.create_operator(id);
        host.install_plugin(&operator, "multi-event");
        host.put_affiliate(&operator, "aff1", None, json!({}));
        operator
    });
    host.kill();

    let host = Host::start(&data);
    for operator in &operators {
        let answer = host.accept(
            operator,
            json!({"id": "d-1", "type": "deposit", "customer": "c1", "amount": "10", "affiliate": "aff1"}),
        );
        assert_eq!(paid(&answer), [("aff1".into(), dec("10"))]);
    }
    // Three operators with the same component: loaded once, shared.
    let metrics = host.metrics();
    assert!(metrics.contains(r#"commission_host_plugin_loads_total{source="cache"} 1"#), "{metrics}");
    assert!(!metrics.contains(r#"source="compiled""#), "nothing compiled again: {metrics}");
}
