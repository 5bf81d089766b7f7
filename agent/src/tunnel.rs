//! The supervised tunnel: connect, pin the host key, authenticate, forward,
//! say hello, serve until the session ends; then back off and start over.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use postern_protocol::PROTOCOL_VERSION;
use postern_protocol::control::{
    AgentMessage, EndReason, MAX_CONTROL_LINE, RelayMessage, decode_line, encode_line,
};
use postern_protocol::version::{FORWARD_ADDRESS, RELAY_CLOSES_DRAINING, SSH_USER};
use russh::ChannelStream;
use russh::client::Msg;
use tokio::io::{
    AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, ReadHalf, Take, WriteHalf,
};
use tokio::sync::mpsc::Receiver;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::{AbortOnDropHandle, TaskTracker};
use tracing::{error, info, warn};

use crate::backoff::Backoff;
use crate::call_table::CallTable;
use crate::config::AgentConfig;
use crate::control_reader::{Ending, read_control};
use crate::reload::session_settings_differ;
use crate::ssh_client::{AgentSsh, Shared, russh_config};

pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on the whole setup: connect, SSH handshake, authentication, forward, control
/// channel and hello. russh counts missed keepalives only once authenticated, so a relay
/// (or a link) that goes silent mid-setup would otherwise hold the agent for ever, deaf to
/// the next relay in the list. Longer than the relay's slowest refusal (10 s, auth_throttle)
/// so a throttled refusal is still seen as a refusal.
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(20);
/// How long in-flight calls get to finish on shutdown.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// What the tunnel is doing, for `status` and for tests to wait on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TunnelState {
    pub connected: bool,
    pub since: Option<SystemTime>,
    pub last_error: Option<String>,
    /// Sessions established after the first one (failed attempts do not count).
    pub reconnects: u64,
    pub agent_name: Option<String>,
    /// The relay of the list the session is with, while connected.
    pub relay: Option<String>,
    /// The session takes no new calls and lets those under way finish: the agent stops,
    /// or reconnects with new settings.
    pub draining: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error("cannot reach the relay at {relay}: {reason}")]
    Unreachable { relay: String, reason: String },
    /// The TCP connection was made: the address answers, but not as an SSH server would.
    #[error(
        "{relay} took the connection, but the SSH handshake failed: {reason}; is it the relay's ssh_listen address? Its API port, or another service, does not speak SSH. (A relay also fails handshakes while it has too many connections waiting to log in, or for an address it blocks after many failed logins)"
    )]
    Handshake { relay: String, reason: String },
    #[error(
        "the relay's host key does not match the pinned fingerprint: expected {expected}, relay showed {found}. Refusing to send the token. If the relay's key really changed, set relay_fingerprint to the new value from `postern-relay fingerprint`"
    )]
    FingerprintMismatch { expected: String, found: String },
    /// The relay's own trouble (its store) and an agent with all its connections end the
    /// login with the relay's words instead ([`TunnelError::SessionLost`]).
    #[error(
        "the relay refused the access token (unknown, revoked or rotated: its log says which; a relay older than 2026-12-07 refuses so too when it could not check the token): ask the relay's admin"
    )]
    TokenRefused,
    #[error("the relay refused the reverse forward: {0}")]
    ForwardRefused(String),
    #[error("the relay refused this agent's hello: {code}: {message}")]
    HelloRefused { code: String, message: String },
    #[error("control channel: {0}")]
    Control(String),
    #[error("the relay ended the session: {message}")]
    Ended { reason: EndReason, message: String },
    #[error("{0}")]
    SessionLost(String),
    #[error("no session with the relay at {relay} within {limit:?} (it went silent while {stage})")]
    SetupTimeout {
        relay: String,
        stage: &'static str,
        limit: Duration,
    },
}

/// How long a lost session waits for the relay's `ending` notice still in flight.
const NOTICE_WAIT: Duration = Duration::from_millis(200);

/// How long in-flight calls get to finish before a reconnect for new settings in place
/// (when the new settings did not connect beside the session).
pub const RECONFIGURE_GRACE: Duration = Duration::from_secs(10);

