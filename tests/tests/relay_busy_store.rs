//! A store another process keeps locked past the busy timeout is unavailable for the
//! moment (503 `store_unavailable`, retry), not a failure of the relay (500 `internal`).

use std::time::Duration;

use anyhow::Result;
use postern_tests::harness::Bins;
use postern_tests::relay_support::{RelayWorld, SqliteLock, hold_sqlite_lock, send};
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
