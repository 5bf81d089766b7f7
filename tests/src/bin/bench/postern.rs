//! postern under test: a relay and an agent as separate processes with the bench's
//! connections (none, HS256, HS256 with a jti, RS256 + RFC 7523), agents enrolled straight
//! into the store.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;
use postern_protocol::SecretKind;
use postern_relay::secrets::new_token;
use postern_relay::store::{SqliteStore, Store};
use postern_tests::harness::{AgentProcess, Api, Bins, RelayProcess};
use postern_tests::relay_support::configured_relay;
use postern_tests::token_endpoint::TokenEndpoint;
use std::net::SocketAddr;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub struct Postern {
    pub relay: RelayProcess,
    pub agent: AgentProcess,
    pub api: Api,
    pub state: PathBuf,
    /// The relay's config, with the ports it first bound, so restarts keep them.
    pub relay_toml: PathBuf,
}

/// Adds `count` agents to the store at `state` (before the relay runs); returns their tokens.
pub fn enrol(state: &Path, first: u64, count: u64) -> Result<Vec<String>> {
    let store = SqliteStore::open_in(state)?;
    (first..first + count)
        .map(|i| {
            let token = new_token(SecretKind::AgentToken);
            store.create_agent(&format!("a{i}"), &token)?;
            Ok(token.expose().to_owned())
        })
        .collect()
}

pub async fn start_postern(
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
    let relay = configured_relay(
        bins,
        dir,
        "max_calls_per_agent = 4096\nmax_request_body = 4294967296\ncall_timeout = \"600s\"\n",
        &[],
    )?;
    let relay_toml = dir.join("relay.toml");
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
    let base = format!("http://{fast}/api");
    let limits = "max_concurrent_calls = 4096\nmax_request_body = 4294967296\nmax_response_body = 4294967296\ntimeout = \"600s\"\n";
    // HS256 per call: `hs` is signed once a second (no `{{uuid}}`), `hsj` for every call.
    let hs256 = |name: &str, extra_claims: &str| {
        format!(
            "[connections.{name}]\nbase_uri = \"{base}\"\n{limits}\n[connections.{name}.auth]\ntype = \"jwt_bearer\"\nalgorithm = \"HS256\"\nsecret = \"bench-secret-of-thirty-two-bytes!\"\npayload = {{ iss = \"bench\", aud = \"api\"{extra_claims} }}\nlifetime = \"5m\"\n\n"
        )
    };
    let connections = format!(
        "[connections.none]\nbase_uri = \"{base}\"\n{limits}\n\
         {}{}\
         [connections.rs]\nbase_uri = \"{base}\"\n{limits}\n[connections.rs.auth]\ntype = \"jwt_bearer\"\nalgorithm = \"RS256\"\nprivate_key_file = \"{}\"\npayload = {{ iss = \"postern-edge\", sub = \"svc\", aud = \"https://idp.test/token\", jti = \"{{{{uuid}}}}\" }}\nlifetime = \"5m\"\n[connections.rs.auth.exchange]\ntoken_url = \"{}\"\n",
        hs256("hs", ""),
        hs256("hsj", ", jti = \"{{uuid}}\""),
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
        agent,
        api,
        state,
        relay_toml,
    })
}

/// Idle agents in one process (the library's daemon, as many times as asked).
pub async fn swarm(
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
        let config = postern_agent::AgentConfig::resolve(file, dir, &|_| {
            Err(std::env::VarError::NotPresent)
        })?;
        let (state, _rx) = watch::channel(postern_agent::TunnelState::default());
        let shutdown = shutdown.clone();
        tasks.push(tokio::spawn(async move {
            let _ = postern_agent::run(config, None, shutdown, state).await;
        }));
    }
    Ok(tasks)
}
