//! CPA on qualification: a fixed amount, paid once per customer, when every condition of the
//! deal holds, whatever order the events come in, within a window from registration. The amount
//! can depend on tiers: how many customers the affiliate qualified in the month.
//!
//! Every term is read from the attributed affiliate's deal, falling back to the operator's
//! config (so an operator sets its usual conditions once, and deals override them).
//!
//! # Conditions (each optional)
//!
//! | term | holds when |
//! | --- | --- |
//! | `min_first_deposit` | the customer's first deposit was at least this |
//! | `min_deposits` | its deposits add up to at least this |
//! | `min_wagering` | its `wager` (or `bet`) amounts add up to at least this |
//! | `kyc_required=true` | a `kyc` event with the attribute `status=passed` came |
//! | `min_active_days` | it was active (a deposit, wager, bet, trade or login) on at least this many distinct UTC days |
//! | `countries_allow`, `countries_deny` | its country (the attribute `country` of its latest event carrying one) is in the allow list (if any) and not in the deny list; unknown does not hold |
//! | `window_days` | all the others held within this many days of its `registration` (of its first event, without one) |
//!
//! With no condition at all, the first deposit qualifies. The explanation of the CPA names the
//! condition(s) the qualifying event completed, then all of them with the customer's figures.
//!
//! # Amount and tiers
//!
//! `cpa` is the amount. With `tiers=1:100,11:150,26:200`, it is instead the rate of the tier
//! the customer falls in: the affiliate's 1st to 10th customer qualified in a calendar month
//! (UTC, of the qualifying event) earn 100, the 11th to 25th 150, from the 26th 200.
//!
//! `tier_retroactive` re-rates the month's earlier CPAs to the tier reached, paying the
//! difference as one `cpa-tier-adjustment` commission whose explanation names the CPAs it adjusts:
//! - `crossing`: on the event whose customer crosses into a higher tier;
//! - `settle`: when the operator closes the month, at the tier of the month's final count;
//! - `off` (the default): each CPA keeps the rate of its own tier.
//!
//! # Chargebacks
//!
//! A `chargeback` (or `refund`) names the deposit it reverses in the attribute `deposit`.
//! - Before the CPA is paid, the deposit stops counting: it leaves the deposits total, and if it
//!   was the first deposit the next one becomes the first.
//! - After, if the deposit was made before the customer qualified, the CPA is clawed back with a
//!   reference to it, and so are the tier adjustments the customer received since (as one
//!   `cpa-tier-adjustment-reversal`: an adjustment pays several customers at once, so it cannot
//!   be referenced for one of them). The customer stays counted in its month's tiers, and is not
//!   paid again. Deposits made after qualifying reverse nothing.

use commission_plugin_sdk::prelude::*;
use commission_plugin_sdk::state::{affiliate_key, customer_key};

pub struct QualifiedCpa;

const DAY_MS: i64 = 86_400_000;

impl Plugin for QualifiedCpa {
    fn evaluate(event: &Event, context: &Context) -> Result<Vec<Commission>> {
        let affiliate = context.affiliate();
        let terms = affiliate.deal.over(&context.config);
        let customer = &event.customer;
        if matches!(event.kind.as_str(), "chargeback" | "refund") {
            return chargeback(event, context);
        }
        let before = conditions(&terms, customer)?;
        record(event)?;
        if state::flag(&customer_key(customer, "cpa-event")) {
            return Ok(vec![]);
        }
        let after = conditions(&terms, customer)?;
        if let Some(pending) = after.iter().find(|condition| !condition.met) {
            debug!("{customer} not qualified yet: {} ({})", pending.name, pending.shown);
            return Ok(vec![]);
        }
        if let Some(days) = terms.decimal("window_days")? {
            let since = state::decimal(&customer_key(customer, "since"))?;
            if Decimal::from(event.occurred_at) > since + days * Decimal::from(DAY_MS) {
                info!("{customer} met the conditions after its {days}-day window: no CPA");
                return Ok(vec![]);
            }
        }
        let completed: Vec<&str> =
            after.iter().zip(&before).filter(|(now, then)| !then.met && now.met).map(|(now, _)| now.name).collect();
        let completed = if completed.is_empty() { event.kind.clone() } else { completed.join(" and ") };
        qualify(event, context, &terms, &completed, &after)
    }

