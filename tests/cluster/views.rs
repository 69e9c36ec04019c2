//! Every node's view applies the ledger: a month closed, money moved and an export imported
//! through any node are the same in every node's own data directory.

use super::*;

/// Once every node's view has applied the whole ledger of `busy`: the closed month's statement
/// is the same in every view (read from each node's own, not forwarded), `verify` is clean on
/// each, and an event of the closed month is refused as late through every node.
pub(super) fn views_follow_the_close(dir: &Path, nats: &Nats, hosts: &HashMap<String, Host>, client: &Client) {
    views_apply_the_whole_ledger(dir, nats, hosts);
    let statements: BTreeMap<&String, Value> = hosts
        .iter()
        .map(|(name, host)| {
            let answer = own_view(client, host, &format!("/v1/operators/busy/periods/{CLOSED}/statement"));
            assert_eq!(answer.status(), StatusCode::OK, "{name}");
            (name, without_own_fields(answer.json().unwrap()))
        })
        .collect();
    let first = statements.values().next().unwrap();
    assert!(first["affiliates"][0]["as_closed"].is_object(), "{first}");
    for (name, statement) in &statements {
        assert_eq!(statement, first, "{name}'s view of the closed month's statement");
    }
    for (name, host) in hosts {
        let replayed = common::assert_verifies(host, &as_admin("busy"));
        assert!(replayed > 0, "{name} verified nothing");
        let late = json!({"id": "late-1", "type": "deposit", "customer": "late", "amount": "10", "affiliate": "aff1", "occurred_at": format!("{CLOSED}-20T12:00:00Z")});
        let (status, body) = host.post_events(&as_admin("busy"), &late);
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{name}: {body}");
        assert_eq!(body["details"][0]["field"], "occurred_at", "{name}: {body}");
    }
}

/// Waits (30 s at most) until every node's view of `busy` has applied its last ledger entry.
fn views_apply_the_whole_ledger(dir: &Path, nats: &Nats, hosts: &HashMap<String, Host>) {
    views_apply_the_ledger_of("busy", dir, nats, hosts);
}

/// Waits (30 s at most) until every node's view of `operator` has applied its last ledger entry.
pub(super) fn views_apply_the_ledger_of(operator: &str, dir: &Path, nats: &Nats, hosts: &HashMap<String, Host>) {
    let last = with_nats(nats, async |client| {
        let stream = async_nats::jetstream::new(client).get_stream("CH_LEDGER").await.expect("the ledger stream");
        let subject = format!("ch.ledger.{operator}");
        stream.get_last_raw_message_by_subject(&subject).await.expect("a ledger entry").sequence
    });
    let started = Instant::now();
    for name in hosts.keys() {
        let position = dir.join(name).join("cluster").join(format!("{operator}.position"));
        while std::fs::read_to_string(&position).ok().and_then(|text| text.trim().parse::<u64>().ok()) < Some(last) {
            assert!(started.elapsed() < Duration::from_secs(30), "{name}'s view did not reach ledger entry {last}");
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_no_divergence(name, &hosts[name], operator);
    }
}

/// The operator's commissions in `host`'s own view, named as every node names them (event,
/// rule, amount), with their statuses, sorted.
fn statuses(client: &Client, host: &Host, operator: &str) -> Vec<(String, String, String, String)> {
    let (mut all, mut cursor) = (Vec::new(), String::new());
    loop {
        let answer = own_view(client, host, &format!("/v1/operators/{operator}/commissions?limit=1000{cursor}"));
        assert_eq!(answer.status(), StatusCode::OK);
        let page: Value = answer.json().unwrap();
        for commission in page["commissions"].as_array().unwrap() {
            let text = |field: &str| commission[field].as_str().unwrap_or_default().to_owned();
            all.push((text("event_id"), text("rule"), text("amount"), text("status")));
        }
        match page["next"].as_str() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => break,
        }
    }
    all.sort();
    all
}

