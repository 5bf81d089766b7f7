//! How the relay stops and what a connection costs it, against the real binary: SIGTERM
//! lets calls under way finish before agents are told and disconnected, a second signal
//! ends the drain at once, the grace's end or a second signal answers a call still waiting
//! 502, a SIGHUP during the start does not kill it, a session that
//! logs in but never says hello (or never takes the welcome) is closed, each agent holds one file descriptor, and a
//! flood of silent connections is capped.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use postern_tests::harness::{AgentProcess, Bins, RelayProcess, open_fds, signal};
use postern_tests::relay_support::{
    HandDriven, ONLINE_WITHIN, RelayWorld, SqliteLock, eventually, hold_sqlite_lock, sample,
    scrape, ssh_login, wait_calls_in_flight,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The relay's default `shutdown_grace`.
const GRACE: Duration = Duration::from_secs(30);

fn bins() -> Bins {
    postern_tests::bins!()
}

/// Whether the child `pid` has exited (a zombie until the harness reaps it, or gone).
fn exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_none_or(|state| state == "Z" || state == "X"),
        Err(_) => true,
    }
}

/// Waits (bounded) for `pid` to exit; returns how long that took from `since`.
async fn wait_exit(pid: u32, since: Instant, limit: Duration) -> Result<Duration> {
    eventually("the relay exits", limit, || std::future::ready(exited(pid))).await?;
    Ok(since.elapsed())
}

/// A relay with agent `a1` online serving `orders` on the internal server.
async fn world_with_agent() -> Result<(RelayWorld, AgentProcess)> {
    let w = RelayWorld::start(bins()).await?;
    let agent = w.agent_online("a1").await?.process;
    Ok((w, agent))
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_a_call_under_way_finish_before_agents_are_disconnected() -> Result<()> {
    let (mut w, agent) = world_with_agent().await?;
    let api = w.admin.clone();
    // The internal server takes 3 s to answer `/slow`.
    let call = tokio::spawn(async move {
        let response = api.call("a1", "orders", "/slow").await?;
        let status = response.status().as_u16();
        let body = response.bytes().await?;
        anyhow::Ok((status, body))
    });
    wait_calls_in_flight(&w.admin, "a1", 1, Duration::from_secs(10)).await?;

    let pid = w.relay.pid();
    let sent = Instant::now();
    signal(pid, "TERM")?;
    // New connections are refused at once, on both ports, while the call drains: checked
    // by the call still being under way then, not by a fixed time a busy machine may
    // exceed (the limit is only there to end the wait).
    let (api_addr, ssh_addr) = (w.relay.api, w.relay.ssh);
    eventually(
        "both ports refuse",
        Duration::from_secs(10),
        || async move {
            tokio::net::TcpStream::connect(api_addr).await.is_err()
                && tokio::net::TcpStream::connect(ssh_addr).await.is_err()
        },
    )
    .await?;
    assert!(
        !call.is_finished(),
        "the ports refused only after the call under way had ended"
    );

    let (status, body) = tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .context("the call did not end")???;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let answer: serde_json::Value = serde_json::from_slice(&body)?;
    assert_eq!(answer["ok"], true, "{answer}");
    assert!(
        answer["path"]
            .as_str()
            .unwrap_or_default()
            .ends_with("/slow"),
        "{answer}"
    );

    let took = wait_exit(pid, sent, GRACE + Duration::from_secs(5)).await?;
    assert!(took < GRACE, "the relay took {took:?} to stop");
    exited_with_goodbye(&mut w, &agent)?;
    w.relay
        .logs
        .wait_for("relay stopped", Duration::from_secs(5))?;
    Ok(())
}

/// The relay exited cleanly, and the agent heard why: the disconnect was written before
/// the relay exited.
fn exited_with_goodbye(w: &mut RelayWorld, agent: &AgentProcess) -> Result<()> {
    let status = w.relay.terminate()?;
    assert!(status.success(), "relay exit: {status}");
    agent.logs.wait_for(
        "relay closed the session: relay shutting down",
        Duration::from_secs(5),
    )
}

/// A call that stays under way: an upload that sends part of its body, then waits.
async fn stalled_upload(w: &RelayWorld) -> Result<tokio::net::TcpStream> {
    let mut stream = tokio::net::TcpStream::connect(w.relay.api).await?;
    let head = format!(
        "POST /v1/agents/a1/connections/orders/http/upload HTTP/1.1\r\nhost: relay\r\n\
         authorization: Bearer {}\r\ncontent-length: 1000000\r\n\r\n",
        w.admin.key
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(&[b'x'; 1000]).await?;
    stream.flush().await?;
    wait_calls_in_flight(&w.admin, "a1", 1, Duration::from_secs(10)).await?;
    Ok(stream)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_signal_ends_the_drain_at_once_and_still_says_goodbye() -> Result<()> {
    let (mut w, agent) = world_with_agent().await?;
    let mut upload = stalled_upload(&w).await?;

    let pid = w.relay.pid();
    signal(pid, "TERM")?;
    // The first signal drains: the call under way is not cut off.
    let mut buf = [0u8; 512];
    let early = tokio::time::timeout(Duration::from_millis(700), upload.read(&mut buf)).await;
    assert!(
        early.is_err(),
        "the call ended at the first signal: {early:?} {}",
        String::from_utf8_lossy(&buf)
    );
    assert!(!exited(pid), "the relay stopped without draining");
    // Nor cut since: the cut-off below is the second signal's.
    assert!(
        !w.relay
            .logs
            .contains("call cut off by the relay's shutdown"),
        "{}",
        w.relay.logs.text()
    );

    let second = Instant::now();
    signal(pid, "INT")?;
    let took = wait_exit(pid, second, GRACE).await?;
    assert!(
        took < Duration::from_secs(5),
        "the relay took {took:?} to stop after a second signal"
    );
    exited_with_goodbye(&mut w, &agent)?;
    // The relay cut the call off: its doing, not the caller's.
    w.relay.logs.wait_for(
        "call cut off by the relay's shutdown",
        Duration::from_secs(5),
    )?;
    let logs = w.relay.logs.text();
    assert!(!logs.contains("abandoned by the caller"), "{logs}");
    // Its caller was answered, not left with a closed connection (before 2026-12-07 it
    // got no answer at all): 502 `tunnel_error`, as the agent had the request.
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), upload.read_to_end(&mut answer));
    let _ = read.await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 502") && answer.contains("x-postern-error: tunnel_error"),
        "{answer}"
    );
    Ok(())
}

