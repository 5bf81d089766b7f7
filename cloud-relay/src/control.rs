//! The agent's control channel on the relay side: read its hello, register the
//! session (replacing an older one), answer welcome, then hold the channel.

use std::net::SocketAddr;
use std::sync::Arc;

use postern_protocol::control::{
    AgentMessage, EndReason, MAX_CONTROL_LINE, RelayMessage, decode_line, encode_line,
};
use postern_protocol::version::MIN_SUPPORTED_PROTOCOL_VERSION;
use postern_protocol::{ConnectionName, PROTOCOL_VERSION};
use russh::Channel;
use russh::server::Msg;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tracing::{info, warn};

use crate::channel_pool::ChannelPool;
use crate::context::RelayContext;
use crate::registry::{ClosingReason, ControlWriter, LiveSession};
use crate::store::{AgentRecord, unix_now};
use postern_logs::LogBudget;

/// Log lines a minute about one session's messages after its hello (with a count of
/// those left out): a reload or two is news, thousands a second are one line.
const CONTROL_LOG_LINES: u32 = 10;

pub struct ControlChannel {
    pub ctx: Arc<RelayContext>,
    pub agent: AgentRecord,
    pub session_id: u64,
    pub remote_addr: SocketAddr,
    pub token_version: i64,
    pub closing_reason: ClosingReason,
    pub handle: russh::server::Handle,
    /// The connection task's record of this session, taken when the connection ends.
    pub connection: Arc<std::sync::Mutex<Option<crate::ssh_server::Registered>>>,
    /// Cancelled once the agent is welcomed, so the connection stops its hello clock.
    pub welcomed: tokio_util::sync::CancellationToken,
    /// Cancelled as the welcome starts out: past the clock, the agent did not read it.
    pub welcome_sent: tokio_util::sync::CancellationToken,
}

impl ControlChannel {
    /// Runs until the channel closes. Returns without registering on a bad hello.
    pub async fn run(self, channel: Channel<Msg>) {
        let (read, write) = tokio::io::split(channel.into_stream());
        let writer: ControlWriter = Arc::new(tokio::sync::Mutex::new(write));
        let mut reader = BufReader::new(read.take(MAX_CONTROL_LINE as u64 + 1));
        let mut line = Vec::new();
        // No clock here: the connection closes a session that has not been welcomed
        // within `HELLO_TIMEOUT` of authenticating (ssh_server.rs).
        let refusal = match reader.read_until(b'\n', &mut line).await {
            Err(e) => Some(("bad_hello", format!("control channel: {e}"))),
            Ok(_) => match decode_line::<AgentMessage>(&line) {
                Err(e) => Some(("bad_hello", e.to_string())),
                Ok(AgentMessage::Hello {
                    protocol_version,
                    agent_version,
                    connections,
                }) => match self.check(protocol_version, &connections) {
                    Err(msg) => Some(("bad_hello", msg)),
                    Ok(connections) => self
                        .register(protocol_version, agent_version, connections, writer.clone())
                        .await
                        .err(),
                },
                Ok(other) => Some((
                    "bad_hello",
                    format!("expected a hello first, got {other:?}"),
                )),
            },
        };
        let reply = match &refusal {
            Some((code, message)) => {
                warn!(agent = %self.agent.name, code, detail = %message, "hello refused");
                RelayMessage::Refused {
                    code: (*code).to_owned(),
                    message: message.clone(),
                }
            }
            None => RelayMessage::Welcome {
                protocol_version: PROTOCOL_VERSION,
                agent_id: self.agent.id.clone(),
                agent_name: self.agent.name.clone(),
            },
        };
        if refusal.is_none() {
            self.welcome_sent.cancel();
        }
        {
            let mut write = writer.lock().await;
            let _ = write.write_all(&encode_line(&reply)).await;
            let _ = write.flush().await;
        }
        if refusal.is_some() {
            self.end_session(russh::Disconnect::ByApplication, "hello refused")
                .await;
            return;
        }
        self.welcomed.cancel();
        let mut budget = LogBudget::per_minute(CONTROL_LOG_LINES, "about this session's messages");
        // Hold the channel for the session's life, taking each inventory as it comes;
        // reading also keeps the channel's window open.
        loop {
            line.clear();
            // Each line gets the full length allowance.
            reader.get_mut().set_limit(MAX_CONTROL_LINE as u64 + 1);
            match reader.read_until(b'\n', &mut line).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            if !line.ends_with(b"\n") {
                // Left open unread, the channel's queue would hold whatever came next.
                warn!(agent = %self.agent.name, "control line too long; ending the session");
                self.end_session(russh::Disconnect::ProtocolError, "control line too long")
                    .await;
                break;
            }
            self.on_message(&line, &mut budget);
        }
    }

    /// Notes `why` as the session's end and disconnects it so.
    async fn end_session(&self, kind: russh::Disconnect, why: &str) {
        self.closing_reason.set(why);
        let _ = self
            .handle
            .disconnect(kind, why.to_owned(), String::new())
            .await;
    }

