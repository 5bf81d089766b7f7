//! Helpers for the relay's operability tests: a relay with an admin key and an
//! open internal server, agents started from a token, and raw API requests.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use postern_protocol::api::AgentInfo;
use reqwest::Method;
use reqwest::header::HeaderMap;

use crate::harness::{AgentProcess, Api, Bins, RelayProcess, agent_config, create_api_key};
use crate::internal_server::{InternalServer, Verifier};
use crate::temp::TempDir;

/// A relay on loopback, an admin API key for it, and an internal server that
/// needs no JWT (these tests are about the relay, not signing).
pub struct RelayWorld {
    pub dir: TempDir,
    pub bins: Bins,
    pub relay: RelayProcess,
    pub admin: Api,
    pub internal: InternalServer,
    configs: AtomicUsize,
}

/// How long an agent may take to come online in these tests.
pub const ONLINE_WITHIN: Duration = Duration::from_secs(15);

/// An agent that [`RelayWorld::agent_online`] started: its token, its process, and what
/// the relay said of it once it was online.
pub struct OnlineAgent {
    pub token: String,
    pub process: AgentProcess,
    pub info: AgentInfo,
}

/// An answer from the API: status, headers, and the body as JSON (`Null` if none).
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub json: serde_json::Value,
}

impl Answer {
    /// The stable error code of an error answer.
    pub fn code(&self) -> &str {
        error_code(&self.json)
    }

    /// The message of an error answer, empty if none.
    pub fn message(&self) -> &str {
        self.json["error"]["message"].as_str().unwrap_or_default()
    }
}

/// The stable error code of an error body (`{"error": {"code": …}}`), empty if none.
pub fn error_code(body: &serde_json::Value) -> &str {
    body["error"]["code"].as_str().unwrap_or_default()
}

/// Status, `x-postern-error` and JSON body of a call.
pub async fn refusal(r: reqwest::Response) -> Result<(u16, String, serde_json::Value)> {
    let status = r.status().as_u16();
    let header = r
        .headers()
        .get("x-postern-error")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body: serde_json::Value = r.json().await?;
    Ok((status, header, body))
}

impl RelayWorld {
    pub async fn start(bins: Bins) -> Result<Self> {
        let dir = TempDir::new("relay-ops")?;
        let relay = RelayProcess::start(
            &bins,
            &dir.path().join("relay"),
            "127.0.0.1:0",
            "127.0.0.1:0",
        )?;
        Self::around(bins, dir, relay).await
    }

    /// Like `start`, with `extra` lines in the relay's config file and `args` on its
    /// command line.
    pub async fn start_configured(bins: Bins, extra: &str, args: &[&str]) -> Result<Self> {
        let dir = TempDir::new("relay-ops")?;
        let relay = configured_relay(&bins, dir.path(), extra, args)?;
        Self::around(bins, dir, relay).await
    }

    async fn around(bins: Bins, dir: TempDir, relay: RelayProcess) -> Result<Self> {
        let state = dir.path().join("relay");
        let admin = Api::new(relay.api_base(), create_api_key(&bins, &state, "admin")?);
        let internal = InternalServer::start(Verifier::None, "orders").await?;
        Ok(Self {
            dir,
            bins,
            relay,
            admin,
            internal,
            configs: AtomicUsize::new(0),
        })
    }

    pub fn state_dir(&self) -> PathBuf {
        self.relay.state_dir.clone()
    }

    /// An API client with another key.
    pub fn api(&self, key: &str) -> Api {
        Api::new(self.relay.api_base(), key.to_owned())
    }

    /// Writes an agent config holding `token` with one connection, `orders`.
    pub fn write_agent_config(&self, token: &str) -> Result<PathBuf> {
        self.write_agent_config_with(token, "")
    }

    /// Like `write_agent_config`, with `more` connection tables after `orders`.
    pub fn write_agent_config_with(&self, token: &str, more: &str) -> Result<PathBuf> {
        let n = self.configs.fetch_add(1, Ordering::Relaxed);
        let connections = format!(
            "\n[connections.orders]\nbase_uri = \"{}\"\ntimeout = \"20s\"\n{more}",
            self.internal.base_uri()
        );
        Ok(self.dir.write_private(
            &format!("agent-{n}.toml"),
            &agent_config(self.relay.ssh, &self.relay.fingerprint, token, &connections),
        )?)
    }

