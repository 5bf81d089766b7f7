//! The relay's store on a full disk, then on a read-only one: changes are refused with
//! 503 `store_unavailable` and the reason, calls through connected agents keep working,
//! and once the disk is fixed changes work again. Needs root (a small tmpfs of its own).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Result, bail};
use postern_tests::harness::{
    AgentProcess, Api, RelayProcess, agent_config, create_agent, create_api_key,
};
use postern_tests::internal_server::{InternalServer, Verifier};
use postern_tests::relay_support::{Answer, send};
use postern_tests::temp::TempDir;
use reqwest::Method;

/// A tmpfs of `size` on `path`, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Result<Self> {
        std::fs::create_dir_all(path)?;
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(path)
            .status()?;
        if !status.success() {
            bail!("mount tmpfs on {} failed", path.display());
        }
        Ok(Self(path.to_owned()))
    }

    fn remount(&self, mode: &str) -> Result<()> {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,{mode}")])
            .arg(&self.0)
            .status()?;
        if !status.success() {
            bail!("remount {mode} failed");
        }
        Ok(())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Why this machine cannot run the test, if it cannot.
fn cannot_mount(dir: &TempDir) -> Option<String> {
    let probe = dir.path().join("probe");
    match Tmpfs::mount(&probe, "64k") {
        Ok(_) => None,
        Err(e) => Some(format!("cannot mount a tmpfs here ({e}); needs root")),
    }
}

async fn create(api: &Api, name: &str) -> Result<Answer> {
    send(
        api,
        Method::POST,
        "/v1/agents",
        Some(serde_json::json!({ "name": name })),
    )
    .await
}

fn assert_refused(answer: &Answer, reason: &str) {
    assert_eq!(answer.status, 503, "{}", answer.json);
    assert_eq!(answer.code(), "store_unavailable");
    let message = answer.json["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(reason) && message.contains("Nothing was changed"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_or_read_only_store_refuses_changes_and_calls_keep_working() -> Result<()> {
    let dir = TempDir::new("store-faults")?;
    if let Some(why) = cannot_mount(&dir) {
        println!("SKIPPED store fault test: {why}");
        return Ok(());
    }
    let bins = postern_tests::bins!();
    let state = dir.path().join("relay");
    // Dropped last: the relay is gone before its disk is unmounted.
    let disk = Tmpfs::mount(&state, "4m")?;
    let relay = RelayProcess::start(&bins, &state, "127.0.0.1:0", "127.0.0.1:0")?;
    let (_, token) = create_agent(&bins, &state, "a1")?;
    let api = Api::new(relay.api_base(), create_api_key(&bins, &state, "k")?);
    let internal = InternalServer::start(Verifier::None, "").await?;
    let connections = format!("[connections.o]\nbase_uri = \"{}\"\n", internal.base_uri());
    let config = dir.write_private(
        "agent.toml",
        &agent_config(relay.ssh, &relay.fingerprint, &token, &connections),
    )?;
    let _agent = AgentProcess::start(&bins, &config)?;
    api.wait_online("a1", true, Duration::from_secs(15)).await?;
    assert_eq!(create(&api, "before").await?.status, 201);

    // Full: fill every byte the tmpfs has (bounded by its 4 MiB).
    let filler = state.join("filler");
    let mut file = std::fs::File::create(&filler)?;
    let chunk = vec![0u8; 16 * 1024];
    let mut written = 0usize;
    while file
        .write_all(&chunk)
        .and_then(|()| file.sync_all())
        .is_ok()
    {
        written += chunk.len();
        if written > 8 * 1024 * 1024 {
            bail!("the 4 MiB tmpfs never filled up");
        }
    }
    drop(file);
    assert_refused(&create(&api, "while-full").await?, "disk is full");
    relay
        .logs
        .wait_for("the store cannot be changed", Duration::from_secs(5))?;
    assert_eq!(api.call("a1", "o", "/during-full").await?.status(), 200);
    let listed = send(&api, Method::GET, "/v1/agents", None).await?;
    assert_eq!(listed.status, 200, "reads still work: {}", listed.json);
    std::fs::remove_file(&filler)?;
    assert_eq!(create(&api, "after-full").await?.status, 201);

    // Read-only: a disk cannot turn read-only under open files by `mount`, so the relay
    // restarts on a store that was read-only from the start (the agent comes back).
    // As a store made before the retired-tokens table, which a relay that can only read
    // it cannot add: it must start all the same (it refused to, for a moment, 2026-12-06).
    // Dropped while the relay holds the store open, so closing this connection leaves
    // the -wal and -shm files that a read-only WAL store needs.
    rusqlite::Connection::open(state.join("relay.db"))?
        .execute_batch("DROP TABLE retired_tokens")?;
    drop(relay);
    disk.remount("ro")?;
    let relay = RelayProcess::start(&bins, &state, "127.0.0.1:0", "127.0.0.1:0")?;
    let api = Api::new(relay.api_base(), api.key.clone());
    let _agent = {
        let config = dir.write_private(
            "agent.toml",
            &agent_config(relay.ssh, &relay.fingerprint, &token, &connections),
        )?;
        AgentProcess::start(&bins, &config)?
    };
    api.wait_online("a1", true, Duration::from_secs(15)).await?;
    assert_refused(&create(&api, "while-ro").await?, "read-only");
    let revoke = send(&api, Method::DELETE, "/v1/agents/before", None).await?;
    assert_refused(&revoke, "read-only");
    // The lock file left there is still locked, opened read-only: a second relay on the
    // read-only folder stops at once.
    let second = postern_tests::harness::relay_cli_within(
        &bins,
        &[
            "serve",
            "--state-dir",
            &state.to_string_lossy(),
            "--ssh-listen",
            "127.0.0.1:0",
            "--api-listen",
            "127.0.0.1:0",
        ],
        Duration::from_secs(10),
    )?;
    assert_eq!(second.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&second.stderr).contains("another `postern-relay serve` uses"),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    assert_eq!(api.call("a1", "o", "/during-ro").await?.status(), 200);
    drop(relay);
    disk.remount("rw")?;
    let relay = RelayProcess::start(&bins, &state, "127.0.0.1:0", "127.0.0.1:0")?;
    let api = Api::new(relay.api_base(), api.key.clone());
    assert_eq!(create(&api, "after-ro").await?.status, 201);
    let names: Vec<String> = send(&api, Method::GET, "/v1/agents", None).await?.json["agents"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    for name in ["a1", "before", "after-full", "after-ro"] {
        assert!(names.iter().any(|n| n == name), "{name} missing: {names:?}");
    }
    assert!(
        !names.iter().any(|n| n.starts_with("while")),
        "a refused change left a trace: {names:?}"
    );
    Ok(())
}
