//! The places for calls under way on one connection: a call takes one or is refused at
//! once. A reload that changes how many there are counts the calls already under way.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

pub struct CallSlots {
    max: usize,
    /// Shared with the slots of the connection's contexts before and after a reload.
    taken: Arc<AtomicUsize>,
}

/// A call's place, given back as it drops.
pub struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, SeqCst);
    }
}

impl CallSlots {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max,
            taken: Arc::default(),
        })
    }

    /// `max` places counting the calls under way here: those keep their places, and new
    /// ones are refused until fewer than `max` are left. This one is left as it is, so a
    /// reload refused after building it changes nothing.
    pub fn succeeded_by(&self, max: usize) -> Arc<Self> {
        Arc::new(Self {
            max,
            taken: self.taken.clone(),
        })
    }

    /// A place, if fewer than `max` calls are under way.
    pub fn try_take(&self) -> Option<Slot> {
        self.taken
            .fetch_update(SeqCst, SeqCst, |taken| {
                (taken < self.max).then_some(taken + 1)
            })
            .ok()
            .map(|_| Slot(self.taken.clone()))
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
        let fewer = slots.succeeded_by(1);
        drop(a);
        assert!(fewer.try_take().is_none(), "one under way of one");
        assert!(
            slots.try_take().is_some(),
            "the old places are as they were"
        );
        drop(b);
        let c = fewer.try_take();
        assert!(c.is_some());
        let more = fewer.succeeded_by(3);
        let taken: Vec<_> = (0..2).filter_map(|_| more.try_take()).collect();
        assert_eq!(taken.len(), 2);
        assert!(more.try_take().is_none(), "a fourth of three");
    }
}
