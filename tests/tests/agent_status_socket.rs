//! The status socket's trust rules, with the real `postern`: the agent never replaces a
//! file that is not a socket, the CLI believes only a socket its own user, root or the
//! config's owner keeps in a folder no one else may write to, and it does not wait for
//! ever on an agent that takes the connection and says nothing; a metrics scraper that
//! never reads does not hold up the agent's stop.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::time::{Duration, Instant};

use anyhow::Result;
use postern_tests::harness::{
    AgentProcess, Bins, agent_cli, agent_command, offline_agent_config, status_json, stderr,
    wait_status_answers,
};
use postern_tests::temp::TempDir;

fn bins() -> Bins {
    postern_tests::bins!()
}

/// `agent.toml` in `dir`: a config for an agent whose relay is nowhere, with `extra`.
fn agent_toml(dir: &TempDir, extra: &str) -> Result<std::path::PathBuf> {
    Ok(dir.write_private("agent.toml", &offline_agent_config("127.0.0.1:9", extra))?)
}

/// A `status_socket` mistyped as a file's name costs nothing: the agent runs without its
/// socket and says why, and the file is as it was.
#[test]
fn a_file_that_is_not_a_socket_is_never_replaced() -> Result<()> {
    let dir = TempDir::new("status-not-a-socket")?;
    dir.write_private("precious.txt", "keep me\n")?;
    let config = agent_toml(&dir, "status_socket = \"precious.txt\"\n")?;
    let agent = AgentProcess::start(&bins(), &config)?;
    agent
        .logs
        .wait_for("is there and is not a socket", Duration::from_secs(15))?;
    assert_eq!(
        std::fs::read_to_string(dir.path().join("precious.txt"))?,
        "keep me\n"
    );
    Ok(())
}

/// The same config run twice: the second agent runs without the socket (the first keeps
/// it, and its lock), and its log says what two agents with one token do to each other.
#[test]
fn a_second_agent_on_the_same_config_is_told_what_that_does() -> Result<()> {
    let dir = TempDir::new("status-twice")?;
    let config = agent_toml(&dir, "status_socket = \"agent.sock\"\n")?;
    let mut first = AgentProcess::start(&bins(), &config)?;
    wait_status_answers(&bins(), &config, &first)?;
    let mut second = AgentProcess::start(&bins(), &config)?;
    second.logs.wait_for(
        "another agent runs with this status_socket, most likely with this very config",
        Duration::from_secs(15),
    )?;
    // The first still answers on it.
    second.terminate()?;
    wait_status_answers(&bins(), &config, &first)?;
    first.terminate()?;
    Ok(())
}

/// What answers on a socket in a folder others may write to (as `/tmp/postern-<uid>`
/// made by another user) is not believed: `status` exits 2 saying why, rather than 0
/// with that process's "connected".
#[test]
fn a_socket_in_a_folder_others_may_write_to_is_not_asked() -> Result<()> {
    let dir = TempDir::new("status-shared-folder")?;
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared)?;
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777))?;
    let socket = shared.join("agent.sock");
    let listener = UnixListener::bind(&socket)?;
    // The impostor: answers every connection with a status that looks fine.
    let impostor = std::thread::spawn(move || {
        use std::io::Write;
        if let Ok((mut stream, _)) = listener.accept() {
            let _ = stream.write_all(br#"{"connected":true}"#);
        }
    });
    let config = agent_toml(&dir, &format!("status_socket = \"{}\"\n", socket.display()))?;
    let out = agent_cli(&bins(), &config, &["status"])?;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("group or others may write to it"),
        "{}",
        stderr(&out)
    );
    // Never connected to: unblock the impostor's accept.
    drop(std::os::unix::net::UnixStream::connect(&socket));
    let _ = impostor.join();
    Ok(())
}

