//! The connections the agent serves right now, swapped whole on reload. A call keeps
//! the context it started with, so calls under way finish on the settings they began on.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use crate::call::CallContext;
use crate::config::Connection;
use crate::metrics::AgentMetrics;

pub type Contexts = BTreeMap<String, Arc<CallContext>>;

#[derive(Debug, thiserror::Error)]
#[error("connection {name}: cannot build its HTTP client: {source}")]
pub struct BuildError {
    pub name: String,
    pub source: reqwest::Error,
}

pub struct CallTable {
    current: RwLock<Arc<Contexts>>,
    metrics: Arc<AgentMetrics>,
}

impl CallTable {
    /// An empty table whose contexts will record into `metrics`.
    pub fn new(metrics: Arc<AgentMetrics>) -> Self {
        Self {
            current: RwLock::default(),
            metrics,
        }
    }

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
                CallContext::succeeding(conn.clone(), previous, &self.metrics)
                    .map(|ctx| (name.clone(), Arc::new(ctx)))
                    .map_err(|source| BuildError {
                        name: name.clone(),
                        source,
                    })
            })
            .collect()
    }

    pub fn replace(&self, contexts: Contexts) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(contexts);
    }

    pub fn snapshot(&self) -> Arc<Contexts> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn get(&self, name: &str) -> Option<Arc<CallContext>> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    pub fn names(&self) -> Vec<String> {
        self.snapshot().keys().cloned().collect()
    }
}
