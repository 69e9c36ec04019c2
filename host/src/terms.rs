//! Deal terms and operator config: the key-value text an operator gives its plugins, checked
//! when it is written. Keys come once each and hold no control characters, as an event's
//! attributes do; sizes are capped, since a deal is copied into every evaluation of its
//! affiliate's events; and the terms the host reads itself (`hold_days`) must have the form it
//! reads, or a hold would be skipped silently.

use std::collections::BTreeMap;

use crate::event::{FieldError, Scalar, UniqueKeys};
use crate::store::records::Properties;

pub const MAX_KEYS: usize = 100;
pub const MAX_KEY_BYTES: usize = 64;
pub const MAX_VALUE_BYTES: usize = 1024;
pub const MAX_TOTAL_BYTES: usize = 16 * 1024;
/// Ten years: far beyond any chargeback window, and far from overflowing a time in milliseconds.
pub const MAX_HOLD_DAYS: i64 = 3650;
const DAY_MS: i64 = 86_400_000;

/// Terms as they arrive in JSON: each value a string, a number (kept as written) or a boolean,
/// each key once.
pub type WireTerms = UniqueKeys<Scalar>;

/// Checks an operator's `config` (`field`) and returns it as the text plugins see.
pub fn checked_config(field: &str, terms: WireTerms) -> Result<Properties, Vec<FieldError>> {
    let (terms, problems) = capped(field, terms);
    if problems.is_empty() { Ok(terms) } else { Err(problems) }
}

/// Checks an affiliate's `deal` (`field`), with the terms the host reads, and returns it.
pub fn checked_deal(field: &str, terms: WireTerms) -> Result<Properties, Vec<FieldError>> {
    let (terms, mut problems) = capped(field, terms);
    if let Err(problem) = hold_days(&terms) {
        problems.push(FieldError::new(format!("{field}.hold_days"), problem));
    }
    if problems.is_empty() { Ok(terms) } else { Err(problems) }
}

fn capped(field: &str, terms: WireTerms) -> (Properties, Vec<FieldError>) {
    let mut problems = Vec::new();
    if terms.0.len() > MAX_KEYS {
        problems.push(FieldError::new(field, format!("at most {MAX_KEYS} keys; got {}", terms.0.len())));
    }
    let mut total = 0usize;
    let mut checked = Properties::new();
    for (key, Scalar(value)) in terms.0 {
        let name = format!("{field}.{key}");
        total = total.saturating_add(key.len() + value.len());
        if key.is_empty() || key.len() > MAX_KEY_BYTES || key.chars().any(char::is_control) {
            problems.push(FieldError::new(
                name,
                format!("a key must be 1 to {MAX_KEY_BYTES} bytes, without control characters"),
            ));
        } else if value.len() > MAX_VALUE_BYTES {
            problems.push(FieldError::new(name, format!("at most {MAX_VALUE_BYTES} bytes; got {}", value.len())));
        } else if value.chars().any(char::is_control) {
            problems.push(FieldError::new(name, "must not contain control characters"));
        } else {
            checked.insert(key, value);
        }
    }
    if total > MAX_TOTAL_BYTES {
        problems.push(FieldError::new(
            field,
            format!("at most {MAX_TOTAL_BYTES} bytes of keys and values in all; got {total}"),
        ));
    }
    (checked, problems)
}

/// The deal's `hold_days`, if it has one: a whole number of days, in digits, 0 to
/// [`MAX_HOLD_DAYS`].
pub fn hold_days(deal: &BTreeMap<String, String>) -> Result<Option<i64>, String> {
    let Some(text) = deal.get("hold_days") else { return Ok(None) };
    match text.parse::<i64>() {
        Ok(days) if text.bytes().all(|b| b.is_ascii_digit()) && days <= MAX_HOLD_DAYS => Ok(Some(days)),
        _ => Err(format!("{text:?} is not a hold: a whole number of days from 0 to {MAX_HOLD_DAYS}, such as \"30\"")),
    }
}

/// When a commission made at `created_at` may be approved: its affiliate's `deal` says how many
/// days it is held (`hold_days`), the time for chargebacks and fraud checks to come in. A
/// `hold_days` the host cannot read (a deal stored before it was checked) is an error, never
/// "no hold".
pub fn hold_until(deal: &Properties, created_at: i64) -> Result<Option<i64>, String> {
    let Some(days) = hold_days(deal).map_err(|problem| format!("deal.hold_days: {problem}"))? else {
        return Ok(None);
    };
    days.checked_mul(DAY_MS)
        .and_then(|hold| created_at.checked_add(hold))
        .map(Some)
        .ok_or_else(|| format!("deal.hold_days: {days} days from {created_at} ms is out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deal(pairs: &[(&str, &str)]) -> Properties {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn hold_days_is_a_whole_number_of_days_or_refused() {
        assert_eq!(hold_until(&deal(&[("hold_days", "30")]), 0), Ok(Some(30 * DAY_MS)));
        assert_eq!(hold_until(&deal(&[]), 5), Ok(None));
        for bad in ["30.0", "-1", "+3", " 3", "", "3651", "99999999999999999999", "1e2"] {
            assert!(hold_until(&deal(&[("hold_days", bad)]), 0).is_err(), "{bad:?} was accepted");
        }
    }
}
