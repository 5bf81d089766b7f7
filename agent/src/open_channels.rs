//! The channels one relay session has open to this agent, counted from their open to the
//! first close by either side: opens past the cap are refused; lines about them are budgeted.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use postern_logs::{LeftOut, LogBudget};
use tracing::warn;

use crate::call_table::Contexts;

/// The fewest channels a session may hold, whatever the connections allow: a relay at its
/// default `max_calls_per_agent` (256) holds at most 256 busy, 256 idle and 256 opens
/// whose callers gave up, with room to spare for closes on their way.
pub const MIN_CHANNELS: usize = 1024;

/// Lines a minute about what the relay does with this session's channels (opens refused,
/// heads left unfinished): a relay that keeps at it gets a few, each saying how many were
/// left out.
const CHANNEL_LOG_LINES: u32 = 10;

/// How many channels a session may hold with these connections: an honest relay holds
/// at most its `max_calls_per_agent` busy, as many idle, and as many opens under way. The
/// agent serves no more calls at once than its connections' `max_concurrent_calls`
/// together (more get 429), so three times that, and [`MIN_CHANNELS`] at least, refuses
/// no call the agent would have served from a relay whose `max_calls_per_agent` is within
/// a third of it (its default is); past that, idle channels can fill it, and the relay
/// closes them when told `resource shortage`.
pub fn cap(contexts: &Contexts) -> usize {
    let calls: usize = contexts
        .values()
        .map(|ctx| ctx.connection.limits.max_concurrent_calls as usize)
        .sum();
    calls.saturating_mul(3).max(MIN_CHANNELS)
}

pub struct OpenChannels {
    state: Mutex<State>,
}

struct State {
    /// Each open channel's generation, so that a place given back late (its task ends
    /// after the relay closed it) cannot take out a later channel given the same id.
    open: HashMap<u32, u64>,
    next: u64,
    lines: LogBudget,
}

/// A channel's place among the session's open ones, given back as it drops (its task's
/// end), unless the relay's close gave it back first.
pub struct Place {
    channels: Arc<OpenChannels>,
    /// The channel's number (`ChannelId::number`).
    id: u32,
    generation: u64,
}

impl Place {
    /// See [`OpenChannels::may_log`].
    pub fn may_log(&self) -> Option<LeftOut> {
        self.channels.may_log()
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut state = self.channels.lock();
        if state.open.get(&self.id) == Some(&self.generation) {
            state.open.remove(&self.id);
        }
    }
}

impl Default for OpenChannels {
    fn default() -> Self {
        Self {
            state: Mutex::new(State {
                open: HashMap::new(),
                next: 0,
                lines: LogBudget::per_minute(CHANNEL_LOG_LINES, "about this session's channels"),
            }),
        }
    }
}

impl OpenChannels {
    /// A place for channel number `id` if fewer than `cap` are open; else `None`, logged within
    /// the session's budget.
    pub fn admit(self: &Arc<Self>, id: u32, cap: usize) -> Option<Place> {
        let mut state = self.lock();
        if state.open.len() >= cap {
            if let Some(left_out) = state.lines.take() {
                warn!(
                    open = state.open.len(),
                    cap,
                    "relay opened more channels than this agent allows at once (3 × the connections' max_concurrent_calls, at least {MIN_CHANNELS}); refused{left_out}"
                );
            }
            return None;
        }
        state.next += 1;
        let generation = state.next;
        state.open.insert(id, generation);
        Some(Place {
            channels: self.clone(),
            id,
            generation,
        })
    }

    /// The relay closed channel `id`: its place is free, though its task may still be
    /// ending (what it holds then is bounded by the call slots, not by the relay).
    pub fn closed_by_relay(&self, id: u32) {
        self.lock().open.remove(&id);
    }

    /// Whether a line about one of the session's channels may be logged now, and what it
    /// adds about those left out.
    pub fn may_log(&self) -> Option<LeftOut> {
        self.lock().lines.take()
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().open.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_past_the_cap_are_refused_until_one_closes_either_way() {
        let channels = Arc::new(OpenChannels::default());
        let a = channels.admit(1, 2);
        let b = channels.admit(2, 2);
        assert!(a.is_some() && b.is_some());
        assert!(channels.admit(3, 2).is_none(), "a third of two");
        // The relay's close frees the place at once; the task's end later changes nothing.
        channels.closed_by_relay(1);
        let c = channels.admit(3, 2);
        assert!(c.is_some());
        drop(a);
        assert_eq!(channels.len(), 2);
        // The agent's own close (the task's end) frees it too.
        drop(b);
        assert_eq!(channels.len(), 1);
        assert!(channels.admit(4, 2).is_some());
    }

    #[test]
    fn a_late_place_does_not_free_a_new_channel_with_the_same_id() {
        let channels = Arc::new(OpenChannels::default());
        let first = channels.admit(7, 4);
        channels.closed_by_relay(7);
        let _second = channels.admit(7, 4);
        drop(first);
        assert_eq!(channels.len(), 1, "the second channel 7 is still open");
    }
}
