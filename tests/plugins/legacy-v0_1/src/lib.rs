//! Built with wit-bindgen straight from the frozen `wit/since_v0.1.0` contract, as a plugin
//! compiled before 0.2.0 existed would be: the host must keep loading it and paying what it
//! says. Pays a flat 3 on every deposit. Only a wasm build has anything in it.
#![cfg(target_arch = "wasm32")]

wit_bindgen::generate!({
    path: "../../../wit/since_v0.1.0",
    world: "plugin",
});

use commission::plugin::types::{Commission, Context, Event};

struct Legacy;

impl exports::commission::plugin::rules::Guest for Legacy {
    fn evaluate(event: Event, context: Context) -> Result<Vec<Commission>, String> {
        if event.kind != "deposit" {
            return Ok(Vec::new());
        }
        Ok(vec![Commission {
            affiliate: context.referral_chain[0].id.clone(),
            amount: "3".into(),
            currency: context.operator_currency,
            rule: "legacy-flat".into(),
            explanation: "flat 3 per deposit (a 0.1.0 plugin)".into(),
        }])
    }
}

export!(Legacy);
