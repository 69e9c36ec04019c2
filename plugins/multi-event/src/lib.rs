//! The domain's own example of an event-driven deal, as a plugin: the referring affiliate earns
//! a CPA on the customer's first deposit, another on the first trade, and a volume bonus once the
//! customer's cumulative traded lots exceed a threshold. Each is paid once per customer.
//!
//! | deal term (on the attributed affiliate) | default | meaning |
//! | --- | --- | --- |
//! | `ftd_cpa` | 10 | paid on the first deposit |
//! | `ftd_min_deposit` | 0.01 | a first deposit below this pays nothing (and stays the first); a deposit of 0 or less never pays |
//! | `first_trade_cpa` | 5 | paid on the first trade |
//! | `volume_bonus` | 20 | paid once cumulative lots exceed the threshold |
//! | `volume_threshold_lots` | 10 | "exceed": 10 lots exactly does not pay |
//!
//! Sub-affiliate overrides: a parent in the referral chain whose deal has `override_percent`
//! earns that percentage of each commission its child earns, level by level up the chain.
//!
//! Trades carry their size as the attribute `lots`.
//!
//! A `chargeback` (or `refund`) whose attribute `deposit` names the first deposit claws back
//! what that deposit paid: the first-deposit CPA and each parent's override of it, as they were
//! paid (kept in state with them), whatever the deals say by then, with entries that reference
//! what they reverse. The customer's first deposit stays used: a later deposit pays no new CPA.

use commission_plugin_sdk::prelude::*;
use commission_plugin_sdk::state::customer_key;

pub struct MultiEvent;

impl Plugin for MultiEvent {
    fn evaluate(event: &Event, context: &Context) -> Result<Vec<Commission>> {
        let affiliate = context.affiliate();
        let direct = match event.kind.as_str() {
            "deposit" => first_deposit(event, context, affiliate)?,
            "trade" => trade(event, context, affiliate)?,
            "chargeback" | "refund" => return claw_back_first_deposit(event, context, affiliate),
            _ => vec![],
        };
        let overrides = parent_overrides(&direct, context)?;
        let paid: Vec<Commission> = direct.into_iter().chain(overrides).collect();
        if event.kind == "deposit" && !paid.is_empty() {
            // Kept as the Python twin writes decimals, so both store the same bytes.
            let kept: Vec<Commission> =
                paid.iter().map(|paid| Commission { amount: paid.amount.normalize(), ..paid.clone() }).collect();
            state::remember_paid(&event.id, &kept);
        }
        Ok(paid)
    }
}

export_plugin!(MultiEvent);

fn first_deposit(event: &Event, context: &Context, affiliate: &Affiliate) -> Result<Vec<Commission>> {
    let amount = event.amount.ok_or_else(|| Error::new("deposit without an amount"))?;
    let minimum = affiliate.deal.decimal_or("ftd_min_deposit", Decimal::new(1, 2))?;
    // No money in (0, negative, or an FX conversion that rounded to 0) is no first deposit,
    // whatever the minimum says.
    if amount <= Decimal::ZERO || amount < minimum {
        info!("deposit {amount} below ftd_min_deposit {minimum}: no FTD yet");
        return Ok(vec![]);
    }
    if !state::claim(&customer_key(&event.customer, "ftd-paid")) {
        return Ok(vec![]);
    }
    let cpa = affiliate.deal.decimal_or("ftd_cpa", Decimal::TEN)?;
    state::set(&customer_key(&event.customer, "ftd-event"), event.id.as_bytes());
    let currency = event.currency.as_deref().unwrap_or(&context.operator_currency);
    Ok(vec![
        context
            .pay(affiliate, cpa)
            .rule("ftd-cpa")
            .because(format!("first deposit: CPA {cpa} on deposit {amount} {currency}")),
    ])
}

fn trade(event: &Event, context: &Context, affiliate: &Affiliate) -> Result<Vec<Commission>> {
    let lots = event.attributes.decimal("lots")?.ok_or_else(|| Error::new("trade without the attribute `lots`"))?;
    if lots.is_sign_negative() {
        return Err(Error::new(format!("lots: {lots} is negative")));
    }
    let mut commissions = vec![];
    if state::claim(&customer_key(&event.customer, "first-trade-paid")) {
        let cpa = affiliate.deal.decimal_or("first_trade_cpa", Decimal::from(5))?;
        commissions.push(
            context
                .pay(affiliate, cpa)
                .rule("first-trade-cpa")
                .because(format!("first trade: CPA {cpa} on a trade of {lots} lots")),
        );
    }
    let total = state::add_decimal(&customer_key(&event.customer, "lots"), lots)?;
    let threshold = affiliate.deal.decimal_or("volume_threshold_lots", Decimal::TEN)?;
    if total > threshold && state::claim(&customer_key(&event.customer, "volume-bonus-paid")) {
        let bonus = affiliate.deal.decimal_or("volume_bonus", Decimal::from(20))?;
        commissions.push(
            context
                .pay(affiliate, bonus)
                .rule("volume-bonus")
                .because(format!("volume bonus: {bonus} as cumulative lots reached {total} (over {threshold})")),
        );
    }
    Ok(commissions)
}