    /// Acts on a message after the hello. Its log lines come out of `budget`: the agent
    /// decides how many messages it sends, not how many lines the relay logs.
    fn on_message(&self, line: &[u8], budget: &mut LogBudget) {
        let name = &self.agent.name;
        match decode_line::<AgentMessage>(line) {
            Ok(AgentMessage::Inventory {
                connections: announced,
            }) => {
                let connections = match self.check(PROTOCOL_VERSION, &announced) {
                    Ok(connections) => connections,
                    Err(message) => {
                        if let Some(left_out) = budget.take() {
                            warn!(agent = %name, detail = %message, "inventory refused{left_out}");
                        }
                        return;
                    }
                };
                if let Some(live) = self.own_session()
                    && live.set_connections(connections)
                    && let Some(left_out) = budget.take()
                {
                    let announced = announced.join(", ");
                    info!(agent = %name, connections = %announced, "agent reloaded its connections{left_out}");
                }
            }
            Ok(AgentMessage::Draining) => {
                if let Some(live) = self.own_session()
                    && !live.channels.is_draining()
                {
                    info!(agent = %name, "agent drains (stopping or reconnecting): it takes no new calls");
                    live.channels.drain();
                }
            }
            Ok(AgentMessage::Hello { .. }) => {
                if let Some(left_out) = budget.take() {
                    warn!(agent = %name, "second hello ignored{left_out}");
                }
            }
            // A newer agent may send what this relay does not know yet.
            Err(e) => {
                if let Some(left_out) = budget.take() {
                    warn!(agent = %name, error = %e, "control message ignored{left_out}");
                }
            }
        }
    }

    /// This session's registry entry; `None` once a newer session of the same agent owns
    /// the entry (this one is on its way out).
    fn own_session(&self) -> Option<Arc<LiveSession>> {
        self.ctx
            .registry
            .get(&self.agent.id)
            .filter(|live| live.session_id == self.session_id)
    }

    /// The announced connection names, once the agent's protocol and every name are valid.
    fn check(
        &self,
        protocol_version: u32,
        connections: &[String],
    ) -> Result<Vec<ConnectionName>, String> {
        if protocol_version < MIN_SUPPORTED_PROTOCOL_VERSION {
            return Err(format!(
                "agent speaks protocol {protocol_version}, this relay needs at least {MIN_SUPPORTED_PROTOCOL_VERSION}: upgrade the agent"
            ));
        }
        connections
            .iter()
            .map(|name| ConnectionName::parse(name).map_err(|e| e.to_string()))
            .collect()
    }

    async fn register(
        &self,
        protocol_version: u32,
        agent_version: String,
        connections: Vec<ConnectionName>,
        control: ControlWriter,
    ) -> Result<(), (&'static str, String)> {
        // A revoke or rotation that landed between this login and its hello found no
        // session to drop. Read before the insert: a session whose token was rotated away
        // (a leaked one) must take no call, and must not replace the agent's real session.
        if let Some(reason) = self.credential_ended().await {
            return Err(refusal(reason));
        }
        let session = Arc::new(LiveSession::new(
            self.session_id,
            self.agent.id.clone(),
            self.agent.name.clone(),
            self.remote_addr,
            agent_version.chars().take(64).collect(),
            protocol_version,
            connections,
            self.token_version,
            self.closing_reason.clone(),
            self.handle.clone(),
            control,
            // As many idle channels as calls may run: a steady load never closes a channel
            // only to open another for the next call (a round trip each, and churn).
            ChannelPool::new(
                self.handle.clone(),
                usize::try_from(self.ctx.config.max_calls_per_agent).unwrap_or(usize::MAX),
                self.ctx.metrics.channels_opened(),
                self.ctx.tasks.clone(),
            ),
            self.ctx.registry.calls_of(&self.agent.id),
        ));
        if let Some(old) = self.ctx.registry.insert(session) {
            info!(agent = %self.agent.name, old = old.session_id, new = self.session_id, calls_under_way = old.calls_in_flight(), "newer session replaces older one; the older ends once its calls under way are answered");
            let ctx = self.ctx.clone();
            self.ctx.tasks.spawn(async move {
                let grace = ctx.config.shutdown_grace;
                ctx.registry.retire(old, grace, &ctx.shutdown).await;
            });
        }
        // A connection that ended before the insert found nothing to take out of the registry.
        if self
            .connection
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none()
        {
            self.ctx.registry.end_session(
                &self.agent.id,
                self.session_id,
                "connection lost".to_owned(),
            );
            return Ok(());
        }
        // Once more now that the session can be found: a revoke or rotation between that
        // read and the insert found no session to drop either.
        let Some(reason) = self.credential_ended().await else {
            return Ok(());
        };
        self.ctx.registry.end_session(
            &self.agent.id,
            self.session_id,
            reason.describe().to_owned(),
        );
        Err(refusal(reason))
    }

    /// Why this session's credential no longer holds, as the store says now; `None` while
    /// it holds, and when the store cannot say (the revocation watch checks every session
    /// against it again shortly).
    async fn credential_ended(&self) -> Option<EndReason> {
        let id = self.agent.id.clone();
        match self.ctx.store_call(move |s| s.find_agent(&id)).await {
            Ok(record) => {
                crate::revocation_watch::ended(record.as_ref(), self.token_version, unix_now())
            }
            Err(e) => {
                warn!(agent = %self.agent.name, error = %e, "cannot check the agent's record after its hello");
                None
            }
        }
    }
}

/// The refusal of a hello whose credential ended after the login.
fn refusal(reason: EndReason) -> (&'static str, String) {
    let code = match reason {
        EndReason::Revoked => "revoked",
        _ => "token_rotated",
    };
    (code, format!("{} before the hello", reason.describe()))
}
