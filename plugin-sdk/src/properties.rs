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

    /// The comma-separated items of `key`, trimmed, empty items dropped; none when absent.
    /// `countries_deny=US, FR` gives `["US", "FR"]`.
    pub fn list(&self, key: &str) -> Vec<&str> {
        self.get(key)
            .map(|value| value.split(',').map(str::trim).filter(|item| !item.is_empty()).collect())
            .unwrap_or_default()
    }

    /// The tiers of `key`, `FROM:VALUE` items such as `tiers=1:100,11:150,26:200`, sorted by
    /// FROM; none when absent. The lowest FROM must be `first` (1 for "the first customer",
    /// 0 for "no customers yet"), so that every count falls in a tier.
    pub fn tiers(&self, key: &str, first: u64) -> Result<Vec<(u64, Decimal)>> {
        let mut tiers = self
            .list(key)
            .into_iter()
            .map(|tier| {
                let problem = || Error::new(format!("{key}: {tier:?} is not FROM:VALUE, e.g. {}:150", first + 10));
                let (from, value) = tier.split_once(':').ok_or_else(problem)?;
                Ok((from.trim().parse::<u64>().map_err(|_| problem())?, value.trim().parse().map_err(|_| problem())?))
            })
            .collect::<Result<Vec<(u64, Decimal)>>>()?;
        tiers.sort();
        match tiers.first() {
            Some((from, _)) if *from != first => {
                Err(Error::new(format!("{key}: the first tier starts at {from}; it must start at {first}")))
            }
            _ => Ok(tiers),
        }
    }

    /// The value of `key` as `true` or `false`, or `default` when absent; anything else is an
    /// error naming the key.
    pub fn flag_or(&self, key: &str, default: bool) -> Result<bool> {
        match self.get(key) {
            None => Ok(default),
            Some("true") => Ok(true),
            Some("false") => Ok(false),
            Some(other) => Err(Error::new(format!("{key}: {other:?} is not true or false"))),
        }
    }

    /// These terms over `defaults`: a key set here wins, the others come from `defaults`.
    /// How a deal overrides the operator's config: `deal.over(&context.config)`.
    pub fn over(&self, defaults: &Properties) -> Properties {
        Self(defaults.0.iter().chain(&self.0).map(|(k, v)| (k.clone(), v.clone())).collect())
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

#[cfg(test)]
mod tests {
    use rust_decimal::Decimal;

    use super::Properties;

    #[test]
    fn tiers_sort_and_start_where_told() {
        let deal: Properties = [("tiers", "11:150, 1:100,26:200"), ("from_zero", "5:35,0:25")].into_iter().collect();
        let amounts = |tiers: Vec<(u64, Decimal)>| {
            tiers.into_iter().map(|(from, value)| (from, value.to_string())).collect::<Vec<_>>()
        };
        assert_eq!(
            amounts(deal.tiers("tiers", 1).unwrap()),
            [(1, "100".into()), (11, "150".into()), (26, "200".into())]
        );
        assert_eq!(amounts(deal.tiers("from_zero", 0).unwrap()), [(0, "25".into()), (5, "35".into())]);
        assert!(deal.tiers("absent", 1).unwrap().is_empty());
        let error = deal.tiers("from_zero", 1).unwrap_err().to_string();
        assert!(error.contains("from_zero: the first tier starts at 0; it must start at 1"), "{error}");
        let bad: Properties = [("tiers", "1=100")].into_iter().collect();
        let error = bad.tiers("tiers", 1).unwrap_err().to_string();
        assert!(error.contains(r#"tiers: "1=100" is not FROM:VALUE, e.g. 11:150"#), "{error}");
    }

    #[test]
    fn lists_flags_and_defaults() {
        let deal: Properties = [("deny", " US, ,FR "), ("kyc", "true"), ("cpa", "50")].into_iter().collect();
        let config: Properties = [("cpa", "10"), ("window_days", "30")].into_iter().collect();
        assert_eq!(deal.list("deny"), ["US", "FR"]);
        assert!(deal.list("allow").is_empty());
        assert_eq!((deal.flag_or("kyc", false), deal.flag_or("other", true)), (Ok(true), Ok(true)));
        assert!(deal.flag_or("cpa", false).unwrap_err().to_string().contains("cpa"));
        let terms = deal.over(&config);
        assert_eq!((terms.get("cpa"), terms.get("window_days")), (Some("50"), Some("30")));
    }
}
