//! Helpers for testing rule logic natively, with a plain `cargo test` in the plugin's crate.
//!
//! ```
//! use commission_plugin_sdk::{testing, Affiliate, Context, Event, Properties};
//!
//! testing::reset();
//! let context = testing::context("acme", "USD", [Affiliate::new("aff1", Properties::default())]);
//! let event = Event::new("e1", "deposit", "c1", 0);
//! // let commissions = MyPlugin::evaluate(&event, &context)?;
//! # let _ = (context, event);
//! ```
//!
//! Each test thread has its own state and log, so tests run in parallel without interfering.
//! The host's sandbox is the judge of determinism and limits; the plugin's fixtures run there
//! too, through `commission-host plugin test`.

use crate::{Affiliate, Context, Properties};

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
