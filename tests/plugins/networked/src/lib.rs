//! Tries to phone home, to the address in the event's `address` attribute. Using `std::net`
//! makes the component import `wasi:sockets`; the host accepts the import (every libc-based
//! language imports it) and denies its use, so the connection is refused inside the sandbox
//! and nothing reaches the address. Tests point it at a loopback listener of their own.

use commission_plugin_sdk::prelude::*;

pub struct Networked;

impl Plugin for Networked {
    fn evaluate(event: &Event, _context: &Context) -> Result<Vec<Commission>> {
        let address = event.attributes.get("address").unwrap_or("127.0.0.1:9");
        std::net::TcpStream::connect(address)
            .map_err(|error| Error::new(format!("connecting to {address}: {error}")))?;
        Ok(vec![])
    }
}

export_plugin!(Networked);
