//! The daemon's local Unix socket (mode 0600, never on the network): a client writes
//! one command line, `status`, `reload` or `test NAME [DIGEST]`, and reads one JSON answer.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::warn;

use crate::call_table::{CallTable, Contexts};
use crate::config::AgentConfig;
use crate::connection_test::{self, TestReport};
use crate::jwt::CacheState;
use crate::reload::{ReloadOutcome, Reloader};
use crate::tunnel::TunnelState;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusReport {
    pub agent_version: String,
    pub relays: Vec<String>,
    pub connected: bool,
    /// Which of `relays` the session is with, while connected. Absent from agents from
    /// before 2026-12-08.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connected_to: Option<String>,
    /// RFC 3339.
    pub connected_since: Option<String>,
    pub agent_name: Option<String>,
    pub last_error: Option<String>,
    pub reconnects: u64,
    pub connections: BTreeMap<String, ConnectionStatus>,
    /// The [`file_digest`](crate::config::file_digest) of the config file in force.
    #[serde(default)]
    pub config_digest: Option<String>,
    /// The config file the agent runs (and reloads), absolute.
    #[serde(default)]
    pub config_file: Option<PathBuf>,
    /// Taking no new calls while those under way finish (stopping, or reconnecting with
    /// new settings).
    #[serde(default)]
    pub draining: bool,
    /// The agent is stopping: it answers here until its calls under way are done.
    #[serde(default)]
    pub stopping: bool,
    /// The last reload (SIGHUP or `postern reload`); none before the first, and from
    /// agents older than 2026-12-07.
    #[serde(default)]
    pub last_reload: Option<LastReload>,
}

/// How the last reload went. A refused one leaves the config loaded before in force, so
/// the file on disk is not what runs (and a restart would refuse it too).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LastReload {
    /// RFC 3339.
    pub at: String,
    pub ok: bool,
    /// Why the file was refused, when not `ok`.
    #[serde(default)]
    pub error: Option<String>,
}

