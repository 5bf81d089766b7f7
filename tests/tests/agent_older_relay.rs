//! The agent facing a relay of protocol 1 (a build from before `draining`), driven by hand
//! (`hand_relay`) beside one of this build's protocol: such a relay keeps the agent's
//! channels open while it drains and ends an older session at a newer one's hello, so
//! the agent closes its channels itself and reconnects only after its calls.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use postern_protocol::PROTOCOL_VERSION;
use postern_tests::hand_relay::{AgentSession, HandRelay, closed_within, read_answer, request};
use postern_tests::harness::{AgentProcess, Bins, other_token, signal, unknown_token};
use postern_tests::internal_server::{InternalServer, Verifier};
use postern_tests::temp::TempDir;
use tokio::io::AsyncWriteExt;

fn bins() -> Bins {
    postern_tests::bins!()
}

const WINDOW: u32 = 256 * 1024;

/// An agent with one connection, `orders`, on a hand-driven relay of `protocol_version`,
/// its session welcomed.
async fn agent_on(
    dir: &TempDir,
    protocol_version: u32,
    internal: &InternalServer,
) -> Result<(HandRelay, AgentProcess, AgentSession, std::path::PathBuf)> {
    let connections = format!(
        "[connections.orders]\nbase_uri = \"{}\"\n",
        internal.base_uri()
    );
    HandRelay::speaking(WINDOW, protocol_version)
        .await?
        .with_agent(&bins(), dir, &connections)
        .await
}

fn said_draining(session: &AgentSession) -> bool {
    session
        .said()
        .iter()
        .any(|line| line.contains("\"draining\""))
}

/// Stopping, facing a relay of protocol 1, the agent closes an idle channel at once and a
/// busy one once its answer is out, and says no `draining` (a word that relay does not
/// know). Facing this build's protocol it says `draining` and leaves every channel open
/// for the relay to close; it exits once the relay has.
#[tokio::test(flavor = "multi_thread")]
async fn a_stop_facing_a_protocol_1_relay_closes_the_channels_itself() -> Result<()> {
    let internal = InternalServer::start(Verifier::None, "orders").await?;
    for version in [1, PROTOCOL_VERSION] {
        let dir = TempDir::new("older-relay-stop")?;
        let (_relay, mut agent, session, _) = agent_on(&dir, version, &internal).await?;
        let mut idle = session.open("orders").await?.into_stream();
        let mut busy = session.open("orders").await?.into_stream();
        let slow = format!("/v{version}/stop/slow");
        busy.write_all(&request(&slow, 120_000, "busy")).await?;
        internal.has_seen(&slow).await?;

        signal(agent.pid(), "TERM")?;
        agent
            .logs
            .wait_for("draining in-flight calls", Duration::from_secs(5))?;
        if version == 1 {
            ensure!(
                closed_within(&mut idle, Duration::from_secs(5)).await,
                "protocol 1: the agent left its idle channel open"
            );
            ensure!(
                read_answer(&mut busy).await? == 200,
                "protocol 1: the call under way was not answered"
            );
            ensure!(
                closed_within(&mut busy, Duration::from_secs(5)).await,
                "protocol 1: the agent left the answered channel open"
            );
            ensure!(
                !said_draining(&session),
                "protocol 1: the agent said draining: {:?}",
                session.said()
            );
        } else {
            ensure!(
                read_answer(&mut busy).await? == 200,
                "protocol {version}: the call under way was not answered"
            );
            ensure!(
                !closed_within(&mut idle, Duration::from_secs(1)).await,
                "protocol {version}: the agent closed an idle channel, which a request may be crossing"
            );
            ensure!(
                said_draining(&session),
                "protocol {version}: no draining said: {:?}",
                session.said()
            );
            // As the relay does once told.
            idle.shutdown().await?;
            busy.shutdown().await?;
        }
        let status = agent.exit_within(Duration::from_secs(15)).await?;
        ensure!(
            status.success(),
            "protocol {version}: the agent exited with {status}: {}",
            agent.logs.text()
        );
    }
    Ok(())
}