/// A socket folder reached through a symlink of a trusted user (as `/var/run` → `/run`)
/// serves: the agent binds there and the CLI asks it (exit 1: the agent answers, and is
/// not connected, its relay being nowhere).
#[test]
fn a_folder_behind_a_symlink_of_ones_own_serves() -> Result<()> {
    let dir = TempDir::new("status-symlinked-folder")?;
    std::fs::create_dir(dir.path().join("real"))?;
    std::os::unix::fs::symlink(dir.path().join("real"), dir.path().join("link"))?;
    let socket = dir.path().join("link/agent.sock");
    let config = agent_toml(&dir, &format!("status_socket = \"{}\"\n", socket.display()))?;
    let _agent = AgentProcess::start(&bins(), &config)?;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let out = agent_cli(&bins(), &config, &["status"])?;
        if out.status.code() == Some(1) {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "status never answered: {}",
            stderr(&out)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// An agent that takes the connection and never answers (frozen, stopped with SIGSTOP):
/// `status` gives up with exit 2 after its wait, as for no agent at all.
#[test]
fn an_agent_that_never_answers_is_not_waited_for_for_ever() -> Result<()> {
    let dir = TempDir::new("status-silent")?;
    let socket = dir.path().join("agent.sock");
    // Bound and listening, never accepting: the kernel takes the connection.
    let _listener = UnixListener::bind(&socket)?;
    let config = agent_toml(&dir, "status_socket = \"agent.sock\"\n")?;
    // Run bounded: without the CLI's own bound this would wait for ever.
    let mut child = agent_command(&bins(), &config, &["status"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            anyhow::bail!("postern status still waits after 60 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output()?;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("did not answer within"),
        "{}",
        stderr(&out)
    );
    Ok(())
}

/// The metrics listener is as reachable as the socket: a local client that pipelines
/// scrapes and never reads their answers leaves the agent's stop as quick as ever
/// (before, the stop waited for that answer for ever, and systemd killed the agent).
#[test]
fn a_scraper_that_never_reads_does_not_hold_up_the_stop() -> Result<()> {
    use std::io::Write;
    let dir = TempDir::new("metrics-stuck-scraper")?;
    let config = agent_toml(
        &dir,
        "status_socket = \"agent.sock\"\nmetrics_listen = \"127.0.0.1:0\"\n",
    )?;
    let mut agent = AgentProcess::start(&bins(), &config)?;
    let port = agent.metrics_port()?;
    let mut scraper = std::net::TcpStream::connect(("127.0.0.1", port))?;
    // Until both sides' buffers are full: the agent's answer can no longer be written.
    scraper.set_write_timeout(Some(Duration::from_secs(2)))?;
    let request = b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n".repeat(100);
    let mut filled = false;
    for _ in 0..2000 {
        if scraper.write_all(&request).is_err() {
            filled = true;
            break;
        }
    }
    anyhow::ensure!(
        filled,
        "the agent kept reading: its answers never backed up"
    );
    postern_tests::harness::signal(agent.pid(), "TERM")?;
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = agent.try_exit() {
            break status;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the agent did not stop within 20 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}: {}", agent.logs.text());
    drop(scraper);
    Ok(())
}

/// `status` names what each connection's calls carry: `-` without auth, `per call` for a
/// JWT signed for each call (nothing cached that could be missing), `none` for a reused
/// JWT not made yet. A JWT signed per call showed `none`, which reads as a token missing.
#[test]
fn status_says_a_jwt_signed_per_call_is_no_empty_cache() -> Result<()> {
    let dir = TempDir::new("status-token-cache")?;
    let hs256 = "type = \"jwt_bearer\", algorithm = \"HS256\", secret = \"a-secret-of-thirty-two-bytes-ok!\"";
    let config = agent_toml(
        &dir,
        &format!(
            "status_socket = \"agent.sock\"\n[connections.plain]\nbase_uri = \"http://127.0.0.1:9/a\"\n\
             [connections.signed]\nbase_uri = \"http://127.0.0.1:9/b\"\nauth = {{ {hs256} }}\n\
             [connections.reused]\nbase_uri = \"http://127.0.0.1:9/c\"\nauth = {{ {hs256}, lifetime = \"5m\", reuse_for = \"4m\" }}\n"
        ),
    )?;
    let agent = AgentProcess::start(&bins(), &config)?;
    wait_status_answers(&bins(), &config, &agent)?;
    let status = status_json(&bins(), &config)?;
    let cache = |name: &str| status["connections"][name]["token_cache"].clone();
    assert_eq!(cache("plain"), "-", "{status}");
    assert_eq!(cache("signed"), "per call", "{status}");
    assert_eq!(cache("reused"), "none", "{status}");
    let text = postern_tests::harness::stdout(&agent_cli(&bins(), &config, &["status"])?);
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("signed "))
        .unwrap_or_default();
    assert!(line.trim_end().ends_with("per call"), "{text}");
    Ok(())
}