/// How a session ended without an error.
enum SessionEnd {
    Shutdown,
    /// The relay, fingerprint, token or proxy changed: connect again at once.
    Reconfigured,
    /// The same, with the new session up already: the old one finishes its calls aside.
    Handover(Box<Handover>),
}

/// A session set up on a reload's new settings while the one before went on serving, so
/// that a token switch refuses no call: the relay sends new calls to the newer session of
/// an agent and lets the older finish its own.
struct Handover {
    config: Arc<AgentConfig>,
    relay: String,
    shared: Shared,
    established: Established,
}

/// Why the wait before a reconnect ended.
enum Wake {
    Shutdown,
    Delay,
    /// A reload changed what the session is made with (a new token, say): tried at once.
    NewSettings,
}

/// Waits `delay` before the next connect, unless a reload changes the session's settings
/// from those `tried` (a reload of the connections alone reaches the next session anyway:
/// after a refusal the slow retry goes on, not a quick one with the same token).
async fn wait_to_reconnect(
    delay: Duration,
    tried: &AgentConfig,
    config: &mut watch::Receiver<Arc<AgentConfig>>,
    shutdown: &CancellationToken,
) -> Wake {
    // A reload the session saw (and ended on) is no news to `changed()`.
    if crate::reload::session_settings_differ(tried, &config.borrow()) {
        return Wake::NewSettings;
    }
    let wake = tokio::time::sleep(delay);
    tokio::pin!(wake);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Wake::Shutdown,
            _ = &mut wake => return Wake::Delay,
            Ok(()) = config.changed() => {
                if crate::reload::session_settings_differ(tried, &config.borrow()) {
                    return Wake::NewSettings;
                }
            }
        }
    }
}

