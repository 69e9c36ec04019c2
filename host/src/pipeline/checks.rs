//! A plugin's answer, checked like any untrusted input before it becomes ledger entries:
//! affiliates in the chain, amounts held to their currency's minor units, reversals that claw
//! back what exists, once.

use std::collections::HashSet;

use rust_decimal::{Decimal, RoundingStrategy};

use crate::event::parse_amount;
use crate::sandbox::{PluginCommission, PluginCommissionRef};
use crate::store::records::{ChainLink, CommissionRecord, Failure, FailureKind, StoredEvent};
use crate::terms::hold_until;

/// The commission a reversal claws back, as [`checked_commissions`] checks the reversal against.
#[derive(Debug, Clone)]
pub struct ReversedCommission {
    pub id: String,
    pub amount: Decimal,
    pub currency: String,
}

/// Resolves a reversal's reference, for an affiliate, to the commission it claws back.
pub type FindReversed<'a> = dyn Fn(&PluginCommissionRef, &str) -> Option<ReversedCommission> + 'a;

/// How the host rounds a plugin's amount to its currency's minor units: half away from zero,
/// as the reference plugins that round do, so a figure they rounded already stays as it is, and
/// a reversal rounds to exactly the negative of its original.
pub const ROUNDING: RoundingStrategy = RoundingStrategy::MidpointAwayFromZero;

/// `amount` held to the minor units of `currency` (its ISO 4217 exponent: 2 for USD, 0 for JPY,
/// 3 for KWD) with [`ROUNDING`]; as it is for a currency without minor units (XAU, XDR).
/// Applied once, by the host, to each commission before it is stored.
pub fn to_minor_units(amount: Decimal, currency: iso_currency::Currency) -> Decimal {
    match currency.exponent() {
        Some(exponent) if amount.scale() > u32::from(exponent) => {
            let rounded = amount.round_dp_with_strategy(u32::from(exponent), ROUNDING);
            // No negative zero: -0.004 is paid as 0.00.
            if rounded.is_zero() { rounded.abs() } else { rounded }
        }
        _ => amount,
    }
}

/// The plugin's answer is untrusted input like any other: every field is checked before it
/// becomes a ledger entry. The commissions it returns have no ids yet; the commit assigns them.
///
/// Each amount is rounded to its currency's minor units ([`to_minor_units`]), the plugin's figure
/// kept beside it when that changed it. A reversal's reference (event id and rule) is resolved by
/// `find_reversed` to the affiliate's commission it claws back; it must exist, be in the same
/// currency, and the reversal must be negative and, rounded, no larger than it.
///
/// The commissions are dated `created_at` (a deal's hold runs from it): the receipt of the
/// request that made them, which the ledger holds, never the clock of the node that evaluates,
/// so that every node's view of a cluster dates them alike.
pub fn checked_commissions(
    commissions: Vec<PluginCommission>,
    chain: &[ChainLink],
    event: &StoredEvent,
    plugin_version: u32,
    max_commissions: usize,
    find_reversed: &FindReversed<'_>,
    created_at: i64,
) -> Result<Vec<CommissionRecord>, Failure> {
    let invalid = |message: String| Failure { kind: FailureKind::InvalidResult, message };
    if commissions.len() > max_commissions {
        return Err(invalid(format!(
            "the plugin returned {} commissions; at most {max_commissions} per event",
            commissions.len()
        )));
    }
    let commissions: Vec<CommissionRecord> = commissions
        .into_iter()
        .enumerate()
        .map(|(index, commission)| {
            let at = |problem: String| invalid(format!("commission {index}: {problem}"));
            if !chain.iter().any(|link| link.affiliate == commission.affiliate) {
                return Err(at(format!("affiliate {:?} is not in the referral chain", commission.affiliate)));
            }
            let exact = parse_amount(&commission.amount).map_err(|problem| at(format!("amount: {problem}")))?;
            let Some(currency) = iso_currency::Currency::from_code(&commission.currency) else {
                return Err(at(format!("currency {:?} is not an ISO 4217 code", commission.currency)));
            };
            let amount = to_minor_units(exact, currency);
            if commission.rule.is_empty() || commission.rule.len() > 64 {
                return Err(at("rule: 1 to 64 bytes".into()));
            }
            if commission.explanation.len() > 512 {
                return Err(at("explanation: at most 512 bytes".into()));
            }
            let reverses = match &commission.reverses {
                None => None,
                Some(reference) => {
                    let Some(original) = find_reversed(reference, &commission.affiliate) else {
                        return Err(at(format!(
                            "reverses {}/{}: {} has no such commission",
                            reference.event_id, reference.rule, commission.affiliate
                        )));
                    };
                    if original.currency != commission.currency {
                        return Err(at(format!(
                            "reverses {} paid in {}, but is in {}: a reversal claws back in the currency of \
                             what it reverses",
                            original.id, original.currency, commission.currency
                        )));
                    }
                    let paid = original.amount;
                    if !exact.is_sign_negative() || -amount > paid {
                        return Err(at(format!(
                            "a reversal of {paid} must be negative and at most {paid} in size; got {exact}"
                        )));
                    }
                    Some(original.id)
                }
            };
            let hold_until = match chain.iter().find(|link| link.affiliate == commission.affiliate) {
                Some(link) => hold_until(&link.deal, created_at).map_err(at)?,
                None => None,
            };
            Ok(CommissionRecord {
                id: String::new(),
                event_id: event.id.clone(),
                affiliate: commission.affiliate,
                customer: event.customer.clone(),
                amount,
                currency: commission.currency,
                rule: commission.rule,
                explanation: commission.explanation,
                plugin_version,
                occurred_at: event.occurred_at,
                created_at,
                reverses,
                fx_rate: event.fx.as_ref().map(|fx| fx.rate),
                version_reason: String::new(),
                hold_until,
                restates: None,
                unrounded_amount: (amount != exact).then_some(exact),
            })
        })
        .collect::<Result<_, _>>()?;
    // Each commission is clawed back once: a result reversing one twice could never commit.
    let mut reversed = HashSet::new();
    for (index, commission) in commissions.iter().enumerate() {
        if let Some(id) = &commission.reverses
            && !reversed.insert(id)
        {
            return Err(invalid(format!("commission {index}: reverses {id}, which an earlier one reverses already")));
        }
    }
    Ok(commissions)
}
