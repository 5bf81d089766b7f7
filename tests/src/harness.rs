//! Runs the real relay and agent binaries on loopback, keeps their logs, and
//! returns only once each is ready (no sleeps, no fixed ports).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use postern_protocol::api::AgentInfo;

/// The binaries under test, from the calling integration test's `CARGO_BIN_EXE_*`
/// (Cargo sets those only there, so this is a macro, expanded at the call site).
#[macro_export]
macro_rules! bins {
    () => {
        $crate::harness::Bins {
            relay: env!("CARGO_BIN_EXE_e2e-postern-relay").into(),
            agent: env!("CARGO_BIN_EXE_e2e-postern").into(),
        }
    };
}

/// Paths of the binaries under test (see [`bins!`]).
#[derive(Clone, Debug)]
pub struct Bins {
    pub relay: PathBuf,
    pub agent: PathBuf,
}

impl Bins {
    /// Copies both programs into `dir` (made if missing) under their product names,
    /// `postern` and `postern-relay`, as the packaging scripts expect them.
    pub fn stage(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::copy(&self.agent, dir.join("postern"))?;
        std::fs::copy(&self.relay, dir.join("postern-relay"))?;
        Ok(())
    }

    /// For programs that run outside `cargo test` (the soak, the bench): the test-named
    /// binaries beside the running program, unless given.
    pub fn beside_this_program(relay: Option<PathBuf>, agent: Option<PathBuf>) -> Result<Self> {
        let here = std::env::current_exe()?;
        let dir = here.parent().context("the program has no folder")?;
        Ok(Self {
            relay: relay.unwrap_or_else(|| dir.join("e2e-postern-relay")),
            agent: agent.unwrap_or_else(|| dir.join("e2e-postern")),
        })
    }
}

/// How long a line the binaries have logged may take to reach the output: they write
/// logs in batches (`postern_logs::GATHER`), and the pipe and the reader thread follow.
pub const LOG_LATENCY: Duration = Duration::from_millis(100);
const _: () = assert!(postern_logs::GATHER.as_millis() * 2 < LOG_LATENCY.as_millis());

/// Output lines of a child process, kept for assertions.
#[derive(Clone, Default)]
pub struct Logs(Arc<Mutex<Vec<String>>>);

impl Logs {
    /// Every line the process had logged when this was called (so it waits `LOG_LATENCY`).
    pub fn text(&self) -> String {
        std::thread::sleep(LOG_LATENCY);
        self.so_far()
    }

    /// As [`Logs::text`], line by line.
    pub fn lines(&self) -> Vec<String> {
        std::thread::sleep(LOG_LATENCY);
        self.0.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Whether a line logged before this call holds `needle`.
    pub fn contains(&self, needle: &str) -> bool {
        self.text().contains(needle)
    }

    /// The lines that have arrived so far, without waiting (for polling).
    pub fn so_far(&self) -> String {
        self.0.lock().map(|l| l.join("\n")).unwrap_or_default()
    }

    /// Waits until a line holds `needle`, bounded by `limit`.
    pub fn wait_for(&self, needle: &str, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.so_far().contains(needle) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        bail!(
            "no log line with {needle:?} within {limit:?}; logs:\n{}",
            self.so_far()
        )
    }
}

/// The waits an agent announced before each reconnect (its `reconnecting delay_ms=N`
/// lines) in `logs`, in order: what a test may allow for an agent's return to a relay
/// that was away, since the jittered backoff makes any fixed bound a matter of chance.
pub fn reconnect_delays(logs: &str) -> Vec<Duration> {
    logs.lines()
        .filter(|line| line.contains("reconnecting"))
        .filter_map(|line| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix("delay_ms="))
                .and_then(|ms| ms.parse().ok())
                .map(Duration::from_millis)
        })
        .collect()
}

/// Starts `command` at log level info with its stderr kept in `Logs`; the lines also
/// come through the receiver as they arrive.
fn spawn_logged(
    command: &mut Command,
    what: &str,
) -> Result<(Child, Logs, mpsc::Receiver<String>)> {
    let mut child = command
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting the {what}"))?;
    let logs = Logs::default();
    let lines = capture(&mut child, &logs);
    Ok((child, logs, lines))
}

