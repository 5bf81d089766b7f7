//! SIGKILL during a burst of agent creations and revocations through the API:
//! after a restart every acknowledged change is there and SQLite finds the file sound.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use postern_tests::harness::{Api, Bins, RelayProcess};
use postern_tests::relay_support::{RelayWorld, send};
use reqwest::Method;

fn bins() -> Bins {
    postern_tests::bins!()
}

/// What the API acknowledged before the kill.
#[derive(Default)]
struct Acked {
    created: HashMap<String, String>,
    revoked: HashSet<String>,
    /// Revocations sent but maybe not answered: either outcome is right.
    revoke_sent: HashSet<String>,
}

#[tokio::test(flavor = "multi_thread")]
async fn every_acknowledged_change_survives_sigkill() -> Result<()> {
    let mut w = RelayWorld::start(bins()).await?;
    let acked = Arc::new(Mutex::new(Acked::default()));
    let count = Arc::new(AtomicUsize::new(0));
    let dead = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + Duration::from_secs(30);
    // Four writers: each creates agents and revokes every other one it made.
    let mut writers = Vec::new();
    for writer in 0..4 {
        let api = w.admin.clone();
        let acked = acked.clone();
        let count = count.clone();
        let dead = dead.clone();
        writers.push(tokio::spawn(async move {
            for n in 0..200 {
                if dead.load(Ordering::SeqCst) || Instant::now() > deadline {
                    break;
                }
                let name = format!("w{writer}-a{n}");
                let Ok(made) = send(
                    &api,
                    Method::POST,
                    "/v1/agents",
                    Some(serde_json::json!({ "name": name })),
                )
                .await
                else {
                    break; // the relay is gone
                };
                if made.status != 201 {
                    break;
                }
                let token = made.json["token"].as_str().unwrap_or_default().to_owned();
                if let Ok(mut a) = acked.lock() {
                    a.created.insert(name.clone(), token);
                }
                count.fetch_add(1, Ordering::SeqCst);
                if n % 2 == 1 {
                    if let Ok(mut a) = acked.lock() {
                        a.revoke_sent.insert(name.clone());
                    }
                    let Ok(gone) =
                        send(&api, Method::DELETE, &format!("/v1/agents/{name}"), None).await
                    else {
                        break;
                    };
                    if gone.status == 204 {
                        if let Ok(mut a) = acked.lock() {
                            a.revoked.insert(name.clone());
                        }
                        count.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
        }));
    }
    // Kill in the middle of the burst, with requests under way.
    let started = Instant::now();
    while count.load(Ordering::SeqCst) < 60 {
        if started.elapsed() > Duration::from_secs(30) {
            bail!("the burst did not get going");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    w.relay.kill();
    dead.store(true, Ordering::SeqCst);
    for writer in writers {
        writer.await?;
    }

    // SQLite itself (python3's sqlite3, not our code) finds the file sound.
    let db = w.state_dir().join("relay.db");
    let check = std::process::Command::new("python3")
        .args([
            "-c",
            "import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute('pragma integrity_check').fetchone()[0])",
        ])
        .arg(&db)
        .output()
        .context("python3")?;
    assert_eq!(String::from_utf8_lossy(&check.stdout).trim(), "ok");

    let relay = RelayProcess::start(&w.bins, &w.state_dir(), "127.0.0.1:0", "127.0.0.1:0")?;
    let api = Api::new(relay.api_base(), w.admin.key.clone());
    let list = send(&api, Method::GET, "/v1/agents", None).await?;
    assert_eq!(list.status, 200);
    let present: HashSet<String> = list.json["agents"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|a| a["name"].as_str().map(str::to_owned))
        .collect();
    let acked = std::mem::take(&mut *acked.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
    assert!(
        acked.created.len() >= 40,
        "burst too small: {}",
        acked.created.len()
    );
    for name in acked.created.keys() {
        if acked.revoked.contains(name) {
            assert!(
                !present.contains(name),
                "{name} was revoked (acknowledged) but is back"
            );
        } else if !acked.revoke_sent.contains(name) {
            assert!(
                present.contains(name),
                "{name} was created (acknowledged) but is lost"
            );
        }
    }
    // And the tokens handed out before the kill still work.
    let (name, token) = acked
        .created
        .iter()
        .find(|(n, _)| !acked.revoke_sent.contains(*n))
        .context("a live agent")?;
    let dir = w.dir.path().to_owned();
    let config = postern_tests::harness::agent_config(
        relay.ssh,
        &relay.fingerprint,
        token,
        &format!(
            "\n[connections.orders]\nbase_uri = \"{}\"\n",
            w.internal.base_uri()
        ),
    );
    std::fs::write(dir.join("after-kill.toml"), config)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            dir.join("after-kill.toml"),
            std::fs::Permissions::from_mode(0o600),
        )?;
    }
    let _agent =
        postern_tests::harness::AgentProcess::start(&w.bins, &dir.join("after-kill.toml"))?;
    api.wait_online(name, true, Duration::from_secs(15)).await?;
    Ok(())
}
