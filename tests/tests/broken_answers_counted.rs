//! Answers that break off after their head, with a real relay and agent: counted as broken
//! on both sides (by where the break came from on the relay), logged at warn, and never
//! for a caller that hangs up; the relay's own call failures stay under the README's filter.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, Result};
use postern_tests::harness::{AgentProcess, agent_config, signal, status_json};
use postern_tests::relay_support::{ONLINE_WITHIN, RelayWorld, eventually, sample, scrape};

/// The relay's filter for busy relays, from the README.
const BUSY_RELAY: [&str; 2] = ["--log-level", "info,postern_relay::api::call=warn"];
const BY_AGENT: &str = "postern_calls_broken_total{cause=\"agent\"}";
const BY_TUNNEL: &str = "postern_calls_broken_total{cause=\"tunnel_lost\"}";
const AGENT_BROKEN: &str = "postern_agent_answers_broken_total{connection=\"orders\"}";
const AGENT_200: &str =
    "postern_agent_calls_total{connection=\"orders\",status=\"200\",postern_error=\"none\"}";

/// Agent `name`, created and online, serving `orders` and its metrics on a port of its own.
async fn agent_with_metrics(w: &RelayWorld, name: &str) -> Result<(AgentProcess, u16)> {
    let token = w.create_agent(name).await?;
    let connections = format!(
        "metrics_listen = \"127.0.0.1:0\"\n[connections.orders]\nbase_uri = \"{}\"\ntimeout = \"20s\"\n",
        w.internal.base_uri()
    );
    let config = w.dir.write_private(
        &format!("{name}.toml"),
        &agent_config(w.relay.ssh, &w.relay.fingerprint, &token, &connections),
    )?;
    let agent = AgentProcess::start(&w.bins, &config)?;
    w.admin.wait_online(name, true, ONLINE_WITHIN).await?;
    let port = agent.metrics_port()?;
    Ok((agent, port))
}

/// Waits until the relay's `series` (a broken-answer count) reads 1, 5 s at most.
async fn relay_counts_one(w: &RelayWorld, series: &str) -> Result<()> {
    eventually(
        "the relay counts the broken answer",
        Duration::from_secs(5),
        || async {
            scrape(&w.admin)
                .await
                .is_ok_and(|m| sample(&m, series) == 1.0)
        },
    )
    .await
}

async fn agent_samples(port: u16) -> Result<HashMap<String, f64>> {
    let text = postern_tests::harness::agent_metrics(port).await?;
    let mut samples = HashMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        if let Some((name, value)) = line.rsplit_once(' ') {
            samples.insert(name.to_owned(), value.parse::<f64>()?);
        }
    }
    Ok(samples)
}

/// The first line of `logs` holding `needle`, once there (10 s at most).
fn line_with(logs: &postern_tests::harness::Logs, needle: &str) -> Result<String> {
    logs.wait_for(needle, Duration::from_secs(10))?;
    Ok(logs
        .lines()
        .into_iter()
        .find(|l| l.contains(needle))
        .unwrap_or_default())
}

fn assert_has(line: &str, parts: &[&str]) {
    for part in parts {
        assert!(line.contains(part), "no {part:?} in {line}");
    }
}

