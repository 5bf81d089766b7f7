//! The benchmark: postern beside an OpenSSH reverse tunnel (`ssh -N -R`) and direct loopback,
//! on one machine in one run — small calls (wrk), 1 GiB streams, many idle agents, signing,
//! and recovery after relay restarts — printed as one table. `tests/bench/run` is the entry.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use postern_agent::jwt::{Algorithm, JwtSigner, KeyMaterial, PayloadTemplate};
use postern_protocol::SecretKind;
use postern_relay::secrets::new_token;
use postern_relay::store::{SqliteStore, Store};
use postern_tests::harness::{AgentProcess, Api, Bins, RelayProcess, rss_kib};
use postern_tests::temp::TempDir;
use postern_tests::token_endpoint::{EndpointConfig, ExpiresIn, TokenEndpoint};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

#[derive(Parser, Clone)]
#[command(about = "postern beside ssh -R and direct loopback, one table")]
struct Args {
    /// Seconds per wrk run.
    #[arg(long, default_value_t = 15)]
    seconds: u64,
    /// Runs per figure; the median is reported.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Stream size in MiB.
    #[arg(long, default_value_t = 1024)]
    stream_mib: u64,
    /// Idle agent counts for the many-agents scenario.
    #[arg(long, value_delimiter = ',', default_values_t = [1000u64, 10000])]
    agents: Vec<u64>,
    /// `ssh -R` clients for sshd's memory per client.
    #[arg(long, default_value_t = 50)]
    ssh_clients: usize,
    /// Relay restarts in the recovery scenario.
    #[arg(long, default_value_t = 20)]
    restarts: usize,
    /// Seconds of signing per algorithm.
    #[arg(long, default_value_t = 2)]
    sign_seconds: u64,
    /// The relay binary (default: e2e-postern-relay beside this program).
    #[arg(long)]
    relay_bin: Option<PathBuf>,
    /// The agent binary (default: e2e-postern beside this program).
    #[arg(long)]
    agent_bin: Option<PathBuf>,
}

/// One table row: scenario, measure, postern, OpenSSH, direct.
struct Row {
    scenario: String,
    measure: &'static str,
    postern: Option<f64>,
    openssh: Option<f64>,
    direct: Option<f64>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Kills the child when dropped.
struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn wait_port(port: u16, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("nothing listens on {port} after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

// ---------------------------------------------------------------- the internal server

/// A small fast server: `/small` a short JSON answer, `/bytes/N` N zero bytes streamed,
/// `/sink` reads the request body and answers its length.
async fn fast_server(shutdown: CancellationToken) -> Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = listener.accept() => match r { Ok((s, _)) => s, Err(_) => continue },
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(answer);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

type AnyBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

async fn answer(request: Request<Incoming>) -> Result<Response<AnyBody>, std::convert::Infallible> {
    let path = request.uri().path().to_owned();
    let body: AnyBody = if let Some(n) = path
        .rsplit_once("/bytes/")
        .and_then(|(_, n)| n.parse::<u64>().ok())
    {
        let chunk = Bytes::from(vec![0u8; 64 * 1024]);
        let chunks = n.div_ceil(chunk.len() as u64);
        let last = n - (chunks.saturating_sub(1)) * chunk.len() as u64;
        let stream = futures_util::stream::iter((0..chunks).map(move |i| {
            let part = if i + 1 == chunks {
                chunk.slice(..last as usize)
            } else {
                chunk.clone()
            };
            Ok::<_, std::io::Error>(Frame::data(part))
        }));
        BodyExt::boxed(StreamBody::new(stream))
    } else if path.ends_with("/sink") {
        let mut body = request.into_body();
        let mut n = 0u64;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(f) => n += f.data_ref().map_or(0, |d| d.len() as u64),
                Err(_) => break,
            }
        }
        Full::new(Bytes::from(format!("{{\"received\":{n}}}")))
            .map_err(|e| match e {})
            .boxed()
    } else {
        Full::new(Bytes::from_static(b"{\"ok\":true,\"items\":[1,2,3]}"))
            .map_err(|e| match e {})
            .boxed()
    };
    let mut response = Response::new(body);
    response.headers_mut().insert(
        "content-type",
        http::HeaderValue::from_static("application/json"),
    );
    if let Some(n) = path
        .rsplit_once("/bytes/")
        .and_then(|(_, n)| n.parse::<u64>().ok())
    {
        response
            .headers_mut()
            .insert("content-length", http::HeaderValue::from(n));
    }
    Ok(response)
}

// ---------------------------------------------------------------- OpenSSH

struct Sshd {
    _daemon: Kill,
    port: u16,
    key: PathBuf,
}

fn start_sshd(dir: &Path) -> Result<Sshd> {
    std::fs::create_dir_all("/run/sshd")?;
    let keygen = |name: &str| -> Result<PathBuf> {
        let path = dir.join(name);
        let ok = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&path)
            .status()?
            .success();
        if !ok {
            bail!("ssh-keygen failed");
        }
        Ok(path)
    };
    let host = keygen("sshd_host")?;
    let client = keygen("client")?;
    std::fs::copy(client.with_extension("pub"), dir.join("authorized_keys"))?;
    let port = free_port()?;
    let config = dir.join("sshd_config");
    std::fs::write(
        &config,
        format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nPidFile {}\nAuthorizedKeysFile {}\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nPermitRootLogin prohibit-password\nStrictModes no\nAllowTcpForwarding yes\nMaxSessions 100\nMaxStartups 1000\nLogLevel ERROR\n",
            host.display(),
            dir.join("sshd.pid").display(),
            dir.join("authorized_keys").display()
        ),
    )?;
    let daemon = Command::new("/usr/sbin/sshd")
        .args(["-D", "-e", "-f"])
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting sshd")?;
    let daemon = Kill(daemon);
    wait_port(port, Duration::from_secs(10))?;
    Ok(Sshd {
        _daemon: daemon,
        port,
        key: client,
    })
}

