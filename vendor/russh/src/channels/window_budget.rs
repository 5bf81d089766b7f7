//! postern patch: a bound on what one session's channels together may hold unread.
//! SSH has flow control per channel only; this sizes each channel's window within a total.
//!
//! Without it every channel gets the whole configured window at once, so a session with
//! many channels whose readers stop may hold windows × channels. With it a channel starts
//! at `initial`, doubles its window each time its reader has taken a whole window (up to
//! the configured window size) while the session's windows together stay within
//! `session`, and gives back what it grew by, as its data is read, once they do not.

/// The windows of one session's channels: where each starts, and their sum past which
/// they stop growing (and grown ones shrink back towards `initial`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowBudget {
    pub initial: u32,
    pub session: u64,
}

/// A channel's window after a grant, and what to grant the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Step {
    pub window: u32,
    pub grant: u32,
    pub grew: bool,
}

impl WindowBudget {
    /// One channel's step when its reader took data out: `grant` is what that read would
    /// give back at the channel's present `window`, `read_since_growth` counts the reads
    /// since it last grew (this one included), `max` is the configured window size and
    /// `total` the sum of the session's windows, kept up to date here.
    pub(crate) fn step(
        &self,
        window: u32,
        grant: u32,
        read_since_growth: u32,
        max: u32,
        total: &mut u64,
    ) -> Step {
        if *total > self.session && window > self.initial {
            let over = u32::try_from(*total - self.session).unwrap_or(u32::MAX);
            let cut = (window - self.initial).min(grant).min(over);
            *total -= u64::from(cut);
            return Step {
                window: window - cut,
                grant: grant - cut,
                grew: false,
            };
        }
        if read_since_growth >= window && window < max {
            let room = u32::try_from(self.session.saturating_sub(*total)).unwrap_or(u32::MAX);
            let extra = window.min(max - window).min(room);
            if extra > 0 {
                *total += u64::from(extra);
                return Step {
                    window: window + extra,
                    grant: grant + extra,
                    grew: true,
                };
            }
        }
        Step {
            window,
            grant,
            grew: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KIB: u32 = 1024;
    const MIB: u32 = 1024 * 1024;

    fn budget(session_mib: u64) -> WindowBudget {
        WindowBudget {
            initial: 256 * KIB,
            session: session_mib * u64::from(MIB),
        }
    }

    #[test]
    fn a_reader_that_keeps_up_doubles_its_window_up_to_the_configured_size() {
        let b = budget(64);
        let mut total = u64::from(b.initial);
        let mut window = b.initial;
        let mut sizes = vec![window];
        for _ in 0..10 {
            let step = b.step(window, window, window, 16 * MIB, &mut total);
            assert_eq!(
                step.grant - window,
                step.window - window,
                "grows by what it grants"
            );
            window = step.window;
            sizes.push(window);
        }
        assert_eq!(
            sizes.iter().map(|s| s / KIB).collect::<Vec<_>>(),
            [
                256, 512, 1024, 2048, 4096, 8192, 16384, 16384, 16384, 16384, 16384
            ]
        );
        assert_eq!(total, u64::from(16 * MIB));
    }

    #[test]
    fn a_reader_that_took_less_than_a_window_does_not_grow_it() {
        let b = budget(64);
        let mut total = u64::from(b.initial);
        let step = b.step(b.initial, 1000, 128 * KIB, 16 * MIB, &mut total);
        assert_eq!(
            step,
            Step {
                window: b.initial,
                grant: 1000,
                grew: false
            }
        );
        assert_eq!(total, u64::from(b.initial));
    }

    #[test]
    fn growth_stops_at_the_session_budget() {
        let b = budget(1);
        // Three channels at 256 KiB: 256 KiB of room is left.
        let mut total = 3 * u64::from(b.initial);
        let step = b.step(b.initial, b.initial, b.initial, 16 * MIB, &mut total);
        assert_eq!((step.window, step.grant), (512 * KIB, 512 * KIB));
        assert_eq!(total, u64::from(MIB));
        // None left: the next channel keeps its window, and grants back only what it read.
        let step = b.step(b.initial, 4000, b.initial, 16 * MIB, &mut total);
        assert_eq!(
            step,
            Step {
                window: b.initial,
                grant: 4000,
                grew: false
            }
        );
        assert_eq!(total, u64::from(MIB));
    }

    #[test]
    fn over_the_budget_a_grown_window_shrinks_as_it_is_read_but_not_below_initial() {
        let b = budget(1);
        // A channel grew to 4 MiB; then many channels opened at 256 KiB each.
        let mut total = u64::from(4 * MIB) + 20 * u64::from(b.initial);
        let step = b.step(4 * MIB, 100 * KIB, 100 * KIB, 16 * MIB, &mut total);
        assert_eq!(
            step,
            Step {
                window: 4 * MIB - 100 * KIB,
                grant: 0,
                grew: false
            },
            "what was read is withheld"
        );
        let mut window = step.window;
        for _ in 0..100 {
            window = b.step(window, MIB, MIB, 16 * MIB, &mut total).window;
        }
        assert_eq!(window, b.initial);
        // At its initial window a channel over the budget still gets back all it read.
        let step = b.step(b.initial, 7000, 7000, 16 * MIB, &mut total);
        assert_eq!((step.window, step.grant), (b.initial, 7000));
    }

    #[test]
    fn shrinking_stops_once_the_total_is_back_within_the_budget() {
        let b = budget(4);
        let mut total = u64::from(4 * MIB) + u64::from(100 * KIB);
        let step = b.step(2 * MIB, MIB, MIB, 16 * MIB, &mut total);
        assert_eq!(
            (step.window, step.grant),
            (2 * MIB - 100 * KIB, MIB - 100 * KIB)
        );
        assert_eq!(total, u64::from(4 * MIB));
    }
}
