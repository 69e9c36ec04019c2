//! Prop-trading challenges: the affiliate earns on the challenge's purchase (a percentage of
//! its price, a fixed amount, or both), on each evaluation phase passed, and when the trader is
//! funded. Each is paid once per challenge id, whatever the operator resends.
//!
//! Every event names its challenge in the attribute `challenge`:
//!
//! | event type | pays | deal term (operator config as default) |
//! | --- | --- | --- |
//! | `challenge_purchase` (amount: the price) | `purchase_percent` % of the price + `purchase_fixed` | both optional |
//! | `phase_passed` (attribute `phase`: 1, 2, ...) | `phase.N` for phase N, else `phase_payout` | none: nothing |
//! | `funded` | `funded_payout` | none: nothing |
//! | `challenge_refund` | claws back the purchase commission, with a reference | |
//!
//! A refunded challenge is void: its later phases and funding pay nothing. Payouts already made
//! for phases stay (the trader did pass them); only the purchase is refunded. Percentages are
//! rounded to cents, half away from zero.

use commission_plugin_sdk::RoundingStrategy;
use commission_plugin_sdk::prelude::*;

pub struct PropChallenge;

impl Plugin for PropChallenge {
    fn evaluate(event: &Event, context: &Context) -> Result<Vec<Commission>> {
        let kind = event.kind.as_str();
        if !matches!(kind, "challenge_purchase" | "phase_passed" | "funded" | "challenge_refund") {
            return Ok(vec![]);
        }
        let challenge = event
            .attributes
            .get("challenge")
            .ok_or_else(|| Error::new(format!("a {kind} without the attribute `challenge` (the challenge id)")))?;
        let key = |name: &str| format!("challenge:{challenge}:{name}");
        if kind == "challenge_refund" {
            state::set(&key("void"), event.id.as_bytes());
            let Some(purchase) = state::get(&key("purchase")) else {
                info!("challenge {challenge} refunded before any purchase was paid: nothing to claw back");
                return Ok(vec![]);
            };
            let purchase = String::from_utf8_lossy(&purchase).into_owned();
            return state::reverse_paid(&purchase, |paid| {
                format!("challenge {challenge} refunded: purchase commission {} clawed back", paid.amount)
            });
        }
        if state::flag(&key("void")) {
            info!("challenge {challenge} was refunded: its {kind} pays nothing");
            return Ok(vec![]);
        }
        let affiliate = context.affiliate();
        let terms = affiliate.deal.over(&context.config);
        let (amount, rule, because) = match kind {
            "challenge_purchase" => {
                let price =
                    event.amount.ok_or_else(|| Error::new("a challenge_purchase without an amount (its price)"))?;
                let percent = terms.decimal_or("purchase_percent", Decimal::ZERO)?;
                let fixed = terms.decimal_or("purchase_fixed", Decimal::ZERO)?;
                let amount = (price * percent / Decimal::ONE_HUNDRED + fixed)
                    .round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero);
                let because = format!("challenge {challenge} bought for {price}: {percent}% + {fixed} = {amount}");
                (amount, "challenge-purchase".to_owned(), because)
            }
            "phase_passed" => {
                let phase = event
                    .attributes
                    .get("phase")
                    .ok_or_else(|| Error::new("a phase_passed without the attribute `phase`"))?;
                if phase.is_empty() || !phase.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(Error::new(format!("phase: {phase:?} is not a phase number")));
                }
                let Some(amount) = terms.decimal(&format!("phase.{phase}"))?.or(terms.decimal("phase_payout")?) else {
                    return Ok(vec![]);
                };
                (
                    amount,
                    format!("challenge-phase-{phase}"),
                    format!("challenge {challenge}: phase {phase} passed, {amount}"),
                )
            }
            _ => {
                let Some(amount) = terms.decimal("funded_payout")? else { return Ok(vec![]) };
                (amount, "challenge-funded".to_owned(), format!("challenge {challenge}: trader funded, {amount}"))
            }
        };
        if amount.is_zero() || !state::claim(&key(&rule)) {
            return Ok(vec![]);
        }
        let paid = vec![context.pay(affiliate, amount).rule(&rule).because(because)];
        if kind == "challenge_purchase" {
            state::set(&key("purchase"), event.id.as_bytes());
            state::remember_paid(&event.id, &paid);
        }
        Ok(paid)
    }
}

export_plugin!(PropChallenge);

#[cfg(test)]
mod tests {
    use commission_plugin_sdk::testing;

    use super::*;

    #[test]
    fn a_phase_must_be_a_number_and_a_challenge_must_be_named() {
        testing::reset();
        let context = testing::context("prop", "USD", [testing::affiliate("aff1", &[("phase_payout", "20")])]);
        let phase = Event::new("p1", "phase_passed", "c1", 0).with_attribute("challenge", "ch1");
        let error = PropChallenge::evaluate(&phase.clone().with_attribute("phase", "one"), &context).unwrap_err();
        assert!(error.to_string().starts_with("phase:"), "{error}");
        let error = PropChallenge::evaluate(&Event::new("f1", "funded", "c1", 0), &context).unwrap_err();
        assert!(error.to_string().contains("`challenge`"), "{error}");
        let passed = PropChallenge::evaluate(&phase.with_attribute("phase", "1"), &context).unwrap();
        assert_eq!(testing::paid(&passed), ["aff1 20 challenge-phase-1"]);
    }

    /// The fixtures that `commission-host plugin test` also runs through the built component.
    #[test]
    fn fixtures() {
        commission_plugin_sdk::fixtures::run_file::<PropChallenge>(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/fixtures/prop-challenge.ndjson"
        ));
    }
}
