//! Log lines, stored with the event: the operator reads them to see why something was (not)
//! paid. Use the [`info!`](crate::info) family of macros.
//!
//! Off wasm they are kept per thread; see [`crate::testing::logs`].

/// How much a line matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Detail for the author while debugging.
    Debug,
    /// What the rule decided and why.
    Info,
    /// Something odd the operator should look at.
    Warn,
    /// Something wrong.
    Error,
}

/// Writes one log line; the [`info!`](crate::info) family of macros formats and calls this.
pub fn log(level: Level, message: &str) {
    backend::log(level, message)
}

/// Logs a line at [`Level::Debug`], `format!`-style.
#[macro_export]
macro_rules! debug { ($($arg:tt)*) => { $crate::log::log($crate::log::Level::Debug, &format!($($arg)*)) }; }
/// Logs a line at [`Level::Info`], `format!`-style.
#[macro_export]
macro_rules! info { ($($arg:tt)*) => { $crate::log::log($crate::log::Level::Info, &format!($($arg)*)) }; }
/// Logs a line at [`Level::Warn`], `format!`-style.
#[macro_export]
macro_rules! warn { ($($arg:tt)*) => { $crate::log::log($crate::log::Level::Warn, &format!($($arg)*)) }; }
/// Logs a line at [`Level::Error`], `format!`-style.
#[macro_export]
macro_rules! error { ($($arg:tt)*) => { $crate::log::log($crate::log::Level::Error, &format!($($arg)*)) }; }

#[cfg(target_arch = "wasm32")]
mod backend {
    use super::Level;
    use crate::__bindings::commission::plugin::log::{self as wit, Level as WitLevel};

    pub fn log(level: Level, message: &str) {
        let level = match level {
            Level::Debug => WitLevel::Debug,
            Level::Info => WitLevel::Info,
            Level::Warn => WitLevel::Warn,
            Level::Error => WitLevel::Error,
        };
        wit::log(level, message)
    }
}

#[cfg(not(target_arch = "wasm32"))]
pub(crate) mod backend {
    use std::cell::RefCell;

    use super::Level;

    thread_local! {
        pub(crate) static LINES: RefCell<Vec<(Level, String)>> = const { RefCell::new(Vec::new()) };
    }

    pub fn log(level: Level, message: &str) {
        LINES.with_borrow_mut(|lines| lines.push((level, message.to_owned())));
    }
}
