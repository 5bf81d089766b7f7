//! The connections the agent serves right now, swapped whole on reload. A call keeps
//! the context it started with, so calls under way finish on the settings they began on.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use crate::call::CallContext;
use crate::config::Connection;

pub type Contexts = BTreeMap<String, Arc<CallContext>>;

#[derive(Debug, thiserror::Error)]
#[error("connection {name}: cannot build its HTTP client: {source}")]
pub struct BuildError {
    pub name: String,
    pub source: reqwest::Error,
}

#[derive(Default)]
pub struct CallTable(RwLock<Arc<Contexts>>);

impl CallTable {
    /// Builds a context per connection, each succeeding this table's context of the same
    /// name (see [`CallContext::succeeding`]). Nothing changes here until [`Self::replace`].
    pub fn build(
        &self,
        connections: &BTreeMap<String, Arc<Connection>>,
    ) -> Result<Contexts, BuildError> {
        let current = self.snapshot();
        connections
            .iter()
            .map(|(name, conn)| {
                let previous = current.get(name).map(|c| c.as_ref());
                CallContext::succeeding(conn.clone(), previous)
                    .map(|ctx| (name.clone(), Arc::new(ctx)))
                    .map_err(|source| BuildError {
                        name: name.clone(),
                        source,
                    })
            })
            .collect()
    }

    pub fn replace(&self, contexts: Contexts) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(contexts);
    }

    pub fn snapshot(&self) -> Arc<Contexts> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn get(&self, name: &str) -> Option<Arc<CallContext>> {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    pub fn names(&self) -> Vec<String> {
        self.snapshot().keys().cloned().collect()
    }
}
