//! Moving an operator's history in and out: bulk imports (NDJSON, CSV with a column mapping)
//! as resumable jobs, the `import` command, and an export that an empty host imports into the
//! same ledger.

use crate::common;

use std::process::Command;

use common::*;
use reqwest::StatusCode;
use rust_decimal::Decimal;
use serde_json::{Value, json};

/// `POST /v1/operators/{op}/imports?{query}` with the operator's key.
fn import(host: &Host, operator: &Operator, query: &str, content_type: &str, body: String) -> (StatusCode, Value) {
    answer(
        host.client
            .post(host.url(&format!("/v1/operators/{}/imports?{query}", operator.id)))
            .bearer_auth(&operator.api_key)
            .header("content-type", content_type)
            .body(body)
            .send(),
    )
}

/// Events of 60 customers of aff1: a registration, a deposit, two trades and (every fifth) a
/// chargeback, 300 in all, in the order a tracker would have them.
fn history() -> Vec<Value> {
    let mut events = Vec::new();
    for n in 0..60 {
        let customer = format!("c{n}");
        let day = |d: u32| format!("2026-0{}-{:02}T10:00:00Z", 1 + n % 3, d);
        events.push(json!({"id": format!("r{n}"), "type": "registration", "customer": customer, "affiliate": "aff1", "occurred_at": day(1)}));
        events.push(json!({"id": format!("d{n}"), "type": "deposit", "customer": customer, "amount": format!("{}.50", 50 + n), "occurred_at": day(2)}));
        events.push(json!({"id": format!("t{n}a"), "type": "trade", "customer": customer, "attributes": {"lots": "6"}, "occurred_at": day(3)}));
        events.push(json!({"id": format!("t{n}b"), "type": "trade", "customer": customer, "attributes": {"lots": format!("{}", 4 + n % 3)}, "occurred_at": day(4)}));
        if n % 5 == 0 {
            events.push(json!({"id": format!("cb{n}"), "type": "chargeback", "customer": customer, "attributes": {"deposit": format!("d{n}")}, "occurred_at": day(5)}));
        } else {
            events.push(json!({"id": format!("w{n}"), "type": "withdrawal", "customer": customer, "amount": "5", "occurred_at": day(5)}));
        }
    }
    events
}

fn ndjson(events: &[Value]) -> String {
    events.iter().map(|event| format!("{event}\n")).collect()
}

