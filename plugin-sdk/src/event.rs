use rust_decimal::Decimal;

use crate::__bindings::commission::plugin::types as wit;
use crate::properties::parse_decimal;
use crate::{Properties, Result};

/// One thing a referred customer did, as the operator reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The operator's unique id for the event.
    pub id: String,
    /// `deposit`, `trade`, `registration`, ... (free text: operators invent kinds).
    pub kind: String,
    /// The operator's id of the customer: what attribution and per-customer state key on.
    pub customer: String,
    /// Unix milliseconds: when it happened. The only clock a plugin has.
    pub occurred_at: i64,
    /// The money involved, in the operator's currency (the host converts others first).
    pub amount: Option<Decimal>,
    /// ISO 4217 code of `amount`.
    pub currency: Option<String>,
    /// Everything else the operator sent, e.g. `lots`, `symbol`.
    pub attributes: Properties,
}

impl Event {
    /// A new event with no amount and no attributes; for tests and fixtures.
    pub fn new(id: &str, kind: &str, customer: &str, occurred_at: i64) -> Self {
        Self {
            id: id.to_owned(),
            kind: kind.to_owned(),
            customer: customer.to_owned(),
            occurred_at,
            amount: None,
            currency: None,
            attributes: Properties::default(),
        }
    }

    /// This event with an amount in `currency`.
    pub fn with_amount(mut self, amount: Decimal, currency: &str) -> Self {
        self.amount = Some(amount);
        self.currency = Some(currency.to_owned());
        self
    }

    /// This event with the attribute `key` set to `value`.
    pub fn with_attribute(mut self, key: &str, value: &str) -> Self {
        self.attributes = self.attributes.iter().chain([(key, value)]).collect::<Properties>();
        self
    }

    pub(crate) fn from_wit(event: wit::Event) -> Result<Self> {
        Ok(Self {
            amount: event.amount.as_deref().map(|amount| parse_decimal("amount", amount)).transpose()?,
            id: event.id,
            kind: event.kind,
            customer: event.customer,
            occurred_at: event.occurred_at,
            currency: event.currency,
            attributes: event.attributes.into_iter().collect(),
        })
    }
}
