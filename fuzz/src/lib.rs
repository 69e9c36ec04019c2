//! The fuzz targets' bodies: each takes any bytes, feeds them to one of the host's parsers or
//! checks, and asserts what must hold of every answer, not only that nothing panicked.
//!
//! `fuzz_targets/*.rs` call these under libFuzzer; `tests/fuzz_corpus.rs` includes this file
//! and calls them on the seed corpus and the regressions, so CI runs them without nightly.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use commission_host::event::{IncomingEvent, parse_postback, parse_webhook};
use commission_host::pipeline::{ReversedCommission, checked_commissions};
use commission_host::sandbox::{PluginCommission, PluginCommissionRef};
use commission_host::secrets::{SignatureError, WEBHOOK_TOLERANCE_SECONDS, verify_webhook};
use commission_host::store::records::{ChainLink, StoredEvent};
use hmac::{Hmac, Mac};
use rust_decimal::Decimal;

/// A fixed "now" (2026-11-01T10:00:00Z): the targets are deterministic.
const NOW_MS: i64 = 1_793_527_200_000;

/// What holds of every event the host accepts, whichever way it came.
fn check_event(incoming: &IncomingEvent) {
    let event = &incoming.event;
    for (field, text, max) in [("id", &event.id, 128), ("type", &event.kind, 64), ("customer", &event.customer, 128)] {
        assert!(!text.is_empty() && text.chars().count() <= max, "{field} {text:?}");
        assert!(!text.chars().any(char::is_control), "{field} has a control character: {text:?}");
    }
    assert!(!event.id.starts_with("commission-host.") && !event.kind.starts_with("commission-host."));
    assert!(event.occurred_at >= 0);
    if let Some(amount) = event.amount {
        assert!(amount.scale() <= 28);
        assert!(!(amount.is_zero() && amount.is_sign_negative()), "a negative zero was kept");
        assert!(event.currency.is_some(), "an amount always has a currency");
    }
    assert!(event.attributes.len() <= 64);
    for (key, value) in &event.attributes {
        assert!(!key.is_empty() && key.chars().count() <= 64 && !key.chars().any(char::is_control));
        assert!(value.chars().count() <= 1024 && !value.chars().any(char::is_control));
    }
    assert_eq!(incoming.content_sha256.len(), 64);
}

/// The postback query parser. An accepted query, encoded again, parses to the same event
/// with the same dedup hash: what a retry of it would be.
pub fn postback_query(data: &[u8]) {
    let Ok(query) = std::str::from_utf8(data) else { return };
    let Ok((incoming, _token)) = parse_postback(query, "USD", NOW_MS) else { return };
    check_event(&incoming);
    let event = &incoming.event;
    // No byte is lost in decoding: a U+FFFD in the event was sent as one, not made of a byte
    // that was not UTF-8 (two such ids would be one event).
    let texts = [&event.id, &event.kind, &event.customer].into_iter().chain(event.attributes.values());
    if texts.chain(event.attributes.keys()).any(|text| text.contains('\u{FFFD}')) {
        let sent = query.to_ascii_uppercase();
        assert!(sent.contains("%EF%BF%BD") || query.contains('\u{FFFD}'), "a byte was replaced: {query:?}");
    }
    let mut again = form_urlencoded::Serializer::new(String::new());
    again.append_pair("id", &event.id).append_pair("type", &event.kind).append_pair("customer", &event.customer);
    if query_has(query, "occurred_at") {
        again.append_pair("occurred_at", &event.occurred_at.to_string());
    }
    if let Some(amount) = event.amount {
        again.append_pair("amount", &amount.to_string());
    }
    if let Some(currency) = &event.currency {
        again.append_pair("currency", currency);
    }
    if let Some(affiliate) = &event.affiliate {
        again.append_pair("affiliate", affiliate);
    }
    for (key, value) in &event.attributes {
        again.append_pair(key, value);
    }
    let (reparsed, _) = parse_postback(&again.finish(), "USD", NOW_MS + 1).expect("an accepted event, encoded again");
    assert_eq!(reparsed.event.id, event.id);
    assert_eq!(reparsed.event.amount, event.amount);
    assert_eq!(reparsed.event.attributes, event.attributes);
    assert_eq!(reparsed.content_sha256, incoming.content_sha256, "a retry must hash the same");
}

fn query_has(query: &str, key: &str) -> bool {
    form_urlencoded::parse(query.as_bytes()).any(|(k, _)| k == key)
}

/// The webhook body decoder: one event or a batch; every accepted event is well formed, and
/// the answer does not depend on the time but for `occurred_at` filled in.
pub fn webhook_json(data: &[u8]) {
    let Ok((events, is_batch)) = parse_webhook(data, "USD", NOW_MS) else { return };
    assert!(!events.is_empty() && events.len() <= 1000);
    assert!(is_batch || events.len() == 1);
    for incoming in &events {
        check_event(incoming);
    }
    let (later, _) = parse_webhook(data, "USD", NOW_MS + 1000).expect("accepted once, accepted again");
    for (first, second) in events.iter().zip(&later) {
        assert_eq!(first.content_sha256, second.content_sha256, "the dedup hash must not depend on the time");
    }
}

