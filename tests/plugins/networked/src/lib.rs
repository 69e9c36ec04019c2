//! Tries to phone home. Using `std::net` makes the component import `wasi:sockets`, so the host
//! must refuse it at upload, naming that import.

use commission_plugin_sdk::prelude::*;

pub struct Networked;

impl Plugin for Networked {
    fn evaluate(_event: &Event, _context: &Context) -> Result<Vec<Commission>> {
        std::net::TcpStream::connect("198.51.100.1:80").map_err(|error| Error::new(error.to_string()))?;
        Ok(vec![])
    }
}

export_plugin!(Networked);
