//! A peer that sends channel data beyond the SSH window it was granted (RFC 4254, 5.2
//! forbids it) ends the session with a protocol error, and the data beyond the window is
//! never queued (vendor/russh/POSTERN-PATCH.md, item 7). Without that, the unbounded
//! channel queues of patch 2 let such a peer — an agent-token holder against the relay, or
//! a relay against an agent — make the other side hold any amount of memory.
//!
//! The misbehaving peer is russh itself, on a real socket on 127.0.0.1, lied to by a proxy
//! in between: both sides negotiate the `none` cipher and MAC, so the proxy can read the
//! packets and raise the window the receiver advertises for a channel (in
//! `CHANNEL_OPEN_CONFIRMATION` or `CHANNEL_OPEN`). The sender then sends as much as it
//! believes it may, far beyond what the receiver granted. The same proxy, telling no lie,
//! carries a well-behaved transfer of 1 MiB through a small window unharmed.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use russh::keys::PrivateKey;
use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::{Channel, ChannelMsg, Disconnect, Preferred, client, server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The receiver's window: eight of the 8 KiB packets `Channel::data` sends.
const WINDOW: u32 = 64 * 1024;
/// What the sender sends, 16 windows.
const SENT: usize = 1024 * 1024;
/// What the proxy tells the sender the window is.
const LIED_WINDOW: u32 = 64 * 1024 * 1024;
/// How long a session may take to end once the peer oversteps.
const ENDS_WITHIN: Duration = Duration::from_secs(20);
const DESCRIPTION: &str = "channel data beyond the window";

const MSG_DISCONNECT: u8 = 1;
const MSG_CHANNEL_OPEN: u8 = 90;
const MSG_CHANNEL_OPEN_CONFIRMATION: u8 = 91;
const MSG_CHANNEL_CLOSE: u8 = 97;

/// The relay's side (the SSH server) refuses `CHANNEL_DATA` beyond the window of a channel
/// whose reader is there but does not read: the session ends with the error, the peer is
/// told why, and the channel's queue holds no more than the window.
#[tokio::test]
async fn the_server_ends_a_session_whose_peer_sends_beyond_the_window() -> Result<()> {
    let mut server = Server::start(WINDOW, Keep::Unread).await?;
    let proxy = Proxy::start(server.addr, Some(Lie::OpenConfirmation)).await?;
    let agent = Client::connect(proxy.addr, 2 * 1024 * 1024).await?;
    let channel = agent.handle.channel_open_session().await?;
    let sending = tokio::spawn(async move {
        let _ = channel.data(&vec![b'x'; SENT][..]).await;
        channel
    });

    let ended = server.ended(ENDS_WITHIN).await;
    let unread = server
        .channels
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .pop();
    let mut unread = unread.context("the server got no channel")?;
    let queued = drain(&mut unread).await;
    ensure!(
        queued <= WINDOW as usize,
        "the channel's queue took {queued} bytes with a window of {WINDOW}"
    );
    ensure!(queued > 0, "the data within the window was not delivered");
    assert_ended_on_the_window(ended)?;
    let told = agent.disconnected(ENDS_WITHIN).await?;
    ensure!(
        told == format!("ProtocolError: {DESCRIPTION}"),
        "the client was told {told:?}"
    );
    proxy.saw_protocol_error_disconnect("server").await?;
    sending.abort();
    Ok(())
}

/// Data for a channel whose reader is gone is granted back at once and not queued; data
/// beyond the window there is refused all the same.
#[tokio::test]
async fn the_server_refuses_data_beyond_the_window_of_a_channel_without_reader() -> Result<()> {
    // Smaller than one packet (`Channel::data` sends 8 KiB ones): the first oversteps
    // it. A larger window would be topped up before any packet could overstep it.
    const SMALL: u32 = 4 * 1024;
    let mut server = Server::start(SMALL, Keep::Dropped).await?;
    let proxy = Proxy::start(server.addr, Some(Lie::OpenConfirmation)).await?;
    let agent = Client::connect(proxy.addr, 2 * 1024 * 1024).await?;
    let channel = agent.handle.channel_open_session().await?;
    let sending = tokio::spawn(async move {
        let _ = channel.data(&vec![b'x'; SENT][..]).await;
        channel
    });

    assert_ended_on_the_window(server.ended(ENDS_WITHIN).await)?;
    proxy.saw_protocol_error_disconnect("server").await?;
    sending.abort();
    Ok(())
}

/// The agent's side (the SSH client) refuses `CHANNEL_EXTENDED_DATA` beyond the window of
/// a channel it does not read: its session ends with the error (what the agent logs as
/// "session lost"), the relay is told why, and the queue holds no more than the window.
#[tokio::test]
async fn the_client_ends_a_session_whose_peer_sends_extended_data_beyond_the_window() -> Result<()>
{
    let server = Server::start(2 * 1024 * 1024, Keep::SendExtended).await?;
    let proxy = Proxy::start(server.addr, Some(Lie::Open)).await?;
    let agent = Client::connect(proxy.addr, WINDOW).await?;
    let mut unread = agent.handle.channel_open_session().await?;

    let told = agent.disconnected(ENDS_WITHIN).await;
    let queued = drain(&mut unread).await;
    ensure!(
        queued <= WINDOW as usize,
        "the channel's queue took {queued} bytes with a window of {WINDOW}"
    );
    ensure!(queued > 0, "the data within the window was not delivered");
    let told = told?;
    ensure!(
        told.starts_with("error: Channel data beyond the window"),
        "the client's session ended with {told:?}"
    );
    proxy.saw_protocol_error_disconnect("client").await?;
    Ok(())
}

/// What a well-behaved peer does is untouched: through the same proxy, telling no lie,
/// 1 MiB goes through a 64 KiB window to a reader (window granted as it reads) and 1 MiB
/// to a channel without reader (window granted at once), and the session stays up.
#[tokio::test]
async fn a_peer_within_the_window_sends_as_much_as_it_likes() -> Result<()> {
    let server = Server::start(WINDOW, Keep::Read).await?;
    let proxy = Proxy::start(server.addr, None).await?;
    let agent = Client::connect(proxy.addr, 2 * 1024 * 1024).await?;

    let read = agent.handle.channel_open_session().await?;
    tokio::time::timeout(ENDS_WITHIN, read.data(&vec![b'x'; SENT][..]))
        .await
        .context("1 MiB to a reader did not go through")??;
    read.eof().await?;
    let reading = server.read.lock().unwrap_or_else(|p| p.into_inner()).take();
    let reading = reading.context("the server did not read the first channel")?;
    let got = tokio::time::timeout(ENDS_WITHIN, reading)
        .await
        .context("the server's reader did not see the end")???;
    ensure!(got == SENT, "the server read {got} of {SENT} bytes");

    let unread = agent.handle.channel_open_session().await?;
    // The server drops this one at once: it has no reader.
    tokio::time::timeout(ENDS_WITHIN, unread.data(&vec![b'x'; SENT][..]))
        .await
        .context("1 MiB to a channel without reader did not go through")??;
    // An answer to an open sent after the data: the server has taken all of it by then.
    tokio::time::timeout(ENDS_WITHIN, agent.handle.channel_open_session())
        .await
        .context("the server did not answer an open after the data")??;

    ensure!(!server.has_ended(), "the server's session ended");
    let disconnects = proxy
        .disconnects
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    ensure!(
        disconnects.is_empty(),
        "a side disconnected: {disconnects:?}"
    );
    Ok(())
}

/// A peer that closes a channel before it confirms it ends it there: the open fails, and
/// the confirmation after it finds no channel, a protocol error that ends the session,
/// where the channel used to stay open with no one to close it, for the session's life
/// (vendor/russh/POSTERN-PATCH.md, item 13).
#[tokio::test]
async fn a_channel_closed_before_its_confirmation_is_not_kept_open() -> Result<()> {
    let server = Server::start(WINDOW, Keep::Unread).await?;
    let proxy = Proxy::start(server.addr, Some(Lie::CloseBeforeConfirming)).await?;
    let agent = Client::connect(proxy.addr, WINDOW).await?;
    let opened = tokio::time::timeout(ENDS_WITHIN, agent.handle.channel_open_session())
        .await
        .context("the open was never answered")?;
    ensure!(
        opened.is_err(),
        "a channel closed before its confirmation opened"
    );
    let told = agent.disconnected(ENDS_WITHIN).await?;
    ensure!(
        told.contains("Inconsistent") || told.contains("inconsistent"),
        "the session ended with {told:?}"
    );
    Ok(())
}

/// A channel this side closes, whose reader is gone, is let go at once: a peer that never
/// answers the close (an agent against the relay's idle sweep, evictions and callers
/// that leave) cannot make the session keep one queue per call for its whole life
/// (vendor/russh/POSTERN-PATCH.md, item 13).
#[tokio::test]
async fn a_closed_channel_is_let_go_when_the_peer_never_answers_the_close() -> Result<()> {
    const CHANNELS: usize = 40;
    let server = Server::start(WINDOW, Keep::Closed).await?;
    let proxy = Proxy::start(server.addr, Some(Lie::NoCloseReply)).await?;
    let agent = Client::connect(proxy.addr, WINDOW).await?;
    for _ in 0..CHANNELS {
        let mut channel = agent.handle.channel_open_session().await?;
        // The server's close: the client answers it, and the proxy keeps that back.
        let closed = tokio::time::timeout(ENDS_WITHIN, async {
            while let Some(msg) = channel.wait().await {
                if matches!(msg, ChannelMsg::Close) {
                    break;
                }
            }
        });
        closed
            .await
            .context("the server did not close the channel")?;
    }
    let queues = server
        .queues
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    ensure!(queues.len() == CHANNELS, "the server saw {queues:?}");
    // One for the channel opening, perhaps one whose close the session has not taken yet.
    ensure!(
        queues.iter().all(|n| *n <= 2),
        "the session kept the queues of channels it closed: {queues:?}"
    );
    ensure!(!server.has_ended(), "the server's session ended");
    Ok(())
}

fn assert_ended_on_the_window(ended: Result<Result<(), russh::Error>>) -> Result<()> {
    match ended? {
        Err(russh::Error::WindowExceeded { len, window, .. }) => {
            ensure!(
                len > window as usize,
                "{len} bytes fit a window of {window}"
            );
            Ok(())
        }
        Err(e) => bail!("the server's session ended with another error: {e}"),
        Ok(()) => bail!("the server's session ended without an error"),
    }
}

/// The data queued for `channel`, taken out once the session behind it is gone.
async fn drain<M: From<(russh::ChannelId, ChannelMsg)> + Send + Sync + 'static>(
    channel: &mut Channel<M>,
) -> usize {
    let mut queued = 0;
    while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_secs(2), channel.wait()).await {
        if let ChannelMsg::Data { data } | ChannelMsg::ExtendedData { data, .. } = msg {
            queued += data.len();
        }
    }
    queued
}

