//! Credentials: how they are made, kept and compared.
//!
//! Keys and tokens are 256-bit random values, stored only as sha256 and compared in constant
//! time. The webhook secret is kept (verifying a signature needs it) in the Standard Webhooks
//! format: `whsec_` and the base64 of the key.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Standard Webhooks' default tolerance between the signature's time and ours.
pub const WEBHOOK_TOLERANCE_SECONDS: i64 = 5 * 60;

pub struct OperatorCredentials {
    pub api_key: String,
    pub postback_token: String,
    pub webhook_secret: String,
}

impl OperatorCredentials {
    pub fn generate() -> Self {
        Self {
            api_key: format!("chk_{}", random_text()),
            postback_token: random_text(),
            webhook_secret: format!("whsec_{}", STANDARD.encode(random_bytes())),
        }
    }
}

fn random_bytes() -> [u8; 32] {
    let mut bytes = [0u8; 32];
    rand::fill(&mut bytes);
    bytes
}

/// 256 random bits as URL-safe text.
pub fn random_text() -> String {
    URL_SAFE_NO_PAD.encode(random_bytes())
}

pub fn sha256_hex(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Whether `presented` is the secret whose sha256 is `stored_sha256`, in constant time.
pub fn matches(presented: &str, stored_sha256: &str) -> bool {
    sha256_hex(presented).as_bytes().ct_eq(stored_sha256.as_bytes()).into()
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    #[error("missing header {0}")]
    MissingHeader(&'static str),
    #[error("webhook-timestamp is not a unix time in seconds")]
    BadTimestamp,
    #[error("webhook-timestamp is {0} seconds away from now; the tolerance is {WEBHOOK_TOLERANCE_SECONDS}")]
    OutsideTolerance(i64),
    #[error("no v1 signature in webhook-signature matches the body")]
    Mismatch,
    #[error("the operator's webhook secret is not in whsec_ format")]
    BadSecret,
}

/// What of a Standard Webhooks signature can be checked before the body is read, and without the
/// secret: the three headers are there and the timestamp is within the tolerance. Returns the
/// headers' values.
pub fn check_webhook_headers<'a>(
    id: Option<&'a str>,
    timestamp: Option<&'a str>,
    signatures: Option<&'a str>,
    now_seconds: i64,
) -> Result<(&'a str, &'a str, &'a str), SignatureError> {
    let id = id.ok_or(SignatureError::MissingHeader("webhook-id"))?;
    let timestamp = timestamp.ok_or(SignatureError::MissingHeader("webhook-timestamp"))?;
    let signatures = signatures.ok_or(SignatureError::MissingHeader("webhook-signature"))?;
    // Digits only: `str::parse` would also take a sign (`+1796066614`), which no sender writes.
    if timestamp.is_empty() || !timestamp.bytes().all(|b| b.is_ascii_digit()) {
        return Err(SignatureError::BadTimestamp);
    }
    let seconds: i64 = timestamp.parse().map_err(|_| SignatureError::BadTimestamp)?;
    let skew = now_seconds.saturating_sub(seconds);
    if skew.abs() > WEBHOOK_TOLERANCE_SECONDS {
        return Err(SignatureError::OutsideTolerance(skew));
    }
    Ok((id, timestamp, signatures))
}

/// Verifies a Standard Webhooks signature: HMAC-SHA256 over `{id}.{timestamp}.{body}` with the
/// secret's key, base64, as one of the space-separated `v1,<signature>` entries.
pub fn verify_webhook(
    secret: &str,
    id: Option<&str>,
    timestamp: Option<&str>,
    signatures: Option<&str>,
    body: &[u8],
    now_seconds: i64,
) -> Result<(), SignatureError> {
    let (id, timestamp, signatures) = check_webhook_headers(id, timestamp, signatures, now_seconds)?;
    let key =
        secret.strip_prefix("whsec_").and_then(|key| STANDARD.decode(key).ok()).ok_or(SignatureError::BadSecret)?;
    let signed = |mac: &mut Hmac<Sha256>| {
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.as_bytes());
        mac.update(b".");
        mac.update(body);
    };
    let verified = signatures
        .split(' ')
        .filter_map(|entry| entry.strip_prefix("v1,"))
        .filter_map(|signature| STANDARD.decode(signature).ok())
        .any(|signature| {
            let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("HMAC takes keys of any size");
            signed(&mut mac);
            mac.verify_slice(&signature).is_ok()
        });
    if verified { Ok(()) } else { Err(SignatureError::Mismatch) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example from the Standard Webhooks specification's reference test suite.
    #[test]
    fn verifies_the_reference_example() {
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let body = br#"{"test": 2432232314}"#;
        let signature = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
        let id = Some("msg_p5jXN8AQM9LWM0D4loKWxJek");
        let at = 1614265330;
        assert_eq!(verify_webhook(secret, id, Some("1614265330"), Some(signature), body, at), Ok(()));
        assert_eq!(
            verify_webhook(secret, id, Some("1614265330"), Some(signature), br#"{"test": 2432232315}"#, at),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_webhook(secret, id, Some("1614265330"), Some(signature), body, at + 301),
            Err(SignatureError::OutsideTolerance(301))
        );
    }

    #[test]
    fn stored_hashes_match_only_their_secret() {
        let stored = sha256_hex("chk_abc");
        assert!(matches("chk_abc", &stored));
        assert!(!matches("chk_abd", &stored));
    }
}
