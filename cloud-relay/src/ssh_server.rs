//! The SSH side: accept agent connections, authenticate their tokens, accept
//! only the reverse forward and the control channel, and end sessions on shutdown.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use postern_protocol::version::FORWARD_ADDRESS;
use postern_protocol::{SecretKind, SecretToken};
use russh::keys::PrivateKey;
use russh::server::{Auth, Msg, Session};
use russh::{Channel, ChannelId, MethodKind, MethodSet, Preferred, cipher, kex};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::address_slots::{AddressSlot, AddressSlots, told_apart};
use crate::context::MAX_CONNECTIONS_PER_AGENT;
use crate::context::RelayContext;
use crate::control::ControlChannel;
use crate::keyed_slots::KeyedSlot;
use crate::login_end::{AGENT_BUSY, CHECK_TOO_SLOW, LoginEnd, ReleaseOnDrop, STORE_UNAVAILABLE};
use crate::registry::ClosingReason;
use crate::server::{AcceptErrors, accept_next};
use crate::store::{AgentRecord, Login, Store, StoreError, unix_now};

/// Keepalive every 4 s, dropped after 2 missed: a dead link is noticed in ~12 s.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(4);
pub const KEEPALIVE_MAX: usize = 2;
/// Unauthenticated or silent connections are closed after this.
pub const INACTIVITY_TIMEOUT: Duration = Duration::from_secs(60);
/// A connection must authenticate within this, or it is closed (a scanner or a
/// hostile client must not hold a socket and a task for the 60 s inactivity timeout).
pub const AUTH_TIMEOUT: Duration = Duration::from_secs(10);
/// Receive window per channel: large enough for WAN throughput (RUSSH-NOTES).
pub const WINDOW_SIZE: u32 = 16 * 1024 * 1024;
/// Where a call channel's window starts: room for a typical answer whole. It doubles, up
/// to `WINDOW_SIZE`, each time the caller takes a whole window within a second, as a
/// stream that the window holds back does on each round trip.
pub const INITIAL_WINDOW: u32 = 256 * 1024;

/// `answer_buffer` bounds what one agent's channel windows grow by beyond
/// `INITIAL_WINDOW` in all: what the agent may send that callers have not read yet is at
/// most that plus `INITIAL_WINDOW` per open channel.
pub fn russh_config(host_key: PrivateKey, answer_buffer: u64) -> russh::server::Config {
    let mut methods = MethodSet::empty();
    methods.push(MethodKind::Password);
    russh::server::Config {
        methods,
        keys: vec![host_key],
        auth_rejection_time: Duration::from_millis(300),
        auth_rejection_time_initial: Some(Duration::from_millis(0)),
        max_auth_attempts: 3,
        inactivity_timeout: Some(INACTIVITY_TIMEOUT),
        keepalive_interval: Some(KEEPALIVE_INTERVAL),
        keepalive_max: KEEPALIVE_MAX,
        nodelay: true,
        window_size: WINDOW_SIZE,
        window_budget: Some(russh::WindowBudget {
            initial: INITIAL_WINDOW,
            session: answer_buffer,
        }),
        maximum_packet_size: 32768,
        preferred: preferred_algorithms(),
        ..Default::default()
    }
}

/// Modern algorithms only, AES-GCM first (2× chacha20 on this hardware).
pub fn preferred_algorithms() -> Preferred {
    Preferred {
        kex: std::borrow::Cow::Borrowed(&[
            kex::MLKEM768X25519_SHA256,
            kex::CURVE25519,
            kex::CURVE25519_PRE_RFC_8731,
            kex::EXTENSION_SUPPORT_AS_CLIENT,
            kex::EXTENSION_SUPPORT_AS_SERVER,
            kex::EXTENSION_OPENSSH_STRICT_KEX_AS_CLIENT,
            kex::EXTENSION_OPENSSH_STRICT_KEX_AS_SERVER,
        ]),
        cipher: std::borrow::Cow::Borrowed(&[
            cipher::AES_256_GCM,
            cipher::AES_128_GCM,
            cipher::CHACHA20_POLY1305,
        ]),
        ..Preferred::default()
    }
}

