//! TLS to internal servers: an internal CA, a server that demands a client
//! certificate, and `insecure_skip_verify` — against Python's ssl servers.

use std::time::Duration;

use anyhow::Result;
use postern_tests::harness::{
    AgentProcess, Api, RelayProcess, agent_cli, agent_config, create_agent, create_api_key,
};
use postern_tests::pki::{HTTPS_SERVER, KillOnDrop, make_pki, python_https};
use postern_tests::relay_support::error_code;
use postern_tests::temp::TempDir;

fn https_server(dir: &TempDir, client_ca: &str) -> Result<(KillOnDrop, u16)> {
    python_https(dir.path(), HTTPS_SERVER, &[client_ca])
}

#[tokio::test(flavor = "multi_thread")]
async fn internal_cas_client_certificates_and_insecure_mode() -> Result<()> {
    let dir = TempDir::new("tls")?;
    make_pki(dir.path())?;
    let (_plain, port) = https_server(&dir, "-")?;
    let (_mutual, mport) = https_server(&dir, "ca.pem")?;
    let bins = postern_tests::bins!();
    let state = dir.path().join("relay");
    let relay = RelayProcess::start(&bins, &state, "127.0.0.1:0", "127.0.0.1:0")?;
    let (_, token) = create_agent(&bins, &state, "a1")?;
    let api = Api::new(relay.api_base(), create_api_key(&bins, &state, "k")?);
    let connections = format!(
        r#"
[connections.unknown-ca]
base_uri = "https://127.0.0.1:{port}"
[connections.internal-ca]
base_uri = "https://127.0.0.1:{port}"
tls = {{ ca_file = "ca.pem" }}
[connections.no-client-cert]
base_uri = "https://127.0.0.1:{mport}"
tls = {{ ca_file = "ca.pem" }}
[connections.mtls]
base_uri = "https://127.0.0.1:{mport}"
tls = {{ ca_file = "ca.pem", client_cert_file = "client.pem", client_key_file = "client.key" }}
[connections.insecure]
base_uri = "https://127.0.0.1:{port}"
tls = {{ insecure_skip_verify = true }}
"#
    );
    let config = dir.write_private(
        "agent.toml",
        &agent_config(relay.ssh, &relay.fingerprint, &token, &connections),
    )?;
    let agent = AgentProcess::start(&bins, &config)?;
    api.wait_online("a1", true, Duration::from_secs(15)).await?;

    let r = api.call("a1", "unknown-ca", "/x").await?;
    assert_eq!(r.status(), 502);
    assert_eq!(error_code(&r.json().await?), "upstream_unreachable");
    let r = api.call("a1", "internal-ca", "/x").await?;
    assert_eq!(r.status(), 200, "{}", r.text().await?);
    let r = api.call("a1", "no-client-cert", "/x").await?;
    assert_eq!(
        r.status(),
        502,
        "a server that demands a client certificate refuses us without one"
    );
    let r = api.call("a1", "mtls", "/x").await?;
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await?;
    assert_eq!(body["client"], "postern-client");
    let r = api.call("a1", "insecure", "/x").await?;
    assert_eq!(r.status(), 200);
    assert!(
        agent.logs.contains("insecure_skip_verify is on"),
        "no loud warning at start"
    );

    // A client key others can read is refused at load.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        dir.path().join("client.key"),
        std::fs::Permissions::from_mode(0o644),
    )?;
    let out = agent_cli(&bins, &config, &["config", "check"])?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("chmod 600"));
    Ok(())
}
