//! Abuse resistance against the real relay: a second process with the same
//! token (and what a replaced session's calls under way get), clients that never authenticate, OpenSSH with a wrong token, and a
//! client hammering wrong tokens while a good agent keeps working.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use postern_protocol::SecretKind;
use postern_tests::harness::{AgentProcess, Api, Bins};
use postern_tests::relay_support::{
    ONLINE_WITHIN, OnlineAgent, RelayWorld, eventually, sample, scrape, wait_calls_in_flight,
};

/// The relay's authentication timeout is 10 s; allow for scheduling.
const CLOSED_WITHIN: Duration = Duration::from_secs(14);

fn bins() -> Bins {
    postern_tests::bins!()
}

/// An older agent with a call under way through it, and a newer process with the same
/// token, online.
struct Replaced {
    older: AgentProcess,
    newer: AgentProcess,
    in_flight: tokio::task::JoinHandle<Result<reqwest::Response>>,
}

type Call = tokio::task::JoinHandle<Result<reqwest::Response>>;

/// [`Replaced`], with a call to `/slow` (the internal server takes 3 s) under way.
async fn replaced_during_a_call(w: &RelayWorld) -> Result<Replaced> {
    replaced_during(w, |api| {
        tokio::spawn(async move { api.call("warehouse-1", "orders", "/slow").await })
    })
    .await
}

async fn replaced_during(w: &RelayWorld, start: impl FnOnce(Api) -> Call) -> Result<Replaced> {
    let OnlineAgent {
        token,
        process: older,
        info,
    } = w.agent_online("warehouse-1").await?;
    let in_flight = start(w.admin.clone());
    wait_calls_in_flight(&w.admin, "warehouse-1", 1, ONLINE_WITHIN).await?;
    let newer = w.start_agent(&token)?;
    w.relay
        .logs
        .wait_for("newer session replaces older one", ONLINE_WITHIN)?;
    w.admin
        .wait_new_session("warehouse-1", &info, ONLINE_WITHIN)
        .await?;
    Ok(Replaced {
        older,
        newer,
        in_flight,
    })
}

/// A second process with the same token — a rolling update starts the new agent before
/// it stops the old — takes the new calls at once; the older finishes its call under way,
/// then learns from the relay's `ending` notice why it lost the tunnel.
#[tokio::test(flavor = "multi_thread")]
async fn the_newest_session_takes_new_calls_and_the_older_finishes_its_own() -> Result<()> {
    let w = RelayWorld::start(bins()).await?;
    let Replaced {
        older,
        newer,
        in_flight,
    } = replaced_during_a_call(&w).await?;
    // A new call goes to the newer session (the older, draining one would answer 503):
    // the agent that ran it logs its request id.
    let r = w.admin.call("warehouse-1", "orders", "/after").await?;
    assert_eq!(r.status(), 200);
    let id = r.headers()["x-request-id"].to_str()?.to_owned();
    newer
        .logs
        .wait_for(&format!("request_id={id}"), ONLINE_WITHIN)?;
    assert!(!older.logs.contains(&id), "{}", older.logs.text());
    let answer = in_flight.await??;
    assert_eq!(answer.status(), 200, "the call under way was cut");
    older.logs.wait_for(
        "another agent with this token took over the tunnel",
        ONLINE_WITHIN,
    )?;
    // Only the newer process stays: two with one token would keep replacing each other.
    drop(older);
    let r = w.admin.call("warehouse-1", "orders", "/later").await?;
    assert_eq!(r.status(), 200);
    let id = r.headers()["x-request-id"].to_str()?.to_owned();
    newer
        .logs
        .wait_for(&format!("request_id={id}"), ONLINE_WITHIN)?;
    Ok(())
}

