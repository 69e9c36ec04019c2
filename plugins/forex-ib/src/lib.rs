//! Forex introducing brokers (IB): a commission per traded lot that depends on the symbol's
//! group, a share of the spread, and overrides per lot to the IBs above, level by level.
//!
//! A `trade` carries `symbol`, `lots` and, optionally, `spread` (the spread the broker earned
//! on it, in the operator's currency) as attributes. Each term is read from the affiliate's deal,
//! falling back to the operator's config, so groups and default rates can be set once for all.
//!
//! | term | meaning |
//! | --- | --- |
//! | `group.NAME` | the symbols of group NAME, comma-separated: `group.metals=XAUUSD,XAGUSD` |
//! | `per_lot.NAME` | the direct IB's commission per lot on the group's symbols: `per_lot.metals=10` |
//! | `per_lot` | per lot on symbols of no group (none: those trades pay no lot commission) |
//! | `spread_share_percent` | the direct IB's percentage of the trade's `spread` |
//! | `override_per_lot.NAME`, `override_per_lot` | on a parent IB: its override per lot on its downline's trades |
//!
//! The referral chain is the IB tree: chain[0] is the direct IB, chain[1] its master, and so on.
//! Each parent earns its own override per lot (its deal, by group); a parent without one earns
//! nothing, and the levels above it still earn theirs. Amounts are rounded to cents, half away
//! from zero; a zero amount is not paid.
//!
//! A `trade_cancelled` whose attribute `trade` names a paid trade claws back everything that
//! trade paid, each entry referencing the one it reverses; cancelling it again does nothing.

use commission_plugin_sdk::prelude::*;
use commission_plugin_sdk::{Properties, RoundingStrategy};

pub struct ForexIb;

impl Plugin for ForexIb {
    fn evaluate(event: &Event, context: &Context) -> Result<Vec<Commission>> {
        match event.kind.as_str() {
            "trade" => trade(event, context),
            "trade_cancelled" => {
                let trade = event.attributes.get("trade").ok_or_else(|| {
                    Error::new("a trade_cancelled without the attribute `trade` (the trade it cancels)")
                })?;
                let reversed = state::reverse_paid(trade, |paid| {
                    format!("trade {trade} cancelled: {} {} clawed back", paid.rule, paid.amount)
                })?;
                if reversed.is_empty() {
                    info!("trade {trade} paid nothing (or was cancelled already): nothing to claw back");
                }
                Ok(reversed)
            }
            _ => Ok(vec![]),
        }
    }
}

export_plugin!(ForexIb);

fn trade(event: &Event, context: &Context) -> Result<Vec<Commission>> {
    let symbol = event.attributes.get("symbol").ok_or_else(|| Error::new("trade without the attribute `symbol`"))?;
    let lots = event.attributes.decimal("lots")?.ok_or_else(|| Error::new("trade without the attribute `lots`"))?;
    if lots <= Decimal::ZERO {
        return Err(Error::new(format!("lots: {lots} is not a positive number of lots")));
    }
    let ib = context.affiliate();
    let terms = ib.deal.over(&context.config);
    let group = group_of(&terms, symbol);
    let mut paid = vec![];
    if let Some(rate) = rate(&terms, "per_lot", group)? {
        let amount = cents(lots * rate);
        if !amount.is_zero() {
            let because =
                format!("{lots} lots of {symbol} ({}) at {rate} per lot: {amount}", group.unwrap_or("no group"));
            paid.push(context.pay(ib, amount).rule("ib-lot").because(because));
        }
    }
    if let (Some(percent), Some(spread)) = (terms.decimal("spread_share_percent")?, event.attributes.decimal("spread")?)
    {
        let amount = cents(spread * percent / Decimal::ONE_HUNDRED);
        if !amount.is_zero() {
            let because = format!("{percent}% of the spread {spread} on {lots} lots of {symbol}: {amount}");
            paid.push(context.pay(ib, amount).rule("ib-spread").because(because));
        }
    }
    for (level, parent) in context.parents() {
        let terms = parent.deal.over(&context.config);
        let group = group_of(&terms, symbol);
        let Some(rate) = rate(&terms, "override_per_lot", group)? else { continue };
        let amount = cents(lots * rate);
        if amount.is_zero() {
            continue;
        }
        let because = format!(
            "level {level} override: {lots} lots of {symbol} by {}'s client at {rate} per lot: {amount}",
            ib.id
        );
        paid.push(context.pay(parent, amount).rule(&format!("ib-override-l{level}")).because(because));
    }
    state::remember_paid(&event.id, &paid);
    Ok(paid)
}

/// The group whose `group.NAME` list holds `symbol`, if any (the first by name).
fn group_of<'a>(terms: &'a Properties, symbol: &str) -> Option<&'a str> {
    terms
        .iter()
        .filter_map(|(key, _)| key.strip_prefix("group."))
        .find(|group| terms.list(&format!("group.{group}")).contains(&symbol))
}

/// `{key}.{group}` for a symbol of a group, else `{key}`.
fn rate(terms: &Properties, key: &str, group: Option<&str>) -> Result<Option<Decimal>> {
    match group.map(|group| terms.decimal(&format!("{key}.{group}"))).transpose()?.flatten() {
        Some(rate) => Ok(Some(rate)),
        None => terms.decimal(key),
    }
}

fn cents(amount: Decimal) -> Decimal {
    amount.round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero)
}

#[cfg(test)]
mod tests {
    use commission_plugin_sdk::testing;

    use super::*;

    fn trade(id: &str, symbol: &str, lots: &str) -> Event {
        Event::new(id, "trade", "c1", 0).with_attribute("symbol", symbol).with_attribute("lots", lots)
    }

    #[test]
    fn groups_rates_and_a_fallback_from_the_operator_config() {
        testing::reset();
        let mut context = testing::context(
            "broker",
            "USD",
            [testing::affiliate("ib", &[("per_lot.metals", "10"), ("spread_share_percent", "25")])],
        );
        context.config = testing::deal(&[
            ("group.majors", "EURUSD, GBPUSD"),
            ("group.metals", "XAUUSD,XAGUSD"),
            ("per_lot.majors", "7"),
            ("per_lot", "2"),
        ]);
        let paid = |event: Event| testing::paid(&ForexIb::evaluate(&event, &context).unwrap());
        assert_eq!(paid(trade("t1", "GBPUSD", "1.5")), ["ib 10.5 ib-lot"]);
        assert_eq!(paid(trade("t2", "XAGUSD", "0.03")), ["ib 0.30 ib-lot"]);
        assert_eq!(
            paid(trade("t3", "US30", "3").with_attribute("spread", "8.10")),
            ["ib 6 ib-lot", "ib 2.03 ib-spread"]
        );
    }

    #[test]
    fn a_bad_trade_is_an_error_naming_the_attribute() {
        testing::reset();
        let context = testing::context("broker", "USD", [testing::affiliate("ib", &[])]);
        let error = ForexIb::evaluate(&trade("t1", "EURUSD", "-1"), &context).unwrap_err();
        assert!(error.to_string().starts_with("lots:"), "{error}");
        let error = ForexIb::evaluate(&Event::new("t2", "trade", "c1", 0), &context).unwrap_err();
        assert!(error.to_string().contains("symbol"), "{error}");
    }

    /// The fixtures that `commission-host plugin test` also runs through the built component.
    #[test]
    fn fixtures() {
        commission_plugin_sdk::fixtures::run_file::<ForexIb>(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/fixtures/forex-ib.ndjson"
        ));
    }
}
