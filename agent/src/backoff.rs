//! Exponential backoff with full jitter: the n-th wait is uniform in
//! `[0, min(cap, base·2ⁿ)]`, so many agents do not reconnect in lockstep. After the
//! relay refused the agent, waits are uniform in `[cap/2, cap]` instead.

use std::time::Duration;

pub const BASE: Duration = Duration::from_millis(250);
pub const CAP: Duration = Duration::from_secs(30);
/// A session that lasted this long counts as stable and resets the backoff.
pub const STABLE_AFTER: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
pub struct Backoff {
    attempt: u32,
    /// The relay refused this agent (token, host key, revocation, takeover): retrying
    /// sooner cannot help, and a relay's refusals of an unknown token count towards
    /// blocking the whole source address, which other agents behind the same NAT share.
    refused: bool,
}

impl Backoff {
    /// The next wait, growing with each call.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = BASE.saturating_mul(1u32 << self.attempt.min(16)).min(CAP);
        self.attempt = self.attempt.saturating_add(1);
        let floor = if self.refused {
            ceiling / 2
        } else {
            Duration::ZERO
        };
        floor + (ceiling - floor).mul_f64(rand::random::<f64>())
    }

    /// Jumps to the cap and stays at least half of it until a session succeeds or the
    /// config changes: for failures that retrying fast cannot fix (refused token).
    fn refused(&mut self) {
        self.attempt = 16;
        self.refused = true;
    }

    /// Decides the next waits after a session ended: `refused` says the relay refused
    /// the agent, `lasted` how long the attempt took from connect to end, `established`
    /// whether it came up at all.
    pub fn after_session(&mut self, refused: bool, lasted: Duration, established: bool) {
        if refused {
            // However long the session lasted: its end says the token is no good now.
            self.refused();
        } else if lasted >= STABLE_AFTER {
            self.reset();
        } else if established {
            self.after_short_session();
        }
    }

    /// After a session that came up but did not last: start over briskly (the next
    /// wait is at most 500 ms, then growing as usual while the relay stays away).
    fn after_short_session(&mut self) {
        self.attempt = self.attempt.min(1);
        self.refused = false;
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
        self.refused = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_the_cap_and_resets() {
        let mut b = Backoff::default();
        for n in 0..30u32 {
            let ceiling = BASE.saturating_mul(1u32 << n.min(16)).min(CAP);
            assert!(b.next_delay() <= ceiling);
        }
        // The tunnel calls after_short_session before each wait that follows a short session.
        for _ in 0..50 {
            b.after_session(false, Duration::from_secs(1), true);
            assert!(
                b.next_delay() <= BASE * 8,
                "stays brisk across short sessions"
            );
        }
        b.after_session(false, STABLE_AFTER, true);
        assert!(b.next_delay() <= BASE);
        b.after_session(false, Duration::from_secs(1), false);
        let waits: Vec<_> = (0..50).map(|_| b.next_delay()).collect();
        assert!(waits.iter().all(|w| *w <= CAP));
        assert!(
            waits.iter().any(|w| *w > BASE * 4),
            "jitter spans up to the cap"
        );
        assert!(
            waits.iter().any(|w| *w < CAP / 2),
            "an unreachable relay keeps full jitter"
        );
    }

    #[test]
    fn a_refusal_waits_at_least_half_the_cap() {
        let mut b = Backoff::default();
        for _ in 0..200 {
            b.after_session(true, Duration::from_millis(5), false);
            let wait = b.next_delay();
            assert!(wait >= CAP / 2 && wait <= CAP, "{wait:?}");
        }
    }

    #[test]
    fn a_revocation_after_a_long_session_does_not_reset() {
        // Revoked, rotated or replaced after an hour online: still a refusal.
        for lasted in [STABLE_AFTER, Duration::from_secs(3600)] {
            let mut b = Backoff::default();
            b.after_session(true, lasted, true);
            let wait = b.next_delay();
            assert!(wait >= CAP / 2, "{wait:?} after a {lasted:?} session");
        }
    }

    #[test]
    fn a_success_or_a_new_config_ends_the_slow_retries() {
        let mut b = Backoff::default();
        b.refused();
        b.after_session(false, Duration::from_secs(1), true);
        assert!(b.next_delay() <= BASE * 2, "a session came up again");
        b.refused();
        b.reset();
        assert!(b.next_delay() <= BASE, "a reloaded config is tried briskly");
    }
}
