//! An agent that writes on a pooled channel while no call is on it (an answer to no
//! request) has that channel closed by the relay within a sweep, not after the idle
//! timeout: what it sent is not held for 90 s. Healthy idle channels stay pooled. An agent
//! that refuses a channel for holding as many as it allows has the pool's idle channels
//! closed, so that the next call finds room.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Result;
use postern_tests::relay_support::{
    HandDriven, RelayWorld, hand_driven_agent, hand_driven_agent_as, next_channel,
    read_request_head,
};
use russh::ChannelMsg;
use russh::client::Msg;

type Channel = russh::Channel<Msg>;

/// Reads one request head from `channel` and answers it `200 ok`.
async fn answer(channel: &mut Channel) -> Result<()> {
    read_request_head(channel).await?;
    channel
        .data(&b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"[..])
        .await?;
    Ok(())
}

/// Whether the relay closes `channel` within `limit`.
async fn closed_within(channel: &mut Channel, limit: Duration) -> bool {
    tokio::time::timeout(limit, async {
        while let Some(msg) = channel.wait().await {
            if matches!(msg, ChannelMsg::Close) {
                return;
            }
        }
    })
    .await
    .is_ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_channel_written_to_while_idle_is_closed_within_a_sweep() -> Result<()> {
    let w = RelayWorld::start(postern_tests::bins!()).await?;
    let (_ssh, _control, mut opened) =
        hand_driven_agent(&w, "rogue", Duration::ZERO, &["orders"]).await?;

    let call = || {
        let api = w.admin.clone();
        tokio::spawn(async move {
            let url = format!("{}/v1/agents/rogue/connections/orders/http/x", api.base);
            let answer = api.http.get(url).bearer_auth(&api.key).send().await?;
            anyhow::Ok((answer.status().as_u16(), answer.text().await?))
        })
    };
    // Two calls at once leave two channels in the pool.
    let (first, second) = (call(), call());
    let mut junk = next_channel(&mut opened).await?;
    let mut healthy = next_channel(&mut opened).await?;
    answer(&mut junk).await?;
    answer(&mut healthy).await?;
    for done in [first, second] {
        assert_eq!(done.await??, (200, "ok".to_owned()));
    }

    // Within the channel's first window (256 KiB): more would wait for window the relay
    // never gives an idle channel.
    junk.data(&vec![b'x'; 128 * 1024][..]).await?;
    assert!(
        closed_within(&mut junk, Duration::from_secs(5)).await,
        "the relay kept a channel that answered no request (idle_channel_timeout is 90 s)"
    );
    assert!(
        !closed_within(&mut healthy, Duration::from_millis(1500)).await,
        "the relay closed a healthy idle channel"
    );
    // The next call goes on the healthy channel; no new one is opened.
    let third = call();
    answer(&mut healthy).await?;
    assert_eq!(third.await??, (200, "ok".to_owned()));
    assert!(
        opened.try_recv().is_err(),
        "the relay opened another channel"
    );
    Ok(())
}

/// An agent at its cap of channels refuses an open with `ResourceShortage` (agents since
/// 2026-12-07): the caller gets 503 `agent_offline` saying so, not a 502 that reads as a
/// broken call, and the relay closes its idle channels to that agent (here one for another
/// connection, which a pool full of one connection's channels would keep for 90 s), so
/// the retry gets a channel.
#[tokio::test(flavor = "multi_thread")]
async fn a_channel_refused_for_shortage_is_503_and_frees_the_idle_ones() -> Result<()> {
    let w = RelayWorld::start(postern_tests::bins!()).await?;
    let short = Arc::new(AtomicBool::new(false));
    let handler = HandDriven {
        short: Some(short.clone()),
        ..Default::default()
    };
    let (_ssh, _control, mut opened) =
        hand_driven_agent_as(&w, "full", Duration::ZERO, &["orders", "billing"], handler).await?;
    let call = |connection: &'static str| {
        let api = w.admin.clone();
        tokio::spawn(async move {
            let url = format!(
                "{}/v1/agents/full/connections/{connection}/http/x",
                api.base
            );
            let answer = api.http.get(url).bearer_auth(&api.key).send().await?;
            anyhow::Ok((answer.status().as_u16(), answer.text().await?))
        })
    };
    let first = call("orders");
    let mut idle = next_channel(&mut opened).await?;
    answer(&mut idle).await?;
    assert_eq!(first.await??, (200, "ok".to_owned()));

    short.store(true, Ordering::SeqCst);
    let (status, body) = call("billing").await??;
    assert_eq!(status, 503, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body)?;
    assert_eq!(body["error"]["code"], "agent_offline");
    let said = body["error"]["message"].as_str().unwrap_or_default();
    assert!(said.contains("refused a new channel"), "{said}");
    assert!(said.contains("nothing was sent"), "{said}");
    assert!(
        closed_within(&mut idle, Duration::from_secs(5)).await,
        "the relay kept its idle channel to an agent that has no room"
    );

    short.store(false, Ordering::SeqCst);
    let retry = call("billing");
    let mut fresh = next_channel(&mut opened).await?;
    answer(&mut fresh).await?;
    assert_eq!(retry.await??, (200, "ok".to_owned()));
    Ok(())
}
