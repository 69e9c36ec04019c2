//! Late events into closed months, through the real host with RevShare built from source:
//! restated as adjustments in the open month (worked by hand below, negative carryover
//! included), paid once however often the event is retried, refused under the `refuse`
//! policy, taken as received under `as_received` (with multi-event), and explained line by
//! line in the period statement.

use crate::common;

use common::{Host, Operator, amount, answer, data_dir, dec, paid};
use reqwest::StatusCode;
use rust_decimal::Decimal;
use serde_json::{Value, json};

fn close(host: &Host, operator: &Operator, period: &str) -> Value {
    let (status, body) = host.close(operator, period);
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

fn money(host: &Host, operator: &Operator, id: &str, kind: &str, amount: &str, at: &str) -> Value {
    host.accept(operator, json!({"id": id, "type": kind, "customer": "p1", "amount": amount, "occurred_at": at}))
}

fn settings(host: &Host, operator: &Operator, body: Value) -> (StatusCode, Value) {
    answer(
        host.client
            .put(host.url(&format!("/v1/operators/{}/settings", operator.id)))
            .bearer_auth(&operator.api_key)
            .json(&body)
            .send(),
    )
}

/// The field guide's three months for one affiliate on RevShare 30% with negative carryover,
/// closed: November NGR 1,400 pays 420; December NGR -2,000 pays 0 and carries -2,000;
/// January NGR 3,000 pays (3,000 - 2,000) x 30% = 300.
fn three_closed_months(host: &Host) -> Operator {
    let casino = host.create_operator("casino");
    host.install_plugin(&casino, "revshare");
    host.put_affiliate(&casino, "carry", None, json!({"revshare_percent": "30", "hold_days": "30"}));
    host.accept(
        &casino,
        json!({"id": "p1-d", "type": "deposit", "customer": "p1", "amount": "200", "affiliate": "carry", "occurred_at": "2025-11-01T08:00:00Z"}),
    );
    money(host, &casino, "n1", "wager", "10000", "2025-11-02T10:00:00Z");
    money(host, &casino, "n2", "win", "8000", "2025-11-03T10:00:00Z");
    money(host, &casino, "n3", "bonus", "500", "2025-11-04T10:00:00Z");
    money(host, &casino, "n4", "fee", "100", "2025-11-05T10:00:00Z");
    money(host, &casino, "d1", "win", "2000", "2025-12-24T10:00:00Z");
    money(host, &casino, "j1", "wager", "3000", "2026-01-10T10:00:00Z");
    let paid_by = |close: Value| paid(&close["settlements"][0]);
    assert_eq!(paid_by(close(host, &casino, "2025-11")), [("carry".into(), dec("420"))]);
    assert_eq!(paid_by(close(host, &casino, "2025-12")), []);
    assert_eq!(paid_by(close(host, &casino, "2026-01")), [("carry".into(), dec("300"))]);
    casino
}

#[test]
fn a_late_event_restates_the_closed_months_through_the_carryover_and_pays_the_difference_once() {
    let (_dir, data) = data_dir();
    let host = Host::start(&data);
    let casino = three_closed_months(&host);

    // A wager of 1,500 on 20 December arrives after January was closed. Restated: December
    // NGR -2,000 + 1,500 = -500 still pays 0 but carries only -500, so January pays
    // (3,000 - 500) x 30% = 750 instead of 300. The difference, +450, is paid once, in the open
    // month (February, the one after the latest closed), referencing January's settlement.
    let late = json!({"id": "late-dec", "type": "wager", "customer": "p1", "amount": "1500", "occurred_at": "2025-12-20T10:00:00Z"});
    let answer1 = host.accept(&casino, late.clone());
    assert_eq!(paid(&answer1), [("carry".into(), dec("450"))], "{answer1}");
    assert_eq!(answer1["commissions"][0]["restates"]["period"], "2026-01", "the answer says what it restates");
    let adjustment_id = answer1["commissions"][0]["id"].as_str().unwrap().to_owned();
    let (_, adjustment) = host.get(&casino, &format!("/commissions/{adjustment_id}"));
    assert_eq!(
        adjustment["restates"],
        json!({"period": "2026-01", "settlement": "commission-host.period:2026-01:carry"}),
        "{adjustment}"
    );
    assert_eq!(adjustment["occurred_at"], "2026-02-01T00:00:00Z", "dated in the open month");
    assert_eq!(adjustment["rule"], "revshare");
    assert_eq!(adjustment["event_id"], "late-dec");
    // Held for the deal's 30 days like any of the affiliate's commissions: not approvable yet.
    let time = |field: &str| commission_host::event::parse_time(adjustment[field].as_str().unwrap()).unwrap();
    assert_eq!(time("hold_until") - time("created_at"), 30 * 86_400_000, "{adjustment}");
    let (status, refused) = answer(
        host.client
            .post(host.url(&format!("/v1/operators/casino/commissions/{adjustment_id}/status")))
            .bearer_auth(&casino.api_key)
            .json(&json!({"status": "approved", "note": "paying February"}))
            .send(),
    );
    assert_eq!((status, refused["error"].as_str()), (StatusCode::CONFLICT, Some("on_hold")), "{refused}");
    // November and December were restated too, and changed nothing that was paid.
    assert_eq!(host.totals(&casino), [("carry".to_owned(), dec("1170"))].into(), "420 + 0 + 300 + 450");

    // The same event again: a duplicate, nothing paid twice.
    let (status, again) = host.post_events(&casino, &late);
    assert_eq!((status, again["status"].as_str()), (StatusCode::OK, Some("duplicate")), "{again}");
    assert_eq!(again["commissions"][0]["id"], adjustment_id.as_str());
    assert_eq!(host.totals(&casino), [("carry".to_owned(), dec("1170"))].into());

    // A win of 5,000 on 15 January, late too. January restated: NGR 3,000 - 5,000 = -2,000,
    // with -500 carried in: -2,500, pays 0 and carries -2,500. January was paid 300 + 450 = 750,
    // so the adjustment is -750. December and November are unchanged (nothing to adjust).
    let answer2 = money(&host, &casino, "late-jan", "win", "5000", "2026-01-15T10:00:00Z");
    assert_eq!(paid(&answer2), [("carry".into(), dec("-750"))], "{answer2}");
    assert_eq!(host.totals(&casino), [("carry".to_owned(), dec("420"))].into(), "1170 - 750");

    // The restated carryover is the live one: February's NGR 3,000 less the -2,500 carried
    // pays 500 x 30% = 150 (the carryover January left before the late win, 0, would pay 900).
    money(&host, &casino, "f1", "wager", "3000", "2026-02-10T10:00:00Z");
    assert_eq!(paid(&close(&host, &casino, "2026-02")["settlements"][0]), [("carry".into(), dec("150"))]);
    assert_eq!(host.totals(&casino), [("carry".to_owned(), dec("570"))].into());

    // The ledger replays to what was paid and to the state the host holds, late events included.
    common::assert_verifies(&host, &casino);
}

#[test]
fn a_late_first_deposit_pays_its_cpa_as_usual_and_its_late_wager_adjusts_the_month() {
    let (_dir, data) = data_dir();
    let host = Host::start(&data);
    let casino = host.create_operator("casino");
    host.install_plugin(&casino, "revshare");
    host.put_affiliate(&casino, "hybrid", None, json!({"revshare_percent": "20", "cpa": "50"}));
    let deposit = |id: &str, customer: &str, at: &str| {
        host.accept(
            &casino,
            json!({"id": id, "type": "deposit", "customer": customer, "amount": "100", "affiliate": "hybrid", "occurred_at": at}),
        )
    };
    let wager = |id: &str, customer: &str, amount: &str, at: &str| {
        host.accept(
            &casino,
            json!({"id": id, "type": "wager", "customer": customer, "amount": amount, "occurred_at": at}),
        )
    };
    assert_eq!(paid(&deposit("q1-d", "q1", "2025-11-01T08:00:00Z")), [("hybrid".into(), dec("50"))]);
    wager("q1-w", "q1", "500", "2025-11-02T08:00:00Z");
    // November NGR 500 at 20%: 100.
    assert_eq!(paid(&close(&host, &casino, "2025-11")["settlements"][0]), [("hybrid".into(), dec("100"))]);

    // A new customer's first deposit on 20 November, after the close: its CPA is paid as usual;
    // a deposit is no NGR, so November pays the same and nothing is adjusted.
    let late_deposit = deposit("q2-d", "q2", "2025-11-20T08:00:00Z");
    assert_eq!(paid(&late_deposit), [("hybrid".into(), dec("50"))], "{late_deposit}");
    assert!(late_deposit["commissions"][0].get("restates").is_none());

    // Its wager of 1,000 on 21 November: November NGR 1,500 at 20% = 300, 100 paid, so +200,
    // dated in December, the month after the latest closed one.
    let late_wager = wager("q2-w", "q2", "1000", "2025-11-21T08:00:00Z");
    assert_eq!(paid(&late_wager), [("hybrid".into(), dec("200"))], "{late_wager}");
    assert_eq!(late_wager["commissions"][0]["restates"]["period"], "2025-11");
    let (_, adjustment) =
        host.get(&casino, &format!("/commissions/{}", late_wager["commissions"][0]["id"].as_str().unwrap()));
    assert_eq!(adjustment["occurred_at"], "2025-12-01T00:00:00Z");
    assert_eq!(host.totals(&casino), [("hybrid".to_owned(), dec("400"))].into(), "50 + 100 + 50 + 200");
}

#[test]
fn the_period_statement_recomputes_to_what_the_close_stored_and_shows_the_late_lines() {
    let (_dir, data) = data_dir();
    let host = Host::start(&data);
    let casino = three_closed_months(&host);
    money(&host, &casino, "late-dec", "wager", "1500", "2025-12-20T10:00:00Z");
    money(&host, &casino, "late-jan", "win", "5000", "2026-01-15T10:00:00Z");

    let (status, body) = host.get(&casino, "/periods/2026-01/statement?affiliate=carry");
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["period"], "2026-01");
    let statement = &body["affiliates"][0];
    assert_eq!(statement["affiliate"], "carry");
    // Answered from storage (the statement stored at the close, the restated one from the
    // month's checkpoint); recomputed from the ledger on request, equal to the stored one.
    assert_eq!(statement["stored_at_close"], "stored", "{statement}");
    let (_, recomputed) = host.get(&casino, "/periods/2026-01/statement?affiliate=carry&recompute=true");
    let recomputed = &recomputed["affiliates"][0];
    assert_eq!(recomputed["stored_at_close"], "matches", "{recomputed}");
    assert_eq!((&recomputed["as_closed"], &recomputed["restated"]), (&statement["as_closed"], &statement["restated"]));

    // As January was closed: -2,000 carried in from December, one wager of 3,000, 300 paid,
    // nothing carried out.
    let closed = &statement["as_closed"];
    assert_eq!(closed["carried_in"], json!({"affiliate:carry:carryover": "-2000"}), "{closed}");
    assert_eq!(lines(closed), [("j1".into(), "wager".into(), Some(dec("3000")), false)]);
    assert_eq!(
        closed["lines"][0]["changes"],
        json!([{"key": "affiliate:carry:ngr:2026-01", "before": null, "after": "3000"}])
    );
    assert_eq!(settlement(closed), [dec("300")]);
    assert_eq!(closed["carried_out"], json!({"affiliate:carry:carryover": "0"}));

    // Restated with the late events in place: -500 carried in (December with its late wager),
    // the wager and the late win (-5,000, marked late), nothing to pay, -2,500 carried out.
    let restated = &statement["restated"];
    assert_eq!(restated["carried_in"], json!({"affiliate:carry:carryover": "-500"}), "{restated}");
    assert_eq!(
        lines(restated),
        [
            ("j1".into(), "wager".into(), Some(dec("3000")), false),
            ("late-jan".into(), "win".into(), Some(dec("-5000")), true),
        ]
    );
    assert_eq!(settlement(restated), Vec::<Decimal>::new());
    assert_eq!(restated["carried_out"], json!({"affiliate:carry:carryover": "-2500"}));

    // Paid: 300 at the close, +450 and -750 adjusted since, 0 in all: what the restatement pays.
    let paid_for = &statement["paid"];
    assert_eq!(amounts(&paid_for["at_close"]), [dec("300")]);
    assert_eq!(amounts(&paid_for["adjustments"]), [dec("450"), dec("-750")]);
    let adjusted_by: Vec<&str> =
        paid_for["adjustments"].as_array().unwrap().iter().map(|a| a["event_id"].as_str().unwrap()).collect();
    assert_eq!(adjusted_by, ["late-dec", "late-jan"]);
    assert_eq!(paid_for["total"].as_array().unwrap().len(), 1);
    assert_eq!(amount(&paid_for["total"][0]["amount"]), dec("0"));

    // November, untouched by the late events: the deposit contributes nothing, the four money
    // events 10,000 - 8,000 - 500 - 100 = 1,400, paying 420; as closed and restated alike.
    let (_, november) = host.get(&casino, "/periods/2025-11/statement?recompute=true");
    let november = &november["affiliates"][0];
    assert_eq!(november["stored_at_close"], "matches");
    assert_eq!(november["as_closed"], november["restated"]);
    let contributions: Vec<Option<Decimal>> = lines(&november["as_closed"]).into_iter().map(|line| line.2).collect();
    assert_eq!(contributions, [None, Some(dec("10000")), Some(dec("-8000")), Some(dec("-500")), Some(dec("-100"))]);
    assert_eq!(settlement(&november["as_closed"]), [dec("420")]);
    assert_eq!(amounts(&november["paid"]["adjustments"]), Vec::<Decimal>::new());

    let (status, open) = host.get(&casino, "/periods/2026-02/statement");
    assert_eq!(status, StatusCode::NOT_FOUND, "February is not closed: {open}");
    let (status, unknown) = host.get(&casino, "/periods/2026-01/statement?affiliate=nobody");
    assert_eq!(status, StatusCode::NOT_FOUND, "{unknown}");
}

