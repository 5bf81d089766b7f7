//! postern patch: a bound on what one session's channels together may hold unread.
//! SSH has flow control per channel only; this sizes each channel's window within a total.
//!
//! Without it every channel gets the whole configured window at once, so a session with
//! many channels whose readers stop may hold windows × channels. With it a channel starts
//! at `initial` and doubles its window (up to the configured window size) each time its
//! reader took a whole window within `PERIOD`, while what the session's windows grew by in
//! all stays within `session`. A session so holds at most `session` + `initial` per open
//! channel. A window that holds its sender back on a link of round trip `rtt` is taken
//! whole every `rtt`, so it grows while `rtt` < `PERIOD`; a reader slower than a window
//! per `PERIOD` (a slow caller, a channel carrying small answers now and then) leaves it.

/// The windows of one session's channels: where each starts, and how much they may grow
/// by in all.
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
    /// A reader that takes a whole window within this grows it: longer than the round
    /// trip of any link postern is meant for.
    pub const PERIOD: std::time::Duration = std::time::Duration::from_secs(1);

    /// The window a channel opens with: `initial` with a budget, at least a packet (a
    /// window of zero could never be sent anything); without one, all of `window_size`.
    pub(crate) fn first_window(budget: Option<Self>, window_size: u32, packet: u32) -> u32 {
        budget.map_or(window_size, |b| b.initial.max(packet).min(window_size))
    }

    /// What a channel's window grew by beyond `initial`: the part the budget counts.
    pub(crate) fn growth(&self, window: u32) -> u64 {
        u64::from(window.saturating_sub(self.initial))
    }

    /// One channel's step when its reader took data out: `grant` is what that read gives
    /// back at the channel's present `window`, `fast` says whether the reader took a whole
    /// window within `PERIOD`, `max` is the configured window size and `grown` what the
    /// session's windows grew by in all, kept up to date here.
    pub(crate) fn step(
        &self,
        window: u32,
        grant: u32,
        fast: bool,
        max: u32,
        grown: &mut u64,
    ) -> Step {
        let room = u32::try_from(self.session.saturating_sub(*grown)).unwrap_or(u32::MAX);
        let extra = if fast && window < max {
            window.min(max - window).min(room)
        } else {
            0
        };
        *grown += u64::from(extra);
        Step {
            window: window + extra,
            grant: grant + extra,
            grew: extra > 0,
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
    fn a_window_taken_fast_doubles_up_to_the_configured_size() {
        let b = budget(64);
        let mut grown = 0;
        let mut window = b.initial;
        let mut sizes = vec![window];
        for _ in 0..10 {
            let step = b.step(window, window / 2, true, 16 * MIB, &mut grown);
            assert_eq!(
                step.grant - window / 2,
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
        assert_eq!(grown, b.growth(16 * MIB));
    }

    #[test]
    fn a_window_taken_slowly_does_not_grow() {
        let b = budget(64);
        let mut grown = 0;
        let step = b.step(b.initial, 1000, false, 16 * MIB, &mut grown);
        assert_eq!(
            step,
            Step {
                window: b.initial,
                grant: 1000,
                grew: false
            }
        );
        assert_eq!(grown, 0);
    }

    #[test]
    fn growth_stops_at_the_session_budget() {
        let b = budget(1);
        // Channels grew by 768 KiB already: 256 KiB of room is left.
        let mut grown = u64::from(768 * KIB);
        let step = b.step(b.initial, b.initial, true, 16 * MIB, &mut grown);
        assert_eq!((step.window, step.grant), (512 * KIB, 512 * KIB));
        assert_eq!(grown, u64::from(MIB));
        // None left: the next channel keeps its window, and grants back what it read.
        let step = b.step(b.initial, 4000, true, 16 * MIB, &mut grown);
        assert_eq!(
            step,
            Step {
                window: b.initial,
                grant: 4000,
                grew: false
            }
        );
        assert_eq!(grown, u64::from(MIB));
    }

    #[test]
    fn growth_takes_what_room_is_left_and_no_more() {
        let b = budget(1);
        let mut grown = u64::from(MIB - 100 * KIB);
        let step = b.step(2 * MIB, MIB, true, 16 * MIB, &mut grown);
        assert_eq!(
            (step.window, step.grant),
            (2 * MIB + 100 * KIB, MIB + 100 * KIB)
        );
        assert_eq!(grown, u64::from(MIB));
    }

    #[test]
    fn growth_counts_only_what_lies_beyond_initial() {
        let b = budget(64);
        assert_eq!(b.growth(b.initial), 0);
        assert_eq!(b.growth(100), 0);
        assert_eq!(b.growth(MIB), u64::from(MIB - b.initial));
    }
}
