//! Amounts as the ledger's checks and replays add them up: every host-side sum is checked (a
//! total that does not fit a decimal is an error naming the total, never a panic or a wrong
//! figure), and a payout line is compared by value between the ledger and a replay.
//!
//! A leaf: the event path ([`crate::pipeline`]) and the replays on top of it ([`crate::replay`],
//! [`crate::shadow`], the API's totals) all use it, and it uses nothing of theirs.

use rust_decimal::Decimal;
use serde::Serialize;

use crate::store::records::CommissionRecord;

/// One payout line, as compared between the ledger and a replay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Payout {
    pub affiliate: String,
    #[schema(value_type = String)]
    pub amount: Decimal,
    pub currency: String,
    pub rule: String,
    pub explanation: String,
}

impl From<&CommissionRecord> for Payout {
    fn from(commission: &CommissionRecord) -> Self {
        Self {
            affiliate: commission.affiliate.clone(),
            amount: commission.amount,
            currency: commission.currency.clone(),
            rule: commission.rule.clone(),
            explanation: commission.explanation.clone(),
        }
    }
}

/// A sum of amounts that does not fit a decimal (about 7.9e28): no total is reported rather than
/// a wrong one.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the {what} overflows a decimal (the largest is about 7.9e28): adding {amount} to {total}")]
pub struct AmountOverflow {
    pub what: String,
    pub total: Decimal,
    pub amount: Decimal,
}

/// Adds `amount` to `total`, or says which total (`what`) would overflow.
pub(crate) fn checked_add(
    total: &mut Decimal,
    amount: Decimal,
    what: impl FnOnce() -> String,
) -> Result<(), AmountOverflow> {
    *total = total.checked_add(amount).ok_or_else(|| AmountOverflow { what: what(), total: *total, amount })?;
    Ok(())
}