/// `GET /v1/agents/{agent}/connections/orders/http{path}`, returned at its head.
async fn call(w: &RelayWorld, agent: &str, path: &str, id: &str) -> Result<reqwest::Response> {
    Ok(w.admin
        .http
        .get(format!(
            "{}/v1/agents/{agent}/connections/orders/http{path}",
            w.admin.base
        ))
        .bearer_auth(&w.admin.key)
        .header("x-request-id", id)
        .send()
        .await?)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_answer_the_internal_server_breaks_off_is_broken_on_both_sides_a_hang_up_is_not()
-> Result<()> {
    let w = RelayWorld::start_configured(postern_tests::bins!(), "", &BUSY_RELAY).await?;
    let (agent, port) = agent_with_metrics(&w, "site").await?;

    let answer = call(&w, "site", "/break-off", "cut-1").await?;
    assert_eq!(answer.status(), 200);
    assert!(answer.bytes().await.is_err(), "the caller got a whole body");
    let line = line_with(&w.relay.logs, "the answer broke off after its head")?;
    assert_has(
        &line,
        &[
            "WARN",
            "bytes=10",
            "the agent ended it early",
            "see the agent's log for this request id",
            "request_id=cut-1",
            "agent=site",
        ],
    );
    let agent_line = line_with(&agent.logs, "call's answer broke off")?;
    assert_has(&agent_line, &["WARN", "request_id=cut-1"]);
    relay_counts_one(&w, BY_AGENT).await?;
    let relay = scrape(&w.admin).await?;
    assert_eq!(sample(&relay, BY_TUNNEL), 0.0);
    // Its status went out and stays counted; the broken counter is beside it.
    assert_eq!(sample(&relay, "postern_calls_total{class=\"2xx\"}"), 1.0);
    // The agent's metrics say what `postern status` says: one call, failed, not served.
    let metrics = agent_samples(port).await?;
    assert_eq!(sample(&metrics, AGENT_BROKEN), 1.0, "{metrics:?}");
    assert_eq!(sample(&metrics, AGENT_200), 1.0, "{metrics:?}");
    let config = w.dir.path().join("site.toml");
    let report = status_json(&w.bins, &config)?;
    let orders = &report["connections"]["orders"];
    assert_eq!(
        (
            orders["calls_served"].as_u64(),
            orders["calls_failed"].as_u64()
        ),
        (Some(0), Some(1)),
        "{report}"
    );

    // A caller that hangs up after the head: its doing, not a broken answer.
    let answer = call(&w, "site", "/stall-after-head/2", "gone-1").await?;
    assert_eq!(answer.status(), 200);
    drop(answer);
    let line = line_with(&w.relay.logs, "the caller did not take the whole answer")?;
    assert_has(&line, &["request_id=gone-1"]);
    // The internal server's answer ends after 2 s, and the agent finds the channel gone.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let relay = scrape(&w.admin).await?;
    assert_eq!(
        (sample(&relay, BY_AGENT), sample(&relay, BY_TUNNEL)),
        (1.0, 0.0)
    );
    assert_eq!(sample(&agent_samples(port).await?, AGENT_BROKEN), 1.0);
    let breaks = w
        .relay
        .logs
        .lines()
        .into_iter()
        .filter(|l| l.contains("broke off after its head"))
        .count();
    assert_eq!(breaks, 1, "{}", w.relay.logs.text());
    Ok(())
}

/// The agent's process killed mid-call, before the answer's head and after it: the first
/// is a `tunnel_error` at warn (kept by the busy relay's filter), the second a broken
/// answer counted as the tunnel's.
#[tokio::test(flavor = "multi_thread")]
async fn a_tunnel_lost_mid_call_is_a_warning_and_mid_answer_is_counted_as_the_tunnels() -> Result<()>
{
    let w = RelayWorld::start_configured(postern_tests::bins!(), "", &BUSY_RELAY).await?;

    let (before_head, _) = agent_with_metrics(&w, "early").await?;
    let caller = tokio::spawn({
        let api = w.admin.clone();
        async move {
            let url = format!(
                "{}/v1/agents/early/connections/orders/http/slower",
                api.base
            );
            let answer = api.http.get(url).bearer_auth(&api.key).send().await?;
            anyhow::Ok(answer.status().as_u16())
        }
    });
    w.internal.has_seen("/slower").await?;
    signal(before_head.pid(), "KILL")?;
    let status = tokio::time::timeout(Duration::from_secs(10), caller)
        .await
        .context("no answer within 10 s")???;
    assert_eq!(status, 502);
    let line = line_with(&w.relay.logs, "code=\"tunnel_error\"")?;
    assert_has(&line, &["WARN", "call failed", "agent=early"]);

    let (mid_answer, _) = agent_with_metrics(&w, "late").await?;
    let answer = call(&w, "late", "/stall-after-head/20", "lost-1").await?;
    assert_eq!(answer.status(), 200);
    signal(mid_answer.pid(), "KILL")?;
    let body = tokio::time::timeout(Duration::from_secs(10), answer.bytes())
        .await
        .context("the body neither ended nor failed within 10 s")?;
    assert!(body.is_err(), "the caller got a whole body: {body:?}");
    let line = line_with(&w.relay.logs, "the answer broke off after its head")?;
    assert_has(
        &line,
        &[
            "WARN",
            "bytes=10",
            "the tunnel to the agent was lost",
            "request_id=lost-1",
        ],
    );
    relay_counts_one(&w, BY_TUNNEL).await?;
    assert_eq!(sample(&scrape(&w.admin).await?, BY_AGENT), 0.0);
    Ok(())
}

/// The relay's `call_timeout` is its own failure, at warn under the busy relay's filter;
/// an offline agent's refusal is at info, filtered out, so its callers cannot flood warn.
#[tokio::test(flavor = "multi_thread")]
async fn the_relays_timeout_stays_under_the_busy_filter_and_an_offline_agent_does_not() -> Result<()>
{
    let w = RelayWorld::start_configured(
        postern_tests::bins!(),
        "call_timeout = \"1s\"\n",
        &BUSY_RELAY,
    )
    .await?;
    let _agent = w.agent_online("slowpoke").await?;
    let answer = w.admin.call("slowpoke", "orders", "/slow").await?;
    assert_eq!(answer.status(), 504);
    let line = line_with(&w.relay.logs, "code=\"upstream_timeout\"")?;
    assert_has(&line, &["WARN", "call failed", "agent=slowpoke"]);

    w.create_agent("absent").await?;
    let answer = w.admin.call("absent", "orders", "/x").await?;
    assert_eq!(answer.status(), 503);
    // Filtered out at info; a later line shows the log has caught up past the call.
    let _ = w.admin.call("slowpoke", "orders", "/slow").await?;
    let timeouts = || {
        w.relay
            .logs
            .lines()
            .iter()
            .filter(|l| l.contains("code=\"upstream_timeout\""))
            .count()
    };
    eventually(
        "the second timeout's line",
        Duration::from_secs(10),
        || async { timeouts() == 2 },
    )
    .await?;
    let lines = w.relay.logs.lines();
    assert!(
        !lines.iter().any(|l| l.contains("agent_offline")),
        "{}",
        w.relay.logs.text()
    );
    Ok(())
}
