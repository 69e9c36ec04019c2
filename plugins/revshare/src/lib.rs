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
//! | `revshare_tiers` | none | `FROM:PERCENT,...`, e.g. `0:25,6:30,16:35`: the share depends on the month's new depositing customers (below) |
//! | `negative_carryover` | true | a negative month is carried into the next ones until earned back |
//! | `cpa` | none | hybrid: paid on a customer's first deposit |
//!
//! With `revshare_tiers`, the month's share is that of the highest tier whose FROM is at most the
//! number of the affiliate's customers who made their first deposit in that month (FTDs), and
//! it applies to the whole month: `0:25,6:30,16:35` pays 25% with up to 5 FTDs, 30% with 6 to
//! 15, 35% with 16 or more. The first tier starts at 0. A customer counts once, in the month of
//! its first deposit.
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
            // No money in (0, negative, or an FX conversion that rounded to 0) is no first deposit.
            "deposit" if event.amount.is_some_and(|amount| amount <= Decimal::ZERO) => return Ok(vec![]),
            "deposit" => {
                count_first_deposit(event, affiliate)?;
                return hybrid_cpa(event, context, affiliate);
            }
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
        let (percent, tier_note) = percent(period, affiliate)?;
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
                .because(format!("RevShare {percent}%{tier_note} of {period} NGR {ngr}{carried_note}: {share}")),
        ])
    }
}

export_plugin!(RevShare);

/// Counts the customer's first deposit in its month, for `revshare_tiers`.
fn count_first_deposit(event: &Event, affiliate: &Affiliate) -> Result<()> {
    if state::claim(&customer_key(&event.customer, "first-deposit")) {
        let month = Period::month_of(event.occurred_at);
        state::add_decimal(&affiliate_key(&affiliate.id, &format!("ftds:{month}")), Decimal::ONE)?;
    }
    Ok(())
}

/// The month's share, and what chose it when a tier did.
fn percent(period: &Period, affiliate: &Affiliate) -> Result<(Decimal, String)> {
    let tiers = affiliate.deal.tiers("revshare_tiers", 0)?;
    if tiers.is_empty() {
        return Ok((affiliate.deal.decimal_or("revshare_percent", Decimal::from(30))?, String::new()));
    }
    let ftds = state::decimal(&affiliate_key(&affiliate.id, &format!("ftds:{period}")))?;
    let (from, percent) =
        tiers.iter().rev().find(|(from, _)| Decimal::from(*from) <= ftds).copied().unwrap_or(tiers[0]);
    Ok((percent, format!(" (tier from {from} FTDs: {ftds} this month)")))
}

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

    fn deposit(customer: &str, at: i64, context: &Context) {
        let event =
            Event::new(&format!("{customer}-d{at}"), "deposit", customer, at).with_amount(Decimal::from(50), "USD");
        assert_eq!(RevShare::evaluate(&event, context).unwrap(), vec![]);
    }

    /// 0:25,3:30,5:35 on a month's NGR of 1,000: the share follows the month's first deposits,
    /// a customer's later deposits do not count, and neither does a first deposit in another month.
    #[test]
    fn tiers_follow_the_months_first_deposits() {
        for (customers, expected) in [(2, "250.00"), (3, "300.00"), (4, "300.00"), (5, "350.00"), (7, "350.00")] {
            testing::reset();
            let deal: Properties = [("revshare_tiers", "5:35, 0:25,3:30")].into_iter().collect();
            let context = testing::context("acme", "USD", [Affiliate::new("aff1", deal)]);
            deposit("october", NOV_2025 - 1, &context);
            for n in 0..customers {
                deposit(&format!("c{n}"), NOV_2025 + 10, &context);
                deposit(&format!("c{n}"), NOV_2025 + 20, &context);
            }
            money("wager", 1_000, NOV_2025 + 30, &context);
            let paid = RevShare::settle(&month("2025-11", NOV_2025, DEC_2025), &context).unwrap();
            assert_eq!(paid[0].amount.to_string(), expected, "{customers} FTDs: {}", paid[0].explanation);
            assert!(paid[0].explanation.contains(&format!("{customers} this month")), "{}", paid[0].explanation);
        }
    }

    #[test]
    fn tiers_must_start_at_zero_and_parse() {
        for (tiers, problem) in [("3:30,5:35", "must start at 0"), ("0:25,x:30", "is not FROM:VALUE")] {
            testing::reset();
            let deal: Properties = [("revshare_tiers", tiers)].into_iter().collect();
            let context = testing::context("acme", "USD", [Affiliate::new("aff1", deal)]);
            let error = RevShare::settle(&month("2025-11", NOV_2025, DEC_2025), &context).unwrap_err();
            assert!(error.to_string().contains(problem), "{tiers}: {error}");
        }
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
