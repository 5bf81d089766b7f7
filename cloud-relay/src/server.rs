//! `run`: the SSH listener, the API and the revocation watch on already-bound
//! listeners, until the shutdown token fires; then drain under a deadline.

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::RelayConfig;
use crate::context::RelayContext;
use crate::host_key::{self, HostKeyError};
use crate::store::{SqliteStore, StoreError};
use crate::{api, revocation_watch, ssh_server};

/// The two sockets a relay serves on, bound by the caller (tests use port 0).
pub struct RelayListeners {
    pub ssh: TcpListener,
    pub api: TcpListener,
}

impl RelayListeners {
    pub async fn bind(config: &RelayConfig) -> std::io::Result<Self> {
        Ok(Self {
            ssh: TcpListener::bind(config.ssh_listen).await?,
            api: TcpListener::bind(config.api_listen).await?,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    HostKey(#[from] HostKeyError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("API server failed: {0}")]
    Api(std::io::Error),
}

/// Serves until `shutdown` is cancelled, then lets in-flight calls finish
/// for up to `config.shutdown_grace` and ends every agent session.
pub async fn run(
    config: RelayConfig,
    listeners: RelayListeners,
    shutdown: CancellationToken,
) -> Result<(), RelayError> {
    let host_key = host_key::load_or_create(&config.state_dir)?;
    let fingerprint = host_key::fingerprint(&host_key);
    let store = Arc::new(SqliteStore::open_in(&config.state_dir)?);
    let grace = config.shutdown_grace;
    let ctx = Arc::new(RelayContext::new(config, store, shutdown.clone()));
    let ssh_config = Arc::new(ssh_server::russh_config(host_key));

    info!(
        ssh = %listeners.ssh.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        api = %listeners.api.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        %fingerprint,
        "relay listening"
    );
    ctx.tasks
        .spawn(ssh_server::serve(ctx.clone(), listeners.ssh, ssh_config));
    ctx.tasks.spawn(revocation_watch::run(ctx.clone()));

    let app = api::router(ctx.clone());
    let api_shutdown = shutdown.clone();
    let served = axum::serve(listeners.api, app)
        .with_graceful_shutdown(async move { api_shutdown.cancelled().await })
        .into_future();
    let api_result = tokio::select! {
        r = served => r,
        // Graceful shutdown waits for open calls; a stuck one must not hold the relay forever.
        _ = async { shutdown.cancelled().await; tokio::time::sleep(grace).await } => {
            warn!("in-flight API calls did not finish within the grace period");
            Ok(())
        }
    };
    shutdown.cancel();
    ctx.tasks.close();
    if tokio::time::timeout(grace, ctx.tasks.wait()).await.is_err() {
        warn!("some sessions did not end within the grace period");
    }
    info!("relay stopped");
    api_result.map_err(RelayError::Api)
}

use std::future::IntoFuture;
