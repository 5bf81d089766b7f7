//! `agent create`, `apikey create` and `agent rotate` show their secret once. When it
//! cannot be shown (a full disk, a reader that went away) nothing is created or rotated:
//! the command fails, a re-run with the same name works, and the old token still does.
//! Through the API, the same for a request given up on before its answer.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result};
use postern_tests::harness::{Bins, relay_cli, relay_cli_command, stderr};
use postern_tests::relay_support::{RelayWorld, SqliteLock, hold_sqlite_lock, send, ssh_login};
use reqwest::Method;

fn bins() -> Bins {
    postern_tests::bins!()
}

/// Where the CLI's stdout goes.
enum Out {
    DevFull,
    ClosedPipe,
}

impl Out {
    fn stdio(&self) -> Result<Stdio> {
        Ok(match self {
            Out::DevFull => std::fs::OpenOptions::new()
                .write(true)
                .open("/dev/full")?
                .into(),
            // The read end is gone before the CLI starts: its write gets EPIPE.
            Out::ClosedPipe => std::io::pipe()?.1.into(),
        })
    }
}

fn run_into(w: &RelayWorld, out: &Out, args: &[&str]) -> Result<(Option<i32>, String)> {
    let output = relay_cli_command(&w.bins, args)
        .arg("--state-dir")
        .arg(w.state_dir())
        .stdout(out.stdio()?)
        .output()?;
    Ok((output.status.code(), stderr(&output)))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_secret_that_cannot_be_shown_is_not_created() -> Result<()> {
    let w = RelayWorld::start(bins()).await?;
    let dir = w.state_dir().to_string_lossy().into_owned();
    for (n, out) in [Out::DevFull, Out::ClosedPipe].iter().enumerate() {
        for json in [false, true] {
            let agent = format!("site-{n}-{json}");
            let key = format!("pipe-{n}-{json}");
            let extra: &[&str] = if json { &["--json"] } else { &[] };
            for args in [["agent", "create", &agent], ["apikey", "create", &key]] {
                let all = [&args[..], extra].concat();
                let (code, stderr) = run_into(&w, out, &all)?;
                assert_eq!(code, Some(1), "{all:?}: {stderr}");
                assert!(
                    stderr.contains("could not be shown") && stderr.contains("nothing was created"),
                    "{all:?}: {stderr}"
                );
            }
            let agents = send(&w.admin, Method::GET, "/v1/agents", None).await?;
            assert!(!agents.json.to_string().contains(&agent), "{}", agents.json);
            let keys = send(&w.admin, Method::GET, "/v1/apikeys", None).await?;
            assert!(!keys.json.to_string().contains(&key), "{}", keys.json);
            // The same names again, shown this time.
            relay_cli(&w.bins, &["agent", "create", &agent, "--state-dir", &dir])?;
            relay_cli(&w.bins, &["apikey", "create", &key, "--state-dir", &dir])?;
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rotation_whose_token_cannot_be_shown_is_not_made() -> Result<()> {
    let w = RelayWorld::start(bins()).await?;
    let dir = w.state_dir().to_string_lossy().into_owned();
    let token = w.create_agent("site").await?;
    for out in [Out::DevFull, Out::ClosedPipe] {
        for extra in [
            &[][..],
            &["--json"],
            &["--grace", "5m"],
            &["--json", "--grace", "5m"],
        ] {
            let all = [&["agent", "rotate", "site"][..], extra].concat();
            let (code, stderr) = run_into(&w, &out, &all)?;
            assert_eq!(code, Some(1), "{all:?}: {stderr}");
            assert!(stderr.contains("keeps its old one"), "{all:?}: {stderr}");
            let (_session, took) = ssh_login(w.relay.ssh, &token).await?;
            assert!(took, "{all:?}: the old token stopped working");
            // With a grace the old token would log in either way: the store says whether
            // a rotation was kept.
            let store = postern_relay::store::SqliteStore::open_in(&w.state_dir())?;
            let record = postern_relay::store::Store::find_agent(&store, "site")?;
            assert!(
                record.is_some_and(|r| r.token_version == 1 && r.old_token_until.is_none()),
                "{all:?}: a rotation was kept"
            );
        }
    }
    // Shown, the rotation is made: the same login is refused now.
    let shown = relay_cli(
        &w.bins,
        &["agent", "rotate", "site", "--json", "--state-dir", &dir],
    )?;
    let json: serde_json::Value = serde_json::from_str(&shown)?;
    let new_token = json["token"].as_str().unwrap_or_default();
    assert!(ssh_login(w.relay.ssh, new_token).await?.1, "{shown}");
    assert!(
        !ssh_login(w.relay.ssh, &token).await?.1,
        "the old token still works"
    );
    Ok(())
}

/// Through the API, a request given up on before its secret was shown (here
/// `api_timeout`, while another process holds the store's write lock; a caller that
/// hangs up is the same) creates and rotates nothing once the write can land: the
/// secret would reach no one.
#[tokio::test(flavor = "multi_thread")]
async fn an_api_request_given_up_on_keeps_no_secret() -> Result<()> {
    let w = RelayWorld::start_configured(bins(), "api_timeout = \"300ms\"\n", &[]).await?;
    let token = w.create_agent("site").await?;
    // One at a time: while a write waits for the lock it holds the relay's store, so a
    // second request would be given up on at its API key check, before any write.
    let asks = [
        (
            "/v1/agents",
            Some(serde_json::json!({"name": "unseen"})),
            "made for a request given up on, and removed again what=\"agent\"",
        ),
        (
            "/v1/apikeys",
            Some(serde_json::json!({"name": "unseen-key"})),
            "made for a request given up on, and removed again what=\"API key\"",
        ),
        (
            "/v1/agents/site/token",
            None,
            "token rotation for a request given up on rolled back",
        ),
    ];
    for (path, body, undone) in asks {
        let lock = hold_sqlite_lock(
            &w.state_dir().join("relay.db"),
            SqliteLock::Write,
            false,
            None,
        )?;
        let answer = send(&w.admin, Method::POST, path, body).await?;
        assert_eq!(answer.status, 500, "{path}: given up on: {}", answer.json);
        assert!(
            answer.message().contains("nothing was created or changed"),
            "{path}: {}",
            answer.json
        );
        // Killed, the holder commits nothing; the relay's write goes ahead now, and is
        // undone as it lands.
        drop(lock);
        w.relay
            .logs
            .wait_for(undone, Duration::from_secs(10))
            .with_context(|| path.to_owned())?;
    }
    let store = postern_relay::store::SqliteStore::open_in(&w.state_dir())?;
    let agents = send(&w.admin, Method::GET, "/v1/agents", None).await?;
    let keys = send(&w.admin, Method::GET, "/v1/apikeys", None).await?;
    assert!(
        !agents.json.to_string().contains("unseen"),
        "{}",
        agents.json
    );
    assert!(
        !keys.json.to_string().contains("unseen-key"),
        "{}",
        keys.json
    );
    let site = postern_relay::store::Store::find_agent(&store, "site")?.context("site")?;
    assert_eq!(site.token_version, 1, "the rotation was kept");
    assert!(
        ssh_login(w.relay.ssh, &token).await?.1,
        "the old token stopped working"
    );
    for (path, body) in [
        ("/v1/agents", serde_json::json!({"name": "unseen"})),
        ("/v1/apikeys", serde_json::json!({"name": "unseen-key"})),
    ] {
        let again = send(&w.admin, Method::POST, path, Some(body)).await?;
        assert_eq!(again.status, 201, "{path}: {}", again.json);
    }
    Ok(())
}
