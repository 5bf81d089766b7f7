//! At most a few log lines a minute about what one peer keeps sending: an agent that
//! floods its control channel with ignored messages must not flood the relay's log.

use std::time::{Duration, Instant};

const WINDOW: Duration = Duration::from_secs(60);

pub struct LogBudget {
    per_window: u32,
    window_start: Option<Instant>,
    used: u32,
    unlogged: u64,
}

impl LogBudget {
    pub const fn per_minute(lines: u32) -> Self {
        Self {
            per_window: lines,
            window_start: None,
            used: 0,
            unlogged: 0,
        }
    }

    /// Whether a line may be logged at `now`, and then how many were left unlogged
    /// since the last one logged (for that line to say).
    pub fn take(&mut self, now: Instant) -> Option<u64> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_few_lines_a_minute_then_the_count_of_those_left_out() {
        let mut budget = LogBudget::per_minute(3);
        let start = Instant::now();
        for _ in 0..3 {
            assert_eq!(budget.take(start), Some(0));
        }
        for _ in 0..1000 {
            assert_eq!(budget.take(start + Duration::from_secs(59)), None);
        }
        assert_eq!(budget.take(start + WINDOW), Some(1000));
        assert_eq!(budget.take(start + WINDOW), Some(0));
    }
}
