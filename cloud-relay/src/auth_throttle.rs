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
/// Refusals of a former (rotated or revoked) token within [`BLOCK_WINDOW`] that get an
/// address refused as well. They do not count towards [`BLOCK_AFTER`]: a site whose
/// agents nobody updated retries every 15–30 s each, 8 in two minutes, and must not lock
/// out its other agents. Yet without any ceiling one address holding a former token could
/// log in and be refused hundreds of times a second, each a key exchange and a store read,
/// for ever. A hundred such agents behind one address (9 each within two minutes at
/// most) stay below it.
pub const FORMER_BLOCK_AFTER: u32 = 1000;
/// Connections that ended before trying any login (a key exchange and a hang-up, as
/// `ssh-keyscan` does; a port probe; garbage), or whose valid token was refused for its
/// agent's connections (`agent_busy`), within [`BLOCK_WINDOW`] that get an address
/// refused: without a ceiling one address could make the relay run key exchanges for
/// ever, 250 at a time (thousands a second; this lets 25 a second through). Far above
/// what an admin's `ssh-keyscan` or a load balancer's health check (one every few
/// seconds) comes to, and above a site of 300 agents behind one address that all hang
/// up after the key exchange, 9 times in two minutes each: what they do while the
/// relay's host key no longer matches their `relay_fingerprint`.
pub const HANGUP_BLOCK_AFTER: u32 = 3000;
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
    /// Guesses (unknown tokens), counted towards a block; a success does not reset
    /// them, or one valid token would keep a flood from ever being blocked.
    guesses: Burst,
    /// Refusals of former tokens, towards a block of their own, far higher.
    former: Burst,
    /// Connections closed before any login, towards another such block.
    hangups: Burst,
    blocked_until: Option<Instant>,
}

/// Events within the last [`BLOCK_WINDOW`]: a sliding window's count, in two counters.
#[derive(Clone, Copy)]
struct Burst {
    /// From `window_start`.
    in_window: u32,
    window_start: Instant,
    /// Those of the window before, which count for the part of it still within
    /// [`BLOCK_WINDOW`] of now: a burst across the windows' edge is still a burst.
    in_previous: u32,
}

impl Burst {
    fn new(now: Instant) -> Self {
        Self {
            in_window: 0,
            window_start: now,
            in_previous: 0,
        }
    }

    /// Counts one at `now`; returns how many the last [`BLOCK_WINDOW`] holds, the
    /// window before's taken as spread evenly over it.
    fn add(&mut self, now: Instant) -> f64 {
        let into_window = now.saturating_duration_since(self.window_start);
        if into_window >= BLOCK_WINDOW {
            // The window just over counts on; one before it, not at all.
            let next = into_window < 2 * BLOCK_WINDOW;
            self.in_previous = if next { self.in_window } else { 0 };
            self.window_start = if next {
                self.window_start + BLOCK_WINDOW
            } else {
                now
            };
            self.in_window = 0;
        }
        self.in_window = self.in_window.saturating_add(1);
        let past = now
            .saturating_duration_since(self.window_start)
            .as_secs_f64()
            / BLOCK_WINDOW.as_secs_f64();
        f64::from(self.in_window) + f64::from(self.in_previous) * (1.0 - past).max(0.0)
    }
}

impl AuthThrottle {
    fn tracking(addresses: usize) -> Self {
        Self {
            failures: Mutex::new(LruCache::new(addresses)),
        }
    }

    /// Records a failed guess and returns how long to wait before refusing.
    pub fn failure(&self, ip: IpAddr) -> Duration {
        self.failure_at(ip, Instant::now())
    }

    fn failure_at(&self, ip: IpAddr, now: Instant) -> Duration {
        let mut in_a_row = 1;
        self.record(ip, now, |f, now| {
            if now.duration_since(f.last) >= FORGET_AFTER {
                f.in_a_row = 0;
            }
            f.in_a_row = f.in_a_row.saturating_add(1);
            f.last = now;
            in_a_row = f.in_a_row;
            (f.guesses.add(now), BLOCK_AFTER, "failed logins")
        });
        delay_for(in_a_row)
    }

    /// Records the refusal of a former token: no longer delay, but a ceiling
    /// ([`FORMER_BLOCK_AFTER`]).
    pub fn former_token(&self, ip: IpAddr) {
        self.former_token_at(ip, Instant::now());
    }

    fn former_token_at(&self, ip: IpAddr, now: Instant) {
        self.toward_ceiling(
            ip,
            now,
            |f| &mut f.former,
            FORMER_BLOCK_AFTER,
            "refusals of rotated or revoked tokens",
        );
    }

    /// Counts one event in the burst `kind` picks, towards its own `ceiling`.
    fn toward_ceiling(
        &self,
        ip: IpAddr,
        now: Instant,
        kind: fn(&mut Failures) -> &mut Burst,
        ceiling: u32,
        what: &'static str,
    ) {
        self.record(ip, now, |f, now| (kind(f).add(now), ceiling, what));
    }

    /// Records a connection that ended before it tried to log in, or brought no session
    /// for another reason than its token: no delay, but a ceiling ([`HANGUP_BLOCK_AFTER`]).
    pub fn hangup(&self, ip: IpAddr) {
        self.hangup_at(ip, Instant::now());
    }

