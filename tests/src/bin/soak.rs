//! The soak: a relay and several agents (real processes) under steady calls while agents
//! are killed and restarted and the relay is restarted, all at random and bounded; then
//! every call is accounted for and memory and file descriptors are checked against bounds.
//!
//!   cargo build --release -p postern-tests --bins && target/release/soak --seconds 600

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Parser;
use postern_tests::harness::{
    AgentProcess, Api, Bins, RelayProcess, agent_config, create_agent, create_api_key, open_fds,
    rss_kib,
};
use postern_tests::internal_server::{InternalServer, Verifier};
use postern_tests::temp::TempDir;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    about = "Soak postern: calls, agent kills and relay restarts, then accounts for everything"
)]
struct Args {
    /// How long the chaos lasts.
    #[arg(long, default_value_t = 600)]
    seconds: u64,
    /// Agents connected to the relay.
    #[arg(long, default_value_t = 8)]
    agents: usize,
    /// Callers running calls at the same time.
    #[arg(long, default_value_t = 16)]
    callers: usize,
    /// Seed of the chaos (the same seed makes the same choices).
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Relay RSS may grow by at most this many MiB from after warm-up to the end.
    #[arg(long, default_value_t = 64)]
    max_rss_growth_mib: u64,
    /// The relay binary (default: e2e-postern-relay beside this program).
    #[arg(long)]
    relay_bin: Option<PathBuf>,
    /// The agent binary (default: e2e-postern beside this program).
    #[arg(long)]
    agent_bin: Option<PathBuf>,
}

/// What one call ended as.
#[derive(Default)]
struct Tally {
    ok: u64,
    /// Refusals with a stable error code, by code (agent offline during a kill, …).
    clear: BTreeMap<String, u64>,
    /// The relay itself was down or going down (being restarted): refused or dropped
    /// connections while a restart is under way.
    relay_down: u64,
    /// Anything else: a 5xx without an error code, a hang past the bound, a broken body.
    other: Vec<String>,
}

/// An error with its causes, one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