/// A replaced session gets `shutdown_grace` to finish its calls, as at a relay stop.
#[tokio::test(flavor = "multi_thread")]
async fn a_replaced_sessions_call_longer_than_the_grace_gets_a_clear_error() -> Result<()> {
    let w = RelayWorld::start_configured(bins(), "shutdown_grace = \"1s\"\n", &[]).await?;
    // The processes live to the test's end: dropped, they are killed.
    let Replaced {
        older,
        newer: _newer,
        in_flight,
    } = replaced_during_a_call(&w).await?;
    // Its request went to the agent: not 503 "retry", which could run it twice.
    let answer = in_flight.await??;
    assert_eq!(answer.status(), 502);
    assert_eq!(answer.headers()["x-postern-error"], "tunnel_error");
    let body: serde_json::Value = answer.json().await?;
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("closed during the call"), "{message}");
    assert!(message.contains("may have acted on it"), "{message}");
    older.logs.wait_for(
        "another agent with this token took over the tunnel",
        ONLINE_WITHIN,
    )?;
    Ok(())
}

/// `max_calls_per_agent` counts the calls a replaced session still finishes: the agent
/// is one agent, however many sessions it has for a while.
#[tokio::test(flavor = "multi_thread")]
async fn a_replaced_sessions_calls_count_towards_the_agents_limit() -> Result<()> {
    let w = RelayWorld::start_configured(bins(), "max_calls_per_agent = 1\n", &[]).await?;
    let Replaced {
        older: _older,
        newer: _newer,
        in_flight,
    } = replaced_during_a_call(&w).await?;
    let r = w.admin.call("warehouse-1", "orders", "/after").await?;
    assert_eq!(r.status(), 429);
    assert_eq!(in_flight.await??.status(), 200);
    let r = w.admin.call("warehouse-1", "orders", "/later").await?;
    assert_eq!(r.status(), 200);
    Ok(())
}

/// A replaced session's call fails as it would have otherwise: an upload that passes the
/// relay's `max_request_body` meanwhile gets 413, not 503 "retry" (it would never fit).
#[tokio::test(flavor = "multi_thread")]
async fn a_replaced_sessions_upload_past_the_limit_gets_413() -> Result<()> {
    let w = RelayWorld::start_configured(bins(), "max_request_body = 100000\n", &[]).await?;
    let (more, pieces) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    more.send(vec![b'x'; 50_000]).await?;
    let body = futures_util::stream::unfold(pieces, |mut pieces| async move {
        let piece = pieces.recv().await?;
        Some((Ok::<_, std::io::Error>(piece), pieces))
    });
    let replaced = replaced_during(&w, |api| {
        tokio::spawn(async move {
            let url = format!(
                "{}/v1/agents/warehouse-1/connections/orders/http/up",
                api.base
            );
            let request = api.http.post(url).bearer_auth(&api.key);
            Ok(request
                .body(reqwest::Body::wrap_stream(body))
                .send()
                .await?)
        })
    })
    .await?;
    more.send(vec![b'x'; 60_000]).await?;
    drop(more);
    let answer = replaced.in_flight.await??;
    assert_eq!(answer.status(), 413);
    assert_eq!(answer.headers()["x-postern-error"], "payload_too_large");
    Ok(())
}

/// Revoking the agent ends the replaced session too, its call under way included.
#[tokio::test(flavor = "multi_thread")]
async fn revoking_ends_a_replaced_session_still_finishing_its_calls() -> Result<()> {
    let w = RelayWorld::start(bins()).await?;
    let Replaced {
        older,
        newer,
        in_flight,
    } = replaced_during_a_call(&w).await?;
    let r = w
        .admin
        .http
        .delete(format!("{}/v1/agents/warehouse-1", w.admin.base))
        .bearer_auth(&w.admin.key)
        .send()
        .await?;
    assert_eq!(r.status(), 204);
    let answer = in_flight.await??;
    assert_eq!(answer.status(), 502, "the revoked agent's call went on");
    assert_eq!(answer.headers()["x-postern-error"], "tunnel_error");
    for agent in [&older, &newer] {
        agent.logs.wait_for(
            "the relay no longer accepts this agent's token",
            ONLINE_WITHIN,
        )?;
    }
    Ok(())
}

/// Reads until EOF or error; returns how long that took, bounded by `limit`.
fn time_until_closed(mut stream: TcpStream, limit: Duration) -> Result<Duration> {
    let started = Instant::now();
    stream.set_read_timeout(Some(limit))?;
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Ok(started.elapsed()),
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                bail!("still open after {limit:?}")
            }
            Err(_) => return Ok(started.elapsed()),
        }
    }
}

