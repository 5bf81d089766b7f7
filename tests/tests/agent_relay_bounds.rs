//! What the agent bounds on its own against a relay that misbehaves (compromised, or a
//! bug), with a relay driven by hand (`hand_relay`) and the real agent binary: how many
//! channels a session may hold, a request head that never ends, an answer nobody takes.
//! Before 2026-12-07 such a relay could make the agent hold any amount of memory, and keep
//! internal servers' connections and the calls' places for as long as it liked.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use postern_tests::hand_relay::{AgentSession, HandRelay, closed_within, read_answer, request};
use postern_tests::harness::{AgentProcess, Bins, rss_kib};
use postern_tests::internal_server::{InternalServer, Verifier};
use postern_tests::temp::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn bins() -> Bins {
    postern_tests::bins!()
}

/// The agent's floor on channels per session (`open_channels::MIN_CHANNELS`).
const MIN_CHANNELS: usize = 1024;
/// The agent's bound on a request head from its first byte (`channel::HEAD_TIMEOUT`).
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// An SSH channel window as large as the relay's first one.
const WINDOW: u32 = 256 * 1024;

/// A hand-driven relay and an agent on it with `connections`, its session welcomed.
async fn agent_on_hand_relay(
    dir: &TempDir,
    window: u32,
    connections: &str,
) -> Result<(HandRelay, AgentProcess, AgentSession)> {
    let (relay, agent, session, _) = HandRelay::start(window)
        .await?
        .with_agent(&bins(), dir, connections)
        .await?;
    Ok((relay, agent, session))
}

/// A relay that opens channels past the agent's cap has them refused with
/// `ResourceShortage` (the relay answers its caller 503), and logged a few times a minute,
/// not once each; a channel the relay closes makes room at once. 1,024 idle channels
/// cost the agent little; before, it took every open (3,000 in a second: +53 MB, and with
/// a megabyte of head each, 1.1 GB).
#[tokio::test(flavor = "multi_thread")]
async fn opens_past_the_cap_are_refused_and_a_close_makes_room() -> Result<()> {
    let internal = InternalServer::start(Verifier::None, "orders").await?;
    let dir = TempDir::new("relay-bounds-cap")?;
    let connections = format!(
        "[connections.orders]\nbase_uri = \"{}\"\nmax_concurrent_calls = 1\n",
        internal.base_uri()
    );
    let (_relay, agent, session) = agent_on_hand_relay(&dir, WINDOW, &connections).await?;
    let before = rss_kib(agent.pid())?;
    let mut open = Vec::new();
    for i in 0..MIN_CHANNELS {
        let channel = session
            .open("orders")
            .await
            .with_context(|| format!("open {i} of {MIN_CHANNELS} was refused"))?;
        open.push(channel);
    }
    let grown = rss_kib(agent.pid())?.saturating_sub(before);
    for _ in 0..50 {
        match session.open("orders").await {
            Err(russh::Error::ChannelOpenFailure(russh::ChannelOpenFailure::ResourceShortage)) => {}
            Err(e) => bail!("an open past the cap failed otherwise: {e}"),
            Ok(_) => bail!("an open past {MIN_CHANNELS} channels was accepted"),
        }
    }
    // Closed by the relay, a channel's place is free for the next open at once.
    for channel in open.drain(..5) {
        channel.close().await?;
    }
    let mut used = Vec::new();
    for _ in 0..5 {
        let mut stream = session.open("orders").await?.into_stream();
        stream
            .write_all(&request("/x", 120_000, "after-close"))
            .await?;
        ensure!(
            read_answer(&mut stream).await? == 200,
            "a call on a new channel failed"
        );
        used.push(stream);
    }
    ensure!(
        matches!(
            session.open("orders").await,
            Err(russh::Error::ChannelOpenFailure(
                russh::ChannelOpenFailure::ResourceShortage
            ))
        ),
        "the cap did not hold after the closes"
    );

    let lines = agent.logs.lines();
    let refused = lines
        .iter()
        .filter(|l| l.contains("relay opened more channels than this agent allows"))
        .count();
    ensure!(
        (1..=10).contains(&refused),
        "{refused} lines about 51 refused opens"
    );
    // ~18 KiB each; generous for a debug build.
    ensure!(
        grown < 96 * 1024,
        "1,024 idle channels grew the agent by {grown} KiB"
    );
    Ok(())
}