/// Both sides negotiate no cipher and no MAC, so the proxy can read and edit packets.
fn plaintext() -> Preferred {
    Preferred {
        cipher: Cow::Borrowed(&[russh::cipher::NONE]),
        mac: Cow::Borrowed(&[russh::mac::NONE]),
        ..Preferred::default()
    }
}

/// What the server does with the session channel the client opens.
#[derive(Clone, Copy)]
enum Keep {
    /// Keeps it and never reads.
    Unread,
    /// Drops it at once, so it has no reader.
    Dropped,
    /// Drops it at once as a stream, which closes it, as the relay's channels are.
    Closed,
    /// Sends 1 MiB of extended data on it, as far as the window it believes allows.
    SendExtended,
    /// The first one is read to the end (the byte count goes to `Server::read`); later
    /// ones are dropped at once.
    Read,
}

struct Server {
    addr: SocketAddr,
    session: tokio::task::JoinHandle<Option<Result<(), russh::Error>>>,
    channels: Arc<Mutex<Vec<Channel<server::Msg>>>>,
    read: Arc<Mutex<Option<tokio::task::JoinHandle<Result<usize>>>>>,
    /// How many channel queues the session held as each channel opened.
    queues: Arc<Mutex<Vec<usize>>>,
}

impl Server {
    async fn start(window: u32, keep: Keep) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let config = Arc::new(server::Config {
            window_size: window,
            preferred: plaintext(),
            keys: vec![PrivateKey::from(Ed25519Keypair::from_seed(&[7; 32]))],
            inactivity_timeout: None,
            auth_rejection_time: Duration::ZERO,
            nodelay: true,
            ..Default::default()
        });
        let channels = Arc::new(Mutex::new(Vec::new()));
        let read = Arc::new(Mutex::new(None));
        let queues = Arc::new(Mutex::new(Vec::new()));
        let handler = ServerHandler {
            keep,
            channels: channels.clone(),
            read: read.clone(),
            queues: queues.clone(),
            opened: 0,
        };
        let session = tokio::spawn(async move {
            let (socket, _) = listener.accept().await.ok()?;
            Some(match server::run_stream(config, socket, handler).await {
                Ok(running) => running.await,
                Err(e) => Err(e),
            })
        });
        Ok(Self {
            addr,
            session,
            channels,
            read,
            queues,
        })
    }

    /// How the server's session ended, once it has.
    async fn ended(&mut self, within: Duration) -> Result<Result<(), russh::Error>> {
        tokio::time::timeout(within, &mut self.session)
            .await
            .with_context(|| format!("the server's session still runs after {within:?}"))??
            .context("nothing connected to the server")
    }

    fn has_ended(&self) -> bool {
        self.session.is_finished()
    }
}

