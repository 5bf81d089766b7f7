//! A store another process keeps locked past the busy timeout is unavailable for the
//! moment (503 `store_unavailable`, retry), not a failure of the relay (500 `internal`);
//! an agent's login it cannot check is ended with that reason, not refused.

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use postern_tests::harness::Bins;
use postern_tests::relay_support::{
    RelayWorld, SqliteLock, hold_sqlite_lock, sample, scrape, send,
};
use postern_tests::store_reads::fail_reads;
use reqwest::Method;
use serde_json::json;

fn bins() -> Bins {
    postern_tests::bins!()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_write_past_anothers_lock_is_503_store_unavailable() -> Result<()> {
    let w = RelayWorld::start(bins()).await?;
    let lock = hold_sqlite_lock(
        &w.state_dir().join("relay.db"),
        SqliteLock::Write,
        false,
        None,
    )?;
    let busy = send(
        &w.admin,
        Method::POST,
        "/v1/agents",
        Some(json!({"name": "site-a"})),
    )
    .await?;
    assert_eq!(busy.status, 503, "{}", busy.json);
    assert_eq!(busy.code(), "store_unavailable");
    let message = busy.json["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("busy"), "{message}");
    w.relay.logs.wait_for(
        "the store stayed locked by another process",
        Duration::from_secs(5),
    )?;

    drop(lock);
    let retried = send(
        &w.admin,
        Method::POST,
        "/v1/agents",
        Some(json!({"name": "site-a"})),
    )
    .await?;
    assert_eq!(retried.status, 201, "{}", retried.json);
    Ok(())
}

/// A login the relay cannot check, its store unreadable, is ended with the relay's reason
/// rather than refused: the agent says the relay's store is unavailable (not that its token
/// was refused, which sent its admin after a token problem there was none of, and kept it
/// away 15–30 s), and logs in at its usual pace once the store is back.
#[tokio::test(flavor = "multi_thread")]
async fn a_login_the_store_cannot_check_is_ended_with_the_reason_not_refused() -> Result<()> {
    let w = RelayWorld::start(bins()).await?;
    let token = w.create_agent("site-a").await?;
    let reads = fail_reads(&w.state_dir().join("relay.db"))?;
    let mut agent = w.start_agent(&token)?;
    // The login waits out the store's busy timeout (5 s), then the agent backs off.
    agent
        .logs
        .wait_for("reconnecting", Duration::from_secs(20))?;
    let logs = agent.logs.text();
    ensure!(
        logs.contains(
            "during authentication: relay closed the session: the relay's store is unavailable"
        ),
        "the agent did not give the relay's reason:\n{logs}"
    );
    ensure!(
        !logs.contains("refused the access token") && !logs.contains("retrying slowly"),
        "the agent took the relay's trouble for a refused token:\n{logs}"
    );
    w.relay.logs.wait_for(
        "store unavailable during authentication",
        Duration::from_secs(5),
    )?;

    reads.restore()?;
    let back = Instant::now();
    // Its next try comes within a second or two (a refused token's within 15–30 s), and
    // one already waiting on the store gets its answer once the store is back.
    w.admin
        .wait_online("site-a", true, Duration::from_secs(10))
        .await?;
    let logs = agent.logs.text();
    agent.terminate()?;
    ensure!(
        !logs.contains("refused the access token"),
        "{:?} after the store came back:\n{logs}",
        back.elapsed()
    );
    let metrics = scrape(&w.admin).await?;
    ensure!(
        sample(
            &metrics,
            "postern_auth_failures_total{reason=\"store_unavailable\"}"
        ) >= 1.0,
        "no login counted as store_unavailable"
    );
    Ok(())
}
