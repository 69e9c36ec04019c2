//! The store's group commit: what a group writes, holds back and reverses, on sled on disk.

use super::*;
use crate::store::records::{EventRecord, EventStatus, StoredEvent};

/// A CPA of 10 USD paid to `affiliate` for `customer`'s event `event_id`.
pub(super) fn cpa_of_ten(event_id: &str, affiliate: &str, customer: &str) -> CommissionRecord {
    CommissionRecord {
        id: String::new(),
        event_id: event_id.into(),
        affiliate: affiliate.into(),
        customer: customer.into(),
        amount: rust_decimal::Decimal::TEN,
        currency: "USD".into(),
        rule: "cpa".into(),
        explanation: "cpa".into(),
        plugin_version: 1,
        occurred_at: 0,
        created_at: 0,
        reverses: None,
        fx_rate: None,
        version_reason: String::new(),
        hold_until: None,
        restates: None,
        unrounded_amount: None,
    }
}

/// The store at `path` opened again after the last handle on it was dropped: sled lets go of
/// its directory's lock from a background thread a moment after the drop, so a busy machine
/// can see it still held. Tried for up to 10 s.
pub(super) fn reopen(path: &std::path::Path) -> Store {
    let started = std::time::Instant::now();
    loop {
        match Store::open(path) {
            Ok(store) => return store,
            Err(_) if started.elapsed() < std::time::Duration::from_secs(10) => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(error) => panic!("sled opens again: {error}"),
        }
    }
}

/// A deposit of `customer` that read `read` as absent and writes it; no commissions.
pub(super) fn deposit(id: &str, customer: &str, read: &str) -> EventCommit {
    EventCommit {
        operator: "op".into(),
        record: EventRecord {
            seq: 0,
            event: StoredEvent {
                id: id.into(),
                kind: "deposit".into(),
                customer: customer.into(),
                occurred_at: 0,
                amount: None,
                currency: None,
                affiliate: Some("aff".into()),
                attributes: Default::default(),
                fx: None,
            },
            content_sha256: id.into(),
            received_at: 0,
            status: EventStatus::Accepted,
            failure: None,
            attributed_to: Some("aff".into()),
            evaluation: None,
            commission_ids: Vec::new(),
            attempts: 1,
            restated: false,
            taken_as_received: false,
        },
        replaces_failed_attempt: None,
        new_binding: Some(CustomerBinding { affiliate: "aff".into(), bound_by_event: id.into(), bound_at: 0 }),
        state_reads: [(read.to_owned(), None)].into(),
        state_writes: [(read.to_owned(), Some(id.as_bytes().to_vec()))].into(),
        commissions: Vec::new(),
        expected_last_seq: None,
        stored_bytes_quota: None,
    }
}

#[test]
fn a_group_commits_each_event_or_nothing_of_it_and_the_others_go_on() {
    let directory = tempfile::tempdir().expect("a temporary directory");
    let store = Store::open(directory.path()).expect("sled opens");
    let group = [
        deposit("e1", "c1", "affiliate:aff:count"),
        // Read the key before e1 wrote it: stale once e1 is in, so none of it is written.
        deposit("e2", "c2", "affiliate:aff:count"),
        // The same id as e1, committed just before it in the same group: a sender's re-send.
        deposit("e1", "c1", "customer:c1"),
        deposit("e3", "c3", "customer:c3"),
    ];
    let outcomes = store.commit_events(&group).expect("the group is written");

    let seqs: Vec<Option<u64>> = outcomes
        .iter()
        .map(|outcome| match outcome {
            CommitOutcome::Committed { record, .. } => Some(record.seq),
            _ => None,
        })
        .collect();
    assert_eq!(seqs, [Some(1), None, None, Some(2)], "sequence numbers stay dense: {outcomes:?}");
    assert!(matches!(outcomes[1], CommitOutcome::Stale));
    assert!(matches!(&outcomes[2], CommitOutcome::Exists(existing) if existing.seq == 1));

    assert_eq!(store.event("op", "e2").unwrap().map(|record| record.seq), None);
    assert_eq!(store.binding("op", "c2").unwrap(), None, "the stale commit bound nobody");
    assert_eq!(store.state_value("op", "affiliate:aff:count").unwrap().as_deref(), Some(&b"e1"[..]));
    assert_eq!(store.state_value("op", "customer:c1").unwrap(), None, "the retry wrote nothing");
    assert_eq!(store.state_value("op", "customer:c3").unwrap().as_deref(), Some(&b"e3"[..]));
    assert_eq!(store.last_sequence("op").unwrap(), 2);
}

