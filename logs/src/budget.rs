//! At most a few log lines a minute about what one peer keeps sending: a peer that floods
//! a channel with what gets ignored or refused must not flood the log (relay and agent).

use std::time::{Duration, Instant};

const WINDOW: Duration = Duration::from_secs(60);

pub struct LogBudget {
    per_window: u32,
    /// What the lines are about, for the count of those left out ("about this session's
    /// messages").
    about: &'static str,
    window_start: Option<Instant>,
    used: u32,
    unlogged: u64,
}

impl LogBudget {
    pub const fn per_minute(lines: u32, about: &'static str) -> Self {
        Self {
            per_window: lines,
            about,
            window_start: None,
            used: 0,
            unlogged: 0,
        }
    }

    /// Whether a line may be logged now; if so, what it adds about the lines left out
    /// since the last one logged.
    pub fn take(&mut self) -> Option<LeftOut> {
        let about = self.about;
        self.take_at(Instant::now())
            .map(|count| LeftOut { count, about })
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
pub struct LeftOut {
    count: u64,
    about: &'static str,
}

impl std::fmt::Display for LeftOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.count {
            0 => Ok(()),
            n => write!(
                f,
                " ({n} lines {} were left out before this one)",
                self.about
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_few_lines_a_minute_then_the_count_of_those_left_out() {
        let about = "about this session's messages";
        let mut budget = LogBudget::per_minute(3, about);
        let start = Instant::now();
        for _ in 0..3 {
            assert_eq!(budget.take_at(start), Some(0));
        }
        for _ in 0..1000 {
            assert_eq!(budget.take_at(start + Duration::from_secs(59)), None);
        }
        assert_eq!(budget.take_at(start + WINDOW), Some(1000));
        assert_eq!(budget.take_at(start + WINDOW), Some(0));
        assert_eq!(LeftOut { count: 0, about }.to_string(), "");
        assert_eq!(
            LeftOut { count: 1000, about }.to_string(),
            " (1000 lines about this session's messages were left out before this one)"
        );
    }
}