/// `ssh -N -R remote:127.0.0.1:local`; returns once `remote` accepts.
fn ssh_reverse(sshd: &Sshd, remote: u16, local: u16) -> Result<Kill> {
    let child = Command::new("ssh")
        .args([
            "-N",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "ExitOnForwardFailure=yes",
            "-o",
            "LogLevel=ERROR",
            "-i",
        ])
        .arg(&sshd.key)
        .args([
            "-p",
            &sshd.port.to_string(),
            "-R",
            &format!("{remote}:127.0.0.1:{local}"),
            "root@127.0.0.1",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting ssh -R")?;
    let child = Kill(child);
    wait_port(remote, Duration::from_secs(15))?;
    Ok(child)
}

// ---------------------------------------------------------------- wrk

struct WrkResult {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
}

fn wrk(url: &str, connections: u64, seconds: u64, bearer: Option<&str>) -> Result<WrkResult> {
    let mut cmd = Command::new("wrk");
    cmd.args([
        "--latency",
        "-t",
        "2",
        "-c",
        &connections.to_string(),
        "-d",
        &format!("{seconds}s"),
    ]);
    if let Some(key) = bearer {
        cmd.args(["-H", &format!("Authorization: Bearer {key}")]);
    }
    let out = cmd.arg(url).output().context("running wrk")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let number = |prefix: &str| -> Option<String> {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix).map(|r| r.trim().to_owned()))
    };
    let ms = |v: String| -> f64 {
        let (n, unit) = v.split_at(v.find(|c: char| c.is_alphabetic()).unwrap_or(v.len()));
        let n: f64 = n.parse().unwrap_or(f64::NAN);
        match unit {
            "us" => n / 1000.0,
            "s" => n * 1000.0,
            _ => n,
        }
    };
    let rps = number("Requests/sec:")
        .and_then(|v| v.parse().ok())
        .context(text.clone())?;
    let errors = number("Non-2xx or 3xx responses:")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
        + number("Socket errors:").map_or(0, |_| 1);
    Ok(WrkResult {
        rps,
        p50_ms: number("50%").map(ms).unwrap_or(f64::NAN),
        p99_ms: number("99%").map(ms).unwrap_or(f64::NAN),
        errors,
    })
}

