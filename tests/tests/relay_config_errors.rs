//! The relay's command line says each cause of a failure once: a missing config file's
//! OS error, a config's TOML error block, SQLite's complaint about a store; and which
//! of its two addresses it could not listen on.

use anyhow::Result;
use postern_tests::harness::{Bins, RelayProcess, create_agent, relay_cli_output, stderr};
use postern_tests::temp::TempDir;

fn bins() -> Bins {
    postern_tests::bins!()
}

#[test]
fn each_cause_is_said_once() -> Result<()> {
    let dir = TempDir::new("relay-causes")?;
    let missing = dir.path().join("nonexist.toml");
    let unknown = dir.write_private("unknown.toml", "bogus_key = 1\n")?;
    let state = dir.path().join("garbage");
    std::fs::create_dir_all(&state)?;
    std::fs::write(state.join("relay.db"), [0x5a_u8; 4096])?;
    let (missing, unknown, state) = (
        missing.to_string_lossy(),
        unknown.to_string_lossy(),
        state.to_string_lossy(),
    );
    for (args, once) in [
        (
            &["serve", "--config", &missing][..],
            &["No such file or directory", &*missing][..],
        ),
        (
            &["serve", "--config", &unknown],
            &["TOML parse error", "unknown field `bogus_key`", &*unknown],
        ),
        (
            &["agent", "list", "--state-dir", &state],
            &["file is not a database"],
        ),
    ] {
        let out = relay_cli_output(&bins(), args)?;
        let said = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {said}");
        for text in once {
            assert_eq!(said.matches(text).count(), 1, "{text:?} in {said}");
        }
    }
    Ok(())
}

#[test]
fn a_taken_address_is_named_with_its_setting() -> Result<()> {
    let dir = TempDir::new("relay-taken")?;
    let held = std::net::TcpListener::bind("127.0.0.1:0")?;
    let taken = held.local_addr()?;
    for (setting, other) in [("ssh_listen", "api_listen"), ("api_listen", "ssh_listen")] {
        let config = dir.write_private(
            &format!("{setting}.toml"),
            &format!(
                "state_dir = {:?}\n{setting} = \"{taken}\"\n{other} = \"127.0.0.1:0\"\n",
                dir.path().join("state").to_string_lossy()
            ),
        )?;
        let out = relay_cli_output(&bins(), &["serve", "--config", &config.to_string_lossy()])?;
        let said = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{said}");
        assert!(
            said.contains(&format!("{setting} {taken}: ")) && said.contains("in use"),
            "{said}"
        );
    }
    Ok(())
}

/// `serve` on `state`, loopback ports of its choosing, for a start expected to fail.
fn serve_within_10s(state: &str) -> Result<std::process::Output> {
    postern_tests::harness::relay_cli_within(
        &bins(),
        &[
            "serve",
            "--state-dir",
            state,
            "--ssh-listen",
            "127.0.0.1:0",
            "--api-listen",
            "127.0.0.1:0",
        ],
        std::time::Duration::from_secs(10),
    )
}

/// A second `serve` on a state folder a relay already serves from stops at once, saying
/// so, rather than split the agents between two relays that share one store.
#[test]
fn a_second_relay_on_the_same_state_folder_is_refused() -> Result<()> {
    let dir = TempDir::new("relay-state-lock")?;
    let first = postern_tests::relay_support::configured_relay(&bins(), dir.path(), "", &[])?;
    let state = first.state_dir.to_string_lossy().into_owned();
    let out = serve_within_10s(&state)?;
    assert_eq!(out.status.code(), Some(1));
    let said = stderr(&out);
    assert!(
        said.contains(&format!(
            "another `postern-relay serve` uses the state folder {state}"
        )),
        "{said}"
    );
    // The first is untouched: it still answers.
    use std::io::{Read, Write};
    let mut health = std::net::TcpStream::connect(first.api)?;
    health.write_all(b"GET /healthz HTTP/1.1\r\nhost: relay\r\nconnection: close\r\n\r\n")?;
    let mut answer = String::new();
    health.read_to_string(&mut answer)?;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    Ok(())
}

/// A host key made beside agents already enrolled (the store restored or moved without
/// its key) is said loudly: each agent that pinned the old key refuses the relay. Before
/// 2026-12-07 `serve` made the new key without a word. A first start says nothing.
#[test]
fn a_new_host_key_beside_enrolled_agents_is_said() -> Result<()> {
    const SAID: &str =
        "the host key was missing and a new one was made, but this store has agents enrolled";
    let dir = TempDir::new("relay-new-key")?;
    let state = dir.path().join("state");
    let mut first = RelayProcess::start(&bins(), &state, "127.0.0.1:0", "127.0.0.1:0")?;
    create_agent(&bins(), &state, "pinned")?;
    first.terminate()?;
    assert!(!first.logs.contains(SAID), "{}", first.logs.text());
    std::fs::remove_file(state.join("ssh_host_ed25519_key"))?;
    let mut second = RelayProcess::start(&bins(), &state, "127.0.0.1:0", "127.0.0.1:0")?;
    second
        .logs
        .wait_for(SAID, std::time::Duration::from_secs(10))?;
    assert_ne!(second.fingerprint, first.fingerprint);
    assert!(
        second.logs.contains(&second.fingerprint),
        "the new fingerprint is named"
    );
    second.terminate()?;
    Ok(())
}

/// A store a newer relay wrote (a package rolled back) is refused by `serve` and by the
/// CLI, which would otherwise misread it, and left as it was.
#[test]
fn a_store_a_newer_relay_wrote_is_refused() -> Result<()> {
    use postern_relay::store::SCHEMA_VERSION;
    let dir = TempDir::new("relay-store-newer")?;
    let state = dir.path().join("state");
    drop(postern_relay::store::SqliteStore::open_in(&state)?);
    let db = state.join("relay.db");
    let newer = SCHEMA_VERSION + 1;
    rusqlite::Connection::open(&db)?.pragma_update(None, "user_version", newer)?;
    let state = state.to_string_lossy().into_owned();
    let serve = serve_within_10s(&state)?;
    let list = relay_cli_output(&bins(), &["agent", "list", "--state-dir", &state])?;
    for out in [serve, list] {
        assert_eq!(out.status.code(), Some(1));
        let said = stderr(&out);
        assert!(
            said.contains(&format!(
                "written by a newer postern-relay (its schema is version {newer}; this one knows up to {SCHEMA_VERSION})"
            )),
            "{said}"
        );
    }
    let version: i64 =
        rusqlite::Connection::open(&db)?.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    assert_eq!(version, newer);
    Ok(())
}