    fn settle(period: &Period, context: &Context) -> Result<Vec<Commission>> {
        let affiliate = context.affiliate();
        let terms = affiliate.deal.over(&context.config);
        if retroactive(&terms)? != "settle" {
            return Ok(vec![]);
        }
        let count = month_count(&affiliate.id, &period.id)?;
        let tiers = tiers(&terms)?;
        if count == 0 || tiers.is_empty() {
            return Ok(vec![]);
        }
        let (tier_from, rate) = tier(&tiers, count);
        let why = format!("{period} closed with {count} qualified customers, tier from #{tier_from} at {rate}");
        Ok(escalate(context, &period.id, count, rate, &why)?.into_iter().collect())
    }
}

export_plugin!(QualifiedCpa);

/// One condition of the deal, for one customer.
struct Condition {
    name: &'static str,
    met: bool,
    /// The customer's figure against the term, for explanations.
    shown: String,
}

fn conditions(terms: &Properties, customer: &str) -> Result<Vec<Condition>> {
    let total = |name: &str| state::decimal(&customer_key(customer, name));
    let at_least = |name: &'static str, term: &str, figure: Decimal| {
        terms.decimal(term).map(|minimum| {
            minimum.map(|minimum| Condition { name, met: figure >= minimum, shown: format!("{figure} >= {minimum}") })
        })
    };
    let first_deposit = state::get(&customer_key(customer, "first-deposit"));
    let first_term = terms.decimal("min_first_deposit")?;
    let mut all = vec![];
    if let Some(minimum) = first_term {
        let amount = match &first_deposit {
            Some(first) => Some(state::decimal(&customer_key(customer, &format!("deposit:{}", text(first))))?),
            None => None,
        };
        let met = amount.is_some_and(|amount| amount >= minimum);
        let shown = amount.map_or_else(|| format!("none yet, >= {minimum}"), |amount| format!("{amount} >= {minimum}"));
        all.push(Condition { name: "first deposit", met, shown });
    }
    all.extend(at_least("deposits", "min_deposits", total("deposits")?)?);
    all.extend(at_least("wagering", "min_wagering", total("wagering")?)?);
    all.extend(at_least("active days", "min_active_days", total("active-days")?)?);
    if terms.flag_or("kyc_required", false)? {
        let met = state::flag(&customer_key(customer, "kyc"));
        all.push(Condition { name: "KYC", met, shown: if met { "passed" } else { "not passed" }.into() });
    }
    let (allow, deny) = (terms.list("countries_allow"), terms.list("countries_deny"));
    if !allow.is_empty() || !deny.is_empty() {
        let country = state::get(&customer_key(customer, "country")).map(|country| text(&country));
        let met = country.as_deref().is_some_and(|c| (allow.is_empty() || allow.contains(&c)) && !deny.contains(&c));
        all.push(Condition { name: "country", met, shown: country.unwrap_or_else(|| "unknown".into()) });
    }
    if all.is_empty() {
        let met = first_deposit.is_some();
        all.push(Condition { name: "first deposit", met, shown: if met { "made" } else { "none yet" }.into() });
    }
    Ok(all)
}

/// Adds what `event` says about its customer to the customer's figures.
fn record(event: &Event) -> Result<()> {
    let key = |name: &str| customer_key(&event.customer, name);
    let paid = state::flag(&key("cpa-event"));
    let since = key("since");
    if event.kind == "registration" || state::get(&since).is_none() {
        state::set_decimal(&since, Decimal::from(event.occurred_at));
    }
    if let Some(country) = event.attributes.get("country") {
        state::set(&key("country"), country.trim().to_ascii_uppercase().as_bytes());
    }
    let money = || event.amount.ok_or_else(|| Error::new(format!("a {} without an amount", event.kind)));
    match event.kind.as_str() {
        "deposit" => {
            let amount = money()?;
            if amount <= Decimal::ZERO {
                // No money in (0, negative, or an FX conversion that rounded to 0): it neither
                // counts towards the totals nor becomes the first deposit.
                info!("deposit {amount} is not above 0: not counted");
                return Ok(());
            }
            state::add_decimal(&key("deposits"), amount)?;
            if !paid {
                // Deposits that count towards qualification, for chargebacks.
                state::set_decimal(&key(&format!("deposit:{}", event.id)), amount);
            }
            if state::get(&key("first-deposit")).is_none() {
                state::set(&key("first-deposit"), event.id.as_bytes());
            }
        }
        "wager" | "bet" => {
            state::add_decimal(&key("wagering"), money()?)?;
        }
        "kyc" if event.attributes.get("status") == Some("passed") => state::set(&key("kyc"), b"1"),
        _ => {}
    }
    if matches!(event.kind.as_str(), "deposit" | "wager" | "bet" | "trade" | "login")
        && state::claim(&key(&format!("day:{}", event.occurred_at.div_euclid(DAY_MS))))
    {
        state::add_decimal(&key("active-days"), Decimal::ONE)?;
    }
    Ok(())
}