/// Connections not yet authenticated at most (each holds two file descriptors, a task
/// and a handshake's memory for up to `AUTH_TIMEOUT`); past it the relay stops accepting,
/// and new connections wait in the kernel's backlog. Authenticated agents do not count:
/// a relay serves far more of them.
pub const MAX_UNAUTHENTICATED: usize = 1000;

/// Of those, at most this many from one source address ([`AddressSlots`]); more from it
/// are closed at once. A company's agents behind one NAT reconnecting together after a
/// relay restart are far fewer, or back off and come again.
pub const MAX_UNAUTHENTICATED_PER_ADDRESS: usize = MAX_UNAUTHENTICATED / 4;

/// How long a session's end may take to reach the wire once the relay disconnects it:
/// russh writes the disconnect from the session's own task, which the process must
/// outlive for the agent to hear why.
pub const DISCONNECT_WRITE_LIMIT: Duration = Duration::from_secs(2);

/// Accepts agent connections until `stop`; each runs as a tracked task, until the
/// context's shutdown token ends the sessions.
pub async fn serve(
    ctx: Arc<RelayContext>,
    listener: TcpListener,
    config: Arc<russh::server::Config>,
    stop: CancellationToken,
) {
    let unauthenticated = Arc::new(Semaphore::new(MAX_UNAUTHENTICATED));
    let per_address = AddressSlots::new(MAX_UNAUTHENTICATED_PER_ADDRESS);
    let mut errors = AcceptErrors::default();
    loop {
        // A slot first, then the connection: past the limit, connections wait in the
        // kernel's backlog instead of being closed, so the herd of agents after a relay
        // restart comes in as handshakes finish, none of them pushed into backing off.
        if unauthenticated.available_permits() == 0 {
            debug!(
                limit = MAX_UNAUTHENTICATED,
                "as many ssh connections not yet authenticated as allowed; new ones wait"
            );
        }
        let permit = tokio::select! {
            _ = stop.cancelled() => return,
            permit = unauthenticated.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
        };
        let Some((socket, peer)) =
            accept_next("ssh", &mut errors, &stop, || listener.accept()).await
        else {
            return;
        };
        if ctx.throttle.is_blocked(peer.ip()) {
            // Temporary refusal: no handshake, no store lookup for an address that keeps
            // failing. The block itself was logged once, when it began.
            debug!(%peer, "connection refused: too many failed logins from this address");
            ctx.metrics.auth_failed("address_blocked");
            drop(socket);
            continue;
        }
        let Some(address_slot) = per_address.take(peer.ip()) else {
            debug!(
                %peer,
                limit = MAX_UNAUTHENTICATED_PER_ADDRESS,
                "connection refused: as many handshakes from this address as allowed"
            );
            ctx.metrics.auth_failed("address_busy");
            drop(socket);
            continue;
        };
        let ctx2 = ctx.clone();
        let config = config.clone();
        let span = info_span!("ssh", %peer);
        let slots = (permit, address_slot);
        ctx.tasks
            .spawn(run_connection(ctx2, socket, peer, config, slots).instrument(span));
    }
}

/// What a connection holds only until it authenticates: a second handle on its socket,
/// so the authentication timeout can close it even when russh is stuck waiting for a
/// client that went quiet mid-handshake, and its place among the unauthenticated.
struct PreAuth {
    closer: std::net::TcpStream,
    _slots: (OwnedSemaphorePermit, AddressSlot),
    stage: Stage,
}

/// Where a connection's login stands, by its last token: what its end, or its running out
/// of time, counts as. Once a token came, an end is no hang-up.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Stage {
    /// No token yet: an end is a hang-up; running out of time, a failed login.
    Waiting,
    /// Its token is being looked up: running out of time now is the relay's slowness (the
    /// store, a reconnect rush), no guess of the peer's, and the agent is told so.
    Checking,
    /// Refused without counting (a former token): silence until the timeout still
    /// counts as a failed login.
    Uncounted,
    /// Refused and counted as a guess, or ended for the relay's own trouble (its store):
    /// silence until the timeout adds nothing.
    Settled,
    /// Ended for its agent's connections (`agent_busy`), at the timeout: unanswered until
    /// then, holding its places, it counts towards the hang-ups' ceiling as well.
    Busy,
}

type PreAuthSlot = Arc<Mutex<Option<PreAuth>>>;

