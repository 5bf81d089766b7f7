//! An agent that stops (SIGTERM) says goodbye before it exits: the relay records the
//! session as closed by the agent, not as a lost connection.

use anyhow::Result;
use postern_tests::relay_support::{ONLINE_WITHIN, RelayWorld, sample, scrape};

#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_agent_is_recorded_as_closed_not_lost() -> Result<()> {
    let w = RelayWorld::start(postern_tests::bins!()).await?;
    let token = w.create_agent("warehouse-1").await?;
    // The race it guards against (exit before the disconnect is written) showed in
    // about one stop in ten to three.
    let rounds = 10;
    for _ in 0..rounds {
        let mut agent = w.start_agent(&token)?;
        w.admin
            .wait_online("warehouse-1", true, ONLINE_WITHIN)
            .await?;
        let status = agent.terminate()?;
        assert!(status.success(), "agent exit: {status}");
        w.admin
            .wait_online("warehouse-1", false, ONLINE_WITHIN)
            .await?;
    }
    let samples = scrape(&w.admin).await?;
    let closed = |reason: &str| {
        sample(
            &samples,
            &format!("postern_sessions_closed_total{{reason=\"{reason}\"}}"),
        )
    };
    assert_eq!(closed("connection_lost"), 0.0);
    assert_eq!(closed("agent_closed"), f64::from(rounds));
    // Each end names its agent, not only a session number.
    let logs = w.relay.logs.text();
    let ended: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("agent session ended"))
        .collect();
    assert!(
        ended.len() >= rounds as usize && ended.iter().all(|l| l.contains("agent=warehouse-1")),
        "{logs}"
    );
    Ok(())
}

/// While a stopping agent drains its calls it refuses new channels; a call that comes
/// then is told to retry (503 `agent_offline`), not that the connection does not exist
/// (404 `unknown_connection`, which reads as a mistake in the caller's configuration).
#[tokio::test(flavor = "multi_thread")]
async fn a_call_to_a_draining_agent_is_told_to_retry() -> Result<()> {
    let w = RelayWorld::start(postern_tests::bins!()).await?;
    let agent = w.agent_online("site").await?;
    let slow = {
        let api = w.admin.clone();
        tokio::spawn(async move { api.call("site", "orders", "/slow").await })
    };
    // Under way at the internal server, so the agent has taken it before it hears the stop.
    w.internal.has_seen("/slow").await?;
    let stopped = std::process::Command::new("kill")
        .args(["-TERM", &agent.process.pid().to_string()])
        .status()?;
    assert!(stopped.success());
    // The agent takes a moment to hear the signal; then each new call is refused.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut seen = Vec::new();
    while std::time::Instant::now() < deadline {
        let r = w.admin.call("site", "orders", "/ping").await?;
        let status = r.status().as_u16();
        let body: serde_json::Value = r.json().await.unwrap_or_default();
        let message = body["error"]["message"].as_str().unwrap_or_default();
        seen.push((status, message.to_owned()));
        if status != 200 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // Refused by the draining agent itself, not answered for an agent already gone.
    let last = seen.last().cloned().unwrap_or_default();
    assert!(
        last.0 == 503 && last.1.contains("takes no new calls"),
        "{seen:?}"
    );
    // The call under way still gets its whole answer.
    assert_eq!(slow.await??.status(), 200);
    Ok(())
}

/// Calls that race a stop, on channels the relay keeps pooled, are answered or told to
/// retry; none is lost. An agent that closed its idle channels itself crossed requests
/// already on their way in (502 "operation was canceled").
#[tokio::test(flavor = "multi_thread")]
async fn calls_racing_a_stop_are_answered_or_told_to_retry() -> Result<()> {
    let w = RelayWorld::start(postern_tests::bins!()).await?;
    let token = w.create_agent("site").await?;
    let (callers, rounds) = (16, 4);
    let mut outcomes = std::collections::BTreeMap::<(u16, String), usize>::new();
    for _ in 0..rounds {
        let mut agent = w.start_agent(&token)?;
        w.admin.wait_online("site", true, ONLINE_WITHIN).await?;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let tasks: Vec<_> = (0..callers)
            .map(|_| {
                let api = w.admin.clone();
                tokio::spawn(async move {
                    let mut seen = Vec::new();
                    // Until this caller is told the agent is away, or the deadline.
                    for _ in 0..2_000 {
                        if std::time::Instant::now() > deadline {
                            break;
                        }
                        let r = api.call("site", "orders", "/ping").await?;
                        let status = r.status().as_u16();
                        let body: serde_json::Value = r.json().await.unwrap_or_default();
                        let code = postern_tests::relay_support::error_code(&body).to_owned();
                        seen.push((status, code));
                        if status == 503 {
                            break;
                        }
                    }
                    anyhow::Ok(seen)
                })
            })
            .collect();
        // Every caller has a pooled channel by now, and calls keep coming on them.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let stop = tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            agent.terminate().map(|status| (status, started.elapsed()))
        });
        for task in tasks {
            for outcome in task.await?? {
                *outcomes.entry(outcome).or_default() += 1;
            }
        }
        // The relay closed the agent's channels; left open, they would hold the stop for
        // the agent's whole grace (30 s).
        let (status, took) = stop.await??;
        assert!(status.success(), "agent exit: {status}");
        assert!(
            took < std::time::Duration::from_secs(10),
            "stop took {took:?}"
        );
        w.admin.wait_online("site", false, ONLINE_WITHIN).await?;
    }
    let unexpected: Vec<_> = outcomes
        .iter()
        .filter(|((status, code), _)| {
            !(*status == 200 || (*status == 503 && code == "agent_offline"))
        })
        .collect();
    assert!(unexpected.is_empty(), "{outcomes:?}");
    // Each round's callers were each told to retry.
    let retry = outcomes.get(&(503, "agent_offline".to_owned())).copied();
    assert_eq!(retry, Some(callers * rounds), "{outcomes:?}");
    let logs = w.relay.logs.text();
    assert_eq!(logs.matches("agent drains").count(), rounds, "{logs}");
    Ok(())
}

