//! What is created once for the cluster travels to every node: operators, plugin versions,
//! shadows, key rotations, affiliates and FX rates, and the console serves an operator on any
//! node.

use super::*;

/// An operator created through one node, an event for it through another, and at once the
/// console of a third: its sign-in takes the operator's key and its ledger page shows the
/// commission just answered (the console's API calls are forwarded to the owner like any read).
/// A session lives on the node that signed it in, so the cookie is used there.
pub(super) fn the_console_shows_a_new_operator_on_any_node(hosts: &HashMap<String, Host>, names: &[&str]) {
    let fresh = hosts[names[0]].multi_event_with_aff1("fresh");
    let through = &hosts[names[2]];
    let paid = through.accept(
        &fresh,
        json!({"id": "fresh-d1", "type": "deposit", "customer": "fresh-c1", "amount": "50", "affiliate": "aff1"}),
    );
    assert_eq!(paid["status"], "accepted", "{paid}");

    let console = &hosts[names[1]];
    let browser =
        Client::builder().timeout(Duration::from_secs(30)).redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let cookie_of = |answer: &reqwest::blocking::Response| -> String {
        let set = answer.headers()["set-cookie"].to_str().unwrap();
        set.split(';').next().unwrap().to_owned()
    };
    let form = browser.get(format!("{}/console/sign-in", console.base)).send().unwrap();
    assert_eq!(form.status(), StatusCode::OK);
    let anonymous = cookie_of(&form);
    let page = form.text().unwrap();
    let csrf = page.split(r#"name="csrf" value=""#).nth(1).and_then(|rest| rest.split('"').next()).unwrap();
    let signed_in = browser
        .post(format!("{}/console/sign-in", console.base))
        .header("cookie", &anonymous)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("csrf={csrf}&operator=fresh&affiliate=&key={}", fresh.api_key))
        .send()
        .unwrap();
    assert_eq!(signed_in.status(), StatusCode::SEE_OTHER, "{}", signed_in.text().unwrap());
    assert_eq!(signed_in.headers()["location"], "/console/overview");
    let session = cookie_of(&signed_in);
    let ledger = browser.get(format!("{}/console/ledger", console.base)).header("cookie", &session).send().unwrap();
    assert_eq!(ledger.status(), StatusCode::OK);
    let ledger = ledger.text().unwrap();
    assert!(ledger.contains(">fresh-d1<"), "the commission of fresh-d1 is not on the console's ledger page:\n{ledger}");
}