fn take_pre_auth(slot: &PreAuthSlot) -> Option<PreAuth> {
    slot.lock().unwrap_or_else(|p| p.into_inner()).take()
}

/// A connection that did not log in within the authentication timeout counts like a
/// wrong token, so an address that keeps connections open without logging in ends up
/// refused before the handshake (loopback peers aside: they are not told apart).
fn silent_failure(ctx: &RelayContext, peer: SocketAddr) {
    ctx.metrics.auth_failed("timeout");
    if told_apart(peer.ip()) {
        ctx.throttle.failure(peer.ip());
    }
}

/// A connection that ended before it tried to log in (a key exchange and a hang-up, as
/// `ssh-keyscan` does; a port probe; garbage; a public key only) counts towards a high
/// ceiling: a key exchange costs the relay as a login does.
fn hung_up(ctx: &RelayContext, peer: SocketAddr, pre_auth: &PreAuthSlot) {
    let Some(pending) = take_pre_auth(pre_auth) else {
        return;
    };
    if pending.stage != Stage::Waiting {
        return;
    }
    ctx.metrics.auth_failed("closed_before_login");
    if told_apart(peer.ip()) {
        ctx.throttle.hangup(peer.ip());
    }
}

async fn run_connection(
    ctx: Arc<RelayContext>,
    socket: tokio::net::TcpStream,
    peer: SocketAddr,
    config: Arc<russh::server::Config>,
    slots: (OwnedSemaphorePermit, AddressSlot),
) {
    // An agent link that dies under an upload is noticed as an idle one is.
    if let Err(e) = postern_protocol::silent_link::prepare(&socket) {
        debug!(%peer, error = %e, "cannot set up the agent's socket");
    }
    let (socket, closer) = match socket
        .into_std()
        .and_then(|s| Ok((s.try_clone()?, s)))
        .and_then(|(clone, s)| Ok((tokio::net::TcpStream::from_std(s)?, clone)))
    {
        Ok(pair) => pair,
        Err(e) => {
            warn!(error = %e, "cannot set up an accepted ssh socket");
            return;
        }
    };
    let pre_auth: PreAuthSlot = Arc::new(Mutex::new(Some(PreAuth {
        closer,
        _slots: slots,
        stage: Stage::Waiting,
    })));
    let state = Arc::new(Mutex::new(None::<Registered>));
    let closing_reason = ClosingReason::default();
    let authenticated = CancellationToken::new();
    let hello_answered = CancellationToken::new();
    let welcome_sent = CancellationToken::new();
    let login_end = Arc::new(LoginEnd::default());
    let _release = ReleaseOnDrop(login_end.clone());
    let handler = AgentHandler {
        ctx: ctx.clone(),
        peer,
        agent: None,
        token_version: 0,
        session_id: ctx.next_session_id(),
        forward_requested: Arc::new(AtomicBool::new(false)),
        control_open: false,
        registered: state.clone(),
        closing_reason: closing_reason.clone(),
        pre_auth: pre_auth.clone(),
        authenticated: authenticated.clone(),
        hello_answered: hello_answered.clone(),
        welcome_sent: welcome_sent.clone(),
        login_end: login_end.clone(),
        connection_slot: None,
    };
    let auth_deadline = tokio::time::Instant::now() + AUTH_TIMEOUT;
    let started = tokio::time::timeout_at(
        auth_deadline,
        russh::server::run_stream(config, socket, handler),
    )
    .await;
    let running = match started {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            debug!(error = %e, "ssh handshake failed");
            hung_up(&ctx, peer, &pre_auth);
            return;
        }
        Err(_) => {
            silent_failure(&ctx, peer);
            info!(peer = %peer, "no ssh identification within the authentication timeout; closed");
            return;
        }
    };
    let handle = running.handle();
    tokio::pin!(running);
    let mut auth_pending = true;
    // Set once authenticated: a logged-in session that never says hello is never in the
    // registry, so nothing else (revocation, replacement) would ever end it.
    let mut hello_deadline = None;
    let ended = loop {
        tokio::select! {
            result = &mut running => {
                // Before a login only: one that succeeded took the place.
                hung_up(&ctx, peer, &pre_auth);
                break match result {
                    Ok(()) => "the agent closed the connection".to_owned(),
                    Err(e) => {
                        debug!(error = %e, "ssh session ended with an error");
                        format!("connection lost: {e}")
                    }
                };
            }
            _ = ctx.shutdown.cancelled() => {
                closing_reason.set("relay shutting down");
                say_why(&handle, &login_end, &mut running, "relay shutting down").await;
                break "relay shutting down".to_owned();
            }
            _ = authenticated.cancelled(), if hello_deadline.is_none() => {
                hello_deadline = Some(tokio::time::Instant::now() + HELLO_TIMEOUT);
            }
            _ = sleep_until_some(hello_deadline), if !hello_answered.is_cancelled() => {
                if !hello_answered.is_cancelled() {
                    // The welcome was being written: what the agent did not do is take it
                    // (its control channel's window stayed shut).
                    let why = if welcome_sent.is_cancelled() { WELCOME_UNREAD } else { NO_HELLO };
                    info!(peer = %peer, "{why}; closed");
                    closing_reason.set(why);
                    say_why(&handle, &login_end, &mut running, why).await;
                    break why.to_owned();
                }
            }
            _ = login_end.asked(), if auth_pending => {
                // The handler counted and logged it; the agent is told why, and the
                // connection goes at once (its silence is no peer's).
                let pending = take_pre_auth(&pre_auth);
                if let Some(why) = login_end.reason() {
                    say_why(&handle, &login_end, &mut running, why).await;
                }
                if let Some(pending) = pending {
                    let _ = pending.closer.shutdown(std::net::Shutdown::Both);
                }
                return;
            }
            _ = tokio::time::sleep_until(auth_deadline), if auth_pending => {
                auth_pending = false;
                // Whoever takes the slot decides: a login that succeeds takes it first,
                // and one that finds it gone (the store answered too late) is ended here.
                if let Some(pending) = take_pre_auth(&pre_auth) {
                    match pending.stage {
                        Stage::Checking => ctx.metrics.auth_failed("timeout"),
                        Stage::Waiting | Stage::Uncounted => silent_failure(&ctx, peer),
                        Stage::Busy if told_apart(peer.ip()) => ctx.throttle.hangup(peer.ip()),
                        Stage::Busy | Stage::Settled => {}
                    }
                    // A login the handler left unanswered for the relay's reason (an agent
                    // with all its connections), or whose token the store has not checked
                    // yet, is told why: the handler fails the login once the disconnect is
                    // queued, and russh writes it (patch 15).
                    let why = login_end
                        .reason()
                        .or((pending.stage == Stage::Checking).then_some(CHECK_TOO_SLOW));
                    if let Some(why) = why {
                        info!(peer = %peer, reason = why, "login ended at the authentication timeout");
                        say_why(&handle, &login_end, &mut running, why).await;
                        let _ = pending.closer.shutdown(std::net::Shutdown::Both);
                        return;
                    }
                    info!(peer = %peer, "not authenticated within the authentication timeout; closed");
                    queue_disconnect(&handle, "authentication timeout").await;
                    // Before the key exchange ends russh cannot send the disconnect;
                    // shutting the socket down ends its task either way.
                    let _ = pending.closer.shutdown(std::net::Shutdown::Both);
                    let _ = tokio::time::timeout(DISCONNECT_WRITE_LIMIT, &mut running).await;
                    return;
                }
            }
        }
    };
    let registered = state.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(Registered {
        agent_id,
        agent_name,
        session_id,
    }) = registered
    {
        let reason = closing_reason.get().unwrap_or(ended);
        info!(agent = %agent_name, session = session_id, %reason, "agent session ended");
        ctx.metrics.session_closed(&reason);
        ctx.registry.end_session(&agent_id, session_id, reason);
    }
}

