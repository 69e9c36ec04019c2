//! Every refusal is JSON that says what was wrong and, where it can, with which field:
//! `{"error": "invalid_event", "message": "...", "details": [{"index": 0, "field": "amount", "problem": "..."}]}`.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::event::FieldError;
use crate::store::StoreError;

#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    details: Vec<FieldError>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "<[FieldError]>::is_empty")]
    details: &'a [FieldError],
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), details: Vec::new() }
    }

    /// 422 naming each bad field.
    pub fn fields(code: &'static str, details: Vec<FieldError>) -> Self {
        let message = match details.as_slice() {
            [one] if one.field.is_empty() => one.problem.clone(),
            [one] => format!("{}: {}", one.field, one.problem),
            many => format!("{} problems; see details", many.len()),
        };
        Self { status: StatusCode::UNPROCESSABLE_ENTITY, code, message, details }
    }

    pub fn field(field: &str, problem: impl Into<String>) -> Self {
        Self::fields("invalid_field", vec![FieldError::new(field, problem)])
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn internal(error: impl std::fmt::Display) -> Self {
        tracing::error!(%error, "internal error");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error; see the host's log")
    }

    pub fn unavailable(error: impl std::fmt::Display) -> Self {
        tracing::error!(%error, "storage unavailable");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "storage_unavailable",
            format!("the ledger cannot write right now ({error}); nothing was acknowledged, retry later"),
        )
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Sled(sled::Error::Io(_)) => Self::unavailable(error),
            other => Self::internal(other),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Body { error: self.code, message: &self.message, details: &self.details };
        (self.status, Json(body)).into_response()
    }
}