/// Median requests/s and p50/p99 of `repeats` wrk runs.
fn wrk_median(
    url: &str,
    connections: u64,
    args: &Args,
    bearer: Option<&str>,
) -> Result<(f64, f64, f64, u64)> {
    let mut rps = Vec::new();
    let mut p50 = Vec::new();
    let mut p99 = Vec::new();
    let mut errors = 0;
    for _ in 0..args.repeats {
        let r = wrk(url, connections, args.seconds, bearer)?;
        rps.push(r.rps);
        p50.push(r.p50_ms);
        p99.push(r.p99_ms);
        errors += r.errors;
    }
    Ok((median(rps), median(p50), median(p99), errors))
}

// ---------------------------------------------------------------- postern

struct Postern {
    relay: RelayProcess,
    _agent: AgentProcess,
    api: Api,
    state: PathBuf,
    config: PathBuf,
}

/// Adds `count` agents to the store at `state` (before the relay runs); returns their tokens.
fn enrol(state: &Path, first: u64, count: u64) -> Result<Vec<String>> {
    let store = SqliteStore::open_in(state)?;
    (first..first + count)
        .map(|i| {
            let token = new_token(SecretKind::AgentToken);
            store.create_agent(&format!("a{i}"), &token)?;
            Ok(token.expose().to_owned())
        })
        .collect()
}

fn relay_command(bins: &Bins, config: &Path) -> Command {
    let mut cmd = Command::new(&bins.relay);
    cmd.args(["serve", "--config"]).arg(config);
    cmd
}

async fn start_postern(
    bins: &Bins,
    dir: &Path,
    fast: SocketAddr,
    exchange: &TokenEndpoint,
    rsa_pem: &Path,
) -> Result<Postern> {
    let state = dir.join("relay");
    std::fs::create_dir_all(&state)?;
    let token = enrol(&state, 0, 1)?.remove(0);
    let key = new_token(SecretKind::ApiKey);
    SqliteStore::open_in(&state)?.create_api_key("bench", &key)?;
    let relay_toml = dir.join("relay.toml");
    std::fs::write(
        &relay_toml,
        format!(
            "state_dir = \"{}\"\nssh_listen = \"127.0.0.1:0\"\napi_listen = \"127.0.0.1:0\"\nmax_calls_per_agent = 4096\nmax_request_body = 4294967296\ncall_timeout = \"600s\"\n",
            state.display()
        ),
    )?;
    let relay = RelayProcess::spawn(relay_command(bins, &relay_toml), &state)?;
    let base = format!("http://{fast}/api");
    let limits = "max_concurrent_calls = 4096\nmax_request_body = 4294967296\nmax_response_body = 4294967296\ntimeout = \"600s\"\n";
    let connections = format!(
        "[connections.none]\nbase_uri = \"{base}\"\n{limits}\n\
         [connections.hs]\nbase_uri = \"{base}\"\n{limits}\n[connections.hs.auth]\ntype = \"jwt_bearer\"\nalgorithm = \"HS256\"\nsecret = \"bench-secret-of-thirty-two-bytes!\"\npayload = {{ iss = \"bench\", aud = \"api\" }}\nlifetime = \"5m\"\n\n\
         [connections.rs]\nbase_uri = \"{base}\"\n{limits}\n[connections.rs.auth]\ntype = \"jwt_bearer\"\nalgorithm = \"RS256\"\nprivate_key_file = \"{}\"\npayload = {{ iss = \"postern-edge\", sub = \"svc\", aud = \"https://idp.test/token\", jti = \"{{{{uuid}}}}\" }}\nlifetime = \"5m\"\n[connections.rs.auth.exchange]\ntoken_url = \"{}\"\n",
        rsa_pem.display(),
        exchange.token_url()
    );
    let config = dir.join("agent.toml");
    let text =
        postern_tests::harness::agent_config(relay.ssh, &relay.fingerprint, &token, &connections);
    std::fs::write(&config, text)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600))?;
    let agent = AgentProcess::start(bins, &config)?;
    let mut api = Api::new(relay.api_base(), key.expose().to_owned());
    // A call that hangs must end the run with an error, not stall it.
    api.http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(120))
        .build()?;
    api.wait_online("a0", true, Duration::from_secs(30)).await?;
    Ok(Postern {
        relay,
        _agent: agent,
        api,
        state,
        config,
    })
}