/// A request head begun and not finished closes its channel `HEAD_TIMEOUT` after its
/// first byte; a channel idle between calls, never used or used, stays open (only the
/// relay knows whether a request is on its way on one) and carries the next call. Before,
/// an unfinished head was kept for the channel's life, and hyper's own
/// `header_read_timeout` would have closed idle channels too.
#[tokio::test(flavor = "multi_thread")]
async fn a_head_begun_and_not_finished_closes_its_channel_and_idle_ones_stay() -> Result<()> {
    let internal = InternalServer::start(Verifier::None, "orders").await?;
    let dir = TempDir::new("relay-bounds-head")?;
    let connections = format!(
        "[connections.orders]\nbase_uri = \"{}\"\n",
        internal.base_uri()
    );
    let (_relay, agent, session) = agent_on_hand_relay(&dir, WINDOW, &connections).await?;

    let mut never_used = session.open("orders").await?.into_stream();
    let mut used = session.open("orders").await?.into_stream();
    used.write_all(&request("/first", 120_000, "used")).await?;
    ensure!(
        read_answer(&mut used).await? == 200,
        "the first call failed"
    );

    let started = Instant::now();
    let mut unfinished = session.open("orders").await?.into_stream();
    unfinished
        .write_all(b"GET /api/x HTTP/1.1\r\nhost: orders\r\nx-pad: aaaa")
        .await?;

    let limit = HEAD_TIMEOUT + Duration::from_secs(8) - started.elapsed();
    let unfinished_closed = async {
        closed_within(&mut unfinished, limit)
            .await
            .then(|| started.elapsed())
    };
    let (unfinished_closed, never_used_closed) =
        tokio::join!(unfinished_closed, closed_within(&mut never_used, limit));
    let closed_after = unfinished_closed.context("the unfinished head's channel stayed open")?;
    ensure!(
        closed_after >= HEAD_TIMEOUT - Duration::from_secs(1),
        "the unfinished head's channel closed after {closed_after:?}"
    );
    ensure!(!never_used_closed, "a channel never used was closed");
    ensure!(
        !closed_within(&mut used, Duration::ZERO).await,
        "a channel idle after a call was closed"
    );
    for (what, stream) in [("never used", &mut never_used), ("used", &mut used)] {
        stream.write_all(&request("/later", 120_000, what)).await?;
        ensure!(
            read_answer(stream).await? == 200,
            "the {what} channel did not carry a call"
        );
    }
    let logs = agent.logs.text();
    ensure!(
        logs.matches("sent part of a request head and not the rest within 30s")
            .count()
            == 1,
        "{logs}"
    );
    Ok(())
}

/// A head larger than the connection's `max_header_bytes` and what the relay adds gets
/// hyper's 431 and its channel closes at once, however much more the relay sends; before,
/// each channel buffered up to 1.06 MiB of a head that never ended, whatever the
/// connection's limit (1,000 channels: +1.1 GB). 300 channels each sent 1 MiB of head.
#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_endless_heads_is_cut_at_the_connections_limit() -> Result<()> {
    const CHANNELS: usize = 300;
    let internal = InternalServer::start(Verifier::None, "orders").await?;
    let dir = TempDir::new("relay-bounds-flood")?;
    let connections = format!(
        "[connections.orders]\nbase_uri = \"{}\"\nmax_header_bytes = 8192\n",
        internal.base_uri()
    );
    let (_relay, agent, session) = agent_on_hand_relay(&dir, WINDOW, &connections).await?;
    let before = rss_kib(agent.pid())?;
    let mut pad = b"GET /api/x HTTP/1.1\r\nhost: orders\r\nx-pad: ".to_vec();
    pad.resize(1024 * 1024, b'a');
    let pad = Arc::new(pad);
    let mut flood = tokio::task::JoinSet::new();
    for _ in 0..CHANNELS {
        let stream = session.open("orders").await?.into_stream();
        let pad = pad.clone();
        flood.spawn(async move {
            let (mut read, mut write) = tokio::io::split(stream);
            // Refused part way: the agent closes the channel under the write.
            let writing = async move {
                let _ = write.write_all(&pad).await;
                std::future::pending::<()>().await
            };
            let mut answer = Vec::new();
            let reading = read.read_to_end(&mut answer);
            tokio::select! {
                _ = writing => unreachable!(),
                _ = reading => answer,
            }
        });
    }
    let peak = Arc::new(AtomicUsize::new(0));
    let pid = agent.pid();
    let sampling = {
        let peak = peak.clone();
        tokio::spawn(async move {
            while let Ok(rss) = rss_kib(pid) {
                peak.fetch_max(rss as usize, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let answers = tokio::time::timeout(Duration::from_secs(20), flood.join_all())
        .await
        .context("channels still open 20 s into the flood")?;
    sampling.abort();
    for answer in &answers {
        ensure!(
            answer.starts_with(b"HTTP/1.1 431"),
            "answered {:?}",
            String::from_utf8_lossy(&answer[..answer.len().min(64)])
        );
    }
    let grown = (peak.load(Ordering::Relaxed) as u64).saturating_sub(before);
    ensure!(
        grown < 100 * 1024,
        "{CHANNELS} endless heads grew the agent by {grown} KiB"
    );
    Ok(())
}

/// An internal server that streams an endless answer on `/api/endless` (counting the
/// connections that closed under it) and answers anything else at once.
struct Streaming {
    addr: SocketAddr,
    closed: Arc<AtomicUsize>,
    _serving: tokio_util::task::AbortOnDropHandle<()>,
}

impl Streaming {
    async fn start() -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let closed = Arc::new(AtomicUsize::new(0));
        let counted = closed.clone();
        let serving = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(serve_one(socket, counted.clone()));
            }
        });
        Ok(Self {
            addr,
            closed,
            _serving: tokio_util::task::AbortOnDropHandle::new(serving),
        })
    }

    fn connection(&self, max_concurrent_calls: u32) -> String {
        format!(
            "[connections.orders]\nbase_uri = \"http://{}/api\"\ntimeout = \"5s\"\nmax_concurrent_calls = {max_concurrent_calls}\n",
            self.addr
        )
    }
}

