//! A session that ends while the agent waits for its login's answer (a relay stopping,
//! its authentication timeout in a reconnect rush, a reset link) is a lost session, not
//! a refused token: the agent says so and tries again at the usual pace, where it used to
//! log "the relay refused the access token" and wait 15–30 s before every attempt.
//!
//! The relay here is russh's own server on 127.0.0.1, with a host key the agent pins,
//! ending each session as the agent's password arrives, without an answer. And the other
//! way round: a real relay's refusal, after which russh itself ends the session (no
//! method left to try), is still a refused token, retried slowly.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Result, ensure};
use postern_tests::harness::{AgentProcess, Bins, agent_config, reconnect_delays, unknown_token};
use postern_tests::relay_support::{RelayWorld, eventually};
use postern_tests::temp::TempDir;
use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::{HashAlg, PrivateKey};
use russh::server;
use tokio::net::TcpListener;

/// Ends the session on every password, as a relay that stops or times the login out.
struct EndsOnLogin {
    logins: Arc<AtomicUsize>,
}

impl server::Handler for EndsOnLogin {
    type Error = russh::Error;

    async fn auth_password(&mut self, _: &str, _: &str) -> Result<server::Auth, Self::Error> {
        self.logins.fetch_add(1, Ordering::SeqCst);
        Err(russh::Error::Disconnect)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_lost_during_login_is_not_a_refused_token() -> Result<()> {
    let key = PrivateKey::from(Ed25519Keypair::from_seed(&[3; 32]));
    let fingerprint = key.public_key().fingerprint(HashAlg::Sha256).to_string();
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let config = Arc::new(server::Config {
        keys: vec![key],
        auth_rejection_time: Duration::ZERO,
        ..Default::default()
    });
    let logins = Arc::new(AtomicUsize::new(0));
    let counted = logins.clone();
    let relay = tokio::spawn(async move {
        let sessions = tokio_util::task::TaskTracker::new();
        while let Ok((socket, _)) = listener.accept().await {
            let handler = EndsOnLogin {
                logins: counted.clone(),
            };
            let config = config.clone();
            sessions.spawn(async move {
                if let Ok(running) = server::run_stream(config, socket, handler).await {
                    let _ = running.await;
                }
            });
        }
    });

    let bins: Bins = postern_tests::bins!();
    let dir = TempDir::new("agent-setup-lost")?;
    let config = dir.write_private(
        "agent.toml",
        &format!(
            "relay = \"{addr}\"\nrelay_fingerprint = \"{fingerprint}\"\ntoken = \"{}\"\nstatus_socket = \"agent.sock\"\n",
            unknown_token()
        ),
    )?;
    let mut agent = AgentProcess::start(&bins, &config)?;
    // Refused, the second login would come 15–30 s after the first.
    let seen = logins.clone();
    eventually("three logins", Duration::from_secs(14), || {
        let seen = seen.clone();
        async move { seen.load(Ordering::SeqCst) >= 3 }
    })
    .await?;
    let logs = agent.logs.text();
    agent.terminate()?;
    relay.abort();
    ensure!(
        logs.contains("during authentication"),
        "the agent did not say the session ended during its login:\n{logs}"
    );
    ensure!(
        !logs.contains("refused the access token"),
        "the agent took a lost session for a refused token:\n{logs}"
    );
    let delays = reconnect_delays(&logs);
    ensure!(
        delays.first().is_some_and(|d| *d < Duration::from_secs(15)),
        "the first wait was a refused token's: {delays:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_the_relay_refuses_is_a_refused_token() -> Result<()> {
    let bins: Bins = postern_tests::bins!();
    let w = RelayWorld::start(bins.clone()).await?;
    let (relay, dir) = (&w.relay, &w.dir);
    let config = dir.write_private(
        "agent.toml",
        &agent_config(relay.ssh, &relay.fingerprint, &unknown_token(), ""),
    )?;
    let mut agent = AgentProcess::start(&bins, &config)?;
    let logs = agent.logs.clone();
    eventually("the first reconnect", Duration::from_secs(14), || {
        let logs = logs.clone();
        async move { !reconnect_delays(&logs.so_far()).is_empty() }
    })
    .await?;
    let logs = agent.logs.text();
    agent.terminate()?;
    ensure!(
        logs.contains("refused the access token"),
        "the agent did not say its token was refused:\n{logs}"
    );
    let delays = reconnect_delays(&logs);
    ensure!(
        delays
            .first()
            .is_some_and(|d| *d >= Duration::from_secs(15)),
        "a refused token was retried at once: {delays:?}"
    );
    Ok(())
}
