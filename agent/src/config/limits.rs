//! Resolves a connection's `rate_limit` (a token bucket), `max_wait` (the longest a call
//! waits for the limit before `rate_limited`) and its `test` request.

use std::time::Duration;

use super::file::{RateLimitFile, TestFile};
use super::{CallLimits, MAX_HEADER_BYTES_CEILING, noted};

/// The default `max_wait`.
pub const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(5);

// Upper bounds: past them a setting is a typo, and huge durations would overflow the
// `Instant` arithmetic of the timers and the rate limiter.
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(24 * 3600);
pub const MAX_TIMEOUT: Duration = DAY;
pub const MAX_RATE_PER: Duration = DAY;
/// A call waiting longer for its turn has long been given up on by the relay.
pub const MAX_MAX_WAIT: Duration = HOUR;
/// Each call is an SSH channel and an upstream connection.
pub const MAX_CONCURRENT_CALLS: u32 = 65_536;
pub const MAX_BODY: u64 = 1 << 40;

/// A duration more than zero and at most `max`, the key named in the error.
pub(super) fn bounded_duration(key: &str, text: &str, max: Duration) -> Result<Duration, String> {
    let d = humantime::parse_duration(text).map_err(|e| format!("{key} {text:?}: {e}"))?;
    if d.is_zero() || d > max {
        return Err(format!(
            "{key} must be more than zero and at most {} (it is {text:?})",
            humantime::format_duration(max)
        ));
    }
    Ok(d)
}

/// The connection's `timeout`: connect, response headers, each piece of a body.
pub(super) fn resolve_timeout(text: &str) -> Result<Duration, String> {
    bounded_duration("timeout", text, MAX_TIMEOUT)
}

/// A count from 1 to `max`, the key named in the error.
fn bounded_count<T>(key: &str, value: Option<T>, max: T, default: T) -> Result<T, String>
where
    T: PartialOrd + From<u8> + std::fmt::Display,
{
    match value {
        None => Ok(default),
        // A zero limit would refuse every call of the connection.
        Some(value) if value < T::from(1) || value > max => Err(format!(
            "{key} must be at least 1 and at most {max} (it is {value})"
        )),
        Some(value) => Ok(value),
    }
}

/// The connection's [`CallLimits`], each unset one its default.
pub(super) fn resolve_call_limits(
    max_concurrent_calls: Option<u32>,
    max_request_body: Option<u64>,
    max_response_body: Option<u64>,
    max_header_bytes: Option<u32>,
) -> Result<CallLimits, Vec<String>> {
    let defaults = CallLimits::default();
    let mut problems = Vec::new();
    let p = &mut problems;
    let limits = CallLimits {
        max_concurrent_calls: noted(
            p,
            bounded_count(
                "max_concurrent_calls",
                max_concurrent_calls,
                MAX_CONCURRENT_CALLS,
                defaults.max_concurrent_calls,
            ),
        )
        .unwrap_or_default(),
        max_request_body: noted(
            p,
            bounded_count(
                "max_request_body",
                max_request_body,
                MAX_BODY,
                defaults.max_request_body,
            ),
        )
        .unwrap_or_default(),
        max_response_body: noted(
            p,
            bounded_count(
                "max_response_body",
                max_response_body,
                MAX_BODY,
                defaults.max_response_body,
            ),
        )
        .unwrap_or_default(),
        max_header_bytes: max_header_bytes.unwrap_or(defaults.max_header_bytes),
    };
    if !(1024..=MAX_HEADER_BYTES_CEILING).contains(&limits.max_header_bytes) {
        problems.push(format!(
            "max_header_bytes must be between 1024 and {MAX_HEADER_BYTES_CEILING}"
        ));
    }
    if problems.is_empty() {
        Ok(limits)
    } else {
        Err(problems)
    }
}

/// `requests` per `per`, with up to `burst` at once (default: `requests`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub requests: u32,
    pub per: Duration,
    pub burst: u32,
}

pub(super) fn resolve_rate_limit(file: RateLimitFile) -> Result<RateLimit, Vec<String>> {
    let mut problems = Vec::new();
    if file.requests == 0 {
        problems.push("rate_limit.requests must be at least 1".to_owned());
    }
    let per = noted(
        &mut problems,
        bounded_duration("rate_limit.per", &file.per, MAX_RATE_PER),
    );
    let burst = file.burst.unwrap_or(file.requests);
    if burst == 0 && file.burst.is_some() {
        problems.push("rate_limit.burst must be at least 1".to_owned());
    }
    match per {
        Some(per) if problems.is_empty() => Ok(RateLimit {
            requests: file.requests,
            per,
            burst,
        }),
        _ => Err(problems),
    }
}