fn capture(child: &mut Child, logs: &Logs) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    if let Some(stderr) = child.stderr.take() {
        let logs = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(mut l) = logs.0.lock() {
                    l.push(line.clone());
                }
                let _ = tx.send(line);
            }
        });
    }
    rx
}

pub struct RelayProcess {
    child: Child,
    pub state_dir: PathBuf,
    pub ssh: SocketAddr,
    pub api: SocketAddr,
    pub fingerprint: String,
    pub logs: Logs,
}

impl RelayProcess {
    /// Starts `serve`; `ssh`/`api` may be `127.0.0.1:0`. Returns once it listens.
    pub fn start(bins: &Bins, state_dir: &Path, ssh: &str, api: &str) -> Result<Self> {
        Self::start_in(None, bins, state_dir, ssh, api)
    }

    /// Like `start`, inside the network namespace `netns` when given.
    pub fn start_in(
        netns: Option<&str>,
        bins: &Bins,
        state_dir: &Path,
        ssh: &str,
        api: &str,
    ) -> Result<Self> {
        let mut command = command_in(netns, &bins.relay);
        command.args(["serve", "--state-dir"]).arg(state_dir).args([
            "--ssh-listen",
            ssh,
            "--api-listen",
            api,
        ]);
        Self::spawn(command, state_dir)
    }