/// The grace running out, with no second signal, cuts off a call still waiting for its
/// answer's head the same way: its caller is answered 502 `tunnel_error` as the grace ends.
#[tokio::test(flavor = "multi_thread")]
async fn a_call_still_waiting_when_the_grace_ends_is_answered_502() -> Result<()> {
    let grace = Duration::from_secs(2);
    let mut w = RelayWorld::start_configured(bins(), "shutdown_grace = \"2s\"\n", &[]).await?;
    let agent = w.agent_online("a1").await?.process;
    let mut upload = stalled_upload(&w).await?;

    let pid = w.relay.pid();
    let sent = Instant::now();
    signal(pid, "TERM")?;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(
        grace + Duration::from_secs(5),
        upload.read_to_end(&mut answer),
    );
    let _ = read.await;
    let answered = sent.elapsed();
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 502") && answer.contains("x-postern-error: tunnel_error"),
        "{answer}"
    );
    assert!(
        answered >= grace - Duration::from_millis(200),
        "answered after {answered:?}, before the grace of {grace:?} ended"
    );
    let logs = w.relay.logs.text();
    assert!(
        logs.contains("did not finish within the grace period")
            && logs.contains("call cut off by the relay's shutdown")
            && !logs.contains("second signal"),
        "{logs}"
    );
    wait_exit(pid, sent, grace + Duration::from_secs(10)).await?;
    exited_with_goodbye(&mut w, &agent)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sighup_while_the_relay_starts_does_not_kill_it() -> Result<()> {
    let dir = postern_tests::temp::TempDir::new("relay-hup")?;
    let state = dir.path().join("relay");
    let bins = bins();
    // The store as a first start leaves it (the CLI works only on one `serve` made).
    drop(postern_relay::store::SqliteStore::open_in(&state)?);
    let db = state.join("relay.db");
    // The store waits for the lock (up to 5 s), holding the start in its slow part.
    let lock = hold_sqlite_lock(&db, SqliteLock::Exclusive, false, None)?;
    let mut command = Command::new(&bins.relay);
    command.args(["serve", "--state-dir"]).arg(&state).args([
        "--ssh-listen",
        "127.0.0.1:0",
        "--api-listen",
        "127.0.0.1:0",
    ]);
    let spawner = std::thread::spawn(move || RelayProcess::spawn(command, &state));

    // Once the relay has the database open it is past binding, TLS and the host key.
    let pid = {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            // Other tests' relays are children of this process too: the one with this
            // database open is ours.
            let ours = postern_tests::harness::children_of(std::process::id())
                .into_iter()
                .filter(|(_, cmd)| cmd.contains("e2e-postern-relay") && cmd.contains("serve"))
                .map(|(pid, _)| pid)
                .find(|pid| {
                    std::fs::read_dir(format!("/proc/{pid}/fd"))
                        .into_iter()
                        .flatten()
                        .flatten()
                        .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|p| p == db))
                });
            if let Some(pid) = ours {
                break pid;
            }
            if Instant::now() > deadline {
                drop(lock);
                bail!("the relay never opened its database");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    signal(pid, "HUP")?;
    std::thread::sleep(Duration::from_millis(200));
    let alive = !exited(pid);
    drop(lock);
    assert!(alive, "a SIGHUP during the start killed the relay");

    let relay = tokio::task::spawn_blocking(move || spawner.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the spawning thread panicked"))??;
    let health = reqwest::get(format!("{}/healthz", relay.api_base())).await?;
    assert_eq!(health.status(), 200);
    // The SIGHUP that came during the start is acted on once the relay serves.
    relay
        .logs
        .wait_for("SIGHUP: no TLS files configured", Duration::from_secs(5))?;
    Ok(())
}

/// Waits for the relay to end `ssh`, no sooner than `HELLO_TIMEOUT` after `logged_in`,
/// and counted as `hello_refused`.
async fn closed_at_the_hello_timeout(
    w: &RelayWorld,
    ssh: &mut russh::client::Handle<HandDriven>,
    logged_in: Instant,
) -> Result<()> {
    let hello_timeout = postern_relay::ssh_server::HELLO_TIMEOUT;
    tokio::time::timeout(hello_timeout + Duration::from_secs(5), ssh)
        .await
        .context("the relay kept the session past the hello timeout")?
        .ok();
    let took = logged_in.elapsed();
    ensure!(
        took >= hello_timeout - Duration::from_millis(500),
        "closed after {took:?}, before the hello timeout"
    );
    let samples = scrape(&w.admin).await?;
    ensure!(
        sample(
            &samples,
            "postern_sessions_closed_total{reason=\"hello_refused\"}"
        ) == 1.0,
        "not counted as hello_refused"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_that_logs_in_but_never_says_hello_is_closed() -> Result<()> {
    let w = RelayWorld::start(bins()).await?;
    let token = w.create_agent("quiet").await?;
    let (mut ssh, accepted) = ssh_login(w.relay.ssh, &token).await?;
    assert!(accepted, "the token was accepted");
    let logged_in = Instant::now();

    // No forward, no control channel, no hello: the relay ends it after HELLO_TIMEOUT.
    closed_at_the_hello_timeout(&w, &mut ssh, logged_in).await?;
    w.relay
        .logs
        .wait_for("no hello within 10 s", Duration::from_secs(5))?;
    Ok(())
}

/// An agent whose control channel never opens its window says hello but cannot take the
/// welcome: the same clock closes it, and the reason says what it did not do.
#[tokio::test(flavor = "multi_thread")]
async fn a_session_that_never_takes_its_welcome_is_closed_for_that() -> Result<()> {
    use postern_protocol::control::{AgentMessage, encode_line};

    let w = RelayWorld::start(bins()).await?;
    let token = w.create_agent("shut-window").await?;
    // No window on the channels this client opens: the relay can send nothing on them.
    let config = std::sync::Arc::new(russh::client::Config {
        window_size: 0,
        ..Default::default()
    });
    let mut ssh = russh::client::connect(config, w.relay.ssh, HandDriven::default()).await?;
    let auth = ssh
        .authenticate_password(postern_protocol::version::SSH_USER, &token)
        .await?;
    ensure!(auth.success(), "the token was refused");
    let logged_in = Instant::now();
    ssh.tcpip_forward(postern_protocol::version::FORWARD_ADDRESS, 0)
        .await?;
    let mut control = ssh.channel_open_session().await?.into_stream();
    let hello = AgentMessage::Hello {
        protocol_version: postern_protocol::PROTOCOL_VERSION,
        agent_version: "test".into(),
        connections: vec!["crm".into()],
    };
    control.write_all(&encode_line(&hello)).await?;
    control.flush().await?;
    w.admin
        .wait_online("shut-window", true, ONLINE_WITHIN)
        .await?;

    closed_at_the_hello_timeout(&w, &mut ssh, logged_in).await?;
    w.relay.logs.wait_for(
        "hello taken but the welcome not read within 10 s",
        Duration::from_secs(5),
    )?;
    ensure!(
        !w.relay.logs.contains("no hello within 10 s"),
        "the relay said no hello came"
    );
    w.admin
        .wait_online("shut-window", false, ONLINE_WITHIN)
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn each_agent_holds_one_file_descriptor_on_the_relay() -> Result<()> {
    let w = RelayWorld::start(bins()).await?;
    let mut tokens = Vec::new();
    for i in 0..5 {
        tokens.push(w.create_agent(&format!("fd-{i}")).await?);
    }
    let before = open_fds(w.relay.pid())?;
    let mut agents = Vec::new();
    for token in &tokens {
        agents.push(w.start_agent(token)?);
    }
    for i in 0..5 {
        w.admin
            .wait_online(&format!("fd-{i}"), true, ONLINE_WITHIN)
            .await?;
    }
    let after = open_fds(w.relay.pid())?;
    assert!(
        after < before + 8,
        "5 agents raised the relay's fds from {before} to {after}"
    );
    Ok(())
}

/// Past the cap of connections not yet authenticated the relay stops accepting: the
/// newest silent connections get no SSH identification line (they wait in the kernel's
/// backlog, costing the relay nothing), and a real agent gets in once the silent ones
/// reach the authentication timeout.
#[tokio::test(flavor = "multi_thread")]
async fn connections_past_the_cap_wait_and_agents_still_get_in() -> Result<()> {
    let w = RelayWorld::start(bins()).await?;
    let token = w.create_agent("a1").await?;
    let cap = postern_relay::ssh_server::MAX_UNAUTHENTICATED;
    let extra = 50;
    let base = open_fds(w.relay.pid())?;
    let mut silent = Vec::new();
    for _ in 0..cap + extra {
        silent.push(tokio::net::TcpStream::connect(w.relay.ssh).await?);
    }
    // Accepted ones get the relay's identification line at once; the newest get
    // nothing, neither the line nor a close: they wait.
    let mut waiting = 0;
    for stream in silent.iter_mut().rev().take(extra / 2) {
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_millis(40), stream.read(&mut buf)).await;
        if read.is_err() {
            waiting += 1;
        }
    }
    assert_eq!(
        waiting,
        extra / 2,
        "connections past the cap were served or closed"
    );
    let mut first = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(3), silent[0].read(&mut first)).await??;
    assert!(
        first[..n].starts_with(b"SSH-2.0-"),
        "the first ones are served"
    );
    // Two per connection taken on (its socket and the copy that can close it before the
    // login); those waiting in the backlog cost the relay none.
    let fds = open_fds(w.relay.pid())?;
    assert!(
        fds <= base + 2 * cap + 20,
        "the relay holds {fds} fds, {base} before"
    );

    // A real agent gets in once the silent ones reach the authentication timeout.
    let _agent = w.start_agent(&token)?;
    w.admin
        .wait_online("a1", true, Duration::from_secs(40))
        .await?;
    drop(silent);
    Ok(())
}

/// An idle relay stops cleanly on every SIGTERM: its API server may end before the
/// drain looks at it, and must not be waited on twice (that panicked, exit 101).
#[tokio::test(flavor = "multi_thread")]
async fn an_idle_relay_exits_0_on_every_sigterm() -> Result<()> {
    let dir = postern_tests::temp::TempDir::new("relay-stops")?;
    let bins = bins();
    for i in 0..8 {
        let mut relay = RelayProcess::start(
            &bins,
            &dir.path().join("relay"),
            "127.0.0.1:0",
            "127.0.0.1:0",
        )?;
        let status = relay.terminate()?;
        ensure!(
            status.code() == Some(0),
            "stop {i}: {status}; logs:\n{}",
            relay.logs.text()
        );
    }
    Ok(())
}