/// Runs the tunnel until `shutdown`, on whatever config `config` holds at each connect;
/// in-flight calls then get `SHUTDOWN_GRACE` to finish.
pub async fn run(
    mut config: watch::Receiver<Arc<AgentConfig>>,
    calls: Arc<CallTable>,
    shutdown: CancellationToken,
    state: watch::Sender<TunnelState>,
) {
    let tasks = TaskTracker::new();
    // Sessions a handover left to finish their calls.
    let drains = TaskTracker::new();
    let mut backoff = Backoff::default();
    let mut relay_index = 0usize;
    let mut drained = false;
    let mut handed: Option<Box<Handover>> = None;
    loop {
        // A handed-over session runs on the settings it was made with; a reload since is
        // still news to `config`, and that session's loop sees it.
        let (mut tried, relay) = match &handed {
            Some(next) => (next.config.clone(), next.relay.clone()),
            None => {
                let tried = config.borrow_and_update().clone();
                let relay = tried.relays[relay_index % tried.relays.len()].clone();
                (tried, relay)
            }
        };
        let started = Instant::now();
        let since_before = state.borrow().since;
        let outcome = session(
            &mut tried,
            &relay,
            &mut config,
            Ctx {
                calls: &calls,
                tasks: &tasks,
                drains: &drains,
                shutdown: &shutdown,
                state: &state,
            },
            handed.take(),
        )
        .await;
        // In one change, so `status` never shows the session gone without its reason.
        state.send_modify(|s| {
            s.connected = false;
            s.relay = None;
            s.draining = false;
            if let Err(e) = &outcome {
                s.last_error = Some(e.to_string());
            }
        });
        if shutdown.is_cancelled() {
            // A session that drained gave its calls their grace already.
            drained = matches!(outcome, Ok(SessionEnd::Shutdown));
            break;
        }
        let mut refused = false;
        match outcome {
            Ok(SessionEnd::Shutdown) => break,
            Ok(SessionEnd::Handover(next)) => {
                relay_index = 0;
                backoff.reset();
                handed = Some(next);
                continue;
            }
            // Said by the session, as it tried them beside itself first.
            Ok(SessionEnd::Reconfigured) => {
                relay_index = 0;
                backoff.reset();
                continue;
            }
            Err(ref e @ TunnelError::FingerprintMismatch { .. }) => {
                // The agent refuses the relay here, not the other way round.
                refused = true;
                error!(error = %e, "the relay's host key does not match relay_fingerprint; not sending the token; retrying slowly");
            }
            Err(ref e @ TunnelError::TokenRefused) => {
                refused = true;
                error!(error = %e, "relay refused this agent; retrying slowly");
            }
            Err(TunnelError::Ended {
                reason: EndReason::Replaced,
                ref message,
            }) => {
                // Two agents sharing one token would take the session from each other forever.
                refused = true;
                error!(reason = %message, "another agent with this token took over the tunnel; two agents must not share a token; retrying slowly");
            }
            // Revoked or rotated between the login and the hello: as if a moment later.
            Err(ref e @ TunnelError::HelloRefused { ref code, .. })
                if code == "revoked" || code == "token_rotated" =>
            {
                refused = true;
                error!(error = %e, "the relay no longer accepts this agent's token; retrying slowly (after a new token: postern token set, then postern reload)");
            }
            Err(TunnelError::Ended { ref message, .. }) => {
                // Revoked, or rotated with no grace left: the token will be refused.
                refused = true;
                error!(reason = %message, "the relay no longer accepts this agent's token; retrying slowly (after a new token: postern token set, then postern reload)");
            }
            Err(ref e) => warn!(error = %e, "tunnel down"),
        }
        // Several relays: try the next one in turn.
        relay_index = relay_index.wrapping_add(1);
        let established = state.borrow().since != since_before;
        backoff.after_session(refused, started.elapsed(), established);
        let delay = backoff.next_delay();
        info!(delay_ms = delay.as_millis() as u64, "reconnecting");
        match wait_to_reconnect(delay, &tried, &mut config, &shutdown).await {
            Wake::Shutdown => break,
            Wake::Delay => {}
            Wake::NewSettings => {
                relay_index = 0;
                backoff.reset();
            }
        }
    }
    // A session a handover left drains within a stop's grace once the stop came.
    drains.close();
    let _ = tokio::time::timeout(SHUTDOWN_GRACE + 2 * GOODBYE_WRITE_LIMIT, drains.wait()).await;
    tasks.close();
    // Calls left from a lost session (their answers can go nowhere), or outliving the
    // drain: with the drain's grace, a stop stays within the unit's TimeoutStopSec (45 s).
    let left = if drained {
        GOODBYE_WRITE_LIMIT
    } else {
        SHUTDOWN_GRACE
    };
    if tokio::time::timeout(left, tasks.wait()).await.is_err() {
        warn!("calls still running after the shutdown grace period; dropping them");
    }
    info!("agent stopped");
}

/// A session that is up: authenticated, forwarded, welcomed.
struct Established {
    handle: russh::client::Handle<AgentSsh>,
    write: WriteHalf<ChannelStream<Msg>>,
    reader: BufReader<Take<ReadHalf<ChannelStream<Msg>>>>,
    announced: Vec<String>,
    agent_name: String,
    /// The relay's welcome named `RELAY_CLOSES_DRAINING` or later: told `draining`, it
    /// closes the agent's channels itself.
    relay_closes_channels: bool,
}

/// What every session works with, beside its settings.
#[derive(Clone, Copy)]
struct Ctx<'a> {
    calls: &'a Arc<CallTable>,
    tasks: &'a TaskTracker,
    drains: &'a TaskTracker,
    shutdown: &'a CancellationToken,
    state: &'a watch::Sender<TunnelState>,
}

/// What a session shares with its handler, for `config`'s relay.
fn new_shared(config: &AgentConfig, ctx: Ctx<'_>) -> Shared {
    Shared {
        expected_fingerprint: config.relay_fingerprint.clone(),
        seen_fingerprint: Arc::new(Mutex::new(None)),
        calls: ctx.calls.clone(),
        accepting: Arc::new(AtomicBool::new(false)),
        close_channels: CancellationToken::new(),
        tasks: ctx.tasks.clone(),
        session_tasks: TaskTracker::new(),
        open_channels: Arc::default(),
        disconnected: Arc::new(Notify::new()),
        disconnect_reason: Arc::new(Mutex::new(None)),
    }
}

