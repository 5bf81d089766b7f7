//! Scenario 3, many agents: N idle agents on one relay (one swarm process) — relay memory
//! per agent, time to connect them all, a call's latency among them — beside sshd's per client.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use postern_tests::harness::{Api, rss_kib};
use tokio_util::sync::CancellationToken;

use crate::openssh::ssh_reverse;
use crate::postern::{enrol, swarm};
use crate::procs::free_port;
use crate::table::{Row, Table, median};
use crate::{Args, World};

/// Calls made and dropped before each measurement: the first calls after a restart or
/// a swarm's arrival open channels and fill caches.
const WARM_UP_CALLS: usize = 50;
/// Calls each p50 is taken over: sub-millisecond calls, so a few hundred take well under
/// a second and one scheduling hiccup moves a small sample's median.
const MEASURED_CALLS: usize = 1000;

async fn call_p50_ms(api: &Api, agent: &str, connection: &str) -> Result<f64> {
    let mut times = Vec::new();
    for i in 0..WARM_UP_CALLS + MEASURED_CALLS {
        let started = Instant::now();
        let r = api.call(agent, connection, "/small").await?;
        if r.status() != 200 {
            bail!("call to {agent}: {}", r.status());
        }
        r.bytes().await?;
        if i >= WARM_UP_CALLS {
            times.push(started.elapsed().as_secs_f64() * 1000.0);
        }
    }
    Ok(median(times))
}

fn open_fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64)
}

pub async fn run(w: &mut World, args: &Args, rows: &mut Table) -> Result<()> {
    let mut enrolled = 1u64;
    for &n in &args.agents {
        // Enrolled straight into the store while the relay is down.
        w.postern.relay.terminate()?;
        let tokens = enrol(&w.postern.state, enrolled, n)?;
        enrolled += n;
        w.postern.relay = w.start_relay()?;
        let api = &w.postern.api;
        api.wait_online("a0", true, Duration::from_secs(30)).await?;
        // The reference: the same relay, warmed up alike, before the swarm connects.
        let one_p50 = call_p50_ms(api, "a0", "none").await?;
        let relay = &w.postern.relay;
        let before = rss_kib(relay.pid())?;
        let swarm_stop = CancellationToken::new();
        let started = Instant::now();
        let tasks = swarm(relay, &tokens, w.dir.path(), &swarm_stop).await?;
        let limit = Duration::from_secs(120);
        while open_fds(relay.pid()) < n + 10 {
            if started.elapsed() > limit {
                bail!("{n} agents not connected within {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Sessions are up once their hello is registered; wait for the last one to be listed.
        api.wait_online(&format!("a{}", enrolled - 1), true, limit)
            .await?;
        let connect_s = started.elapsed().as_secs_f64();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let after = rss_kib(relay.pid())?;
        let p50 = call_p50_ms(api, "a0", "none").await?;
        let scenario = format!("{n} idle agents");
        let per_agent = after.saturating_sub(before) as f64 / n as f64;
        rows.push(Row::postern(scenario.clone(), "relay KiB/agent", per_agent));
        rows.push(Row::postern(
            scenario.clone(),
            "s to connect all",
            connect_s,
        ));
        rows.push(Row {
            scenario,
            measure: "call p50 ms (vs 1 agent)",
            postern: Some(p50),
            openssh: None,
            direct: Some(one_p50),
        });
        swarm_stop.cancel();
        for t in tasks {
            let _ = t.await;
        }
    }
    // sshd's memory per connected `ssh -R` client.
    let sshd_pss = || -> f64 {
        let out = Command::new("sh").arg("-c").arg("for p in $(pgrep -f 'sshd: root'); do awk '/^Pss:/{s+=$2} END{print s}' /proc/$p/smaps_rollup; done | awk '{t+=$1} END{print t+0}'").output();
        out.ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(f64::NAN)
    };
    let base = sshd_pss();
    let mut clients = Vec::new();
    for _ in 0..args.ssh_clients {
        clients.push(ssh_reverse(&w.sshd, free_port()?, w.fast.port())?);
    }
    let per_client = (sshd_pss() - base) / args.ssh_clients.max(1) as f64;
    rows.push(Row {
        scenario: format!("{} ssh -R clients", args.ssh_clients),
        measure: "sshd KiB/client (PSS)",
        postern: None,
        openssh: Some(per_client),
        direct: None,
    });
    Ok(())
}
