//! A store the relay's user cannot write (a backup restored as root, say) is said at
//! once when `serve` starts, not first at a revoke: calls and reads go on (as on a disk
//! mounted read-only, Under faults) and every change is refused with what is wrong.

use std::os::unix::fs::{PermissionsExt, chown};
use std::process::{Command, Stdio};

use anyhow::Result;
use postern_tests::harness::{Api, RelayProcess, create_api_key};
use postern_tests::relay_support::send;
use postern_tests::temp::TempDir;
use reqwest::Method;

const SERVICE: u32 = 65534;

#[tokio::test(flavor = "multi_thread")]
async fn a_store_the_relay_cannot_write_is_said_at_start() -> Result<()> {
    if !postern_tests::harness::is_root() {
        // Only root can make a file another user cannot write, and run as that user.
        println!("SKIPPED read-only store test: needs root");
        return Ok(());
    }
    let bins = postern_tests::bins!();
    let dir = TempDir::new("relay-store-access")?;
    // Reachable by the service user, unlike the test's own 0700 folder.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
    let relay = dir.path().join("postern-relay");
    std::fs::copy(&bins.relay, &relay)?;
    let state = dir.path().join("state");
    drop(postern_relay::store::SqliteStore::open_in(&state)?);
    let key = create_api_key(&bins, &state, "admin")?;
    chown(&state, Some(SERVICE), Some(SERVICE))?;
    // The restored file: root's, readable by all, writable by root alone.
    let db = state.join("relay.db");
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644))?;

    let mut serve = Command::new("setpriv");
    serve
        .args([
            "--reuid",
            "65534",
            "--regid",
            "65534",
            "--clear-groups",
            "--",
        ])
        .arg(&relay)
        .args(["serve", "--state-dir"])
        .arg(&state)
        .args(["--ssh-listen", "127.0.0.1:0", "--api-listen", "127.0.0.1:0"])
        .stdin(Stdio::null());
    let served = RelayProcess::spawn(serve, &state)?;
    let said = served.logs.text();
    assert!(
        said.contains("the store is read-only to this user") && said.contains("chown"),
        "{said}"
    );
    let api = Api::new(served.api_base(), key);
    assert_eq!(
        send(&api, Method::GET, "/v1/agents", None).await?.status,
        200
    );
    let refused = send(
        &api,
        Method::POST,
        "/v1/agents",
        Some(serde_json::json!({ "name": "new" })),
    )
    .await?;
    assert_eq!(refused.status, 503, "{}", refused.json);
    assert_eq!(refused.code(), "store_unavailable", "{}", refused.json);
    Ok(())
}