async fn serve_one(mut socket: TcpStream, closed: Arc<AtomicUsize>) {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match socket.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    if !head.starts_with(b"GET /api/endless ") {
        let _ = socket
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
            .await;
        return;
    }
    let chunk = format!("4000\r\n{}\r\n", "x".repeat(0x4000));
    let mut out = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
    out.extend_from_slice(chunk.as_bytes());
    while socket.write_all(&out).await.is_ok() {
        out = chunk.clone().into_bytes();
    }
    closed.fetch_add(1, Ordering::SeqCst);
}

/// An answer the relay stops taking is aborted once its writes have waited twice the
/// relay's `call_timeout` (here 1 s): the internal server's connection closes, the call's
/// place is free for the next call (`max_concurrent_calls = 1`), and one line says so.
/// Before, such a call held both until the session ended.
#[tokio::test(flavor = "multi_thread")]
async fn an_answer_the_relay_stops_taking_is_aborted_and_its_place_freed() -> Result<()> {
    let internal = Streaming::start().await?;
    let dir = TempDir::new("relay-bounds-stall")?;
    let (_relay, agent, session) =
        agent_on_hand_relay(&dir, 64 * 1024, &internal.connection(1)).await?;

    let mut stalled = session.open("orders").await?.into_stream();
    let started = Instant::now();
    stalled
        .write_all(&request("/endless", 1_000, "stalled-1"))
        .await?;
    let closed = internal.closed.clone();
    postern_tests::relay_support::eventually(
        "the internal server's connection closed",
        Duration::from_secs(10),
        || {
            let closed = closed.clone();
            async move { closed.load(Ordering::SeqCst) == 1 }
        },
    )
    .await?;
    ensure!(
        started.elapsed() >= Duration::from_millis(1900),
        "aborted after {:?}, before twice the call_timeout",
        started.elapsed()
    );
    let mut next = session.open("orders").await?.into_stream();
    next.write_all(&request("/next", 1_000, "next-1")).await?;
    ensure!(
        read_answer(&mut next).await? == 200,
        "the next call did not get the place"
    );
    let logs = agent.logs.text();
    let aborted: Vec<_> = logs
        .lines()
        .filter(|l| l.contains("call aborted: the relay took none of its answer"))
        .collect();
    ensure!(aborted.len() == 1, "{logs}");
    ensure!(
        aborted[0].contains("connection=orders") && aborted[0].contains("stalled-1"),
        "{}",
        aborted[0]
    );
    Ok(())
}

/// A caller that reads a long answer slowly but steadily is never cut, though the whole
/// read takes several times the bound: each window the relay grants back resets it.
/// (The relay grants half a window at a time: here 128 KiB every ~3 s, the bound 4 s.)
#[tokio::test(flavor = "multi_thread")]
async fn a_slow_steady_reader_is_not_cut() -> Result<()> {
    const READ: usize = 480 * 1024;
    let internal = Streaming::start().await?;
    let dir = TempDir::new("relay-bounds-slow")?;
    let (_relay, agent, session) =
        agent_on_hand_relay(&dir, WINDOW, &internal.connection(1)).await?;
    let mut slow = session.open("orders").await?.into_stream();
    slow.write_all(&request("/endless", 2_000, "slow-1"))
        .await?;
    let started = Instant::now();
    let mut taken = 0;
    let mut buf = vec![0u8; 8 * 1024];
    while taken < READ {
        let n = tokio::time::timeout(Duration::from_secs(10), slow.read(&mut buf))
            .await
            .context("the answer stopped")??;
        ensure!(
            n > 0,
            "the answer was cut after {taken} bytes, {:?}",
            started.elapsed()
        );
        taken += n;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    ensure!(
        started.elapsed() > Duration::from_secs(8),
        "read too fast to mean anything: {:?}",
        started.elapsed()
    );
    ensure!(
        internal.closed.load(Ordering::SeqCst) == 0,
        "the call was cut"
    );
    ensure!(
        !agent.logs.contains("call aborted"),
        "{}",
        agent.logs.text()
    );
    Ok(())
}
