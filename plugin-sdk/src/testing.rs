//! Helpers for testing rule logic natively, with a plain `cargo test` in the plugin's crate.
//!
//! ```
//! use commission_plugin_sdk::prelude::*;
//! use commission_plugin_sdk::testing;
//!
//! struct Cpa;
//! impl Plugin for Cpa {
//!     fn evaluate(event: &Event, context: &Context) -> Result<Vec<Commission>> {
//!         let cpa = context.affiliate().deal.decimal_or("cpa", Decimal::TEN)?;
//!         info!("paying {cpa}");
//!         Ok(vec![context.pay(context.affiliate(), cpa).rule("cpa").because(format!("{} pays {cpa}", event.kind))])
//!     }
//! }
//!
//! testing::reset();
//! let context = testing::context("acme", "USD", [testing::affiliate("aff1", &[("cpa", "25")])]);
//! let paid = Cpa::evaluate(&Event::new("e1", "deposit", "c1", 0), &context).unwrap();
//! assert_eq!(testing::paid(&paid), ["aff1 25 cpa"]);
//! assert_eq!(testing::logs(), ["paying 25"]);
//! ```
//!
//! Each test thread has its own state and log, so tests run in parallel without interfering.
//! The host's sandbox is the judge of determinism and limits; the plugin's fixtures run there
//! too, through `commission-host plugin test`.

use crate::{Affiliate, Commission, Context, Properties};

/// A context for `operator` paying in `currency`, with the referral chain given (attributed
/// affiliate first).
pub fn context(operator: &str, currency: &str, referral_chain: impl IntoIterator<Item = Affiliate>) -> Context {
    Context {
        operator: operator.to_owned(),
        operator_currency: currency.to_owned(),
        config: Properties::default(),
        referral_chain: referral_chain.into_iter().collect(),
    }
}

/// Deal terms (or config) from pairs: `deal(&[("ftd_cpa", "40")])`.
pub fn deal(terms: &[(&str, &str)]) -> Properties {
    terms.iter().copied().collect()
}

/// An affiliate with the deal terms given as pairs.
pub fn affiliate(id: &str, terms: &[(&str, &str)]) -> Affiliate {
    Affiliate::new(id, deal(terms))
}

/// Commissions as `"affiliate amount rule"` lines, the amount as the plugin wrote it: the usual
/// left side of an `assert_eq!` (`assert_eq!(paid(&commissions), ["aff1 10 ftd-cpa"])`).
pub fn paid(commissions: &[Commission]) -> Vec<String> {
    commissions
        .iter()
        .map(|commission| format!("{} {} {}", commission.affiliate, commission.amount, commission.rule))
        .collect()
}

/// The value this thread's state holds under `key`, as text (natively, what the plugin's
/// [`crate::state`] calls wrote).
#[cfg(not(target_arch = "wasm32"))]
pub fn state_text(key: &str) -> Option<String> {
    crate::state::get(key).map(|value| String::from_utf8_lossy(&value).into_owned())
}

/// Forgets this thread's state and log lines: call at the start of each test.
#[cfg(not(target_arch = "wasm32"))]
pub fn reset() {
    crate::state::backend::STATE.with_borrow_mut(|state| state.clear());
    crate::log::backend::LINES.with_borrow_mut(|lines| lines.clear());
}

/// The log lines written on this thread since the last [`reset`].
#[cfg(not(target_arch = "wasm32"))]
pub fn logs() -> Vec<String> {
    crate::log::backend::LINES.with_borrow(|lines| lines.iter().map(|(_, line)| line.clone()).collect())
}
