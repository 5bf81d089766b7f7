//! A store another process keeps locked past the busy timeout is unavailable for the
//! moment (503 `store_unavailable`, retry), not a failure of the relay (500 `internal`);
//! an agent's login it cannot check, or not check in time, is ended with that reason, not
//! refused.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use postern_relay::ssh_server::AUTH_TIMEOUT;
use postern_relay::store::sqlite::BUSY_TIMEOUT;
use postern_tests::harness::{Bins, agent_config, open_fds, reconnect_delays};
use postern_tests::relay_support::{
    RelayWorld, SqliteLock, eventually, hold_sqlite_lock, sample, scrape, send,
};
use postern_tests::store_reads::fail_reads;
use reqwest::Method;
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};

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

/// A link to `relay` whose first connection carries nothing either way for `hold` (a slow
/// link: the relay's authentication clock runs from its accept), and whose later ones are
/// closed at once until `open` is set, then passed straight through.
async fn held_link(relay: SocketAddr, hold: Duration, open: Arc<AtomicBool>) -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        for n in 0..50 {
            let Ok((mut agent, _)) = listener.accept().await else {
                return;
            };
            if n > 0 && !open.load(Ordering::SeqCst) {
                continue;
            }
            tokio::spawn(async move {
                let Ok(mut upstream) = TcpStream::connect(relay).await else {
                    return;
                };
                if n == 0 {
                    tokio::time::sleep(hold).await;
                }
                let _ = tokio::io::copy_bidirectional(&mut agent, &mut upstream).await;
            });
        }
    });
    Ok(addr)
}

/// A login whose token check the store has not answered by the authentication timeout (the
/// store slow, not failing) is ended with the relay's reason, not by closing the socket: the
/// agent says the relay could not check its token in time and retries at its usual pace;
/// the relay lets the connection go (its socket closed, its check given up) and a later
/// login works.
#[tokio::test(flavor = "multi_thread")]
async fn a_login_the_store_has_not_checked_by_the_timeout_is_told_why() -> Result<()> {
    let w = RelayWorld::start(bins()).await?;
    // A login reads the store itself (the lookup cache holds API keys and agents by name).
    let token = w.create_agent("site-a").await?;
    let reads = fail_reads(&w.state_dir().join("relay.db"))?;
    // The login comes late enough that its read, which waits out the store's busy timeout,
    // is still waiting when the authentication timeout comes.
    let hold = AUTH_TIMEOUT - BUSY_TIMEOUT + Duration::from_millis(1500);
    let open = Arc::new(AtomicBool::new(false));
    let link = held_link(w.relay.ssh, hold, open.clone()).await?;
    let connections = format!(
        "\n[connections.orders]\nbase_uri = \"{}\"\n",
        w.internal.base_uri()
    );
    let config = w.dir.write_private(
        "held-agent.toml",
        &agent_config(link, &w.relay.fingerprint, &token, &connections),
    )?;
    let fds_before = open_fds(w.relay.pid())?;
    let mut agent = postern_tests::harness::AgentProcess::start(&w.bins, &config)?;

    agent.logs.wait_for(
        "during authentication: relay closed the session: the relay could not check the token in time",
        AUTH_TIMEOUT + Duration::from_secs(5),
    )?;
    agent
        .logs
        .wait_for("reconnecting", Duration::from_secs(5))?;
    let logs = agent.logs.text();
    ensure!(
        !logs.contains("refused the access token") && !logs.contains("retrying slowly"),
        "the agent took the relay's slowness for a refused token:\n{logs}"
    );
    let delays = reconnect_delays(&logs);
    ensure!(
        delays.first().is_some_and(|d| *d < Duration::from_secs(5)),
        "not retried at the usual pace: {delays:?}\n{logs}"
    );
    w.relay.logs.wait_for(
        "login ended at the authentication timeout",
        Duration::from_secs(5),
    )?;
    // The connection's socket is closed: no session task holds it past its end.
    let pid = w.relay.pid();
    eventually(
        "the relay lets the ended login's connection go",
        Duration::from_secs(5),
        || std::future::ready(open_fds(pid).is_ok_and(|fds| fds <= fds_before)),
    )
    .await?;

    reads.restore()?;
    open.store(true, Ordering::SeqCst);
    w.admin
        .wait_online("site-a", true, Duration::from_secs(15))
        .await?;
    agent.terminate()?;
    let metrics = scrape(&w.admin).await?;
    ensure!(
        sample(&metrics, "postern_auth_failures_total{reason=\"timeout\"}") >= 1.0,
        "the ended login not counted as a timeout"
    );
    Ok(())
}
