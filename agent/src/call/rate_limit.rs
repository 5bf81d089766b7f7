//! A per-connection token bucket: calls over the limit wait their turn up to `max_wait`;
//! an upstream 429 with `Retry-After` pauses the whole connection for that long.

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use crate::config::RateLimit;

/// An upstream's `Retry-After` is honoured up to this long.
pub const MAX_PAUSE: Duration = Duration::from_secs(600);

/// The wait the call would have needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    pub needed: Duration,
}

pub struct Limiter {
    limit: Option<RateLimit>,
    state: Mutex<Bucket>,
}

struct Bucket {
    /// May go below zero: each waiting call has reserved its token already, so later
    /// callers queue behind it instead of racing it.
    tokens: f64,
    refilled: Instant,
    paused_until: Option<Instant>,
}

impl Limiter {
    pub fn new(limit: Option<RateLimit>) -> Self {
        let tokens = limit.map(|l| f64::from(l.burst)).unwrap_or(0.0);
        Self {
            limit,
            state: Mutex::new(Bucket {
                tokens,
                refilled: Instant::now(),
                paused_until: None,
            }),
        }
    }

    /// Takes a token, waiting up to `max_wait` for it (and for any pause to end).
    pub async fn acquire(&self, max_wait: Duration) -> Result<(), Refused> {
        let wait = self.reserve(Instant::now(), max_wait)?;
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        Ok(())
    }

    /// The accounting of `acquire`: how long to wait, with the token reserved if it is
    /// within `max_wait`.
    fn reserve(&self, now: Instant, max_wait: Duration) -> Result<Duration, Refused> {
        let Ok(mut b) = self.state.lock() else {
            return Ok(Duration::ZERO);
        };
        let paused = b
            .paused_until
            .map(|until| until.saturating_duration_since(now))
            .unwrap_or_default();
        let Some(limit) = self.limit else {
            return if paused > max_wait {
                Err(Refused { needed: paused })
            } else {
                Ok(paused)
            };
        };
        let rate = f64::from(limit.requests) / limit.per.as_secs_f64();
        let elapsed = now.saturating_duration_since(b.refilled).as_secs_f64();
        b.tokens = (b.tokens + elapsed * rate).min(f64::from(limit.burst));
        b.refilled = now;
        let deficit = 1.0 - b.tokens;
        let for_token = if deficit > 0.0 {
            Duration::from_secs_f64(deficit / rate)
        } else {
            Duration::ZERO
        };
        let wait = for_token.max(paused);
        if wait > max_wait {
            return Err(Refused { needed: wait });
        }
        b.tokens -= 1.0;
        Ok(wait)
    }

    /// Holds every call on this connection until `for_how_long` has passed.
    pub fn pause(&self, for_how_long: Duration) {
        let until = Instant::now() + for_how_long.min(MAX_PAUSE);
        if let Ok(mut b) = self.state.lock() {
            b.paused_until = Some(b.paused_until.map_or(until, |u| u.max(until)));
        }
    }
}

/// `Retry-After` as seconds or an HTTP date (RFC 9110 §10.2.3).
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(SystemTime::now()).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(requests: u32, per_ms: u64, burst: u32) -> Limiter {
        Limiter::new(Some(RateLimit {
            requests,
            per: Duration::from_millis(per_ms),
            burst,
        }))
    }

    #[test]
    fn burst_passes_then_calls_queue_at_the_rate() {
        let l = limiter(10, 1000, 3);
        let now = Instant::now();
        for _ in 0..3 {
            assert_eq!(l.reserve(now, Duration::ZERO), Ok(Duration::ZERO));
        }
        // 10 per second: the next tokens come 100 ms apart, and each waiter has its own.
        let w1 = l.reserve(now, Duration::from_secs(1)).expect("queued");
        let w2 = l.reserve(now, Duration::from_secs(1)).expect("queued");
        assert!((w1.as_millis() as i64 - 100).abs() <= 1, "{w1:?}");
        assert!((w2.as_millis() as i64 - 200).abs() <= 1, "{w2:?}");
        let refused = l
            .reserve(now, Duration::from_millis(250))
            .expect_err("over max_wait");
        assert!(refused.needed > Duration::from_millis(250));
        // A refused call reserves nothing: with more patience the same slot is free.
        let w3 = l.reserve(now, Duration::from_secs(1)).expect("queued");
        assert!((w3.as_millis() as i64 - 300).abs() <= 1, "{w3:?}");
        // Time refills the bucket, never above the burst.
        let later = now + Duration::from_secs(10);
        for _ in 0..3 {
            assert_eq!(l.reserve(later, Duration::ZERO), Ok(Duration::ZERO));
        }
        assert!(l.reserve(later, Duration::ZERO).is_err());
    }

    #[test]
    fn a_pause_holds_even_unlimited_connections() {
        let l = Limiter::new(None);
        assert_eq!(
            l.reserve(Instant::now(), Duration::ZERO),
            Ok(Duration::ZERO)
        );
        l.pause(Duration::from_secs(2));
        let now = Instant::now();
        let wait = l
            .reserve(now, Duration::from_secs(5))
            .expect("within max_wait");
        assert!(
            wait > Duration::from_millis(1900) && wait <= Duration::from_secs(2),
            "{wait:?}"
        );
        assert!(l.reserve(now, Duration::from_secs(1)).is_err());
        l.pause(Duration::from_secs(100_000));
        let wait = l
            .reserve(Instant::now(), Duration::from_secs(100_000))
            .expect("capped");
        assert!(wait <= MAX_PAUSE, "{wait:?}");
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
    }
}
