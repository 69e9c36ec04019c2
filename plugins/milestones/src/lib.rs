//! Sequential multi-event deals: a chain of milestones, each with its own payout, reached in
//! order and each paid once per customer.
//!
//! The chain is the deal term `milestones` (the operator's config as default), steps separated
//! by commas, each `STEP:PAYOUT`:
//!
//! ```text
//! milestones=registration:5,deposit:10,trade:5,lots>=10:20
//! ```
//!
//! | step | reached by |
//! | --- | --- |
//! | an event type (`registration`, `deposit`, `trade`, `kyc`, ...) | the customer's next event of that type, once the steps before are reached |
//! | `lots>=N` | the customer's cumulative traded lots (attribute `lots` of its trades) reaching N |
//! | `deposits>=N` | the customer's cumulative deposits (amounts) reaching N |
//!
//! In order means an event that would complete a later step pays nothing while an earlier step
//! is pending: a trade before the first deposit does not pay the `trade` step; the next trade
//! after the deposit does. Totals (`lots`, `deposits`) count from the customer's first event,
//! so lots traded early count once the chain gets there. One event completes at most one
//! event-type step, and any totals steps right after it that its totals already meet.
//!
//! Rules are `milestone-{n}-{step}` (`milestone-2-deposit`, `milestone-4-lots`). A `chargeback`
//! or `refund` whose attribute `deposit` names an event that reached milestones claws them
//! back, with references; the chain does not rewind (a reached milestone is not paid again).

use commission_plugin_sdk::prelude::*;
use commission_plugin_sdk::state::customer_key;

pub struct Milestones;

/// One step of the chain.
#[derive(Debug, Clone, PartialEq)]
enum Step {
    /// The next event of this type.
    Event(String),
    /// A cumulative total (`lots` or `deposits`) reaching a threshold.
    Total { total: &'static str, at_least: Decimal },
}

impl Step {
    fn name(&self) -> &str {
        match self {
            Step::Event(kind) => kind,
            Step::Total { total, .. } => total,
        }
    }
}

impl Plugin for Milestones {
    fn evaluate(event: &Event, context: &Context) -> Result<Vec<Commission>> {
        let affiliate = context.affiliate();
        let terms = affiliate.deal.over(&context.config);
        if matches!(event.kind.as_str(), "chargeback" | "refund") {
            let deposit = event.attributes.get("deposit").ok_or_else(|| {
                Error::new(format!("a {} without the attribute `deposit` (the deposit it reverses)", event.kind))
            })?;
            return state::reverse_paid(deposit, |paid| {
                format!("{} of {deposit}: {} {} clawed back", event.kind, paid.rule, paid.amount)
            });
        }
        let chain = parse(terms.get("milestones").ok_or_else(|| Error::new("the deal has no `milestones`"))?)?;
        let customer = &event.customer;
        match event.kind.as_str() {
            "trade" => {
                let lots = event.attributes.decimal("lots")?.unwrap_or_default();
                state::add_decimal(&customer_key(customer, "lots"), lots)?;
            }
            "deposit" => {
                let amount = event.amount.ok_or_else(|| Error::new("a deposit without an amount"))?;
                // No money in (0, negative, or an FX conversion that rounded to 0) is no deposit:
                // it neither reaches a `deposit` step nor counts towards `deposits`.
                if amount <= Decimal::ZERO {
                    info!("deposit of {amount}: no money in, no milestone");
                    return Ok(vec![]);
                }
                state::add_decimal(&customer_key(customer, "deposits"), amount)?;
            }
            _ => {}
        }
        let next_key = customer_key(customer, "milestone-next");
        let mut next = state::decimal(&next_key)?.try_into().unwrap_or(usize::MAX);
        let mut event_used = false;
        let mut paid = vec![];
        while let Some((step, payout)) = chain.get(next) {
            let reached = match step {
                Step::Event(kind) => !event_used && *kind == event.kind,
                Step::Total { total, at_least } => state::decimal(&customer_key(customer, total))? >= *at_least,
            };
            if !reached {
                if next < chain.len() {
                    debug!("{customer}: waiting for milestone {} ({})", next + 1, step.name());
                }
                break;
            }
            event_used |= matches!(step, Step::Event(_));
            next += 1;
            let detail = match step {
                Step::Event(kind) => kind.clone(),
                Step::Total { total, at_least } => {
                    let reached_total = state::decimal(&customer_key(customer, total))?;
                    format!("{total} {reached_total}, at least {at_least}")
                }
            };
            let because = format!("milestone {next} of {} reached ({detail}): {payout}", chain.len());
            let rule = format!("milestone-{next}-{}", step.name());
            paid.push(context.pay(affiliate, *payout).rule(&rule).because(because));
        }
        state::set_decimal(&next_key, Decimal::from(next));
        if !paid.is_empty() {
            state::remember_paid(&event.id, &paid);
        }
        Ok(paid)
    }
}

export_plugin!(Milestones);

/// `registration:5,deposit:10,lots>=10:20`, checked: an error names the step that is wrong.
fn parse(text: &str) -> Result<Vec<(Step, Decimal)>> {
    let chain: Vec<&str> = text.split(',').map(str::trim).filter(|step| !step.is_empty()).collect();
    if chain.is_empty() {
        return Err(Error::new("milestones: no steps; write them as registration:5,deposit:10,lots>=10:20"));
    }
    chain
        .into_iter()
        .map(|item| {
            let problem = |why: &str| Error::new(format!("milestones: {item:?} {why}"));
            let (step, payout) = item.rsplit_once(':').ok_or_else(|| problem("is not STEP:PAYOUT"))?;
            let payout: Decimal = payout.trim().parse().map_err(|_| problem("has no decimal payout"))?;
            let step = match step.split_once(">=") {
                None if !step.trim().is_empty() => Step::Event(step.trim().to_owned()),
                None => return Err(problem("has no step")),
                Some((total, at_least)) => Step::Total {
                    total: match total.trim() {
                        "lots" => "lots",
                        "deposits" => "deposits",
                        _ => return Err(problem("totals only `lots` or `deposits`")),
                    },
                    at_least: at_least.trim().parse().map_err(|_| problem("has no decimal threshold"))?,
                },
            };
            Ok((step, payout))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use commission_plugin_sdk::testing;

    use super::*;

    #[test]
    fn the_chain_parses_and_bad_steps_are_named() {
        let chain = parse("registration:5, deposit:10,lots>=10:20").unwrap();
        assert_eq!(chain[0], (Step::Event("registration".into()), Decimal::from(5)));
        assert_eq!(chain[2], (Step::Total { total: "lots", at_least: Decimal::TEN }, Decimal::from(20)));
        assert!(parse("deposit").unwrap_err().to_string().contains("\"deposit\" is not STEP:PAYOUT"));
        assert!(parse("volume>=3:1").unwrap_err().to_string().contains("totals only"));
        assert!(parse(" , ").unwrap_err().to_string().contains("no steps"));
    }

    #[test]
    fn a_deal_without_milestones_fails_the_event() {
        testing::reset();
        let context = testing::context("acme", "USD", [testing::affiliate("aff1", &[])]);
        let error = Milestones::evaluate(&Event::new("r1", "registration", "c1", 0), &context).unwrap_err();
        assert!(error.to_string().contains("`milestones`"), "{error}");
    }

    /// The fixtures that `commission-host plugin test` also runs through the built component.
    #[test]
    fn fixtures() {
        commission_plugin_sdk::fixtures::run_file::<Milestones>(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/fixtures/milestones.ndjson"
        ));
    }
}
