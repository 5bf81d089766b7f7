//! The daemon put together: the call table, the config watch and its reloads (SIGHUP
//! or the local socket), the status socket, metrics and the tunnel, stopped by one token.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::signal::unix::{Signal, SignalKind};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::call_table::{BuildError, CallTable};
use crate::config::AgentConfig;
use crate::metrics::AgentMetrics;
use crate::reload::Reloader;
use crate::status::StatusServer;
use crate::tunnel::{self, TunnelState};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Connection(#[from] BuildError),
    /// The cause is in the message and not a `source`, so a `{:#}` chain says it once.
    #[error("metrics_listen {addr}: {error}")]
    Metrics {
        addr: std::net::SocketAddr,
        error: std::io::Error,
    },
}

/// Runs until `shutdown`. With `config_path`, SIGHUP and `postern reload` re-read that file.
pub async fn run(
    config: AgentConfig,
    config_path: Option<PathBuf>,
    shutdown: CancellationToken,
    state: watch::Sender<TunnelState>,
) -> Result<(), DaemonError> {
    let hangup = config_path.as_ref().and_then(|_| listen_for_hangup());
    run_with_hangup(config, config_path, hangup, shutdown, state).await
}

/// Starts listening for SIGHUP (needs a Tokio runtime). Until then SIGHUP's default action
/// ends the process, which systemd counts as a clean exit and does not restart; a SIGHUP
/// that arrives after this but before the daemon is ready reloads the config once it is.
pub fn listen_for_hangup() -> Option<Signal> {
    postern_process::listen_or_warn(SignalKind::hangup(), "SIGHUP", "use `postern reload`")
}

/// Like [`run`], with SIGHUP already listened for ([`listen_for_hangup`]) by a caller that
/// does so before the slow part of the start.
pub async fn run_with_hangup(
    config: AgentConfig,
    config_path: Option<PathBuf>,
    hangup: Option<Signal>,
    shutdown: CancellationToken,
    state: watch::Sender<TunnelState>,
) -> Result<(), DaemonError> {
    let metrics = Arc::new(AgentMetrics::default());
    let calls = Arc::new(CallTable::new(metrics.clone()));
    calls.replace(calls.build(&config.connections)?);
    let tasks = TaskTracker::new();
    // Asked for explicitly, so a port that cannot be had stops the start.
    if let Some(addr) = config.metrics_listen {
        let listener = crate::metrics::bind(addr)
            .await
            .map_err(|error| DaemonError::Metrics { addr, error })?;
        info!(%addr, "serving Prometheus metrics at /metrics");
        tasks.spawn(crate::metrics::serve(
            listener,
            metrics.clone(),
            state.subscribe(),
            shutdown.clone(),
        ));
    }
    let socket = config.status_socket.clone();
    // The status socket answers through a stop's drain, until the tunnel is done.
    let tunnel_done = CancellationToken::new();
    let (config_tx, config_rx) = watch::channel(Arc::new(config));
    let reloader = config_path.map(|path| {
        Arc::new(Reloader::new(
            path,
            config_tx,
            calls.clone(),
            metrics.clone(),
        ))
    });
    // Status is a convenience: without its socket the tunnel still runs.
    match crate::status::bind(&socket) {
        Ok(bound) => {
            let server = StatusServer {
                state: state.subscribe(),
                config: config_rx.clone(),
                calls: calls.clone(),
                reloader: reloader.clone(),
            };
            tasks.spawn(server.serve(bound, socket, shutdown.clone(), tunnel_done.clone()));
        }
        // Most likely this config run twice: the two take the session from each other.
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            warn!(socket = %socket.display(), error = %e, "status socket unavailable: another agent runs with this status_socket, most likely with this very config; two agents with one token take the relay session from each other, and `postern status` and `postern reload` reach only the other one: stop one of them (or give each its own config, token and status_socket)")
        }
        Err(e) => {
            warn!(socket = %socket.display(), error = %e, "status socket unavailable; `postern status` and `postern reload` will not answer")
        }
    }
    if let (Some(reloader), Some(hangup)) = (reloader, hangup) {
        tasks.spawn(reload_on_sighup(reloader, hangup, shutdown.clone()));
    }
    // Loaded, and every port it was asked for is bound: reaching the relay may take long.
    postern_process::service_manager::ready(&said(&state.borrow(), &config_rx.borrow().relays));
    if postern_process::service_manager::listening() {
        tasks.spawn(tell_service_manager(
            state.subscribe(),
            config_rx.clone(),
            shutdown.clone(),
        ));
    }
    tasks.spawn(postern_process::service_manager::feed_watchdog(
        shutdown.clone().cancelled_owned(),
    ));
    tunnel::run(config_rx, calls, shutdown.clone(), state).await;
    tunnel_done.cancel();
    tasks.close();
    tasks.wait().await;
    Ok(())
}

async fn reload_on_sighup(reloader: Arc<Reloader>, mut hup: Signal, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = hup.recv() => {
                info!("SIGHUP: reloading the config");
                // The outcome is logged by the reloader.
                let _ = reloader.reload().await;
            }
        }
    }
}

/// Keeps `systemctl status` saying whether the tunnel is up, and why not.
async fn tell_service_manager(
    mut state: watch::Receiver<TunnelState>,
    config: watch::Receiver<Arc<AgentConfig>>,
    shutdown: CancellationToken,
) {
    let mut last = String::new();
    loop {
        let now = said(&state.borrow_and_update(), &config.borrow().relays);
        if now != last {
            postern_process::service_manager::status(&now);
            last = now;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = state.changed() => if changed.is_err() { return },
        }
    }
}

/// The tunnel's state in a line, as `postern status` begins.
fn said(state: &TunnelState, relays: &[String]) -> String {
    let relay = state.relay.clone().unwrap_or_else(|| relays.join(", "));
    match (state.connected, &state.agent_name, &state.last_error) {
        (true, _, _) if state.draining => {
            format!("connected to {relay}; draining to reconnect with new settings")
        }
        (true, Some(name), _) => format!("connected to {relay} as {name}"),
        (true, None, _) => format!("connected to {relay}"),
        (false, _, Some(error)) => format!("NOT connected to {relay}: {error}"),
        (false, _, None) => format!("connecting to {relay}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_line_names_the_relay_it_is_with_once_connected() {
        let relays = ["a:2222".to_owned(), "b:2222".to_owned()];
        let mut state = TunnelState::default();
        assert_eq!(said(&state, &relays), "connecting to a:2222, b:2222");
        state.last_error = Some("cannot reach the relay at a:2222: refused".into());
        assert_eq!(
            said(&state, &relays),
            "NOT connected to a:2222, b:2222: cannot reach the relay at a:2222: refused"
        );
        state.connected = true;
        state.relay = Some("b:2222".into());
        state.agent_name = Some("warehouse-1".into());
        assert_eq!(said(&state, &relays), "connected to b:2222 as warehouse-1");
        state.draining = true;
        assert_eq!(
            said(&state, &relays),
            "connected to b:2222; draining to reconnect with new settings"
        );
    }
}
