//! The relay and the agent under a `Type=notify` unit, with the test as systemd: a datagram
//! socket as `NOTIFY_SOCKET` gets `READY=1` once they serve (never from one that fails to
//! start), the agent's `STATUS=` as its tunnel comes and goes, and `STOPPING=1` at a stop.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use postern_tests::harness::{
    AgentProcess, Bins, RelayProcess, agent_config, create_agent, free_port, output_within, signal,
};
use postern_tests::temp::TempDir;

fn bins() -> Bins {
    postern_tests::bins!()
}

/// `postern-relay serve` in `state` on `ssh` and `api`, telling `socket` as systemd's.
fn relay_serve(bins: &Bins, state: &Path, ssh: &str, api: &str, socket: &Path) -> Command {
    let mut command = Command::new(&bins.relay);
    command.args(["serve", "--state-dir"]).arg(state).args([
        "--ssh-listen",
        ssh,
        "--api-listen",
        api,
    ]);
    as_the_service(&mut command, socket);
    command
}

/// `postern run` with `config`, telling `socket` as systemd's.
fn agent_run(bins: &Bins, config: &Path, socket: &Path) -> Command {
    let mut command = Command::new(&bins.agent);
    command.args(["run", "--config"]).arg(config);
    as_the_service(&mut command, socket);
    command
}

/// With `socket` as systemd's, and no watchdog of whatever runs the tests (a CI runner
/// under systemd) inherited: a test that wants one sets it.
fn as_the_service(command: &mut Command, socket: &Path) {
    command
        .env("NOTIFY_SOCKET", socket)
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID");
}

/// What systemd would read on the unit's notify socket.
struct Manager {
    socket: UnixDatagram,
}

impl Manager {
    fn bind(dir: &Path) -> Result<(Self, std::path::PathBuf)> {
        let path = dir.join("notify");
        let socket = UnixDatagram::bind(&path)?;
        Ok((Self { socket }, path))
    }

    /// The next message, within `limit`.
    fn next(&self, limit: Duration) -> Result<String> {
        self.socket.set_read_timeout(Some(limit))?;
        let mut buf = [0u8; 4096];
        let n = self
            .socket
            .recv(&mut buf)
            .with_context(|| format!("no message to the service manager within {limit:?}"))?;
        Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    /// Messages until one holds `needle`, within `limit` in all; that one.
    fn until(&self, needle: &str, limit: Duration) -> Result<String> {
        let deadline = Instant::now() + limit;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("no {needle:?} within {limit:?}; got {seen:?}");
            }
            let message = self.next(left).with_context(|| format!("got {seen:?}"))?;
            if message.contains(needle) {
                return Ok(message);
            }
            seen.push(message);
        }
    }

    /// Nothing was sent (the socket holds no message now).
    fn nothing_sent(&self) -> Result<()> {
        self.socket.set_nonblocking(true)?;
        let mut buf = [0u8; 4096];
        match self.socket.recv(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(()),
            Ok(n) => bail!("sent {:?}", String::from_utf8_lossy(&buf[..n])),
            Err(e) => Err(e.into()),
        }
    }
}