/// xorshift64*: the chaos is repeatable from its seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n.max(1)
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("soak: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(soak(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("soak: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A call to `agent`'s connection `o`, with reqwest's own error (to tell a refused connect).
async fn send(api: &Api, agent: &str) -> Result<reqwest::Response, reqwest::Error> {
    api.http
        .get(format!(
            "{}/v1/agents/{agent}/connections/o/http/soak",
            api.base
        ))
        .bearer_auth(&api.key)
        .send()
        .await
}

async fn one_call(api: &Api, agent: &str) -> Result<u16, reqwest::Error> {
    let response = send(api, agent).await?;
    let status = response.status().as_u16();
    // The whole body, so a cut-off answer counts as a failure.
    response.bytes().await?;
    Ok(status)
}

async fn soak(args: Args) -> Result<bool> {
    let bins = Bins::beside_this_program(args.relay_bin.clone(), args.agent_bin.clone())?;
    let dir = TempDir::new("soak")?;
    let state = dir.path().join("relay");
    let mut relay = RelayProcess::start(&bins, &state, "127.0.0.1:0", "127.0.0.1:0")?;
    let (ssh, api_addr) = (relay.ssh.to_string(), relay.api.to_string());
    let api = Api::new(relay.api_base(), create_api_key(&bins, &state, "soak")?);
    let internal = InternalServer::start(Verifier::None, "").await?;
    let connections = format!(
        "[connections.o]\nbase_uri = \"{}\"\ntimeout = \"10s\"\n",
        internal.base_uri()
    );
    let mut configs = Vec::new();
    for i in 0..args.agents {
        let (_, token) = create_agent(&bins, &state, &format!("a{i}"))?;
        configs.push(dir.write_private(
            &format!("agent-{i}.toml"),
            &agent_config(relay.ssh, &relay.fingerprint, &token, &connections),
        )?);
    }
    let mut agents: Vec<Option<AgentProcess>> = configs
        .iter()
        .map(|c| AgentProcess::start(&bins, c).map(Some))
        .collect::<Result<_>>()?;
    for i in 0..args.agents {
        api.wait_online(&format!("a{i}"), true, Duration::from_secs(30))
            .await?;
    }

    // Callers: each call is counted exactly once, by what it ended as.
    let tally = Arc::new(Mutex::new(Tally::default()));
    let stop = CancellationToken::new();
    let restarting = Arc::new(AtomicBool::new(false));
    let mut callers = tokio::task::JoinSet::new();
    for c in 0..args.callers {
        let (api, tally, stop, agents) =
            (api.clone(), tally.clone(), stop.clone(), args.agents as u64);
        let restarting = restarting.clone();
        callers.spawn(async move {
            let mut rng = Rng(0x5eed ^ ((c as u64 + 1) * 0x9e37_79b9));
            while !stop.is_cancelled() {
                let agent = format!("a{}", rng.below(agents));
                let call = async {
                    let response = send(&api, &agent).await?;
                    let status = response.status().as_u16();
                    let code = response
                        .headers()
                        .get("x-postern-error")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                    response.bytes().await?;
                    Ok::<_, reqwest::Error>((status, code))
                };
                let outcome = tokio::time::timeout(Duration::from_secs(30), call).await;
                let relay_restarting = restarting.load(Ordering::SeqCst);
                let mut t = tally.lock().unwrap_or_else(|p| p.into_inner());
                match outcome {
                    Ok(Ok((200, _))) => t.ok += 1,
                    Ok(Ok((_, Some(code)))) => *t.clear.entry(code).or_default() += 1,
                    Ok(Ok((status, None))) => t
                        .other
                        .push(format!("{agent}: HTTP {status} without an error code")),
                    Ok(Err(e)) if e.is_connect() || relay_restarting => t.relay_down += 1,
                    Ok(Err(e)) => t.other.push(format!("{agent}: {}", chain(&e))),
                    Err(_) => t.other.push(format!("{agent}: no answer within 30 s")),
                }
            }
        });
    }

    // Warm-up, then the baseline.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let base_rss = rss_kib(relay.pid())?;
    let base_fds = open_fds(relay.pid())?;
    let mut max_rss = base_rss;
    let mut rng = Rng(args.seed.max(1));
    let (mut relay_restarts, mut agent_kills) = (0u64, 0u64);
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(1000 + rng.below(3000))).await;
        max_rss = max_rss.max(rss_kib(relay.pid()).unwrap_or(0));
        if rng.below(5) == 0 {
            // The relay restarts on the same ports; agents and callers find it again.
            restarting.store(true, Ordering::SeqCst);
            relay.terminate()?;
            drop(relay);
            relay = RelayProcess::start(&bins, &state, &ssh, &api_addr)?;
            relay_restarts += 1;
            // Pooled connections to the old relay fail on their next use; give them that.
            tokio::time::sleep(Duration::from_millis(500)).await;
            restarting.store(false, Ordering::SeqCst);
        } else {
            // SIGKILL (on drop), a moment offline, then the agent comes back.
            let i = rng.below(args.agents as u64) as usize;
            drop(agents[i].take());
            tokio::time::sleep(Duration::from_millis(rng.below(2000))).await;
            agents[i] = Some(AgentProcess::start(&bins, &configs[i])?);
            agent_kills += 1;
        }
    }
    // Calm: everyone back, then a last round that must all succeed.
    for i in 0..args.agents {
        api.wait_online(&format!("a{i}"), true, Duration::from_secs(30))
            .await?;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.cancel();
    while callers.join_next().await.is_some() {}
    let mut final_failures = Vec::new();
    for i in 0..args.agents {
        match one_call(&api, &format!("a{i}")).await {
            Ok(200) => {}
            other => final_failures.push(format!("a{i}: {other:?}")),
        }
    }
    let end_rss = rss_kib(relay.pid())?;
    let end_fds = open_fds(relay.pid())?;
    // The last relay's end state against the first one's warm baseline: a leak that
    // survives restarts (in the store, say) or grows within one relay's life shows here.
    let rss_growth_mib = end_rss.saturating_sub(base_rss) / 1024;
    let t = tally.lock().unwrap_or_else(|p| p.into_inner());
    let clear: u64 = t.clear.values().sum();
    let total = t.ok + clear + t.relay_down + t.other.len() as u64;
    let checks = [
        (
            "every call accounted for, none unexplained",
            t.other.is_empty(),
        ),
        (
            "every agent serves after the chaos",
            final_failures.is_empty(),
        ),
        (
            "relay RSS growth within bound",
            rss_growth_mib <= args.max_rss_growth_mib,
        ),
        ("relay fds back to baseline (+16)", end_fds <= base_fds + 16),
    ];
    println!(
        "postern soak: {} s, {} agents, {} callers, seed {}",
        args.seconds, args.agents, args.callers, args.seed
    );
    println!("| measure | value |\n|---|---|");
    println!("| calls | {total} |");
    println!("| answered 200 | {} |", t.ok);
    for (code, n) in &t.clear {
        println!("| refused with `{code}` | {n} |");
    }
    println!("| relay down (being restarted) | {} |", t.relay_down);
    println!("| unexplained | {} |", t.other.len());
    println!("| relay restarts / agent kills | {relay_restarts} / {agent_kills} |");
    println!(
        "| relay RSS start / max / end (MiB) | {} / {} / {} |",
        base_rss / 1024,
        max_rss / 1024,
        end_rss / 1024
    );
    println!("| relay fds start / end | {base_fds} / {end_fds} |");
    let mut passed = true;
    for (name, ok) in checks {
        println!("| {name} | {} |", if ok { "PASS" } else { "FAIL" });
        passed &= ok;
    }
    for line in t.other.iter().take(10).chain(final_failures.iter()) {
        println!("  {line}");
    }
    Ok(passed)
}
