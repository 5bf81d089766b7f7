//! The russh client handler: pins the relay's host key, and admits only
//! `forwarded-tcpip` channels that name one of this agent's connections.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use postern_protocol::ChannelTarget;
use russh::client::{ChannelOpenHandle, DisconnectReason, Msg, Session};
use russh::keys::{HashAlg, PublicKeyOrCertificate};
use russh::{Channel, ChannelOpenFailure, Preferred, cipher, kex};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info_span, warn};

use crate::call_table::CallTable;
use crate::channel;
use crate::open_channels::{self, OpenChannels};

/// Keepalive every 4 s, dropped after 2 missed: a dead link is noticed in ~12 s.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(4);
pub const KEEPALIVE_MAX: usize = 2;
/// Receive window per channel: request bodies flow relay → agent (RUSSH-NOTES).
pub const WINDOW_SIZE: u32 = 16 * 1024 * 1024;
/// Channels start with this window and double it, up to `WINDOW_SIZE`, each time the
/// internal server took a whole one within a second, while what they grew by in all
/// stays within `UPLOAD_BUFFER`:
/// the relay may have sent at most that, plus `INITIAL_WINDOW` per channel, of request
/// bodies that internal servers have not read yet.
pub const INITIAL_WINDOW: u32 = 256 * 1024;
pub const UPLOAD_BUFFER: u64 = 64 * 1024 * 1024;

/// Ends a session that hears nothing for this long. Once authenticated the keepalives
/// end a dead link sooner; this bounds the session task russh spawns on connect, which
/// outlives a connect the tunnel gave up on (a relay silent during key exchange).
pub const INACTIVITY_TIMEOUT: Duration = Duration::from_secs(60);

pub fn russh_config() -> russh::client::Config {
    russh::client::Config {
        inactivity_timeout: Some(INACTIVITY_TIMEOUT),
        keepalive_interval: Some(KEEPALIVE_INTERVAL),
        keepalive_max: KEEPALIVE_MAX,
        nodelay: true,
        window_size: WINDOW_SIZE,
        window_budget: Some(russh::WindowBudget {
            initial: INITIAL_WINDOW,
            session: UPLOAD_BUFFER,
        }),
        maximum_packet_size: 32768,
        preferred: Preferred {
            kex: std::borrow::Cow::Borrowed(&[
                kex::MLKEM768X25519_SHA256,
                kex::CURVE25519,
                kex::CURVE25519_PRE_RFC_8731,
                kex::EXTENSION_SUPPORT_AS_CLIENT,
                kex::EXTENSION_OPENSSH_STRICT_KEX_AS_CLIENT,
            ]),
            cipher: std::borrow::Cow::Borrowed(&[
                cipher::AES_256_GCM,
                cipher::AES_128_GCM,
                cipher::CHACHA20_POLY1305,
            ]),
            ..Preferred::default()
        },
        ..Default::default()
    }
}

/// State the tunnel shares with the handler (which russh owns).
#[derive(Clone)]
pub struct Shared {
    pub expected_fingerprint: String,
    /// The fingerprint the relay showed, for the mismatch message.
    pub seen_fingerprint: Arc<Mutex<Option<String>>>,
    pub calls: Arc<CallTable>,
    /// True once our forward is granted; false again while draining.
    pub accepting: Arc<AtomicBool>,
    /// Every session's channel tasks, for the agent's stop to wait on.
    pub tasks: TaskTracker,
    /// This session's, for its drain to wait on.
    pub session_tasks: TaskTracker,
    /// This session's channels, counted against the cap a relay may not pass.
    pub open_channels: Arc<OpenChannels>,
    /// Cancelled when the agent drains facing a relay older than `RELAY_CLOSES_DRAINING`:
    /// each channel then closes itself once its call under way is answered.
    pub close_channels: CancellationToken,
    pub disconnected: Arc<Notify>,
    pub disconnect_reason: Arc<Mutex<Option<String>>>,
}

pub struct AgentSsh {
    pub shared: Shared,
}

