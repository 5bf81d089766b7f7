//! Failed SSH logins slow down per source address: each failure doubles the delay
//! before the refusal (up to a cap); a burst of failures gets the address refused for a while.
//! An IPv6 address counts by its /64 ([`source`]).

use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hashlink::LruCache;
use hashlink::linked_hash_map::Entry;

use crate::address_slots::source;

pub const FIRST_DELAY: Duration = Duration::from_millis(200);
/// Below the authentication timeout, so a refusal always arrives before it.
pub const MAX_DELAY: Duration = Duration::from_secs(5);
/// Failures older than this are forgotten.
pub const FORGET_AFTER: Duration = Duration::from_secs(600);
/// This many failures within [`BLOCK_WINDOW`] get an address refused before the SSH
/// handshake…
pub const BLOCK_AFTER: u32 = 20;
/// …a burst: an agent nobody updated retries every 15–30 s, a few failures in this long,
/// and must not lock out the agents behind the same NAT address.
pub const BLOCK_WINDOW: Duration = Duration::from_secs(120);
/// …until this long after the failure that blocked it.
pub const BLOCK_FOR: Duration = Duration::from_secs(300);
/// Bound on remembered addresses (about 100 bytes each), so a spray of sources cannot
/// grow memory without limit. Past it, the address that failed longest ago is forgotten.
const MAX_TRACKED: usize = 100_000;

pub struct AuthThrottle {
    /// In the order of their last failure, oldest first.
    failures: Mutex<LruCache<IpAddr, Failures>>,
}

impl Default for AuthThrottle {
    fn default() -> Self {
        Self::tracking(MAX_TRACKED)
    }
}

/// One address's record.
struct Failures {
    /// In a row since the last success: what the delay doubles with.
    in_a_row: u32,
    last: Instant,
    /// Counted towards a block, from `window_start`; a success does not reset them, or
    /// one valid token would keep a flood from ever being blocked.
    in_window: u32,
    window_start: Instant,
    blocked_until: Option<Instant>,
}

impl AuthThrottle {
    fn tracking(addresses: usize) -> Self {
        Self {
            failures: Mutex::new(LruCache::new(addresses)),
        }
    }

    /// Records a failure and returns how long to wait before refusing.
    pub fn failure(&self, ip: IpAddr) -> Duration {
        let ip = source(ip);
        let now = Instant::now();
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        // `entry` alone would let the map hold one more than its capacity.
        if map.len() >= map.capacity() && !map.contains_key(&ip) {
            map.remove_lru();
        }
        let f = match map.entry(ip) {
            Entry::Occupied(mut known) => {
                known.to_back();
                known.into_mut()
            }
            Entry::Vacant(new) => new.insert(Failures {
                in_a_row: 0,
                last: now,
                in_window: 0,
                window_start: now,
                blocked_until: None,
            }),
        };
        if now.duration_since(f.last) >= FORGET_AFTER {
            f.in_a_row = 0;
        }
        if now.duration_since(f.window_start) >= BLOCK_WINDOW {
            f.in_window = 0;
            f.window_start = now;
        }
        f.in_a_row = f.in_a_row.saturating_add(1);
        f.in_window = f.in_window.saturating_add(1);
        f.last = now;
        if f.in_window >= BLOCK_AFTER && f.blocked_until.is_none_or(|until| until <= now) {
            f.blocked_until = Some(now + BLOCK_FOR);
            tracing::warn!(
                address = %ip,
                failures = f.in_window,
                "address refused before the handshake for {} min: {BLOCK_AFTER} failed logins within {} s",
                BLOCK_FOR.as_secs() / 60,
                BLOCK_WINDOW.as_secs()
            );
        }
        delay_for(f.in_a_row)
    }

