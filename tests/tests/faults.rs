//! Faults in the middle of work: the relay or the agent dies under load, the
//! internal server breaks mid-answer. Every caller gets an answer; nothing is left behind.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use postern_agent::backoff::CAP;
use postern_tests::harness::{
    AgentProcess, Api, Bins, RelayProcess, Tunnel, open_fds, reconnect_delays,
};
use postern_tests::internal_server::{InternalServer, Verifier};
use postern_tests::temp::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn bins() -> Bins {
    postern_tests::bins!()
}

struct World {
    dir: TempDir,
    bins: Bins,
    relay: RelayProcess,
    agent: AgentProcess,
    api: Api,
    config: std::path::PathBuf,
}

async fn world(connections: &str) -> Result<World> {
    let dir = TempDir::new("faults")?;
    let bins = bins();
    let Tunnel {
        relay,
        agent,
        api,
        config,
    } = Tunnel::start(&bins, &dir, connections).await?;
    Ok(World {
        dir,
        bins,
        relay,
        agent,
        api,
        config,
    })
}

fn threads(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .context("no Threads line")
}

#[tokio::test(flavor = "multi_thread")]
async fn relay_killed_during_100_concurrent_calls() -> Result<()> {
    let internal = InternalServer::start(Verifier::None, "").await?;
    let mut w = world(&format!(
        "[connections.orders]\nbase_uri = \"{}\"\ntimeout = \"10s\"\nmax_concurrent_calls = 200\n",
        internal.base_uri()
    ))
    .await?;
    let agent_fds = open_fds(w.agent.pid())?;
    // Slow calls (3 s each at the internal server), so all 100 are in flight at the kill.
    let mut calls = Vec::new();
    for i in 0..100 {
        let api = w.api.clone();
        calls.push(tokio::spawn(async move {
            let started = Instant::now();
            let result = tokio::time::timeout(
                Duration::from_secs(15),
                api.call("a1", "orders", &format!("/slow?i={i}")),
            )
            .await;
            (started.elapsed(), result)
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while internal.requests().len() < 100 {
        if Instant::now() > deadline {
            bail!(
                "only {} calls reached the internal server",
                internal.requests().len()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (ssh, api_addr) = (w.relay.ssh.to_string(), w.relay.api.to_string());
    let earlier = reconnect_delays(&w.agent.logs.so_far()).len();
    w.relay.kill();
    let killed = Instant::now();
    for call in calls {
        let (elapsed, result) = call.await?;
        // Every caller hears back well within the call timeout: here, a dropped connection.
        let Ok(outcome) = result else {
            bail!("a call hung after the relay died ({elapsed:?})");
        };
        assert!(outcome.is_err() || outcome.is_ok_and(|r| r.status().is_server_error()));
    }
    assert!(killed.elapsed() < Duration::from_secs(5));

    w.relay = RelayProcess::start(&w.bins, &w.relay.state_dir.clone(), &ssh, &api_addr)?;
    let restarted = Instant::now();
    // The relay was away for seconds, while the agent's jittered backoff grew: allow up
    // to its cap here, and check the return against the waits the agent announced.
    w.api
        .wait_online("a1", true, CAP + Duration::from_secs(10))
        .await?;
    let back = restarted.elapsed();
    eprintln!("agent back {back:?} after the relay restart");
    let delays: Vec<_> = reconnect_delays(&w.agent.logs.text())
        .into_iter()
        .skip(earlier)
        .collect();
    // Back when the wait it was in ended (at most the longest), plus a handshake.
    let longest = delays.iter().max().copied().unwrap_or_default();
    assert!(
        back < longest + Duration::from_secs(3),
        "agent took {back:?} after waits of {delays:?}"
    );
    let r = w.api.call("a1", "orders", "/after").await?;
    assert_eq!(r.status(), 200);

    // The agent let go of the dead session's channels and upstream calls.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let fds = open_fds(w.agent.pid())?;
        if fds <= agent_fds + 4 {
            break;
        }
        if Instant::now() > deadline {
            bail!("agent holds {fds} fds, {agent_fds} before the calls");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = &w.dir;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_killed_and_restarted() -> Result<()> {
    let internal = InternalServer::start(Verifier::None, "").await?;
    let mut w = world(&format!(
        "[connections.orders]\nbase_uri = \"{}\"\n",
        internal.base_uri()
    ))
    .await?;
    drop(w.agent);
    // The relay notices the closed TCP connection at once.
    w.api
        .wait_online("a1", false, Duration::from_secs(3))
        .await?;
    let r = w.api.call("a1", "orders", "/x").await?;
    assert_eq!(r.status(), 503);
    let body: serde_json::Value = r.json().await?;
    assert_eq!(body["error"]["code"], "agent_offline");
    w.agent = AgentProcess::start(&w.bins, &w.config)?;
    w.api
        .wait_online("a1", true, Duration::from_secs(10))
        .await?;
    assert_eq!(w.api.call("a1", "orders", "/x").await?.status(), 200);
    Ok(())
}

/// An internal server that answers every request with `answer` (a head promising 1 MiB,
/// and perhaps a few bytes of it), then resets the connection like a crashing server.
async fn resetting_server(answer: &'static [u8]) -> Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            let _ = socket.read(&mut buf).await;
            let _ = socket.write_all(answer).await;
            // Abort (RST) rather than close.
            if let Ok(std_socket) = socket.into_std() {
                let _ = socket2::SockRef::from(&std_socket).set_linger(Some(Duration::ZERO));
            }
        }
    });
    Ok(addr)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_that_resets_mid_answer_gives_an_error_not_a_hang() -> Result<()> {
    let addr =
        resetting_server(b"HTTP/1.1 200 OK\r\nContent-Length: 1048576\r\n\r\n0123456789").await?;
    let head_only = resetting_server(b"HTTP/1.1 200 OK\r\nContent-Length: 1048576\r\n\r\n").await?;
    let mut w = world(&format!(
        "[connections.flaky]\nbase_uri = \"http://{addr}/\"\ntimeout = \"5s\"\n\
         [connections.headonly]\nbase_uri = \"http://{head_only}/\"\ntimeout = \"5s\"\n"
    ))
    .await?;
    // A reset right after the head: 502 `tunnel_error` when the agent saw the reset
    // before its head went on, else a body that breaks off, or (when the break reaches
    // the relay's HTTP server before it has flushed the head) a connection closed with no
    // answer at all; never a short body read whole.
    for _ in 0..5 {
        let r = match w.api.call("a1", "headonly", "/x").await {
            Ok(r) => r,
            Err(e) if format!("{e:#}").contains("connection closed before message completed") => {
                continue;
            }
            Err(e) => return Err(e),
        };
        if r.status() == 502 {
            assert_eq!(r.headers()["x-postern-error"], "tunnel_error");
        } else {
            assert_eq!(r.status(), 200);
            assert!(
                r.bytes().await.is_err(),
                "a body cut off must not read as whole"
            );
        }
    }
    let agent_threads = threads(w.agent.pid())?;
    for _ in 0..20 {
        let started = Instant::now();
        let outcome = tokio::time::timeout(Duration::from_secs(10), async {
            let r = w.api.call("a1", "flaky", "/x").await?;
            let status = r.status();
            let body = r.bytes().await?;
            Ok::<_, anyhow::Error>((status, body))
        })
        .await
        .context("the call hung")?;
        // Either the caller sees a 5xx error, or the body breaks off: never a short body that looks whole.
        if let Ok((status, body)) = &outcome {
            assert!(
                status.is_server_error(),
                "{status} with {} bytes looked complete",
                body.len()
            );
        }
        assert!(started.elapsed() < Duration::from_secs(6));
    }
    // The tunnel is still fine for other calls.
    w.api
        .wait_online("a1", true, Duration::from_secs(1))
        .await?;
    assert!(threads(w.agent.pid())? <= agent_threads + 2);
    let _ = w.agent.terminate()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn many_session_drops_leave_nothing_behind_in_the_agent() -> Result<()> {
    const DROPS: usize = 12;
    let internal = InternalServer::start(Verifier::None, "").await?;
    let mut w = world(&format!(
        "[connections.orders]\nbase_uri = \"{}\"\n",
        internal.base_uri()
    ))
    .await?;
    // Warm up: a few calls so the pool holds channels.
    for _ in 0..5 {
        assert_eq!(w.api.call("a1", "orders", "/warm").await?.status(), 200);
    }
    let (fds0, threads0) = (open_fds(w.agent.pid())?, threads(w.agent.pid())?);
    let (ssh, api_addr) = (w.relay.ssh.to_string(), w.relay.api.to_string());
    for round in 0..DROPS {
        // Calls in flight when the session dies…
        let mut calls = Vec::new();
        for i in 0..5 {
            let api = w.api.clone();
            calls.push(tokio::spawn(async move {
                api.call("a1", "orders", &format!("/slow?r={round}&i={i}"))
                    .await
            }));
        }
        // …at the internal server, all five, before the relay goes.
        let reached = |suffix: String| {
            internal
                .requests()
                .iter()
                .filter(|r| r.path_and_query.contains(&suffix))
                .count()
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while reached(format!("/slow?r={round}&")) < 5 {
            anyhow::ensure!(
                Instant::now() < deadline,
                "round {round}: the calls did not reach the internal server"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        w.relay.kill();
        for call in calls {
            let _ = tokio::time::timeout(Duration::from_secs(10), call)
                .await
                .context("a call hung")?;
        }
        w.relay = RelayProcess::start(&w.bins, &w.relay.state_dir.clone(), &ssh, &api_addr)?;
        // Past the backoff's cap: the relay was away while the calls ended, and the
        // agent's jittered waits can grow that long; this test is about leaks, not speed.
        w.api
            .wait_online("a1", true, CAP + Duration::from_secs(10))
            .await?;
        assert_eq!(w.api.call("a1", "orders", "/after").await?.status(), 200);
    }
    // …are let go: descriptors and threads back near where they started.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (fds, threads_now) = (open_fds(w.agent.pid())?, threads(w.agent.pid())?);
        if fds <= fds0 + 4 && threads_now <= threads0 + 2 {
            eprintln!(
                "after {DROPS} drops: fds {fds0} → {fds}, threads {threads0} → {threads_now}"
            );
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "after {DROPS} drops the agent holds {fds} fds (was {fds0}) and {threads_now} threads (was {threads0})"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}
