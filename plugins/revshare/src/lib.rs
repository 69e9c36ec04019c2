//! RevShare: a percentage of each affiliate's net gaming revenue (NGR) per calendar month,
//! with its customers taken together, paid when the operator closes the month. With a `cpa`
//! term it is a hybrid deal: a CPA on each customer's first deposit as well.
//!
//! NGR = bets - wins - bonuses - fees, from the events:
//!
//! | event type | amount counts as |
//! | --- | --- |
//! | `wager` (or `bet`) | + bets |
//! | `win` | - wins |
//! | `bonus` | - bonuses |
//! | `fee` | - fees |
//! | `deposit` | the first one pays the hybrid CPA, if any |
//!
//! | deal term | default | meaning |
//! | --- | --- | --- |
//! | `revshare_percent` | 30 | share of the month's NGR |
//! | `negative_carryover` | true | a negative month is carried into the next ones until earned back |
//! | `cpa` | none | hybrid: paid on a customer's first deposit |
//!
//! The month of an event is the UTC month it occurred in. Events of a month that arrive after
//! the month was closed count towards the month they occurred in, which is settled already:
//! the host restates the closed months with them in place (replaying `settle`) and pays the
//! difference as adjustments; the plugin has nothing to do for it.

use commission_plugin_sdk::prelude::*;
use commission_plugin_sdk::state::{affiliate_key, customer_key};

pub struct RevShare;

impl Plugin for RevShare {
    fn evaluate(event: &Event, context: &Context) -> Result<Vec<Commission>> {
        let affiliate = context.affiliate();
        let sign = match event.kind.as_str() {
            "wager" | "bet" => Decimal::ONE,
            "win" | "bonus" | "fee" => Decimal::NEGATIVE_ONE,
            "deposit" => return hybrid_cpa(event, context, affiliate),
            _ => return Ok(vec![]),
        };
        let amount = event.amount.ok_or_else(|| Error::new(format!("a {} without an amount", event.kind)))?;
        let month = Period::month_of(event.occurred_at);
        let ngr = state::add_decimal(&affiliate_key(&affiliate.id, &format!("ngr:{month}")), sign * amount)?;
        debug!("{} {amount}: {} NGR for {month} now {ngr}", event.kind, affiliate.id);
        Ok(vec![])
    }

    fn settle(period: &Period, context: &Context) -> Result<Vec<Commission>> {
        let affiliate = context.affiliate();
        let percent = affiliate.deal.decimal_or("revshare_percent", Decimal::from(30))?;
        let carry_negative = match affiliate.deal.get("negative_carryover").unwrap_or("true") {
            "true" => true,
            "false" => false,
            other => return Err(Error::new(format!("negative_carryover: {other:?} is not true or false"))),
        };
        let ngr = state::decimal(&affiliate_key(&affiliate.id, &format!("ngr:{period}")))?;
        let carry_key = affiliate_key(&affiliate.id, "carryover");
        let carried = if carry_negative { state::decimal(&carry_key)? } else { Decimal::ZERO };
        let base = ngr + carried;
        if base <= Decimal::ZERO {
            state::set_decimal(&carry_key, if carry_negative { base } else { Decimal::ZERO });
            info!("{period}: NGR {ngr}, carried {carried}: nothing to pay, {base} carried on");
            return Ok(vec![]);
        }
        state::set_decimal(&carry_key, Decimal::ZERO);
        // Paid in cents: rounded half away from zero, shown with two decimals.
        let mut share = (base * percent / Decimal::ONE_HUNDRED)
            .round_dp_with_strategy(2, commission_plugin_sdk::RoundingStrategy::MidpointAwayFromZero);
        share.rescale(2);
        let carried_note = if carried.is_zero() { String::new() } else { format!(" after {carried} carried over") };
        Ok(vec![
            context
                .pay(affiliate, share)
                .rule("revshare")
                .because(format!("RevShare {percent}% of {period} NGR {ngr}{carried_note}: {share}")),
        ])
    }
}

export_plugin!(RevShare);

fn hybrid_cpa(event: &Event, context: &Context, affiliate: &Affiliate) -> Result<Vec<Commission>> {
    let Some(cpa) = affiliate.deal.decimal("cpa")? else { return Ok(vec![]) };
    if !state::claim(&customer_key(&event.customer, "ftd-paid")) {
        return Ok(vec![]);
    }
    Ok(vec![context.pay(affiliate, cpa).rule("cpa").because(format!("hybrid deal: CPA {cpa} on first deposit"))])
}

#[cfg(test)]
mod tests {
    use commission_plugin_sdk::testing;

    use super::*;

    const NOV_2025: i64 = 1_761_955_200_000; // 2025-11-01T00:00:00Z
    const DEC_2025: i64 = 1_764_547_200_000;
    const JAN_2026: i64 = 1_767_225_600_000;
    const FEB_2026: i64 = 1_769_904_000_000;

    fn month(id: &str, starts_at: i64, ends_at: i64) -> Period {
        Period { id: id.into(), starts_at, ends_at }
    }

    fn money(kind: &str, amount: i64, at: i64, context: &Context) {
        let event = Event::new(kind, kind, "p1", at).with_amount(Decimal::from(amount), "USD");
        assert_eq!(RevShare::evaluate(&event, context).unwrap(), vec![]);
    }

    fn settled(period: &Period, context: &Context) -> Vec<String> {
        RevShare::settle(period, context).unwrap().into_iter().map(|c| c.amount.to_string()).collect()
    }

    /// The field guide's months: 1,400 -> 420; -2,000 -> 0 carried; 3,000 -> 300 (900 without).
    #[test]
    fn negative_carryover_across_three_months() {
        for (carryover, january) in [("true", "300.00"), ("false", "900.00")] {
            testing::reset();
            let deal: Properties = [("negative_carryover", carryover)].into_iter().collect();
            let context = testing::context("acme", "USD", [Affiliate::new("aff1", deal)]);
            money("wager", 10_000, NOV_2025 + 1, &context);
            money("win", 8_000, NOV_2025 + 2, &context);
            money("bonus", 500, NOV_2025 + 3, &context);
            money("fee", 100, NOV_2025 + 4, &context);
            assert_eq!(settled(&month("2025-11", NOV_2025, DEC_2025), &context), ["420.00"]);
            money("win", 2_000, DEC_2025 + 1, &context);
            assert_eq!(settled(&month("2025-12", DEC_2025, JAN_2026), &context), Vec::<String>::new());
            money("wager", 3_000, JAN_2026 + 1, &context);
            assert_eq!(settled(&month("2026-01", JAN_2026, FEB_2026), &context), [january], "carryover {carryover}");
        }
    }
}
