//! The SSH side: accept agent connections, authenticate their tokens, accept
//! only the reverse forward and the control channel, and end sessions on shutdown.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use postern_protocol::version::FORWARD_ADDRESS;
use postern_protocol::{SecretKind, SecretToken};
use russh::keys::PrivateKey;
use russh::server::{Auth, Msg, Session};
use russh::{Channel, ChannelId, MethodKind, MethodSet, Preferred, cipher, kex};
use tokio::net::TcpListener;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::context::RelayContext;
use crate::control::ControlChannel;
use crate::store::AgentRecord;

/// Keepalive every 5 s, dropped after 2 missed: a dead link is noticed in ~15 s.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
pub const KEEPALIVE_MAX: usize = 2;
/// Unauthenticated or silent connections are closed after this.
pub const INACTIVITY_TIMEOUT: Duration = Duration::from_secs(60);
/// Receive window per channel: large enough for WAN throughput (RUSSH-NOTES).
pub const WINDOW_SIZE: u32 = 16 * 1024 * 1024;

pub fn russh_config(host_key: PrivateKey) -> russh::server::Config {
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

/// Accepts agent connections until shutdown; each runs as a tracked task.
pub async fn serve(
    ctx: Arc<RelayContext>,
    listener: TcpListener,
    config: Arc<russh::server::Config>,
) {
    loop {
        let (socket, peer) = tokio::select! {
            _ = ctx.shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    warn!(%e, "ssh accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let ctx2 = ctx.clone();
        let config = config.clone();
        let span = info_span!("ssh", %peer);
        ctx.tasks
            .spawn(run_connection(ctx2, socket, peer, config).instrument(span));
    }
}

async fn run_connection(
    ctx: Arc<RelayContext>,
    socket: tokio::net::TcpStream,
    peer: SocketAddr,
    config: Arc<russh::server::Config>,
) {
    let _ = socket.set_nodelay(true);
    let state = Arc::new(Mutex::new(None::<(String, u64)>));
    let handler = AgentHandler {
        ctx: ctx.clone(),
        peer,
        agent: None,
        session_id: ctx.next_session_id(),
        forward_requested: Arc::new(AtomicBool::new(false)),
        control_open: false,
        registered: state.clone(),
    };
    let running = match russh::server::run_stream(config, socket, handler).await {
        Ok(r) => r,
        Err(e) => {
            debug!(error = %e, "ssh handshake failed");
            return;
        }
    };
    let handle = running.handle();
    tokio::select! {
        result = running => {
            if let Err(e) = result {
                debug!(error = %e, "ssh session ended with an error");
            }
        }
        _ = ctx.shutdown.cancelled() => {
            let _ = handle
                .disconnect(russh::Disconnect::ByApplication, "relay shutting down".into(), String::new())
                .await;
        }
    }
    let registered = state.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some((agent_id, session_id)) = registered {
        ctx.registry.remove_if(&agent_id, session_id);
    }
}

struct AgentHandler {
    ctx: Arc<RelayContext>,
    peer: SocketAddr,
    agent: Option<AgentRecord>,
    session_id: u64,
    forward_requested: Arc<AtomicBool>,
    control_open: bool,
    /// Set once authenticated, so the connection task can deregister the session.
    registered: Arc<Mutex<Option<(String, u64)>>>,
}

impl AgentHandler {
    async fn refuse(&self, why: &str) -> Auth {
        let delay = self.ctx.throttle.failure(self.peer.ip());
        warn!(peer = %self.peer, reason = why, delay_ms = delay.as_millis() as u64, "agent authentication refused");
        tokio::time::sleep(delay).await;
        Auth::reject()
    }
}

impl russh::server::Handler for AgentHandler {
    type Error = russh::Error;

    async fn auth_password(&mut self, _user: &str, password: &str) -> Result<Auth, Self::Error> {
        let token = match SecretToken::parse(SecretKind::AgentToken, password) {
            Ok(t) => t,
            Err(_) => return Ok(self.refuse("malformed token").await),
        };
        let ctx = self.ctx.clone();
        let lookup = ctx
            .store_call(move |store| store.agent_for_token(&token))
            .await;
        match lookup {
            Ok(Some(agent)) => {
                self.ctx.throttle.success(self.peer.ip());
                info!(agent = %agent.name, id = %agent.id, "agent authenticated");
                *self.registered.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some((agent.id.clone(), self.session_id));
                self.agent = Some(agent);
                Ok(Auth::Accept)
            }
            Ok(None) => Ok(self.refuse("unknown or revoked token").await),
            Err(e) => {
                warn!(error = %e, "store unavailable during authentication");
                Ok(Auth::reject())
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
            handle: session.handle(),
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