/// A reload that brings a new token, facing a relay of protocol 1 (which would end the
/// older session at the newer one's hello, its call under way with it): the agent
/// answers the call, ends the older session, and only then says hello again. Facing this
/// build's protocol it says hello beside the older session while the call is under way
/// (make before break).
#[tokio::test(flavor = "multi_thread")]
async fn a_reload_facing_a_protocol_1_relay_says_hello_again_only_after_its_calls() -> Result<()> {
    let internal = InternalServer::start(Verifier::None, "orders").await?;
    for version in [1, PROTOCOL_VERSION] {
        let dir = TempDir::new("older-relay-reload")?;
        let (mut relay, agent, session, config) = agent_on(&dir, version, &internal).await?;
        let mut busy = session.open("orders").await?.into_stream();
        let slow = format!("/v{version}/reload/slow");
        busy.write_all(&request(&slow, 120_000, "busy")).await?;
        let answer = tokio::spawn(async move {
            let status = read_answer(&mut busy).await;
            (status, Instant::now())
        });
        internal.has_seen(&slow).await?;

        let text = std::fs::read_to_string(&config)?;
        ensure!(text.contains(&unknown_token()), "{text}");
        std::fs::write(&config, text.replace(&unknown_token(), &other_token()))?;
        signal(agent.pid(), "HUP")?;
        agent.logs.wait_for(
            "reconnecting with the reloaded settings",
            Duration::from_secs(5),
        )?;
        let next = relay.session().await?;
        let (status, answered) = answer.await?;
        ensure!(
            status? == 200,
            "protocol {version}: the call under way was not answered"
        );
        if version == 1 {
            let ended = session
                .control_ended_at()
                .context("protocol 1: the older session was open at the newer one's hello")?;
            ensure!(
                answered <= next.welcomed_at && ended <= next.welcomed_at,
                "protocol 1: hello again before the call's answer or the older session's end"
            );
        } else {
            ensure!(
                next.welcomed_at < answered,
                "protocol {version}: no hello beside the older session while its call was under way"
            );
        }
    }
    Ok(())
}

/// A relay from before 2026-12-06 sends no `x-postern-call-timeout`: a call it gives up on
/// is logged with `cause="unknown"`, the three reasons it may have had named, since the
/// agent cannot tell its timeout from a caller gone. The same call from this build's
/// relay, which sends it, is `given_up`.
#[tokio::test(flavor = "multi_thread")]
async fn a_call_given_up_without_the_relays_timeout_has_an_unknown_cause() -> Result<()> {
    let internal = InternalServer::start(Verifier::None, "orders").await?;
    for (version, timeout_header, cause) in [
        (1, "", "cause=\"unknown\""),
        (
            PROTOCOL_VERSION,
            "x-postern-call-timeout: 120000\r\n",
            "cause=\"given_up\"",
        ),
    ] {
        let dir = TempDir::new("older-relay-abandon")?;
        let (_relay, agent, session, _) = agent_on(&dir, version, &internal).await?;
        let channel = session.open("orders").await?;
        let slow = format!("/v{version}/abandoned/slow");
        let id = format!("abandoned-v{version}");
        let head = format!(
            "GET {slow} HTTP/1.1\r\nhost: orders\r\nx-request-id: {id}\r\n{timeout_header}\r\n"
        );
        channel.data(head.as_bytes()).await?;
        internal.has_seen(&slow).await?;
        channel.close().await?;
        agent
            .logs
            .wait_for("call abandoned before its answer", Duration::from_secs(10))?;
        let line = agent
            .logs
            .lines()
            .into_iter()
            .find(|l| l.contains("call abandoned before its answer"))
            .unwrap_or_default();
        ensure!(
            line.contains(&format!("request_id={id}")) && line.contains(cause),
            "protocol {version}: {line}"
        );
        if version == 1 {
            ensure!(
                line.contains("its caller gone, its call_timeout, or the session's end"),
                "{line}"
            );
        }
    }
    Ok(())
}