    /// Starts an agent process with `token`.
    pub fn start_agent(&self, token: &str) -> Result<AgentProcess> {
        AgentProcess::start(&self.bins, &self.write_agent_config(token)?)
    }

    /// Creates agent `name` through the API, starts it with one connection, `orders`,
    /// and waits (up to [`ONLINE_WITHIN`]) until the relay has it online.
    pub async fn agent_online(&self, name: &str) -> Result<OnlineAgent> {
        let token = self.create_agent(name).await?;
        let process = self.start_agent(&token)?;
        let info = self.admin.wait_online(name, true, ONLINE_WITHIN).await?;
        Ok(OnlineAgent {
            token,
            process,
            info,
        })
    }

    /// Creates an agent through the API; returns its token.
    pub async fn create_agent(&self, name: &str) -> Result<String> {
        let answer = send(
            &self.admin,
            Method::POST,
            "/v1/agents",
            Some(serde_json::json!({ "name": name })),
        )
        .await?;
        if answer.status != 201 {
            bail!("creating agent {name}: {} {}", answer.status, answer.json);
        }
        Ok(answer.json["token"].as_str().unwrap_or_default().to_owned())
    }
}

/// Sends `method path` with the API's key and an optional JSON body.
pub async fn send(
    api: &Api,
    method: Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> Result<Answer> {
    let mut request = api
        .http
        .request(method, format!("{}{path}", api.base))
        .bearer_auth(&api.key);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let bytes = response.bytes().await?;
    let json = if bytes.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&bytes).into()))
    };
    Ok(Answer {
        status,
        headers,
        json,
    })
}

/// Waits until the relay counts `n` calls in flight for `agent`, bounded by `limit`.
pub async fn wait_calls_in_flight(api: &Api, agent: &str, n: u64, limit: Duration) -> Result<()> {
    eventually(
        &format!("{n} calls in flight on {agent}"),
        limit,
        || async {
            api.agent(agent)
                .await
                .is_ok_and(|info| info.calls_in_flight == n)
        },
    )
    .await
}

/// Polls `check` until it holds, bounded by `limit`.
pub async fn eventually<F, Fut>(what: &str, limit: Duration, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check().await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("{what}: not within {limit:?}")
}

/// A relay started with `serve --config FILE` (for settings the CLI has no flag for)
/// and `args` (e.g. `--log-format json`), on 127.0.0.1:0: `dir/relay.toml` holds the
/// state folder `dir/relay`, the listen addresses and `extra`.
pub fn configured_relay(
    bins: &Bins,
    dir: &std::path::Path,
    extra: &str,
    args: &[&str],
) -> Result<RelayProcess> {
    let state = dir.join("relay");
    let config = dir.join("relay.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = {:?}\nssh_listen = \"127.0.0.1:0\"\napi_listen = \"127.0.0.1:0\"\n{extra}",
            state.to_string_lossy()
        ),
    )?;
    let mut command = relay_command(bins, &config);
    command.args(args);
    RelayProcess::spawn(command, &state)
}

/// [`configured_relay`] serving its API over TLS with the PEM files `cert` and `key`.
pub fn tls_relay(
    bins: &Bins,
    dir: &std::path::Path,
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<RelayProcess> {
    let tls = format!(
        "tls_cert = {:?}\ntls_key = {:?}\n",
        cert.to_string_lossy(),
        key.to_string_lossy()
    );
    configured_relay(bins, dir, &tls, &[])
}

/// `/metrics` scraped as Prometheus would (with `api`'s key), samples by full name.
pub async fn scrape(api: &Api) -> Result<HashMap<String, f64>> {
    let response = api
        .http
        .get(format!("{}/metrics", api.base))
        .bearer_auth(&api.key)
        .send()
        .await?;
    anyhow::ensure!(
        response.status() == 200,
        "/metrics answered {}",
        response.status()
    );
    let content_type = response.headers()["content-type"].to_str()?.to_owned();
    anyhow::ensure!(
        content_type.starts_with("application/openmetrics-text; version=1.0.0"),
        "/metrics is {content_type}"
    );
    let text = response.text().await?;
    let mut samples = HashMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (name, value) = line.rsplit_once(' ').context("sample line")?;
        samples.insert(name.to_owned(), value.parse::<f64>()?);
    }
    Ok(samples)
}

/// A sample of [`scrape`]'s, 0 if absent.
pub fn sample(samples: &HashMap<String, f64>, name: &str) -> f64 {
    samples.get(name).copied().unwrap_or(0.0)
}

