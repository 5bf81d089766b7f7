//! The local demo: a relay (SQLite in a temporary folder), an agent connected to
//! it, and an internal server that accepts only JWTs signed for it; one real call.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use postern_agent::config::ConfigFile;
use postern_agent::{AgentConfig, TunnelState};
use postern_protocol::SecretKind;
use postern_relay::secrets::new_token;
use postern_relay::store::{SqliteStore, Store};
use postern_relay::{RelayConfig, RelayListeners};
use postern_tests::internal_server::{InternalServer, Verifier};
use postern_tests::keys;
use postern_tests::temp::TempDir;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

fn main() -> std::process::ExitCode {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(demo()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn demo() -> Result<()> {
    let once = std::env::args().any(|a| a == "--once");
    let state = TempDir::new("demo")?;
    let shutdown = CancellationToken::new();

    // 1. The internal server: checks RS256 JWTs with audience "orders".
    let key = keys::rsa_2048()?;
    let internal = InternalServer::start(Verifier::Rs256(key.public_der.clone()), "orders").await?;

    // 2. The relay, on loopback ports chosen by the OS.
    let relay_config = RelayConfig {
        state_dir: state.path().join("relay"),
        ssh_listen: "127.0.0.1:0".parse()?,
        api_listen: "127.0.0.1:0".parse()?,
        ..RelayConfig::default()
    };
    let listeners = RelayListeners::bind(&relay_config).await?;
    let ssh_addr = listeners.ssh.local_addr()?;
    let api_addr = listeners.api.local_addr()?;
    let host_key = postern_relay::host_key::load_or_create(&relay_config.state_dir)?;
    let fingerprint = postern_relay::host_key::fingerprint(&host_key);
    let store = SqliteStore::open_in(&relay_config.state_dir)?;
    let token = new_token(SecretKind::AgentToken);
    store.create_agent("demo-agent", &token)?;
    let api_key = new_token(SecretKind::ApiKey);
    store.create_api_key("demo", &api_key)?;
    drop(store);
    let relay = tokio::spawn(postern_relay::run(
        relay_config,
        listeners,
        shutdown.clone(),
    ));

    // 3. The agent, with one connection to the internal server.
    state.write_private("orders.pem", &key.private_pem)?;
    let config_text = format!(
        r#"relay = "{ssh_addr}"
relay_fingerprint = "{fingerprint}"
token = "{token}"
# Beside this file: a demo must not take the system's agent socket (/run/postern as root).
status_socket = "agent.sock"

[connections.orders]
base_uri = "{base}"
timeout = "10s"

[connections.orders.auth]
type = "jwt_bearer"
algorithm = "RS256"
private_key_file = "orders.pem"
headers = {{ kid = "demo-key" }}
payload = {{ iss = "postern", sub = "demo-service", aud = "orders", iat = "{{{{now}}}}", exp = "{{{{now + 600}}}}" }}
"#,
        token = token.expose(),
        base = internal.base_uri(),
    );
    let config_path = state.write_private("agent.toml", &config_text)?;
    let agent_config =
        AgentConfig::resolve(ConfigFile::parse(&config_text)?, state.path(), &|_| {
            Err(std::env::VarError::NotPresent)
        })?;
    let socket = agent_config.status_socket.clone();
    let (tunnel_state, mut watch_state) = watch::channel(TunnelState::default());
    let agent = tokio::spawn(postern_agent::run(
        agent_config,
        None,
        shutdown.clone(),
        tunnel_state,
    ));
    tokio::time::timeout(
        Duration::from_secs(20),
        watch_state.wait_for(|s| s.connected),
    )
    .await
    .context("the agent did not connect within 20 s")??;

    // 4. One call through the tunnel, like the integration platform would make it.
    let url = format!(
        "http://{api_addr}/v1/agents/demo-agent/connections/orders/http/v2/orders?since=2026-01-01"
    );
    let response = reqwest::Client::new()
        .get(&url)
        .bearer_auth(api_key.expose())
        .send()
        .await?;
    let status = response.status();
    let body = response.text().await?;
    println!("postern demo: relay, agent and internal server are running on loopback.\n");
    println!("  relay SSH      {ssh_addr}  (host key {fingerprint})");
    println!("  relay API      http://{api_addr}");
    println!(
        "  internal API   {}  (accepts only RS256 JWTs with aud=orders)",
        internal.base_uri()
    );
    println!("  agent config   {}", config_path.display());
    println!("  agent status   {}\n", socket.display());
    println!("GET {url}\n→ {status}\n{body}\n");
    if !status.is_success() {
        bail!("the demo call failed");
    }
    println!(
        "Try it yourself:\n\n  curl -s -H 'Authorization: Bearer {}' '{url}'\n  cargo run -q -p postern-agent -- --config {} status\n",
        api_key.expose(),
        config_path.display()
    );
    if !once {
        println!("Press ctrl-c to stop.");
        postern_process::StopSignals::listen("the demo")
            .next()
            .await;
    }
    shutdown.cancel();
    let _ = agent.await;
    let _ = relay.await;
    Ok(())
}
