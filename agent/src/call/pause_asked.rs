//! How long an internal server's answer asks the connection to pause: a 429's or 403's
//! `Retry-After`, or the reset of a rate-limit window its headers say is used up.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::RETRY_AFTER;
use http::{HeaderMap, StatusCode};

/// Below this, an `X-RateLimit-Reset` is seconds from now; from it on, a Unix time
/// (GitHub's, Twitter's). No API gives a window of 30 years, and no reset is before 2001.
const EPOCH_FROM: f64 = 1_000_000_000.0;
/// From this on, a Unix time in milliseconds.
const EPOCH_MILLIS_FROM: f64 = 1_000_000_000_000.0;

/// A pause an answer asks for, and the header that named it (for the log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pause {
    pub wait: Duration,
    pub header: &'static str,
}

/// The pause an answer asks for, `None` when it names none (or one already over).
///
/// - 429: `Retry-After`, else the reset of a window whose `…-Remaining` is 0 or not sent
///   (many APIs send only the reset with their 429).
/// - 403: the same, but a window counts only when its `…-Remaining: 0` is sent: GitHub
///   refuses its limits with a 403, and a 403 without these is a refusal of access.
/// - Any other status: only a window whose `…-Remaining: 0` is sent, until its reset, since
///   the next call would be refused. `Retry-After` pauses nothing there: RFC 9110 §10.2.3
///   gives it no rate-limit meaning outside a refusal (a 3xx's, a 503's).
///
/// Most answers carry none of these: for them this costs two header lookups.
pub fn pause_asked(status: StatusCode, headers: &HeaderMap) -> Option<Pause> {
    let value = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let too_many = status == StatusCode::TOO_MANY_REQUESTS;
    let refused = too_many || status == StatusCode::FORBIDDEN;
    // A reset is the wait only for a window that is used up: an API with several (a second's,
    // an hour's) may refuse a burst while the window its headers describe has calls left.
    let used_up = |remaining: &str| value(remaining).map_or(too_many, |v| v.trim() == "0");
    let window = |remaining: &str, name: &str, header: &'static str| {
        used_up(remaining)
            .then(|| value(name))
            .flatten()
            .and_then(|v| reset(v, SystemTime::now()))
            .map(|wait| Pause { wait, header })
    };
    refused
        .then(|| value(RETRY_AFTER.as_str()))
        .flatten()
        .and_then(parse_retry_after)
        .map(|wait| Pause {
            wait,
            header: "Retry-After",
        })
        .or_else(|| window("ratelimit-remaining", "ratelimit-reset", "RateLimit-Reset"))
        .or_else(|| {
            window(
                "x-ratelimit-remaining",
                "x-ratelimit-reset",
                "X-RateLimit-Reset",
            )
        })
        // A pause of nothing holds nothing, and is not worth a warning per answer.
        .filter(|p| !p.wait.is_zero())
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

    fn wait(status: u16, h: &HeaderMap) -> Option<Duration> {
        let status = StatusCode::from_u16(status).expect("status");
        pause_asked(status, h).map(|p| p.wait)
    }

    fn on_429(h: &HeaderMap) -> Option<Duration> {
        wait(429, h)
    }

    fn unix_in(secs: u64) -> String {
        let at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            + Duration::from_secs(secs);
        at.as_secs().to_string()
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
        assert_eq!(on_429(&h), Some(Duration::from_secs(3)));
        let h = headers(&[("retry-after", "soon"), ("ratelimit-reset", "8")]);
        assert_eq!(on_429(&h), Some(Duration::from_secs(8)), "unusable");
        assert_eq!(on_429(&headers(&[("x-ratelimit-remaining", "0")])), None);
    }

    #[test]
    fn a_reset_counts_only_for_a_used_up_window() {
        let h = headers(&[("x-ratelimit-remaining", "0"), ("x-ratelimit-reset", "9")]);
        assert_eq!(on_429(&h), Some(Duration::from_secs(9)));
        let h = headers(&[
            ("x-ratelimit-remaining", "4"),
            ("x-ratelimit-reset", "3000"),
        ]);
        assert_eq!(on_429(&h), None, "another window refused the burst");
        let h = headers(&[("ratelimit-remaining", "12"), ("ratelimit-reset", "60")]);
        assert_eq!(on_429(&h), None);
    }

    #[test]
    fn a_draft_standard_reset_given_as_a_unix_time_is_one() {
        let soon = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            + Duration::from_secs(30);
        let h = headers(&[("ratelimit-reset", &soon.as_secs().to_string())]);
        let d = on_429(&h).expect("a pause");
        assert!(
            d > Duration::from_secs(27) && d <= Duration::from_secs(30),
            "{d:?}"
        );
    }

    #[test]
    fn the_draft_standard_reset_is_seconds_from_now() {
        let h = headers(&[("ratelimit-reset", "12")]);
        assert_eq!(on_429(&h), Some(Duration::from_secs(12)));
        let h = headers(&[("ratelimit-reset", "1.5")]);
        assert_eq!(on_429(&h), Some(Duration::from_millis(1500)));
        for bad in ["-3", "1e3", "inf", "NaN", ".", "1.2.3", ""] {
            assert_eq!(on_429(&headers(&[("ratelimit-reset", bad)])), None, "{bad}");
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

    #[test]
    fn a_403_pauses_only_when_it_says_it_is_a_rate_limit() {
        let soon = unix_in(30);
        // GitHub's primary limit: remaining 0 and the Unix time it resets.
        let h = headers(&[("x-ratelimit-remaining", "0"), ("x-ratelimit-reset", &soon)]);
        let d = wait(403, &h).expect("a pause");
        assert!(
            d > Duration::from_secs(28) && d <= Duration::from_secs(30),
            "{d:?}"
        );
        let h = headers(&[("ratelimit-remaining", "0"), ("ratelimit-reset", "12")]);
        assert_eq!(wait(403, &h), Some(Duration::from_secs(12)));
        // Its secondary limit: a Retry-After, which wins as on a 429.
        let h = headers(&[("retry-after", "60"), ("x-ratelimit-remaining", "0")]);
        assert_eq!(wait(403, &h), Some(Duration::from_secs(60)));
        // A refusal of access, with or without its window's headers.
        assert_eq!(wait(403, &headers(&[])), None);
        let h = headers(&[("x-ratelimit-reset", &soon)]);
        assert_eq!(wait(403, &h), None, "no remaining: not said to be used up");
        let h = headers(&[
            ("x-ratelimit-remaining", "59"),
            ("x-ratelimit-reset", &soon),
        ]);
        assert_eq!(wait(403, &h), None);
    }

    #[test]
    fn any_other_answer_pauses_for_a_window_it_says_is_used_up() {
        let h = headers(&[("x-ratelimit-remaining", "0"), ("x-ratelimit-reset", "5")]);
        for status in [200, 201, 204, 304, 404, 500] {
            assert_eq!(wait(status, &h), Some(Duration::from_secs(5)), "{status}");
        }
        let h = headers(&[("ratelimit-remaining", " 0 "), ("ratelimit-reset", "2")]);
        assert_eq!(wait(200, &h), Some(Duration::from_secs(2)));
        let h = headers(&[("x-ratelimit-remaining", "5"), ("x-ratelimit-reset", "5")]);
        assert_eq!(wait(200, &h), None, "calls left");
        assert_eq!(
            wait(200, &headers(&[("x-ratelimit-reset", "5")])),
            None,
            "no remaining"
        );
        assert_eq!(
            wait(200, &headers(&[("x-ratelimit-remaining", "0")])),
            None,
            "no reset"
        );
    }

    #[test]
    fn retry_after_pauses_only_a_429_or_a_403() {
        let h = headers(&[("retry-after", "30")]);
        assert_eq!(wait(429, &h), Some(Duration::from_secs(30)));
        assert_eq!(wait(403, &h), Some(Duration::from_secs(30)));
        for status in [200, 301, 503] {
            assert_eq!(wait(status, &h), None, "{status}");
        }
    }

    #[test]
    fn a_pause_already_over_is_none() {
        let h = headers(&[
            ("x-ratelimit-remaining", "0"),
            ("x-ratelimit-reset", "1500000000"),
        ]);
        assert_eq!(wait(200, &h), None);
        assert_eq!(on_429(&h), None);
        assert_eq!(on_429(&headers(&[("retry-after", "0")])), None);
    }

    #[test]
    fn the_pause_names_its_header() {
        let header = |status, h: &HeaderMap| {
            pause_asked(StatusCode::from_u16(status).expect("status"), h).map(|p| p.header)
        };
        let h = headers(&[("retry-after", "3"), ("ratelimit-reset", "4")]);
        assert_eq!(header(429, &h), Some("Retry-After"));
        let h = headers(&[("ratelimit-remaining", "0"), ("ratelimit-reset", "4")]);
        assert_eq!(header(200, &h), Some("RateLimit-Reset"));
        let h = headers(&[("x-ratelimit-remaining", "0"), ("x-ratelimit-reset", "4")]);
        assert_eq!(header(403, &h), Some("X-RateLimit-Reset"));
    }
}