/// `serve --config FILE`, for [`RelayProcess::spawn`].
pub fn relay_command(bins: &Bins, config: &std::path::Path) -> std::process::Command {
    let mut command = std::process::Command::new(&bins.relay);
    command.args(["serve", "--config"]).arg(config);
    command
}

/// An agent's SSH side driven by hand, so a test can act between its steps: accepts any
/// host key (the relay in a test is the test's own).
#[derive(Default)]
pub struct HandDriven {
    /// When set, each channel the relay opens is confirmed only after this delay and
    /// then handed to the test; else confirmed at once and left alone.
    pub late_confirm: Option<(
        Duration,
        tokio::sync::mpsc::UnboundedSender<russh::Channel<russh::client::Msg>>,
    )>,
    /// While it holds `true`, each open is refused with `ResourceShortage`, as an agent
    /// holding as many channels as it allows refuses it.
    pub short: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

impl russh::client::Handler for HandDriven {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        _key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        Ok(true)
    }

    async fn server_channel_open_forwarded_tcpip(
        &mut self,
        channel: russh::Channel<russh::client::Msg>,
        _connected_address: &str,
        _connected_port: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: russh::client::ChannelOpenHandle,
        _session: &mut russh::client::Session,
    ) -> Result<(), Self::Error> {
        if self
            .short
            .as_ref()
            .is_some_and(|short| short.load(std::sync::atomic::Ordering::SeqCst))
        {
            reply
                .reject(russh::ChannelOpenFailure::ResourceShortage)
                .await;
            return Ok(());
        }
        let Some((delay, opened)) = self.late_confirm.clone() else {
            reply.accept().await;
            return Ok(());
        };
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            reply.accept().await;
            let _ = opened.send(channel);
        });
        Ok(())
    }
}

/// Connects to `relay` and logs in with `token` as an agent does: the session, and
/// whether the relay took the token.
pub async fn ssh_login(
    relay: std::net::SocketAddr,
    token: &str,
) -> Result<(russh::client::Handle<HandDriven>, bool)> {
    ssh_login_as(relay, token, HandDriven::default()).await
}

/// `ssh_login` with a handler set up by the test.
pub async fn ssh_login_as(
    relay: std::net::SocketAddr,
    token: &str,
    handler: HandDriven,
) -> Result<(russh::client::Handle<HandDriven>, bool)> {
    let config = std::sync::Arc::new(russh::client::Config::default());
    let mut ssh = russh::client::connect(config, relay, handler).await?;
    let auth = ssh
        .authenticate_password(postern_protocol::version::SSH_USER, token)
        .await?;
    Ok((ssh, auth.success()))
}

/// The relay's call channels to a [`hand_driven_agent`], as it confirms them.
pub type OpenedChannels = tokio::sync::mpsc::UnboundedReceiver<russh::Channel<russh::client::Msg>>;

/// The next channel the relay opens to a [`hand_driven_agent`], within 5 s.
pub async fn next_channel(
    opened: &mut OpenedChannels,
) -> Result<russh::Channel<russh::client::Msg>> {
    tokio::time::timeout(Duration::from_secs(5), opened.recv())
        .await
        .context("the relay opened no channel within 5 s")?
        .context("the session ended")
}

/// Reads one request head from a call channel of a [`hand_driven_agent`].
pub async fn read_request_head(channel: &mut russh::Channel<russh::client::Msg>) -> Result<()> {
    let mut head = Vec::new();
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout(Duration::from_secs(5), channel.wait()).await? {
            Some(russh::ChannelMsg::Data { data }) => head.extend_from_slice(&data),
            Some(_) => {}
            None => bail!("the channel ended before a request came"),
        }
    }
    Ok(())
}

/// A hand-driven agent `name` (created on `w`), online serving `connections`, that
/// confirms each channel the relay opens after `confirm` and hands it over: its session
/// and control channel (keep both, or it goes offline) and the channels.
pub async fn hand_driven_agent(
    w: &RelayWorld,
    name: &str,
    confirm: Duration,
    connections: &[&str],
) -> Result<(
    russh::client::Handle<HandDriven>,
    impl tokio::io::AsyncWrite + use<>,
    OpenedChannels,
)> {
    hand_driven_agent_as(w, name, confirm, connections, HandDriven::default()).await
}

