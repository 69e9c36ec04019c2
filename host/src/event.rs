//! Events as they arrive: parsed from a webhook's JSON or a postback's query, checked field by
//! field, and normalised into the [`StoredEvent`] the ledger keeps.
//!
//! Every problem is reported with the field it concerns (and the event's index in a batch), so
//! an operator's integrator can fix the sender without reading our code. A batch with any bad
//! event is refused whole, before anything is written.

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::store::records::StoredEvent;

/// Ids and types that start with this are the host's own (its settlements); senders may not
/// use them. Here, with the checks of what senders send, so that the event module depends on
/// nothing of the data path.
pub const RESERVED_PREFIX: &str = "commission-host.";

pub const MAX_BATCH: usize = 1000;
const MAX_ID_CHARS: usize = 128;
const MAX_KIND_CHARS: usize = 64;
const MAX_AMOUNT_CHARS: usize = 64;
const MAX_ATTRIBUTES: usize = 64;
const MAX_ATTRIBUTE_KEY_CHARS: usize = 64;
const MAX_ATTRIBUTE_VALUE_CHARS: usize = 1024;

/// Query parameters of a postback that are not attributes.
const POSTBACK_FIELDS: &[&str] = &["token", "id", "type", "customer", "occurred_at", "amount", "currency", "affiliate"];

/// A problem with one field of one event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FieldError {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
    pub field: String,
    pub problem: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, problem: impl Into<String>) -> Self {
        Self { index: None, field: field.into(), problem: problem.into() }
    }
}

/// Why a webhook body was refused.
#[derive(Debug)]
pub enum BodyError {
    /// Not JSON at all: 400.
    Syntax(String),
    /// JSON, but not events: 422, with each problem.
    Fields(Vec<FieldError>),
}

/// A checked event, ready for the pipeline.
#[derive(Debug, Clone)]
pub struct IncomingEvent {
    pub event: StoredEvent,
    /// sha256 of the event as sent (before defaults are filled in): a retry matches it even
    /// when the sender left `occurred_at` to the host.
    pub content_sha256: String,
}

// The required fields are `Option`s so that a missing one is reported with the others, by name,
// rather than as the first serde error.
/// An event as a webhook sends it.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = Event)]
pub struct WireEvent {
    /// The operator's transaction id, unique per operator forever.
    #[schema(value_type = String, required = true, min_length = 1)]
    id: Option<String>,
    /// `registration`, `deposit`, `trade`, `chargeback`, ...: the plugin's to read.
    #[serde(rename = "type")]
    #[schema(value_type = String, required = true, min_length = 1)]
    kind: Option<String>,
    #[schema(value_type = String, required = true, min_length = 1)]
    customer: Option<String>,
    /// RFC 3339 or unix milliseconds; the receipt time when left out.
    occurred_at: Option<String>,
    /// A decimal string (`"100.00"`).
    amount: Option<String>,
    /// ISO 4217; the operator's when left out.
    currency: Option<String>,
    /// The referring affiliate: binds the customer to it on its first event.
    affiliate: Option<String>,
    /// Strings (numbers and booleans are kept as text).
    #[serde(default)]
    #[schema(value_type = BTreeMap<String, String>)]
    attributes: UniqueKeys<Scalar>,
}

/// A JSON object decoded into a map, refusing a key given twice (which JSON allows and
/// `BTreeMap`'s decoder would resolve silently, keeping the last).
pub struct UniqueKeys<V>(pub BTreeMap<String, V>);

impl<V> Default for UniqueKeys<V> {
    fn default() -> Self {
        Self(BTreeMap::new())
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for UniqueKeys<V> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor<V>(std::marker::PhantomData<V>);

        impl<'de, V: Deserialize<'de>> serde::de::Visitor<'de> for Visitor<V> {
            type Value = UniqueKeys<V>;

            fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
                formatter.write_str("an object")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
                let mut map = BTreeMap::new();
                while let Some((key, value)) = access.next_entry::<String, V>()? {
                    if map.contains_key(&key) {
                        return Err(serde::de::Error::custom(format!("duplicate key `{key}`")));
                    }
                    map.insert(key, value);
                }
                Ok(UniqueKeys(map))
            }
        }

        deserializer.deserialize_map(Visitor(std::marker::PhantomData))
    }
}