/// Operators created on one node, and their plugins, are set up on every node from the
/// cluster: the same plugin versions (number and sha256), and the credentials shown once at
/// creation work on every node. An id taken on one node is taken on all; a plugin uploaded
/// through another node is the next version everywhere, and shadowed through a third, it is the
/// shadow in every view; a key rotated through that node is the only key of the operator on
/// every node once its views have applied the rotation.
pub(super) fn configuration_travels_through_the_cluster(
    hosts: &HashMap<String, Host>,
    operators: &[Operator],
    names: &[&str],
) {
    let client = Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
    let plugins_of = |host: &Host, operator: &Operator| {
        let path = format!("/v1/operators/{}/plugins", operator.id);
        let answer = own_view(&client, host, &path);
        assert_eq!(answer.status(), StatusCode::OK);
        let body: Value = answer.json().unwrap();
        body["plugins"].as_array().unwrap().iter().map(|p| (p["version"].clone(), p["sha256"].clone())).collect()
    };
    let held = |operator: &Operator| -> Vec<(Value, Value)> { plugins_of(&hosts[names[0]], operator) };
    for operator in operators {
        let expected = held(operator);
        assert_eq!(expected.len(), 1, "{expected:?}");
        for name in &names[1..] {
            eventually(&format!("{} set up on node {name}", operator.id), &hosts[*name], || {
                match get_with(
                    &client,
                    &hosts[*name],
                    &operator.api_key,
                    &format!("/v1/operators/{}/plugins", operator.id),
                ) {
                    (StatusCode::OK, _) => {}
                    (status, body) => return Err(format!("the operator's own key: {status} {body}")),
                }
                let there: Vec<(Value, Value)> = plugins_of(&hosts[*name], operator);
                if there == expected { Ok(()) } else { Err(format!("{there:?} against {expected:?}")) }
            });
        }
    }

    let again = client
        .post(format!("{}/v1/operators", hosts[names[1]].base))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"id": "busy", "name": "Busy again", "currency": "EUR"}))
        .send()
        .unwrap();
    assert_eq!(again.status(), StatusCode::CONFLICT, "an id taken on another node is taken");

    let calm = operators.iter().find(|operator| operator.id == "calm").unwrap();
    let compiled = |host: &Host| metric(&host.metrics(), r#"commission_host_plugin_loads_total{source="compiled"}"#);
    let compiled_before = compiled(&hosts[names[2]]).unwrap_or(0.0);
    let (status, uploaded) = hosts[names[2]].upload_plugin(calm, &common::plugin_wasm("multi-event"), false);
    assert_eq!(status, StatusCode::CREATED, "{uploaded}");
    assert_eq!(uploaded["version"], 2, "{uploaded}");
    // Named through another node at once, before that node's own watch could compile it.
    let dated = client
        .post(format!("{}/v1/operators/calm/plugins/2/activate", hosts[names[0]].base))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"effective_from": "2031-01-01T00:00:00Z"}))
        .send()
        .unwrap();
    assert_eq!(dated.status(), StatusCode::OK, "{}", dated.text().unwrap());
    let expected = vec![held(calm)[0].clone(), (uploaded["version"].clone(), uploaded["sha256"].clone())];
    for name in names {
        eventually(&format!("calm's version 2 on node {name}"), &hosts[*name], || {
            let there: Vec<(Value, Value)> = plugins_of(&hosts[*name], calm);
            if there == expected { Ok(()) } else { Err(format!("{there:?} against {expected:?}")) }
        });
    }

    // Shadowing the new version through one node starts the shadow in every node's view.
    let shadow = client
        .put(format!("{}/v1/operators/calm/shadow", hosts[names[1]].base))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"version": 2}))
        .send()
        .unwrap();
    assert_eq!(shadow.status(), StatusCode::OK);
    for name in names {
        eventually(&format!("calm's shadow on node {name}"), &hosts[*name], || {
            let operators: Value = own_view(&client, &hosts[*name], "/v1/operators").json().unwrap();
            let calm = operators["operators"].as_array().unwrap().iter().find(|op| op["id"] == "calm").cloned();
            match calm {
                Some(calm) if calm["settings"]["shadow_plugin"] == 2 => Ok(()),
                other => Err(format!("{other:?}")),
            }
        });
    }

    let rotated = client
        .post(format!("{}/v1/operators/calm/credentials/api_key/rotate", hosts[names[1]].base))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"grace_seconds": 0}))
        .send()
        .unwrap();
    assert_eq!(rotated.status(), StatusCode::OK);
    let rotated: Value = rotated.json().unwrap();
    let new_key = rotated["value"].as_str().unwrap();
    for name in names {
        eventually(&format!("calm's rotated key on node {name}"), &hosts[*name], || {
            let path = "/v1/operators/calm/plugins";
            match (
                get_with(&client, &hosts[*name], new_key, path).0,
                get_with(&client, &hosts[*name], &calm.api_key, path).0,
            ) {
                (StatusCode::OK, StatusCode::UNAUTHORIZED) => Ok(()),
                (new, old) => Err(format!("the new key: {new}, the old: {old}")),
            }
        });
    }
    // The node that took the upload compiled it once: its own watch found it stored.
    assert_eq!(compiled(&hosts[names[2]]), Some(compiled_before + 1.0), "{}", hosts[names[2]].metrics());
}

