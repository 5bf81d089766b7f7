//! Helpers for the relay's operability tests: a relay with an admin key and an
//! open internal server, agents started from a token, and raw API requests.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
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

/// An answer from the API: status, headers, and the body as JSON (`Null` if none).
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub json: serde_json::Value,
}

impl Answer {
    /// The stable error code of an error answer.
    pub fn code(&self) -> &str {
        self.json["error"]["code"].as_str().unwrap_or_default()
    }
}

impl RelayWorld {
    pub async fn start(bins: Bins) -> Result<Self> {
        let dir = TempDir::new("relay-ops")?;
        let state = dir.path().join("relay");
        let relay = RelayProcess::start(&bins, &state, "127.0.0.1:0", "127.0.0.1:0")?;
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
        let n = self.configs.fetch_add(1, Ordering::Relaxed);
        let connections = format!(
            "\n[connections.orders]\nbase_uri = \"{}\"\ntimeout = \"20s\"\n",
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

/// A relay started with `serve --config FILE` (for settings the CLI has no flag
/// for), on 127.0.0.1:0; killed on drop.
pub struct ConfiguredRelay {
    child: std::process::Child,
    pub ssh: std::net::SocketAddr,
    pub api: std::net::SocketAddr,
    pub fingerprint: String,
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl ConfiguredRelay {
    /// Writes `relay.toml` in `dir` (state in `dir/relay`) with `extra` appended.
    pub fn start(bins: &Bins, dir: &std::path::Path, extra: &str) -> Result<Self> {
        Self::start_with_args(bins, dir, extra, &[])
    }

    /// As `start`, with more `serve` arguments (e.g. `--log-format json`).
    pub fn start_with_args(
        bins: &Bins,
        dir: &std::path::Path,
        extra: &str,
        args: &[&str],
    ) -> Result<Self> {
        use std::io::BufRead;
        let state = dir.join("relay");
        let config = dir.join("relay.toml");
        std::fs::write(
            &config,
            format!(
                "state_dir = {:?}\nssh_listen = \"127.0.0.1:0\"\napi_listen = \"127.0.0.1:0\"\n{extra}",
                state.to_string_lossy()
            ),
        )?;
        let mut child = std::process::Command::new(&bins.relay)
            .args(["serve", "--config"])
            .arg(&config)
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        if let Some(stderr) = child.stderr.take() {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(stderr)
                    .lines()
                    .map_while(Result::ok)
                {
                    if let Ok(mut l) = lines.lock() {
                        l.push(line.clone());
                    }
                    let _ = tx.send(line);
                }
            });
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = rx.recv_timeout(left) else {
                let _ = child.kill();
                bail!(
                    "relay did not start: {:?}",
                    lines.lock().map(|l| l.join("\n"))
                );
            };
            if line.contains("relay listening") {
                // Text lines hold `name=value`; JSON lines hold `"name":"value"`.
                let json: Option<serde_json::Value> = serde_json::from_str(&line).ok();
                let field = |name: &str| {
                    if let Some(v) = json.as_ref().and_then(|j| j["fields"][name].as_str()) {
                        return Ok(v.to_owned());
                    }
                    line.split_whitespace()
                        .find_map(|w| w.strip_prefix(&format!("{name}=")))
                        .map(str::to_owned)
                        .ok_or_else(|| anyhow::anyhow!("no {name}= in {line:?}"))
                };
                return Ok(Self {
                    ssh: field("ssh")?.parse()?,
                    api: field("api")?.parse()?,
                    fingerprint: field("fingerprint")?,
                    child,
                    lines,
                });
            }
        }
    }

    pub fn api_base(&self) -> String {
        format!("http://{}", self.api)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The relay's log lines, every one logged before this call (it waits `LOG_LATENCY`).
    pub fn log_lines(&self) -> Vec<String> {
        std::thread::sleep(crate::harness::LOG_LATENCY);
        self.lines.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// A cheap closure that reads the logs, for polling from async tasks.
    pub fn lines_handle(&self) -> std::sync::Arc<dyn Fn() -> String + Send + Sync> {
        let lines = self.lines.clone();
        std::sync::Arc::new(move || lines.lock().map(|l| l.join("\n")).unwrap_or_default())
    }

    /// The relay's logs, every line logged before this call (it waits `LOG_LATENCY`).
    pub fn logs(&self) -> String {
        self.log_lines().join("\n")
    }
}

impl Drop for ConfiguredRelay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
