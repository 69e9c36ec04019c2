use rust_decimal::Decimal;

use crate::__bindings::commission::plugin::types as wit;
use crate::{CommissionBuilder, Properties};

/// An affiliate in the referral chain, with its deal terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Affiliate {
    /// The operator's id of the affiliate.
    pub id: String,
    /// Its deal terms (`ftd_cpa`, `revshare_percent`, ...), as the operator set them.
    pub deal: Properties,
}

impl Affiliate {
    /// An affiliate with these deal terms; for tests and fixtures.
    pub fn new(id: &str, deal: Properties) -> Self {
        Self { id: id.to_owned(), deal }
    }
}

/// Whom an event is evaluated for: the operator and the customer's referral chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Context {
    /// The operator's id.
    pub operator: String,
    /// ISO 4217 code the operator pays in.
    pub operator_currency: String,
    /// The operator's own settings, shared by all its affiliates.
    pub config: Properties,
    /// The attributed affiliate first, then its parent, and so on up. Never empty.
    pub referral_chain: Vec<Affiliate>,
}

impl Context {
    /// The affiliate the customer is attributed to.
    pub fn affiliate(&self) -> &Affiliate {
        &self.referral_chain[0]
    }

    /// The attributed affiliate's parents, nearest first, each with the level it sits at
    /// (1 for the direct parent).
    pub fn parents(&self) -> impl Iterator<Item = (usize, &Affiliate)> {
        self.referral_chain.iter().enumerate().skip(1)
    }

    /// Starts a commission to `affiliate` in the operator's currency.
    pub fn pay(&self, affiliate: &Affiliate, amount: Decimal) -> CommissionBuilder {
        CommissionBuilder::new(&affiliate.id, amount, &self.operator_currency)
    }

    pub(crate) fn from_wit(context: wit::Context) -> Self {
        Self {
            operator: context.operator,
            operator_currency: context.operator_currency,
            config: context.config.into_iter().collect(),
            referral_chain: context
                .referral_chain
                .into_iter()
                .map(|affiliate| Affiliate { id: affiliate.id, deal: affiliate.deal.into_iter().collect() })
                .collect(),
        }
    }
}