fn qualify(
    event: &Event,
    context: &Context,
    terms: &Properties,
    completed: &str,
    all: &[Condition],
) -> Result<Vec<Commission>> {
    let affiliate = context.affiliate();
    let month = Period::month_of(event.occurred_at);
    let count = state::add_decimal(&affiliate_key(&affiliate.id, &format!("tier:{month}:count")), Decimal::ONE)?;
    let ordinal = u64::try_from(count).map_err(|_| Error::new(format!("tier count {count} is not a count")))?;
    let tiers = tiers(terms)?;
    let (amount, tier_note) = if tiers.is_empty() {
        let cpa = terms.decimal("cpa")?.ok_or_else(|| Error::new("the deal has neither `cpa` nor `tiers`"))?;
        (cpa, String::new())
    } else {
        let (from, rate) = tier(&tiers, ordinal);
        (rate, format!(", tier from #{from}"))
    };
    let customer = &event.customer;
    state::set(&customer_key(customer, "cpa-event"), event.id.as_bytes());
    state::set(&customer_key(customer, "cpa-month"), month.as_bytes());
    state::set_decimal(&customer_key(customer, "cpa-rate"), amount);
    state::set(&affiliate_key(&affiliate.id, &format!("tier:{month}:{ordinal}")), customer.as_bytes());
    let figures: Vec<String> = all.iter().map(|condition| format!("{} {}", condition.name, condition.shown)).collect();
    let cpa = context.pay(affiliate, amount).rule("cpa").because(format!(
        "qualified by {completed} ({}): customer #{ordinal} of {month}{tier_note}, CPA {amount}",
        figures.join("; ")
    ));
    state::remember_paid(&event.id, std::slice::from_ref(&cpa));
    let mut paid = vec![cpa];
    let previous = if ordinal > 1 { tier(&tiers, ordinal - 1).1 } else { amount };
    if !tiers.is_empty() && retroactive(terms)? == "crossing" && amount > previous {
        let why = format!("customer #{ordinal} of {month} reached the tier at {amount}");
        paid.extend(escalate(context, &month, ordinal - 1, amount, &why)?);
    }
    Ok(paid)
}

/// Re-rates the affiliate's customers #1 to #`up_to` of `month` to `rate`, as one adjustment
/// of the differences (none when nothing is owed). Clawed-back customers are skipped.
fn escalate(context: &Context, month: &str, up_to: u64, rate: Decimal, why: &str) -> Result<Option<Commission>> {
    let affiliate = context.affiliate();
    let mut owed = Decimal::ZERO;
    let mut adjusted = vec![];
    for ordinal in 1..=up_to {
        let Some(customer) = state::get(&affiliate_key(&affiliate.id, &format!("tier:{month}:{ordinal}"))) else {
            continue;
        };
        let customer = text(&customer);
        let key = |name: &str| customer_key(&customer, name);
        if state::flag(&key("cpa-clawed")) {
            continue;
        }
        let had = state::decimal(&key("cpa-rate"))?;
        if rate <= had {
            continue;
        }
        owed += rate - had;
        state::set_decimal(&key("cpa-rate"), rate);
        state::add_decimal(&key("cpa-adjusted"), rate - had)?;
        let cpa_event = state::get(&key("cpa-event")).map(|id| text(&id)).unwrap_or_default();
        adjusted.push(format!("#{ordinal} {cpa_event} {had}"));
    }
    if owed.is_zero() {
        return Ok(None);
    }
    // The explanation is bounded: the first CPAs by name, then how many more.
    let shown = adjusted.len().min(8);
    let more = if adjusted.len() > shown { format!(" and {} more", adjusted.len() - shown) } else { String::new() };
    let explanation = format!("{why}: re-rates CPAs {}{more} to {rate}: +{owed}", adjusted[..shown].join(", "));
    Ok(Some(context.pay(affiliate, owed).rule("cpa-tier-adjustment").because(explanation)))
}

