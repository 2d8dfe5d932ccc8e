//! One error type for every HTTP handler, and its JSON shape:
//! `{"error": {"code": "...", "field": "...", "message": "..."}}`.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use tollgate_proto::{FieldError, Rejection, RejectionKind};

use crate::cluster::leader::ClusterError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub field: Option<String>,
    pub message: String,
    /// Seconds for `Retry-After` (a 429 or 503).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, field: None, message: message.into(), retry_after: None }
    }

    pub fn field(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "invalid_field",
            field: Some(field.into()),
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn unauthorized(message: &str) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn forbidden(message: &str) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }
}

impl From<FieldError> for ApiError {
    fn from(e: FieldError) -> Self {
        ApiError::field(e.field, e.message)
    }
}

impl From<Rejection> for ApiError {
    fn from(r: Rejection) -> Self {
        let (status, code) = match r.kind {
            RejectionKind::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            RejectionKind::Conflict => (StatusCode::CONFLICT, "conflict"),
            RejectionKind::Invalid => (StatusCode::BAD_REQUEST, "invalid_field"),
            RejectionKind::IdempotencyKeyReused => (StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused"),
            RejectionKind::Forbidden => (StatusCode::FORBIDDEN, "forbidden"),
        };
        ApiError { status, code, field: r.field, message: r.message, retry_after: None }
    }
}

impl From<ClusterError> for ApiError {
    fn from(e: ClusterError) -> Self {
        match e {
            ClusterError::Refused(m) => ApiError::new(StatusCode::CONFLICT, "refused", m),
            ClusterError::InsufficientStorage(low) => {
                ApiError::new(StatusCode::INSUFFICIENT_STORAGE, "insufficient_storage", low.to_string())
            }
            other => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", other.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(json!({"error": {"code": self.code, "field": self.field, "message": self.message}}));
        if let Some(secs) = self.retry_after {
            return (self.status, [(header::RETRY_AFTER, secs.to_string())], body).into_response();
        }
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            return (self.status, [(header::RETRY_AFTER, "1")], body).into_response();
        }
        if self.status == StatusCode::UNAUTHORIZED {
            // RFC 9110 §11.6.1: a 401 says how to authenticate.
            return (self.status, [(header::WWW_AUTHENTICATE, "Bearer")], body).into_response();
        }
        (self.status, body).into_response()
    }
}