/// OpenSSH's `ssh` presenting `password` (via SSH_ASKPASS) from `bind` to the relay.
fn openssh_login(
    dir: &Path,
    relay: SocketAddr,
    bind: &str,
    password: &str,
) -> Result<(i32, String)> {
    let askpass = dir.join(format!("askpass-{}.sh", password.len()));
    std::fs::write(&askpass, format!("#!/bin/sh\necho '{password}'\n"))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&askpass, std::fs::Permissions::from_mode(0o700))?;
    }
    let out = Command::new("ssh")
        .args([
            "-F",
            "/dev/null",
            "-b",
            bind,
            "-p",
            &relay.port().to_string(),
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "PreferredAuthentications=password",
            "-o",
            "PubkeyAuthentication=no",
            "-o",
            "NumberOfPasswordPrompts=1",
            "-o",
            "ConnectTimeout=10",
            "-o",
            "LogLevel=ERROR",
            "postern-agent@127.0.0.1",
            "true",
        ])
        .env("SSH_ASKPASS", &askpass)
        .env("SSH_ASKPASS_REQUIRE", "force")
        .env("DISPLAY", ":0")
        .stdin(Stdio::null())
        .output()
        .context("running OpenSSH's ssh")?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

#[tokio::test(flavor = "multi_thread")]
async fn clients_that_never_authenticate_are_cut_off_and_wrong_tokens_refused() -> Result<()> {
    let w = RelayWorld::start(bins()).await?;
    let ssh = w.relay.ssh;
    // 1. Sends its SSH banner, then nothing.
    let banner_only = std::thread::spawn(move || -> Result<Duration> {
        let mut stream = TcpStream::connect(ssh)?;
        stream.write_all(b"SSH-2.0-OpenSSH_9.2p1 lazy\r\n")?;
        time_until_closed(stream, CLOSED_WITHIN)
    });
    // 2. Sends nothing at all.
    let silent = std::thread::spawn(move || -> Result<Duration> {
        time_until_closed(TcpStream::connect(ssh)?, CLOSED_WITHIN)
    });
    // 3. Sends garbage instead of a banner.
    let garbage = std::thread::spawn(move || -> Result<Duration> {
        let mut stream = TcpStream::connect(ssh)?;
        stream.write_all(&[0xde, 0xad, 0xbe, 0xef, b'\r', b'\n'].repeat(64))?;
        time_until_closed(stream, CLOSED_WITHIN)
    });
    // 4. Speaks an SSH version the relay does not.
    let old_version = std::thread::spawn(move || -> Result<Duration> {
        let mut stream = TcpStream::connect(ssh)?;
        stream.write_all(b"SSH-1.5-ancient\r\n")?;
        time_until_closed(stream, CLOSED_WITHIN)
    });
    for (name, handle) in [
        ("banner only", banner_only),
        ("silent", silent),
        ("garbage", garbage),
        ("SSH-1.5", old_version),
    ] {
        let took = handle
            .join()
            .map_err(|_| anyhow::anyhow!("{name} thread panicked"))?
            .with_context(|| name.to_owned())?;
        // (`time_until_closed` fails past CLOSED_WITHIN.) A peer that is merely slow is
        // given the authentication timeout, not closed at once.
        if matches!(name, "banner only" | "silent") {
            assert!(
                took >= Duration::from_secs(9),
                "{name}: closed after {took:?}, before the 10 s authentication timeout"
            );
        }
    }
    w.relay
        .logs
        .wait_for("within the authentication timeout", ONLINE_WITHIN)?;

    // OpenSSH with a well-formed but wrong token, and with a malformed one.
    let dir = w.dir.path().to_owned();
    let wrong = postern_relay::secrets::new_token(SecretKind::AgentToken);
    let wrong = wrong.expose().to_owned();
    let (code, stderr) =
        tokio::task::spawn_blocking(move || openssh_login(&dir, ssh, "127.0.0.1", &wrong))
            .await??;
    assert_eq!(code, 255, "{stderr}");
    assert!(stderr.contains("Permission denied"), "{stderr}");
    let dir = w.dir.path().to_owned();
    let (code, stderr) =
        tokio::task::spawn_blocking(move || openssh_login(&dir, ssh, "127.0.0.1", "not-a-token"))
            .await??;
    assert_eq!(code, 255, "{stderr}");
    w.relay.logs.wait_for("unknown token", ONLINE_WITHIN)?;
    w.relay.logs.wait_for("malformed token", ONLINE_WITHIN)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_good_agent_keeps_working_while_a_bad_client_hammers_wrong_tokens() -> Result<()> {
    let w = RelayWorld::start(bins()).await?;
    let token = w.create_agent("warehouse-1").await?;
    let ssh = w.relay.ssh;
    // Four hammering loops from another loopback address, bounded in count and time.
    let stop_at = Instant::now() + Duration::from_secs(20);
    let mut hammers = Vec::new();
    for i in 0..4 {
        let dir = w.dir.path().join(format!("hammer-{i}"));
        std::fs::create_dir_all(&dir)?;
        hammers.push(std::thread::spawn(move || -> Result<u32> {
            let mut refused = 0;
            for _ in 0..25 {
                if Instant::now() >= stop_at {
                    break;
                }
                let wrong = postern_relay::secrets::new_token(SecretKind::AgentToken);
                let (code, stderr) = openssh_login(&dir, ssh, "127.0.0.2", wrong.expose())?;
                if code != 255 {
                    bail!("a wrong token got in? exit {code}: {stderr}");
                }
                refused += 1;
            }
            Ok(refused)
        }));
    }

    // Meanwhile the good agent connects, serves calls, and reconnects after restarts.
    let mut agent = w.start_agent(&token)?;
    // Each process's log, kept for the end.
    let mut stopped = Vec::new();
    for round in 0..3 {
        w.admin
            .wait_online("warehouse-1", true, Duration::from_secs(10))
            .await
            .with_context(|| format!("round {round}"))?;
        for n in 0..10 {
            let r = w
                .admin
                .call("warehouse-1", "orders", &format!("/r{round}/{n}"))
                .await?;
            assert_eq!(r.status(), 200, "round {round} call {n}");
        }
        agent.terminate()?;
        w.admin
            .wait_online("warehouse-1", false, ONLINE_WITHIN)
            .await?;
        stopped.push(agent.logs.text());
        agent = w.start_agent(&token)?;
    }
    w.admin
        .wait_online("warehouse-1", true, Duration::from_secs(10))
        .await
        .context("the last process")?;
    stopped.push(agent.logs.text());
    let mut refused = 0;
    for h in hammers {
        refused += h
            .join()
            .map_err(|_| anyhow::anyhow!("hammer thread panicked"))??;
    }
    assert!(refused >= 8, "the hammer ran ({refused} refusals)");
    for (i, logs) in stopped.iter().enumerate() {
        assert!(
            !logs.contains("refused the access token"),
            "process {i} of the good agent was refused: {logs}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_address_that_keeps_failing_is_refused_before_the_handshake() -> Result<()> {
    let w = RelayWorld::start(bins()).await?;
    let ssh = w.relay.ssh;
    let dir = w.state_dir().join("blocked");
    std::fs::create_dir_all(&dir)?;
    // 24 wrong tokens at once from 127.0.0.3: past the threshold of 20 failures.
    let mut attempts = Vec::new();
    for _ in 0..24 {
        let dir = dir.clone();
        attempts.push(std::thread::spawn(move || {
            let wrong = postern_relay::secrets::new_token(SecretKind::AgentToken);
            openssh_login(&dir, ssh, "127.0.0.3", wrong.expose())
        }));
    }
    for a in attempts {
        let (code, _) = a
            .join()
            .map_err(|_| anyhow::anyhow!("login thread panicked"))??;
        assert_eq!(code, 255);
    }
    // Now that address gets no SSH banner at all…
    let wrong = postern_relay::secrets::new_token(SecretKind::AgentToken);
    let (code, stderr) = openssh_login(&dir, ssh, "127.0.0.3", wrong.expose())?;
    assert_eq!(code, 255);
    assert!(
        stderr.contains("Connection closed") || stderr.contains("Connection reset"),
        "expected a refusal before the handshake: {stderr}"
    );
    assert!(!stderr.contains("Permission denied"), "{stderr}");
    w.relay
        .logs
        .wait_for("address refused before the handshake", ONLINE_WITHIN)?;
    // Each refusal came before the authentication timeout, so none counted twice.
    let samples = scrape(&w.admin).await?;
    let failures = |reason: &str| {
        sample(
            &samples,
            &format!("postern_auth_failures_total{{reason=\"{reason}\"}}"),
        )
    };
    // OpenSSH may try the password more than once per connection. A slow one of the 24
    // may be accepted only after the block began, and so be refused as blocked instead:
    // either way each of the 24 was refused, and the last one as blocked.
    let tokens = failures("unknown_token") + failures("malformed_token");
    let blocked = failures("address_blocked");
    assert!(blocked >= 1.0, "the last login was refused as blocked");
    assert!(
        tokens >= f64::from(postern_relay::auth_throttle::BLOCK_AFTER),
        "the block came after its threshold of failed logins: {tokens}"
    );
    assert!(
        tokens + blocked >= 25.0,
        "every login counted: {tokens} by token, {blocked} blocked"
    );
    assert_eq!(failures("timeout"), 0.0);
    // …while other addresses still reach the relay and good agents connect.
    let _agent = w.agent_online("still-welcome").await?;
    Ok(())
}

/// A connection that ends before any login (`ssh-keyscan`'s key exchange and hang-up, a
/// port probe, a client offering only a public key) is counted, towards a ceiling of
/// its own: before, it cost the relay a key exchange and counted nowhere, so one
/// address could loop `ssh-keyscan` for ever. A wrong token's connection is counted as
/// that, not twice, and an agent's as nothing. (The ceiling itself: `auth_throttle.rs`
/// unit tests; loopback peers, as here, are counted but never blocked.)
#[tokio::test(flavor = "multi_thread")]
async fn connections_closed_before_logging_in_are_counted() -> Result<()> {
    let w = RelayWorld::start(bins()).await?;
    let ssh = w.relay.ssh;
    let closed = || async {
        let samples = scrape(&w.admin).await?;
        anyhow::Ok(sample(
            &samples,
            "postern_auth_failures_total{reason=\"closed_before_login\"}",
        ))
    };
    assert_eq!(closed().await?, 0.0);
    for _ in 0..2 {
        let scan = Command::new("ssh-keyscan")
            .args(["-t", "ed25519", "-p", &ssh.port().to_string(), "127.0.0.1"])
            .output()?;
        assert!(
            String::from_utf8_lossy(&scan.stdout).contains("ssh-ed25519"),
            "ssh-keyscan got no key: {}",
            String::from_utf8_lossy(&scan.stderr)
        );
    }
    // A port probe: connect, close.
    drop(TcpStream::connect(ssh)?);
    eventually("three closed before logging in", CLOSED_WITHIN, || async {
        closed().await.is_ok_and(|n| n == 3.0)
    })
    .await?;

    let dir = w.state_dir().join("closed");
    std::fs::create_dir_all(&dir)?;
    let wrong = postern_relay::secrets::new_token(SecretKind::AgentToken);
    let (code, _) = openssh_login(&dir, ssh, "127.0.0.1", wrong.expose())?;
    assert_eq!(code, 255);
    // An agent's session, ended: only an end counts, so it must have ended.
    let mut agent = w.agent_online("counted-as-nothing").await?;
    agent.process.terminate()?;
    w.admin
        .wait_online("counted-as-nothing", false, CLOSED_WITHIN)
        .await?;
    let samples = scrape(&w.admin).await?;
    assert!(
        sample(
            &samples,
            "postern_auth_failures_total{reason=\"unknown_token\"}"
        ) >= 1.0
    );
    assert_eq!(closed().await?, 3.0, "a login was counted as a hang-up");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn only_modern_ssh_algorithms_are_offered() -> Result<()> {
    let w = RelayWorld::start(bins()).await?;
    let port = w.relay.ssh.port().to_string();
    // OpenSSH asking for exactly one legacy algorithm must find nothing in common.
    for (option, legacy, refusal) in [
        ("Ciphers", "aes128-cbc", "no matching cipher found"),
        ("Ciphers", "3des-cbc", "no matching cipher found"),
        ("MACs", "hmac-sha1", "no matching MAC found"),
        (
            "KexAlgorithms",
            "diffie-hellman-group14-sha1",
            "no matching key exchange method found",
        ),
        (
            "HostKeyAlgorithms",
            "ssh-rsa",
            "no matching host key type found",
        ),
    ] {
        let out = Command::new("ssh")
            .args([
                "-F",
                "/dev/null",
                "-p",
                &port,
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=no",
            ])
            .args([
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "ConnectTimeout=10",
            ])
            .args(["-o", &format!("{option}={legacy}")])
            // A MAC is negotiated only beside a cipher that is not AEAD, and the relay's
            // are all AEAD: a MAC in common or not, the session goes on. What the relay
            // offers is read from OpenSSH's account of its KEXINIT instead.
            .args(if option == "MACs" {
                vec!["-vv"]
            } else {
                vec![]
            })
            .args(["postern-agent@127.0.0.1", "true"])
            .stdin(Stdio::null())
            .output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if option == "MACs" {
            let offered: Vec<&str> = stderr
                .lines()
                .skip_while(|l| !l.contains("peer server KEXINIT proposal"))
                .filter_map(|l| l.split_once("MACs ctos: ").or(l.split_once("MACs stoc: ")))
                .flat_map(|(_, list)| list.trim().split(','))
                .collect();
            assert!(!offered.is_empty(), "no MAC list read: {stderr}");
            for mac in offered {
                assert!(
                    ["hmac-sha1", "hmac-md5", "umac-64", "hmac-ripemd"]
                        .iter()
                        .all(|old| !mac.starts_with(old)),
                    "the relay offers {mac}: {stderr}"
                );
            }
            continue;
        }
        assert_eq!(out.status.code(), Some(255), "{legacy}: {stderr}");
        assert!(
            stderr.contains(refusal),
            "{option}={legacy} was not refused in negotiation for itself: {stderr}"
        );
    }
    Ok(())
}

/// Waits (up to 5 s) for the relay to end `ssh`.
async fn ended(ssh: &russh::client::Handle<postern_tests::relay_support::HandDriven>) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !ssh.is_closed() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    ssh.is_closed()
}

/// russh queues each channel request on its channel before the handler answers it, and
/// nobody reads the relay's queues for them: an agent that sends what no agent sends (an
/// environment variable, a shell…) has its session ended, not its requests kept.
#[tokio::test(flavor = "multi_thread")]
async fn a_channel_request_no_agent_sends_ends_the_session() -> Result<()> {
    let w = RelayWorld::start(bins()).await?;
    let token = w.create_agent("odd").await?;
    let handler = postern_tests::relay_support::HandDriven::default();
    let (ssh, accepted) =
        postern_tests::relay_support::ssh_login_as(w.relay.ssh, &token, handler).await?;
    assert!(accepted);
    ssh.tcpip_forward(postern_protocol::version::FORWARD_ADDRESS, 0)
        .await?;
    let control = ssh.channel_open_session().await?;
    control.set_env(false, "LC_ALL", "C").await?;
    assert!(ended(&ssh).await, "the session outlived an env request");
    w.relay.logs.wait_for(
        "agent sent a channel request agents never send",
        CLOSED_WITHIN,
    )?;
    Ok(())
}

/// A control line past its limit ends the session: the channel, left open unread, would
/// hold whatever the agent sent next.
#[tokio::test(flavor = "multi_thread")]
async fn a_control_line_too_long_ends_the_session() -> Result<()> {
    use tokio::io::AsyncWriteExt;

    let w = RelayWorld::start(bins()).await?;
    let (ssh, mut control, _opened) =
        postern_tests::relay_support::hand_driven_agent(&w, "chatty", Duration::ZERO, &["orders"])
            .await?;
    control
        .write_all(&vec![b'x'; postern_protocol::control::MAX_CONTROL_LINE + 1])
        .await?;
    control.flush().await?;
    assert!(
        ended(&ssh).await,
        "the session outlived a too-long control line"
    );
    w.relay
        .logs
        .wait_for("control line too long; ending the session", CLOSED_WITHIN)?;
    Ok(())
}

/// An agent that floods its control channel with lines the relay ignores (empty ones,
/// second hellos, the same inventory again) gets a few log lines a minute, not one per
/// line: its token does not buy the relay's log. Its session goes on, and a real change
/// after the flood still lands.
#[tokio::test(flavor = "multi_thread")]
async fn a_control_flood_does_not_flood_the_log() -> Result<()> {
    use postern_protocol::control::{AgentMessage, encode_line};
    use tokio::io::AsyncWriteExt;

    let w = RelayWorld::start(bins()).await?;
    let (ssh, mut control, _opened) =
        postern_tests::relay_support::hand_driven_agent(&w, "chatty", Duration::ZERO, &["orders"])
            .await?;
    let same = encode_line(&AgentMessage::Inventory {
        connections: vec!["orders".into()],
    });
    let hello = encode_line(&AgentMessage::Hello {
        protocol_version: postern_protocol::PROTOCOL_VERSION,
        agent_version: "again".into(),
        connections: vec!["orders".into()],
    });
    let mut flood = Vec::new();
    for _ in 0..2_000 {
        flood.extend_from_slice(b"\n\n\n\n\n{\"type\":\"later\"}\n");
        flood.extend_from_slice(&same);
        flood.extend_from_slice(&hello);
        flood.extend_from_slice(b"{\"type\":\"draining\"}\n");
    }
    control.write_all(&flood).await?;
    control
        .write_all(&encode_line(&AgentMessage::Inventory {
            connections: vec!["orders".into(), "billing".into()],
        }))
        .await?;
    control.flush().await?;
    eventually("the inventory after the flood", CLOSED_WITHIN, || async {
        w.admin
            .agent("chatty")
            .await
            .is_ok_and(|info| info.connections.len() == 2)
    })
    .await?;
    assert!(!ssh.is_closed(), "the session ended");
    let logs = w.relay.logs.text();
    let about_chatty = logs
        .lines()
        .filter(|l| {
            l.contains("chatty") && !l.contains("agent online") && !l.contains("authenticated")
        })
        .count();
    assert!(
        about_chatty <= 15,
        "{about_chatty} log lines for 2,000 rounds of ignored messages:\n{}",
        logs.lines().take(40).collect::<Vec<_>>().join("\n")
    );
    Ok(())
}

/// Agent `greedy`'s token, and eight connections logged in with it (no hello yet).
async fn eight_connections(
    w: &RelayWorld,
) -> Result<(
    String,
    Vec<russh::client::Handle<postern_tests::relay_support::HandDriven>>,
)> {
    let token = w.create_agent("greedy").await?;
    let mut held = Vec::new();
    for i in 0..8 {
        let (ssh, accepted) = postern_tests::relay_support::ssh_login(w.relay.ssh, &token).await?;
        anyhow::ensure!(accepted, "login {i} was refused");
        held.push(ssh);
    }
    Ok((token, held))
}

/// A token buys at most eight connections at once (logged in, or still to say hello): a
/// ninth login is not let in, and counted, until one of them ends. It is left unanswered
/// and ended at the authentication timeout (see the next test), neither accepted nor refused.
#[tokio::test(flavor = "multi_thread")]
async fn one_token_holds_at_most_eight_connections() -> Result<()> {
    let w = RelayWorld::start(postern_tests::bins!()).await?;
    let (token, mut held) = eight_connections(&w).await?;
    let relay = w.relay.ssh;
    let ninth_token = token.clone();
    let ninth = tokio::spawn(async move {
        postern_tests::relay_support::ssh_login(relay, &ninth_token)
            .await
            .map(|(_, accepted)| accepted)
    });
    w.relay
        .logs
        .wait_for("agent has 8 connections already", Duration::from_secs(5))?;
    let metrics = scrape(&w.admin).await?;
    assert_eq!(
        sample(
            &metrics,
            "postern_auth_failures_total{reason=\"agent_busy\"}"
        ),
        1.0
    );
    // Another agent is not held up by this one's.
    let other = w.create_agent("modest").await?;
    assert!(
        postern_tests::relay_support::ssh_login(w.relay.ssh, &other)
            .await?
            .1
    );

    // One ends: its place comes back. A login that came before the relay saw the end is
    // held to the timeout: given up on after two seconds, and tried again.
    drop(held.pop());
    eventually("a place comes back", Duration::from_secs(6), || {
        let token = token.clone();
        let relay = w.relay.ssh;
        async move {
            let login = postern_tests::relay_support::ssh_login(relay, &token);
            tokio::time::timeout(Duration::from_secs(2), login)
                .await
                .is_ok_and(|login| login.is_ok_and(|(_, accepted)| accepted))
        }
    })
    .await?;
    // Back for that end, not because the eight were closed for saying no hello (10 s after
    // their logins, about when the ninth is ended): checked before that, or the check says
    // nothing.
    assert!(
        !w.relay.logs.contains("no hello within 10 s"),
        "the eight were closed for their silence before the check: {}",
        w.relay.logs.text()
    );
    let ninth = tokio::time::timeout(CLOSED_WITHIN, ninth).await??;
    assert!(
        ninth.is_err(),
        "a ninth connection of one agent was answered (accepted: {ninth:?})"
    );
    Ok(())
}

/// A peer that stays after its login was refused or left unanswered (russh's client hangs
/// up by itself after a refusal): logs in with `argv[3]` at `argv[1]:argv[2]`, then prints
/// how long the relay kept the connection from its start on, at most 20 s.
const STAY_AFTER_REFUSAL: &str = r#"
import sys, time, paramiko
start = time.monotonic()  # the relay's clock runs from the connection, key exchange included
t = paramiko.Transport((sys.argv[1], int(sys.argv[2])))
t.start_client(timeout=10)
try:
    t.auth_password("postern-agent", sys.argv[3])
    print("accepted", flush=True)
except (paramiko.SSHException, EOFError):
    while t.is_active() and time.monotonic() - start < 20:
        time.sleep(0.1)
    print("refused, kept %.1f" % (time.monotonic() - start), flush=True)
"#;

/// A login held as `agent_busy` is a connection that has not logged in: the authentication
/// timeout still closes it (with the reason, where it was closed unsaid), though its peer
/// answers every keepalive.
#[tokio::test(flavor = "multi_thread")]
async fn a_connection_refused_as_agent_busy_is_closed_by_the_authentication_timeout() -> Result<()>
{
    let w = RelayWorld::start(postern_tests::bins!()).await?;
    let (token, held) = eight_connections(&w).await?;
    let relay = w.relay.ssh;
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .args(["-c", STAY_AFTER_REFUSAL, &relay.ip().to_string()])
            .args([relay.port().to_string(), token])
            .output()
    })
    .await?
    .context("python3 (with paramiko: .ci/run installs it)")?;
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    let kept: f64 = said
        .trim()
        .strip_prefix("refused, kept ")
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("{said}{}", String::from_utf8_lossy(&out.stderr)))?;
    assert!(kept < 14.0, "the refused connection was kept {kept} s");
    // Its places are held until the timeout, not given back at once.
    assert!(kept >= 9.0, "the busy connection was closed after {kept} s");
    w.relay.logs.wait_for(
        "login ended at the authentication timeout",
        Duration::from_secs(5),
    )?;
    drop(held);
    Ok(())
}

/// The real agent, its token holding all eight connections, is told why at the relay's
/// authentication timeout: it logs the relay's reason, not a refused token, and does not
/// back off as for one.
#[tokio::test(flavor = "multi_thread")]
async fn an_agent_with_all_its_connections_is_told_why() -> Result<()> {
    let w = RelayWorld::start(postern_tests::bins!()).await?;
    let (token, held) = eight_connections(&w).await?;
    let mut agent = w.start_agent(&token)?;
    agent
        .logs
        .wait_for("reconnecting", CLOSED_WITHIN + Duration::from_secs(5))?;
    let logs = agent.logs.text();
    agent.terminate()?;
    drop(held);
    assert!(
        logs.contains("during authentication: relay closed the session: this agent's token holds the most connections"),
        "the agent did not give the relay's reason:\n{logs}"
    );
    assert!(
        !logs.contains("refused the access token") && !logs.contains("retrying slowly"),
        "the agent took a busy agent for a refused token:\n{logs}"
    );
    Ok(())
}