/// While a stopping agent drains, `postern status` still answers and says so, and a
/// reload is refused; the socket goes once the calls under way are done.
#[tokio::test(flavor = "multi_thread")]
async fn status_answers_through_a_stops_drain() -> Result<()> {
    use postern_tests::harness::{AgentProcess, agent_command, output_text, stdout};
    use std::time::{Duration, Instant};
    let w = RelayWorld::start(postern_tests::bins!()).await?;
    let token = w.create_agent("site").await?;
    let config = w.write_agent_config(&token)?;
    let mut agent = AgentProcess::start(&w.bins, &config)?;
    w.admin.wait_online("site", true, ONLINE_WITHIN).await?;
    // Under way for 10 s at the internal server.
    let slower = {
        let api = w.admin.clone();
        tokio::spawn(async move { api.call("site", "orders", "/slower").await })
    };
    w.internal.has_seen("/slower").await?;
    postern_tests::harness::signal(agent.pid(), "TERM")?;

    let deadline = Instant::now() + Duration::from_secs(5);
    let report = loop {
        let out = agent_command(&w.bins, &config, &["status", "--json"]).output()?;
        let report: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap_or_default();
        if report["stopping"] == true {
            break report;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "status never said stopping: {}",
            output_text(&out)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(report["draining"], true, "{report}");
    let text = agent_command(&w.bins, &config, &["status"]).output()?;
    assert!(stdout(&text).contains("STOPPING"), "{}", output_text(&text));
    let reload = agent_command(&w.bins, &config, &["reload"]).output()?;
    assert_eq!(reload.status.code(), Some(1), "{}", output_text(&reload));
    assert!(
        output_text(&reload).contains("the agent is stopping"),
        "{}",
        output_text(&reload)
    );

    assert_eq!(slower.await??.status(), 200);
    let status = agent.exit_within(Duration::from_secs(10)).await?;
    assert!(status.success(), "{status:?}");
    let gone = agent_command(&w.bins, &config, &["status"]).output()?;
    assert_eq!(gone.status.code(), Some(2), "{}", output_text(&gone));
    Ok(())
}

/// A second SIGTERM during the drain stops the agent at once, as the relay's does: the
/// call under way is cut off (the relay tells its caller to retry), not waited for.
#[tokio::test(flavor = "multi_thread")]
async fn a_second_signal_stops_at_once() -> Result<()> {
    use postern_tests::harness::AgentProcess;
    use std::time::{Duration, Instant};
    let w = RelayWorld::start(postern_tests::bins!()).await?;
    let token = w.create_agent("site").await?;
    let config = w.write_agent_config(&token)?;
    let mut agent = AgentProcess::start(&w.bins, &config)?;
    w.admin.wait_online("site", true, ONLINE_WITHIN).await?;
    // Under way for 16 s at the internal server, more than the test waits.
    let slowest = {
        let api = w.admin.clone();
        tokio::spawn(async move { api.call("site", "orders", "/slowest").await })
    };
    w.internal.has_seen("/slowest").await?;
    postern_tests::harness::signal(agent.pid(), "TERM")?;
    agent
        .logs
        .wait_for("shutdown requested; draining", Duration::from_secs(5))?;
    let second = Instant::now();
    postern_tests::harness::signal(agent.pid(), "TERM")?;
    let status = agent.exit_within(Duration::from_secs(8)).await?;
    assert!(status.success(), "{status:?}");
    assert!(second.elapsed() < Duration::from_secs(8));
    assert!(
        agent
            .logs
            .text()
            .contains("second signal: stopping at once"),
        "{}",
        agent.logs.text()
    );
    // The internal server has it: the caller is not told to retry, which could run it twice.
    let cut = slowest.await??;
    assert_eq!(cut.status(), 502);
    assert_eq!(cut.headers()["x-postern-error"], "tunnel_error");
    Ok(())
}