/// Connects, authenticates, forwards and says hello within [`SETUP_TIMEOUT`]; `None` when
/// the agent is told to stop first.
async fn set_up(
    config: &AgentConfig,
    relay: &str,
    ctx: Ctx<'_>,
) -> Result<Option<(Shared, Established)>, TunnelError> {
    let shared = new_shared(config, ctx);
    let stage = Mutex::new("connecting");
    tokio::select! {
        _ = ctx.shutdown.cancelled() => Ok(None),
        r = tokio::time::timeout(SETUP_TIMEOUT, establish(config, relay, ctx.calls, &shared, &stage)) => match r {
            Ok(established) => Ok(Some((shared, established?))),
            Err(_) => Err(TunnelError::SetupTimeout {
                relay: relay.to_owned(),
                stage: *stage.lock().unwrap_or_else(|p| p.into_inner()),
                limit: SETUP_TIMEOUT,
            }),
        },
    }
}

/// One SSH session, from connect (or a handover's set-up) to its end. `tried` becomes the
/// reloaded settings when the relay ends the session while it drains for them (see below).
async fn session(
    tried: &mut Arc<AgentConfig>,
    relay: &str,
    updates: &mut watch::Receiver<Arc<AgentConfig>>,
    ctx: Ctx<'_>,
    handed: Option<Box<Handover>>,
) -> Result<SessionEnd, TunnelError> {
    let Ctx {
        calls,
        shutdown,
        state,
        ..
    } = ctx;
    let config = &tried.clone();
    let (shared, established) = match handed {
        Some(next) => (next.shared, next.established),
        None => match set_up(config, relay, ctx).await? {
            Some(up) => up,
            None => return Ok(SessionEnd::Shutdown),
        },
    };
    let Established {
        mut handle,
        mut write,
        reader,
        mut announced,
        agent_name,
        relay_closes_channels,
    } = established;
    info!(%relay, agent = %agent_name, connections = announced.len(), "connected to relay");
    state.send_modify(|s| {
        // Counted once welcomed, not per attempt: failed attempts while the relay is
        // down are not reconnections. `since` is only ever set by an earlier session.
        if s.since.is_some() {
            s.reconnects += 1;
        }
        s.connected = true;
        s.draining = false;
        s.since = Some(SystemTime::now());
        s.last_error = None;
        s.agent_name = Some(agent_name);
        s.relay = Some(relay.to_owned());
    });

    let (notices_tx, mut notices) = tokio::sync::mpsc::channel(4);
    let reader = AbortOnDropHandle::new(tokio::spawn(read_control(reader, notices_tx)));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => {
                state.send_modify(|s| s.draining = true);
                let drain = Drain { shared: &shared, control: &mut write, relay_closes_channels, grace: RECONFIGURE_GRACE, notices: &mut notices };
                // Whatever the relay said meanwhile, the agent stops.
                let _ = drain.then_disconnect(&mut handle, shutdown).await;
                return Ok(SessionEnd::Shutdown);
            }
            Ok(()) = updates.changed() => {
                let new = updates.borrow_and_update().clone();
                if session_settings_differ(config, &new) {
                    info!("reconnecting with the reloaded settings");
                    // Make before break: while the new session is set up this one serves
                    // on (russh runs it); once the new one is welcomed, the relay sends it
                    // the new calls and this one finishes its own aside. Not with a relay
                    // older than `RELAY_CLOSES_DRAINING`: it ends the older session at the
                    // newer one's hello, its calls under way with it.
                    let beside = if relay_closes_channels {
                        // The relay that serves now first: the list's first may be the
                        // one that is down.
                        let next_relay = if new.relays.iter().any(|r| r == relay) {
                            relay.to_owned()
                        } else {
                            new.relays[0].clone()
                        };
                        Some((set_up(&new, &next_relay, ctx).await, next_relay))
                    } else {
                        None
                    };
                    let tried_beside = beside.is_some();
                    match beside {
                        Some((Ok(Some((next_shared, next))), next_relay)) => {
                            let old = OldSession { shared, write, handle, notices, relay_closes_channels, _reader: reader };
                            let stop = shutdown.clone();
                            ctx.drains.spawn(old.finish(stop));
                            return Ok(SessionEnd::Handover(Box::new(Handover {
                                config: new,
                                relay: next_relay,
                                shared: next_shared,
                                established: next,
                            })));
                        }
                        // Stopping: this session drains as at any stop.
                        Some((Ok(None), _)) | None => {}
                        Some((Err(e), _)) => warn!(error = %e, "the reloaded settings did not connect beside this session; draining it and trying them again"),
                    }

                    state.send_modify(|s| s.draining = true);
                    let drain = Drain { shared: &shared, control: &mut write, relay_closes_channels, grace: RECONFIGURE_GRACE, notices: &mut notices };
                    match drain.then_disconnect(&mut handle, shutdown).await {
                        Drained::Done => return Ok(SessionEnd::Reconfigured),
                        Drained::Stopped => return Ok(SessionEnd::Shutdown),
                        // The session tried beside this one, given up on after the relay
                        // took its hello, replaced it: this agent's own doing, no other
                        // agent's with the same token.
                        Drained::Ended(TunnelError::Ended { reason: EndReason::Replaced, .. }) if tried_beside => {
                            return Ok(SessionEnd::Reconfigured);
                        }
                        // Its refusal holds for the reloaded settings too, unless they
                        // bring another token.
                        Drained::Ended(ended) => {
                            if new.token == config.token {
                                *tried = new;
                            }
                            return Err(ended);
                        }
                    }
                }
                let names = calls.names();
                if names != announced {
                    let inventory = AgentMessage::Inventory { connections: names.clone() };
                    // Bounded: a relay that gives the control channel no window would
                    // otherwise hold this loop, deaf to a stop and to the session's end.
                    let sent = tokio::time::timeout(CONTROL_WRITE_LIMIT, async {
                        write.write_all(&encode_line(&inventory)).await?;
                        write.flush().await
                    })
                    .await
                    .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()));
                    if let Err(e) = sent {
                        return Err(TunnelError::Control(format!("sending the new inventory: {e}")));
                    }
                    info!(connections = %names.join(", "), "told the relay the new connection list");
                    announced = names;
                }
            }
            ending = notices.recv() => match ending {
                Some(ending) => return Err(ending.into()),
                None => return Err(lost(&shared, &mut notices, "the relay closed the control channel").await),
            },
            _ = shared.disconnected.notified() => return Err(lost(&shared, &mut notices, "session ended").await),
            _ = &mut handle => return Err(lost(&shared, &mut notices, "session ended").await),
        }
    }
}

