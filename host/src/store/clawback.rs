//! What a reversal does to the commission it claws back, decided by that commission's status
//! when the reversal is committed, and how a netted pair then moves:
//!
//! | original | the original | the reversal |
//! | --- | --- | --- |
//! | `pending`/`approved`, reversed in full | `reversed` | `reversed`: the pair is void |
//! | `pending`/`approved`, reversed in part | keeps its status | takes it, and moves with the original: what is paid is the rest |
//! | `paid` | stays `paid` | `pending`: a deduction, moved like any commission |
//! | `rejected` | stays `rejected` | `rejected`: nothing to claw back |
//!
//! The original's record keeps which reversal took how much (`clawed_back`).

use rust_decimal::Decimal;

use super::records::{ClawBack, ClawBackOutcome, CommissionRecord, CommissionStatus, StatusChange, StatusRecord};

/// Applies `reversal` to its original's status record (`original_amount` is what the original
/// pays). Returns the reversal's own status record, when it is not simply `pending`.
pub(super) fn claw_back(
    original: &mut StatusRecord,
    original_amount: Decimal,
    reversal: &CommissionRecord,
) -> Option<StatusRecord> {
    use CommissionStatus::*;
    let original_id = reversal.reverses.as_deref().unwrap_or_default();
    let change = |status: CommissionStatus, note: String| StatusChange {
        status,
        at: reversal.created_at,
        by: "host".into(),
        note,
        reference: None,
    };
    let by = format!("{} (event {})", reversal.id, reversal.event_id);
    let (outcome, reversal_status) = match original.status {
        Pending | Approved if -reversal.amount >= original_amount => {
            original.status = Reversed;
            original.history.push(change(Reversed, format!("reversed in full by {by} before it was paid: void")));
            let note = format!("reverses {original_id} in full before it was paid: void");
            (
                ClawBackOutcome::Voided,
                Some(StatusRecord {
                    status: Reversed,
                    history: vec![change(Reversed, note)],
                    ..StatusRecord::default()
                }),
            )
        }
        status @ (Pending | Approved) => {
            let note = format!(
                "reverses {} of {original_id} ({}) before it was paid: netted, moves with it",
                -reversal.amount,
                status.as_str()
            );
            let netted = StatusRecord {
                status,
                history: vec![change(status, note)],
                clawed_back: None,
                moves_with: Some(original_id.to_owned()),
            };
            (ClawBackOutcome::Netted, Some(netted))
        }
        Paid => (ClawBackOutcome::Deducted, None),
        // `reversed` cannot be met here (a commission is clawed back once); like `rejected`,
        // there is nothing left to claw back.
        Rejected | Reversed => {
            let note = format!("{original_id} is {}: nothing to claw back", original.status.as_str());
            (
                ClawBackOutcome::NothingToClawBack,
                Some(StatusRecord {
                    status: Rejected,
                    history: vec![change(Rejected, note)],
                    ..StatusRecord::default()
                }),
            )
        }
    };
    original.clawed_back = Some(ClawBack { by: reversal.id.clone(), amount: reversal.amount, outcome });
    reversal_status
}

/// The move of a netted reversal that follows its original's move `change` (of `original_id`).
pub(super) fn follow(reversal: &mut StatusRecord, original_id: &str, change: &StatusChange) {
    reversal.status = change.status;
    reversal
        .history
        .push(StatusChange { note: format!("moved with {original_id}: {}", change.note), ..change.clone() });
}

#[cfg(test)]
mod tests {
    use super::*;
    use CommissionStatus::*;

    fn reversal(amount: i64) -> CommissionRecord {
        serde_json::from_value(serde_json::json!({
            "id": "cm_2", "event_id": "cb1", "affiliate": "aff", "customer": "c1", "amount": amount.to_string(),
            "currency": "USD", "rule": "cpa-reversal", "explanation": "", "plugin_version": 1,
            "occurred_at": 0, "created_at": 0, "reverses": "cm_1"
        }))
        .expect("a commission as stored")
    }

    fn original(status: CommissionStatus) -> StatusRecord {
        StatusRecord { status, ..StatusRecord::default() }
    }

    /// (original's status, reversal's amount of an original of 10) -> (original's status after,
    /// the reversal's status, what happened).
    #[test]
    fn a_reversal_does_what_the_originals_status_allows() {
        for (before, amount, after, own, outcome) in [
            (Pending, -10, Reversed, Reversed, ClawBackOutcome::Voided),
            (Approved, -10, Reversed, Reversed, ClawBackOutcome::Voided),
            (Pending, -4, Pending, Pending, ClawBackOutcome::Netted),
            (Approved, -4, Approved, Approved, ClawBackOutcome::Netted),
            (Paid, -10, Paid, Pending, ClawBackOutcome::Deducted),
            (Paid, -4, Paid, Pending, ClawBackOutcome::Deducted),
            (Rejected, -10, Rejected, Rejected, ClawBackOutcome::NothingToClawBack),
        ] {
            let mut status = original(before);
            let reversal = reversal(amount);
            let own_record = claw_back(&mut status, Decimal::TEN, &reversal);
            let case = format!("{before:?} reversed by {amount}");
            assert_eq!(status.status, after, "{case}");
            assert_eq!(own_record.as_ref().map_or(Pending, |record| record.status), own, "{case}");
            let clawed = status.clawed_back.expect("the original keeps what clawed it back");
            assert_eq!((clawed.by.as_str(), clawed.amount, clawed.outcome), ("cm_2", Decimal::from(amount), outcome));
            let netted = outcome == ClawBackOutcome::Netted;
            assert_eq!(own_record.and_then(|record| record.moves_with).is_some(), netted, "{case}");
        }
    }

    #[test]
    fn a_netted_reversal_moves_only_with_its_original() {
        let mut status = original(Pending);
        let mut netted = claw_back(&mut status, Decimal::TEN, &reversal(-4)).expect("netted");
        assert!(netted.refusal(Approved).unwrap().contains("moves with cm_1"));
        assert_eq!(status.refusal(Approved), None);
        let approval =
            StatusChange { status: Approved, at: 1, by: "operator".into(), note: "ok".into(), reference: None };
        follow(&mut netted, "cm_1", &approval);
        assert_eq!(netted.status, Approved);
        assert_eq!(netted.history.last().unwrap().note, "moved with cm_1: ok");
    }

    #[test]
    fn status_records_kept_before_reversals_had_rules_still_read() {
        let old: StatusRecord = serde_json::from_str(
            r#"{"status":"reversed","history":[{"status":"reversed","at":1,"by":"host","note":"reversed by cm_2"}]}"#,
        )
        .expect("an old record decodes");
        assert_eq!((old.status, old.clawed_back, old.moves_with), (Reversed, None, None));
        assert!(reversal(-4).unrounded_amount.is_none(), "an old commission decodes without unrounded_amount");
    }
}
