//! Exponential backoff with full jitter: the n-th wait is uniform in
//! `[0, min(cap, base·2ⁿ)]`, so many agents do not reconnect in lockstep.

use std::time::Duration;

pub const BASE: Duration = Duration::from_millis(250);
pub const CAP: Duration = Duration::from_secs(30);
/// A session that lasted this long counts as stable and resets the backoff.
pub const STABLE_AFTER: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
pub struct Backoff {
    attempt: u32,
}

impl Backoff {
    /// The next wait, growing with each call.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = BASE.saturating_mul(1u32 << self.attempt.min(16)).min(CAP);
        self.attempt = self.attempt.saturating_add(1);
        ceiling.mul_f64(rand::random::<f64>())
    }

    /// Jumps to the cap: for failures that retrying fast cannot fix (refused token).
    pub fn to_cap(&mut self) {
        self.attempt = 16;
    }

    /// After a session that came up but did not last: start over briskly (the next
    /// wait is at most 500 ms, then growing as usual while the relay stays away).
    pub fn after_short_session(&mut self) {
        self.attempt = self.attempt.min(1);
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
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
            b.after_short_session();
            assert!(
                b.next_delay() <= BASE * 8,
                "stays brisk across short sessions"
            );
        }
        b.reset();
        assert!(b.next_delay() <= BASE);
        b.to_cap();
        let waits: Vec<_> = (0..50).map(|_| b.next_delay()).collect();
        assert!(waits.iter().all(|w| *w <= CAP));
        assert!(
            waits.iter().any(|w| *w > BASE * 4),
            "jitter spans up to the cap"
        );
    }
}