/// The agent a connection logged in as, until the connection ends.
pub struct Registered {
    pub agent_id: String,
    pub agent_name: String,
    pub session_id: u64,
}

/// How long an authenticated agent has to say hello and be welcomed.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a session that logged in but never said hello was closed (counted as `hello_refused`).
const NO_HELLO: &str = "no hello within 10 s of authenticating";

/// Why a session whose hello was taken but whose control channel would not take the
/// answer was closed (counted as `hello_refused` too).
const WELCOME_UNREAD: &str = "hello taken but the welcome not read within 10 s of authenticating";

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until_some(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Ends the session with `why`: queues the disconnect, lets a handler holding a login back
/// fail it (russh then writes the disconnect, patch 15), and gives the write up to
/// [`DISCONNECT_WRITE_LIMIT`], which the process must outlive for the agent to hear it.
async fn say_why<S: Future>(
    handle: &russh::server::Handle,
    login_end: &LoginEnd,
    running: &mut Pin<&mut S>,
    why: &'static str,
) {
    queue_disconnect(handle, why).await;
    login_end.sent();
    let _ = tokio::time::timeout(DISCONNECT_WRITE_LIMIT, running.as_mut()).await;
}

async fn queue_disconnect(handle: &russh::server::Handle, why: &'static str) {
    let _ = handle
        .disconnect(russh::Disconnect::ByApplication, why.into(), String::new())
        .await;
}

struct AgentHandler {
    ctx: Arc<RelayContext>,
    peer: SocketAddr,
    agent: Option<AgentRecord>,
    /// The token version the agent logged in with.
    token_version: i64,
    session_id: u64,
    forward_requested: Arc<AtomicBool>,
    control_open: bool,
    /// Set once authenticated, so the connection task can deregister the session.
    registered: Arc<Mutex<Option<Registered>>>,
    closing_reason: ClosingReason,
    /// Dropped once authenticated: the spare socket handle and the unauthenticated slot.
    pre_auth: PreAuthSlot,
    /// Cancelled once authenticated (starts the hello clock).
    authenticated: CancellationToken,
    /// Cancelled by the control channel once the agent is welcomed.
    hello_answered: CancellationToken,
    /// Cancelled by the control channel as it starts writing the welcome.
    welcome_sent: CancellationToken,
    /// A login ended with the relay's reason rather than refused.
    login_end: Arc<LoginEnd>,
    /// This connection's place among its agent's, from its login to its end.
    connection_slot: Option<KeyedSlot<String>>,
}

impl AgentHandler {
    /// Moves the connection's login to `stage`, while it is not logged in yet.
    fn stage(&self, stage: Stage) {
        if let Some(pending) = self
            .pre_auth
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
        {
            pending.stage = stage;
        }
    }

    /// A store call for the login, given up once the loop has ended the login (the
    /// authentication timeout came first): the login then fails, and russh writes the
    /// loop's disconnect with its reason (patch 15) rather than an answer.
    async fn checking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<Result<T, StoreError>, russh::Error> {
        tokio::select! {
            checked = self.ctx.store_call(f) => Ok(checked),
            _ = self.login_end.ended() => Err(russh::Error::Disconnect),
        }
    }

    /// Refuses after the throttle's delay; a `guess` counts towards blocking the address.
    async fn refuse(&self, why: &str, label: &'static str, guess: bool) -> Auth {
        self.refuse_naming(why, label, guess, None).await
    }

    /// [`Self::refuse`], naming the agent (name, id) whose token it was, when known.
    async fn refuse_naming(
        &self,
        why: &str,
        label: &'static str,
        guess: bool,
        agent: Option<(&str, &str)>,
    ) -> Auth {
        self.ctx.metrics.auth_failed(label);
        // A former token's refusal is not counted as a guess (a site whose agents still
        // hold a rotated token is no attacker), only towards a far higher ceiling: silence
        // after it still is, or one such token held a quarter of the places, ten seconds at
        // a time, for ever.
        self.stage(if guess {
            Stage::Settled
        } else {
            Stage::Uncounted
        });
        let delay = if guess {
            self.ctx.throttle.failure(self.peer.ip())
        } else {
            // Not for loopback peers: behind a local TCP proxy they are the whole fleet,
            // whose forgotten agents together could pass the ceiling.
            if told_apart(self.peer.ip()) {
                self.ctx.throttle.former_token(self.peer.ip());
            }
            crate::auth_throttle::FIRST_DELAY
        };
        let delay_ms = delay.as_millis() as u64;
        match agent {
            Some((name, id)) => {
                warn!(peer = %self.peer, agent = %name, id = %id, reason = why, delay_ms, "agent authentication refused")
            }
            None => {
                warn!(peer = %self.peer, reason = why, delay_ms, "agent authentication refused")
            }
        }
        tokio::time::sleep(delay).await;
        Auth::reject()
    }
}

/// Ends the session of an agent that sent a channel request no agent sends (a shell, an
/// environment variable, a terminal…). russh queues each on the channel before it asks
/// the handler, and nobody reads those queues: answered only, a flood of them would grow
/// the relay's memory for as long as the channel lived.
fn no_such_request(peer: SocketAddr, what: &str) -> russh::Error {
    warn!(%peer, request = what, "agent sent a channel request agents never send; ending its session");
    russh::Error::RequestDenied
}

impl russh::server::Handler for AgentHandler {
    type Error = russh::Error;

    async fn pty_request(
        &mut self,
        _: ChannelId,
        _: &str,
        _: u32,
        _: u32,
        _: u32,
        _: u32,
        _: &[(russh::Pty, u32)],
        _: &mut Session,
    ) -> Result<(), Self::Error> {
        Err(no_such_request(self.peer, "pty-req"))
    }

    async fn x11_request(
        &mut self,
        _: ChannelId,
        _: bool,
        _: &str,
        _: &str,
        _: u32,
        _: &mut Session,
    ) -> Result<(), Self::Error> {
        Err(no_such_request(self.peer, "x11-req"))
    }

    async fn env_request(
        &mut self,
        _: ChannelId,
        _: &str,
        _: &str,
        _: &mut Session,
    ) -> Result<(), Self::Error> {
        Err(no_such_request(self.peer, "env"))
    }

    async fn shell_request(&mut self, _: ChannelId, _: &mut Session) -> Result<(), Self::Error> {
        Err(no_such_request(self.peer, "shell"))
    }

    async fn exec_request(
        &mut self,
        _: ChannelId,
        _: &[u8],
        _: &mut Session,
    ) -> Result<(), Self::Error> {
        Err(no_such_request(self.peer, "exec"))
    }

    async fn subsystem_request(
        &mut self,
        _: ChannelId,
        _: &str,
        _: &mut Session,
    ) -> Result<(), Self::Error> {
        Err(no_such_request(self.peer, "subsystem"))
    }

    async fn window_change_request(
        &mut self,
        _: ChannelId,
        _: u32,
        _: u32,
        _: u32,
        _: u32,
        _: &mut Session,
    ) -> Result<(), Self::Error> {
        Err(no_such_request(self.peer, "window-change"))
    }

    async fn agent_request(&mut self, _: ChannelId, _: &mut Session) -> Result<bool, Self::Error> {
        Err(no_such_request(self.peer, "auth-agent-req"))
    }

    async fn signal(
        &mut self,
        _: ChannelId,
        _: russh::Sig,
        _: &mut Session,
    ) -> Result<(), Self::Error> {
        Err(no_such_request(self.peer, "signal"))
    }

    async fn auth_password(&mut self, _user: &str, password: &str) -> Result<Auth, Self::Error> {
        let token = match SecretToken::parse(SecretKind::AgentToken, password) {
            Ok(t) => t,
            Err(_) => {
                return Ok(self
                    .refuse("malformed token", "malformed_token", true)
                    .await);
            }
        };
        self.stage(Stage::Checking);
        let checked = token.clone();
        let lookup = self
            .checking(move |store| store.login(&checked, unix_now()))
            .await?;
        match lookup {
            Ok(Login::Agent(login)) => {
                let agent = login.agent;
                // Recorded before the session can serve: a rotation within the grace then
                // moves this token to the old one's place, rather than taking it for a
                // token nobody used (a retried rotation's) and ending it.
                if login.first_use {
                    let id = agent.id.clone();
                    let marked = self
                        .checking(move |store| store.mark_token_used(&id, &token, unix_now()))
                        .await?;
                    match marked {
                        Ok(true) => {}
                        Ok(false) => {
                            return Ok(self
                                .refuse(
                                    "token replaced as this login was checked",
                                    "former_token",
                                    false,
                                )
                                .await);
                        }
                        Err(e) => {
                            warn!(agent = %agent.name, error = %e, "cannot record the agent's new token as used; a rotation within its grace would take it for unused and end it");
                        }
                    }
                }
                // Before the pre-auth place is taken: a connection refused here stays
                // unauthenticated, and the authentication timeout still closes it.
                let Some(slot) = self.ctx.agent_connections.take(agent.id.clone()) else {
                    self.ctx.metrics.auth_failed("agent_busy");
                    // A valid token: its connection's silence is not a guess. Yet it
                    // holds its pre-login places until the timeout, and a leaked token
                    // refused so from many connections would hold them all, for the
                    // fleet's reconnects to wait behind: the refusal, and the silence
                    // after it, count towards the high ceiling of connections that bring
                    // no session (twice, so 250 places held 10 s at a time pass it).
                    self.stage(Stage::Busy);
                    if told_apart(self.peer.ip()) {
                        self.ctx.throttle.hangup(self.peer.ip());
                    }
                    warn!(peer = %self.peer, agent = %agent.name, "agent has {MAX_CONNECTIONS_PER_AGENT} connections already; login refused");
                    // Unanswered until the timeout, where the loop says why: a refusal
                    // would read as a bad token to the agent.
                    return Err(self.login_end.end(AGENT_BUSY, false).await);
                };
                let Some(pre_auth) = take_pre_auth(&self.pre_auth) else {
                    // The loop took it at the timeout and ends the login with its reason.
                    info!(peer = %self.peer, agent = %agent.name, "login checked after the authentication timeout; ended");
                    self.login_end.ended().await;
                    return Err(russh::Error::Disconnect);
                };
                self.connection_slot = Some(slot);
                self.token_version = login.token_version;
                self.ctx.throttle.success(self.peer.ip());
                self.ctx.metrics.session_opened();
                info!(agent = %agent.name, id = %agent.id, "agent authenticated");
                *self.registered.lock().unwrap_or_else(|p| p.into_inner()) = Some(Registered {
                    agent_id: agent.id.clone(),
                    agent_name: agent.name.clone(),
                    session_id: self.session_id,
                });
                // One file descriptor per agent, not two, and room for the next login.
                drop(pre_auth);
                self.authenticated.cancel();
                self.agent = Some(agent);
                Ok(Auth::Accept)
            }
            // A token an agent once held is an agent nobody updated, not a guess: blocking
            // its address would lock out every agent behind the same NAT address.
            // Its holder proved the token: naming its agent tells them nothing, and tells
            // the admin which agent behind a shared address nobody updated.
            Ok(Login::Former(former)) => {
                let agent = Some((former.agent_name.as_str(), former.agent_id.as_str()));
                Ok(self
                    .refuse_naming(former.why.reason(), "former_token", false, agent)
                    .await)
            }
            Ok(Login::Unknown) => Ok(self.refuse("unknown token", "unknown_token", true).await),
            Err(e) => {
                self.stage(Stage::Settled);
                self.ctx.metrics.auth_failed("store_unavailable");
                warn!(error = %e, "store unavailable during authentication");
                // Not a refusal, which the agent would take for a bad token and wait long
                // after: the session ends with the reason, and the agent retries as usual.
                Err(self.login_end.end(STORE_UNAVAILABLE, true).await)
            }
        }
    }

    async fn auth_publickey_offered(
        &mut self,
        _user: &str,
        _key: russh::server::PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(Auth::reject())
    }

    async fn tcpip_forward(
        &mut self,
        address: &str,
        _port: &mut u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        let ok = self.agent.is_some() && address == FORWARD_ADDRESS;
        if ok {
            self.forward_requested.store(true, Ordering::SeqCst);
        }
        Ok(ok)
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: russh::server::ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Some(agent) = self.agent.clone() else {
            return Ok(());
        };
        if self.control_open || !self.forward_requested.load(Ordering::SeqCst) {
            // One control channel per session, after the forward: anything else is refused.
            return Ok(());
        }
        self.control_open = true;
        reply.accept().await;
        let control = ControlChannel {
            ctx: self.ctx.clone(),
            agent,
            session_id: self.session_id,
            remote_addr: self.peer,
            token_version: self.token_version,
            closing_reason: self.closing_reason.clone(),
            handle: session.handle(),
            connection: self.registered.clone(),
            welcomed: self.hello_answered.clone(),
            welcome_sent: self.welcome_sent.clone(),
        };
        let span = tracing::Span::current();
        self.ctx.tasks.spawn(control.run(channel).instrument(span));
        Ok(())
    }

    async fn channel_close(
        &mut self,
        _channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        Ok(())
    }
}
