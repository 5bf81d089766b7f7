//! The connections the agent serves right now, swapped whole on reload. A call keeps
//! the context it started with, so calls under way finish on the settings they began on.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use crate::call::CallContext;
use crate::config::Connection;
use crate::metrics::AgentMetrics;

pub type Contexts = BTreeMap<String, Arc<CallContext>>;

/// `reason` is the build's error with its causes: reqwest's own text is only "builder error".
/// Held as text, not as a source, so `{:#}` does not print the causes twice.
#[derive(Debug, thiserror::Error)]
#[error("connection {name}: cannot build its HTTP client: {reason}")]
pub struct BuildError {
    pub name: String,
    pub reason: String,
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
    /// name (see [`CallContext::succeeding`]), over the system roots as they are now (what
    /// needs them is warned of when there are none). Nothing changes here until
    /// [`Self::replace`].
    pub fn build(
        &self,
        connections: &BTreeMap<String, Arc<Connection>>,
    ) -> Result<Contexts, BuildError> {
        crate::call::client_tls::read_system_roots_again();
        crate::call::system_roots_warning::warn_where_missing(
            connections.values().map(|c| c.as_ref()),
        );
        let current = self.snapshot();
        connections
            .iter()
            .map(|(name, conn)| {
                let previous = current.get(name).map(|c| c.as_ref());
                CallContext::succeeding(conn.clone(), previous, &self.metrics)
                    .map(|ctx| (name.clone(), Arc::new(ctx)))
                    .map_err(|e| BuildError {
                        name: name.clone(),
                        reason: crate::call::error_chain(&e),
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

#[cfg(test)]
mod tests {

    #[derive(Debug, thiserror::Error)]
    #[error("{text}")]
    struct Nested {
        text: &'static str,
        source: Option<Box<Nested>>,
    }

    #[test]
    fn causes_are_listed_once_each() {
        let inner = Nested {
            text: "invalid peer certificate",
            source: None,
        };
        let twice = Nested {
            text: "builder error",
            source: Some(Box::new(inner)),
        };
        let outer = Nested {
            text: "builder error",
            source: Some(Box::new(twice)),
        };
        assert_eq!(
            crate::call::error_chain(&outer),
            "builder error: invalid peer certificate"
        );
    }
}
