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
    /// No API key with this name (or it was revoked already).
    ApiKeyNotFound,
    /// The agent exists but holds no live session, or takes no new calls now, or its
    /// tunnel closed before the call's request went to it: nothing was sent.
    AgentOffline,
    /// The agent does not serve a connection by this name.
    UnknownConnection,
    /// The request path would leave the connection's `base_uri`, or is malformed.
    PathRejected,
    /// The request itself is malformed (bad JSON, bad name…).
    BadRequest,
    /// The agent could not reach the internal server: the request was not sent, so
    /// sending it again cannot run it twice.
    UpstreamUnreachable,
    /// The internal server did not answer within the connection's timeout.
    UpstreamTimeout,
    /// The request was sent to the internal server, which may have acted on it, but no
    /// usable answer came back: the connection closed first, or the answer is not HTTP.
    UpstreamBadAnswer,
    /// The internal server answered, but its answer's body or headers are larger than the
    /// connection's `max_response_body` or `max_header_bytes` (or than the agent reads).
    AnswerTooLarge,
    /// The agent could not sign the JWT for this call.
    SigningFailed,
    /// The tunnel broke while the call was under way, after its request went to the
    /// agent: the internal server may have acted on it.
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
    /// Every code, for lists that must name them all (the OpenAPI document's enum).
    pub const ALL: [ErrorCode; 25] = [
        Self::Unauthorized,
        Self::Forbidden,
        Self::NotFound,
        Self::MethodNotAllowed,
        Self::AgentNotFound,
        Self::AgentExists,
        Self::ApiKeyExists,
        Self::ApiKeyNotFound,
        Self::AgentOffline,
        Self::UnknownConnection,
        Self::PathRejected,
        Self::BadRequest,
        Self::UpstreamUnreachable,
        Self::UpstreamTimeout,
        Self::UpstreamBadAnswer,
        Self::AnswerTooLarge,
        Self::SigningFailed,
        Self::TunnelError,
        Self::TokenExchangeFailed,
        Self::RateLimited,
        Self::PayloadTooLarge,
        Self::TooManyCalls,
        Self::StoreUnavailable,
        Self::RequestTimeout,
        Self::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::AgentNotFound => "agent_not_found",
            Self::AgentExists => "agent_exists",
            Self::ApiKeyExists => "api_key_exists",
            Self::ApiKeyNotFound => "api_key_not_found",
            Self::AgentOffline => "agent_offline",
            Self::UnknownConnection => "unknown_connection",
            Self::PathRejected => "path_rejected",
            Self::BadRequest => "bad_request",
            Self::UpstreamUnreachable => "upstream_unreachable",
            Self::UpstreamTimeout => "upstream_timeout",
            Self::UpstreamBadAnswer => "upstream_bad_answer",
            Self::AnswerTooLarge => "answer_too_large",
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
            Self::NotFound
            | Self::AgentNotFound
            | Self::ApiKeyNotFound
            | Self::UnknownConnection => 404,
            Self::MethodNotAllowed => 405,
            Self::AgentExists | Self::ApiKeyExists => 409,
            Self::BadRequest | Self::PathRejected => 400,
            Self::AgentOffline | Self::StoreUnavailable => 503,
            Self::UpstreamUnreachable
            | Self::UpstreamBadAnswer
            | Self::AnswerTooLarge
            | Self::TunnelError
            | Self::TokenExchangeFailed => 502,
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
        for code in ErrorCode::ALL {
            let json = serde_json::to_string(&code).expect("json");
            assert_eq!(json.trim_matches('"'), code.as_str());
        }
    }

    /// A new variant fails to compile here until it is given a place in `ALL`.
    #[test]
    fn all_lists_every_code_once() {
        let position = |code: ErrorCode| match code {
            ErrorCode::Unauthorized => 0,
            ErrorCode::Forbidden => 1,
            ErrorCode::NotFound => 2,
            ErrorCode::MethodNotAllowed => 3,
            ErrorCode::AgentNotFound => 4,
            ErrorCode::AgentExists => 5,
            ErrorCode::ApiKeyExists => 6,
            ErrorCode::ApiKeyNotFound => 7,
            ErrorCode::AgentOffline => 8,
            ErrorCode::UnknownConnection => 9,
            ErrorCode::PathRejected => 10,
            ErrorCode::BadRequest => 11,
            ErrorCode::UpstreamUnreachable => 12,
            ErrorCode::UpstreamTimeout => 13,
            ErrorCode::UpstreamBadAnswer => 14,
            ErrorCode::AnswerTooLarge => 15,
            ErrorCode::SigningFailed => 16,
            ErrorCode::TunnelError => 17,
            ErrorCode::TokenExchangeFailed => 18,
            ErrorCode::RateLimited => 19,
            ErrorCode::PayloadTooLarge => 20,
            ErrorCode::TooManyCalls => 21,
            ErrorCode::StoreUnavailable => 22,
            ErrorCode::RequestTimeout => 23,
            ErrorCode::Internal => 24,
        };
        for (i, code) in ErrorCode::ALL.into_iter().enumerate() {
            assert_eq!(position(code), i, "{code}");
        }
    }

    #[test]
    fn the_agent_s_answer_failures_are_502() {
        for code in [ErrorCode::UpstreamBadAnswer, ErrorCode::AnswerTooLarge] {
            assert_eq!(code.http_status(), 502, "{code}");
        }
        assert_eq!(ErrorCode::UpstreamBadAnswer.as_str(), "upstream_bad_answer");
        assert_eq!(ErrorCode::AnswerTooLarge.as_str(), "answer_too_large");
    }
}
