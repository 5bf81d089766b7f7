//! Reloading the config under a running daemon (SIGHUP or `postern reload`): a config
//! that fails validation is refused whole; a good one is swapped in without a reconnect.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tokio::sync::watch;
use tracing::{error, info};

use crate::call_table::CallTable;
use crate::config::AgentConfig;
use crate::metrics::AgentMetrics;

/// `path` from the current folder (which the daemon never changes); as it is if there is none.
fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_owned())
}

/// What the tunnel needs from the config; a change here means a new session.
pub fn session_settings_differ(a: &AgentConfig, b: &AgentConfig) -> bool {
    a.relays != b.relays
        || a.relay_fingerprint != b.relay_fingerprint
        || a.token != b.token
        || a.proxy != b.proxy
}

/// How the last reload went, for `postern status`: a refused one means the file on disk
/// is not the config in force, and the next start would refuse it too.
#[derive(Debug, Clone)]
pub struct ReloadOutcome {
    pub at: SystemTime,
    /// Why the file was refused; `None` when it was applied.
    pub refused: Option<String>,
}

pub struct Reloader {
    path: PathBuf,
    config: watch::Sender<Arc<AgentConfig>>,
    calls: Arc<CallTable>,
    metrics: Arc<AgentMetrics>,
    last: Mutex<Option<ReloadOutcome>>,
    /// One reload at a time: two at once could swap in the older file last.
    running: tokio::sync::Mutex<()>,
}

impl Reloader {
    /// The config file it reloads, absolute.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn new(
        path: PathBuf,
        config: watch::Sender<Arc<AgentConfig>>,
        calls: Arc<CallTable>,
        metrics: Arc<AgentMetrics>,
    ) -> Self {
        Self {
            // Absolute, so a CLI started elsewhere can tell whether it names this file.
            path: absolute(&path),
            config,
            calls,
            metrics,
            last: Mutex::new(None),
            running: tokio::sync::Mutex::new(()),
        }
    }

    /// The last reload's outcome (by SIGHUP or `postern reload`); `None` before the first.
    pub fn last(&self) -> Option<ReloadOutcome> {
        self.last.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Holds off reloads while the caller reads the config and the call contexts, so
    /// the two it reads belong together.
    pub async fn hold(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.running.lock().await
    }

    /// Loads, validates and applies the config file. `Ok` lists what changed; `Err`
    /// says why the file was refused (the running config stays in force).
    pub async fn reload(&self) -> Result<Vec<String>, String> {
        let _one_at_a_time = self.running.lock().await;
        let path = self.path.clone();
        let loaded = tokio::task::spawn_blocking(move || AgentConfig::load(&path))
            .await
            .map_err(|e| format!("reload task failed: {e}"))
            .and_then(|r| r.map_err(|e| e.to_string()));
        let result = match loaded {
            Ok(new) => self.apply(new),
            Err(reason) => Err(reason),
        };
        self.metrics.config_reloaded(result.is_ok());
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(ReloadOutcome {
            at: SystemTime::now(),
            refused: result.as_ref().err().cloned(),
        });
        match &result {
            Ok(changes) => {
                info!(config = %self.path.display(), changes = %changes.join("; "), "config reloaded")
            }
            Err(reason) => {
                error!(config = %self.path.display(), %reason, "config reload refused; the running config stays in force")
            }
        }
        result
    }

    fn apply(&self, new: AgentConfig) -> Result<Vec<String>, String> {
        let old = self.config.borrow().clone();
        // The running config was loaded from `run --config`'s path as given, maybe relative
        // (`a2/a2.sock`), a reload from the absolute path (`/tmp/x/a2/a2.sock`): compare
        // both made absolute alike, or an unchanged relative socket would refuse every reload.
        let (old_socket, new_socket) = (absolute(&old.status_socket), absolute(&new.status_socket));
        if new_socket != old_socket {
            // `postern status` and `reload` would look for the daemon where it is not.
            return Err(format!(
                "status_socket cannot change while the agent runs ({} → {}): restart the agent instead",
                old_socket.display(),
                new_socket.display()
            ));
        }
        if new.metrics_listen != old.metrics_listen {
            // The listener was bound at start; a new address would silently not be served.
            let show =
                |a: Option<std::net::SocketAddr>| a.map_or("none".to_owned(), |a| a.to_string());
            return Err(format!(
                "metrics_listen cannot change while the agent runs ({} → {}): restart the agent instead",
                show(old.metrics_listen),
                show(new.metrics_listen)
            ));
        }
        let contexts = self
            .calls
            .build(&new.connections)
            .map_err(|e| e.to_string())?;
        let mut changes = Vec::new();
        let added: Vec<_> = new
            .connections
            .keys()
            .filter(|n| !old.connections.contains_key(*n))
            .cloned()
            .collect();
        let removed: Vec<_> = old
            .connections
            .keys()
            .filter(|n| !new.connections.contains_key(*n))
            .cloned()
            .collect();
        if !added.is_empty() {
            changes.push(format!("connections added: {}", added.join(", ")));
        }
        if !removed.is_empty() {
            changes.push(format!("connections removed: {}", removed.join(", ")));
        }
        changes.push(format!(
            "{} connection(s) in force, key files read anew",
            new.connections.len()
        ));
        if session_settings_differ(&old, &new) {
            changes.push("relay, fingerprint, token or proxy changed: reconnecting".into());
        }
        self.calls.replace(contexts);
        self.config.send_replace(Arc::new(new));
        Ok(changes)
    }
}
