//! A relay driven by hand, for tests of what a real agent does when its relay misbehaves:
//! russh's own server with a host key the agent pins, taking any token, granting the
//! forward and welcoming the hello (with this build's protocol version, or an older one);
//! then the test opens call channels as it likes and reads what the agent says.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
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
    /// Set, the next hello is answered with a line that is no message.
    garble_next: Arc<AtomicBool>,
    _accepting: AbortOnDropHandle<()>,
}

/// One agent's session, welcomed: open call channels on it with [`AgentSession::open`].
pub struct AgentSession {
    pub handle: server::Handle,
    pub hello: AgentMessage,
    pub welcomed_at: Instant,
    /// The lines the agent wrote on its control channel after its hello, as they came.
    said: Arc<Mutex<Vec<String>>>,
    /// When the control channel ended (the agent closed it, or the session).
    control_ended: Arc<OnceLock<Instant>>,
    /// What the test has the relay say on the control channel.
    tell: mpsc::UnboundedSender<RelayMessage>,
    /// Read on until the agent closes it; the session lives as long as this does.
    _control: AbortOnDropHandle<()>,
}

impl HandRelay {
    /// Listens on 127.0.0.1:0; each channel it opens gets a receive window of `window`
    /// bytes (what the agent may send on it before the test reads).
    pub async fn start(window: u32) -> Result<Self> {
        Self::speaking(window, postern_protocol::PROTOCOL_VERSION).await
    }

    /// Like [`HandRelay::start`], welcoming every agent with `protocol_version`: a relay
    /// of an older build.
    pub async fn speaking(window: u32, protocol_version: u32) -> Result<Self> {
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
        let garble_next = Arc::new(AtomicBool::new(false));
        let garble = garble_next.clone();
        let accepting = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let handler = Welcoming {
                    welcomed: welcomed.clone(),
                    forwarded: false,
                    protocol_version,
                    garble_next: garble.clone(),
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
            garble_next,
            _accepting: AbortOnDropHandle::new(accepting),
        })
    }

    /// Starts the agent of `bins` on this relay with `connections` (its config,
    /// `agent.toml` in `dir`, comes back too) and waits for its session's welcome.
    pub async fn with_agent(
        mut self,
        bins: &crate::harness::Bins,
        dir: &crate::temp::TempDir,
        connections: &str,
    ) -> Result<(Self, crate::harness::AgentProcess, AgentSession, PathBuf)> {
        let config = dir.write_private("agent.toml", &self.agent_config(connections))?;
        let agent = crate::harness::AgentProcess::start(bins, &config)?;
        let session = self.session().await?;
        Ok((self, agent, session, config))
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

    /// Answers the next hello with a line that is no message, as a relay whose answer
    /// broke: that session is handed to the test all the same.
    pub fn garble_next_welcome(&self) {
        self.garble_next.store(true, Ordering::SeqCst);
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

    /// What the agent said on its control channel since its hello, a line each.
    pub fn said(&self) -> Vec<String> {
        self.said.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Says `message` on the control channel, after anything said before.
    pub fn tell(&self, message: RelayMessage) {
        let _ = self.tell.send(message);
    }

    /// When the control channel ended, if it has.
    pub fn control_ended_at(&self) -> Option<Instant> {
        self.control_ended.get().copied()
    }
}

/// `GET path` as the relay sends it, with its `call_timeout` of `call_timeout_ms`.
pub fn request(path: &str, call_timeout_ms: u64, request_id: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nhost: orders\r\nx-request-id: {request_id}\r\nx-postern-call-timeout: {call_timeout_ms}\r\n\r\n"
    )
    .into_bytes()
}

/// Reads one answer with a `Content-Length` (hyper's own 431 has one too): its status.
pub async fn read_answer(stream: &mut ChannelStream<Msg>) -> Result<u16> {
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    let head_end = loop {
        if let Some(at) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .context("no answer within 10 s")??;
        ensure!(n > 0, "the channel ended before an answer");
        got.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&got[..head_end]).to_lowercase();
    let status = head
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .context("no status")?;
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .context("no content-length")?;
    while got.len() < head_end + length {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await??;
        ensure!(n > 0, "the channel ended within an answer");
        got.extend_from_slice(&buf[..n]);
    }
    Ok(status)
}

/// Whether the agent closes the channel within `limit` (whatever it sends first).
pub async fn closed_within(stream: &mut ChannelStream<Msg>, limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    let mut buf = [0u8; 8192];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

struct Welcoming {
    welcomed: mpsc::UnboundedSender<AgentSession>,
    forwarded: bool,
    protocol_version: u32,
    garble_next: Arc<AtomicBool>,
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
        let (tell, told) = mpsc::unbounded_channel();
        let control_channel = Control {
            protocol_version: self.protocol_version,
            garble: self.garble_next.swap(false, Ordering::SeqCst),
            said: Arc::default(),
            told,
            ended: Arc::default(),
        };
        tokio::spawn(async move {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let (said, control_ended) =
                (control_channel.said.clone(), control_channel.ended.clone());
            let control = tokio::spawn(control_channel.run(channel.into_stream(), tx));
            if let Ok(hello) = rx.await {
                let _ = welcomed.send(AgentSession {
                    handle,
                    hello,
                    welcomed_at: Instant::now(),
                    said,
                    control_ended,
                    tell,
                    _control: AbortOnDropHandle::new(control),
                });
            }
        });
        Ok(())
    }
}

/// One session's control channel, as the test sees it.
struct Control {
    protocol_version: u32,
    garble: bool,
    said: Arc<Mutex<Vec<String>>>,
    told: mpsc::UnboundedReceiver<RelayMessage>,
    /// When it ended: set as the task reading it ends, however it does.
    ended: Arc<OnceLock<Instant>>,
}

impl Drop for Control {
    fn drop(&mut self) {
        let _ = self.ended.set(Instant::now());
    }
}

impl Control {
    /// Reads the hello, answers `welcome`, hands the hello on, then keeps each line the
    /// agent says, and says what the test tells it to, until the channel ends.
    async fn run(
        mut self,
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
        let welcome = if self.garble {
            b"not a message\n".to_vec()
        } else {
            encode_line(&RelayMessage::Welcome {
                protocol_version: self.protocol_version,
                agent_id: "hand-relay-agent".into(),
                agent_name: "hand".into(),
            })
        };
        if write.write_all(&welcome).await.is_err() || write.flush().await.is_err() {
            return;
        }
        let _ = hello_read.send(hello);
        line.clear();
        loop {
            tokio::select! {
                // A line read in part stays in `line` for the next turn.
                read = reader.read_until(b'\n', &mut line) => {
                    if !matches!(read, Ok(n) if n > 0) || !line.ends_with(b"\n") {
                        return;
                    }
                    if let Ok(mut said) = self.said.lock() {
                        said.push(String::from_utf8_lossy(&line).trim_end().to_owned());
                    }
                    line.clear();
                }
                Some(message) = self.told.recv() => {
                    if write.write_all(&encode_line(&message)).await.is_err() || write.flush().await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}
