//! `run`: the SSH listener, the API and the revocation watch on already-bound
//! listeners, until the shutdown token fires; then drain under a deadline.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::signal::unix::{Signal, SignalKind};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

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

/// Connections the kernel holds for a listener until the relay accepts them (it clamps
/// this to `net.core.somaxconn`). Past the backlog a client's SYN is dropped and retried
/// after 1, 3, 7, 15 s…: after a relay restart thousands of agents connect at once, and
/// the relay takes only so many handshakes at a time (`MAX_UNAUTHENTICATED`).
const BACKLOG: u32 = 4096;

fn listen(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // As std's and tokio's own bind do: a restarted relay binds while old connections linger.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

impl RelayListeners {
    /// Both listeners; an error names the one that failed (`ssh_listen 0.0.0.0:2222: …`).
    pub async fn bind(config: &RelayConfig) -> std::io::Result<Self> {
        let bind = |what: &str, addr: std::net::SocketAddr| {
            listen(addr).map_err(|e| {
                let hint = privileged_port_hint(addr, &e);
                std::io::Error::new(e.kind(), format!("{what} {addr}: {e}{hint}"))
            })
        };
        Ok(Self {
            ssh: bind("ssh_listen", config.ssh_listen)?,
            api: bind("api_listen", config.api_listen)?,
        })
    }
}

/// A port below 1024 needs a capability the packaged unit does not grant.
fn privileged_port_hint(addr: std::net::SocketAddr, e: &std::io::Error) -> &'static str {
    if e.kind() == std::io::ErrorKind::PermissionDenied && addr.port() < 1024 {
        concat!(
            "; a port below 1024 needs CAP_NET_BIND_SERVICE: under the packaged unit, ",
            "`systemctl edit postern-relay` and add [Service] ",
            "AmbientCapabilities=CAP_NET_BIND_SERVICE and ",
            "CapabilityBoundingSet=CAP_NET_BIND_SERVICE, or keep a port above 1023 ",
            "behind a load balancer"
        )
    } else {
        ""
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    HostKey(#[from] HostKeyError),
    #[error("opening the store {}: {error}", path.display())]
    Store {
        path: std::path::PathBuf,
        error: StoreError,
    },
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error(transparent)]
    StateInUse(#[from] crate::state_lock::StateLockError),
}

/// How a relay is told to stop: `stop` begins the drain (no new connections, calls
/// under way finish within `shutdown_grace`); `hurry` (a second signal) ends it at once.
#[derive(Clone, Default)]
pub struct Shutdown {
    pub stop: CancellationToken,
    pub hurry: CancellationToken,
}

/// Once the calls are done (or given up on), how long agents get to be told and
/// disconnected; what bounds the exit after a second signal.
pub const SESSIONS_END_LIMIT: Duration = Duration::from_secs(3);

/// Serves until `shutdown` is cancelled, then lets in-flight calls finish
/// for up to `config.shutdown_grace` and ends every agent session.
pub async fn run(
    config: RelayConfig,
    listeners: RelayListeners,
    shutdown: CancellationToken,
) -> Result<(), RelayError> {
    let stop = Shutdown {
        stop: shutdown,
        hurry: CancellationToken::new(),
    };
    run_with(config, listeners, stop, listen_for_hangup()).await
}

/// Starts listening for SIGHUP (needs a Tokio runtime). Until then SIGHUP's default
/// action ends the process, which systemd counts as a clean stop and does not restart; one
/// that arrives after this, while the relay starts, reloads once it serves.
pub fn listen_for_hangup() -> Option<Signal> {
    postern_process::listen_or_warn(
        SignalKind::hangup(),
        "SIGHUP",
        "TLS files will not be reloaded",
    )
}

/// Like [`run`], with SIGHUP already listened for ([`listen_for_hangup`]) by a caller that
/// does so before the slow part of the start, and a second signal that ends the drain.
pub async fn run_with(
    mut config: RelayConfig,
    listeners: RelayListeners,
    shutdown: Shutdown,
    hangups: Option<Signal>,
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
    // Before the host key: two relays starting on a new folder would each make one.
    host_key::ensure_state_dir(&config.state_dir).map_err(|error| HostKeyError::StateDir {
        path: config.state_dir.clone(),
        error,
    })?;
    let _state_lock = crate::state_lock::hold(&config.state_dir)?;
    let key_file = config.state_dir.join(host_key::HOST_KEY_FILE);
    let key_was_there = key_file.exists();
    let host_key = host_key::load_or_create(&config.state_dir)?;
    let fingerprint = host_key::fingerprint(&host_key);
    // `load_or_create` has made the state folder (or narrowed it) already.
    let db = config.state_dir.join(crate::store::sqlite::DB_FILE);
    let store = SqliteStore::open(&db).map_err(|error| RelayError::Store {
        path: db.clone(),
        error,
    })?;
    // Calls need no writes and go on (Under faults), but every change is refused, a revoke
    // too: said at once, not first at the revoke.
    if store.read_only() {
        let file = db.display().to_string();
        error!(%file, "the store is read-only to this user: calls are served, but agents and API keys cannot be created, revoked or rotated; give the file, its -wal and -shm files and its folder to the user the relay runs as (chown), mode 0600, or mount its disk read-write, and restart (under the packaged unit a state_dir outside /var/lib/postern-relay also needs ReadWritePaths= in a drop-in: systemctl edit postern-relay)");
    }
    // A key made now beside agents already enrolled (a store restored or moved without its
    // key): each of them has the old one pinned, and refuses this relay until re-pinned.
    if !key_was_there {
        let enrolled = crate::store::Store::list_agents(&store).map_or(0, |agents| agents.len());
        if enrolled > 0 {
            error!(
                key = %key_file.display(),
                %fingerprint,
                enrolled,
                "the host key was missing and a new one was made, but this store has agents enrolled: those that pinned the key that was here refuse this relay until each is given the new fingerprint (relay_fingerprint); if the key was lost (the store restored or moved without it), stop the relay and put the old key back from a backup"
            );
        }
    }
    let store = Arc::new(store);
    let grace = config.shutdown_grace;
    // The context's token ends agent sessions and the background tasks: only once the
    // calls under way, which travel through those sessions, are done.
    let sessions_end = CancellationToken::new();
    let ssh_config = Arc::new(ssh_server::russh_config(
        host_key,
        config.answer_buffer_per_agent,
    ));
    let ctx = Arc::new(RelayContext::new(config, store, sessions_end.clone()));

    if let Some(at) = tls.as_ref().and_then(|t| t.not_after()) {
        ctx.metrics.tls_certificate_expires(at);
    }
    if let Some(hangups) = hangups {
        ctx.tasks
            .spawn(reload_tls_on_sighup(tls.clone(), hangups, ctx.clone()));
    }
    let ssh_at = listeners
        .ssh
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let api_at = listeners
        .api
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    info!(
        ssh = %ssh_at,
        api = %api_at,
        %fingerprint,
        tls = tls.is_some(),
        "relay listening"
    );
    // Both ports are bound, the store and the host key loaded: what comes now queues in
    // the listeners' backlogs until the tasks below take it.
    let serving = format!(
        "serving agents on {ssh_at} (SSH) and calls on {api_at} ({})",
        if tls.is_some() { "HTTPS" } else { "HTTP" }
    );
    postern_process::service_manager::ready(&serving);
    ctx.tasks
        .spawn(postern_process::service_manager::feed_watchdog(
            shutdown.stop.clone().cancelled_owned(),
        ));
    if postern_process::service_manager::listening() {
        ctx.tasks.spawn(tell_agents_online(
            ctx.clone(),
            serving,
            shutdown.stop.clone(),
        ));
    }
    ctx.tasks.spawn(ssh_server::serve(
        ctx.clone(),
        listeners.ssh,
        ssh_config,
        shutdown.stop.clone(),
    ));
    ctx.tasks.spawn(revocation_watch::run(ctx.clone()));
    ctx.tasks.spawn(idle_channels::run(ctx.clone()));

    let app = api::router(ctx.clone());
    let api_config = ctx.config.clone();
    // Boxed, not pinned on the stack, so it can be dropped before the sessions end.
    let mut served = Box::pin(api_server::serve(
        listeners.api,
        app,
        &api_config,
        tls,
        shutdown.stop.clone(),
    ));
    // The server ends on its own only once stopped and drained; a finished future must
    // not be polled again.
    let mut drained = tokio::select! {
        _ = &mut served => true,
        _ = shutdown.stop.cancelled() => false,
    };
    // One deadline for the whole drain, so the relay stops within what its unit allows.
    let deadline = Instant::now() + grace;
    let mut hurried = false;
    if !drained {
        tokio::select! {
            _ = &mut served => drained = true,
            _ = tokio::time::sleep_until(deadline) => {
                warn!("in-flight API calls did not finish within the grace period; cutting them off");
            }
            _ = shutdown.hurry.cancelled() => {
                warn!("second signal: cutting off the calls under way");
                hurried = true;
            }
        }
    }
    // Calls still waiting for their answer's head are answered 502 and given a moment to
    // be written; then dropping the API server ends the connections still open (answers
    // under way are cut off).
    ctx.cutting_off
        .store(true, std::sync::atomic::Ordering::SeqCst);
    ctx.cut_off_calls.cancel();
    if !drained {
        let _ = tokio::time::timeout(CUT_OFF_ANSWERS_WRITE, &mut served).await;
    }
    drop(served);
    sessions_end.cancel();
    ctx.tasks.close();
    let now = Instant::now();
    let end_by = if hurried {
        now + SESSIONS_END_LIMIT
    } else {
        deadline.max(now + SESSIONS_END_LIMIT)
    };
    if tokio::time::timeout_at(end_by, ctx.tasks.wait())
        .await
        .is_err()
    {
        warn!("some sessions did not end in time");
    }
    info!("relay stopped");
    Ok(())
}

/// How long the 502s of calls the shutdown cut off have to reach their callers before the
/// API server's connections are dropped.
const CUT_OFF_ANSWERS_WRITE: Duration = Duration::from_millis(500);

/// SIGHUP rereads the certificate and key; connections and agent sessions stay. Each
/// line says so, since admins send it (`systemctl reload`) expecting relay.toml reread.
async fn reload_tls_on_sighup(
    tls: Option<Arc<TlsReloader>>,
    mut hangups: Signal,
    ctx: Arc<RelayContext>,
) {
    loop {
        tokio::select! {
            _ = ctx.shutdown.cancelled() => return,
            got = hangups.recv() => if got.is_none() { return },
        }
        match tls.as_ref().map(|t| t.reload().map(|()| t.not_after())) {
            None => info!(
                "SIGHUP: no TLS files configured, nothing reloaded; SIGHUP rereads only tls_cert and tls_key, other relay.toml settings take a restart"
            ),
            Some(Ok(not_after)) => {
                if let Some(at) = not_after {
                    ctx.metrics.tls_certificate_expires(at);
                }
                info!(
                    "SIGHUP: tls certificate reloaded from tls_cert and tls_key; other relay.toml settings take a restart"
                )
            }
            Some(Err(e)) => warn!(
                error = %e,
                "SIGHUP: tls reload failed; keeping the previous certificate; other relay.toml settings take a restart"
            ),
        }
    }
}

/// Pause before accepting again after a failure: EMFILE (out of file descriptors) and
/// the like fail again at once, so retrying at once would spin a core.
pub(crate) const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// A run of failed accepts is logged once, not ten times a second while it lasts.
#[derive(Default)]
pub(crate) struct AcceptErrors {
    failing: u64,
    logged: u64,
}

impl AcceptErrors {
    fn failed(&mut self, listener: &'static str, e: &std::io::Error) {
        self.failing += 1;
        if self.failing == 1 {
            self.logged += 1;
            warn!(listener, error = %e, "accept failed; retrying every 100 ms (logged again only once it works)");
        }
    }

    fn succeeded(&mut self, listener: &'static str) {
        if self.failing > 0 {
            info!(
                listener,
                failures = self.failing,
                "accepting connections again"
            );
            self.failing = 0;
        }
    }
}

/// The next accepted connection, or `None` once `stop` fires; failures pause and retry.
pub(crate) async fn accept_next<T, F, Fut>(
    listener: &'static str,
    errors: &mut AcceptErrors,
    stop: &CancellationToken,
    mut accept: F,
) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = std::io::Result<T>>,
{
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return None,
            accepted = accept() => accepted,
        };
        match accepted {
            Ok(connection) => {
                errors.succeeded(listener);
                return Some(connection);
            }
            Err(e) => {
                errors.failed(listener, &e);
                tokio::select! {
                    _ = stop.cancelled() => return None,
                    _ = tokio::time::sleep(ACCEPT_RETRY) => {}
                }
            }
        }
    }
}

