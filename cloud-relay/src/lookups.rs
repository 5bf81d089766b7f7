//! The two lookups every call makes — the caller's API key and the agent by id or name —
//! kept in memory, so a call costs no store round trip; emptied whenever the store changes.
//!
//! Writes made through this relay empty it at once (`RelayContext::store_write`); writes by
//! another process (the CLI) move the store's change marker, which the revocation watch
//! polls every second. Only hits are kept: a wrong key always goes to the store.

use std::collections::HashMap;
use std::sync::Mutex;

use postern_protocol::SecretToken;

use crate::store::{AgentRecord, ApiKeyRecord};

#[derive(Default)]
pub struct Lookups {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Grows by one per clear, so a read that raced a clear does not put a stale hit back.
    generation: u64,
    /// By the key's hash: the key itself is not kept.
    api_keys: HashMap<[u8; 32], ApiKeyRecord>,
    /// By the id or name it was looked up with (the store's answer for that text).
    agents: HashMap<String, AgentRecord>,
}

/// The state of the cache when a store read began; pass it back with the result.
#[derive(Clone, Copy)]
pub struct Generation(u64);

impl Lookups {
    pub fn api_key(&self, key: &SecretToken) -> Result<ApiKeyRecord, Generation> {
        let inner = self.lock();
        inner
            .api_keys
            .get(&key.hash())
            .cloned()
            .ok_or(Generation(inner.generation))
    }

    pub fn remember_api_key(&self, seen: Generation, key: &SecretToken, record: &ApiKeyRecord) {
        let mut inner = self.lock();
        if inner.generation == seen.0 {
            inner.api_keys.insert(key.hash(), record.clone());
        }
    }

    pub fn agent(&self, id_or_name: &str) -> Result<AgentRecord, Generation> {
        let inner = self.lock();
        inner
            .agents
            .get(id_or_name)
            .cloned()
            .ok_or(Generation(inner.generation))
    }

    pub fn remember_agent(&self, seen: Generation, id_or_name: &str, record: &AgentRecord) {
        let mut inner = self.lock();
        if inner.generation == seen.0 {
            inner.agents.insert(id_or_name.to_owned(), record.clone());
        }
    }

    /// Forgets everything: the store has changed.
    pub fn clear(&self) {
        let mut inner = self.lock();
        inner.generation = inner.generation.wrapping_add(1);
        inner.api_keys.clear();
        inner.agents.clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use postern_protocol::SecretKind;
    use postern_protocol::api::ApiKeyScope;

    use super::*;
    use crate::secrets::new_token;

    fn record(name: &str) -> ApiKeyRecord {
        ApiKeyRecord {
            name: name.into(),
            scope: ApiKeyScope::Call,
            created_at: "2026-12-02T00:00:00Z".into(),
        }
    }

    #[test]
    fn keeps_hits_until_cleared() {
        let lookups = Lookups::default();
        let key = new_token(SecretKind::ApiKey);
        let Err(seen) = lookups.api_key(&key) else {
            panic!("empty cache")
        };
        lookups.remember_api_key(seen, &key, &record("k"));
        assert_eq!(lookups.api_key(&key).ok(), Some(record("k")));
        assert!(lookups.api_key(&new_token(SecretKind::ApiKey)).is_err());
        lookups.clear();
        assert!(lookups.api_key(&key).is_err());
    }

    #[test]
    fn a_read_that_raced_a_clear_is_not_kept() {
        let lookups = Lookups::default();
        let agent = AgentRecord {
            id: "id-1".into(),
            name: "plant".into(),
            created_at: "2026-12-02T00:00:00Z".into(),
            token_version: 1,
            old_token_until: None,
        };
        let Err(seen) = lookups.agent("plant") else {
            panic!("empty cache")
        };
        // A revocation lands while the store read is under way.
        lookups.clear();
        lookups.remember_agent(seen, "plant", &agent);
        assert!(lookups.agent("plant").is_err());
        let Err(seen) = lookups.agent("plant") else {
            panic!("still empty")
        };
        lookups.remember_agent(seen, "plant", &agent);
        assert_eq!(lookups.agent("plant").ok(), Some(agent));
        assert!(
            lookups.agent("id-1").is_err(),
            "kept only as it was asked for"
        );
    }
}
