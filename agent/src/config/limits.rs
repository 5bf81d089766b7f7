//! Resolves a connection's `rate_limit` (a token bucket), `max_wait` (the longest a call
//! waits for the limit before `rate_limited`) and its `test` request.

use std::time::Duration;

use super::file::{RateLimitFile, TestFile};
use super::jwt_auth::duration;

/// The default `max_wait`.
pub const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(5);

/// `requests` per `per`, with up to `burst` at once (default: `requests`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub requests: u32,
    pub per: Duration,
    pub burst: u32,
}

pub(super) fn resolve_rate_limit(file: RateLimitFile) -> Result<RateLimit, String> {
    if file.requests == 0 {
        return Err("rate_limit.requests must be at least 1".into());
    }
    let per = duration("rate_limit.per", &file.per)?;
    let burst = file.burst.unwrap_or(file.requests);
    if burst == 0 {
        return Err("rate_limit.burst must be at least 1".into());
    }
    Ok(RateLimit {
        requests: file.requests,
        per,
        burst,
    })
}

pub(super) fn resolve_max_wait(text: Option<&str>) -> Result<Duration, String> {
    match text {
        None => Ok(DEFAULT_MAX_WAIT),
        // Zero is allowed: refuse at once instead of waiting.
        Some(text) => {
            humantime::parse_duration(text).map_err(|e| format!("max_wait {text:?}: {e}"))
        }
    }
}

/// The request `postern connection test` sends; `expect_status: None` accepts any 2xx.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestRequest {
    pub method: http::Method,
    pub path: String,
    pub expect_status: Option<u16>,
}

impl Default for TestRequest {
    fn default() -> Self {
        Self {
            method: http::Method::GET,
            path: "/".to_owned(),
            expect_status: None,
        }
    }
}

pub(super) fn resolve_test(file: TestFile) -> Result<TestRequest, String> {
    let method = http::Method::from_bytes(file.method.to_ascii_uppercase().as_bytes())
        .map_err(|_| format!("test.method {:?} is not an HTTP method", file.method))?;
    if !file.path.starts_with('/') {
        return Err(format!("test.path {:?} must start with /", file.path));
    }
    if let Some(status) = file.expect_status
        && !(100..=599).contains(&status)
    {
        return Err(format!("test.expect_status {status} is not an HTTP status"));
    }
    Ok(TestRequest {
        method,
        path: file.path,
        expect_status: file.expect_status,
    })
}
