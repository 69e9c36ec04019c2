//! Every refusal is JSON that says what was wrong and, where it can, with which field:
//! `{"error": "invalid_event", "message": "...", "details": [{"index": 0, "field": "amount", "problem": "..."}]}`.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::event::FieldError;
use crate::store::{QuotaExceeded, StoreError};

/// What a refusal for a full queue asks the sender to wait: a queue drains in well under that.
const QUEUE_FULL_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    details: Vec<FieldError>,
    retry_after: Option<std::time::Duration>,
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
        Self { status, code, message: message.into(), details: Vec::new(), retry_after: None }
    }

    /// 429 with a `Retry-After` header (whole seconds, rounded up).
    pub fn rate_limited(message: impl Into<String>, retry_after: std::time::Duration) -> Self {
        Self { retry_after: Some(retry_after), ..Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message) }
    }

    /// 422 naming each bad field.
    pub fn fields(code: &'static str, details: Vec<FieldError>) -> Self {
        let message = match details.as_slice() {
            [one] if one.field.is_empty() => one.problem.clone(),
            [one] => format!("{}: {}", one.field, one.problem),
            many => format!("{} problems; see details", many.len()),
        };
        Self { status: StatusCode::UNPROCESSABLE_ENTITY, code, message, details, retry_after: None }
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

    /// 403 `quota_exceeded`: the operator's stored bytes are at its quota. Not a 5xx (the host
    /// is fine, and retrying will not help) nor a 429 (waiting will not help either): only the
    /// admin raising the quota will. `event` names the first event not written, when the ones
    /// before it in the request were.
    pub fn quota_exceeded(operator: &str, event: Option<&str>, refused: QuotaExceeded) -> Self {
        let QuotaExceeded { used, needed, quota } = refused;
        let needs = if needed > 0 { format!("; this write needs {needed} more") } else { String::new() };
        let written = match event {
            None => "Nothing of this request was written".to_owned(),
            Some(event) => format!(
                "Event {event:?} and the ones after it in this request were not written (any before it were: sent \
                 again, they are answered duplicate)"
            ),
        };
        let problem = format!(
            "operator {operator:?} keeps {used} bytes in the ledger and its quota is {quota} bytes{needs}. {written}. \
             The platform admin raises the quota with PUT /v1/operators/{operator}/limits {{\"stored_bytes\": N}}"
        );
        Self {
            details: vec![FieldError::new("stored_bytes", problem.clone())],
            ..Self::new(StatusCode::FORBIDDEN, "quota_exceeded", problem)
        }
    }

    /// 503 `queue_full`, with `Retry-After`: the operator's sequencer has more waiting than its
    /// queue holds. Only this operator's requests are refused, and waiting helps.
    pub fn queue_full(operator: &str, queued: usize, capacity: usize) -> Self {
        let problem = format!(
            "operator {operator:?} has {queued} events waiting to be evaluated, and its queue holds {capacity}; \
             nothing of this request was written: send it again after the Retry-After seconds"
        );
        Self {
            retry_after: Some(QUEUE_FULL_RETRY_AFTER),
            details: vec![FieldError::new("operator", problem.clone())],
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, "queue_full", problem)
        }
    }

    /// The same answer, with a `Retry-After` header.
    pub fn with_retry_after(self, after: std::time::Duration) -> Self {
        Self { retry_after: Some(after), ..self }
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
        let mut response = (self.status, Json(body)).into_response();
        if let Some(retry_after) = self.retry_after {
            let seconds = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
            response.headers_mut().insert(axum::http::header::RETRY_AFTER, seconds.max(1).into());
        }
        response
    }
}

impl ApiError {
    /// The sentence the answer carries: for a refusal met inside a longer job (an import).
    pub fn message(&self) -> &str {
        &self.message
    }
}
