//! A store the relay's user cannot write (a backup restored as root, say) stops `serve`
//! with what to fix, instead of a relay that starts and then fails every write, a revoke
//! included.

use std::os::unix::fs::{PermissionsExt, chown};
use std::process::{Command, Stdio};

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use postern_tests::pki::KillOnDrop;
use postern_tests::temp::TempDir;

const SERVICE: u32 = 65534;

#[test]
fn a_store_the_relay_cannot_write_stops_serve_saying_so() -> Result<()> {
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
    chown(&state, Some(SERVICE), Some(SERVICE))?;
    // The restored file: root's, readable by all, writable by root alone.
    let db = state.join("relay.db");
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644))?;

    let log = dir.path().join("serve.log");
    let mut serve = KillOnDrop(
        Command::new("setpriv")
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
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()?,
    );
    // Before the check the relay started and served, unable to write: bounded here.
    let started = Instant::now();
    let status = loop {
        if let Some(status) = serve.0.try_wait()? {
            break status;
        }
        if started.elapsed() > Duration::from_secs(15) {
            bail!(
                "serve still runs on a store it cannot write: {}",
                std::fs::read_to_string(&log)?
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let said = std::fs::read_to_string(&log)?;
    assert_eq!(status.code(), Some(1), "{said}");
    assert!(
        said.contains(&format!("{} cannot be written", db.display())) && said.contains("chown"),
        "{said}"
    );
    // Nor could it make the file private: said, not passed over.
    assert!(
        said.contains("cannot make the store file private"),
        "{said}"
    );
    Ok(())
}