struct ServerHandler {
    keep: Keep,
    channels: Arc<Mutex<Vec<Channel<server::Msg>>>>,
    read: Arc<Mutex<Option<tokio::task::JoinHandle<Result<usize>>>>>,
    queues: Arc<Mutex<Vec<usize>>>,
    opened: usize,
}

impl server::Handler for ServerHandler {
    type Error = russh::Error;

    async fn auth_password(&mut self, _: &str, _: &str) -> Result<server::Auth, Self::Error> {
        Ok(server::Auth::Accept)
    }

    async fn channel_open_session(
        &mut self,
        mut channel: Channel<server::Msg>,
        reply: server::ChannelOpenHandle,
        session: &mut server::Session,
    ) -> Result<(), Self::Error> {
        reply.accept().await;
        self.opened += 1;
        self.queues
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(session.channel_queues());
        match self.keep {
            Keep::Unread => self
                .channels
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(channel),
            Keep::Dropped => drop(channel),
            Keep::Closed => drop(channel.into_stream()),
            Keep::SendExtended => {
                // Not in the handler itself: the session loop must run for it.
                tokio::spawn(async move {
                    let _ = channel.extended_data(1, &vec![b'e'; SENT][..]).await;
                    channel
                });
            }
            Keep::Read if self.opened == 1 => {
                let reading = tokio::spawn(async move {
                    let mut got = 0;
                    loop {
                        match channel.wait().await {
                            Some(ChannelMsg::Data { data }) => got += data.len(),
                            Some(ChannelMsg::Eof) => return Ok(got),
                            Some(_) => {}
                            None => bail!("the channel ended before its EOF"),
                        }
                    }
                });
                *self.read.lock().unwrap_or_else(|p| p.into_inner()) = Some(reading);
            }
            Keep::Read => drop(channel),
        }
        Ok(())
    }
}