#[test]
fn an_ndjson_import_stops_at_a_bad_line_keeps_what_came_before_and_resumes_there_after_a_restart() {
    let (_dir, data) = data_dir();
    let host = Host::start(&data);
    let imported = host.multi_event_with_aff1("imported");
    let posted = host.multi_event_with_aff1("posted");
    let events = history();
    assert_eq!(events.len(), 300);

    // Line 152 has an amount that is no amount.
    let mut lines: Vec<String> = events.iter().map(Value::to_string).collect();
    let good_152 = lines[151].clone();
    lines[151] = good_152.replace("\"amount\":\"", "\"amount\":\"12,");
    assert_ne!(lines[151], good_152, "line 152 is a deposit with an amount");
    let (status, stopped) =
        import(&host, &imported, "job=tracker-move", "application/x-ndjson", lines.join("\n") + "\n");
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{stopped}");
    assert_eq!(stopped["error"], "import_stopped");
    assert_eq!(stopped["details"][0]["index"], 152, "{stopped}");
    assert_eq!(stopped["details"][0]["field"], "amount", "{stopped}");
    assert_eq!(stopped["job"]["state"], "stopped");
    assert_eq!((stopped["job"]["lines_read"].as_u64(), stopped["job"]["accepted"].as_u64()), (Some(151), Some(151)));
    // Everything before it is committed (its batch included); nothing after it is read.
    let before = events[150]["id"].as_str().unwrap();
    let after = events[152]["id"].as_str().unwrap();
    assert_eq!(host.get(&imported, &format!("/events/{before}")).0, StatusCode::OK);
    assert_eq!(host.get(&imported, &format!("/events/{after}")).0, StatusCode::NOT_FOUND);

    // The job's record outlives the host.
    host.kill();
    let host = Host::start(&data);
    let (status, job) = host.get(&imported, "/imports/tracker-move");
    assert_eq!(status, StatusCode::OK, "{job}");
    assert_eq!((job["state"].as_str(), job["stopped_at"]["line"].as_u64()), (Some("stopped"), Some(152)), "{job}");

    // The file sent again, fixed, continues at line 152.
    lines[151] = good_152;
    let (status, done) = import(&host, &imported, "job=tracker-move", "application/x-ndjson", lines.join("\n"));
    assert_eq!(status, StatusCode::OK, "{done}");
    assert_eq!(done["state"], "done");
    assert_eq!(done["from_line"], 152);
    assert_eq!((done["lines_read"].as_u64(), done["accepted"].as_u64()), (Some(300), Some(300)), "{done}");
    assert_eq!(done["duplicate"], 0, "nothing was sent twice");
    // From line 1 again as a new job: all duplicates, harmless.
    let (status, again) = import(&host, &imported, "", "application/x-ndjson", ndjson(&events));
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!((again["accepted"].as_u64(), again["duplicate"].as_u64()), (Some(0), Some(300)), "{again}");
    let (status, named) = host.get(&imported, &format!("/imports/{}", again["job"].as_str().unwrap()));
    assert_eq!((status, named["state"].as_str()), (StatusCode::OK, Some("done")), "a job named by the host: {named}");

    // The same events posted as webhook batches make the same ledger.
    for batch in events.chunks(100) {
        let (status, body) = host.post_events(&posted, &json!(batch));
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let ledger = check_ledger_invariants(&host, &imported);
    assert!(ledger.len() > 150, "{} commissions", ledger.len());
    assert_eq!(entries(&ledger), entries(&host.commissions(&posted, "")));
    assert!(ledger.iter().any(|c| c["reverses"].is_string()), "the chargebacks reversed CPAs");
    assert_verifies(&host, &imported);
}

#[test]
fn a_csv_import_reads_its_columns_by_the_mapping_and_the_rest_as_attributes() {
    let (_dir, data) = data_dir();
    let host = Host::start(&data);
    let operator = host.multi_event_with_aff1("csv");
    let csv = "txn,kind,player,when,amt,partner,lots,note\n\
               d-1,deposit,p1,2026-03-01T09:00:00Z,100.00,aff1,,\"first, \"\"welcome\"\" deposit\"\n\
               t-1,trade,p1,2026-03-02T09:00:00Z,,,4,\"a note\non two lines\"\n\
               \n\
               t-2,trade,p1,2026-03-03T09:00:00Z,,,6,\n\
               t-3,trade,p1,2026-03-04T09:00:00Z,,,0.5,\n";
    let mapping =
        "map.id=txn&map.type=kind&map.customer=player&map.occurred_at=when&map.amount=amt&map.affiliate=partner";

    // A mapping naming a column the header does not have stops at line 1, naming it.
    let (status, refused) = import(&host, &operator, &format!("{mapping}&map.currency=ccy"), "text/csv", csv.into());
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
    assert_eq!(
        (refused["details"][0]["index"].as_u64(), refused["details"][0]["field"].as_str()),
        (Some(1), Some("map.currency"))
    );
    assert!(refused["message"].as_str().unwrap().contains("txn, kind, player"), "{refused}");

    // A quoted cell over two lines is one record, read whole and refused as a webhook would
    // refuse its newline, by the record's first line.
    let (status, stopped) =
        import(&host, &operator, &format!("format=csv&job=csv-1&{mapping}"), "text/csv", csv.into());
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{stopped}");
    assert_eq!(
        (stopped["details"][0]["index"].as_u64(), stopped["details"][0]["field"].as_str()),
        (Some(3), Some("attributes.note"))
    );
    assert_eq!(stopped["job"]["accepted"], 1);
    let fixed = csv.replace("a note\non two lines", "a note, on one line");
    let (status, done) = import(&host, &operator, &format!("format=csv&job=csv-1&{mapping}"), "text/csv", fixed);
    assert_eq!(status, StatusCode::OK, "{done}");
    assert_eq!(
        (done["from_line"].as_u64(), done["lines_read"].as_u64(), done["accepted"].as_u64()),
        (Some(3), Some(6), Some(4)),
        "{done}"
    );
    // 10 on the first deposit, 5 on the first trade, 20 once 10.5 lots are past 10.
    let paid: Vec<(String, String, Decimal)> = host
        .commissions(&operator, "")
        .iter()
        .map(|c| (c["event_id"].as_str().unwrap().into(), c["rule"].as_str().unwrap().into(), amount(&c["amount"])))
        .collect();
    assert_eq!(
        paid,
        [
            ("d-1".into(), "ftd-cpa".into(), dec("10")),
            ("t-1".into(), "first-trade-cpa".into(), dec("5")),
            ("t-3".into(), "volume-bonus".into(), dec("20"))
        ]
    );
    let (_, deposit) = host.get(&operator, "/events/d-1");
    assert_eq!(deposit["amount"], "100.00");
    assert_eq!(deposit["attributes"]["note"], "first, \"welcome\" deposit", "{deposit}");
    let (_, trade) = host.get(&operator, "/events/t-1");
    assert_eq!(trade["attributes"], json!({"lots": "4", "note": "a note, on one line"}), "{trade}");
}

#[test]
fn the_import_command_streams_a_file_reports_a_bad_line_and_resumes_with_the_command_it_prints() {
    let (dir, data) = data_dir();
    let host = Host::start(&data);
    let operator = host.multi_event_with_aff1("cli");
    let events = &history()[..40];
    let mut lines: Vec<String> = events.iter().map(Value::to_string).collect();
    let good = lines[20].clone();
    // Line 21 names an affiliate the operator does not have: the pipeline refuses it in the
    // middle of its batch, and the 20 lines before it are committed without it.
    lines[20] = good.replace("aff1", "nobody");
    assert_ne!(lines[20], good);
    let file = dir.path().join("history.ndjson");
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    let run = |args: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_commission-host"))
            .args(args)
            .env("COMMISSION_HOST_API_KEY", &operator.api_key)
            .output()
            .expect("running commission-host import");
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let file_arg = file.to_str().unwrap();
    let (code, _, stderr) = run(&["import", file_arg, "--operator", "cli", "--url", &host.base]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.starts_with("line 21: affiliate: unknown affiliate \"nobody\""), "{stderr}");
    assert!(stderr.contains("the 20 lines before it are committed (20 accepted, 0 duplicate"), "{stderr}");
    let resume =
        stderr.lines().find_map(|line| line.trim().strip_prefix("commission-host ")).expect("the command to resume");
    assert!(resume.contains("--job cli-"), "{resume}");

    lines[20] = good;
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    let args: Vec<&str> = resume.split(' ').collect();
    let (code, stdout, stderr) = run(&args);
    assert_eq!(code, Some(0), "{stderr}");
    // Not a terminal: no bar drawn, plain lines, and the summary last.
    assert!(!stderr.contains('\u{1b}'), "{stderr}");
    let summary = stdout.lines().last().unwrap_or_default();
    assert!(summary.starts_with(&format!("imported {file_arg}: 40 lines, 40 accepted, 0 duplicate")), "{stdout}");
    assert_eq!(host.commissions(&operator, "").len(), check_ledger_invariants(&host, &operator).len());
    assert_eq!(host.get(&operator, "/events/w7").0, StatusCode::OK);
}

fn at(day: &str) -> String {
    format!("{day}T12:00:00Z")
}

/// A ledger's commissions as compared across hosts (ids aside): event, affiliate, rule, amount,
/// currency and the period an adjustment restates, in ledger order.
fn comparable(ledger: &[Value]) -> Vec<(String, String, String, Decimal, String, Value)> {
    ledger
        .iter()
        .map(|c| {
            let text = |field: &str| c[field].as_str().unwrap_or_default().to_owned();
            (
                text("event_id"),
                text("affiliate"),
                text("rule"),
                amount(&c["amount"]),
                text("currency"),
                c["restates"]["period"].clone(),
            )
        })
        .collect()
}

#[test]
fn an_export_imported_into_an_empty_host_gives_the_same_ledger_and_verifies() {
    let (_dir, data) = data_dir();
    let host = Host::start(&data);
    let acme = host.create_operator("acme");
    // v1 pays CPAs (and claws them back); aff2 sits under aff1, which takes an override.
    host.install_plugin(&acme, "multi-event");
    host.put_affiliate(&acme, "aff1", None, json!({"override_percent": "10"}));
    host.put_affiliate(&acme, "aff2", Some("aff1"), json!({"ftd_cpa": "12"}));
    host.accept(&acme, json!({"id": "d1", "type": "deposit", "customer": "c1", "affiliate": "aff1", "amount": "100", "occurred_at": at("2025-09-02")}));
    let (status, body) = answer(
        host.client
            .put(host.url("/v1/operators/acme/fx-rates"))
            .bearer_auth(&acme.api_key)
            .json(&json!({"rates": {"EUR": "1.10"}, "source": "test"}))
            .send(),
    );
    assert_eq!(status, StatusCode::OK, "{body}");
    host.accept(&acme, json!({"id": "d2", "type": "deposit", "customer": "c2", "affiliate": "aff2", "amount": "50", "currency": "EUR", "occurred_at": at("2025-09-03")}));
    host.accept(&acme, json!({"id": "cb1", "type": "chargeback", "customer": "c1", "attributes": {"deposit": "d1"}, "occurred_at": at("2025-09-04")}));
    // The operator approves aff2's CPA.
    let (_, d2) = host.get(&acme, "/events/d2");
    let cpa = d2["commissions"][0]["id"].as_str().unwrap().to_owned();
    let (status, body) = answer(
        host.client
            .post(host.url(&format!("/v1/operators/acme/commissions/{cpa}/status")))
            .bearer_auth(&acme.api_key)
            .json(&json!({"status": "approved", "note": "checked"}))
            .send(),
    );
    assert_eq!(status, StatusCode::OK, "{body}");
    // v2 pays RevShare on the month's NGR; aff1's deal changes with it.
    host.install_plugin(&acme, "revshare");
    host.put_affiliate(&acme, "aff1", None, json!({"revshare_percent": "30"}));
    host.accept(
        &acme,
        json!({"id": "w1", "type": "wager", "customer": "c1", "amount": "1000", "occurred_at": at("2025-09-10")}),
    );
    host.accept(
        &acme,
        json!({"id": "x1", "type": "win", "customer": "c1", "amount": "400", "occurred_at": at("2025-09-11")}),
    );
    // aff3 has no event: the close's settlement of it is the first the ledger shows of it.
    host.put_affiliate(&acme, "aff3", Some("aff1"), json!({}));
    let (status, closed) = host.close(&acme, "2025-09");
    assert_eq!(status, StatusCode::OK, "{closed}");
    // A late wager of aff2's customer restates September: 30% of 500 paid as an adjustment.
    let late = host.accept(
        &acme,
        json!({"id": "late", "type": "wager", "customer": "c2", "amount": "500", "occurred_at": at("2025-09-20")}),
    );
    assert_eq!(paid(&late), [("aff2".to_owned(), dec("150"))], "{late}");
    host.accept(
        &acme,
        json!({"id": "w2", "type": "wager", "customer": "c1", "amount": "100", "occurred_at": at("2025-10-05")}),
    );
    let original = check_ledger_invariants(&host, &acme);

    let response = host.client.get(host.url("/v1/operators/acme/export")).bearer_auth(&acme.api_key).send().unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let export = response.text().unwrap();
    let kinds: Vec<String> = export
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap()["kind"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(kinds.first().map(String::as_str), Some("operator"));
    assert_eq!(kinds.last().map(String::as_str), Some("end"));
    for kind in ["plugin", "activate", "affiliate", "fx_rates", "event", "close", "status"] {
        assert!(kinds.iter().any(|k| k == kind), "no {kind} line in:\n{export}");
    }
    assert_eq!(kinds.iter().filter(|k| *k == "plugin").count(), 2);

    // An empty host: the operator created anew, the export imported onto it.
    let (_other_dir, other_data) = data_dir();
    let empty = Host::start(&other_data);
    let moved = empty.create_operator("acme");
    let cut = export.lines().take(kinds.len() - 1).collect::<Vec<_>>().join("\n");
    let (status, refused) = import(&empty, &moved, "format=export&job=cut", "application/x-ndjson", cut);
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "a file without its end line was cut off: {refused}");
    assert_eq!(refused["details"][0]["field"], "kind", "{refused}");
    // What came before the missing end is in; the whole file, continued, finishes it.
    let (status, done) = import(&empty, &moved, "format=export&job=cut", "application/x-ndjson", export.clone());
    assert_eq!(status, StatusCode::OK, "{done}");
    assert_eq!(done["failed"], 0, "{done}");

    let imported = check_ledger_invariants(&empty, &moved);
    assert_eq!(comparable(&imported), comparable(&original));
    assert_verifies(&empty, &moved);
    // The approval moved over, and the statement of the closed month is the same.
    let approved = imported.iter().find(|c| c["event_id"] == "d2" && c["rule"] == "ftd-cpa").unwrap();
    let (_, status_view) = empty.get(&moved, &format!("/commissions/{}", approved["id"].as_str().unwrap()));
    assert_eq!(status_view["status"], "approved", "{status_view}");
    let statement = |host: &Host, operator: &Operator| {
        let (status, body) = host.get(operator, "/periods/2025-09/statement?affiliate=aff2");
        assert_eq!(status, StatusCode::OK, "{body}");
        body["restated"].clone()
    };
    assert_eq!(statement(&empty, &moved), statement(&host, &acme));
    let (status, settlement) = empty.get(&moved, "/events/commission-host.period:2025-09:aff3");
    assert_eq!(status, StatusCode::OK, "aff3 existed at the close: {settlement}");
    // The job gone over again from its second line, as a job resumed at a line it had done
    // (its progress not yet saved) goes over that line: each line is found done (the same
    // component under its number, the same status move last), the job ends done, and the ledger
    // is as it was.
    let history = |host: &Host| host.get(&moved, &format!("/commissions/{}", approved["id"].as_str().unwrap())).1;
    let before = history(&empty);
    let (status, again) =
        import(&empty, &moved, "format=export&job=cut&from_line=2", "application/x-ndjson", export.clone());
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!((&again["state"], &again["failed"]), (&json!("done"), &json!(0)), "{again}");
    assert_eq!(comparable(&check_ledger_invariants(&empty, &moved)), comparable(&original));
    assert_eq!(empty.get(&moved, "/plugins").1["plugins"].as_array().map(Vec::len), Some(2));
    assert_eq!(history(&empty), before, "the approval is not made twice");
    // A sender's retry of an event after the move is still a duplicate.
    let (_, retry) = empty.post_events(&moved, &json!({"id": "d1", "type": "deposit", "customer": "c1", "affiliate": "aff1", "amount": "100", "occurred_at": at("2025-09-02")}));
    assert_eq!(retry["status"], "duplicate", "{retry}");
    // An export goes only onto an operator with no history.
    let (status, refused) = import(&empty, &moved, "format=export", "application/x-ndjson", export);
    assert_eq!(
        (status, refused["details"][0]["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("format")),
        "{refused}"
    );
}
