//! Who is calling: the platform admin, or an operator (by its API key) acting on its own data.
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

/// The operator, if the caller is the admin or holds the operator's API key.
pub fn operator(state: &AppState, headers: &HeaderMap, id: &str) -> Result<OperatorRecord, ApiError> {
    let Some(token) = bearer(headers) else {
        return Err(ApiError::unauthorized("missing `Authorization: Bearer <operator API key>`"));
    };
    let operator = state.pipeline.store().operator(id)?;
    let admin = is_admin(state, headers);
    match operator {
        Some(operator) if admin || holds(&operator, CredentialKind::ApiKey, token) => Ok(operator),
        None if admin => Err(ApiError::not_found(format!("no operator {id:?}"))),
        _ => Err(ApiError::unauthorized(format!("the bearer token is not an API key of operator {id:?}"))),
    }
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
