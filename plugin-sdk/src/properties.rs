use std::collections::BTreeMap;
use std::str::FromStr;

use rust_decimal::Decimal;

use crate::{Error, Result};

/// Key/value terms: an affiliate's deal, the operator's config, an event's attributes.
///
/// Values are strings on the wire; the typed getters parse them and name the key in the error,
/// so a bad deal term fails the event with a message the operator can act on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Properties(BTreeMap<String, String>);

impl Properties {
    /// The text of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// The value of `key` as a decimal, or `None` when absent.
    pub fn decimal(&self, key: &str) -> Result<Option<Decimal>> {
        self.get(key).map(|value| parse_decimal(key, value)).transpose()
    }

    /// The value of `key` as a decimal, or `default` when absent.
    pub fn decimal_or(&self, key: &str, default: Decimal) -> Result<Decimal> {
        Ok(self.decimal(key)?.unwrap_or(default))
    }

    /// Every key and value, sorted by key.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Properties {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Self(iter.into_iter().map(|(k, v)| (k.into(), v.into())).collect())
    }
}

pub(crate) fn parse_decimal(what: &str, value: &str) -> Result<Decimal> {
    Decimal::from_str_exact(value)
        .or_else(|_| Decimal::from_str(value))
        .map_err(|_| Error::new(format!("{what}: {value:?} is not a decimal number")))
}
