//! What the agent bounds on its own against a relay that misbehaves (compromised, or a
//! bug), with a relay driven by hand (`hand_relay`) and the real agent binary: how many
//! channels a session may hold, a request head that never ends, an answer nobody takes.
//! Before 2026-12-07 such a relay could make the agent hold any amount of memory, and keep
//! internal servers' connections and the calls' places for as long as it liked.

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use postern_tests::hand_relay::{AgentSession, HandRelay};
use postern_tests::harness::{AgentProcess, Bins, rss_kib};
use postern_tests::internal_server::{InternalServer, Verifier};
use postern_tests::temp::TempDir;
use russh::ChannelStream;
use russh::server::Msg;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn bins() -> Bins {
    postern_tests::bins!()
}

/// The agent's floor on channels per session (`open_channels::MIN_CHANNELS`).
const MIN_CHANNELS: usize = 1024;
/// An SSH channel window as large as the relay's first one.
const WINDOW: u32 = 256 * 1024;

/// A hand-driven relay and an agent on it with `connections`, its session welcomed.
async fn agent_on_hand_relay(
    dir: &TempDir,
    window: u32,
    connections: &str,
) -> Result<(HandRelay, AgentProcess, AgentSession)> {
    let mut relay = HandRelay::start(window).await?;
    let config = dir.write_private("agent.toml", &relay.agent_config(connections))?;
    let agent = AgentProcess::start(&bins(), &config)?;
    let session = relay.session().await?;
    Ok((relay, agent, session))
}

/// `GET path` as the relay sends it, with its `call_timeout` of `call_timeout_ms`.
fn request(path: &str, call_timeout_ms: u64, request_id: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nhost: orders\r\nx-request-id: {request_id}\r\nx-postern-call-timeout: {call_timeout_ms}\r\n\r\n"
    )
    .into_bytes()
}

/// Reads one answer with a `Content-Length` (hyper's own 431 has one too): its status.
async fn read_answer(stream: &mut ChannelStream<Msg>) -> Result<u16> {
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
