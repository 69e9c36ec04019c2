//! Traps on whatever it is given, as a plugin with a bug on its first line would.

use commission_plugin_sdk::prelude::*;

pub struct Broken;

impl Plugin for Broken {
    fn evaluate(_event: &Event, _context: &Context) -> Result<Vec<Commission>> {
        std::process::abort()
    }
}

export_plugin!(Broken);