fn peak_rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("VmHWM:")
                    .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            })
        })
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

/// MB/s of a download of `mib` MiB from `url`, and of an upload of as much to `sink`.
async fn stream_rates(
    client: &reqwest::Client,
    url: &str,
    sink: &str,
    bearer: Option<&str>,
    mib: u64,
) -> Result<(f64, f64)> {
    let bytes = mib * 1024 * 1024;
    let started = Instant::now();
    let mut request = client.get(format!("{url}/bytes/{bytes}"));
    if let Some(b) = bearer {
        request = request.bearer_auth(b);
    }
    let mut response = request.send().await?.error_for_status()?;
    let mut got = 0u64;
    while let Some(chunk) = response.chunk().await? {
        got += chunk.len() as u64;
    }
    if got != bytes {
        bail!("download got {got} of {bytes} bytes");
    }
    let down = bytes as f64 / 1e6 / started.elapsed().as_secs_f64();
    let chunk = Bytes::from(vec![0u8; 64 * 1024]);
    let chunks = bytes / chunk.len() as u64;
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(
        (0..chunks).map(move |_| Ok::<_, std::io::Error>(chunk.clone())),
    ));
    let started = Instant::now();
    let mut request = client.post(sink).body(body).header("content-length", bytes);
    if let Some(b) = bearer {
        request = request.bearer_auth(b);
    }
    let answer = request.send().await?.error_for_status()?.text().await?;
    if !answer.contains(&format!("\"received\":{bytes}")) {
        bail!("upload answer: {answer}");
    }
    let up = bytes as f64 / 1e6 / started.elapsed().as_secs_f64();
    Ok((down, up))
}

// ---------------------------------------------------------------- scenarios

