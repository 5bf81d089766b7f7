//! A relay driven by hand, for tests of what a real agent does when its relay misbehaves:
//! russh's own server with a host key the agent pins, taking any token, granting the
//! forward and welcoming the hello; then the test opens call channels as it likes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use postern_protocol::control::{AgentMessage, RelayMessage, decode_line, encode_line};
use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::{HashAlg, PrivateKey};
use russh::server::{self, Msg};
use russh::{Channel, ChannelStream};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::task::AbortOnDropHandle;

pub struct HandRelay {
    pub addr: SocketAddr,
    /// What the agent's `relay_fingerprint` must say.
    pub fingerprint: String,
    sessions: mpsc::UnboundedReceiver<AgentSession>,
    _accepting: AbortOnDropHandle<()>,
}

/// One agent's session, welcomed: open call channels on it with [`AgentSession::open`].
pub struct AgentSession {
    pub handle: server::Handle,
    pub hello: AgentMessage,
    /// Read on until the agent closes it; the session lives as long as this does.
    _control: AbortOnDropHandle<()>,
}

impl HandRelay {
    /// Listens on 127.0.0.1:0; each channel it opens gets a receive window of `window`
    /// bytes (what the agent may send on it before the test reads).
    pub async fn start(window: u32) -> Result<Self> {
        let key = PrivateKey::from(Ed25519Keypair::from_seed(&[11; 32]));
        let fingerprint = key.public_key().fingerprint(HashAlg::Sha256).to_string();
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let config = Arc::new(server::Config {
            keys: vec![key],
            auth_rejection_time: Duration::ZERO,
            window_size: window,
            maximum_packet_size: 32768,
            ..Default::default()
        });
        let (welcomed, sessions) = mpsc::unbounded_channel();
        let accepting = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let handler = Welcoming {
                    welcomed: welcomed.clone(),
                    forwarded: false,
                };
                let config = config.clone();
                tokio::spawn(async move {
                    if let Ok(running) = server::run_stream(config, socket, handler).await {
                        let _ = running.await;
                    }
                });
            }
        });
        Ok(Self {
            addr,
            fingerprint,
            sessions,
            _accepting: AbortOnDropHandle::new(accepting),
        })
    }

    /// An agent config for this relay (any well-formed token) with `connections`.
    pub fn agent_config(&self, connections: &str) -> String {
        crate::harness::agent_config(
            self.addr,
            &self.fingerprint,
            &crate::harness::unknown_token(),
            connections,
        )
    }

    /// The next agent session once welcomed, within 15 s.
    pub async fn session(&mut self) -> Result<AgentSession> {
        tokio::time::timeout(Duration::from_secs(15), self.sessions.recv())
            .await
            .context("no agent said hello within 15 s")?
            .context("the relay stopped")
    }
}

impl AgentSession {
    /// Opens a call channel to `connection`, as the relay does for a call; the agent's
    /// refusal comes back as `russh::Error::ChannelOpenFailure`.
    pub async fn open(&self, connection: &str) -> Result<Channel<Msg>, russh::Error> {
        self.handle
            .channel_open_forwarded_tcpip(
                format!("http:{connection}"),
                0,
                postern_protocol::version::FORWARD_ADDRESS,
                0,
            )
            .await
    }
}

struct Welcoming {
    welcomed: mpsc::UnboundedSender<AgentSession>,
    forwarded: bool,
}

impl server::Handler for Welcoming {
    type Error = russh::Error;

    async fn auth_password(&mut self, _: &str, _: &str) -> Result<server::Auth, Self::Error> {
        Ok(server::Auth::Accept)
    }

    async fn tcpip_forward(
        &mut self,
        _address: &str,
        _port: &mut u32,
        _session: &mut server::Session,
    ) -> Result<bool, Self::Error> {
        self.forwarded = true;
        Ok(true)
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: server::ChannelOpenHandle,
        session: &mut server::Session,
    ) -> Result<(), Self::Error> {
        if !self.forwarded {
            return Ok(());
        }
        reply.accept().await;
        let (handle, welcomed) = (session.handle(), self.welcomed.clone());
        tokio::spawn(async move {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let control = tokio::spawn(control(channel.into_stream(), tx));
            if let Ok(hello) = rx.await {
                let _ = welcomed.send(AgentSession {
                    handle,
                    hello,
                    _control: AbortOnDropHandle::new(control),
                });
            }
        });
        Ok(())
    }
}

/// Reads the hello, answers `welcome`, hands the hello on, then reads the channel to its end.
async fn control(
    stream: ChannelStream<Msg>,
    hello_read: tokio::sync::oneshot::Sender<AgentMessage>,
) {
    let (read, mut write) = tokio::io::split(stream);
    let mut reader = BufReader::new(read);
    let mut line = Vec::new();
    if reader.read_until(b'\n', &mut line).await.is_err() {
        return;
    }
    let Ok(hello) = decode_line::<AgentMessage>(&line) else {
        return;
    };
    let welcome = RelayMessage::Welcome {
        protocol_version: postern_protocol::PROTOCOL_VERSION,
        agent_id: "hand-relay-agent".into(),
        agent_name: "hand".into(),
    };
    if write.write_all(&encode_line(&welcome)).await.is_err() || write.flush().await.is_err() {
        return;
    }
    let _ = hello_read.send(hello);
    let mut sink = [0u8; 1024];
    while matches!(reader.read(&mut sink).await, Ok(n) if n > 0) {}
}