struct Client {
    handle: client::Handle<ClientHandler>,
    told: tokio::sync::watch::Receiver<Option<String>>,
}

impl Client {
    async fn connect(proxy: SocketAddr, window: u32) -> Result<Self> {
        let config = Arc::new(client::Config {
            window_size: window,
            preferred: plaintext(),
            inactivity_timeout: None,
            nodelay: true,
            ..Default::default()
        });
        let (tx, told) = tokio::sync::watch::channel(None);
        let mut handle = client::connect(config, proxy, ClientHandler { told: tx }).await?;
        let auth = handle.authenticate_password("postern", "secret").await?;
        ensure!(auth.success(), "the server refused the password");
        Ok(Self { handle, told })
    }

    /// Why the client's session ended: `Reason: message` for a DISCONNECT from the
    /// server, `error: ...` for an error of its own.
    async fn disconnected(&self, within: Duration) -> Result<String> {
        let mut told = self.told.clone();
        let told = tokio::time::timeout(within, told.wait_for(Option::is_some))
            .await
            .with_context(|| format!("the client's session still runs after {within:?}"))?
            .context("the client's handler is gone")?;
        Ok(told.clone().unwrap_or_default())
    }
}

struct ClientHandler {
    told: tokio::sync::watch::Sender<Option<String>>,
}

