//! One small plugin per commission model, each with the native test that shows what it pays.
//! They are tested as this crate's doctests; copy the one closest to the deal and adapt it.
//! In a plugin crate, end with `export_plugin!(TheStruct);`.
//!
//! # CPA: a fixed amount on the first deposit
//!
//! Paid once per customer (the [`state::claim`](crate::state::claim) flag), only from a minimum
//! deposit.
//!
//! ```
//! use commission_plugin_sdk::prelude::*;
//! use commission_plugin_sdk::{state::customer_key, testing};
//!
//! struct Cpa;
//!
//! impl Plugin for Cpa {
//!     fn evaluate(event: &Event, context: &Context) -> Result<Vec<Commission>> {
//!         let affiliate = context.affiliate();
//!         let amount = match (event.kind.as_str(), event.amount) {
//!             ("deposit", Some(amount)) => amount,
//!             _ => return Ok(vec![]),
//!         };
//!         if amount < affiliate.deal.decimal_or("min_deposit", Decimal::ZERO)?
//!             || !state::claim(&customer_key(&event.customer, "ftd"))
//!         {
//!             return Ok(vec![]);
//!         }
//!         let cpa = affiliate.deal.decimal_or("cpa", Decimal::from(50))?;
//!         Ok(vec![context.pay(affiliate, cpa).rule("cpa").because(format!("first deposit of {amount}: CPA {cpa}"))])
//!     }
//! }
//!
//! testing::reset();
//! let context = testing::context("acme", "USD", [testing::affiliate("aff1", &[("min_deposit", "20")])]);
//! let deposit = |id, amount: i64| Event::new(id, "deposit", "c1", 0).with_amount(Decimal::from(amount), "USD");
//! assert_eq!(Cpa::evaluate(&deposit("d1", 10), &context).unwrap(), []);
//! assert_eq!(testing::paid(&Cpa::evaluate(&deposit("d2", 100), &context).unwrap()), ["aff1 50 cpa"]);
//! assert_eq!(Cpa::evaluate(&deposit("d3", 100), &context).unwrap(), []);
//! ```
//!
//! # CPL: a fixed amount per lead (registration), once per customer
//!
//! ```
//! use commission_plugin_sdk::prelude::*;
//! use commission_plugin_sdk::{state::customer_key, testing};
//!
//! struct Cpl;
//!
//! impl Plugin for Cpl {
//!     fn evaluate(event: &Event, context: &Context) -> Result<Vec<Commission>> {
//!         if event.kind != "registration" || !state::claim(&customer_key(&event.customer, "lead")) {
//!             return Ok(vec![]);
//!         }
//!         let cpl = context.affiliate().deal.decimal_or("cpl", Decimal::from(2))?;
//!         Ok(vec![context.pay(context.affiliate(), cpl).rule("cpl").because(format!("lead: CPL {cpl}"))])
//!     }
//! }
//!
//! testing::reset();
//! let context = testing::context("acme", "USD", [testing::affiliate("aff1", &[])]);
//! let registration = Event::new("r1", "registration", "c1", 0);
//! assert_eq!(testing::paid(&Cpl::evaluate(&registration, &context).unwrap()), ["aff1 2 cpl"]);
//! assert_eq!(Cpl::evaluate(&registration, &context).unwrap(), [], "one lead per customer");
//! ```
//!
//! # RevShare: a share of the month's net revenue, paid at the period's close
//!
//! Events add to a per-affiliate monthly total in state; [`Plugin::settle`](crate::Plugin::settle)
//! pays the share when the operator closes the month.
//!
//! ```
//! use commission_plugin_sdk::prelude::*;
//! use commission_plugin_sdk::{state::affiliate_key, testing};
//!
//! struct RevShare;
//!
//! impl Plugin for RevShare {
//!     fn evaluate(event: &Event, context: &Context) -> Result<Vec<Commission>> {
//!         let sign = match event.kind.as_str() {
//!             "wager" => Decimal::ONE,
//!             "win" => Decimal::NEGATIVE_ONE,
//!             _ => return Ok(vec![]),
//!         };
//!         let amount = event.amount.ok_or_else(|| Error::new("a wager or win without an amount"))?;
//!         let month = Period::month_of(event.occurred_at);
//!         state::add_decimal(&affiliate_key(&context.affiliate().id, &month), sign * amount)?;
//!         Ok(vec![])
//!     }
//!
//!     fn settle(period: &Period, context: &Context) -> Result<Vec<Commission>> {
//!         let affiliate = context.affiliate();
//!         let ngr = state::decimal(&affiliate_key(&affiliate.id, &period.id))?;
//!         let percent = affiliate.deal.decimal_or("revshare_percent", Decimal::from(30))?;
//!         if ngr <= Decimal::ZERO {
//!             return Ok(vec![]);
//!         }
//!         let share = ngr * percent / Decimal::ONE_HUNDRED;
//!         Ok(vec![context.pay(affiliate, share).rule("revshare").because(format!("{percent}% of {period} NGR {ngr}"))])
//!     }
//! }
//!
//! testing::reset();
//! let context = testing::context("acme", "USD", [testing::affiliate("aff1", &[("revshare_percent", "25")])]);
//! let november = Period::of_month("2026-11").unwrap();
//! let at = november.starts_at;
//! RevShare::evaluate(&Event::new("w1", "wager", "c1", at).with_amount(Decimal::from(1000), "USD"), &context).unwrap();
//! RevShare::evaluate(&Event::new("w2", "win", "c1", at).with_amount(Decimal::from(600), "USD"), &context).unwrap();
//! assert_eq!(testing::paid(&RevShare::settle(&november, &context).unwrap()), ["aff1 100 revshare"]);
//! ```
//!
//! # Hybrid: a CPA on the first deposit and RevShare beside it
//!
//! A hybrid deal is the two models above in one plugin: `evaluate` pays the CPA and keeps the
//! revenue totals, `settle` pays the share. The `revshare` reference plugin in this repository
//! is a complete one (negative carry-over included).
//!
//! ```
//! use commission_plugin_sdk::prelude::*;
//! use commission_plugin_sdk::{state::{affiliate_key, customer_key}, testing};
//!
//! struct Hybrid;
//!
//! impl Plugin for Hybrid {
//!     fn evaluate(event: &Event, context: &Context) -> Result<Vec<Commission>> {
//!         let affiliate = context.affiliate();
//!         match event.kind.as_str() {
//!             "deposit" if state::claim(&customer_key(&event.customer, "ftd")) => {
//!                 let cpa = affiliate.deal.decimal_or("cpa", Decimal::from(100))?;
//!                 Ok(vec![context.pay(affiliate, cpa).rule("hybrid-cpa").because(format!("first deposit: CPA {cpa}"))])
//!             }
//!             "wager" => {
//!                 let amount = event.amount.unwrap_or_default();
//!                 let month = Period::month_of(event.occurred_at);
//!                 state::add_decimal(&affiliate_key(&affiliate.id, &month), amount)?;
//!                 Ok(vec![])
//!             }
//!             _ => Ok(vec![]),
//!         }
//!     }
//!
//!     fn settle(period: &Period, context: &Context) -> Result<Vec<Commission>> {
//!         let affiliate = context.affiliate();
//!         let ngr = state::decimal(&affiliate_key(&affiliate.id, &period.id))?;
//!         let share = ngr * affiliate.deal.decimal_or("revshare_percent", Decimal::from(20))? / Decimal::ONE_HUNDRED;
//!         Ok(vec![context.pay(affiliate, share).rule("hybrid-revshare").because(format!("share of {period} NGR {ngr}"))])
//!     }
//! }
//!
//! testing::reset();
//! let context = testing::context("acme", "USD", [testing::affiliate("aff1", &[])]);
//! let deposit = Event::new("d1", "deposit", "c1", 0).with_amount(Decimal::from(100), "USD");
//! assert_eq!(testing::paid(&Hybrid::evaluate(&deposit, &context).unwrap()), ["aff1 100 hybrid-cpa"]);
//! Hybrid::evaluate(&Event::new("w1", "wager", "c1", 0).with_amount(Decimal::from(500), "USD"), &context).unwrap();
//! let january = Period::of_month("1970-01").unwrap();
//! assert_eq!(testing::paid(&Hybrid::settle(&january, &context).unwrap()), ["aff1 100 hybrid-revshare"]);
//! ```
//!
//! # Tiered CPA: the more first deposits an affiliate brings in a month, the more each pays
//!
//! ```
//! use commission_plugin_sdk::prelude::*;
//! use commission_plugin_sdk::{state::{affiliate_key, customer_key}, testing};
//!
//! struct TieredCpa;
//!
//! impl Plugin for TieredCpa {
//!     fn evaluate(event: &Event, context: &Context) -> Result<Vec<Commission>> {
//!         let affiliate = context.affiliate();
//!         if event.kind != "deposit" || !state::claim(&customer_key(&event.customer, "ftd")) {
//!             return Ok(vec![]);
//!         }
//!         let month = Period::month_of(event.occurred_at);
//!         let count = state::add_decimal(&affiliate_key(&affiliate.id, &format!("ftds:{month}")), Decimal::ONE)?;
//!         // Tier 1 up to 10 first deposits a month, tier 2 beyond.
//!         let (tier, key, default) =
//!             if count <= Decimal::TEN { (1, "tier1_cpa", 30) } else { (2, "tier2_cpa", 45) };
//!         let cpa = affiliate.deal.decimal_or(key, Decimal::from(default))?;
//!         Ok(vec![context.pay(affiliate, cpa).rule("tiered-cpa").because(format!("FTD #{count} in {month}: tier {tier}, CPA {cpa}"))])
//!     }
//! }
//!
//! testing::reset();
//! let context = testing::context("acme", "USD", [testing::affiliate("aff1", &[])]);
//! let paid: Vec<_> = (1..=11)
//!     .map(|n| TieredCpa::evaluate(&Event::new(&format!("d{n}"), "deposit", &format!("c{n}"), 0), &context).unwrap())
//!     .map(|commissions| commissions[0].amount)
//!     .collect();
//! assert_eq!((paid[9], paid[10]), (Decimal::from(30), Decimal::from(45)));
//! ```
//!
//! # Per-lot rebate (IB): an amount per traded lot, on every trade
//!
//! ```
//! use commission_plugin_sdk::prelude::*;
//! use commission_plugin_sdk::testing;
//!
//! struct PerLot;
//!
//! impl Plugin for PerLot {
//!     fn evaluate(event: &Event, context: &Context) -> Result<Vec<Commission>> {
//!         if event.kind != "trade" {
//!             return Ok(vec![]);
//!         }
//!         let lots = event.attributes.decimal("lots")?.ok_or_else(|| Error::new("trade without `lots`"))?;
//!         let rate = context.affiliate().deal.decimal_or("per_lot", Decimal::from(7))?;
//!         let rebate = (lots * rate).round_dp(2);
//!         Ok(vec![context.pay(context.affiliate(), rebate).rule("per-lot").because(format!("{lots} lots at {rate} per lot"))])
//!     }
//! }
//!
//! testing::reset();
//! let context = testing::context("acme", "USD", [testing::affiliate("ib1", &[("per_lot", "4.5")])]);
//! let trade = Event::new("t1", "trade", "c1", 0).with_attribute("lots", "2.5");
//! assert_eq!(testing::paid(&PerLot::evaluate(&trade, &context).unwrap()), ["ib1 11.25 per-lot"]);
//! ```
//!
//! # Sub-affiliate overrides: each parent earns a share of what the level below earned
//!
//! ```
//! use commission_plugin_sdk::prelude::*;
//! use commission_plugin_sdk::testing;
//!
//! struct WithOverrides;
//!
//! impl Plugin for WithOverrides {
//!     fn evaluate(event: &Event, context: &Context) -> Result<Vec<Commission>> {
//!         if event.kind != "deposit" {
//!             return Ok(vec![]);
//!         }
//!         let cpa = context.affiliate().deal.decimal_or("cpa", Decimal::from(100))?;
//!         let mut paid = vec![context.pay(context.affiliate(), cpa).rule("cpa").because(format!("CPA {cpa}"))];
//!         let mut below = cpa;
//!         for (level, parent) in context.parents() {
//!             let Some(percent) = parent.deal.decimal("override_percent")? else { break };
//!             below = below * percent / Decimal::ONE_HUNDRED;
//!             let rule = format!("override-l{level}");
//!             paid.push(context.pay(parent, below).rule(&rule).because(format!("{percent}% of level {}", level - 1)));
//!         }
//!         Ok(paid)
//!     }
//! }
//!
//! testing::reset();
//! let context = testing::context(
//!     "acme",
//!     "USD",
//!     [
//!         testing::affiliate("sub", &[]),
//!         testing::affiliate("master", &[("override_percent", "10")]),
//!         testing::affiliate("network", &[("override_percent", "50")]),
//!     ],
//! );
//! let deposit = Event::new("d1", "deposit", "c1", 0);
//! assert_eq!(
//!     testing::paid(&WithOverrides::evaluate(&deposit, &context).unwrap()),
//!     ["sub 100 cpa", "master 10 override-l1", "network 5 override-l2"]
//! );
//! ```
