//! At most a few log lines a minute about what the relay keeps sending: a relay that
//! floods the control channel with lines the agent ignores must not flood the agent's log.

use std::time::{Duration, Instant};

const WINDOW: Duration = Duration::from_secs(60);

pub(crate) struct LogBudget {
    per_window: u32,
    window_start: Option<Instant>,
    used: u32,
    unlogged: u64,
}

impl LogBudget {
    pub(crate) const fn per_minute(lines: u32) -> Self {
        Self {
            per_window: lines,
            window_start: None,
            used: 0,
            unlogged: 0,
        }
    }

    /// Whether a line may be logged now; if so, what it adds about the lines left out
    /// since the last one logged.
    pub(crate) fn take(&mut self) -> Option<LeftOut> {
        self.take_at(Instant::now()).map(LeftOut)
    }

    fn take_at(&mut self, now: Instant) -> Option<u64> {
        if self
            .window_start
            .is_none_or(|start| now.saturating_duration_since(start) >= WINDOW)
        {
            self.window_start = Some(now);
            self.used = 0;
        }
        if self.used < self.per_window {
            self.used += 1;
            Some(std::mem::take(&mut self.unlogged))
        } else {
            self.unlogged += 1;
            None
        }
    }
}

/// The end of a line logged through a [`LogBudget`]: how many were left out before it,
/// if any were.
pub(crate) struct LeftOut(u64);

impl std::fmt::Display for LeftOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            0 => Ok(()),
            n => write!(
                f,
                " ({n} lines about this session's messages were left out before this one)"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_few_lines_a_minute_then_the_count_of_those_left_out() {
        let mut budget = LogBudget::per_minute(3);
        let start = Instant::now();
        for _ in 0..3 {
            assert_eq!(budget.take_at(start), Some(0));
        }
        for _ in 0..1000 {
            assert_eq!(budget.take_at(start + Duration::from_secs(59)), None);
        }
        assert_eq!(budget.take_at(start + WINDOW), Some(1000));
        assert_eq!(budget.take_at(start + WINDOW), Some(0));
        assert_eq!(LeftOut(0).to_string(), "");
        assert!(LeftOut(1000).to_string().contains("1000 lines"));
    }
}
