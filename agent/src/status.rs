//! The daemon's status on a local Unix socket (mode 0600, never on the network):
//! each connection to it gets one JSON report, which `postern status` prints.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::call::CallContext;
use crate::jwt::CacheState;
use crate::tunnel::TunnelState;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusReport {
    pub agent_version: String,
    pub relays: Vec<String>,
    pub connected: bool,
    /// RFC 3339.
    pub connected_since: Option<String>,
    pub agent_name: Option<String>,
    pub last_error: Option<String>,
    pub reconnects: u64,
    pub connections: BTreeMap<String, ConnectionStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConnectionStatus {
    pub calls_served: u64,
    pub calls_failed: u64,
    /// `none` (no cached token), `valid until <RFC 3339>`, `refreshing`, or `-` (not cached).
    pub token_cache: String,
}

pub fn report(
    state: &TunnelState,
    relays: &[String],
    calls: &BTreeMap<String, Arc<CallContext>>,
) -> StatusReport {
    let rfc3339 = |t| humantime::format_rfc3339_seconds(t).to_string();
    StatusReport {
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        relays: relays.to_vec(),
        connected: state.connected,
        connected_since: state.since.filter(|_| state.connected).map(rfc3339),
        agent_name: state.agent_name.clone(),
        last_error: state.last_error.clone(),
        reconnects: state.reconnects,
        connections: calls
            .iter()
            .map(|(name, ctx)| {
                let token_cache = match ctx.bearer.as_ref().map(|b| b.cache_state()) {
                    None => "-".to_owned(),
                    Some(CacheState::Empty) => "none".to_owned(),
                    Some(CacheState::Refreshing) => "refreshing".to_owned(),
                    Some(CacheState::ValidFor(d)) => {
                        format!("valid until {}", rfc3339(std::time::SystemTime::now() + d))
                    }
                };
                let status = ConnectionStatus {
                    calls_served: ctx.served.load(Ordering::Relaxed),
                    calls_failed: ctx.failed.load(Ordering::Relaxed),
                    token_cache,
                };
                (name.clone(), status)
            })
            .collect(),
    }
}

/// Binds the socket (replacing a stale one) with mode 0600.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    // A live daemon on this socket answers; a dead one left a file behind.
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            format!("another agent answers on {}", path.display()),
        ));
    }
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

pub async fn serve(
    listener: UnixListener,
    path: PathBuf,
    state: watch::Receiver<TunnelState>,
    relays: Vec<String>,
    calls: Arc<BTreeMap<String, Arc<CallContext>>>,
    shutdown: CancellationToken,
) {
    loop {
        let mut stream = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    warn!(error = %e, "status socket accept failed");
                    continue;
                }
            },
        };
        let body =
            serde_json::to_vec(&report(&state.borrow(), &relays, &calls)).unwrap_or_default();
        let _ = stream.write_all(&body).await;
        let _ = stream.shutdown().await;
    }
    let _ = std::fs::remove_file(&path);
}