fn sign_rate(algorithm: Algorithm, key: KeyMaterial, seconds: u64) -> Result<f64> {
    let payload = serde_json::json!({"iss": "bench", "aud": "api", "iat": "{{now}}", "exp": "{{now + 300}}", "jti": "{{uuid}}"});
    let serde_json::Value::Object(payload) = payload else {
        bail!("payload")
    };
    let signer = JwtSigner::new(
        algorithm,
        key,
        &BTreeMap::new(),
        PayloadTemplate::parse(&payload)?,
    )?;
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed() < Duration::from_secs(seconds) {
        for _ in 0..16 {
            signer.sign(1_700_000_000, &|_| None)?;
        }
        n += 16;
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

fn openssl_key(dir: &Path, name: &str, args: &[&str]) -> Result<String> {
    let path = dir.join(name);
    let ok = Command::new("openssl")
        .args(args)
        .arg("-out")
        .arg(&path)
        .status()?
        .success();
    if !ok {
        bail!("openssl {args:?} failed");
    }
    Ok(std::fs::read_to_string(path)?)
}

/// Idle agents in one process (the library's daemon, as many times as asked).
async fn swarm(
    relay: &RelayProcess,
    tokens: &[String],
    dir: &Path,
    shutdown: &CancellationToken,
) -> Result<Vec<tokio::task::JoinHandle<()>>> {
    let mut tasks = Vec::new();
    // No status sockets: 10,000 of them would cost as many fds, and the daemon checks a
    // socket path with a blocking connect. A folder that cannot be made makes it skip at once.
    for token in tokens {
        let text = format!(
            "relay = \"{}\"\nrelay_fingerprint = \"{}\"\ntoken = \"{token}\"\nstatus_socket = \"/proc/postern-bench-none/agent.sock\"\n[connections.o]\nbase_uri = \"http://127.0.0.1:9/\"\n",
            relay.ssh, relay.fingerprint,
        );
        let file =
            postern_agent::config::ConfigFile::parse(&text).map_err(|e| anyhow::anyhow!("{e}"))?;
        let config = postern_agent::AgentConfig::resolve(file, dir, &|_| None)?;
        let (state, _rx) = watch::channel(postern_agent::TunnelState::default());
        let shutdown = shutdown.clone();
        tasks.push(tokio::spawn(async move {
            let _ = postern_agent::run(config, None, shutdown, state).await;
        }));
    }
    Ok(tasks)
}

async fn call_p50_ms(api: &Api, agent: &str, connection: &str, n: usize) -> Result<f64> {
    let mut times = Vec::new();
    for _ in 0..n {
        let started = Instant::now();
        let r = api.call(agent, connection, "/small").await?;
        if r.status() != 200 {
            bail!("call to {agent}: {}", r.status());
        }
        r.bytes().await?;
        times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(median(times))
}

/// The table, printed a row at a time so a run that fails late still shows what it measured.
struct Table;

impl Table {
    fn new() -> Self {
        println!(
            "| scenario | measure | postern | ssh -R | direct | postern/ssh -R | postern/direct |"
        );
        println!("|---|---|---:|---:|---:|---:|---:|");
        Self
    }

    fn push(&mut self, r: Row) {
        use std::io::Write;
        println!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            r.scenario,
            r.measure,
            show(r.postern),
            show(r.openssh),
            show(r.direct),
            ratio(r.postern, r.openssh),
            ratio(r.postern, r.direct)
        );
        let _ = std::io::stdout().flush();
    }
}

async fn bench(args: Args) -> Result<()> {
    let bins = Bins::beside_this_program(args.relay_bin.clone(), args.agent_bin.clone())?;
    let dir = TempDir::new("bench")?;
    let shutdown = CancellationToken::new();
    let fast = fast_server(shutdown.clone()).await?;
    let rsa = postern_tests::keys::rsa_2048()?;
    let rsa_pem = dir.write_private("rsa.pem", &rsa.private_pem)?;
    let exchange = TokenEndpoint::start(EndpointConfig {
        key: jsonwebtoken::DecodingKey::from_rsa_der(&rsa.public_der),
        algorithm: jsonwebtoken::Algorithm::RS256,
        audience: "https://idp.test/token".into(),
        issuer: "postern-edge".into(),
        grant_type: "urn:ietf:params:oauth:grant-type:jwt-bearer".into(),
        expires_in: ExpiresIn::Number(3600),
        delay: Duration::ZERO,
    })
    .await?;
    let postern = start_postern(&bins, dir.path(), fast, &exchange, &rsa_pem).await?;
    let sshd = start_sshd(dir.path())?;
    let ssh_port = free_port()?;
    let _tunnel = ssh_reverse(&sshd, ssh_port, fast.port())?;
    let mut rows = Table::new();
    let call = |c: &str| {
        format!(
            "{}/v1/agents/a0/connections/{c}/http/small",
            postern.api.base
        )
    };
    let key = postern.api.key.clone();

    // 1. Small calls.
    for connections in [32u64, 256] {
        let direct = wrk_median(&format!("http://{fast}/small"), connections, &args, None)?;
        let ssh = wrk_median(
            &format!("http://127.0.0.1:{ssh_port}/small"),
            connections,
            &args,
            None,
        )?;
        let exchanges_before = exchange.exchanges().len();
        for (label, conn) in [
            ("auth none", "none"),
            ("HS256 bearer", "hs"),
            ("RS256 + RFC 7523 (cached)", "rs"),
        ] {
            let p = wrk_median(&call(conn), connections, &args, Some(&key))?;
            let scenario = format!("small calls, {connections} conns, {label}");
            let openssh = (conn == "none").then_some(ssh);
            let direct = (conn == "none").then_some(direct);
            rows.push(Row {
                scenario: scenario.clone(),
                measure: "req/s",
                postern: Some(p.0),
                openssh: openssh.map(|s| s.0),
                direct: direct.map(|d| d.0),
            });
            rows.push(Row {
                scenario: scenario.clone(),
                measure: "p50 ms",
                postern: Some(p.1),
                openssh: openssh.map(|s| s.1),
                direct: direct.map(|d| d.1),
            });
            rows.push(Row {
                scenario: scenario.clone(),
                measure: "p99 ms",
                postern: Some(p.2),
                openssh: openssh.map(|s| s.2),
                direct: direct.map(|d| d.2),
            });
            rows.push(Row {
                scenario,
                measure: "non-2xx",
                postern: Some(p.3 as f64),
                openssh: openssh.map(|s| s.3 as f64),
                direct: direct.map(|d| d.3 as f64),
            });
        }
        rows.push(Row {
            scenario: format!("small calls, {connections} conns, RS256 + RFC 7523"),
            measure: "token exchanges",
            postern: Some((exchange.exchanges().len() - exchanges_before) as f64),
            openssh: None,
            direct: None,
        });
    }

    // 2. Streams.
    let client = reqwest::Client::builder().no_proxy().build()?;
    let (pd, pu) = stream_rates(
        &client,
        &format!("{}/v1/agents/a0/connections/none/http", postern.api.base),
        &format!(
            "{}/v1/agents/a0/connections/none/http/sink",
            postern.api.base
        ),
        Some(&key),
        args.stream_mib,
    )
    .await?;
    let (sd, su) = stream_rates(
        &client,
        &format!("http://127.0.0.1:{ssh_port}"),
        &format!("http://127.0.0.1:{ssh_port}/sink"),
        None,
        args.stream_mib,
    )
    .await?;
    let (dd, du) = stream_rates(
        &client,
        &format!("http://{fast}"),
        &format!("http://{fast}/sink"),
        None,
        args.stream_mib,
    )
    .await?;
    let name = format!("stream {} MiB", args.stream_mib);
    rows.push(Row {
        scenario: format!("{name} download"),
        measure: "MB/s",
        postern: Some(pd),
        openssh: Some(sd),
        direct: Some(dd),
    });
    rows.push(Row {
        scenario: format!("{name} upload"),
        measure: "MB/s",
        postern: Some(pu),
        openssh: Some(su),
        direct: Some(du),
    });
    rows.push(Row {
        scenario: name.clone(),
        measure: "relay peak RSS MiB",
        postern: Some(peak_rss_mib(postern.relay.pid())),
        openssh: None,
        direct: None,
    });
    let agent_pid = postern._agent.pid();
    rows.push(Row {
        scenario: name,
        measure: "agent peak RSS MiB",
        postern: Some(peak_rss_mib(agent_pid)),
        openssh: None,
        direct: None,
    });

    // 4. Signing (one core).
    let ec = openssl_key(
        dir.path(),
        "ec.pem",
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ],
    )?;
    let ed = openssl_key(dir.path(), "ed.pem", &["genpkey", "-algorithm", "ed25519"])?;
    for (alg, key) in [
        (
            Algorithm::HS256,
            KeyMaterial::Secret(b"bench-secret-of-thirty-two-bytes!".to_vec()),
        ),
        (
            Algorithm::RS256,
            KeyMaterial::PrivateKeyPem(rsa.private_pem.clone()),
        ),
        (
            Algorithm::PS256,
            KeyMaterial::PrivateKeyPem(rsa.private_pem.clone()),
        ),
        (Algorithm::ES256, KeyMaterial::PrivateKeyPem(ec.clone())),
        (Algorithm::EdDSA, KeyMaterial::PrivateKeyPem(ed.clone())),
    ] {
        rows.push(Row {
            scenario: format!("signing {alg:?}"),
            measure: "JWTs/s/core",
            postern: Some(sign_rate(alg, key, args.sign_seconds)?),
            openssh: None,
            direct: None,
        });
    }

    // 5. Recovery: relay restart → calls served again.
    let mut relay = postern.relay;
    let relay_toml = postern.config.with_file_name("relay.toml");
    let pinned = std::fs::read_to_string(&relay_toml)?
        .replace(
            "ssh_listen = \"127.0.0.1:0\"",
            &format!("ssh_listen = \"{}\"", relay.ssh),
        )
        .replace(
            "api_listen = \"127.0.0.1:0\"",
            &format!("api_listen = \"{}\"", relay.api),
        );
    std::fs::write(&relay_toml, pinned)?;
    let mut recoveries = Vec::new();
    for _ in 0..args.restarts {
        relay.terminate()?;
        drop(relay);
        let started = Instant::now();
        relay = RelayProcess::spawn(relay_command(&bins, &relay_toml), &postern.state)?;
        let deadline = started + Duration::from_secs(30);
        loop {
            if postern
                .api
                .call("a0", "none", "/small")
                .await
                .is_ok_and(|r| r.status() == 200)
            {
                break;
            }
            if Instant::now() > deadline {
                bail!("no call served 30 s after a relay restart");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        recoveries.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    let max = recoveries.iter().copied().fold(0.0, f64::max);
    rows.push(Row {
        scenario: format!("recovery over {} relay restarts", args.restarts),
        measure: "p50 ms",
        postern: Some(median(recoveries.clone())),
        openssh: None,
        direct: None,
    });
    rows.push(Row {
        scenario: format!("recovery over {} relay restarts", args.restarts),
        measure: "max ms",
        postern: Some(max),
        openssh: None,
        direct: None,
    });

    // 3. Many idle agents on the same relay (enrolled straight into its store).
    let one_p50 = call_p50_ms(&postern.api, "a0", "none", 200).await?;
    let mut enrolled = 1u64;
    for &n in &args.agents {
        relay.terminate()?;
        drop(relay);
        let tokens = enrol(&postern.state, enrolled, n)?;
        enrolled += n;
        relay = RelayProcess::spawn(relay_command(&bins, &relay_toml), &postern.state)?;
        postern
            .api
            .wait_online("a0", true, Duration::from_secs(30))
            .await?;
        let before = rss_kib(relay.pid())?;
        let swarm_stop = CancellationToken::new();
        let started = Instant::now();
        let tasks = swarm(&relay, &tokens, dir.path(), &swarm_stop).await?;
        let limit = Duration::from_secs(120);
        loop {
            let online = Command::new("sh")
                .arg("-c")
                .arg(format!("ls /proc/{}/fd | wc -l", relay.pid()))
                .output()?;
            let fds: u64 = String::from_utf8_lossy(&online.stdout)
                .trim()
                .parse()
                .unwrap_or(0);
            if fds >= n + 10 {
                break;
            }
            if started.elapsed() > limit {
                bail!("{n} agents not connected within {limit:?} ({fds} fds)");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Sessions are up once their hello is registered; wait for the last one to be listed.
        postern
            .api
            .wait_online(&format!("a{}", enrolled - 1), true, limit)
            .await?;
        let connect_s = started.elapsed().as_secs_f64();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let after = rss_kib(relay.pid())?;
        let p50 = call_p50_ms(&postern.api, "a0", "none", 200).await?;
        let scenario = format!("{n} idle agents");
        rows.push(Row {
            scenario: scenario.clone(),
            measure: "relay KiB/agent",
            postern: Some(after.saturating_sub(before) as f64 / n as f64),
            openssh: None,
            direct: None,
        });
        rows.push(Row {
            scenario: scenario.clone(),
            measure: "s to connect all",
            postern: Some(connect_s),
            openssh: None,
            direct: None,
        });
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
    let mut clients = Vec::new();
    let sshd_pss = || -> f64 {
        let out = Command::new("sh").arg("-c").arg("for p in $(pgrep -f 'sshd: root'); do awk '/^Pss:/{s+=$2} END{print s}' /proc/$p/smaps_rollup; done | awk '{t+=$1} END{print t+0}'").output();
        out.ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(f64::NAN)
    };
    let base = sshd_pss();
    for _ in 0..args.ssh_clients {
        let port = free_port()?;
        clients.push(ssh_reverse(&sshd, port, fast.port())?);
    }
    let per_client = (sshd_pss() - base) / args.ssh_clients.max(1) as f64;
    rows.push(Row {
        scenario: format!("{} ssh -R clients", args.ssh_clients),
        measure: "sshd KiB/client (PSS)",
        postern: None,
        openssh: Some(per_client),
        direct: None,
    });
    drop(clients);
    drop(relay);
    shutdown.cancel();
    Ok(())
}

fn show(v: Option<f64>) -> String {
    match v {
        None => "—".into(),
        Some(x) if x.is_nan() => "n/a".into(),
        Some(x) if x >= 100.0 => format!("{x:.0}"),
        Some(x) => format!("{x:.2}"),
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 && a.is_finite() && b.is_finite() => format!("{:.2}×", a / b),
        _ => "—".into(),
    }
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("bench: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(bench(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
