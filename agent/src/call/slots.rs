//! The places for calls under way on one connection: a call takes one or is refused at
//! once, and a reload may change how many there are while calls hold theirs.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

pub struct CallSlots {
    max: AtomicUsize,
    taken: AtomicUsize,
}

/// A call's place, given back as it drops.
pub struct Slot(Arc<CallSlots>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.taken.fetch_sub(1, SeqCst);
    }
}

impl CallSlots {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max: AtomicUsize::new(max),
            taken: AtomicUsize::new(0),
        })
    }

    /// From now on at most `max` calls: those under way keep their places, and new ones
    /// are refused until fewer than `max` are left.
    pub fn resize(&self, max: usize) {
        self.max.store(max, SeqCst);
    }

    /// A place, if fewer than `max` calls are under way.
    pub fn try_take(self: &Arc<Self>) -> Option<Slot> {
        self.taken
            .fetch_update(SeqCst, SeqCst, |taken| {
                (taken < self.max.load(SeqCst)).then_some(taken + 1)
            })
            .ok()
            .map(|_| Slot(self.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::CallSlots;

    #[test]
    fn fewer_places_hold_back_new_calls_until_enough_have_ended() {
        let slots = CallSlots::new(2);
        let (a, b) = (slots.try_take(), slots.try_take());
        assert!(a.is_some() && b.is_some());
        assert!(slots.try_take().is_none(), "a third of two");
        slots.resize(1);
        drop(a);
        assert!(slots.try_take().is_none(), "one under way of one");
        drop(b);
        let c = slots.try_take();
        assert!(c.is_some());
        slots.resize(3);
        let more: Vec<_> = (0..2).filter_map(|_| slots.try_take()).collect();
        assert_eq!(more.len(), 2);
        assert!(slots.try_take().is_none(), "a fourth of three");
    }
}
