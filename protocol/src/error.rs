//! Stable error codes for every refusal a caller can see, and the JSON body
//! `{"error":{"code":"…","message":"…"}}` they travel in.

use serde::{Deserialize, Serialize};

/// A failure a caller can act on. The string form is the API contract:
/// never rename one, only add.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// No or wrong API key.
    Unauthorized,
    /// The API key may not do this.
    Forbidden,
    /// No such route.
    NotFound,
    /// The route exists but not with this method.
    MethodNotAllowed,
    /// No agent with this id or name (or it was revoked).
    AgentNotFound,
    /// An agent with this name exists already.
    AgentExists,
    /// An API key with this name exists already.
    ApiKeyExists,
    /// The agent exists but holds no live session.
    AgentOffline,
    /// The agent does not serve a connection by this name.
    UnknownConnection,
    /// The request path would leave the connection's `base_uri`, or is malformed.
    PathRejected,
    /// The request itself is malformed (bad JSON, bad name…).
    BadRequest,
    /// The agent could not reach the internal server.
    UpstreamUnreachable,
    /// The internal server did not answer within the connection's timeout.
    UpstreamTimeout,
    /// The agent could not sign the JWT for this call.
    SigningFailed,
    /// The tunnel broke while the call was under way.
    TunnelError,
    /// The RFC 7523 token exchange failed; the message carries the provider's error.
    TokenExchangeFailed,
    /// The connection's rate limit was hit and the call could not wait long enough.
    RateLimited,
    /// A request or response body, or the headers, exceeded a configured limit.
    PayloadTooLarge,
    /// Too many calls under way for this agent or connection.
    TooManyCalls,
    /// The relay cannot change its store (disk full, read-only, I/O error); nothing was changed.
    StoreUnavailable,
    /// The request body did not arrive in time (the relay's `api_timeout`).
    RequestTimeout,
    /// Anything else; the message says what.
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::AgentNotFound => "agent_not_found",
            Self::AgentExists => "agent_exists",
            Self::ApiKeyExists => "api_key_exists",
            Self::AgentOffline => "agent_offline",
            Self::UnknownConnection => "unknown_connection",
            Self::PathRejected => "path_rejected",
            Self::BadRequest => "bad_request",
            Self::UpstreamUnreachable => "upstream_unreachable",
            Self::UpstreamTimeout => "upstream_timeout",
            Self::SigningFailed => "signing_failed",
            Self::TunnelError => "tunnel_error",
            Self::TokenExchangeFailed => "token_exchange_failed",
            Self::RateLimited => "rate_limited",
            Self::PayloadTooLarge => "payload_too_large",
            Self::TooManyCalls => "too_many_calls",
            Self::StoreUnavailable => "store_unavailable",
            Self::RequestTimeout => "request_timeout",
            Self::Internal => "internal",
        }
    }

    /// The HTTP status this code is sent with.
    pub fn http_status(self) -> u16 {
        match self {
            Self::Unauthorized => 401,
            Self::Forbidden => 403,
            Self::NotFound | Self::AgentNotFound | Self::UnknownConnection => 404,
            Self::MethodNotAllowed => 405,
            Self::AgentExists | Self::ApiKeyExists => 409,
            Self::BadRequest | Self::PathRejected => 400,
            Self::AgentOffline | Self::StoreUnavailable => 503,
            Self::UpstreamUnreachable | Self::TunnelError | Self::TokenExchangeFailed => 502,
            Self::RateLimited | Self::TooManyCalls => 429,
            Self::RequestTimeout => 408,
            Self::PayloadTooLarge => 413,
            Self::UpstreamTimeout => 504,
            Self::SigningFailed | Self::Internal => 500,
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The JSON body of every error response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub code: ErrorCode,
    pub message: String,
}

impl ErrorBody {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            error: ErrorDetail {
                code,
                message: message.into(),
            },
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serialises_as_documented() {
        let body = ErrorBody::new(ErrorCode::AgentOffline, "agent x is offline");
        let json: serde_json::Value = serde_json::from_slice(&body.to_json()).expect("json");
        assert_eq!(json["error"]["code"], "agent_offline");
        assert_eq!(json["error"]["message"], "agent x is offline");
    }

    #[test]
    fn as_str_matches_serde() {
        for code in [
            ErrorCode::Unauthorized,
            ErrorCode::UnknownConnection,
            ErrorCode::UpstreamTimeout,
            ErrorCode::PathRejected,
            ErrorCode::ApiKeyExists,
            ErrorCode::MethodNotAllowed,
        ] {
            let json = serde_json::to_string(&code).expect("json");
            assert_eq!(json.trim_matches('"'), code.as_str());
        }
    }
}