    /// Whether connections from `ip` are refused at once (a burst of recent failures).
    /// Asking counts as use: a blocked address, refused before it can fail again, is not
    /// the one forgotten first.
    pub fn is_blocked(&self, ip: IpAddr) -> bool {
        let ip = source(ip);
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&ip)
            .and_then(|f| f.blocked_until)
            .is_some_and(|until| Instant::now() < until)
    }

    /// A login from `ip` worked: its next failure is refused without delay again.
    pub fn success(&self, ip: IpAddr) {
        let ip = source(ip);
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = map.peek_mut(&ip) {
            f.in_a_row = 0;
        }
    }
}

fn delay_for(failures: u32) -> Duration {
    let factor = 1u32 << failures.saturating_sub(1).min(16);
    FIRST_DELAY.saturating_mul(factor).min(MAX_DELAY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_grows_per_address_and_resets_on_success() {
        let t = AuthThrottle::default();
        let a: IpAddr = [127, 0, 0, 2].into();
        let b: IpAddr = [127, 0, 0, 3].into();
        let d1 = t.failure(a);
        let d2 = t.failure(a);
        let d3 = t.failure(a);
        assert!(d1 < d2 && d2 < d3, "{d1:?} {d2:?} {d3:?}");
        assert_eq!(t.failure(b), FIRST_DELAY);
        for _ in 0..40 {
            t.failure(a);
        }
        assert_eq!(t.failure(a), MAX_DELAY);
        assert!(MAX_DELAY < crate::ssh_server::AUTH_TIMEOUT);
        assert!(t.is_blocked(a), "a burst of failures blocks the address");
        assert!(!t.is_blocked(b), "only that address");
        t.success(a);
        assert_eq!(t.failure(a), FIRST_DELAY, "a success resets the delay");
        assert!(
            t.is_blocked(a),
            "but not the block: one valid token must not lift it"
        );
    }

    #[test]
    fn a_burst_across_an_ipv6_64_blocks_the_whole_64() {
        let t = AuthThrottle::default();
        for i in 0..BLOCK_AFTER {
            let ip: IpAddr = format!("2001:db8:5:6::{:x}", i + 1)
                .parse()
                .expect("address");
            t.failure(ip);
        }
        assert!(t.is_blocked("2001:db8:5:6:abcd::1".parse().expect("address")));
        assert!(!t.is_blocked("2001:db8:5:7::1".parse().expect("address")));
    }

    #[test]
    fn failures_spread_out_never_block() {
        let t = AuthThrottle::default();
        let a: IpAddr = [192, 0, 2, 7].into();
        for _ in 0..BLOCK_AFTER - 1 {
            t.failure(a);
        }
        // The window has passed: an agent retrying every 15–30 s gets here.
        {
            let mut map = t.failures.lock().unwrap_or_else(|p| p.into_inner());
            let f = map.peek_mut(&a).expect("tracked");
            f.window_start -= BLOCK_WINDOW;
        }
        for _ in 0..BLOCK_AFTER - 1 {
            t.failure(a);
        }
        assert!(!t.is_blocked(a));
        t.failure(a);
        assert!(t.is_blocked(a), "twenty within one window");
    }

    #[test]
    fn a_spray_of_sources_is_capped_and_forgets_the_longest_quiet_first() {
        let t = AuthThrottle::tracking(3);
        let blocked: IpAddr = [192, 0, 2, 1].into();
        for _ in 0..BLOCK_AFTER {
            t.failure(blocked);
        }
        for last in 2..=3u8 {
            t.failure([192, 0, 2, last].into());
        }
        // Refused before the handshake, the blocked address fails no more: being asked
        // about keeps it remembered.
        assert!(t.is_blocked(blocked));
        t.failure([192, 0, 2, 4].into());
        let map = t.failures.lock().unwrap_or_else(|p| p.into_inner());
        assert_eq!(map.len(), 3);
        assert!(!map.contains_key(&IpAddr::from([192, 0, 2, 2])));
        drop(map);
        assert!(t.is_blocked(blocked));
        assert_eq!(
            t.failure([192, 0, 2, 2].into()),
            FIRST_DELAY,
            "forgotten: it starts over"
        );
    }
}