impl From<ReloadOutcome> for LastReload {
    fn from(outcome: ReloadOutcome) -> Self {
        Self {
            at: humantime::format_rfc3339_seconds(outcome.at).to_string(),
            ok: outcome.refused.is_none(),
            error: outcome.refused,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConnectionStatus {
    pub calls_served: u64,
    pub calls_failed: u64,
    /// `none` (no cached token), `valid until <RFC 3339>`, `refreshing`, or `-` (not cached).
    pub token_cache: String,
    /// Why the last try to exchange a token, or to sign one that is reused, failed: the
    /// calls' error and the log's, without the token URL's query. Also a refresh that
    /// failed while the token still serves (see [`TokenFailure::token_used_until`]).
    /// Cleared by a token.
    #[serde(default)]
    pub token_failure: Option<TokenFailure>,
    /// A pause the internal server asked for (a 429, or a 403 that says its limit is used
    /// up) and that is not over: calls wait for its end within `max_wait`, or are refused.
    /// Absent from agents from before 2026-12-08.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<Paused>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Paused {
    /// RFC 3339.
    pub until: String,
    /// The status of the answer that asked for it.
    pub status: u16,
    /// The header that named the wait: `Retry-After`, `RateLimit-Reset` or
    /// `X-RateLimit-Reset`.
    pub header: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenFailure {
    /// RFC 3339.
    pub at: String,
    /// One line, at most [`TOKEN_FAILURE_CHARS`] characters.
    pub error: String,
    /// RFC 3339: a refresh failed while the current token still serves, and calls succeed
    /// until then. Absent when no token serves (calls get the error), and from agents that
    /// showed no failure while a token served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_used_until: Option<String>,
}

/// An identity provider's `error_description` can be long: the status shows its start,
/// the log and `connection test` the whole.
const TOKEN_FAILURE_CHARS: usize = 300;

impl TokenFailure {
    fn new(
        at: std::time::Instant,
        error: &crate::jwt::BearerError,
        token_used_until: Option<String>,
    ) -> Self {
        let at = std::time::SystemTime::now()
            .checked_sub(at.elapsed())
            .unwrap_or_else(std::time::SystemTime::now);
        // Escaped as the log escapes it: a description may hold newlines.
        let text = postern_logs::printable(&error.to_string()).into_owned();
        let error = match text.char_indices().nth(TOKEN_FAILURE_CHARS) {
            Some((end, _)) => format!("{}…", &text[..end]),
            None => text,
        };
        Self {
            at: humantime::format_rfc3339_seconds(at).to_string(),
            error,
            token_used_until,
        }
    }
}

pub fn report(
    state: &TunnelState,
    config: &AgentConfig,
    config_file: Option<PathBuf>,
    calls: &Contexts,
    stopping: bool,
    last_reload: Option<ReloadOutcome>,
) -> StatusReport {
    let rfc3339 = |t| humantime::format_rfc3339_seconds(t).to_string();
    StatusReport {
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        relays: config.relays.clone(),
        connected: state.connected,
        connected_to: state.relay.clone(),
        connected_since: state.since.filter(|_| state.connected).map(rfc3339),
        agent_name: state.agent_name.clone(),
        last_error: state.last_error.clone(),
        reconnects: state.reconnects,
        draining: state.draining,
        stopping,
        connections: calls
            .iter()
            .map(|(name, ctx)| {
                let (token_cache, valid_until) = match ctx.bearer.as_ref().map(|b| b.cache_state())
                {
                    None => ("-".to_owned(), None),
                    Some(CacheState::PerCall) => ("per call".to_owned(), None),
                    Some(CacheState::Empty) => ("none".to_owned(), None),
                    Some(CacheState::Refreshing) => ("refreshing".to_owned(), None),
                    Some(CacheState::ValidFor(d)) => {
                        let until = rfc3339(std::time::SystemTime::now() + d);
                        (format!("valid until {until}"), Some(until))
                    }
                };
                let status = ConnectionStatus {
                    calls_served: ctx.served.load(Ordering::Relaxed),
                    calls_failed: ctx.failed.load(Ordering::Relaxed),
                    token_cache,
                    token_failure: ctx
                        .bearer
                        .as_ref()
                        .and_then(|b| b.last_failure())
                        .map(|(at, error)| TokenFailure::new(at, &error, valid_until)),
                    paused: ctx.limiter.paused().map(|(until, asked_by)| Paused {
                        until: rfc3339(
                            std::time::SystemTime::now()
                                + until.saturating_duration_since(std::time::Instant::now()),
                        ),
                        status: asked_by.status,
                        header: asked_by.header.to_owned(),
                    }),
                };
                (name.clone(), status)
            })
            .collect(),
        config_digest: config.file_digest.clone(),
        config_file,
        last_reload: last_reload.map(LastReload::from),
    }
}

/// The bound socket and the lock that makes it this agent's: held until the socket is
/// unlinked at the stop.
pub struct Bound {
    listener: UnixListener,
    lock: std::fs::File,
}

/// Binds the socket (replacing a stale one) with mode 0600, in a folder no other
/// local user controls. A lock on `<socket>.lock` makes the check and the replacement
/// one step: two agents started at the same instant would otherwise each see no live
/// socket, and the second would unlink the first's, which the first's stop would then
/// unlink in turn.
pub fn bind(path: &Path) -> std::io::Result<Bound> {
    use postern_process::lock_file::{LockFile, try_lock};
    use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
    // A bare file name is in the current folder, which is checked as any other.
    let dir = crate::config::folder_of(path);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    check_folder(dir)?;
    let mut lock_path = path.as_os_str().to_owned();
    lock_path.push(".lock");
    let lock = match try_lock(Path::new(&lock_path))? {
        LockFile::Held(file) => file,
        LockFile::Busy => return Err(another_agent(path)),
        LockFile::Unavailable(e) => return Err(e),
    };
    // A live daemon on this socket answers (one of a version without the lock); a dead
    // one left a file behind.
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(another_agent(path));
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path)?,
        // Only a socket is ours to replace: a status_socket mistyped as the config's or
        // the token's name must not cost that file.
        Ok(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!(
                    "{} is there and is not a socket; refusing to replace it: set status_socket to a free path",
                    path.display()
                ),
            ));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(Bound { listener, lock })
}

fn another_agent(path: &Path) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        format!("another agent answers on {}", path.display()),
    )
}

/// Refuses a socket folder another local user owns or may write to: in a shared place
/// (`/tmp/postern-<uid>`, made by whoever came first) they could put their own socket
/// where `postern status` and `reload` look, or remove ours.
pub fn check_folder(dir: &Path) -> std::io::Result<()> {
    let me = crate::config::current_uid()
        .ok_or_else(|| std::io::Error::other("cannot tell this process's user id"))?;
    folder_trusted(dir, &[me, 0]).map_err(|why| {
        std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "refusing the status socket folder {}: {why}; remove it, or set status_socket (or XDG_RUNTIME_DIR) to a private folder",
                dir.display()
            ),
        )
    })
}

