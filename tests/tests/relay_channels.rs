//! The relay's pool of call channels, seen through `postern_call_channels_opened_total`:
//! calls reuse idle channels, a body cut short closes its own, idle ones close in time
//! and are capped per session.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Result;
use postern_tests::harness::{AgentProcess, Api, Bins};
use postern_tests::relay_support::{ONLINE_WITHIN, RelayWorld, sample, scrape};

fn bins() -> Bins {
    postern_tests::bins!()
}

fn opened(samples: &HashMap<String, f64>) -> f64 {
    sample(samples, "postern_call_channels_opened_total")
}

/// A relay with `config` in its config file, and one agent online with two connections
/// on the internal server, `orders` and `billing`.
async fn world(config: &str) -> Result<(RelayWorld, AgentProcess)> {
    let w = RelayWorld::start_configured(bins(), config, &[]).await?;
    let token = w.create_agent("warehouse-1").await?;
    let billing = format!(
        "\n[connections.billing]\nbase_uri = \"{}\"\n",
        w.internal.base_uri()
    );
    let agent = AgentProcess::start(&w.bins, &w.write_agent_config_with(&token, &billing)?)?;
    w.admin
        .wait_online("warehouse-1", true, ONLINE_WITHIN)
        .await?;
    Ok((w, agent))
}

/// Calls reuse the relay's pooled channels: one channel for any number of calls one
/// after another, whatever their body (none, empty, many packets), and a body cut short
/// closes its channel instead of handing the next call a half-read one.
#[tokio::test(flavor = "multi_thread")]
async fn calls_one_after_another_share_one_channel() -> Result<()> {
    let (w, _agent) = world("").await?;
    let url = |path: &str| {
        format!(
            "{}/v1/agents/warehouse-1/connections/orders/http{path}",
            w.admin.base
        )
    };
    assert_eq!(opened(&scrape(&w.admin).await?), 0.0);

    for i in 0..10 {
        echoes_its_query(&w.admin, "/json", &format!("i={i}")).await?;
        let empty = w.admin.call("warehouse-1", "orders", "/bytes/0").await?;
        assert_eq!(empty.status(), 200);
        assert!(empty.bytes().await?.is_empty());
        let head = w
            .admin
            .http
            .head(url("/bytes/10"))
            .bearer_auth(&w.admin.key)
            .send()
            .await?;
        assert_eq!(head.status(), 200);
        let big = w
            .admin
            .call("warehouse-1", "orders", "/bytes/300000")
            .await?;
        assert_eq!(big.bytes().await?.len(), 300_000);
    }
    assert_eq!(opened(&scrape(&w.admin).await?), 1.0, "40 calls in a row");

    // The caller goes away after the head of an 8 MB answer: that channel is not reused.
    let cut = w
        .admin
        .call("warehouse-1", "orders", "/bytes/8000000")
        .await?;
    assert_eq!(cut.status(), 200);
    drop(cut);
    for i in 0..5 {
        echoes_its_query(&w.admin, "/after", &format!("i={i}")).await?;
    }
    let after = opened(&scrape(&w.admin).await?);
    assert_eq!(after, 2.0, "one channel more for the cut call's successor");

    // Calls at once take a channel each (one of them the idle one), and the pool keeps
    // them all for the next round.
    slow_calls_at_once(&w.admin, "orders", 6).await?;
    let first_round = opened(&scrape(&w.admin).await?);
    assert_eq!(
        first_round,
        after + 5.0,
        "six calls at once, one channel idle"
    );
    slow_calls_at_once(&w.admin, "orders", 6).await?;
    assert_eq!(
        opened(&scrape(&w.admin).await?),
        first_round,
        "the second round"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_channels_close_after_idle_channel_timeout() -> Result<()> {
    let (w, _agent) = world("idle_channel_timeout = \"2s\"\n").await?;
    slow_calls_at_once(&w.admin, "orders", 4).await?;
    assert_eq!(opened(&scrape(&w.admin).await?), 4.0, "four calls at once");
    // Idle for less than the timeout: reused.
    assert_eq!(opened_after_a_call(&w.admin, "orders").await?, 4.0);
    // Idle for longer (2 s, swept each second, so closed by 3 s; 2 s more for a loaded
    // machine): all four closed, the next call opens one.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(opened_after_a_call(&w.admin, "orders").await?, 5.0);
    Ok(())
}

/// At most `max_calls_per_agent` channels stay idle per session, whatever the connection:
/// past it the one idle longest closes, so one connection's burst cannot keep a second
/// allowance of channels open beside another's.
#[tokio::test(flavor = "multi_thread")]
async fn idle_channels_are_capped_per_session_longest_idle_first() -> Result<()> {
    let (w, _agent) = world("max_calls_per_agent = 2\n").await?;
    slow_calls_at_once(&w.admin, "orders", 2).await?;
    assert_eq!(opened(&scrape(&w.admin).await?), 2.0);
    // Two billing channels more; as each goes idle, an orders one closes.
    slow_calls_at_once(&w.admin, "billing", 2).await?;
    assert_eq!(opened(&scrape(&w.admin).await?), 4.0);
    // So orders needs a new channel (billing's two stay the only idle ones before it)…
    assert_eq!(opened_after_a_call(&w.admin, "orders").await?, 5.0);
    // …and billing still has one.
    assert_eq!(opened_after_a_call(&w.admin, "billing").await?, 5.0);
    Ok(())
}

/// `n` calls of 3 s each to `connection`, all under way at once; each must answer 200.
async fn slow_calls_at_once(api: &Api, connection: &'static str, n: usize) -> Result<()> {
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..n {
        let api = api.clone();
        calls.spawn(async move {
            api.call("warehouse-1", connection, &format!("/slow?c={i}"))
                .await
        });
    }
    while let Some(done) = calls.join_next().await {
        assert_eq!(done??.status(), 200);
    }
    Ok(())
}

/// One call to `connection` (it must answer 200), then the channels opened so far.
async fn opened_after_a_call(api: &Api, connection: &str) -> Result<f64> {
    let answer = api.call("warehouse-1", connection, "/x").await?;
    assert_eq!(answer.status(), 200);
    Ok(opened(&scrape(api).await?))
}

/// A call to `orders` at `path?query` whose answer (the internal server's JSON) must be
/// that very call's: whole, and with its own query.
async fn echoes_its_query(api: &Api, path: &str, query: &str) -> Result<()> {
    let answer = api
        .call("warehouse-1", "orders", &format!("{path}?{query}"))
        .await?;
    assert_eq!(answer.status(), 200);
    assert!(
        answer
            .text()
            .await?
            .contains(&format!("\"query\":\"{query}\""))
    );
    Ok(())
}