/// A statement's lines come a page at a time (`lines_from`, `lines_limit`), each view saying
/// how many it has in all: the pages of the stored as-closed lines, then the restated one's
/// late lines after them, put together give the whole statement, as recomputed.
#[test]
fn a_statement_is_read_a_page_of_lines_at_a_time_and_the_pages_make_the_whole() {
    let (_dir, data) = data_dir();
    let host = Host::start(&data);
    let casino = three_closed_months(&host);
    money(&host, &casino, "late-nov", "bonus", "50", "2025-11-20T10:00:00Z");
    let whole = |view: &str| {
        let (status, body) = host.get(&casino, "/periods/2025-11/statement?affiliate=carry&recompute=true");
        assert_eq!(status, StatusCode::OK, "{body}");
        body["affiliates"][0][view].clone()
    };
    let (closed, restated) = (whole("as_closed"), whole("restated"));
    // The deposit and four money events as closed; the late bonus after them, restated.
    assert_eq!(closed["line_count"], 5, "{closed}");
    assert_eq!(restated["line_count"], 6, "{restated}");
    for (view, whole) in [("as_closed", &closed), ("restated", &restated)] {
        let mut lines = Vec::new();
        for from in (0..8).step_by(2) {
            let (status, page) = host
                .get(&casino, &format!("/periods/2025-11/statement?affiliate=carry&lines_from={from}&lines_limit=2"));
            assert_eq!(status, StatusCode::OK, "{page}");
            let statement = &page["affiliates"][0];
            assert_eq!(statement["stored_at_close"], "stored", "read from storage: {statement}");
            assert_eq!(statement[view]["line_count"], whole["line_count"], "{statement}");
            let page_lines = statement[view]["lines"].as_array().unwrap().clone();
            assert!(page_lines.len() <= 2, "{page_lines:?}");
            lines.extend(page_lines);
            // All but the lines are the same on every page.
            assert_eq!(statement[view]["settlement"], whole["settlement"]);
            assert_eq!(statement[view]["carried_out"], whole["carried_out"]);
        }
        assert_eq!(Value::Array(lines), whole["lines"], "{view}: the pages in order are the whole");
    }
    let (_, none) = host.get(&casino, "/periods/2025-11/statement?lines_limit=0");
    assert_eq!(none["affiliates"][0]["as_closed"]["lines"], json!([]), "{none}");
    assert_eq!(none["affiliates"][0]["as_closed"]["line_count"], 5, "{none}");

    for (query, field) in [("lines_limit=10001", "lines_limit"), ("lines_from=-1", "lines_from")] {
        let (status, refused) = host.get(&casino, &format!("/periods/2025-11/statement?{query}"));
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{query}: {refused}");
        assert!(refused.to_string().contains(field), "{query} names {field}: {refused}");
    }
}