impl client::Handler for ClientHandler {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        _key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        Ok(true)
    }

    async fn disconnected(
        &mut self,
        reason: client::DisconnectReason<Self::Error>,
    ) -> Result<(), Self::Error> {
        let text = match reason {
            client::DisconnectReason::ReceivedDisconnect(info) => {
                let code = match info.reason_code {
                    Disconnect::ProtocolError => "ProtocolError".to_owned(),
                    other => format!("{other:?}"),
                };
                format!("{code}: {}", info.message)
            }
            client::DisconnectReason::Error(e) => format!("error: {e}"),
        };
        let _ = self.told.send(Some(text));
        Ok(())
    }
}

/// What the proxy changes: a window field it raises to `LIED_WINDOW`, or a message it
/// keeps back.
#[derive(Clone, Copy)]
enum Lie {
    /// In the server's `CHANNEL_OPEN_CONFIRMATION`: the client may send more to the server.
    OpenConfirmation,
    /// In the client's `CHANNEL_OPEN`: the server may send more to the client.
    Open,
    /// The client's `CHANNEL_CLOSE` never reaches the server: a peer that does not answer
    /// a close.
    NoCloseReply,
    /// The server's `CHANNEL_OPEN_CONFIRMATION` comes after a `CHANNEL_CLOSE` of the channel
    /// it confirms: a peer that closes a channel before confirming it.
    CloseBeforeConfirming,
}

/// What a pump changes in the packets going one way.
#[derive(Clone, Copy, Default)]
struct Edits {
    /// Raises the window in these messages.
    lie: Option<u8>,
    /// Leaves these out.
    kept_back: Option<u8>,
    /// Sends a `CHANNEL_CLOSE` of the channel each confirmation confirms, before it.
    close_before_confirming: bool,
}