    /// Starts a relay `serve` command made elsewhere (as a service unit would run it);
    /// returns once it listens.
    pub fn spawn(mut command: Command, state_dir: &Path) -> Result<Self> {
        let (child, logs, lines) = spawn_logged(&mut command, "relay")?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = lines
                .recv_timeout(left)
                .map_err(|_| anyhow!("relay did not start; logs:\n{}", logs.text()))?;
            if line.contains("relay listening") {
                // Text lines hold `name=value`; JSON lines (`--log-format json`) hold
                // `"name":"value"` at the top level.
                let json: Option<serde_json::Value> = serde_json::from_str(&line).ok();
                let field = |name: &str| {
                    if let Some(v) = json.as_ref().and_then(|j| j[name].as_str()) {
                        return Ok(v.to_owned());
                    }
                    line.split_whitespace()
                        .find_map(|w| w.strip_prefix(&format!("{name}=")))
                        .map(str::to_owned)
                        .ok_or_else(|| anyhow!("no {name}= in {line:?}"))
                };
                return Ok(Self {
                    ssh: field("ssh")?.parse()?,
                    api: field("api")?.parse()?,
                    fingerprint: field("fingerprint")?,
                    child,
                    state_dir: state_dir.to_owned(),
                    logs,
                });
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn api_base(&self) -> String {
        format!("http://{}", self.api)
    }

    /// SIGKILL: no drain, no goodbye.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits (bounded) for the exit status.
    pub fn terminate(&mut self) -> Result<std::process::ExitStatus> {
        terminate(&mut self.child)
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

pub struct AgentProcess {
    child: Child,
    pub logs: Logs,
}

impl AgentProcess {
    pub fn start(bins: &Bins, config: &Path) -> Result<Self> {
        Self::start_in(None, bins, config)
    }

    /// Like `start`, inside the network namespace `netns` when given.
    pub fn start_in(netns: Option<&str>, bins: &Bins, config: &Path) -> Result<Self> {
        let mut command = command_in(netns, &bins.agent);
        command.args(["run", "--config"]).arg(config);
        Self::spawn(command)
    }

    /// Starts an agent `run` command made elsewhere (as a service unit would run it).
    pub fn spawn(mut command: Command) -> Result<Self> {
        let (child, logs, _lines) = spawn_logged(&mut command, "agent")?;
        Ok(Self { child, logs })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn terminate(&mut self) -> Result<std::process::ExitStatus> {
        terminate(&mut self.child)
    }

    pub fn try_exit(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Its exit status once it has exited by itself (after a stop, say), within `limit`.
    pub async fn exit_within(&mut self, limit: Duration) -> Result<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.try_exit() {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!(
                    "the agent did not exit within {limit:?}: {}",
                    self.logs.text()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The port of the agent's metrics listener, for a config with
    /// `metrics_listen = "127.0.0.1:0"`: the agent logs only the configured address, so
    /// the port it bound is read from /proc (a port picked beforehand and let go could be
    /// taken by another test before the agent binds it).
    pub fn metrics_port(&self) -> Result<u16> {
        self.logs
            .wait_for("serving Prometheus metrics", Duration::from_secs(15))?;
        match listening_ports(self.pid())?.as_slice() {
            [port] => Ok(*port),
            ports => bail!("the agent listens on TCP ports {ports:?}, not on one"),
        }
    }
}

/// Waits (at most `limit`) until `child` itself listens on TCP, and returns its ports;
/// `None` if it exited first (it could not bind its port, say). Unlike [`wait_port`],
/// never fooled by another process that took the port.
pub fn wait_listening(child: &mut Child, limit: Duration) -> Result<Option<Vec<u16>>> {
    let deadline = Instant::now() + limit;
    loop {
        if child.try_wait()?.is_some() {
            return Ok(None);
        }
        // Unreadable if it exits just now: the next round sees that it did.
        let ports = listening_ports(child.id()).unwrap_or_default();
        if !ports.is_empty() {
            return Ok(Some(ports));
        }
        if Instant::now() > deadline {
            bail!(
                "process {} listens on no TCP port after {limit:?}",
                child.id()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The TCP ports process `pid` listens on, from /proc: its socket descriptors matched
/// with the listening sockets of its network namespace.
pub fn listening_ports(pid: u32) -> Result<Vec<u16>> {
    let inodes: std::collections::HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))?
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|target| {
            let target = target.to_str()?;
            let inode = target.strip_prefix("socket:[")?.strip_suffix(']')?;
            Some(inode.to_owned())
        })
        .collect();
    let mut ports = Vec::new();
    for table in ["tcp", "tcp6"] {
        // No tcp6 table without IPv6.
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) else {
            continue;
        };
        // "sl local_address rem_address st … inode": the address as HEXIP:HEXPORT,
        // state 0A is LISTEN.
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state), Some(inode)) =
                (fields.get(1), fields.get(3), fields.get(9))
            else {
                continue;
            };
            if *state != "0A" || !inodes.contains(*inode) {
                continue;
            }
            if let Some(port) = local
                .rsplit_once(':')
                .and_then(|(_, port)| u16::from_str_radix(port, 16).ok())
            {
                ports.push(port);
            }
        }
    }
    Ok(ports)
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `program`, or `ip netns exec <netns> program`.
pub fn command_in(netns: Option<&str>, program: &Path) -> Command {
    match netns {
        Some(ns) => {
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", ns]).arg(program);
            cmd
        }
        None => Command::new(program),
    }
}

/// Sends signal `name` (`TERM`, `HUP`, …) to `pid` with `kill`.
pub fn signal(pid: u32, name: &str) -> Result<()> {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .context("running kill")?;
    if !status.success() {
        bail!("kill -{name} {pid} failed");
    }
    Ok(())
}

fn terminate(child: &mut Child) -> Result<std::process::ExitStatus> {
    signal(child.id(), "TERM")?;
    let deadline = Instant::now() + Duration::from_secs(40);
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    bail!("process did not exit within 40 s of SIGTERM")
}

/// `postern-relay <args>` with stdin closed, for a test to redirect and run.
pub fn relay_cli_command(bins: &Bins, args: &[&str]) -> Command {
    let mut command = Command::new(&bins.relay);
    command.args(args).stdin(Stdio::null());
    command
}

/// Runs `postern-relay <args>`; its output whatever the exit, since tests look at
/// failures too.
pub fn relay_cli_output(bins: &Bins, args: &[&str]) -> Result<std::process::Output> {
    relay_cli_command(bins, args)
        .output()
        .with_context(|| format!("running postern-relay {args:?}"))
}

/// Runs `postern-relay <args>` that must exit by itself within `limit` (a `serve` that
/// should refuse to start, say); killed and an error past it, rather than a test that hangs.
pub fn relay_cli_within(
    bins: &Bins,
    args: &[&str],
    limit: Duration,
) -> Result<std::process::Output> {
    let mut child = relay_cli_command(bins, args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running postern-relay {args:?}"))?;
    let deadline = Instant::now() + limit;
    while child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("postern-relay {args:?} still ran after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(child.wait_with_output()?)
}

/// Runs a relay CLI command and returns its stdout; fails on a non-zero exit.
pub fn relay_cli(bins: &Bins, args: &[&str]) -> Result<String> {
    let out = relay_cli_output(bins, args)?;
    if !out.status.success() {
        bail!("postern-relay {args:?} failed: {}", stderr(&out));
    }
    Ok(stdout(&out))
}

/// `postern <args> --config <config>` with stdin closed, for a test to give an
/// environment and run.
pub fn agent_command(bins: &Bins, config: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(&bins.agent);
    command
        .args(args)
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null());
    command
}

/// `connection add NAME --base-uri http://127.0.0.1:9 --auth jwt_bearer`, then `extra`:
/// the arguments of a JWT connection an edit test adds.
pub fn add_jwt<'a>(name: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "connection",
        "add",
        name,
        "--base-uri",
        "http://127.0.0.1:9",
        "--auth",
        "jwt_bearer",
    ];
    args.extend_from_slice(extra);
    args
}

/// Runs `postern <args> --config <config>`; its output whatever the exit, since tests
/// look at failures too.
pub fn agent_cli(bins: &Bins, config: &Path, args: &[&str]) -> Result<std::process::Output> {
    agent_command(bins, config, args)
        .output()
        .with_context(|| format!("running postern {args:?}"))
}

/// `postern status --json --config <config>`, parsed whatever the exit (non-zero while
/// the tunnel is down).
pub fn status_json(bins: &Bins, config: &Path) -> Result<serde_json::Value> {
    let out = agent_cli(bins, config, &["status", "--json"])?;
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// Runs `postern init --relay <relay> --fingerprint` [`OFFLINE_FINGERPRINT`] for
/// `config`, with `token` as `POSTERN_TOKEN`; its output whatever the exit.
pub fn offline_init(
    bins: &Bins,
    config: &Path,
    relay: &str,
    token: &str,
) -> Result<std::process::Output> {
    offline_init_command(bins, config, relay, token, &[])
        .output()
        .context("running postern init")
}

/// The command [`offline_init`] runs, with `extra` arguments (`--force`).
pub fn offline_init_command(
    bins: &Bins,
    config: &Path,
    relay: &str,
    token: &str,
    extra: &[&str],
) -> Command {
    let mut args = vec![
        "init",
        "--relay",
        relay,
        "--fingerprint",
        OFFLINE_FINGERPRINT,
    ];
    args.extend_from_slice(extra);
    let mut command = agent_command(bins, config, &args);
    command.env("POSTERN_TOKEN", token);
    command
}

/// A file's permission bits.
pub fn file_mode(path: &Path) -> Result<u32> {
    use std::os::unix::fs::PermissionsExt;
    Ok(std::fs::metadata(path)?.permissions().mode() & 0o777)
}

/// Waits until `agent`, run on `config` with no relay listening, answers on its status
/// socket (`status` exits 1: answering, not connected).
pub fn wait_status_answers(bins: &Bins, config: &Path, agent: &AgentProcess) -> Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let out = agent_cli(bins, config, &["status", "--json"])?;
        if out.status.code() == Some(1) && stdout(&out).contains("\"agent_version\"") {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            bail!(
                "the agent's status socket did not answer: {}\nlogs:\n{}",
                output_text(&out),
                agent.logs.text()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A command's stdout, as text.
pub fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A command's stderr, as text.
pub fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The command ended with exit code `code` and its stderr says `said`.
#[track_caller]
pub fn assert_exit(out: &std::process::Output, code: i32, said: &str) {
    assert_eq!(out.status.code(), Some(code), "{}", output_text(out));
    assert!(stderr(out).contains(said), "{}", stderr(out));
}

/// Runs `command` to its end, as `output` does, but kills it after `limit`: a command that
/// should refuse at once and instead serves must fail the test, not hang it.
pub fn output_within(command: &mut Command, limit: Duration) -> Result<std::process::Output> {
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting the command")?;
    let pid = child.id();
    let (done, finished) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let out = child.wait_with_output();
        let _ = done.send(());
        out
    });
    if finished.recv_timeout(limit).is_err() {
        let _ = signal(pid, "KILL");
        let _ = waiter.join();
        bail!("still running after {limit:?}; killed");
    }
    waiter
        .join()
        .map_err(|_| anyhow::anyhow!("the waiting thread panicked"))?
        .context("waiting for the command")
}

/// A command's stdout then its stderr, as one text.
pub fn output_text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The agent's own `GET /metrics` on loopback `port` (`metrics_listen`), as text.
pub async fn agent_metrics(port: u16) -> Result<String> {
    Ok(reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await?
        .error_for_status()?
        .text()
        .await?)
}

/// A well-formed agent token that no relay knows, for configs that never reach one.
pub fn unknown_token() -> String {
    postern_protocol::SecretToken::generate(
        postern_protocol::SecretKind::AgentToken,
        &[7u8; postern_protocol::token::BODY_LEN],
    )
    .expose()
    .to_owned()
}

/// Another well-formed token than [`unknown_token`].
pub fn other_token() -> String {
    postern_protocol::SecretToken::generate(
        postern_protocol::SecretKind::AgentToken,
        &[9u8; postern_protocol::token::BODY_LEN],
    )
    .expose()
    .to_owned()
}

/// `token` with the character at `at` changed to another letter or digit, as a
/// typo would: always a different token, whatever it held there.
pub fn mistyped(token: &str, at: usize) -> String {
    let typo = if token.as_bytes().get(at) == Some(&b'x') {
        "y"
    } else {
        "x"
    };
    format!("{}{typo}{}", &token[..at], &token[at + 1..])
}

/// A relay fingerprint of the right form that no relay has, for commands that run
/// without a relay.
pub const OFFLINE_FINGERPRINT: &str = "SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU";

/// An agent config for commands that run without a relay: `relay`,
/// [`OFFLINE_FINGERPRINT`], an [`unknown_token`], then `rest`.
pub fn offline_agent_config(relay: &str, rest: &str) -> String {
    format!(
        "relay = \"{relay}\"\nrelay_fingerprint = \"{OFFLINE_FINGERPRINT}\"\ntoken = \"{}\"\n{rest}",
        unknown_token()
    )
}

/// A loopback port nothing listens on (for the moment it is asked).
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Waits until something accepts connections on loopback `port`, at most `limit`.
pub fn wait_port(port: u16, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("nothing listens on {port} after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Whether the tests run as root (some checks only mean something then).
pub fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// Creates an agent with the CLI; returns (id, token).
pub fn create_agent(bins: &Bins, state_dir: &Path, name: &str) -> Result<(String, String)> {
    let dir = state_dir.to_string_lossy();
    let out = relay_cli(
        bins,
        &["agent", "create", name, "--state-dir", &dir, "--json"],
    )?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    Ok((
        v["id"].as_str().unwrap_or_default().to_owned(),
        v["token"].as_str().unwrap_or_default().to_owned(),
    ))
}

pub fn create_api_key(bins: &Bins, state_dir: &Path, name: &str) -> Result<String> {
    let dir = state_dir.to_string_lossy();
    let out = relay_cli(
        bins,
        &["apikey", "create", name, "--state-dir", &dir, "--json"],
    )?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    Ok(v["key"].as_str().unwrap_or_default().to_owned())
}

/// A caller of the relay API.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    pub key: String,
    pub http: reqwest::Client,
}

impl Api {
    pub fn new(base: String, key: String) -> Self {
        // The relay closes a kept-alive connection idle for `header_read_timeout` (10 s by
        // default); a request sent on one just then meets the close (a reset). A client
        // lets its idle connections go sooner, as any client of the relay should.
        let http = reqwest::Client::builder()
            .pool_idle_timeout(Duration::from_secs(5))
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        Self { base, key, http }
    }

    pub async fn agent(&self, agent: &str) -> Result<AgentInfo> {
        let response = self
            .http
            .get(format!("{}/v1/agents/{agent}", self.base))
            .bearer_auth(&self.key)
            .send()
            .await?
            .error_for_status()?;
        Ok(response.json().await?)
    }

    /// Polls until the agent's `online` equals `online`, bounded by `limit`.
    pub async fn wait_online(
        &self,
        agent: &str,
        online: bool,
        limit: Duration,
    ) -> Result<AgentInfo> {
        self.wait_agent(agent, &format!("online={online}"), limit, |info| {
            info.online == online
        })
        .await
    }

    /// Waits until `agent` is online on another session than `old` (from another address):
    /// right after a reconnect the relay may still show the old one online.
    pub async fn wait_new_session(
        &self,
        agent: &str,
        old: &AgentInfo,
        limit: Duration,
    ) -> Result<AgentInfo> {
        self.wait_agent(agent, "online on a new session", limit, |info| {
            info.online && info.remote_addr != old.remote_addr
        })
        .await
    }

    async fn wait_agent(
        &self,
        agent: &str,
        what: &str,
        limit: Duration,
        done: impl Fn(&AgentInfo) -> bool,
    ) -> Result<AgentInfo> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(info) = self.agent(agent).await
                && done(&info)
            {
                return Ok(info);
            }
            if Instant::now() >= deadline {
                bail!("agent {agent} not {what} within {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// `GET /v1/agents/{agent}/connections/{connection}/http{path}`.
    pub async fn call(
        &self,
        agent: &str,
        connection: &str,
        path: &str,
    ) -> Result<reqwest::Response> {
        Ok(self
            .http
            .get(format!(
                "{}/v1/agents/{agent}/connections/{connection}/http{path}",
                self.base
            ))
            .bearer_auth(&self.key)
            .send()
            .await?)
    }

    /// `POST /v1/agents/{agent}/connections/{connection}/test`.
    pub async fn connection_test(
        &self,
        agent: &str,
        connection: &str,
    ) -> Result<reqwest::Response> {
        Ok(self
            .http
            .post(format!(
                "{}/v1/agents/{agent}/connections/{connection}/test",
                self.base
            ))
            .bearer_auth(&self.key)
            .send()
            .await?)
    }
}

/// Open file descriptors of a process, from /proc.
pub fn open_fds(pid: u32) -> Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count())
}

/// The processes whose parent is `pid`, with their command lines, from /proc.
pub fn children_of(pid: u32) -> Vec<(u32, String)> {
    let parent = pid.to_string();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let child: u32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).ok()?;
            // "pid (comm) state ppid …": comm may hold spaces, so split after the last ')'.
            let ppid = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .to_owned();
            let cmdline = std::fs::read(format!("/proc/{child}/cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            (ppid == parent).then_some((child, cmdline))
        })
        .collect()
}

/// The highest resident set size of a process over `during`, in KiB (sampled every 200 ms).
pub async fn peak_rss_kib(pid: u32, during: Duration) -> Result<u64> {
    let mut peak = rss_kib(pid)?;
    let until = Instant::now() + during;
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(200)).await;
        peak = peak.max(rss_kib(pid)?);
    }
    Ok(peak)
}

/// Resident set size of a process in KiB, from /proc.
pub fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| anyhow!("no VmRSS for {pid}"))
}

/// Where most end-to-end tests start: a relay with its state in `dir/relay`, agent `a1`
/// online on it with `connections` (its config at `dir/agent.toml`), and an API client.
pub struct Tunnel {
    pub relay: RelayProcess,
    pub agent: AgentProcess,
    pub api: Api,
    pub config: PathBuf,
}

impl Tunnel {
    pub async fn start(bins: &Bins, dir: &crate::temp::TempDir, connections: &str) -> Result<Self> {
        Self::start_via(bins, dir, connections, async |ssh| Ok(ssh)).await
    }

    /// Like `start`, with the agent dialing the address `link` gives for the relay's SSH
    /// address (a proxy in between, say).
    pub async fn start_via(
        bins: &Bins,
        dir: &crate::temp::TempDir,
        connections: &str,
        link: impl AsyncFnOnce(SocketAddr) -> Result<SocketAddr>,
    ) -> Result<Self> {
        let state = dir.path().join("relay");
        let relay = RelayProcess::start(bins, &state, "127.0.0.1:0", "127.0.0.1:0")?;
        let (_, token) = create_agent(bins, &state, "a1")?;
        let api = Api::new(relay.api_base(), create_api_key(bins, &state, "platform")?);
        let config = dir.write_private(
            "agent.toml",
            &agent_config(
                link(relay.ssh).await?,
                &relay.fingerprint,
                &token,
                connections,
            ),
        )?;
        let agent = AgentProcess::start(bins, &config)?;
        api.wait_online("a1", true, Duration::from_secs(15)).await?;
        Ok(Self {
            relay,
            agent,
            api,
            config,
        })
    }
}

/// An agent config with one JWT connection (RS256) and one open connection.
pub fn agent_config(
    relay: SocketAddr,
    fingerprint: &str,
    token: &str,
    connections: &str,
) -> String {
    format!(
        // The status socket beside the config, so parallel tests never share one.
        "relay = \"{relay}\"\nrelay_fingerprint = \"{fingerprint}\"\ntoken = \"{token}\"\nstatus_socket = \"agent.sock\"\n{connections}"
    )
}
