//! A handover whose newer session is given up on after the relay took its hello, with a
//! relay driven by hand (`hand_relay`): the relay then ends the older session as
//! `replaced`, which is this agent's own doing, not another agent sharing its token.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use postern_protocol::control::{EndReason, RelayMessage};
use postern_tests::hand_relay::{HandRelay, read_answer, request};
use postern_tests::harness::{Bins, signal};
use postern_tests::internal_server::{InternalServer, Verifier};
use postern_tests::temp::TempDir;
use tokio::io::AsyncWriteExt;

fn bins() -> Bins {
    postern_tests::bins!()
}

/// New settings that keep the token (a second relay after the same first one), tried
/// beside the session, whose welcome comes back broken; the older session's call is
/// answered, then the relay says `replaced` to it. The agent says hello again at once
/// and says nothing of a shared token. Before the handover's own `replaced` was told
/// apart, this read as another agent with the same token: an error line saying two
/// agents share it, and 15–30 s before the next hello.
#[tokio::test(flavor = "multi_thread")]
async fn replaced_after_a_handover_given_up_on_reconnects_at_once() -> Result<()> {
    let internal = InternalServer::start(Verifier::None, "orders").await?;
    let dir = TempDir::new("handover-given-up")?;
    let connections = format!(
        "[connections.orders]\nbase_uri = \"{}\"\n",
        internal.base_uri()
    );
    let (mut relay, agent, first, config) = HandRelay::start(256 * 1024)
        .await?
        .with_agent(&bins(), &dir, &connections)
        .await?;
    let mut busy = first.open("orders").await?.into_stream();
    busy.write_all(&request("/handover/slow", 120_000, "busy"))
        .await?;
    internal.has_seen("/handover/slow").await?;

    relay.garble_next_welcome();
    let text = std::fs::read_to_string(&config)?;
    let one = format!("relay = \"{}\"", relay.addr);
    ensure!(text.contains(&one), "{text}");
    let two = format!("relay = [\"{}\", \"127.0.0.1:9\"]", relay.addr);
    std::fs::write(&config, text.replace(&one, &two))?;
    signal(agent.pid(), "HUP")?;
    let _broken = relay.session().await?;
    agent.logs.wait_for(
        "did not connect beside this session",
        Duration::from_secs(5),
    )?;
    ensure!(
        read_answer(&mut busy).await? == 200,
        "the older session's call was not answered"
    );
    // As a relay that took the newer hello does once the older session's calls are done.
    let replaced = EndReason::Replaced;
    first.tell(RelayMessage::Ending {
        reason: replaced,
        message: replaced.describe().to_owned(),
    });
    tokio::time::timeout(Duration::from_secs(5), relay.session())
        .await
        .context("no hello again within 5 s of `replaced`")??;
    ensure!(
        !agent.logs.contains("another agent with this token"),
        "the handover's own replacement was taken for a shared token: {}",
        agent.logs.text()
    );
    Ok(())
}