/// A JSON string, number or boolean, as the text plugins see. A number is kept as written: it
/// never passes through a float, so `33.333333333333333333` stays exact and `1.50` is the same
/// text as `"1.50"` (the same content for dedup).
pub struct Scalar(pub String);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = Box::<RawValue>::deserialize(deserializer)?;
        let text = raw.get();
        match text.as_bytes().first() {
            Some(b'"') => serde_json::from_str(text).map(Scalar).map_err(serde::de::Error::custom),
            // serde_json has checked the number's grammar; its digits are kept, not rounded.
            Some(b'-' | b'0'..=b'9') => Ok(Scalar(text.to_owned())),
            Some(b't' | b'f') => Ok(Scalar(text.to_owned())),
            _ => Err(serde::de::Error::custom(format!("{text}: expected a string, a number or a boolean"))),
        }
    }
}

/// Parses a webhook body: one event object, or an array of them. Returns the events and
/// whether the body was an array (the answer has the same shape).
pub fn parse_webhook(
    body: &[u8],
    operator_currency: &str,
    now_ms: i64,
) -> Result<(Vec<IncomingEvent>, bool), BodyError> {
    // Each event stays raw JSON until it is decoded into its struct, which refuses duplicate
    // keys; a `serde_json::Value` in between would silently keep the last of them.
    let syntax = |error: serde_json::Error| BodyError::Syntax(error.to_string());
    let (values, is_batch): (Vec<&RawValue>, bool) = match body.trim_ascii_start().first() {
        Some(b'[') => (serde_json::from_slice(body).map_err(syntax)?, true),
        Some(b'{') => (vec![serde_json::from_slice(body).map_err(syntax)?], false),
        _ => {
            return Err(BodyError::Fields(vec![FieldError::new(
                "",
                "the body must be an event object or an array of them",
            )]));
        }
    };
    if is_batch && values.is_empty() {
        return Err(BodyError::Fields(vec![FieldError::new("", "the batch is empty")]));
    }
    if values.len() > MAX_BATCH {
        return Err(BodyError::Fields(vec![FieldError::new(
            "",
            format!("a batch holds at most {MAX_BATCH} events; this one has {}", values.len()),
        )]));
    }
    // Checked per event, so one answer lists every bad event of the batch.
    let mut events = Vec::with_capacity(values.len());
    let mut errors = Vec::new();
    for (index, value) in values.into_iter().enumerate() {
        let parsed =
            serde_path_to_error::deserialize::<_, WireEvent>(&mut serde_json::Deserializer::from_str(value.get()))
                .map_err(|error| {
                    let field = error.path().to_string();
                    vec![FieldError::new(
                        if field == "." { String::new() } else { field },
                        error.into_inner().to_string(),
                    )]
                })
                .and_then(|wire| check(wire, operator_currency, now_ms));
        match parsed {
            Ok(event) => events.push(event),
            Err(problems) => errors
                .extend(problems.into_iter().map(|problem| FieldError { index: is_batch.then_some(index), ..problem })),
        }
    }
    if errors.is_empty() { Ok((events, is_batch)) } else { Err(BodyError::Fields(errors)) }
}

/// Parses a postback query. Returns the event and the `token` it carried (not part of the
/// event, never stored).
pub fn parse_postback(
    query: &str,
    operator_currency: &str,
    now_ms: i64,
) -> Result<(IncomingEvent, Option<String>), Vec<FieldError>> {
    let mut fields: BTreeMap<String, String> = BTreeMap::new();
    let mut attributes = BTreeMap::new();
    for (key, value) in query_pairs(query)? {
        let target = if POSTBACK_FIELDS.contains(&key.as_ref()) { &mut fields } else { &mut attributes };
        if target.insert(key.to_string(), value.to_string()).is_some() {
            return Err(vec![FieldError::new(key, "given more than once")]);
        }
    }
    let token = fields.remove("token");
    let wire = WireEvent {
        id: fields.remove("id"),
        kind: fields.remove("type"),
        customer: fields.remove("customer"),
        occurred_at: fields.remove("occurred_at"),
        amount: fields.remove("amount"),
        currency: fields.remove("currency"),
        affiliate: fields.remove("affiliate"),
        attributes: UniqueKeys(attributes.into_iter().map(|(k, v)| (k, Scalar(v))).collect()),
    };
    Ok((check(wire, operator_currency, now_ms)?, token))
}