/// Whether `dir` is a folder that only `trusted` users control: theirs, written to by no
/// one else, and if a symlink (`/var/run` → `/run`), one of theirs too (its owner could
/// point it elsewhere later). Why not, if not.
pub fn folder_trusted(dir: &Path, trusted: &[u32]) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let link = std::fs::symlink_metadata(dir).map_err(|e| e.to_string())?;
    if link.is_symlink() && !trusted.contains(&link.uid()) {
        return Err(format!(
            "it is a symlink of another user's (uid {})",
            link.uid()
        ));
    }
    let meta = std::fs::metadata(dir).map_err(|e| e.to_string())?;
    if !meta.is_dir() {
        return Err("not a folder".into());
    }
    if !trusted.contains(&meta.uid()) {
        return Err(format!("it belongs to uid {}, another user", meta.uid()));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!(
            "group or others may write to it (mode {:o})",
            meta.mode() & 0o7777
        ));
    }
    Ok(())
}

/// What a client asks on the socket, as one line.
pub const STATUS: &str = "status";
pub const RELOAD: &str = "reload";
/// `test NAME [DIGEST]`: run the connection's test request here, with the agent's
/// environment, keys and network; answers a [`TestReport`](connection_test::TestReport)
/// or [`Refusal`]. With DIGEST, only while the config in force is the file with that
/// [`file_digest`](crate::config::file_digest).
pub const TEST: &str = "test";

/// Why the daemon did not do what was asked.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Refusal {
    pub error: String,
    /// `test NAME DIGEST` was refused because the config in force is not that file.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub other_config: bool,
}

impl Refusal {
    fn new(error: impl Into<String>) -> Self {
        Self {
            error: error.into(),
            other_config: false,
        }
    }
}
/// Pause after a failed accept (out of descriptors, say), before the next.
pub const ACCEPT_RETRY: std::time::Duration = std::time::Duration::from_millis(100);

/// A client that says nothing within this long gets the status (as `socat` users expect).
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// The answer to `reload`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReloadReport {
    pub ok: bool,
    /// What changed, when `ok`.
    #[serde(default)]
    pub changes: Vec<String>,
    /// Why the config was refused, when not `ok`.
    pub error: Option<String>,
    /// The file the agent re-read (the one it runs, absolute): the CLI may have been
    /// pointed at another. Older agents do not say.
    #[serde(default)]
    pub config_file: Option<PathBuf>,
}

pub struct StatusServer {
    pub state: watch::Receiver<TunnelState>,
    pub config: watch::Receiver<Arc<AgentConfig>>,
    pub calls: Arc<CallTable>,
    /// `None` when the daemon was started without a config file.
    pub reloader: Option<Arc<Reloader>>,
}

