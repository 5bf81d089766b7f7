//! Settings that cannot work are refused when the binary starts, not found out call by
//! call: the relay exits non-zero naming the key, and `fingerprint` never makes a
//! state folder of its own.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use postern_tests::harness::{Bins, relay_cli_command};
use postern_tests::relay_support::relay_command;
use postern_tests::temp::TempDir;

fn bins() -> Bins {
    postern_tests::bins!()
}

/// Runs `command` to its end; a command still running after `limit` is killed and is
/// an error (a relay that accepted the config would serve forever).
fn run_for_at_most(mut command: Command, limit: Duration) -> Result<Output> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting the command")?;
    let deadline = Instant::now() + limit;
    while child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let output = child.wait_with_output()?;
            bail!(
                "still running after {limit:?}; stderr: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(child.wait_with_output()?)
}

#[test]
fn serve_refuses_a_zero_call_timeout_and_exits() -> Result<()> {
    let dir = TempDir::new("config-bounds")?;
    let config = dir.write_private(
        "relay.toml",
        &format!(
            "state_dir = {:?}\nssh_listen = \"127.0.0.1:0\"\napi_listen = \"127.0.0.1:0\"\ncall_timeout = \"0s\"\n",
            dir.path().join("relay").to_string_lossy()
        ),
    )?;
    let output = run_for_at_most(relay_command(&bins(), &config), Duration::from_secs(20))?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "the relay started: {stderr}");
    assert!(
        stderr.contains("call_timeout must be more than zero and at most 1day (it is \"0s\")"),
        "{stderr}"
    );
    Ok(())
}

#[test]
fn fingerprint_of_a_missing_state_folder_fails_and_creates_nothing() -> Result<()> {
    let dir = TempDir::new("config-bounds")?;
    let missing = dir.path().join("typo");
    let mut command = relay_cli_command(&bins(), &["fingerprint", "--state-dir"]);
    command.arg(&missing);
    let output = run_for_at_most(command, Duration::from_secs(20))?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "fingerprint succeeded: {stderr}");
    assert!(stderr.contains("no host key"), "{stderr}");
    assert!(
        !missing.exists(),
        "fingerprint created {}",
        missing.display()
    );

    // An existing folder without a key is no better: fingerprint makes no identity.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty)?;
    let mut command = relay_cli_command(&bins(), &["fingerprint", "--state-dir"]);
    command.arg(&empty);
    let output = run_for_at_most(command, Duration::from_secs(20))?;
    assert!(!output.status.success());
    assert_eq!(
        std::fs::read_dir(&empty)?.count(),
        0,
        "fingerprint wrote a file"
    );
    Ok(())
}
