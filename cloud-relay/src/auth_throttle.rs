//! Failed SSH logins slow down per source address: each failure doubles the delay
//! before the refusal (up to a cap); past a threshold the address is refused outright for a while.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const FIRST_DELAY: Duration = Duration::from_millis(200);
pub const MAX_DELAY: Duration = Duration::from_secs(10);
/// Failures older than this are forgotten.
pub const FORGET_AFTER: Duration = Duration::from_secs(600);
/// After this many failures an address is refused before the SSH handshake…
pub const BLOCK_AFTER: u32 = 20;
/// …until this long after its last failure.
pub const BLOCK_FOR: Duration = Duration::from_secs(300);
/// Bound on remembered addresses, so a spray of sources cannot grow memory without limit.
const MAX_TRACKED: usize = 100_000;

#[derive(Default)]
pub struct AuthThrottle {
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

impl AuthThrottle {
    /// Records a failure and returns how long to wait before refusing.
    pub fn failure(&self, ip: IpAddr) -> Duration {
        let now = Instant::now();
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_TRACKED {
            map.retain(|_, (_, at)| now.duration_since(*at) < FORGET_AFTER);
        }
        let entry = map.entry(ip).or_insert((0, now));
        if now.duration_since(entry.1) >= FORGET_AFTER {
            entry.0 = 0;
        }
        entry.0 = entry.0.saturating_add(1);
        entry.1 = now;
        delay_for(entry.0)
    }

    /// Whether connections from `ip` are refused at once (too many recent failures).
    pub fn is_blocked(&self, ip: IpAddr) -> bool {
        let map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&ip)
            .is_some_and(|(count, at)| *count >= BLOCK_AFTER && at.elapsed() < BLOCK_FOR)
    }

    pub fn success(&self, ip: IpAddr) {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&ip);
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
        assert!(t.is_blocked(a), "many failures block the address");
        assert!(!t.is_blocked(b), "only that address");
        t.success(a);
        assert!(!t.is_blocked(a));
        assert_eq!(t.failure(a), FIRST_DELAY);
    }
}
