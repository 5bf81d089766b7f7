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
use crate::tls::TlsReloader;
use crate::{api, api_server, idle_channels, revocation_watch, ssh_server};

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
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
}

/// Serves until `shutdown` is cancelled, then lets in-flight calls finish
/// for up to `config.shutdown_grace` and ends every agent session.
pub async fn run(
    mut config: RelayConfig,
    listeners: RelayListeners,
    shutdown: CancellationToken,
) -> Result<(), RelayError> {
    // What is really bound (port 0 in tests) decides, e.g., whether /metrics is open.
    if let Ok(addr) = listeners.api.local_addr() {
        config.api_listen = addr;
    }
    config.validate()?;
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some(Arc::new(TlsReloader::load(cert, key)?)),
        _ => None,
    };
    let host_key = host_key::load_or_create(&config.state_dir)?;
    let fingerprint = host_key::fingerprint(&host_key);
    let store = Arc::new(SqliteStore::open_in(&config.state_dir)?);
    let grace = config.shutdown_grace;
    let ctx = Arc::new(RelayContext::new(config, store, shutdown.clone()));
    let ssh_config = Arc::new(ssh_server::russh_config(host_key));

    // Listen for SIGHUP before saying we are up, so an early one reloads rather
    // than kills (also without TLS: `systemctl reload` must not stop the relay).
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::hangup()) {
            Ok(hangups) => {
                ctx.tasks
                    .spawn(reload_tls_on_sighup(tls.clone(), hangups, shutdown.clone()));
            }
            Err(e) => warn!(error = %e, "cannot listen for SIGHUP; TLS files will not be reloaded"),
        }
    }
    info!(
        ssh = %listeners.ssh.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        api = %listeners.api.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        %fingerprint,
        tls = tls.is_some(),
        "relay listening"
    );
    ctx.tasks
        .spawn(ssh_server::serve(ctx.clone(), listeners.ssh, ssh_config));
    ctx.tasks.spawn(revocation_watch::run(ctx.clone()));
    ctx.tasks.spawn(idle_channels::run(ctx.clone()));

    let app = api::router(ctx.clone());
    let api_config = ctx.config.clone();
    let served = api_server::serve(listeners.api, app, &api_config, tls, shutdown.clone());
    tokio::select! {
        _ = served => {}
        // Graceful shutdown waits for open calls; a stuck one must not hold the relay forever.
        _ = async { shutdown.cancelled().await; tokio::time::sleep(grace).await } => {
            warn!("in-flight API calls did not finish within the grace period");
        }
    };
    shutdown.cancel();
    ctx.tasks.close();
    if tokio::time::timeout(grace, ctx.tasks.wait()).await.is_err() {
        warn!("some sessions did not end within the grace period");
    }
    info!("relay stopped");
    Ok(())
}

/// SIGHUP rereads the certificate and key; connections and agent sessions stay.
async fn reload_tls_on_sighup(
    tls: Option<Arc<TlsReloader>>,
    mut hangups: tokio::signal::unix::Signal,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            got = hangups.recv() => if got.is_none() { return },
        }
        match tls.as_ref().map(|t| t.reload()) {
            None => info!("SIGHUP: no TLS files configured, nothing to reload"),
            Some(Ok(())) => info!("tls certificate reloaded"),
            Some(Err(e)) => {
                warn!(error = %e, "tls reload failed; keeping the previous certificate")
            }
        }
    }
}
