//! How long an internal server's 429 asks the connection to pause: its `Retry-After`, or,
//! without one, when its used-up rate-limit window resets (`RateLimit-Reset`, `X-RateLimit-Reset`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderMap;
use http::header::RETRY_AFTER;

/// Below this, an `X-RateLimit-Reset` is seconds from now; from it on, a Unix time
/// (GitHub's, Twitter's). No API gives a window of 30 years, and no reset is before 2001.
const EPOCH_FROM: f64 = 1_000_000_000.0;
/// From this on, a Unix time in milliseconds.
const EPOCH_MILLIS_FROM: f64 = 1_000_000_000_000.0;

/// The pause a 429's headers ask for, `None` when they name none. `Retry-After` wins; an
/// API that sends only its rate-limit reset (many do) is paused until then too, where the
/// next calls would otherwise be sent straight into its limit.
pub fn pause_asked(headers: &HeaderMap) -> Option<Duration> {
    let value = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    // A reset is the wait only for a window that is used up: an API with several (a second's,
    // an hour's) may refuse a burst while the window its headers describe has calls left.
    let used_up = |remaining: &str| value(remaining).is_none_or(|v| v.trim() == "0");
    value(RETRY_AFTER.as_str())
        .and_then(parse_retry_after)
        .or_else(|| {
            value("ratelimit-reset")
                .filter(|_| used_up("ratelimit-remaining"))
                .and_then(|v| reset(v, SystemTime::now()))
        })
        .or_else(|| {
            value("x-ratelimit-reset")
                .filter(|_| used_up("x-ratelimit-remaining"))
                .and_then(|v| reset(v, SystemTime::now()))
        })
}

/// `Retry-After` as seconds or an HTTP date (RFC 9110 §10.2.3).
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // More seconds than a u64 holds is still "a long while": the longest pause.
        let secs = value.parse::<u64>().unwrap_or(u64::MAX);
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(SystemTime::now()).unwrap_or_default())
}

/// A non-negative number of seconds, whole or not (`RateLimit-Reset: 30`).
fn seconds(value: &str) -> Option<Duration> {
    // More than a Duration holds is still "a long while": the pause is capped anyway.
    Duration::try_from_secs_f64(number(value)?.min(1e12)).ok()
}

/// A reset, which APIs write as seconds from now (the IETF draft's `RateLimit-Reset`) or
/// as a Unix time in seconds or milliseconds, whole or not (GitHub's `X-RateLimit-Reset`,
/// and some `RateLimit-Reset`s too): told apart by size.
fn reset(value: &str, now: SystemTime) -> Option<Duration> {
    let n = number(value)?;
    let at = if n >= EPOCH_MILLIS_FROM {
        UNIX_EPOCH + Duration::try_from_secs_f64(n / 1000.0).ok()?
    } else if n >= EPOCH_FROM {
        UNIX_EPOCH + Duration::try_from_secs_f64(n).ok()?
    } else {
        return seconds(value);
    };
    Some(at.duration_since(now).unwrap_or_default())
}

/// Digits with at most one `.`: no sign, exponent, `inf` or `NaN`, which `f64` would take.
fn number(value: &str) -> Option<f64> {
    let value = value.trim();
    let plain = !value.is_empty()
        && value.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && value.bytes().filter(|&b| b == b'.').count() <= 1
        && value != ".";
    if !plain {
        return None;
    }
    value.parse::<f64>().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.insert(*name, value.parse().expect("header value"));
        }
        h
    }

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after(" 0 "), Some(Duration::ZERO));
        let soon = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(30));
        let d = parse_retry_after(&soon).expect("http date");
        assert!(
            d > Duration::from_secs(27) && d <= Duration::from_secs(30),
            "{d:?}"
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
        assert_eq!(
            parse_retry_after("99999999999999999999"),
            Some(Duration::from_secs(u64::MAX))
        );
    }

    #[test]
    fn retry_after_wins_over_a_reset() {
        let h = headers(&[("retry-after", "3"), ("x-ratelimit-reset", "50")]);
        assert_eq!(pause_asked(&h), Some(Duration::from_secs(3)));
        let h = headers(&[("retry-after", "soon"), ("ratelimit-reset", "8")]);
        assert_eq!(pause_asked(&h), Some(Duration::from_secs(8)), "unusable");
        assert_eq!(
            pause_asked(&headers(&[("x-ratelimit-remaining", "0")])),
            None
        );
    }

    #[test]
    fn a_reset_counts_only_for_a_used_up_window() {
        let h = headers(&[("x-ratelimit-remaining", "0"), ("x-ratelimit-reset", "9")]);
        assert_eq!(pause_asked(&h), Some(Duration::from_secs(9)));
        let h = headers(&[
            ("x-ratelimit-remaining", "4"),
            ("x-ratelimit-reset", "3000"),
        ]);
        assert_eq!(pause_asked(&h), None, "another window refused the burst");
        let h = headers(&[("ratelimit-remaining", "12"), ("ratelimit-reset", "60")]);
        assert_eq!(pause_asked(&h), None);
    }

    #[test]
    fn a_draft_standard_reset_given_as_a_unix_time_is_one() {
        let soon = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            + Duration::from_secs(30);
        let h = headers(&[("ratelimit-reset", &soon.as_secs().to_string())]);
        let d = pause_asked(&h).expect("a pause");
        assert!(
            d > Duration::from_secs(27) && d <= Duration::from_secs(30),
            "{d:?}"
        );
    }

    #[test]
    fn the_draft_standard_reset_is_seconds_from_now() {
        let h = headers(&[("ratelimit-reset", "12")]);
        assert_eq!(pause_asked(&h), Some(Duration::from_secs(12)));
        let h = headers(&[("ratelimit-reset", "1.5")]);
        assert_eq!(pause_asked(&h), Some(Duration::from_millis(1500)));
        for bad in ["-3", "1e3", "inf", "NaN", ".", "1.2.3", ""] {
            assert_eq!(
                pause_asked(&headers(&[("ratelimit-reset", bad)])),
                None,
                "{bad}"
            );
        }
    }

    #[test]
    fn an_x_reset_is_told_apart_by_size() {
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        assert_eq!(reset("20", now), Some(Duration::from_secs(20)), "seconds");
        assert_eq!(
            reset("1800000045", now),
            Some(Duration::from_secs(45)),
            "a Unix time"
        );
        assert_eq!(
            reset("1800000002.5", now),
            Some(Duration::from_millis(2500)),
            "a Unix time, not whole"
        );
        assert_eq!(
            reset("1800000010000", now),
            Some(Duration::from_secs(10)),
            "a Unix time in milliseconds"
        );
        assert_eq!(reset("1799999990", now), Some(Duration::ZERO), "passed");
        assert_eq!(reset("soon", now), None);
    }
}