/// An affiliate put through one node is in every node's own view, the same record (its deal
/// and parent), and so are FX rates; a move that would make a loop is refused whichever node
/// receives it.
pub(super) fn affiliates_travel_through_the_log(nats: &Nats, hosts: &HashMap<String, Host>, through: &str) {
    let client = Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
    let put = |node: &str, affiliate: &str, body: Value| {
        let answer = client
            .put(format!("{}/v1/operators/calm/affiliates/{affiliate}", hosts[node].base))
            .bearer_auth(ADMIN_TOKEN)
            .json(&body)
            .send()
            .unwrap();
        (answer.status(), answer.json::<Value>().unwrap())
    };
    let (status, body) = put(through, "aff2", json!({"parent": "aff1", "deal": {"note": "through the log"}}));
    assert_eq!(status, StatusCode::OK, "{body}");
    for (name, host) in hosts {
        let started = Instant::now();
        loop {
            let answer = own_view(&client, host, "/v1/operators/calm/affiliates/aff2");
            let status = answer.status();
            let seen = answer.text().unwrap();
            if status == StatusCode::OK {
                assert_eq!(serde_json::from_str::<Value>(&seen).unwrap(), body, "{name}'s view of aff2");
                break;
            }
            if started.elapsed() > Duration::from_secs(20) {
                let log = host.log();
                let trouble: Vec<&str> =
                    log.lines().filter(|line| line.contains("WARN") || line.contains("ERROR")).collect();
                panic!(
                    "aff2 never reached {name}'s view (it answers {status}: {seen}; {} owns calm); its log's \
                     warnings: {trouble:#?}",
                    owner(nats, "calm")
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    // FX rates too: every node's own record of the operator says the same rates, source and time.
    let answer = client
        .put(format!("{}/v1/operators/calm/fx-rates", hosts[through].base))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"rates": {"EUR": "1.1"}, "source": "through the log"}))
        .send()
        .unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    let set: Value = answer.json().unwrap();
    for (name, host) in hosts {
        let started = Instant::now();
        loop {
            let operators: Value = own_view(&client, host, "/v1/operators").json().unwrap();
            let calm = operators["operators"].as_array().unwrap().iter().find(|op| op["id"] == "calm").unwrap().clone();
            let settings = &calm["settings"];
            if settings["fx_source"] == "through the log" {
                assert_eq!(settings["fx_currencies"], json!(["EUR"]), "{name}: {calm}");
                assert_eq!(settings["fx_updated_at"], set["updated_at"], "{name}: {calm}");
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(20), "the rates never reached {name}'s view: {calm}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let other = hosts.keys().find(|name| *name != through).unwrap();
    let (status, refused) = put(other, "aff1", json!({"parent": "aff2"}));
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
    assert_eq!(refused["details"][0]["field"], "parent", "{refused}");
    assert!(refused["details"][0]["problem"].as_str().unwrap().contains("loop"), "{refused}");
}

/// A client naming an operator that does not exist, many times a second (a tracker posting to a
/// mistyped id): every request is a 404 naming it, and the node asks the cluster's bucket about
/// it about once a second, not once per request. Made-up ids, each new (a flood from someone
/// without a key): a hundred lookups a second at most.
pub(super) fn an_unknown_operator_is_looked_up_about_once_a_second(host: &Host) {
    let lookups = || metric(&host.metrics(), "commission_host_cluster_operator_lookups_total").unwrap_or(0.0);
    let client = Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let before = lookups();
    let started = Instant::now();
    for _ in 0..300 {
        let (status, body) = get_with(&client, host, ADMIN_TOKEN, "/v1/operators/mistyped/plugins");
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
        assert!(body["message"].as_str().unwrap_or_default().contains("mistyped"), "{body}");
    }
    let (asked, seconds) = (lookups() - before, started.elapsed().as_secs_f64());
    assert!(asked >= 1.0, "the unknown id was never looked up");
    assert!(asked <= seconds.ceil() + 1.0, "{asked} lookups in {seconds:.1} s for one unknown id");

    // Made-up ids, each new: a hundred lookups a second at most, the rest answered unknown.
    let before = lookups();
    let started = Instant::now();
    for n in 0..1500 {
        let (status, body) = get_with(&client, host, ADMIN_TOKEN, &format!("/v1/operators/made-up-{n}/plugins"));
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    }
    let (asked, seconds) = (lookups() - before, started.elapsed().as_secs_f64());
    assert!(asked >= 1.0, "no made-up id was looked up");
    assert!(asked <= 100.0 * (seconds.ceil() + 1.0), "{asked} lookups in {seconds:.1} s for 1,500 made-up ids");
}