/// The `key=value` pairs of a query, decoded as forms are (`+` is a space, then percent
/// escapes), refusing any that are not UTF-8 once decoded. `form_urlencoded` would replace such
/// bytes with U+FFFD, and `id=a%FF` and `id=a%FE` would become the same event id.
pub(crate) fn query_pairs(query: &str) -> Result<Vec<(String, String)>, Vec<FieldError>> {
    let decode = |text: &str| {
        let spaced = text.replace('+', " ");
        String::from_utf8(percent_encoding::percent_decode_str(&spaced).collect::<Vec<u8>>())
    };
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let key = decode(key).map_err(|_| {
                vec![FieldError::new("", format!("the parameter name {key:?} is not UTF-8 once percent-decoded"))]
            })?;
            let value = decode(value).map_err(|_| {
                vec![FieldError::new(key.as_str(), format!("{value:?} is not UTF-8 once percent-decoded"))]
            })?;
            Ok((key, value))
        })
        .collect()
}

/// The canonical form hashed for dedup: what the sender said, with amounts compared by value
/// and the currency filled in. `occurred_at` stays as sent: the receipt time that fills it
/// differs on every retry.
#[derive(Serialize)]
struct AsSent<'a> {
    id: &'a str,
    kind: &'a str,
    customer: &'a str,
    occurred_at: Option<i64>,
    amount: Option<String>,
    currency: Option<&'a str>,
    affiliate: Option<&'a str>,
    attributes: &'a BTreeMap<String, String>,
}

fn check(wire: WireEvent, operator_currency: &str, now_ms: i64) -> Result<IncomingEvent, Vec<FieldError>> {
    let mut errors = Vec::new();
    let id = required_text(&mut errors, "id", wire.id, MAX_ID_CHARS).filter(|id| not_reserved(&mut errors, "id", id));
    let kind = required_text(&mut errors, "type", wire.kind, MAX_KIND_CHARS)
        .filter(|kind| not_reserved(&mut errors, "type", kind));
    let customer = required_text(&mut errors, "customer", wire.customer, MAX_ID_CHARS);
    let affiliate = wire.affiliate.and_then(|affiliate| match affiliate_id_problem(&affiliate) {
        None => Some(affiliate),
        Some(problem) => {
            errors.push(FieldError::new("affiliate", problem));
            None
        }
    });
    let occurred_at = wire.occurred_at.and_then(|time| match parse_time(&time) {
        Ok(ms) => Some(ms),
        Err(problem) => {
            errors.push(FieldError::new("occurred_at", problem));
            None
        }
    });
    let amount = wire.amount.and_then(|amount| match parse_amount(&amount) {
        Ok(amount) => Some(amount),
        Err(problem) => {
            errors.push(FieldError::new("amount", problem));
            None
        }
    });
    let currency = wire.currency.and_then(|code| {
        if iso_currency::Currency::from_code(&code).is_some() {
            Some(code)
        } else {
            errors.push(FieldError::new(
                "currency",
                format!("{code:?} is not an ISO 4217 currency code (such as USD, EUR)"),
            ));
            None
        }
    });
    let wire_attributes = wire.attributes.0;
    if wire_attributes.len() > MAX_ATTRIBUTES {
        errors.push(FieldError::new(
            "attributes",
            format!("at most {MAX_ATTRIBUTES} attributes; got {}", wire_attributes.len()),
        ));
    }
    let mut attributes = BTreeMap::new();
    for (key, value) in wire_attributes {
        let field = format!("attributes.{key}");
        if key.is_empty() || key.chars().count() > MAX_ATTRIBUTE_KEY_CHARS || key.chars().any(char::is_control) {
            errors.push(FieldError::new(
                &field,
                format!(
                    "an attribute name must be 1 to {MAX_ATTRIBUTE_KEY_CHARS} characters, without control characters"
                ),
            ));
            continue;
        }
        if let Some(value) = checked_text(&mut errors, &field, value.0, MAX_ATTRIBUTE_VALUE_CHARS) {
            attributes.insert(key, value);
        }
    }
    let (Some(id), Some(kind), Some(customer), true) = (id, kind, customer, errors.is_empty()) else {
        return Err(errors);
    };
    // An amount without a currency is in the operator's: the same money as one that says so.
    let currency = currency.or_else(|| amount.map(|_| operator_currency.to_owned()));
    let as_sent = AsSent {
        id: &id,
        kind: &kind,
        customer: &customer,
        occurred_at,
        amount: amount.map(|amount: Decimal| amount.normalize().to_string()),
        currency: currency.as_deref(),
        affiliate: affiliate.as_deref(),
        attributes: &attributes,
    };
    let content_sha256 = hex::encode(Sha256::digest(serde_json::to_vec(&as_sent).expect("plain data serializes")));
    Ok(IncomingEvent {
        event: StoredEvent {
            id,
            kind,
            customer,
            occurred_at: occurred_at.unwrap_or(now_ms),
            amount,
            currency,
            affiliate,
            attributes,
            fx: None,
        },
        content_sha256,
    })
}