fn chargeback(event: &Event, context: &Context) -> Result<Vec<Commission>> {
    let deposit = event.attributes.get("deposit").ok_or_else(|| {
        Error::new(format!("a {} without the attribute `deposit` (the deposit it reverses)", event.kind))
    })?;
    let key = |name: &str| customer_key(&event.customer, name);
    let counted = key(&format!("deposit:{deposit}"));
    if state::get(&counted).is_none() {
        info!("{} of {deposit}: not a deposit that counted towards the CPA, nothing to do", event.kind);
        return Ok(vec![]);
    }
    let amount = state::decimal(&counted)?;
    let Some(cpa_event) = state::get(&key("cpa-event")).map(|id| text(&id)) else {
        // Before the CPA: the deposit no longer counts.
        state::delete(&counted);
        state::add_decimal(&key("deposits"), -amount)?;
        if state::get(&key("first-deposit")).as_deref() == Some(deposit.as_bytes()) {
            state::delete(&key("first-deposit"));
        }
        info!("{} of {deposit} before qualifying: {amount} no longer counts", event.kind);
        return Ok(vec![]);
    };
    if !state::claim(&key("cpa-clawed")) {
        return Ok(vec![]);
    }
    let mut reversed = state::reverse_paid(&cpa_event, |paid| {
        format!("{} of {deposit}, which counted towards the CPA: {} clawed back", event.kind, paid.amount)
    })?;
    let adjusted = state::decimal(&key("cpa-adjusted"))?;
    if adjusted > Decimal::ZERO {
        let affiliate = context.affiliate();
        reversed.push(context.pay(affiliate, -adjusted).rule("cpa-tier-adjustment-reversal").because(format!(
            "{} of {deposit}: the tier adjustments of the CPA of {cpa_event} ({adjusted}) clawed back",
            event.kind
        )));
    }
    Ok(reversed)
}

/// `tiers=1:100,11:150,26:200` as (from the Nth customer, rate), ascending; empty when absent.
fn tiers(terms: &Properties) -> Result<Vec<(u64, Decimal)>> {
    terms.tiers("tiers", 1)
}

/// When earlier CPAs are re-rated: `off` (the default), `crossing` or `settle`.
fn retroactive(terms: &Properties) -> Result<&str> {
    match terms.get("tier_retroactive").unwrap_or("off") {
        mode @ ("off" | "crossing" | "settle") => Ok(mode),
        other => Err(Error::new(format!("tier_retroactive: {other:?} is not off, crossing or settle"))),
    }
}

/// The tier of the `ordinal`-th customer: (its first customer, its rate).
fn tier(tiers: &[(u64, Decimal)], ordinal: u64) -> (u64, Decimal) {
    tiers.iter().rev().find(|(from, _)| *from <= ordinal).copied().unwrap_or((1, Decimal::ZERO))
}

fn month_count(affiliate: &str, month: &str) -> Result<u64> {
    let count = state::decimal(&affiliate_key(affiliate, &format!("tier:{month}:count")))?;
    u64::try_from(count).map_err(|_| Error::new(format!("tier count {count} is not a count")))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use commission_plugin_sdk::testing;

    use super::*;

    #[test]
    fn tiers_parse_sorted_and_must_start_at_one() {
        let terms = testing::deal(&[("tiers", "11:150, 1:100,26:200")]);
        let tiers = tiers(&terms).unwrap();
        assert_eq!(tier(&tiers, 10), (1, Decimal::from(100)));
        assert_eq!(tier(&tiers, 11), (11, Decimal::from(150)));
        assert_eq!(tier(&tiers, 26), (26, Decimal::from(200)));
        let error = super::tiers(&testing::deal(&[("tiers", "5:100")])).unwrap_err();
        assert!(error.to_string().contains("must start at 1"), "{error}");
        let error = super::tiers(&testing::deal(&[("tiers", "1=100")])).unwrap_err();
        assert!(error.to_string().contains("FROM:VALUE"), "{error}");
        let error = retroactive(&testing::deal(&[("tier_retroactive", "yes")])).unwrap_err();
        assert_eq!(error.to_string(), "tier_retroactive: \"yes\" is not off, crossing or settle");
    }

    #[test]
    fn a_deal_without_an_amount_fails_at_qualification() {
        testing::reset();
        let context = testing::context("casino", "USD", [testing::affiliate("aff1", &[])]);
        let deposit = Event::new("d1", "deposit", "c1", 0).with_amount(Decimal::TEN, "USD");
        let error = QualifiedCpa::evaluate(&deposit, &context).unwrap_err();
        assert!(error.to_string().contains("neither `cpa` nor `tiers`"), "{error}");
    }

    /// The fixtures that `commission-host plugin test` also runs through the built component.
    #[test]
    fn fixtures() {
        commission_plugin_sdk::fixtures::run_file::<QualifiedCpa>(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/fixtures/cpa.ndjson"
        ));
    }
}