/// Money moved through nodes that do not own the operator while events keep arriving: the
/// closed month approved through one, paid under a reference through another (sent again
/// through the first, it pays nothing more), one commission of the load moved to `rejected`
/// through the first; each answered as one host answers, and once every view has applied the
/// ledger, every node's own view holds the same statuses (of the moved commissions and of the
/// new events' alike). An affiliate key issued through one node opens the affiliate's
/// commissions through every node, and once revoked through another, none.
pub(super) fn money_moves_through_the_log(dir: &Path, nats: &Nats, hosts: &HashMap<String, Host>, client: &Client) {
    let owner_name = owner(nats, "busy");
    let others: Vec<&Host> = hosts.iter().filter(|(name, _)| **name != owner_name).map(|(_, host)| host).collect();
    let post = |host: &Host, path: &str, body: Value| -> (StatusCode, Value) {
        let answer = client.post(format!("{}{path}", host.base)).bearer_auth(ADMIN_TOKEN).json(&body).send().unwrap();
        (answer.status(), answer.json().unwrap_or(Value::Null))
    };
    let nodes: Vec<String> = hosts.values().map(|host| host.base.clone()).collect();
    let seen = load(nodes, "moving-", 6, 5, || {
        let (status, approved) = post(others[0], &format!("/v1/operators/busy/periods/{CLOSED}/approve"), json!({}));
        assert_eq!(status, StatusCode::OK, "{approved}");
        assert!(!approved["approved"].as_array().unwrap().is_empty(), "{approved}");
        let payment = json!({"reference": "bank-2020-01", "period": CLOSED});
        let (status, paid) = post(others[1], "/v1/operators/busy/payouts", payment.clone());
        assert_eq!(status, StatusCode::OK, "{paid}");
        assert_eq!(paid["duplicate"], false, "{paid}");
        let approved_ids: HashSet<&Value> =
            approved["approved"].as_array().unwrap().iter().map(|line| &line["id"]).collect();
        let paid_lines = paid["paid"].as_array().unwrap();
        assert!(!paid_lines.is_empty() && paid_lines.iter().all(|line| approved_ids.contains(&line["id"])), "{paid}");
        let (status, again) = post(others[0], "/v1/operators/busy/payouts", payment);
        assert_eq!(status, StatusCode::OK, "{again}");
        assert_eq!((&again["duplicate"], &again["paid"]), (&json!(true), &paid["paid"]), "{again}");

        let answer = client
            .get(format!("{}/v1/operators/busy/commissions?status=pending&limit=1", others[1].base))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .unwrap();
        let pending: Value = answer.json().unwrap();
        let id = pending["commissions"][0]["id"].as_str().expect("a pending commission of the load").to_owned();
        let path = format!("/v1/operators/busy/commissions/{id}/status");
        let (status, moved) = post(others[0], &path, json!({"status": "rejected", "note": "fraud"}));
        assert_eq!((status, &moved["status"]), (StatusCode::OK, &json!("rejected")), "{moved}");
        let (status, refused) = post(others[1], &path, json!({"status": "approved"}));
        assert_eq!((status, &refused["error"]), (StatusCode::CONFLICT, &json!("status_transition")), "{refused}");
    });
    assert!(seen.server_errors.is_empty(), "5xx while money moved: {:?}", seen.server_errors);
    views_apply_the_whole_ledger(dir, nats, hosts);
    let owners = statuses(client, &hosts[&owner_name], "busy");
    for wanted in ["paid", "rejected"] {
        assert!(owners.iter().any(|(.., status)| status == wanted), "no {wanted} commission: {owners:?}");
    }
    for (name, host) in hosts {
        assert_eq!(statuses(client, host, "busy"), owners, "{name}'s view of the commissions' statuses");
    }

    let (status, issued) = post(others[0], "/v1/operators/busy/affiliates/aff1/keys", json!({}));
    assert_eq!(status, StatusCode::CREATED, "{issued}");
    let key = issued["key"].as_str().unwrap().to_owned();
    let read = |host: &Host| {
        let answer = client
            .get(format!("{}/v1/operators/busy/commissions?limit=1", host.base))
            .bearer_auth(&key)
            .send()
            .unwrap();
        answer.status()
    };
    for host in hosts.values() {
        assert_eq!(read(host), StatusCode::OK, "the affiliate's key through {}", host.base);
    }
    let answer = client
        .delete(format!("{}/v1/operators/busy/affiliates/aff1/keys/{}", others[1].base, issued["id"].as_str().unwrap()))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    for host in hosts.values() {
        assert_eq!(read(host), StatusCode::UNAUTHORIZED, "the revoked key through {}", host.base);
    }
}

/// `busy`'s export, imported onto a new operator through one node, is restored in every node's
/// own view: its affiliates, and its commissions with the statuses money moved them to (paid,
/// rejected); the import job's progress is answered through another node.
pub(super) fn an_export_imported_through_one_node_is_in_every_view(
    dir: &Path,
    nats: &Nats,
    hosts: &HashMap<String, Host>,
    client: &Client,
) {
    let names: Vec<&String> = hosts.keys().collect();
    let export = client
        .get(format!("{}/v1/operators/busy/export", hosts[names[0]].base))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .unwrap();
    assert_eq!(export.status(), StatusCode::OK);
    let export = export.text().unwrap();
    let created = client
        .post(format!("{}/v1/operators", hosts[names[1]].base))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"id": "moved", "name": "Moved", "currency": "USD"}))
        .send()
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let imported = client
        .post(format!("{}/v1/operators/moved/imports?format=export&job=from-busy", hosts[names[2]].base))
        .bearer_auth(ADMIN_TOKEN)
        .header("content-type", "application/x-ndjson")
        .body(export)
        .send()
        .unwrap();
    let status = imported.status();
    let job: Value = imported.json().unwrap();
    assert_eq!(status, StatusCode::OK, "{job}");
    assert_eq!(job["failed"], 0, "{job}");
    let answer = client
        .get(format!("{}/v1/operators/moved/imports/from-busy", hosts[names[0]].base))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    let progress: Value = answer.json().unwrap();
    assert_eq!((&progress["state"], &progress["accepted"]), (&json!("done"), &job["accepted"]), "{progress}");

    views_apply_the_ledger_of("moved", dir, nats, hosts);
    for (name, host) in hosts {
        let moved = statuses(client, host, "moved");
        assert_eq!(moved, statuses(client, host, "busy"), "{name}'s view of the imported commissions");
        for wanted in ["paid", "rejected"] {
            assert!(moved.iter().any(|(.., status)| status == wanted), "{name}: no {wanted} commission: {moved:?}");
        }
        let affiliate = own_view(client, host, "/v1/operators/moved/affiliates/aff1");
        assert_eq!(affiliate.status(), StatusCode::OK, "{name}'s view of the imported affiliate");
    }
}

/// A statement without what each ledger numbers itself (commission ids). Dates are compared:
/// a commission is dated by the request that made it, which the ledger holds, on every node.
fn without_own_fields(mut value: Value) -> Value {
    match &mut value {
        Value::Object(map) => {
            map.remove("id");
            for field in map.values_mut() {
                *field = without_own_fields(field.take());
            }
        }
        Value::Array(items) => {
            for item in items.iter_mut() {
                *item = without_own_fields(item.take());
            }
        }
        _ => {}
    }
    value
}