impl russh::client::Handler for AgentSsh {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let PublicKeyOrCertificate::PublicKey { key, .. } = key else {
            *lock(&self.shared.seen_fingerprint) = Some("a certificate (not supported)".into());
            return Ok(false);
        };
        let seen = key.fingerprint(HashAlg::Sha256).to_string();
        let ok = seen == self.shared.expected_fingerprint;
        *lock(&self.shared.seen_fingerprint) = Some(seen);
        Ok(ok)
    }

    async fn server_channel_open_forwarded_tcpip(
        &mut self,
        channel: Channel<Msg>,
        connected_address: &str,
        _connected_port: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        // Counted among the channel tasks from before the check: a drain that starts
        // after it passed must wait for this channel, not see no task and disconnect.
        let _counted = (self.shared.tasks.token(), self.shared.session_tasks.token());
        std::sync::atomic::fence(Ordering::SeqCst);
        if !self.shared.accepting.load(Ordering::SeqCst) {
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        }
        let target = ChannelTarget::parse(connected_address).ok();
        let ctx = target
            .as_ref()
            .and_then(|t| self.shared.calls.get(t.connection().as_str()));
        let (Some(target), Some(ctx)) = (target, ctx) else {
            // Within the session's budget: a relay could ask this of every open.
            if let Some(left_out) = self.shared.open_channels.may_log() {
                warn!(target = %connected_address.chars().take(80).collect::<String>(), "relay asked for a connection this agent does not have; refused{left_out}");
            }
            reply.reject(ChannelOpenFailure::ConnectFailed).await;
            return Ok(());
        };
        // An honest relay stays far below the cap; one that does not is refused, not
        // given a task and buffers per open.
        let cap = open_channels::cap(&self.shared.calls.snapshot());
        let Some(place) = self.shared.open_channels.admit(channel.id().number(), cap) else {
            reply.reject(ChannelOpenFailure::ResourceShortage).await;
            return Ok(());
        };
        reply.accept().await;
        let span = info_span!("channel", connection = %ctx.connection.name);
        match target {
            ChannelTarget::Http(_) => {
                let connection = (
                    ctx.connection.name.as_str().into(),
                    ctx.connection.limits.max_header_bytes,
                );
                self.shared.tasks.spawn(
                    self.shared.session_tasks.track_future(
                        channel::serve(
                            channel,
                            place,
                            connection,
                            self.shared.calls.clone(),
                            self.shared.close_channels.clone(),
                        )
                        .instrument(span),
                    ),
                );
            }
            ChannelTarget::Test(_) => {
                self.shared.tasks.spawn(
                    self.shared
                        .session_tasks
                        .track_future(channel::serve_test(channel, ctx, place).instrument(span)),
                );
            }
        }
        Ok(())
    }

    /// The relay closed a channel: its place is free for the next open at once, as the
    /// relay counts it, whenever its task gets to its end.
    async fn channel_close(
        &mut self,
        channel: russh::ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.shared.open_channels.closed_by_relay(channel.number());
        Ok(())
    }

    // russh accepts these by default; the relay has no business opening them.
    async fn server_channel_open_session(
        &mut self,
        _channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        refuse("session", reply).await
    }

    async fn server_channel_open_direct_tcpip(
        &mut self,
        _channel: Channel<Msg>,
        _host: &str,
        _port: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        refuse("direct-tcpip", reply).await
    }

    async fn server_channel_open_x11(
        &mut self,
        _channel: Channel<Msg>,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        refuse("x11", reply).await
    }

    async fn server_channel_open_agent_forward(
        &mut self,
        _channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        refuse("auth-agent", reply).await
    }

    async fn server_channel_open_forwarded_streamlocal(
        &mut self,
        _channel: Channel<Msg>,
        _socket_path: &str,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        refuse("forwarded-streamlocal", reply).await
    }

    async fn server_channel_open_direct_streamlocal(
        &mut self,
        _channel: Channel<Msg>,
        _socket_path: &str,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        refuse("direct-streamlocal", reply).await
    }

    async fn disconnected(
        &mut self,
        reason: DisconnectReason<Self::Error>,
    ) -> Result<(), Self::Error> {
        let text = match reason {
            DisconnectReason::ReceivedDisconnect(info) => {
                format!("relay closed the session: {}", info.message)
            }
            DisconnectReason::Error(e) => format!("session lost: {e}"),
        };
        *lock(&self.shared.disconnect_reason) = Some(text);
        self.shared.disconnected.notify_one();
        Ok(())
    }
}

async fn refuse(kind: &str, reply: ChannelOpenHandle) -> Result<(), russh::Error> {
    warn!(
        kind,
        "relay tried to open a channel type the agent never serves; refused"
    );
    reply
        .reject(ChannelOpenFailure::AdministrativelyProhibited)
        .await;
    Ok(())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
