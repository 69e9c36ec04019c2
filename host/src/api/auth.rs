//! Who is calling: the platform admin, or an operator (by its API key) acting on its own data.
//! One operator's key on another operator's routes is refused like a wrong key.

use axum::http::HeaderMap;

use super::{ApiError, AppState};
use crate::event::now_ms;
use crate::secrets;
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
