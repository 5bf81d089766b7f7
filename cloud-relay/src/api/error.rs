//! The API's error type: a stable code and a message, sent as
//! `{"error":{"code":"…","message":"…"}}` with the code's HTTP status.

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use postern_protocol::headers::POSTERN_ERROR;
use postern_protocol::{ErrorBody, ErrorCode};

use crate::store::StoreError;

#[derive(Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub fn store(e: StoreError) -> Self {
        match e {
            StoreError::AgentExists(_) => Self::new(ErrorCode::AgentExists, e.to_string()),
            StoreError::AgentNotFound(_) => Self::new(ErrorCode::AgentNotFound, e.to_string()),
            StoreError::BadName(_) => Self::new(ErrorCode::BadRequest, e.to_string()),
            // No dedicated code for a taken key name; 400 with a clear message.
            StoreError::ApiKeyExists(_) => Self::new(ErrorCode::BadRequest, e.to_string()),
            StoreError::ApiKeyNotFound(_) => Self::new(ErrorCode::NotFound, e.to_string()),
            ref other if other.disk_problem().is_some() => {
                let problem = other.disk_problem().unwrap_or_default();
                tracing::error!(error = %other, "the store cannot be changed: {problem}");
                Self::new(
                    ErrorCode::StoreUnavailable,
                    format!(
                        "the relay cannot change its store: {problem}. Nothing was changed; calls through connected agents keep working. Fix the disk, then retry"
                    ),
                )
            }
            other => {
                tracing::error!(error = %other, "store failure");
                Self::new(ErrorCode::Internal, "the relay's store failed; see its log")
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = ErrorBody::new(self.code, self.message).to_json();
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(POSTERN_ERROR, HeaderValue::from_static(self.code.as_str()));
        response
    }
}
