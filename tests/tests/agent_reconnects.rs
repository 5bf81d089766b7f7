//! `postern_agent_reconnects_total` and `postern status`'s `reconnects` count sessions
//! established again, not attempts: a relay down for several attempts adds exactly 1.

use std::time::Duration;

use anyhow::{Context, Result};
use postern_tests::harness::{Bins, RelayProcess, Tunnel, agent_metrics, status_json};
use postern_tests::relay_support::{ONLINE_WITHIN, eventually};
use postern_tests::temp::TempDir;

fn bins() -> Bins {
    postern_tests::bins!()
}

/// The value of the unlabelled series `name` in OpenMetrics `text`.
fn series(text: &str, name: &str) -> Result<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .with_context(|| format!("no {name} in:\n{text}"))?
        .trim()
        .parse()
        .with_context(|| format!("{name} is not a count in:\n{text}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_relay_outage_with_failed_attempts_counts_one_reconnect() -> Result<()> {
    let bins = bins();
    let dir = TempDir::new("agent-reconnects")?;
    // Port 0, so no other test can take the port first; the agent logs only the
    // configured address, so the bound port comes from /proc.
    let mut w = Tunnel::start(&bins, &dir, "metrics_listen = \"127.0.0.1:0\"\n").await?;
    let metrics_port = w.agent.metrics_port()?;
    let text = agent_metrics(metrics_port).await?;
    assert_eq!(series(&text, "postern_agent_reconnects_total")?, 0);
    assert_eq!(status_json(&bins, &w.config)?["reconnects"], 0);

    let (ssh, api) = (w.relay.ssh.to_string(), w.relay.api.to_string());
    let state = w.relay.state_dir.clone();
    w.relay.kill();
    // The lost session, then at least three refused connects while the relay is down.
    let logs = w.agent.logs.clone();
    eventually("four 'tunnel down' lines", Duration::from_secs(30), || {
        let logs = logs.clone();
        async move { logs.so_far().matches("tunnel down").count() >= 4 }
    })
    .await?;
    let text = agent_metrics(metrics_port).await?;
    assert_eq!(series(&text, "postern_agent_connected")?, 0);
    assert_eq!(
        series(&text, "postern_agent_reconnects_total")?,
        0,
        "failed attempts are not reconnections"
    );
    let status = status_json(&bins, &w.config)?;
    assert_eq!(status["reconnects"], 0, "{status}");

    w.relay = RelayProcess::start(&bins, &state, &ssh, &api)?;
    w.api.wait_online("a1", true, ONLINE_WITHIN).await?;
    eventually(
        "the agent sees itself connected",
        Duration::from_secs(5),
        || async {
            agent_metrics(metrics_port)
                .await
                .is_ok_and(|t| t.contains("postern_agent_connected 1\n"))
        },
    )
    .await?;
    let text = agent_metrics(metrics_port).await?;
    assert_eq!(
        series(&text, "postern_agent_reconnects_total")?,
        1,
        "one outage, one reconnection, however many attempts:\n{}",
        w.agent.logs.so_far()
    );
    let status = status_json(&bins, &w.config)?;
    assert_eq!(status["connected"], true, "{status}");
    assert_eq!(status["reconnects"], 1, "{status}");
    Ok(())
}