#[test]
fn under_the_refuse_policy_a_late_event_is_refused_naming_occurred_at_and_the_period() {
    let (_dir, data) = data_dir();
    let host = Host::start(&data);
    let strict = host.create_operator("strict");
    host.install_plugin(&strict, "revshare");
    host.put_affiliate(&strict, "aff1", None, json!({}));
    let deposit = json!({"id": "d1", "type": "deposit", "customer": "c1", "amount": "50", "affiliate": "aff1", "occurred_at": "2025-11-02T00:00:00Z"});
    host.accept(&strict, deposit.clone());
    close(&host, &strict, "2025-11");

    let (status, refused) = settings(&host, &strict, json!({"late_events": "sometimes"}));
    assert_eq!(
        (status, refused["details"][0]["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("late_events"))
    );
    let (status, set) = settings(&host, &strict, json!({"late_events": "refuse"}));
    assert_eq!((status, set["late_events"].as_str()), (StatusCode::OK, Some("refuse")), "{set}");

    let (status, refused) = host.post_events(
        &strict,
        &json!({"id": "w1", "type": "wager", "customer": "c1", "amount": "100", "occurred_at": "2025-11-20T12:00:00Z"}),
    );
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
    assert_eq!(refused["details"][0]["field"], "occurred_at");
    let message = refused["message"].as_str().unwrap();
    assert!(message.contains("2025-11") && message.contains("closed"), "{message}");
    assert_eq!(host.get(&strict, "/events/w1").0, StatusCode::NOT_FOUND, "nothing was written");

    // The month after is open; and the deposit stored before the close is still a retry.
    host.accept(
        &strict,
        json!({"id": "w2", "type": "wager", "customer": "c1", "amount": "100", "occurred_at": "2025-12-01T00:00:00Z"}),
    );
    let (status, again) = host.post_events(&strict, &deposit);
    assert_eq!((status, again["status"].as_str()), (StatusCode::OK, Some("duplicate")), "{again}");
}

/// (event id, type, contribution, late) of a statement's lines.
fn lines(statement: &Value) -> Vec<(String, String, Option<Decimal>, bool)> {
    statement["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|line| {
            (
                line["event_id"].as_str().unwrap().to_owned(),
                line["kind"].as_str().unwrap().to_owned(),
                line["contribution"].as_str().map(|text| text.parse().unwrap()),
                line["late"].as_bool().unwrap(),
            )
        })
        .collect()
}

fn settlement(statement: &Value) -> Vec<Decimal> {
    amounts(&statement["settlement"]["commissions"])
}

fn amounts(list: &Value) -> Vec<Decimal> {
    list.as_array().unwrap().iter().map(|item| amount(&item["amount"])).collect()
}

/// Per-event deals take late events as received: the order of arrival decides which deposit was
/// the first, as it decided what was paid. Under `adjust` the late deposit, dated earlier, would
/// become the first in the restated state, and the chargeback of the deposit the CPA was paid on
/// would claw nothing back.
#[test]
fn under_as_received_a_late_deposit_leaves_the_paid_first_deposit_and_its_clawback_alone() {
    let (_dir, data) = data_dir();
    let host = Host::start(&data);
    let broker = host.create_operator("broker");
    host.install_plugin(&broker, "multi-event");
    host.put_affiliate(&broker, "aff1", None, json!({"ftd_cpa": "40"}));
    let (status, set) = settings(&host, &broker, json!({"late_events": "as_received"}));
    assert_eq!((status, set["late_events"].as_str()), (StatusCode::OK, Some("as_received")), "{set}");
    // The operator's history starts in November: a month before anything of its own cannot be
    // closed. A registration of no one's, paying nothing.
    host.accept(
        &broker,
        json!({"id": "start", "type": "registration", "customer": "c0", "occurred_at": "2025-11-01T00:00:00Z"}),
    );
    close(&host, &broker, "2025-11");

    let december = host.accept(
        &broker,
        json!({"id": "dec", "type": "deposit", "customer": "c1", "amount": "100", "affiliate": "aff1", "occurred_at": "2025-12-05T00:00:00Z"}),
    );
    assert_eq!(paid(&december), [("aff1".into(), dec("40"))]);
    // Dated in the closed November, it arrives second: not the first deposit, no adjustment.
    let late = host.accept(
        &broker,
        json!({"id": "nov", "type": "deposit", "customer": "c1", "amount": "100", "occurred_at": "2025-11-20T00:00:00Z"}),
    );
    assert_eq!(paid(&late), []);
    let chargeback = host.accept(
        &broker,
        json!({"id": "cb", "type": "chargeback", "customer": "c1", "attributes": {"deposit": "dec"}, "occurred_at": "2025-12-20T00:00:00Z"}),
    );
    assert_eq!(paid(&chargeback), [("aff1".into(), dec("-40"))]);
    assert_eq!(host.totals(&broker), [("aff1".to_owned(), Decimal::ZERO)].into());
    assert!(host.commissions(&broker, "").iter().all(|c| c["restates"].is_null()), "nothing restated");
    common::assert_verifies(&host, &broker);
}

#[test]
fn an_uplines_statement_lists_the_sub_affiliates_events_that_paid_it_an_override() {
    let (_dir, data) = data_dir();
    let host = Host::start(&data);
    let network = host.create_operator("network");
    host.install_plugin(&network, "multi-event");
    host.put_affiliate(&network, "master", None, json!({"override_percent": "10"}));
    host.put_affiliate(&network, "sub", Some("master"), json!({"ftd_cpa": "40"}));
    // A first deposit through the sub-affiliate: 40 to it, 10 % of that (4) to its master.
    let deposit = host.accept(
        &network,
        json!({"id": "ftd-1", "type": "deposit", "customer": "k1", "amount": "100", "affiliate": "sub", "occurred_at": "2025-11-03T09:00:00Z"}),
    );
    assert_eq!(paid(&deposit), [("sub".into(), dec("40")), ("master".into(), dec("4"))], "{deposit}");
    close(&host, &network, "2025-11");

    let (status, body) = host.get(&network, "/periods/2025-11/statement?affiliate=master&recompute=true");
    assert_eq!(status, StatusCode::OK, "{body}");
    let master = &body["affiliates"][0];
    assert_eq!(master["stored_at_close"], "matches", "{master}");
    let line = &master["as_closed"]["lines"][0];
    assert_eq!((line["event_id"].as_str(), line["through"].as_str()), (Some("ftd-1"), Some("sub")), "{master}");
    let payouts: Vec<(&str, Decimal)> = line["commissions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|payout| (payout["affiliate"].as_str().unwrap(), amount(&payout["amount"])))
        .collect();
    assert_eq!(payouts, [("sub", dec("40")), ("master", dec("4"))], "the override beside what it is a share of");

    // The sub-affiliate's own statement has the line as its own, with no `through`.
    let (_, body) = host.get(&network, "/periods/2025-11/statement?affiliate=sub");
    let line = &body["affiliates"][0]["as_closed"]["lines"][0];
    assert_eq!(line["event_id"], "ftd-1");
    assert!(line.get("through").is_none(), "{line}");
}
