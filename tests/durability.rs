//! An acknowledged event is on disk: kill the host (SIGKILL, no shutdown) right after it
//! answered, start it again on the same directory, and everything is there, exactly once.

use crate::common;

use std::sync::Arc;

use common::{Host, data_dir, dec};
use reqwest::StatusCode;
use serde_json::json;

const SENDERS: usize = 4;
const CUSTOMERS_PER_SENDER: usize = 15;

#[test]
fn events_answered_before_a_sigkill_are_all_there_after_restart() {
    let (_dir, data) = data_dir();
    let host = Arc::new(Host::start(&data));
    let acme = Arc::new(host.create_operator("acme"));
    host.install_plugin(&acme, "multi-event");
    host.put_affiliate(&acme, "aff1", None, json!({}));

    // Concurrent senders, so acknowledgements share group flushes.
    let senders: Vec<_> = (0..SENDERS)
        .map(|sender| {
            let (host, acme) = (host.clone(), acme.clone());
            std::thread::spawn(move || {
                let mut acknowledged = Vec::new();
                for n in 0..CUSTOMERS_PER_SENDER {
                    let customer = format!("c{sender}-{n}");
                    let batch = json!([
                        {"id": format!("{customer}-d"), "type": "deposit", "customer": customer, "amount": "50", "affiliate": "aff1"},
                        {"id": format!("{customer}-t"), "type": "trade", "customer": customer, "attributes": {"lots": "11"}},
                    ]);
                    let (status, body) = host.post_events(&acme, &batch);
                    assert_eq!(status, StatusCode::OK, "{body}");
                    acknowledged.extend([format!("{customer}-d"), format!("{customer}-t")]);
                }
                acknowledged
            })
        })
        .collect();
    let acknowledged: Vec<String> = senders.into_iter().flat_map(|sender| sender.join().unwrap()).collect();
    let host = Arc::into_inner(host).expect("senders are done");
    host.kill();

    let host = Host::start(&data);
    for id in &acknowledged {
        let (status, event) = host.get(&acme, &format!("/events/{id}"));
        assert_eq!(status, StatusCode::OK, "{id} was acknowledged, then lost");
        assert_eq!(event["status"], "accepted");
    }
    // Per customer: 10 (first deposit) + 5 (first trade) + 20 (over 10 lots) = 35.
    let customers = SENDERS * CUSTOMERS_PER_SENDER;
    assert_eq!(host.commissions(&acme, "").len(), customers * 3);
    assert_eq!(host.totals(&acme), [("aff1".to_owned(), dec("35") * rust_decimal::Decimal::from(customers))].into());

    // Senders retry what they are unsure of: nothing is paid twice.
    let (status, again) = host.post_events(
        &acme,
        &json!({"id": "c0-0-t", "type": "trade", "customer": "c0-0", "attributes": {"lots": "11"}}),
    );
    assert_eq!((status, again["status"].as_str()), (StatusCode::OK, Some("duplicate")));
    assert_eq!(host.commissions(&acme, "").len(), customers * 3);
}

#[test]
fn sigterm_finishes_what_was_acknowledged_and_exits_cleanly() {
    let (_dir, data) = data_dir();
    let host = Arc::new(Host::start(&data));
    let acme = Arc::new(host.create_operator("acme"));
    host.install_plugin(&acme, "multi-event");
    host.put_affiliate(&acme, "aff1", None, json!({}));

    // Senders keep going until the host stops answering; what was answered 200 must survive.
    let senders: Vec<_> = (0..SENDERS)
        .map(|sender| {
            let (host, acme) = (host.clone(), acme.clone());
            std::thread::spawn(move || {
                let mut acknowledged = Vec::new();
                for n in 0.. {
                    let id = format!("s{sender}-{n}");
                    let event =
                        json!({"id": id, "type": "deposit", "customer": id, "amount": "10", "affiliate": "aff1"});
                    let response = host
                        .client
                        .post(host.url("/v1/operators/acme/events"))
                        .bearer_auth(&acme.api_key)
                        .json(&event)
                        .send();
                    match response {
                        Ok(response) if response.status() == StatusCode::OK => acknowledged.push(id),
                        _ => return acknowledged,
                    }
                }
                unreachable!("the loop ends when the host stops answering")
            })
        })
        .collect();
    while host.commissions(&acme, "").len() < 20 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // The senders hold clones of the harness; signal the process directly.
    let pid = host.pid();
    let sent = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap();
    assert!(sent.success());
    let acknowledged: Vec<String> = senders.into_iter().flat_map(|sender| sender.join().unwrap()).collect();
    let host = Arc::into_inner(host).expect("senders are done");
    let log_path = data.with_extension("log");
    assert!(host.wait_exit(), "exited with an error; log:\n{}", std::fs::read_to_string(log_path).unwrap_or_default());

    let host = Host::start(&data);
    for id in &acknowledged {
        assert_eq!(host.get(&acme, &format!("/events/{id}")).0, StatusCode::OK, "{id} was acknowledged, then lost");
    }
    assert_eq!(host.commissions(&acme, "").len(), acknowledged.len(), "one commission per acknowledged deposit");
}
