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
    /// A 401 for a key that was sent but is not taken: its challenge says so.
    invalid_token: bool,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            invalid_token: false,
        }
    }

    /// 401 for an API key that was sent but is malformed, unknown or revoked.
    pub fn invalid_token(message: impl Into<String>) -> Self {
        Self {
            invalid_token: true,
            ..Self::new(ErrorCode::Unauthorized, message)
        }
    }

    pub fn store(e: StoreError) -> Self {
        match e {
            StoreError::AgentExists(_) => Self::new(ErrorCode::AgentExists, e.to_string()),
            StoreError::AgentNotFound(_) => Self::new(ErrorCode::AgentNotFound, e.to_string()),
            StoreError::BadName(_) | StoreError::ReservedName(_) => {
                Self::new(ErrorCode::BadRequest, e.to_string())
            }
            StoreError::ApiKeyExists(_) => Self::new(ErrorCode::ApiKeyExists, e.to_string()),
            StoreError::ApiKeyNotFound(_) => Self::new(ErrorCode::ApiKeyNotFound, e.to_string()),
            ref other if other.is_busy() => {
                tracing::warn!(error = %other, "the store stayed locked by another process");
                Self::new(
                    ErrorCode::StoreUnavailable,
                    format!(
                        "the relay's store is busy: another process (the postern-relay CLI, a backup) held its lock for longer than {:?}. Nothing was changed; retry",
                        crate::store::sqlite::BUSY_TIMEOUT
                    ),
                )
            }
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

/// A JSON request body the API could not take: 413 `payload_too_large` past the body
/// limit, 400 `bad_request` for anything else (no JSON content type, bad JSON).
pub fn json_rejection(e: axum::extract::rejection::JsonRejection) -> ApiError {
    body_refused(e.status(), e.body_text())
}

/// As [`json_rejection`], for a body that could not be read at all.
pub fn body_refused(status: StatusCode, text: String) -> ApiError {
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        // axum's text names no limit.
        return ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!(
                "the request body is larger than the {} MiB the management API takes",
                super::MANAGEMENT_BODY_LIMIT >> 20
            ),
        );
    }
    ApiError::new(code_for(status), text)
}

/// The contract's code for a refusal the API (or axum) made with `status` alone.
fn code_for(status: StatusCode) -> ErrorCode {
    match status.as_u16() {
        401 => ErrorCode::Unauthorized,
        403 => ErrorCode::Forbidden,
        404 => ErrorCode::NotFound,
        405 => ErrorCode::MethodNotAllowed,
        413 | 431 => ErrorCode::PayloadTooLarge,
        500.. => ErrorCode::Internal,
        _ => ErrorCode::BadRequest,
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
        if self.code == ErrorCode::Unauthorized {
            // A 401 says how to authenticate (RFC 9110 §11.6.1); `error` only for a key
            // that was sent (RFC 6750 §3.1).
            let challenge = if self.invalid_token {
                r#"Bearer realm="postern", error="invalid_token""#
            } else {
                r#"Bearer realm="postern""#
            };
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
        }
        response
    }
}

/// Marks a response relayed from an agent: its status and body are the internal server's.
#[derive(Debug, Clone, Copy)]
pub struct FromAgent;

/// Gives a refusal the API made itself — axum's own rejections (a path that is not
/// UTF-8, a method a route lacks) included — the contract's JSON error body, keeping
/// its status and headers. Answers relayed from agents and other answers pass untouched.
pub async fn json_error(method: &http::Method, response: Response) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error())
        || response.extensions().get::<FromAgent>().is_some()
        || response.headers().contains_key(POSTERN_ERROR)
    {
        return response;
    }
    let code = code_for(status);
    let (mut parts, body) = response.into_parts();
    // axum's rejection texts are one short line.
    let text = axum::body::to_bytes(body, 4096)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    let message = if status == StatusCode::METHOD_NOT_ALLOWED {
        not_allowed(method, &parts.headers)
    } else if text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("refused")
            .to_lowercase()
    } else {
        text
    };
    let mut fixed = ApiError::new(code, message).into_response();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.remove(header::CONTENT_TYPE);
    for (name, value) in parts.headers.iter() {
        fixed.headers_mut().insert(name.clone(), value.clone());
    }
    *fixed.status_mut() = status;
    fixed
}

/// A 405's message: the method refused and the ones the route takes (its `Allow`).
fn not_allowed(method: &http::Method, headers: &http::HeaderMap) -> String {
    let allowed = headers
        .get(header::ALLOW)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .collect::<Vec<_>>()
        .join(", ");
    if allowed.is_empty() {
        return format!("{method} is not allowed on this route");
    }
    format!("{method} is not allowed on this route; it takes {allowed}")
}
