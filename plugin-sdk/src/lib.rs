//! # Writing commission rules for commission-host
//!
//! An operator's payout logic (CPA, RevShare, tiers, per-lot IB deals, ...) runs inside
//! commission-host as a WebAssembly component. This crate is everything a plugin author needs:
//! implement [`Plugin`] in plain Rust, call [`export_plugin!`], and build for `wasm32-wasip2`.
//!
//! ```no_run
//! use commission_plugin_sdk::prelude::*;
//!
//! struct FirstDepositCpa;
//!
//! impl Plugin for FirstDepositCpa {
//!     fn evaluate(event: &Event, context: &Context) -> Result<Vec<Commission>> {
//!         if event.kind != "deposit" || !state::claim(&state::customer_key(&event.customer, "ftd-paid")) {
//!             return Ok(vec![]);
//!         }
//!         let affiliate = context.affiliate();
//!         let cpa = affiliate.deal.decimal_or("ftd_cpa", Decimal::TEN)?;
//!         Ok(vec![context.pay(affiliate, cpa).rule("ftd-cpa").because("first deposit")])
//!     }
//! }
//!
//! export_plugin!(FirstDepositCpa);
//! ```
//!
//! ## The rules of the sandbox
//! - **Deterministic.** The only clock is [`Event::occurred_at`]; there is no randomness, file
//!   system or network. The host replays stored events through the same plugin version to
//!   explain or verify a payout, and must get the same commissions.
//! - **No memory between events.** Each event runs in a fresh instance: a `static` set while
//!   evaluating one event is gone for the next. Keep what must last in [`state`].
//! - **All or nothing.** [`state`] writes and the returned commissions are committed together,
//!   only if [`Plugin::evaluate`] returns `Ok`. An `Err` (or a panic) stores the event as failed
//!   with the message; the operator can retry it after a fix.
//!
//! ## Testing natively
//! Off wasm, [`state`] and [`log`] are kept in memory per thread, so rule logic runs under a
//! plain `cargo test`; see [`testing`]. Fixture files (events, deal terms, the commissions
//! expected after each) run natively with [`fixtures::run_file`] and through the built component
//! with `commission-host plugin test`; see [`fixtures`].
//!
//! ## Examples
//! [`models`] has one small, tested plugin per commission model: CPA, CPL, RevShare, hybrid,
//! tiered CPA, per-lot (IB) rebates and sub-affiliate overrides. The step-by-step guide from
//! `commission-host plugin new` to an uploaded plugin is this crate's README.md.

#![warn(missing_docs)]

// Lets the generated bindings name this crate the same way from inside it and from a plugin.
extern crate self as commission_plugin_sdk;

mod commission;
mod context;
mod error;
mod event;
#[cfg(not(target_arch = "wasm32"))]
pub mod fixtures;
pub mod log;
pub mod models;
mod period;
mod properties;
pub mod state;
pub mod testing;

pub use commission::{Commission, CommissionBuilder, CommissionRef};
pub use context::{Affiliate, Context};
pub use error::{Error, Result};
pub use event::Event;
pub use period::Period;
pub use properties::Properties;
pub use rust_decimal::{Decimal, RoundingStrategy};

/// The version of the `commission:plugin` WIT package this SDK builds plugins against.
/// The host reads it from the component's imports and exports, not from this constant.
pub const WIT_VERSION: &str = "0.2.0";

/// What a plugin author implements: the commissions one event earns.
///
/// There is no `self`: a plugin keeps nothing in memory between events (see the crate docs).
pub trait Plugin {
    /// The commissions (or, negative, the clawbacks) one event causes.
    fn evaluate(event: &Event, context: &Context) -> Result<Vec<Commission>>;

    /// What `context.affiliate()` earns for `period` as a whole, when the operator closes it:
    /// RevShare on the month's net revenue, say, from totals [`state`] kept as events came in.
    /// Called once per affiliate and period. Pays nothing unless implemented.
    fn settle(period: &Period, context: &Context) -> Result<Vec<Commission>> {
        let _ = (period, context);
        Ok(Vec::new())
    }
}

/// Everything a plugin usually needs, in one `use`.
pub mod prelude {
    pub use crate::{
        Affiliate, Commission, CommissionRef, Context, Decimal, Error, Event, Period, Plugin, Properties, Result,
        export_plugin, state,
    };
    pub use crate::{debug, error, info, warn};
}

/// Exports a [`Plugin`] implementation as the component's `rules` interface.
/// Invoke it once, at the root of the plugin's `cdylib` crate.
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        const _: () = {
            struct ExportedRules;

            impl $crate::__bindings::exports::commission::plugin::rules::Guest for ExportedRules {
                fn evaluate(
                    event: $crate::__bindings::commission::plugin::types::Event,
                    context: $crate::__bindings::commission::plugin::types::Context,
                ) -> ::core::result::Result<
                    $crate::__bindings::__private_std::vec::Vec<
                        $crate::__bindings::commission::plugin::types::Commission,
                    >,
                    $crate::__bindings::__private_std::string::String,
                > {
                    $crate::__bindings::evaluate_with::<$plugin>(event, context)
                }

                fn settle(
                    period: $crate::__bindings::commission::plugin::types::Period,
                    context: $crate::__bindings::commission::plugin::types::Context,
                ) -> ::core::result::Result<
                    $crate::__bindings::__private_std::vec::Vec<
                        $crate::__bindings::commission::plugin::types::Commission,
                    >,
                    $crate::__bindings::__private_std::string::String,
                > {
                    $crate::__bindings::settle_with::<$plugin>(period, context)
                }
            }

            // Off wasm the plugin is an ordinary library for native tests: nothing to export.
            #[cfg(target_arch = "wasm32")]
    $crate::__bindings::__export_rules!(ExportedRules with_types_in $crate::__bindings);
        };
    };
}

/// The wit-bindgen glue. Not part of the API: [`export_plugin!`] is.
#[doc(hidden)]
pub mod __bindings {
    wit_bindgen::generate!({
        path: "../wit/since_v0.2.0",
        world: "plugin",
        pub_export_macro: true,
        export_macro_name: "__export_rules",
        runtime_path: "::commission_plugin_sdk::__bindings::__wit_bindgen::rt",
    });

    pub use std as __private_std;
    pub use wit_bindgen as __wit_bindgen;

    use crate::{Context, Event, Period, Plugin};

    pub fn evaluate_with<P: Plugin>(
        event: commission::plugin::types::Event,
        context: commission::plugin::types::Context,
    ) -> Result<Vec<commission::plugin::types::Commission>, String> {
        let event = Event::from_wit(event).map_err(|error| error.to_string())?;
        let context = Context::from_wit(context);
        P::evaluate(&event, &context)
            .map(|commissions| commissions.into_iter().map(Into::into).collect())
            .map_err(|error| error.to_string())
    }

    pub fn settle_with<P: Plugin>(
        period: commission::plugin::types::Period,
        context: commission::plugin::types::Context,
    ) -> Result<Vec<commission::plugin::types::Commission>, String> {
        let period = Period { id: period.id, starts_at: period.starts_at, ends_at: period.ends_at };
        P::settle(&period, &Context::from_wit(context))
            .map(|commissions| commissions.into_iter().map(Into::into).collect())
            .map_err(|error| error.to_string())
    }
}
