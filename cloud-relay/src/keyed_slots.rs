//! Places counted per key, at most a limit each, given back when dropped: connections not
//! yet logged in per source address, connections per agent.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

#[derive(Clone)]
pub struct KeyedSlots<K> {
    limit: usize,
    held: Arc<Mutex<HashMap<K, usize>>>,
}

/// One place, given back when dropped.
pub struct KeyedSlot<K: Eq + Hash> {
    slots: Option<(KeyedSlots<K>, K)>,
}

impl<K: Eq + Hash + Clone> KeyedSlots<K> {
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            held: Arc::default(),
        }
    }

    /// A place for one more under `key`, or `None` when it holds the limit.
    pub fn take(&self, key: K) -> Option<KeyedSlot<K>> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let count = held.entry(key.clone()).or_default();
        if *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(KeyedSlot {
            slots: Some((self.clone(), key)),
        })
    }

    /// A place that counts against nothing (a key not held to the limit).
    pub fn unlimited() -> KeyedSlot<K> {
        KeyedSlot { slots: None }
    }

    /// Keys holding places now.
    pub fn keys(&self) -> usize {
        self.held.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

impl<K: Eq + Hash> Drop for KeyedSlot<K> {
    fn drop(&mut self) {
        let Some((slots, key)) = self.slots.take() else {
            return;
        };
        let mut held = slots.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = held.get_mut(&key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                held.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_key_gets_its_limit_and_others_are_not_touched() {
        let slots = KeyedSlots::new(3);
        let held: Vec<_> = (0..3).filter_map(|_| slots.take("a")).collect();
        assert_eq!(held.len(), 3);
        assert!(slots.take("a").is_none(), "a fourth under one key");
        assert!(slots.take("b").is_some(), "another key is not held up");
        drop(held);
        assert!(slots.take("a").is_some(), "places come back when dropped");
        assert_eq!(slots.keys(), 0, "no key is remembered once it holds none");
    }
}