/// Affiliate ids are restricted as operator ids are, and lowercase, so that two affiliates can
/// never look the same in a statement: no case variants, look-alike letters from other
/// scripts, invisible or direction characters, or trailing spaces.
pub fn affiliate_id_problem(id: &str) -> Option<String> {
    let valid = (1..=MAX_ID_CHARS).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.'))
        && id.as_bytes()[0].is_ascii_alphanumeric();
    (!valid).then(|| {
        format!("{id:?} is not an affiliate id: 1 to {MAX_ID_CHARS} of a-z, 0-9, -, _ and ., starting with a letter or digit")
    })
}

/// Ids and types starting with the host's prefix name the host's own entries (settlements).
fn not_reserved(errors: &mut Vec<FieldError>, field: &str, value: &str) -> bool {
    if value.starts_with(RESERVED_PREFIX) {
        errors.push(FieldError::new(
            field,
            format!("values starting with {RESERVED_PREFIX:?} are reserved for the host"),
        ));
        return false;
    }
    true
}

fn required_text(errors: &mut Vec<FieldError>, field: &str, value: Option<String>, max_chars: usize) -> Option<String> {
    match value {
        Some(value) => checked_text(errors, field, value, max_chars),
        None => {
            errors.push(FieldError::new(field, "required"));
            None
        }
    }
}

/// Non-empty, at most `max_chars`, no control characters (ids become parts of keys and logs).
fn checked_text(errors: &mut Vec<FieldError>, field: &str, value: String, max_chars: usize) -> Option<String> {
    let problem = if value.is_empty() && !field.starts_with("attributes.") {
        Some("must not be empty".to_owned())
    } else if value.chars().count() > max_chars {
        Some(format!("at most {max_chars} characters; got {}", value.chars().count()))
    } else if value.chars().any(char::is_control) {
        Some("must not contain control characters".to_owned())
    } else {
        None
    };
    match problem {
        Some(problem) => {
            errors.push(FieldError::new(field, problem));
            None
        }
        None => Some(value),
    }
}

/// A decimal string: digits with an optional sign and fraction, at most 28 fraction digits.
/// No exponent, no NaN or infinity, no float: money is exact or refused.
pub fn parse_amount(text: &str) -> Result<Decimal, String> {
    let shape_ok = !text.is_empty()
        && text.len() <= MAX_AMOUNT_CHARS
        && text.strip_prefix('-').unwrap_or(text).chars().all(|c| c.is_ascii_digit() || c == '.')
        && text.chars().filter(|c| *c == '.').count() <= 1
        && text.chars().any(|c| c.is_ascii_digit());
    if !shape_ok {
        return Err(format!("{text:?} is not a decimal amount such as \"100.00\""));
    }
    let amount = Decimal::from_str_exact(text)
        .map_err(|_| format!("{text:?} does not fit a 96-bit decimal with at most 28 fraction digits"))?;
    // "-0" and "0" are the same money; keep the scale, drop the sign.
    Ok(if amount.is_zero() { Decimal::new(0, amount.scale()) } else { amount })
}

