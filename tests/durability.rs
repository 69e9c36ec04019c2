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

/// `serve --ledger-cache-bytes`: a ledger several times the size of sled's cache gives the same
/// answers read from disk as it gave from memory, and a cache too small to be of use is refused
/// at start, saying the least it takes.
#[test]
fn a_ledger_larger_than_its_cache_answers_the_same() {
    const CACHE_BYTES: u64 = 1 << 20;
    let (_dir, data) = data_dir();
    let host = Host::start(&data);
    let acme = host.multi_event_with_aff1("acme");
    for batch in 0..20 {
        let events: Vec<_> = (0..100)
            .map(|n| {
                let customer = format!("c{batch}-{n}");
                json!({"id": format!("{customer}-d"), "type": "deposit", "customer": customer, "amount": "50", "affiliate": "aff1"})
            })
            .collect();
        let (status, body) = host.post_events(&acme, &json!(events));
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let commissions = host.commissions(&acme, "");
    assert_eq!(commissions.len(), 2000, "one first-deposit commission per customer");
    host.kill();
    let on_disk = common::disk_usage(&data);
    assert!(on_disk > 3 * CACHE_BYTES, "the ledger ({on_disk} bytes) should be several times the cache");

    let host = Host::start_with(&data, &["--ledger-cache-bytes", &CACHE_BYTES.to_string()]);
    assert_eq!(host.commissions(&acme, ""), commissions);
    assert_eq!(common::assert_verifies(&host, &acme), 2000);
    let late = json!({"id": "late-d", "type": "deposit", "customer": "late", "amount": "50", "affiliate": "aff1"});
    assert_eq!(host.accept(&acme, late)["status"], "accepted");
    assert_eq!(host.totals(&acme)["aff1"], dec("10") * rust_decimal::Decimal::from(2001));
    host.kill();

    let mut refused = std::process::Command::new(env!("CARGO_BIN_EXE_commission-host"))
        .args(["serve", "--listen", "127.0.0.1:0", "--ledger-cache-bytes", "4096", "--data"])
        .arg(&data)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = refused.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > std::time::Duration::from_secs(20) {
            refused.kill().unwrap();
            refused.wait().unwrap();
            panic!("the host started with a 4 KiB ledger cache");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut refused.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success());
    assert!(stderr.contains("--ledger-cache-bytes must be at least 1048576"), "{stderr}");
}