/// [`hand_driven_agent`] with `handler`'s settings (its channel hand-over is set here).
pub async fn hand_driven_agent_as(
    w: &RelayWorld,
    name: &str,
    confirm: Duration,
    connections: &[&str],
    handler: HandDriven,
) -> Result<(
    russh::client::Handle<HandDriven>,
    impl tokio::io::AsyncWrite + use<>,
    OpenedChannels,
)> {
    let token = w.create_agent(name).await?;
    let (opened_tx, opened) = tokio::sync::mpsc::unbounded_channel();
    let handler = HandDriven {
        late_confirm: Some((confirm, opened_tx)),
        ..handler
    };
    let (ssh, accepted) = ssh_login_as(w.relay.ssh, &token, handler).await?;
    anyhow::ensure!(accepted, "the token was refused");
    ssh.tcpip_forward(postern_protocol::version::FORWARD_ADDRESS, 0)
        .await?;
    let (welcome, control) = say_hello(ssh.channel_open_session().await?, connections).await?;
    anyhow::ensure!(
        matches!(
            welcome,
            postern_protocol::control::RelayMessage::Welcome { .. }
        ),
        "the hello was answered {welcome:?}"
    );
    Ok((ssh, control, opened))
}

/// Sends the hello an agent serving `connections` sends on its control channel, and
/// reads the relay's answer. The write half comes back too: dropping it ends the channel.
pub async fn say_hello(
    control: russh::Channel<russh::client::Msg>,
    connections: &[&str],
) -> Result<(
    postern_protocol::control::RelayMessage,
    impl tokio::io::AsyncWrite + use<>,
)> {
    use postern_protocol::control::{AgentMessage, decode_line, encode_line};
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

    let (read, mut write) = tokio::io::split(control.into_stream());
    let hello = AgentMessage::Hello {
        protocol_version: postern_protocol::PROTOCOL_VERSION,
        agent_version: "test".into(),
        connections: connections.iter().map(|c| (*c).to_owned()).collect(),
    };
    write.write_all(&encode_line(&hello)).await?;
    write.flush().await?;
    let mut line = Vec::new();
    tokio::time::timeout(
        Duration::from_secs(10),
        tokio::io::BufReader::new(read).read_until(b'\n', &mut line),
    )
    .await
    .context("no answer to the hello within 10 s")??;
    Ok((decode_line(&line)?, write))
}

/// What [`hold_sqlite_lock`] holds.
pub enum SqliteLock {
    /// The write lock (`BEGIN IMMEDIATE`): readers go on, other writers wait.
    Write,
    /// The exclusive lock in rollback-journal mode: readers wait too.
    Exclusive,
}

/// Another process (python3's sqlite3) on `db`: takes `lock`, with `touch` writes a row
/// (so a snapshot taken before is stale once it commits, and the relay's revocation watch
/// sees a change), holds it for `hold` and commits — or, with no `hold`, until the
/// returned process is dropped. Returns once the lock is held.
pub fn hold_sqlite_lock(
    db: &std::path::Path,
    lock: SqliteLock,
    touch: bool,
    hold: Option<Duration>,
) -> Result<crate::pki::KillOnDrop> {
    use std::io::BufRead;
    let script = "import sqlite3, sys, time
c = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=10)
if sys.argv[2] == 'exclusive':
    c.execute('PRAGMA journal_mode=DELETE')
    c.execute('BEGIN EXCLUSIVE')
else:
    c.execute('BEGIN IMMEDIATE')
if sys.argv[3] == 'touch': c.execute('UPDATE api_keys SET created_at = created_at')
print('locked', flush=True)
while sys.argv[4] == 'forever': time.sleep(60)
time.sleep(float(sys.argv[4]))
c.execute('COMMIT')
";
    let mode = match lock {
        SqliteLock::Write => "write",
        SqliteLock::Exclusive => "exclusive",
    };
    let mut child = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(db)
        .args([mode, if touch { "touch" } else { "hold" }])
        .arg(hold.map_or("forever".to_owned(), |h| h.as_secs_f64().to_string()))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("python3")?;
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        std::io::BufReader::new(out).read_line(&mut line)?;
    }
    // Killed on the way out, should an assertion fail while it holds the lock.
    let child = crate::pki::KillOnDrop(child);
    if line.trim() != "locked" {
        bail!("python3 did not take the {mode} lock: {line:?}");
    }
    Ok(child)
}
