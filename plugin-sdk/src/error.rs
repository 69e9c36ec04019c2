use std::fmt;

/// Why a plugin refused to evaluate an event. The message is stored with the failed event and
/// shown to the operator, so say what was wrong with which value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error(String);

/// What [`crate::Plugin`] methods and the SDK's helpers return.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An error with this message (say which value was wrong, and why).
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl From<String> for Error {
    fn from(message: String) -> Self {
        Self(message)
    }
}

impl From<&str> for Error {
    fn from(message: &str) -> Self {
        Self(message.to_owned())
    }
}