/// A session a handover replaced, kept until its calls under way are answered.
struct OldSession {
    shared: Shared,
    write: WriteHalf<ChannelStream<Msg>>,
    handle: russh::client::Handle<AgentSsh>,
    notices: Receiver<Ending>,
    relay_closes_channels: bool,
    _reader: AbortOnDropHandle<()>,
}

impl OldSession {
    /// Drains as for new settings (a stop meanwhile gives the calls a stop's grace), then
    /// disconnects. The relay's `ending` (replaced, once its calls are done) is expected.
    async fn finish(mut self, shutdown: CancellationToken) {
        let drain = Drain {
            shared: &self.shared,
            control: &mut self.write,
            relay_closes_channels: self.relay_closes_channels,
            grace: SHUTDOWN_GRACE,
            notices: &mut self.notices,
        };
        let drained = drain.then_disconnect(&mut self.handle, &shutdown).await;
        // The relay says `replaced` once it has the last answer, a moment before the
        // channel's task is done; any still running now were cut (the grace ran out, a
        // stop, a revoke).
        let tasks = &self.shared.session_tasks;
        let _ = tokio::time::timeout(NOTICE_WAIT, wait_idle(tasks)).await;
        let why = match drained {
            Drained::Ended(ended) => ended.to_string(),
            Drained::Stopped => "the agent stops".to_owned(),
            Drained::Done => "its grace ran out".to_owned(),
        };
        if tasks.is_empty() {
            info!("the session before the reload finished its calls");
        } else {
            warn!(calls = tasks.len(), reason = %why, "the session before the reload ended with calls under way; they were cut");
        }
    }
}