#[test]
fn the_relay_says_ready_once_it_serves_and_stopping_at_a_stop() -> Result<()> {
    let dir = TempDir::new("notify-relay")?;
    let bins = bins();
    let (manager, socket) = Manager::bind(dir.path())?;
    let (ssh, api) = (
        format!("127.0.0.1:{}", free_port()?),
        format!("127.0.0.1:{}", free_port()?),
    );
    let state = dir.path().join("relay");
    let command = relay_serve(&bins, &state, &ssh, &api, &socket);
    let mut relay = RelayProcess::spawn(command, &state)?;
    let ready = manager.next(Duration::from_secs(10))?;
    assert_eq!(
        ready,
        format!("READY=1\nSTATUS=serving agents on {ssh} (SSH) and calls on {api} (HTTP)\n")
    );
    // Ready means serving: the API answers at once.
    let health = std::net::TcpStream::connect(&api).and_then(|mut s| {
        use std::io::{Read, Write};
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")?;
        let mut answer = String::new();
        s.read_to_string(&mut answer)?;
        Ok(answer)
    })?;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");

    // The count of agents online follows them.
    let (_, token) = create_agent(&bins, &dir.path().join("relay"), "a1")?;
    let config = dir.write_private(
        "agent.toml",
        &agent_config(relay.ssh, &relay.fingerprint, &token, ""),
    )?;
    let mut agent = AgentProcess::start(&bins, &config)?;
    let serving = format!("STATUS=serving agents on {ssh} (SSH) and calls on {api} (HTTP)");
    let one = manager.until("online", Duration::from_secs(20))?;
    assert_eq!(one, format!("{serving}; 1 agent online\n"));
    agent.terminate()?;
    let none = manager.until("online", Duration::from_secs(20))?;
    assert_eq!(none, format!("{serving}; 0 agents online\n"));

    signal(relay.pid(), "TERM")?;
    let stopping = manager.next(Duration::from_secs(10))?;
    assert!(
        stopping.starts_with("STOPPING=1\nSTATUS=stopping: "),
        "{stopping}"
    );
    assert!(relay.terminate()?.success());
    Ok(())
}