fn claw_back_first_deposit(event: &Event, context: &Context, affiliate: &Affiliate) -> Result<Vec<Commission>> {
    let deposit = event.attributes.get("deposit").ok_or_else(|| {
        Error::new(format!("a {} without the attribute `deposit` (the deposit it reverses)", event.kind))
    })?;
    let first_deposit = state::get(&customer_key(&event.customer, "ftd-event"));
    if first_deposit.as_deref() != Some(deposit.as_bytes()) {
        info!("{} of {deposit}: not the first deposit that paid, nothing to claw back", event.kind);
        return Ok(vec![]);
    }
    let legacy_cpa = customer_key(&event.customer, "ftd-cpa");
    if state::get(&legacy_cpa).is_none() {
        return state::reverse_paid(deposit, |paid| match paid.rule.as_str() {
            "ftd-cpa" => format!("{} of first deposit {deposit}: CPA {} clawed back", event.kind, paid.amount),
            rule => format!("{} of first deposit {deposit}: {rule} {} clawed back", event.kind, paid.amount),
        });
    }
    // A first deposit paid by a version that kept only its CPA: the overrides were not kept,
    // so they are worked out again from today's deals.
    let paid = state::decimal(&legacy_cpa)?;
    state::delete(&legacy_cpa);
    let direct = vec![
        context
            .pay(affiliate, -paid)
            .rule("ftd-cpa-reversal")
            .reversing(deposit, "ftd-cpa")
            .because(format!("{} of first deposit {deposit}: CPA {paid} clawed back", event.kind)),
    ];
    let overrides = parent_overrides(&direct, context)?;
    Ok(direct.into_iter().chain(overrides).collect())
}

/// Each parent with `override_percent` earns that share of what the level below it earned,
/// and gives back its share of what the level below gives back.
fn parent_overrides(direct: &[Commission], context: &Context) -> Result<Vec<Commission>> {
    let mut overrides = vec![];
    let mut below: Vec<Commission> = direct.to_vec();
    for (level, parent) in context.parents() {
        let Some(percent) = parent.deal.decimal("override_percent")? else {
            break;
        };
        let child = &context.referral_chain[level - 1].id;
        let rule = format!("override-l{level}");
        below = below
            .iter()
            .map(|earned| {
                let share = earned.amount * percent / Decimal::ONE_HUNDRED;
                let pay = context.pay(parent, share).rule(&rule);
                let pay = match &earned.reverses {
                    Some(reversed) => pay.reversing(&reversed.event_id, &rule),
                    None => pay,
                };
                pay.because(format!(
                    "level {level} override: {percent}% of {} earned by {child} ({})",
                    earned.amount, earned.rule
                ))
            })
            .collect();
        overrides.extend(below.iter().cloned());
    }
    Ok(overrides)
}

#[cfg(test)]
mod tests {
    use commission_plugin_sdk::testing;

    use super::*;

    fn deal(terms: &[(&str, &str)]) -> Properties {
        terms.iter().copied().collect()
    }

    fn run(event: Event, context: &Context) -> Vec<(String, String)> {
        MultiEvent::evaluate(&event, context)
            .unwrap()
            .into_iter()
            .map(|c| (c.affiliate, c.amount.to_string()))
            .collect()
    }

    fn trade(id: &str, lots: &str) -> Event {
        Event::new(id, "trade", "c1", 0).with_attribute("lots", lots)
    }

    #[test]
    fn the_glossary_example_pays_35_in_all() {
        testing::reset();
        let context = testing::context("acme", "USD", [Affiliate::new("aff1", deal(&[]))]);
        let deposit = Event::new("d1", "deposit", "c1", 0).with_amount(Decimal::from(100), "USD");
        assert_eq!(run(deposit.clone(), &context), [("aff1".into(), "10".into())]);
        assert_eq!(run(deposit, &context), []);
        assert_eq!(run(trade("t1", "4"), &context), [("aff1".into(), "5".into())]);
        assert_eq!(run(trade("t2", "6"), &context), [], "10 lots is not over 10");
        assert_eq!(run(trade("t3", "0.5"), &context), [("aff1".into(), "20".into())]);
        assert_eq!(run(trade("t4", "50"), &context), []);
    }

    #[test]
    fn a_parent_override_is_a_share_of_the_childs_commission() {
        testing::reset();
        let context = testing::context(
            "acme",
            "USD",
            [
                Affiliate::new("sub", deal(&[("ftd_cpa", "40")])),
                Affiliate::new("master", deal(&[("override_percent", "10")])),
            ],
        );
        let deposit = Event::new("d1", "deposit", "c1", 0).with_amount(Decimal::from(50), "USD");
        assert_eq!(run(deposit, &context), [("sub".into(), "40".into()), ("master".into(), "4".into())]);
    }

    /// The fixtures that `commission-host plugin test` also runs through the built component.
    #[test]
    fn fixtures() {
        commission_plugin_sdk::fixtures::run_file::<MultiEvent>(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/fixtures/multi-event.ndjson"
        ));
    }

    #[test]
    fn a_trade_without_lots_is_an_error_that_names_the_attribute() {
        testing::reset();
        let context = testing::context("acme", "USD", [Affiliate::new("aff1", deal(&[]))]);
        let error = MultiEvent::evaluate(&Event::new("t1", "trade", "c1", 0), &context).unwrap_err();
        assert!(error.to_string().contains("lots"), "{error}");
    }
}