/// How long a control line sent while the session is up may take to go out.
const CONTROL_WRITE_LIMIT: Duration = Duration::from_secs(10);

/// How long the `draining` line, and then the disconnect, may take to reach the wire: a
/// stuck session must not hold up a stop. `disconnect` only queues it, and the agent's
/// exit must not beat it, or the relay records a lost connection.
const GOODBYE_WRITE_LIMIT: Duration = Duration::from_secs(2);

/// Waits (bounded) for the session to write its queued disconnect and end.
async fn wait_written<F: std::future::Future + Unpin>(session: &mut F) {
    let _ = tokio::time::timeout(GOODBYE_WRITE_LIMIT, session).await;
}

/// Connects, authenticates, asks for the forward and says hello; `stage` says how far
/// it got, for the message when the setup times out.
async fn establish(
    config: &AgentConfig,
    relay: &str,
    calls: &Arc<CallTable>,
    shared: &Shared,
    stage: &Mutex<&'static str>,
) -> Result<Established, TunnelError> {
    let at = |now: &'static str| *stage.lock().unwrap_or_else(|p| p.into_inner()) = now;
    let unreachable = |reason: String| TunnelError::Unreachable {
        relay: relay.to_owned(),
        reason,
    };
    let handler = AgentSsh {
        shared: shared.clone(),
    };
    let stream = match config.proxy.as_ref().filter(|p| p.applies_to(relay)) {
        // Both bounded on their own, and say which address or step failed.
        Some(proxy) => proxy
            .connect(relay)
            .await
            .map_err(|e| unreachable(e.to_string()))?,
        None => crate::relay_dial::dial(relay).await.map_err(unreachable)?,
    };
    at("in the SSH handshake");
    let connect = russh::client::connect_stream(Arc::new(russh_config()), stream, handler);
    let handshake = |reason: String| TunnelError::Handshake {
        relay: relay.to_owned(),
        reason,
    };
    let mut handle = match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
        Err(_) => {
            return Err(handshake(format!(
                "no SSH handshake within {CONNECT_TIMEOUT:?}"
            )));
        }
        Ok(Err(e)) => {
            let seen = shared
                .seen_fingerprint
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            return Err(match seen {
                Some(found) if found != config.relay_fingerprint => {
                    TunnelError::FingerprintMismatch {
                        expected: config.relay_fingerprint.clone(),
                        found,
                    }
                }
                _ => handshake(e.to_string()),
            });
        }
        Ok(Ok(handle)) => handle,
    };
    at("waiting for the answer to authentication");
    let auth = match handle
        .authenticate_password(SSH_USER, config.token.expose())
        .await
    {
        Ok(auth) => auth,
        // The session ended before the relay answered (russh patch 14): no refusal. The
        // relay's own trouble during the login ends it so, with its words.
        Err(e) => {
            return Err(
                ended_under(&handle, shared, "during authentication").unwrap_or_else(|| {
                    TunnelError::SessionLost(format!("during authentication: {e}"))
                }),
            );
        }
    };
    // A refusal is said before the session ends (russh itself ends it, with no method
    // left to try), so whether it is still up says nothing here.
    if !auth.success() {
        return Err(TunnelError::TokenRefused);
    }
    at("asking for the reverse forward");
    if let Err(e) = handle.tcpip_forward(FORWARD_ADDRESS, 0).await {
        return Err(
            ended_under(&handle, shared, "asking for the reverse forward")
                .unwrap_or_else(|| TunnelError::ForwardRefused(e.to_string())),
        );
    }
    shared.accepting.store(true, Ordering::SeqCst);

    at("opening the control channel");
    let control = match handle.channel_open_session().await {
        Ok(control) => control,
        Err(e) => {
            return Err(ended_under(&handle, shared, "opening the control channel")
                .unwrap_or_else(|| TunnelError::Control(e.to_string())));
        }
    };
    let (read, mut write) = tokio::io::split(control.into_stream());
    let announced = calls.names();
    let hello = AgentMessage::Hello {
        protocol_version: PROTOCOL_VERSION,
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        connections: announced.clone(),
    };
    at("waiting for the answer to hello");
    write
        .write_all(&encode_line(&hello))
        .await
        .map_err(|e| TunnelError::Control(e.to_string()))?;
    write
        .flush()
        .await
        .map_err(|e| TunnelError::Control(e.to_string()))?;
    let mut reader = BufReader::new(read.take(MAX_CONTROL_LINE as u64 + 1));
    let mut line = Vec::new();
    reader
        .read_until(b'\n', &mut line)
        .await
        .map_err(|e| TunnelError::Control(e.to_string()))?;
    if line.is_empty() {
        // Not a malformed answer: none came.
        return Err(
            ended_under(&handle, shared, "waiting for the answer to hello").unwrap_or_else(|| {
                TunnelError::Control("the relay closed it without answering hello".into())
            }),
        );
    }
    let (agent_name, relay_closes_channels) = match decode_line::<RelayMessage>(&line)
        .map_err(|e| TunnelError::Control(e.to_string()))?
    {
        RelayMessage::Welcome {
            agent_name,
            protocol_version,
            ..
        } => (agent_name, protocol_version >= RELAY_CLOSES_DRAINING),
        RelayMessage::Refused { code, message } => {
            return Err(TunnelError::HelloRefused { code, message });
        }
        RelayMessage::Ending { reason, message } => {
            return Err(TunnelError::Ended { reason, message });
        }
    };
    Ok(Established {
        handle,
        write,
        reader,
        announced,
        agent_name,
        relay_closes_channels,
    })
}