/// A relay that cannot start never says it is ready: `systemctl start` fails with it.
#[test]
fn a_relay_that_cannot_start_never_says_ready() -> Result<()> {
    let dir = TempDir::new("notify-relay-busy")?;
    let bins = bins();
    let (manager, socket) = Manager::bind(dir.path())?;
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let api = taken.local_addr()?.to_string();
    let state = dir.path().join("relay");
    let mut command = relay_serve(&bins, &state, "127.0.0.1:0", &api, &socket);
    let out = output_within(&mut command, Duration::from_secs(30))?;
    assert_eq!(out.status.code(), Some(1));
    manager.nothing_sent()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_agent_says_ready_then_how_its_tunnel_fares() -> Result<()> {
    let dir = TempDir::new("notify-agent")?;
    let bins = bins();
    let (manager, socket) = Manager::bind(dir.path())?;
    let state = dir.path().join("relay");
    let mut relay = RelayProcess::start(&bins, &state, "127.0.0.1:0", "127.0.0.1:0")?;
    let (_, token) = create_agent(&bins, &state, "a1")?;
    let config = dir.write_private(
        "agent.toml",
        &agent_config(relay.ssh, &relay.fingerprint, &token, ""),
    )?;
    let mut agent = AgentProcess::spawn(agent_run(&bins, &config, &socket))?;
    let relay_at = relay.ssh.to_string();
    let ready = tokio::task::block_in_place(|| manager.next(Duration::from_secs(10)))?;
    assert_eq!(ready, format!("READY=1\nSTATUS=connecting to {relay_at}\n"));
    tokio::task::block_in_place(|| -> Result<()> {
        manager.until(
            &format!("STATUS=connected to {relay_at} as a1\n"),
            Duration::from_secs(15),
        )?;
        relay.kill();
        let lost = manager.until("STATUS=NOT connected", Duration::from_secs(20))?;
        ensure!(
            lost.starts_with(&format!("STATUS=NOT connected to {relay_at}: ")),
            "{lost}"
        );
        ensure!(
            lost.ends_with('\n') && lost.lines().count() == 1,
            "{lost:?}"
        );
        // Back, on the same port and state: connected again, then stopped while connected,
        // when the session drains.
        relay = RelayProcess::start(&bins, &state, &relay_at, "127.0.0.1:0")?;
        manager.until(
            &format!("STATUS=connected to {relay_at} as a1\n"),
            Duration::from_secs(15),
        )?;
        signal(agent.pid(), "TERM")?;
        let stopping = manager.until("STOPPING=1", Duration::from_secs(10))?;
        ensure!(
            stopping.starts_with("STOPPING=1\nSTATUS=stopping: "),
            "{stopping}"
        );
        Ok(())
    })?;
    assert!(agent.exit_within(Duration::from_secs(10)).await?.success());
    // The stop's drain is not told as a reconnection's.
    manager.nothing_sent()
}

/// An agent whose config does not load never says it is ready.
#[test]
fn an_agent_that_cannot_start_never_says_ready() -> Result<()> {
    let dir = TempDir::new("notify-agent-bad")?;
    let bins = bins();
    let (manager, socket) = Manager::bind(dir.path())?;
    let config = dir.write_private(
        "agent.toml",
        &agent_config(
            "127.0.0.1:9".parse()?,
            "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            &postern_tests::harness::unknown_token(),
            "\n[connections.c]\nbase_uri = \"http://127.0.0.1:9\"\n[connections.c.auth]\ntype = \"jwt_bearer\"\nalgorithm = \"RS256\"\nprivate_key_file = \"missing.pem\"\npayload = { aud = \"x\" }\n",
        ),
    )?;
    let out = output_within(
        &mut agent_run(&bins, &config, &socket),
        Duration::from_secs(30),
    )?;
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    manager.nothing_sent()
}

/// Under a unit's `WatchdogSec=` (systemd sets `WATCHDOG_USEC`, and `WATCHDOG_PID` to the
/// main process), both say `WATCHDOG=1` at a third of it while they run, and stop at a stop;
/// a `WATCHDOG_PID` of another process (a child that inherited the variables) is not theirs.
#[tokio::test(flavor = "multi_thread")]
async fn both_feed_a_watchdog_that_is_theirs_until_they_stop() -> Result<()> {
    let dir = TempDir::new("notify-watchdog")?;
    let bins = bins();
    let state = dir.path().join("relay");
    let relay = RelayProcess::start(&bins, &state, "127.0.0.1:0", "127.0.0.1:0")?;
    let (_, token) = create_agent(&bins, &state, "a1")?;
    let config = dir.write_private(
        "agent.toml",
        &agent_config(relay.ssh, &relay.fingerprint, &token, ""),
    )?;
    for (name, pid_is_theirs) in [("relay", true), ("agent", true), ("agent", false)] {
        let sub = dir.path().join(format!("{name}-{pid_is_theirs}"));
        std::fs::create_dir_all(&sub)?;
        let (manager, socket) = Manager::bind(&sub)?;
        let mut command = if name == "relay" {
            let state = sub.join("relay");
            relay_serve(&bins, &state, "127.0.0.1:0", "127.0.0.1:0", &socket)
        } else {
            agent_run(&bins, &config, &socket)
        };
        command.env("WATCHDOG_USEC", "300000");
        if !pid_is_theirs {
            command.env("WATCHDOG_PID", "1");
        }
        let mut child = command
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        let fed = tokio::task::block_in_place(|| -> Result<usize> {
            manager.until("READY=1", Duration::from_secs(10))?;
            let until = Instant::now() + Duration::from_millis(1_000);
            let mut fed = 0;
            while let Some(left) = until.checked_duration_since(Instant::now()) {
                match manager.next(left) {
                    Ok(m) if m == "WATCHDOG=1\n" => fed += 1,
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
            Ok(fed)
        })?;
        if pid_is_theirs {
            // Every 100 ms: ~10 in the second, at least a few on a loaded machine.
            ensure!(fed >= 3, "{name}: fed the watchdog {fed} times in 1 s");
        } else {
            ensure!(
                fed == 0,
                "{name}: fed another process's watchdog {fed} times"
            );
        }
        signal(child.id(), "TERM")?;
        tokio::task::block_in_place(|| -> Result<()> {
            manager.until("STOPPING=1", Duration::from_secs(10))?;
            let status = child.wait()?;
            ensure!(status.success(), "{name}: {status}");
            // Nothing after the stop began: read what is left.
            while let Ok(m) = manager.next(Duration::from_millis(50)) {
                ensure!(
                    m != "WATCHDOG=1\n",
                    "{name}: fed the watchdog while stopping"
                );
            }
            Ok(())
        })?;
    }
    Ok(())
}