/// Keeps `systemctl status` saying how many agents are online, checked every few seconds.
async fn tell_agents_online(ctx: Arc<RelayContext>, serving: String, stop: CancellationToken) {
    let mut told = 0;
    let mut every = tokio::time::interval(AGENTS_ONLINE_EVERY);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = every.tick() => {}
        }
        let online = ctx.registry.online();
        if online != told {
            let agents = if online == 1 { "agent" } else { "agents" };
            postern_process::service_manager::status(&format!(
                "{serving}; {online} {agents} online"
            ));
            told = online;
        }
    }
}

/// How often `systemctl status`'s count of agents online is brought up to date.
const AGENTS_ONLINE_EVERY: Duration = Duration::from_secs(2);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_refused_low_port_gets_the_capability_hint() {
        let denied = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        let in_use = std::io::Error::from(std::io::ErrorKind::AddrInUse);
        let at = |port| std::net::SocketAddr::from(([0, 0, 0, 0], port));
        assert!(privileged_port_hint(at(443), &denied).contains("CAP_NET_BIND_SERVICE"));
        assert_eq!(privileged_port_hint(at(1024), &denied), "");
        assert_eq!(privileged_port_hint(at(443), &in_use), "");
    }

    #[tokio::test]
    async fn failing_accepts_pause_log_once_and_recover() {
        let mut errors = AcceptErrors::default();
        let stop = CancellationToken::new();
        let mut tries = 0u32;
        let started = std::time::Instant::now();
        let got = accept_next("test", &mut errors, &stop, || {
            tries += 1;
            let n = tries;
            async move {
                if n <= 5 {
                    Err(std::io::Error::from_raw_os_error(24)) // EMFILE
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        assert_eq!(got, Some(6));
        assert!(
            started.elapsed() >= ACCEPT_RETRY * 5,
            "retried without pausing: {:?}",
            started.elapsed()
        );
        assert_eq!(errors.logged, 1, "one log line for the run of failures");
        assert_eq!(errors.failing, 0, "the run ended with the success");

        // A new run of failures is logged again, and stop ends the wait.
        let mut again = 0u32;
        let none: Option<u32> = accept_next("test", &mut errors, &stop, || {
            again += 1;
            if again == 2 {
                stop.cancel();
            }
            async { Err(std::io::Error::from_raw_os_error(24)) }
        })
        .await;
        assert_eq!(none, None);
        assert_eq!(errors.logged, 2, "the new run was logged");
    }

    #[tokio::test]
    async fn stop_ends_a_run_of_failures_at_once() {
        let mut errors = AcceptErrors::default();
        let stop = CancellationToken::new();
        let stopper = stop.clone();
        let mut tries = 0u32;
        let started = std::time::Instant::now();
        let got: Option<()> = accept_next("test", &mut errors, &stop, || {
            tries += 1;
            if tries == 3 {
                stopper.cancel();
            }
            async { Err(std::io::Error::from_raw_os_error(24)) }
        })
        .await;
        assert_eq!(got, None);
        assert_eq!(errors.logged, 1);
        assert!(started.elapsed() < Duration::from_secs(1));
    }
}
