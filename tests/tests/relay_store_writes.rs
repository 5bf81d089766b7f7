//! The relay's writes while another process holds SQLite's write lock (the CLI, here
//! python3's sqlite3): a write the API gave up on still takes effect in full, a
//! read-then-write waits for the lock instead of failing, and the database files stay
//! private whatever the umask.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use postern_tests::harness::{Bins, RelayProcess};
use postern_tests::pki::KillOnDrop;
use postern_tests::relay_support::{RelayWorld, SqliteLock, eventually, hold_sqlite_lock, send};
use postern_tests::temp::TempDir;
use reqwest::Method;

fn bins() -> Bins {
    postern_tests::bins!()
}

fn wait_exit(mut child: KillOnDrop) -> Result<()> {
    let status = child.0.wait()?;
    if !status.success() {
        bail!("the lock holder failed: {status}");
    }
    Ok(())
}

/// A key revoked by a request the relay gave up on (`api_timeout` ran out while the
/// write waited for the lock) stops working once the write lands: the relay's cache of
/// keys it has seen must not outlive it. The lock holder changes nothing, so the
/// revocation watch (which follows other processes' changes) has nothing to see.
#[tokio::test(flavor = "multi_thread")]
async fn a_revoke_the_api_gave_up_on_still_ends_the_key() -> Result<()> {
    let w = RelayWorld::start_configured(bins(), "api_timeout = \"300ms\"\n", &[]).await?;
    let created = send(
        &w.admin,
        Method::POST,
        "/v1/apikeys",
        Some(serde_json::json!({"name": "runner", "scope": "call"})),
    )
    .await?;
    assert_eq!(created.status, 201, "{}", created.json);
    let runner = w.api(created.json["key"].as_str().unwrap_or_default());
    // Seen once, so the relay holds it in its cache.
    assert_eq!(
        send(&runner, Method::GET, "/v1/agents", None).await?.status,
        200
    );

    let lock = hold_sqlite_lock(
        &w.state_dir().join("relay.db"),
        SqliteLock::Write,
        false,
        Some(Duration::from_secs(60)),
    )?;
    let revoke = send(&w.admin, Method::DELETE, "/v1/apikeys/runner", None).await?;
    assert_eq!(revoke.status, 500, "given up on: {}", revoke.json);
    assert!(
        revoke.message().contains("the revoke goes on"),
        "{}",
        revoke.json
    );
    // Killed, the holder commits nothing: the store's change marker stays as it was.
    drop(lock);

    // Once the store holds the revoke (the list is read from the store), the very next
    // request with the key is refused: no wait for the watch of other processes' changes.
    eventually("the revoke is stored", Duration::from_secs(3), || async {
        send(&w.admin, Method::GET, "/v1/apikeys", None)
            .await
            .is_ok_and(|a| a.status == 200 && !a.json.to_string().contains("runner"))
    })
    .await?;
    let after = send(&runner, Method::GET, "/v1/agents", None).await?;
    assert_eq!(
        after.status, 401,
        "the revoked key still works: {}",
        after.json
    );
    Ok(())
}

/// A token rotation (read the agent, then write it) while another process writes waits
/// for the lock and succeeds, instead of failing at once with a stale snapshot.
#[tokio::test(flavor = "multi_thread")]
async fn a_rotation_waits_for_another_writer() -> Result<()> {
    let w = RelayWorld::start(bins()).await?;
    w.create_agent("warehouse-1").await?;
    let lock = hold_sqlite_lock(
        &w.state_dir().join("relay.db"),
        SqliteLock::Write,
        true,
        // Counted from before `asked` (the lock is reported once held): 1 s for that on
        // a busy machine, and released well within the store's 5 s busy timeout.
        Some(Duration::from_millis(2500)),
    )?;
    let asked = std::time::Instant::now();
    let rotated = send(
        &w.admin,
        Method::POST,
        "/v1/agents/warehouse-1/token",
        Some(serde_json::json!({})),
    )
    .await?;
    let took = asked.elapsed();
    wait_exit(lock)?;
    assert_eq!(rotated.status, 200, "{}", rotated.json);
    assert!(
        took >= Duration::from_millis(1500),
        "answered in {took:?}: it did not wait"
    );
    assert!(
        rotated.json["token"]
            .as_str()
            .is_some_and(|t| t.starts_with("pst_"))
    );
    Ok(())
}

/// `relay.db` and SQLite's `-wal` and `-shm` beside it hold key and token hashes: 0600
/// even when the relay runs under a umask that would make them world-readable.
#[tokio::test(flavor = "multi_thread")]
async fn the_database_files_are_private_under_a_loose_umask() -> Result<()> {
    let bins = bins();
    let dir = TempDir::new("relay-umask")?;
    let state = dir.path().join("relay");
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg("umask 022 && exec \"$0\" serve --state-dir \"$1\" --ssh-listen 127.0.0.1:0 --api-listen 127.0.0.1:0")
        .arg(&bins.relay)
        .arg(&state);
    let _relay = RelayProcess::spawn(command, &state)?;
    let db = state.join("relay.db");
    for suffix in ["", "-wal", "-shm"] {
        let mut path = db.clone().into_os_string();
        path.push(suffix);
        let mode = std::fs::metadata(&path)
            .with_context(|| format!("{path:?}"))?
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{path:?} has mode {mode:o}");
    }
    Ok(())
}