    fn hangup_at(&self, ip: IpAddr, now: Instant) {
        self.toward_ceiling(
            ip,
            now,
            |f| &mut f.hangups,
            HANGUP_BLOCK_AFTER,
            "connections that brought no session",
        );
    }

    /// `count` records the event in the address's record and says how many of its kind
    /// the window holds, the block's threshold, and what they are, for the log.
    fn record(
        &self,
        ip: IpAddr,
        now: Instant,
        count: impl FnOnce(&mut Failures, Instant) -> (f64, u32, &'static str),
    ) {
        let ip = source(ip);
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
                guesses: Burst::new(now),
                former: Burst::new(now),
                hangups: Burst::new(now),
                blocked_until: None,
            }),
        };
        let (recent, threshold, what) = count(f, now);
        if recent >= f64::from(threshold) && f.blocked_until.is_none_or(|until| until <= now) {
            f.blocked_until = Some(now + BLOCK_FOR);
            tracing::warn!(
                address = %ip,
                failures = recent.round() as u64,
                "address refused before the handshake for {} min: {threshold} {what} within {} s",
                BLOCK_FOR.as_secs() / 60,
                BLOCK_WINDOW.as_secs()
            );
        }
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
        let start = Instant::now();
        // An agent nobody updated, retrying every 15 s for 20 minutes: 8 in any 2 minutes.
        for i in 0..80 {
            t.failure_at(a, start + Duration::from_secs(15 * i));
        }
        assert!(!t.is_blocked(a));
    }

    #[test]
    fn a_burst_across_the_windows_edge_blocks() {
        let t = AuthThrottle::default();
        let a: IpAddr = [192, 0, 2, 8].into();
        let start = Instant::now();
        t.failure_at(a, start);
        let at = |secs: u64| start + Duration::from_secs(secs);
        // 19 within the last second of the first window, then a few in the next: more
        // than twenty within two minutes, though neither window holds twenty.
        for _ in 0..18 {
            t.failure_at(a, at(119));
        }
        assert!(!t.is_blocked(a));
        t.failure_at(a, at(121));
        t.failure_at(a, at(121));
        assert!(t.is_blocked(a), "a burst of 21 within 3 s");

        // Twenty within one window, as ever.
        let b: IpAddr = [192, 0, 2, 9].into();
        for _ in 0..BLOCK_AFTER - 1 {
            t.failure_at(b, start);
        }
        assert!(!t.is_blocked(b));
        t.failure_at(b, at(100));
        assert!(t.is_blocked(b), "twenty within one window");
    }

    #[test]
    fn hangups_block_only_far_past_probes_and_keyscans() {
        let t = AuthThrottle::default();
        let start = Instant::now();
        // A load balancer's health check every 2 s, and an admin's ssh-keyscan a minute,
        // for ten minutes.
        let probed: IpAddr = [192, 0, 2, 30].into();
        for i in 0..300 {
            t.hangup_at(probed, start + Duration::from_secs(2 * i));
        }
        assert!(!t.is_blocked(probed));
        assert_eq!(t.failure(probed), FIRST_DELAY, "nor do they slow a guess");
        // 300 agents behind one address whose relay_fingerprint no longer matches: each
        // hangs up after the key exchange, every 15 s (a refusal's shortest wait).
        let site: IpAddr = [192, 0, 2, 32].into();
        for i in 0..40 {
            for _ in 0..300 {
                t.hangup_at(site, start + Duration::from_secs(15 * i));
            }
        }
        assert!(!t.is_blocked(site));
        // One address running key exchanges and hanging up as fast as it can.
        blocked_at(HANGUP_BLOCK_AFTER, |t, ip, at| t.hangup_at(ip, at));
    }

    /// One address doing `event` as fast as it can is blocked at `threshold`, not before.
    fn blocked_at(threshold: u32, event: impl Fn(&AuthThrottle, IpAddr, Instant)) {
        let t = AuthThrottle::default();
        let flood: IpAddr = [192, 0, 2, 99].into();
        let start = Instant::now();
        for i in 0..threshold - 1 {
            event(&t, flood, start + Duration::from_millis(u64::from(i)));
        }
        assert!(!t.is_blocked(flood));
        event(&t, flood, start + Duration::from_secs(1));
        assert!(t.is_blocked(flood));
    }

    #[test]
    fn former_tokens_block_only_far_past_a_forgotten_agents_retries() {
        let t = AuthThrottle::default();
        let site: IpAddr = [192, 0, 2, 20].into();
        let start = Instant::now();
        // A hundred agents nobody updated behind one address, every 15 s (their
        // shortest wait) for ten minutes.
        for i in 0..40 {
            for _ in 0..100 {
                t.former_token_at(site, start + Duration::from_secs(15 * i));
            }
        }
        assert!(!t.is_blocked(site));
        assert_eq!(t.failure(site), FIRST_DELAY, "nor do they slow a guess");
        // One address logging in with a former token as fast as it can.
        blocked_at(FORMER_BLOCK_AFTER, |t, ip, at| t.former_token_at(ip, at));
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