pub(super) fn resolve_max_wait(text: Option<&str>) -> Result<Duration, String> {
    match text {
        None => Ok(DEFAULT_MAX_WAIT),
        // Zero is allowed: refuse at once instead of waiting.
        Some(text) => {
            let d =
                humantime::parse_duration(text).map_err(|e| format!("max_wait {text:?}: {e}"))?;
            if d > MAX_MAX_WAIT {
                return Err(format!(
                    "max_wait must be at most {} (it is {text:?})",
                    humantime::format_duration(MAX_MAX_WAIT)
                ));
            }
            Ok(d)
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

/// `base_uri` is the connection's (`None` when it did not resolve): the path is checked
/// as `connection test` will map it under it, so a path every test would refuse is
/// refused at load.
pub(super) fn resolve_test(
    file: TestFile,
    base_uri: Option<&url::Url>,
) -> Result<TestRequest, Vec<String>> {
    let mut problems = Vec::new();
    let method = http::Method::from_bytes(file.method.to_ascii_uppercase().as_bytes())
        .map_err(|_| {
            problems.push(format!(
                "test.method {:?} is not an HTTP method",
                file.method
            ))
        })
        .ok();
    // A configured test is refused the methods a call is (the test runs as one).
    if let Some(Err((_, why))) = method.as_ref().map(crate::call::refuse_method) {
        problems.push(format!("test.method: {why}"));
    }
    if !file.path.starts_with('/') {
        problems.push(format!("test.path {:?} must start with /", file.path));
    } else if let Some(base_uri) = base_uri
        && let Err(e) = crate::upstream_url::build(base_uri, &file.path)
    {
        problems.push(format!("test.path {:?}: {e}", file.path));
    }
    if let Some(status) = file.expect_status
        && !(100..=599).contains(&status)
    {
        problems.push(format!("test.expect_status {status} is not an HTTP status"));
    }
    match method {
        Some(method) if problems.is_empty() => Ok(TestRequest {
            method,
            path: file.path,
            expect_status: file.expect_status,
        }),
        _ => Err(problems),
    }
}

#[cfg(test)]
mod tests {
    /// A config whose connection `c` has `connection`'s lines.
    fn load(connection: &str) -> Result<crate::config::AgentConfig, String> {
        use crate::config::tests::{base, parse};
        parse(&base(&format!(
            "[connections.c]\nbase_uri = \"http://127.0.0.1:9000\"\n{connection}"
        )))
    }

    fn refused(connection: &str, message: &str) {
        match load(connection) {
            Ok(_) => panic!("{connection:?} loaded"),
            Err(e) => assert!(e.contains(message), "{connection:?}: {e}"),
        }
    }

    #[test]
    fn limits_that_cannot_work_are_refused_by_name() {
        let zero_or_huge = [
            (
                "timeout = \"0s\"",
                "timeout must be more than zero and at most 1day (it is \"0s\")",
            ),
            (
                "timeout = \"300000000000y\"",
                "timeout must be more than zero and at most 1day",
            ),
            (
                "max_concurrent_calls = 0",
                "max_concurrent_calls must be at least 1 and at most 65536 (it is 0)",
            ),
            (
                "max_concurrent_calls = 4000000000",
                "max_concurrent_calls must be at least 1 and at most 65536",
            ),
            (
                "max_request_body = 0",
                "max_request_body must be at least 1 and at most 1099511627776 (it is 0)",
            ),
            (
                "max_request_body = 9223372036854775807",
                "max_request_body must be at least 1",
            ),
            (
                "max_response_body = 0",
                "max_response_body must be at least 1 and at most 1099511627776 (it is 0)",
            ),
            (
                "max_response_body = 9223372036854775807",
                "max_response_body must be at least 1",
            ),
            (
                "max_header_bytes = 0",
                "max_header_bytes must be between 1024",
            ),
            (
                "max_wait = \"300000000000y\"",
                "max_wait must be at most 1h",
            ),
            (
                "rate_limit = { requests = 0 }",
                "rate_limit.requests must be at least 1",
            ),
            (
                "rate_limit = { requests = 1, burst = 0 }",
                "rate_limit.burst must be at least 1",
            ),
            (
                "rate_limit = { requests = 1, per = \"0s\" }",
                "rate_limit.per must be more than zero and at most 1day",
            ),
            (
                "rate_limit = { requests = 1, per = \"300000000000y\" }",
                "rate_limit.per must be more than zero and at most 1day",
            ),
            (
                "test = { expect_status = 0 }",
                "test.expect_status 0 is not an HTTP status",
            ),
            (
                "test = { path = \"/../secret.txt\" }",
                "test.path \"/../secret.txt\": the path may not hold '.' or '..' segments",
            ),
            (
                "test = { path = \"/a/%2e%2e/b?x=1\" }",
                "test.path \"/a/%2e%2e/b?x=1\": the path may not hold '.' or '..' segments",
            ),
        ];
        for (line, message) in zero_or_huge {
            refused(line, message);
        }
    }

    #[test]
    fn limits_at_their_bounds_load() {
        for line in [
            "timeout = \"1day\"\nmax_wait = \"1h\"",
            "max_wait = \"0s\"",
            "max_concurrent_calls = 1\nmax_request_body = 1\nmax_response_body = 1",
            "max_concurrent_calls = 65536\nmax_request_body = 1099511627776\nmax_response_body = 1099511627776",
            "rate_limit = { requests = 1, per = \"1day\" }",
            "test = { path = \"/health/..x?probe=1\" }",
        ] {
            load(line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
        }
    }
}