#[test]
fn a_customers_events_after_one_that_did_not_commit_are_held_back_with_it() {
    let directory = tempfile::tempdir().expect("a temporary directory");
    let store = Store::open(directory.path()).expect("sled opens");
    store.commit_events(&[deposit("e0", "c0", "affiliate:aff:count")]).unwrap();
    // As a batch evaluates them: e2 read nothing, and found c1 bound by e1, still pending.
    let mut second = deposit("e2", "c1", "customer:c1");
    second.state_reads.clear();
    second.new_binding = None;
    let group = [deposit("e1", "c1", "affiliate:aff:count"), second, deposit("e3", "c3", "customer:c3")];
    let outcomes = store.commit_events(&group).unwrap();

    assert!(matches!(outcomes[0], CommitOutcome::Stale), "e1 read the count before e0: {outcomes:?}");
    assert!(matches!(outcomes[1], CommitOutcome::Stale), "e2 comes after e1 or not at all: {outcomes:?}");
    assert_eq!(committed(&outcomes[2]).seq, 2, "another customer's event goes on");
    assert_eq!(store.event("op", "e2").unwrap().map(|record| record.seq), None);
    assert_eq!(store.binding("op", "c1").unwrap(), None);
}

fn committed(outcome: &CommitOutcome) -> &EventRecord {
    match outcome {
        CommitOutcome::Committed { record, .. } => record,
        other => panic!("not committed: {other:?}"),
    }
}

#[test]
fn a_failed_event_retried_in_a_group_moves_to_the_end_of_the_ledger_order() {
    let directory = tempfile::tempdir().expect("a temporary directory");
    let store = Store::open(directory.path()).expect("sled opens");
    let mut failed = deposit("f1", "c1", "customer:c1");
    failed.record.status = EventStatus::Failed;
    failed.state_writes.clear();
    assert_eq!(committed(&store.commit_events(&[failed]).unwrap()[0]).seq, 1);
    assert_eq!(store.failed_event_ids("op").unwrap(), ["f1"]);

    let mut retry = deposit("f1", "c1", "customer:c1");
    retry.record.attempts = 2;
    retry.replaces_failed_attempt = Some(1);
    // The customer is bound already, by the failed attempt.
    retry.new_binding = None;
    let mut late_retry = deposit("f1", "c1", "customer:c1");
    late_retry.replaces_failed_attempt = Some(1);
    late_retry.new_binding = None;
    let outcomes = store.commit_events(&[deposit("e2", "c2", "customer:c2"), retry, late_retry]).unwrap();

    assert_eq!(committed(&outcomes[0]).seq, 2);
    assert_eq!((committed(&outcomes[1]).seq, committed(&outcomes[1]).attempts), (3, 2));
    // A second retry of the same attempt, in the same group, finds it retried already.
    assert!(matches!(&outcomes[2], CommitOutcome::Exists(existing) if existing.seq == 3), "{outcomes:?}");
    let order: Vec<String> = store.event_ids_in_order("op").collect::<Result<_, _>>().unwrap();
    assert_eq!(order, ["e2", "f1"], "the failed attempt's place in the order is gone");
    assert!(store.failed_event_ids("op").unwrap().is_empty());
    assert_eq!(store.state_value("op", "customer:c1").unwrap().as_deref(), Some(&b"f1"[..]));
}

#[test]
fn two_events_of_a_group_clawing_back_one_commission_reverse_it_once() {
    let directory = tempfile::tempdir().expect("a temporary directory");
    let store = Store::open(directory.path()).expect("sled opens");
    let mut paid = deposit("d1", "c1", "customer:c1");
    let commission = cpa_of_ten("d1", "aff", "c1");
    paid.commissions = vec![commission.clone()];
    let cpa = committed(&store.commit_events(&[paid]).unwrap()[0]).commission_ids[0].clone();

    let chargeback = |id: &str| {
        let mut event = deposit(id, "c1", &format!("customer:c1:{id}"));
        event.new_binding = None;
        event.commissions = vec![CommissionRecord {
            amount: -rust_decimal::Decimal::TEN,
            reverses: Some(cpa.clone()),
            ..commission.clone()
        }];
        event
    };
    let outcomes = store.commit_events(&[chargeback("cb1"), chargeback("cb2")]).unwrap();
    let reversal = committed(&outcomes[0]).commission_ids[0].clone();
    assert!(matches!(outcomes[1], CommitOutcome::Stale), "{outcomes:?}");
    assert!(store.is_reversed("op", &cpa).unwrap());
    assert_eq!(store.commission_status("op", &cpa).unwrap().history.len(), 1, "reversed once, by {reversal}");
    assert_eq!(store.event("op", "cb2").unwrap().map(|record| record.seq), None);
}