/// The Standard Webhooks verifier. The input is split into a key, an id, a timestamp offset, a
/// body and a signature header. A correct signature is accepted within the tolerance and
/// refused outside it; any other header is refused unless it carries the correct signature.
pub fn webhook_signature(data: &[u8]) {
    let mut parts = data.splitn(4, |byte| *byte == 0xFF);
    let (Some(key), Some(id), Some(offset), body) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return;
    };
    let body = body.unwrap_or_default();
    let Ok(id) = std::str::from_utf8(id) else { return };
    let secret = format!("whsec_{}", STANDARD.encode(key));
    let offset = offset.iter().fold(0i64, |sum, byte| sum.wrapping_mul(31).wrapping_add(i64::from(*byte))) % 1000;
    let now = NOW_MS / 1000;
    let timestamp = (now + offset).to_string();
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).expect("any key size");
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    let correct = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
    let verdict = verify_webhook(&secret, Some(id), Some(&timestamp), Some(&correct), body, now);
    if offset.abs() > WEBHOOK_TOLERANCE_SECONDS {
        assert_eq!(verdict, Err(SignatureError::OutsideTolerance(-offset)));
        return;
    }
    assert_eq!(verdict, Ok(()), "the correct signature was refused");
    // The body as the signature header: accepted only if it carries the correct signature.
    if let Ok(header) = std::str::from_utf8(body) {
        let verdict = verify_webhook(&secret, Some(id), Some(&timestamp), Some(header), body, now);
        let carries = header.split(' ').any(|entry| entry == correct);
        assert_eq!(verdict.is_ok(), carries, "header {header:?}");
        // And as the timestamp: refused or accepted, never a panic.
        let _ = verify_webhook(&secret, Some(id), Some(header), Some(&correct), body, now);
    }
    // Another body under the same signature is refused.
    let mut other = body.to_vec();
    other.push(b' ');
    assert_eq!(
        verify_webhook(&secret, Some(id), Some(&timestamp), Some(&correct), &other, now),
        Err(SignatureError::Mismatch)
    );
}

/// The check a plugin's answer goes through before it becomes ledger entries. The input is
/// split into commissions, each into affiliate, amount, currency, rule, explanation and an
/// optional reversal reference. Whatever is accepted is in the chain, exact, in an ISO
/// currency, and a reversal is negative and no larger than what it reverses (10).
pub fn plugin_result(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let commissions: Vec<PluginCommission> = text
        .split('\n')
        .take(200)
        .map(|line| {
            let mut fields = line.split('|').map(str::to_owned);
            let mut next = || fields.next().unwrap_or_default();
            let (affiliate, amount, currency, rule, explanation) = (next(), next(), next(), next(), next());
            let reverses = match (next(), next()) {
                (event_id, rule) if !event_id.is_empty() => Some(PluginCommissionRef { event_id, rule }),
                _ => None,
            };
            PluginCommission { affiliate, amount, currency, rule, explanation, reverses }
        })
        .collect();
    let chain: Vec<ChainLink> = ["aff1", "master"]
        .map(|affiliate| ChainLink { affiliate: affiliate.to_owned(), deal: Default::default() })
        .to_vec();
    let event = StoredEvent {
        id: "e1".into(),
        kind: "deposit".into(),
        customer: "c1".into(),
        occurred_at: NOW_MS,
        amount: Some(Decimal::from(50)),
        currency: Some("USD".into()),
        affiliate: Some("aff1".into()),
        attributes: Default::default(),
        fx: None,
    };
    // Only d1's ftd-cpa of 10 exists to be reversed.
    let find_reversed = |reference: &PluginCommissionRef, _affiliate: &str| {
        (reference.event_id == "d1" && reference.rule == "ftd-cpa").then(|| ReversedCommission {
            id: "cm_1_0".to_owned(),
            amount: Decimal::TEN,
            currency: "USD".to_owned(),
        })
    };
    let count = commissions.len();
    let Ok(records) = checked_commissions(commissions, &chain, &event, 1, 50, &find_reversed, event.occurred_at) else {
        return;
    };
    assert!(count <= 50 && records.len() == count);
    for record in &records {
        assert!(chain.iter().any(|link| link.affiliate == record.affiliate));
        assert!(record.amount.scale() <= 28);
        assert!(!record.rule.is_empty() && record.rule.len() <= 64 && record.explanation.len() <= 512);
        if let Some(reversed) = &record.reverses {
            assert_eq!(reversed, "cm_1_0");
            assert!(record.amount <= Decimal::ZERO && -record.amount <= Decimal::TEN, "{}", record.amount);
            assert_eq!(record.currency, "USD", "a reversal is in its original's currency");
        }
        assert_eq!(record.event_id, "e1");
    }
}