impl StatusServer {
    /// Answers until `closed` (the tunnel has let its calls go); from `shutdown` on it says
    /// the agent is stopping, refuses reloads and ends connection tests under way.
    pub async fn serve(
        self,
        bound: Bound,
        path: PathBuf,
        shutdown: CancellationToken,
        closed: CancellationToken,
    ) {
        let this = Arc::new(self);
        let clients = TaskTracker::new();
        let Bound { listener, lock } = bound;
        loop {
            let stream = tokio::select! {
                _ = closed.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        warn!(error = %e, "status socket accept failed");
                        // Out of descriptors, it fails again at once: not a spin.
                        tokio::time::sleep(ACCEPT_RETRY).await;
                        continue;
                    }
                },
            };
            clients.spawn(this.clone().answer(stream, shutdown.clone()));
        }
        // Unlinked first, then let go (the listener and the lock): no new client waits for
        // nothing, and an agent started meanwhile binds its own socket only after ours is
        // gone, not before we unlink it.
        let _ = std::fs::remove_file(&path);
        drop(listener);
        drop(lock);
        clients.close();
        clients.wait().await;
    }

    /// Runs `name`'s test request here, when the config in force has `digest` (if
    /// given); a test may take several of the connection's timeouts, so the agent's stop
    /// ends it rather than wait.
    async fn test(
        &self,
        name: &str,
        digest: Option<&str>,
        shutdown: &CancellationToken,
    ) -> Result<TestReport, Refusal> {
        let ctx = {
            let _no_reload = match &self.reloader {
                Some(reloader) => Some(reloader.hold().await),
                None => None,
            };
            let in_force = self.config.borrow().file_digest.clone();
            if digest.is_some_and(|d| in_force.as_deref() != Some(d)) {
                return Err(Refusal {
                    error: "the running agent's config is not that file as it is now".to_owned(),
                    other_config: true,
                });
            }
            self.calls.get(name).ok_or_else(|| {
                Refusal::new(format!(
                    "the running agent has no connection named {name:?}"
                ))
            })?
        };
        shutdown
            .run_until_cancelled(connection_test::run(&ctx, connection_test::Audience::Local))
            .await
            .ok_or_else(|| Refusal::new("the agent stopped before the test finished"))
    }

    async fn answer(self: Arc<Self>, stream: UnixStream, shutdown: CancellationToken) {
        let (read, mut write) = stream.into_split();
        let mut line = String::new();
        let mut reader = BufReader::new(read.take(256));
        let _ = tokio::time::timeout(REQUEST_TIMEOUT, reader.read_line(&mut line)).await;
        let line = line.trim_end_matches(['\r', '\n']);
        let test = line
            .strip_prefix(TEST)
            .filter(|rest| rest.is_empty() || rest.starts_with(' '));
        let body = if let Some(rest) = test {
            let mut words = rest.split_whitespace();
            let (name, digest) = (words.next().unwrap_or_default(), words.next());
            match self.test(name, digest, &shutdown).await {
                Ok(report) => serde_json::to_vec(&report),
                Err(refusal) => serde_json::to_vec(&refusal),
            }
        } else {
            match line.trim() {
                RELOAD => {
                    let report = match &self.reloader {
                        None => Err(
                            "this agent was started without a config file; nothing to reload"
                                .to_owned(),
                        ),
                        Some(_) if shutdown.is_cancelled() => Err(
                            "the agent is stopping (its calls under way are finishing); nothing was reloaded"
                                .to_owned(),
                        ),
                        Some(reloader) => reloader.reload().await,
                    };
                    let config_file = self.reloader.as_ref().map(|r| r.path().to_owned());
                    let report = match report {
                        Ok(changes) => ReloadReport {
                            ok: true,
                            changes,
                            error: None,
                            config_file,
                        },
                        Err(error) => ReloadReport {
                            ok: false,
                            changes: Vec::new(),
                            error: Some(error),
                            config_file,
                        },
                    };
                    serde_json::to_vec(&report)
                }
                _ => {
                    let config = self.config.borrow().clone();
                    let file = self.reloader.as_ref().map(|r| r.path().to_owned());
                    let stopping = shutdown.is_cancelled();
                    let report = report(
                        &self.state.borrow(),
                        &config,
                        file,
                        &self.calls.snapshot(),
                        stopping,
                        self.reloader.as_ref().and_then(|r| r.last()),
                    );
                    serde_json::to_vec(&report)
                }
            }
        };
        let _ = write.write_all(&body.unwrap_or_default()).await;
        let _ = write.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn folder(tag: &str, mode: u32) -> std::io::Result<PathBuf> {
        let dir =
            std::env::temp_dir().join(format!("postern-status-test-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir)?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode))?;
        Ok(dir)
    }

    #[tokio::test]
    async fn a_socket_folder_others_can_write_is_refused() -> std::io::Result<()> {
        let open = folder("open", 0o777)?;
        let refused = bind(&open.join("agent.sock"));
        assert!(
            refused
                .as_ref()
                .is_err_and(|e| e.to_string().contains("group or others may write")),
            "{:?}",
            refused.map(|_| ())
        );
        assert!(!open.join("agent.sock").exists());
        std::fs::remove_dir_all(&open)?;

        let private = folder("private", 0o700)?;
        let listener = bind(&private.join("agent.sock"));
        assert!(listener.is_ok(), "{:?}", listener.map(|_| ()));
        std::fs::remove_dir_all(&private)?;
        Ok(())
    }

    #[tokio::test]
    async fn a_socket_folder_made_by_another_user_is_refused() -> std::io::Result<()> {
        if crate::config::current_uid() != Some(0) {
            // Only root can make a folder that belongs to someone else.
            return Ok(());
        }
        let squatted = folder("squatted", 0o700)?;
        std::os::unix::fs::chown(&squatted, Some(65534), Some(65534))?;
        let refused = bind(&squatted.join("agent.sock"));
        assert!(
            refused
                .as_ref()
                .is_err_and(|e| e.to_string().contains("belongs to uid 65534")),
            "{:?}",
            refused.map(|_| ())
        );
        std::fs::remove_dir_all(&squatted)?;
        Ok(())
    }

    /// Two agents started at the same instant both find no live socket; the lock lets only
    /// one of them replace what is there. Shown here by taking the first's socket away
    /// (as the second's replacement would) while the first still runs.
    #[tokio::test]
    async fn a_second_agent_cannot_take_a_running_agents_socket() -> std::io::Result<()> {
        let dir = folder("race", 0o700)?;
        let socket = dir.join("agent.sock");
        let first = bind(&socket)?;
        std::fs::remove_file(&socket)?;
        let refused = bind(&socket);
        assert!(
            refused
                .as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::AddrInUse
                    && e.to_string().contains("another agent answers")),
            "{:?}",
            refused.map(|_| ())
        );
        assert!(
            !socket.exists(),
            "the second agent bound a socket of its own"
        );
        drop(first);
        bind(&socket)?;
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }
}
