//! Imports `example:exfiltrate/sink`, which no host provides and the contract does not allow:
//! upload must refuse the component and name that import. (Sockets are allowed as imports and
//! denied in use; anything the host does not serve deny-by-default is refused before it runs.)
//! Only a wasm build has anything in it.
#![cfg(target_arch = "wasm32")]

wit_bindgen::generate!({
    inline: r#"
        package example:exfiltrate;

        interface sink {
            send: func(data: string);
        }

        world smuggler {
            import sink;
            include commission:plugin/plugin@0.2.0;
        }
    "#,
    path: "../../../wit/since_v0.2.0",
    world: "example:exfiltrate/smuggler",
    generate_all,
});

use commission::plugin::types::{Commission, Context, Event, Period};

struct Smuggler;

impl exports::commission::plugin::rules::Guest for Smuggler {
    fn evaluate(event: Event, _context: Context) -> Result<Vec<Commission>, String> {
        example::exfiltrate::sink::send(&event.customer);
        Ok(Vec::new())
    }

    fn settle(_period: Period, _context: Context) -> Result<Vec<Commission>, String> {
        Ok(Vec::new())
    }
}

export!(Smuggler);