/// What a session's drain needs: its channel tasks, and its control channel to say so.
struct Drain<'a> {
    shared: &'a Shared,
    control: &'a mut WriteHalf<ChannelStream<Msg>>,
    relay_closes_channels: bool,
    /// How long its calls get, unless a stop comes: a reconnect's in place, where no
    /// call is taken meanwhile; a stop's beside a newer session, which takes them.
    grace: Duration,
    /// The relay's notices: it may end the session during the drain, and say why.
    notices: &'a mut Receiver<Ending>,
}

impl Drain<'_> {
    /// Stops taking channels and has them closed, idle ones at once and busy ones once
    /// their call is answered; waits for that up to a stop's grace once `shutdown` is
    /// cancelled, else a reconnect's, then ends the session. The relay's `ending` if it
    /// ended the session first (revoked, replaced): its reason decides what comes next,
    /// not the drain's.
    async fn then_disconnect(
        self,
        handle: &mut russh::client::Handle<AgentSsh>,
        shutdown: &CancellationToken,
    ) -> Drained {
        self.shared.accepting.store(false, Ordering::SeqCst);
        // Pairs with the fence after a channel open's count (ssh_client.rs): either that
        // open sees `accepting` false, or `wait_idle` sees its count.
        std::sync::atomic::fence(Ordering::SeqCst);
        if self.relay_closes_channels {
            // The relay closes them: only it knows whether a request is on its way on an
            // idle one. Unsaid (the session is failing), they stay open until `grace`.
            let said = async {
                self.control
                    .write_all(&encode_line(&AgentMessage::Draining))
                    .await?;
                self.control.flush().await
            };
            let _ = tokio::time::timeout(GOODBYE_WRITE_LIMIT, said).await;
        } else {
            // An older relay would not: each closes itself once idle, which can cross a
            // request on its way (that call fails with 502).
            self.shared.close_channels.cancel();
        }
        info!("draining in-flight calls");
        let notices = self.notices;
        // A stop during a drain for new settings gives the calls a stop's grace (a
        // reconnect's own cuts them at 10 s) and ends in the stop, not a reconnect.
        let started = tokio::time::Instant::now();
        let mut stopping = shutdown.is_cancelled();
        let stop_deadline = started + SHUTDOWN_GRACE;
        let mut deadline = if stopping {
            stop_deadline
        } else {
            started + self.grace
        };
        // This session's calls only: a newer session's go on beside a handover's drain.
        let idle = wait_idle(&self.shared.session_tasks);
        tokio::pin!(idle);
        // Without a control channel (gone with the session) the tasks end as it does.
        let ended = loop {
            tokio::select! {
                biased;
                Some(ended) = next_ending(notices) => break Some(ended),
                () = &mut idle => break None,
                () = tokio::time::sleep_until(deadline) => break None,
                () = shutdown.cancelled(), if !stopping => {
                    stopping = true;
                    deadline = stop_deadline;
                    info!("shutdown requested while draining; the calls under way get the stop's grace");
                }
            }
        };
        // Ended as the tasks did: the notice may be queued still (a zero wait still
        // takes what is queued).
        let ended = match ended {
            None => tokio::time::timeout(Duration::ZERO, next_ending(notices))
                .await
                .ok()
                .flatten(),
            ended => ended,
        };
        let words = if stopping {
            "agent shutting down"
        } else {
            "agent reconnects with new settings"
        };
        let _ = handle
            .disconnect(russh::Disconnect::ByApplication, words, "")
            .await;
        wait_written(handle).await;
        match ended {
            _ if stopping => Drained::Stopped,
            Some(ended) => Drained::Ended(ended),
            None => Drained::Done,
        }
    }
}