/// The DISCONNECTs the proxy saw: from whom ("client" or "server"), reason code, description.
type Seen = Arc<Mutex<Vec<(&'static str, u32, String)>>>;

/// A TCP proxy for one connection that reads the plaintext SSH packets going through
/// it, tells the lie it was given and notes every DISCONNECT (who sent it, its reason
/// code and description).
struct Proxy {
    addr: SocketAddr,
    disconnects: Seen,
}

impl Proxy {
    async fn start(server: SocketAddr, lie: Option<Lie>) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let disconnects = Arc::new(Mutex::new(Vec::new()));
        let seen = disconnects.clone();
        tokio::spawn(async move {
            let Ok((client, _)) = listener.accept().await else {
                return;
            };
            let Ok(upstream) = TcpStream::connect(server).await else {
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = upstream.set_nodelay(true);
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = upstream.into_split();
            let to_server = matches!(lie, Some(Lie::Open)).then_some(MSG_CHANNEL_OPEN);
            let to_client =
                matches!(lie, Some(Lie::OpenConfirmation)).then_some(MSG_CHANNEL_OPEN_CONFIRMATION);
            let kept_back = matches!(lie, Some(Lie::NoCloseReply)).then_some(MSG_CHANNEL_CLOSE);
            let from_client = Edits {
                lie: to_server,
                kept_back,
                close_before_confirming: false,
            };
            let from_server = Edits {
                lie: to_client,
                kept_back: None,
                close_before_confirming: matches!(lie, Some(Lie::CloseBeforeConfirming)),
            };
            tokio::spawn(pump(
                "client",
                client_read,
                server_write,
                from_client,
                seen.clone(),
            ));
            tokio::spawn(pump("server", server_read, client_write, from_server, seen));
        });
        Ok(Self { addr, disconnects })
    }

    /// Waits for a DISCONNECT from `from` with the protocol error and the description.
    async fn saw_protocol_error_disconnect(&self, from: &str) -> Result<()> {
        let deadline = tokio::time::Instant::now() + ENDS_WITHIN;
        loop {
            let seen = self
                .disconnects
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            if seen.iter().any(|(who, code, text)| {
                *who == from && *code == Disconnect::ProtocolError as u32 && text == DESCRIPTION
            }) {
                return Ok(());
            }
            ensure!(
                tokio::time::Instant::now() < deadline,
                "no DISCONNECT (protocol error, {DESCRIPTION:?}) from the {from}: {seen:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Copies one direction: the identification line, then packets (`none` cipher and MAC:
/// length, padding length, payload, padding), raising the window of each `lie` message
/// and leaving out each `kept_back` one, or adding a close (without a MAC, nothing
/// notices).
async fn pump(
    from: &'static str,
    mut read: tokio::net::tcp::OwnedReadHalf,
    mut write: tokio::net::tcp::OwnedWriteHalf,
    edits: Edits,
    disconnects: Seen,
) -> Result<()> {
    let Edits {
        lie,
        kept_back,
        close_before_confirming,
    } = edits;
    let mut line = Vec::new();
    while line.last() != Some(&b'\n') {
        line.push(read.read_u8().await?);
    }
    write.write_all(&line).await?;
    loop {
        let len = read.read_u32().await?;
        let mut packet = vec![0; len as usize];
        read.read_exact(&mut packet).await?;
        let padding = *packet.first().context("empty packet")? as usize;
        let payload = packet
            .get_mut(1..(len as usize).saturating_sub(padding))
            .context("bad padding")?;
        match (payload.first().copied(), lie) {
            (Some(MSG_CHANNEL_OPEN), Some(MSG_CHANNEL_OPEN)) => {
                // type (string), sender channel, initial window, maximum packet
                let name = u32::from_be_bytes(payload[1..5].try_into()?) as usize;
                let at = 5 + name + 4;
                payload[at..at + 4].copy_from_slice(&LIED_WINDOW.to_be_bytes());
            }
            (Some(MSG_CHANNEL_OPEN_CONFIRMATION), Some(MSG_CHANNEL_OPEN_CONFIRMATION)) => {
                // recipient channel, sender channel, initial window, maximum packet
                payload[9..13].copy_from_slice(&LIED_WINDOW.to_be_bytes());
            }
            (Some(MSG_DISCONNECT), _) => {
                let code = u32::from_be_bytes(payload[1..5].try_into()?);
                let text = u32::from_be_bytes(payload[5..9].try_into()?) as usize;
                let text = String::from_utf8_lossy(&payload[9..9 + text]).into_owned();
                disconnects
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((from, code, text));
            }
            (Some(kind), _) if Some(kind) == kept_back => continue,
            _ => {}
        }
        if close_before_confirming && payload.first() == Some(&MSG_CHANNEL_OPEN_CONFIRMATION) {
            // The recipient's channel number, closed: length, padding length (6: the
            // packet's 16 bytes a multiple of 8, and at least 4), message, channel, padding.
            let mut close = vec![0, 0, 0, 12, 6, MSG_CHANNEL_CLOSE];
            close.extend_from_slice(&payload[1..5]);
            close.extend_from_slice(&[0; 6]);
            write.write_all(&close).await?;
        }
        write.write_all(&len.to_be_bytes()).await?;
        write.write_all(&packet).await?;
    }
}
