//! How long an internal server's refusal (a 429, a rate-limit 403) asks the connection to
//! pause: its `Retry-After`, or the reset of a rate-limit window its headers say is used up.

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

/// The pause a refusal asks for, `None` when it names none (or one already over).
///
/// - 429: `Retry-After`, else the reset of a window whose `…-Remaining` is 0 or not sent
///   (many APIs send only the reset with their 429).
/// - 403: the same, but a window counts only when its `…-Remaining: 0` is sent: GitHub
///   refuses its limits with a 403, and a 403 without these is a refusal of access.
/// - Any other answer pauses nothing, even one that says a window is used up: APIs keep
///   several (GitHub's `search` beside its `core`), and pausing the whole connection for
///   the one a call used up would hold calls the others still take. The next call into it
///   is refused, and that refusal pauses.
///
/// When both header families name a used-up window, the later reset is the wait.
pub fn pause_asked(status: StatusCode, headers: &HeaderMap) -> Option<Pause> {
    let too_many = status == StatusCode::TOO_MANY_REQUESTS;
    if !too_many && status != StatusCode::FORBIDDEN {
        return None;
    }
    let value = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(wait) = value(RETRY_AFTER.as_str()).and_then(parse_retry_after) {
        return (!wait.is_zero()).then_some(Pause {
            wait,
            header: "Retry-After",
        });
    }
    // A reset is the wait only for a window that is used up: an API with several (a second's,
    // an hour's) may refuse a burst while the window its headers describe has calls left.
    let window = |remaining: &str, name: &str, header: &'static str| {
        let used_up = value(remaining).map_or(too_many, none_left);
        used_up
            .then(|| value(name))
            .flatten()
            .and_then(|v| reset(v, SystemTime::now()))
            .filter(|wait| !wait.is_zero())
            .map(|wait| Pause { wait, header })
    };
    [
        window("ratelimit-remaining", "ratelimit-reset", "RateLimit-Reset"),
        window(
            "x-ratelimit-remaining",
            "x-ratelimit-reset",
            "X-RateLimit-Reset",
        ),
    ]
    .into_iter()
    .flatten()
    .max_by_key(|p| p.wait)
}

/// Whether a `…-Remaining` says no call is left: `0`, however written (`00`, `0.0`), or
/// below it (a negative count, which some APIs send once over).
fn none_left(value: &str) -> bool {
    value.trim().parse::<f64>().is_ok_and(|n| n <= 0.0)
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
    // Checked: a time past what the clock holds is no reset, and `+` would panic on it.
    let at = if n >= EPOCH_MILLIS_FROM {
        UNIX_EPOCH.checked_add(Duration::try_from_secs_f64(n / 1000.0).ok()?)?
    } else if n >= EPOCH_FROM {
        UNIX_EPOCH.checked_add(Duration::try_from_secs_f64(n).ok()?)?
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
    fn no_other_answer_pauses_even_with_its_window_used_up() {
        let h = headers(&[("x-ratelimit-remaining", "0"), ("x-ratelimit-reset", "5")]);
        for status in [200, 201, 204, 304, 404, 500, 503] {
            assert_eq!(wait(status, &h), None, "{status}");
        }
        assert_eq!(wait(429, &h), Some(Duration::from_secs(5)));
    }

    #[test]
    fn none_left_however_it_is_written() {
        for used_up in ["0", "00", " 0 ", "0.0", "-1"] {
            let h = headers(&[
                ("x-ratelimit-remaining", used_up),
                ("x-ratelimit-reset", "5"),
            ]);
            assert_eq!(wait(403, &h), Some(Duration::from_secs(5)), "{used_up:?}");
        }
        for left in ["1", "0.5", "many", ""] {
            let h = headers(&[("x-ratelimit-remaining", left), ("x-ratelimit-reset", "5")]);
            assert_eq!(wait(403, &h), None, "{left:?}");
        }
    }

    #[test]
    fn of_two_used_up_windows_the_later_reset_is_the_wait() {
        let h = headers(&[
            ("ratelimit-remaining", "0"),
            ("ratelimit-reset", "4"),
            ("x-ratelimit-remaining", "0"),
            ("x-ratelimit-reset", "30"),
        ]);
        let p = pause_asked(StatusCode::FORBIDDEN, &h).expect("a pause");
        assert_eq!(
            (p.wait, p.header),
            (Duration::from_secs(30), "X-RateLimit-Reset")
        );
        // One already over does not hide the other.
        let h = headers(&[
            ("ratelimit-reset", "1500000000"),
            ("x-ratelimit-remaining", "0"),
            ("x-ratelimit-reset", "30"),
        ]);
        assert_eq!(on_429(&h), Some(Duration::from_secs(30)));
    }

    #[test]
    fn a_unix_time_past_what_the_clock_holds_is_no_reset() {
        for huge in [
            "10000000000000000000000",
            "18000000000000000000000",
            "9300000000000000000000",
        ] {
            let h = headers(&[("x-ratelimit-remaining", "0"), ("x-ratelimit-reset", huge)]);
            assert_eq!(wait(403, &h), None, "{huge}");
        }
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
        assert_eq!(wait(403, &h), None);
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
        assert_eq!(header(429, &h), Some("RateLimit-Reset"));
        let h = headers(&[("x-ratelimit-remaining", "0"), ("x-ratelimit-reset", "4")]);
        assert_eq!(header(403, &h), Some("X-RateLimit-Reset"));
    }
}