/// How a drain ended.
enum Drained {
    /// Its calls were answered, or its grace ran out.
    Done,
    /// The relay ended the session meanwhile (revoked, replaced): its reason decides what
    /// comes next, not the drain's.
    Ended(TunnelError),
    /// The agent is stopping (also when a stop came during a drain for new settings).
    Stopped,
}

/// The relay's next `ending` notice, as the session's end; `None` once its control
/// channel is gone.
async fn next_ending(notices: &mut Receiver<Ending>) -> Option<TunnelError> {
    notices.recv().await.map(TunnelError::from)
}

impl From<Ending> for TunnelError {
    fn from(Ending { reason, message }: Ending) -> Self {
        Self::Ended { reason, message }
    }
}

/// A setup step that failed because the session ended under it (the relay stopping, its
/// authentication timeout, a reset link): russh answers a forward or channel request the
/// session ended under as the request's own failure, and the disconnect's words say what
/// happened. The session ends before russh gives that answer, and the words are kept by
/// then.
fn ended_under(
    handle: &russh::client::Handle<AgentSsh>,
    shared: &Shared,
    step: &str,
) -> Option<TunnelError> {
    if !handle.is_closed() {
        return None;
    }
    let reason = shared
        .disconnect_reason
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
        .unwrap_or_else(|| "the relay closed the connection".to_owned());
    Some(TunnelError::SessionLost(format!("{step}: {reason}")))
}

/// Why the session ended: the relay's `ending` notice if one is still on its way
/// (it is written just before the disconnect), else the disconnect's own words.
async fn lost(shared: &Shared, notices: &mut Receiver<Ending>, fallback: &str) -> TunnelError {
    if let Ok(Some(ended)) = tokio::time::timeout(NOTICE_WAIT, next_ending(notices)).await {
        return ended;
    }
    let reason = shared
        .disconnect_reason
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    TunnelError::SessionLost(reason.unwrap_or_else(|| fallback.to_owned()))
}

/// Waits until no channel task runs (the tracker stays open for later sessions).
async fn wait_idle(tasks: &TaskTracker) {
    while !tasks.is_empty() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
