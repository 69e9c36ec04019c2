//! Who is calling: the platform admin, or an operator (by its API key) acting on its own data,
//! or one of the operator's affiliates by a read-only key the operator issued it (an affiliate
//! portal), which opens that affiliate's own commissions, statements and payout lines
//! ([`reader`]) and is refused with 403 everywhere else ([`operator`]).
//! One operator's key on another operator's routes is refused like a wrong key, and an unknown
//! operator like a known one with a wrong key: the answers do not tell which operators exist.
//! A peer that presents too many wrong credentials is refused for a while (see
//! [`super::rate_limit::FailedCredentials`]).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{ApiError, AppState};
use crate::event::now_ms;
use crate::secrets;
use crate::server::peer_key;
use crate::store::records::{CredentialKind, OperatorRecord};

pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers.get(axum::http::header::AUTHORIZATION)?.to_str().ok()?.strip_prefix("Bearer ").map(str::trim)
}

/// Whether `presented` is a valid key or token of the operator (current, or rotated out and
/// still in its grace period), compared in constant time.
pub fn holds(operator: &OperatorRecord, kind: CredentialKind, presented: &str) -> bool {
    operator.valid_credentials(kind, now_ms()).any(|sha256| secrets::matches(presented, sha256))
}

pub fn is_admin(state: &AppState, headers: &HeaderMap) -> bool {
    bearer(headers).is_some_and(|token| secrets::matches(token, &state.admin_token_sha256))
}

pub fn require_admin(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    match bearer(headers) {
        None => Err(ApiError::unauthorized("missing `Authorization: Bearer <admin token>`")),
        Some(_) if is_admin(state, headers) => Ok(()),
        Some(_) => Err(ApiError::unauthorized("the bearer token is not the admin token")),
    }
}

/// The operator, if the caller is the admin or holds the operator's API key. An affiliate key
/// of the operator is refused with 403: it is a credential, but not for this route.
pub fn operator(state: &AppState, headers: &HeaderMap, id: &str) -> Result<OperatorRecord, ApiError> {
    match reader(state, headers, id)? {
        (operator, Reader::Operator) => Ok(operator),
        (_, Reader::Affiliate(affiliate)) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "the bearer token is a read-only key of affiliate {affiliate:?}: it opens only that affiliate's \
                 commissions, period statements and payout report; this route needs the operator's API key"
            ),
        )),
    }
}

/// Who may read an operator's affiliate data: the operator (or the admin), or one affiliate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reader {
    Operator,
    /// By a key the operator issued this affiliate: its own data only.
    Affiliate(String),
}

impl Reader {
    /// The affiliate a read is limited to, given the one `asked` for (a filter): for an
    /// affiliate key, its own, and asking for another is refused (403 naming `affiliate`).
    pub fn scope(&self, asked: Option<String>) -> Result<Option<String>, ApiError> {
        match self {
            Reader::Operator => Ok(asked),
            Reader::Affiliate(own) if asked.as_ref().is_none_or(|asked| asked == own) => Ok(Some(own.clone())),
            Reader::Affiliate(own) => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("affiliate: this key is affiliate {own:?}'s and opens only its own data"),
            )),
        }
    }

    /// Whether a line paid to `affiliate` is the reader's to see.
    pub fn sees(&self, affiliate: &str) -> bool {
        match self {
            Reader::Operator => true,
            Reader::Affiliate(own) => own == affiliate,
        }
    }
}

/// The operator and who reads it: the admin or a holder of the operator's API key, or a holder
/// of a key the operator issued one of its affiliates.
pub fn reader(state: &AppState, headers: &HeaderMap, id: &str) -> Result<(OperatorRecord, Reader), ApiError> {
    let Some(token) = bearer(headers) else {
        return Err(ApiError::unauthorized("missing `Authorization: Bearer <operator API key>`"));
    };
    let operator = state.pipeline.store().operator(id)?;
    let admin = is_admin(state, headers);
    let wrong = || ApiError::unauthorized(format!("the bearer token is not an API key of operator {id:?}"));
    match operator {
        Some(operator) if admin || holds(&operator, CredentialKind::ApiKey, token) => Ok((operator, Reader::Operator)),
        None if admin => Err(ApiError::not_found(format!("no operator {id:?}"))),
        Some(operator) => match affiliate_of(state, &operator, token)? {
            Some(affiliate) => Ok((operator, Reader::Affiliate(affiliate))),
            None => Err(wrong()),
        },
        None => Err(wrong()),
    }
}

/// What an affiliate key looks like: this prefix, its public id, `_`, and 256 random bits.
pub const AFFILIATE_KEY_PREFIX: &str = "chka_";

/// The affiliate whose key `token` is, if it is a key of `operator` not revoked: found by its
/// public id, then compared by sha256 in constant time.
fn affiliate_of(state: &AppState, operator: &OperatorRecord, token: &str) -> Result<Option<String>, ApiError> {
    let Some((id, _)) = token.strip_prefix(AFFILIATE_KEY_PREFIX).and_then(|rest| rest.split_once('_')) else {
        return Ok(None);
    };
    let record = state.pipeline.store().affiliate_key(&operator.id, id)?;
    Ok(record
        .filter(|record| record.revoked_at.is_none() && secrets::matches(token, &record.sha256))
        .map(|record| record.affiliate))
}

/// Middleware on every credentialed route: a peer over its allowance of failed credentials gets
/// 429 before its credential is looked at; each 401 counts against the peer's allowance.
/// Requests without a peer address (none reach the server so) are not counted.
pub async fn throttle_failures(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let peer = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|ConnectInfo(peer)| peer_key(peer.ip()));
    let Some(peer) = peer else { return next.run(request).await };
    if let Some(wait) = state.failed_credentials.refused(peer) {
        return ApiError::rate_limited(
            "too many failed credentials from this address; nothing was checked. Retry after the Retry-After seconds",
            wait,
        )
        .into_response();
    }
    let response = next.run(request).await;
    if response.status() == StatusCode::UNAUTHORIZED {
        state.failed_credentials.failed(peer);
    }
    response
}
