//! {{name}}: an operator's commission rules, as a commission-host plugin.
//!
//! The template pays a CPA on each customer's first deposit, once per customer, from the deal
//! term `ftd_cpa` (default 10), for a deposit of more than 0 and at least `ftd_min_deposit`
//! (default 0). Change `evaluate` to
//! the operator's deal; the SDK's `models` docs have an example per commission model.

use commission_plugin_sdk::prelude::*;
use commission_plugin_sdk::state::customer_key;

pub struct Rules;

impl Plugin for Rules {
    fn evaluate(event: &Event, context: &Context) -> Result<Vec<Commission>> {
        if event.kind != "deposit" {
            return Ok(vec![]);
        }
        let affiliate = context.affiliate();
        let amount = event.amount.ok_or_else(|| Error::new("a deposit without an amount"))?;
        let minimum = affiliate.deal.decimal_or("ftd_min_deposit", Decimal::ZERO)?;
        // No money in (0, negative, or an FX conversion that rounded to 0) is no first deposit,
        // whatever the minimum says.
        if amount <= Decimal::ZERO || amount < minimum {
            info!(
                "deposit {amount} is below ftd_min_deposit {minimum}: not a qualifying first deposit"
            );
            return Ok(vec![]);
        }
        if !state::claim(&customer_key(&event.customer, "ftd-paid")) {
            return Ok(vec![]);
        }
        let cpa = affiliate.deal.decimal_or("ftd_cpa", Decimal::TEN)?;
        Ok(vec![
            context
                .pay(affiliate, cpa)
                .rule("ftd-cpa")
                .because(format!("first deposit of {amount}: CPA {cpa}")),
        ])
    }
}

export_plugin!(Rules);

#[cfg(test)]
mod tests {
    use commission_plugin_sdk::testing;

    use super::*;

    #[test]
    fn the_first_deposit_pays_the_cpa_once() {
        testing::reset();
        let context =
            testing::context("acme", "USD", [testing::affiliate("aff1", &[("ftd_cpa", "25")])]);
        let deposit =
            |id| Event::new(id, "deposit", "c1", 0).with_amount(Decimal::from(100), "USD");
        assert_eq!(
            testing::paid(&Rules::evaluate(&deposit("d-1"), &context).unwrap()),
            ["aff1 25 ftd-cpa"]
        );
        assert_eq!(Rules::evaluate(&deposit("d-2"), &context).unwrap(), []);
    }

    #[test]
    fn a_deposit_of_nothing_is_no_first_deposit() {
        testing::reset();
        let context = testing::context("acme", "USD", [testing::affiliate("aff1", &[])]);
        let deposit = |id, amount| Event::new(id, "deposit", "c1", 0).with_amount(amount, "USD");
        assert_eq!(Rules::evaluate(&deposit("d-0", Decimal::ZERO), &context).unwrap(), []);
        assert_eq!(Rules::evaluate(&deposit("d-1", Decimal::from(-5)), &context).unwrap(), []);
        assert_eq!(
            testing::paid(&Rules::evaluate(&deposit("d-2", Decimal::ONE), &context).unwrap()),
            ["aff1 10 ftd-cpa"]
        );
    }

    /// The same file `commission-host plugin test` runs through the built component.
    #[test]
    fn fixtures() {
        commission_plugin_sdk::fixtures::run_file::<Rules>(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/fixtures/basic.ndjson"
        ));
    }
}
