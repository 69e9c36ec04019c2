use rust_decimal::Decimal;

use crate::__bindings::commission::plugin::types as wit;

/// A payout decided by the plugin. Built with [`Context::pay`](crate::Context::pay).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commission {
    /// Whom it pays: an affiliate of the referral chain.
    pub affiliate: String,
    /// Positive to pay, negative to claw back.
    pub amount: Decimal,
    /// ISO 4217 code; the operator's unless [`CommissionBuilder::currency`] said otherwise.
    pub currency: String,
    /// A stable id of the rule that paid, e.g. `ftd-cpa`.
    pub rule: String,
    /// One human line with the numbers: why this was paid.
    pub explanation: String,
    /// For a clawback: the commission it reverses.
    pub reverses: Option<CommissionRef>,
}

/// Names a commission paid earlier: the event that caused it and its rule (the affiliate is
/// the reversal's own). The host links a reversal to it, and refuses to reverse it twice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommissionRef {
    /// The id of the event that paid it.
    pub event_id: String,
    /// The rule it was paid under.
    pub rule: String,
}

/// A commission missing its rule id and explanation: [`CommissionBuilder::because`] finishes it,
/// so that no commission is stored without its reason.
#[derive(Debug, Clone)]
pub struct CommissionBuilder {
    affiliate: String,
    amount: Decimal,
    currency: String,
    rule: String,
    reverses: Option<CommissionRef>,
}

impl CommissionBuilder {
    pub(crate) fn new(affiliate: &str, amount: Decimal, currency: &str) -> Self {
        Self {
            affiliate: affiliate.to_owned(),
            amount,
            currency: currency.to_owned(),
            rule: String::new(),
            reverses: None,
        }
    }

    /// Pays in `currency` instead of the operator's.
    pub fn currency(mut self, currency: &str) -> Self {
        self.currency = currency.to_owned();
        self
    }

    /// The stable id of the rule that pays, e.g. `ftd-cpa`: reports group by it, and reversals
    /// name it.
    pub fn rule(mut self, rule: &str) -> Self {
        self.rule = rule.to_owned();
        self
    }

    /// Makes this a clawback of the commission that `event_id` paid this affiliate under
    /// `rule`; the amount given to [`Context::pay`](crate::Context::pay) must be negative.
    pub fn reversing(mut self, event_id: &str, rule: &str) -> Self {
        self.reverses = Some(CommissionRef { event_id: event_id.to_owned(), rule: rule.to_owned() });
        self
    }

    /// Finishes the commission with one human line saying why it was paid, with the numbers.
    pub fn because(self, explanation: impl Into<String>) -> Commission {
        Commission {
            affiliate: self.affiliate,
            amount: self.amount,
            currency: self.currency,
            rule: self.rule,
            explanation: explanation.into(),
            reverses: self.reverses,
        }
    }
}

impl From<Commission> for wit::Commission {
    fn from(commission: Commission) -> Self {
        Self {
            affiliate: commission.affiliate,
            amount: commission.amount.to_string(),
            currency: commission.currency,
            rule: commission.rule,
            explanation: commission.explanation,
            reverses: commission
                .reverses
                .map(|reference| wit::CommissionRef { event_id: reference.event_id, rule: reference.rule }),
        }
    }
}