/// RFC 3339 (`2026-11-01T10:00:00Z`) or unix milliseconds, from 1970 on.
pub fn parse_time(text: &str) -> Result<i64, String> {
    let ms = if !text.is_empty() && text.len() <= 15 && text.chars().all(|c| c.is_ascii_digit()) {
        text.parse::<i64>().map_err(|error| error.to_string())?
    } else {
        let time = OffsetDateTime::parse(text, &Rfc3339)
            .map_err(|_| format!("{text:?} is not an RFC 3339 time (2026-11-01T10:00:00Z) or unix milliseconds"))?;
        (time.unix_timestamp_nanos() / 1_000_000) as i64
    };
    if ms < 0 {
        return Err(format!("{text:?} is before 1970"));
    }
    Ok(ms)
}

/// Unix milliseconds as RFC 3339, for answers.
pub fn format_time(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|time| time.format(&Rfc3339).ok())
        .unwrap_or_else(|| ms.to_string())
}

/// `#[serde(serialize_with = "serialize_time")]`: a time kept in unix milliseconds, written
/// in RFC 3339 as every time on the wire is.
pub fn serialize_time<S: serde::Serializer>(ms: &i64, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&format_time(*ms))
}

/// `#[serde(deserialize_with = "deserialize_time")]`: the other way, for a record kept in
/// the wire's form (a verify job's report).
pub fn deserialize_time<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<i64, D::Error> {
    let text = <String as serde::Deserialize>::deserialize(deserializer)?;
    parse_time(&text).map_err(serde::de::Error::custom)
}

pub fn now_ms() -> i64 {
    (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_are_exact_decimals_or_refused() {
        assert_eq!(parse_amount("100.00").unwrap().to_string(), "100.00");
        assert_eq!(parse_amount("-0").unwrap(), Decimal::ZERO);
        assert!(!parse_amount("-0").unwrap().is_sign_negative());
        for bad in ["abc", "1e400", "NaN", "inf", "", "1.2.3", "0.00000000000000000000000000001", "+5", " 5", "-"] {
            assert!(parse_amount(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn times_are_rfc3339_or_unix_milliseconds() {
        assert_eq!(parse_time("2026-11-01T10:00:00Z").unwrap(), 1_793_527_200_000);
        assert_eq!(parse_time("1793527200000").unwrap(), 1_793_527_200_000);
        assert!(parse_time("yesterday").is_err());
        assert_eq!(format_time(1_793_527_200_000), "2026-11-01T10:00:00Z");
    }

    #[test]
    fn postback_values_decode_as_forms_and_must_be_utf8() {
        let (event, token) =
            parse_postback("token=t&id=a%20b+c&type=deposit&customer=%C3%A9&x=1%2B1", "USD", 0).unwrap();
        assert_eq!((event.event.id.as_str(), event.event.customer.as_str()), ("a b c", "é"));
        assert_eq!((event.event.attributes["x"].as_str(), token.as_deref()), ("1+1", Some("t")));
        let problems = parse_postback("id=a%FF&type=deposit&customer=c", "USD", 0).unwrap_err();
        assert_eq!(problems[0].field, "id");
        assert!(parse_postback("a%FE=1&id=a&type=deposit&customer=c", "USD", 0).is_err());
    }

    #[test]
    fn a_key_given_twice_is_refused_not_resolved() {
        for body in [
            &br#"{"id":"a","type":"deposit","customer":"c1","amount":"1","amount":"1000"}"#[..],
            br#"[{"id":"a","type":"x","customer":"c1","attributes":{"lots":"1","lots":"100"}}]"#,
        ] {
            let Err(BodyError::Fields(problems)) = parse_webhook(body, "USD", 0) else { panic!("accepted") };
            assert!(problems[0].problem.contains("duplicate"), "{problems:?}");
        }
    }

    #[test]
    fn a_retry_without_occurred_at_hashes_the_same_at_another_time() {
        let body = br#"{"id":"t-1","type":"deposit","customer":"c1","amount":"100.0"}"#;
        let (first, _) = parse_webhook(body, "USD", 1).unwrap();
        let (again, _) =
            parse_webhook(br#"{"id":"t-1","type":"deposit","customer":"c1","amount":"100.00"}"#, "USD", 2).unwrap();
        assert_eq!(first[0].content_sha256, again[0].content_sha256);
        assert_eq!(first[0].event.currency.as_deref(), Some("USD"));
    }
}
