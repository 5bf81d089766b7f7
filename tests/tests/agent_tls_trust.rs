//! The system's CA roots are shared by all of an agent's clients, but a connection's
//! `ca_file` and client certificate stay its own, and a reload that changes them counts.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Result, ensure};
use postern_tests::harness::{
    AgentProcess, Api, RelayProcess, agent_cli, agent_command, agent_config, create_agent,
    create_api_key, output_text,
};
use postern_tests::internal_server::{InternalServer, Verifier};
use postern_tests::pki::{HTTPS_SERVER, KillOnDrop, client_certificate, make_pki, python_https};
use postern_tests::relay_support::{error_code, eventually, refusal};
use postern_tests::temp::TempDir;

/// A relay, an agent `a1` on it, and the API to call through it.
struct World {
    dir: TempDir,
    bins: postern_tests::harness::Bins,
    relay: RelayProcess,
    token: String,
    api: Api,
}

impl World {
    fn start(dir: TempDir) -> Result<Self> {
        let bins = postern_tests::bins!();
        let state = dir.path().join("relay");
        let relay = RelayProcess::start(&bins, &state, "127.0.0.1:0", "127.0.0.1:0")?;
        let (_, token) = create_agent(&bins, &state, "a1")?;
        let api = Api::new(relay.api_base(), create_api_key(&bins, &state, "k")?);
        Ok(Self {
            dir,
            bins,
            relay,
            token,
            api,
        })
    }

    fn write_config(&self, connections: &str) -> Result<std::path::PathBuf> {
        Ok(self.dir.write_private(
            "agent.toml",
            &agent_config(
                self.relay.ssh,
                &self.relay.fingerprint,
                &self.token,
                connections,
            ),
        )?)
    }

    /// The status of a call on `connection`, and its postern error code if it has one.
    async fn call(&self, connection: &str) -> Result<(u16, String, serde_json::Value)> {
        let r = self.api.call("a1", connection, "/x").await?;
        let status = r.status().as_u16();
        let body: serde_json::Value = r.json().await?;
        let code = if status == 502 {
            error_code(&body).to_owned()
        } else {
            String::new()
        };
        Ok((status, code, body))
    }

    /// Asserts that each connection is served (200) or refused for its TLS (502
    /// upstream_unreachable) as `expected` says.
    async fn expect_trust(&self, expected: &[(&str, bool)]) -> Result<()> {
        for (connection, trusted) in expected {
            let (status, code, _) = self.call(connection).await?;
            if *trusted {
                ensure!(
                    status == 200,
                    "{connection} answered {status} {code}, not 200"
                );
            } else {
                ensure!(
                    (status, code.as_str()) == (502, "upstream_unreachable"),
                    "{connection} answered {status} {code}: it trusted a CA that is not its own"
                );
            }
        }
        Ok(())
    }

    fn reload(&self, config: &Path) -> Result<()> {
        let out = agent_cli(&self.bins, config, &["reload"])?;
        ensure!(out.status.success(), "reload: {}", output_text(&out));
        Ok(())
    }

    /// `postern ARGS --config CONFIG` with `bundle` as the system's only CA roots
    /// (`SSL_CERT_FILE`; `SSL_CERT_DIR` an empty folder).
    fn agent_with_roots(&self, config: &Path, bundle: &Path, args: &[&str]) -> Result<Command> {
        let no_certs = self.dir.path().join("no-certs");
        std::fs::create_dir_all(&no_certs)?;
        let mut command = agent_command(&self.bins, config, args);
        command
            .env("SSL_CERT_FILE", bundle)
            .env("SSL_CERT_DIR", no_certs);
        Ok(command)
    }
}

/// A folder with CA X (`ca.pem`), whose certificate the HTTPS server shows, and a second
/// CA, Y (`y/ca.pem`), that signed nothing the server shows; the server and its port.
fn two_cas_and_a_server(name: &str) -> Result<(TempDir, KillOnDrop, u16)> {
    let dir = TempDir::new(name)?;
    make_pki(dir.path())?;
    std::fs::create_dir(dir.path().join("y"))?;
    make_pki(&dir.path().join("y"))?;
    let (server, port) = python_https(dir.path(), HTTPS_SERVER, &["-"])?;
    Ok((dir, server, port))
}

/// The "system" CA bundle the agent is given as `SSL_CERT_FILE` (see
/// [`World::agent_with_roots`]), holding `pems`.
fn system_bundle(dir: &TempDir, pems: &str) -> Result<std::path::PathBuf> {
    let bundle = dir.path().join("bundle.pem");
    std::fs::write(&bundle, pems)?;
    Ok(bundle)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connections_ca_file_is_trusted_by_its_client_only_and_reloads() -> Result<()> {
    let (dir, _server, port) = two_cas_and_a_server("tls-trust")?;
    let w = World::start(dir)?;
    // Connections without the server's CA sort before and after the one with it, so
    // neither build order lets one see another's roots.
    let config = w.write_config(&format!(
        r#"
[connections.a-system]
base_uri = "https://127.0.0.1:{port}"
[connections.b-ca-x]
base_uri = "https://127.0.0.1:{port}"
tls = {{ ca_file = "ca.pem" }}
[connections.c-system]
base_uri = "https://127.0.0.1:{port}"
[connections.d-ca-y]
base_uri = "https://127.0.0.1:{port}"
tls = {{ ca_file = "y/ca.pem" }}
"#
    ))?;
    let _agent = AgentProcess::start(&w.bins, &config)?;
    w.api
        .wait_online("a1", true, Duration::from_secs(15))
        .await?;
    w.expect_trust(&[
        ("a-system", false),
        ("b-ca-x", true),
        ("c-system", false),
        ("d-ca-y", false),
    ])
    .await?;

    // The reload gives a-system the CA and takes it from b-ca-x.
    w.write_config(&format!(
        r#"
[connections.a-system]
base_uri = "https://127.0.0.1:{port}"
tls = {{ ca_file = "ca.pem" }}
[connections.b-ca-x]
base_uri = "https://127.0.0.1:{port}"
[connections.c-system]
base_uri = "https://127.0.0.1:{port}"
[connections.d-ca-y]
base_uri = "https://127.0.0.1:{port}"
tls = {{ ca_file = "y/ca.pem" }}
"#
    ))?;
    w.reload(&config)?;
    w.expect_trust(&[
        ("a-system", true),
        ("b-ca-x", false),
        ("c-system", false),
        ("d-ca-y", false),
    ])
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn each_connection_presents_its_own_client_certificate() -> Result<()> {
    let dir = TempDir::new("tls-identity")?;
    make_pki(dir.path())?;
    client_certificate(dir.path(), "second")?;
    let (_server, port) = python_https(dir.path(), HTTPS_SERVER, &["ca.pem"])?;
    let w = World::start(dir)?;
    let identities = |first: &str, second: &str| {
        format!(
            r#"
[connections.m1]
base_uri = "https://127.0.0.1:{port}"
tls = {{ ca_file = "ca.pem", client_cert_file = "{first}.pem", client_key_file = "{first}.key" }}
[connections.m2]
base_uri = "https://127.0.0.1:{port}"
tls = {{ ca_file = "ca.pem", client_cert_file = "{second}.pem", client_key_file = "{second}.key" }}
[connections.m3]
base_uri = "https://127.0.0.1:{port}"
tls = {{ ca_file = "ca.pem" }}
"#
        )
    };
    let config = w.write_config(&identities("client", "second"))?;
    let _agent = AgentProcess::start(&w.bins, &config)?;
    w.api
        .wait_online("a1", true, Duration::from_secs(15))
        .await?;
    let client_of = async |connection: &str| -> Result<serde_json::Value> {
        let (status, code, body) = w.call(connection).await?;
        ensure!(status == 200, "{connection} answered {status} {code}");
        Ok(body["client"].clone())
    };
    assert_eq!(client_of("m1").await?, "postern-client");
    assert_eq!(client_of("m2").await?, "postern-second");
    let (status, _, _) = w.call("m3").await?;
    assert_eq!(
        status, 502,
        "m3 has no client certificate of its own, and must not borrow one"
    );

    // Swapped by a reload: each connection presents its new one.
    w.write_config(&identities("second", "client"))?;
    w.reload(&config)?;
    assert_eq!(client_of("m1").await?, "postern-second");
    assert_eq!(client_of("m2").await?, "postern-client");
    Ok(())
}

/// Connection `tok`'s auth: HS256 traded at the HTTPS server's token endpoint, which only
/// the system roots can verify (the token client takes none of the connection's `tls`).
fn tok_exchange(port: u16) -> String {
    format!(
        r#"[connections.tok.auth]
type = "jwt_bearer"
algorithm = "HS256"
secret = "0123456789abcdef0123456789abcdef"
lifetime = "5m"
[connections.tok.auth.exchange]
token_url = "https://127.0.0.1:{port}/token"
"#
    )
}

/// The system roots are read once per load of the config, not once per client: a reload
/// after the system bundle changed (`update-ca-certificates`) trusts what it added.
#[tokio::test(flavor = "multi_thread")]
async fn a_reload_reads_the_system_roots_again() -> Result<()> {
    let (dir, _server, port) = two_cas_and_a_server("tls-system-roots")?;
    // The "system" bundle holds only CA Y at first; SSL_CERT_DIR empty, so nothing else.
    let ca_y = std::fs::read_to_string(dir.path().join("y/ca.pem"))?;
    let bundle = system_bundle(&dir, &ca_y)?;
    let w = World::start(dir)?;
    // `tok`'s internal server is trusted by its own ca_file; its token endpoint, only
    // through the system roots. `own-y`'s ca_file did not issue the server's certificate:
    // the system roots still count beside it.
    let config = w.write_config(&format!(
        r#"
[connections.sys]
base_uri = "https://127.0.0.1:{port}"
[connections.own-y]
base_uri = "https://127.0.0.1:{port}"
tls = {{ ca_file = "y/ca.pem" }}
[connections.tok]
base_uri = "https://127.0.0.1:{port}"
tls = {{ ca_file = "ca.pem" }}
{auth}"#,
        auth = tok_exchange(port)
    ))?;
    let _agent = AgentProcess::spawn(w.agent_with_roots(&config, &bundle, &["run"])?)?;
    w.api
        .wait_online("a1", true, Duration::from_secs(15))
        .await?;
    w.expect_trust(&[("sys", false), ("own-y", false)]).await?;
    let (status, code, _) = w.call("tok").await?;
    assert_eq!((status, code.as_str()), (502, "token_exchange_failed"));

    let ca_x = std::fs::read_to_string(w.dir.path().join("ca.pem"))?;
    std::fs::write(&bundle, format!("{ca_y}{ca_x}"))?;
    w.reload(&config)?;
    w.expect_trust(&[("sys", true), ("own-y", true)]).await?;
    // The failed exchange is held for a second, across a reload that changed nothing of it.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    w.expect_trust(&[("tok", true)]).await
}

/// Without any system root (an empty `SSL_CERT_FILE` and `SSL_CERT_DIR`), as in a bare
/// container, the agent starts and serves what needs none: an `http://` server, and an
/// https one trusted by its own `ca_file`. What only a system root could verify (an https
/// server without `ca_file`, an https token endpoint) fails saying why and what to do, and
/// is warned of at each load and by `config check`, which still passes.
#[tokio::test(flavor = "multi_thread")]
async fn without_system_roots_the_agent_serves_what_needs_none() -> Result<()> {
    let (dir, _server, port) = two_cas_and_a_server("tls-no-system-roots")?;
    let bundle = system_bundle(&dir, "")?;
    let plain = InternalServer::start(Verifier::None, "").await?;
    let w = World::start(dir)?;
    let config = w.write_config(&format!(
        r#"
[connections.plain]
base_uri = "{plain}"
[connections.own-ca]
base_uri = "https://127.0.0.1:{port}"
tls = {{ ca_file = "ca.pem" }}
[connections.sys]
base_uri = "https://127.0.0.1:{port}"
[connections.tok]
base_uri = "{plain}"
{auth}"#,
        plain = plain.base_uri(),
        auth = tok_exchange(port)
    ))?;
    let warned = |text: &str, connection: &str| {
        text.lines()
            .filter(|l| {
                l.contains("WARN")
                    && l.contains("no system CA certificates were found")
                    && l.split_whitespace()
                        .any(|w| w == format!("connection={connection}"))
            })
            .count()
    };

    let out = w
        .agent_with_roots(&config, &bundle, &["config", "check"])?
        .output()?;
    let said = output_text(&out);
    assert_eq!(out.status.code(), Some(0), "{said}");
    assert_eq!(warned(&said, "sys"), 1, "{said}");
    assert_eq!(warned(&said, "tok"), 1, "{said}");
    assert!(
        said.contains(&format!("its internal server https://127.0.0.1:{port}/"))
            && said.contains("give the connection a tls.ca_file")
            && said.contains(&format!(
                "its token endpoint https://127.0.0.1:{port}/token"
            )),
        "{said}"
    );
    for served in ["plain", "own-ca"] {
        assert_eq!(warned(&said, served), 0, "{said}");
    }

    let agent = AgentProcess::spawn(w.agent_with_roots(&config, &bundle, &["run"])?)?;
    w.api
        .wait_online("a1", true, Duration::from_secs(15))
        .await?;
    w.expect_trust(&[("plain", true), ("own-ca", true)]).await?;
    let why = "the agent has no system CA certificates to verify this server with";
    let (status, code, body) = refusal(w.api.call("a1", "sys", "/x").await?).await?;
    assert_eq!(
        (status, code.as_str()),
        (502, "upstream_unreachable"),
        "{body}"
    );
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(why) && message.contains("install the ca-certificates package"),
        "{body}"
    );
    let (status, code, body) = w.call("tok").await?;
    assert_eq!(
        (status, code.as_str()),
        (502, "token_exchange_failed"),
        "{body}"
    );
    assert!(body.to_string().contains(why), "{body}");
    eventually(
        "the agent's line about the failed call",
        Duration::from_secs(10),
        || {
            let logged = agent.logs.lines().iter().any(|l| {
                l.contains("call failed") && l.contains("connection=sys") && l.contains(why)
            });
            async move { logged }
        },
    )
    .await?;
    let warnings = async |connection: &str, count: usize| -> Result<()> {
        eventually(
            &format!("{count} warning(s) of {connection} without system roots"),
            Duration::from_secs(10),
            || {
                let seen = warned(&agent.logs.text(), connection);
                async move { seen == count }
            },
        )
        .await
    };
    warnings("sys", 1).await?;
    warnings("tok", 1).await?;

    // Each reload says it again; one after the bundle is installed trusts it.
    w.reload(&config)?;
    warnings("sys", 2).await?;
    warnings("tok", 2).await?;
    std::fs::copy(w.dir.path().join("ca.pem"), &bundle)?;
    w.reload(&config)?;
    w.expect_trust(&[("sys", true)]).await?;
    // The failed exchange is held for a second, across a reload that changed nothing of it.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    w.expect_trust(&[("tok", true)]).await?;
    assert_eq!(warned(&agent.logs.text(), "sys"), 2, "warned with roots");
    Ok(())
}

/// Without system roots, the first five connections that need them are warned of one line
/// each, and the rest share one line that names ten of them and counts the others: a
/// config of thousands of https connections logs six lines at each load, not thousands.
#[tokio::test(flavor = "multi_thread")]
async fn without_system_roots_many_connections_share_one_warning() -> Result<()> {
    let dir = TempDir::new("tls-no-roots-many")?;
    let bundle = system_bundle(&dir, "")?;
    let w = World::start(dir)?;
    let connections: String = (0..30)
        .map(|i| format!("[connections.s{i:02}]\nbase_uri = \"https://127.0.0.1:9/\"\n"))
        .collect();
    let config = w.write_config(&connections)?;
    let out = w
        .agent_with_roots(&config, &bundle, &["config", "check"])?
        .output()?;
    let said = output_text(&out);
    assert_eq!(out.status.code(), Some(0), "{said}");
    let lines: Vec<&str> = said
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("no system CA certificates were found"))
        .collect();
    assert_eq!(lines.len(), 6, "{said}");
    for (i, line) in lines[..5].iter().enumerate() {
        assert!(
            line.split_whitespace()
                .any(|w| w == format!("connection=s{i:02}"))
                && line.contains("its internal server https://127.0.0.1:9/"),
            "{line}"
        );
    }
    let names = (5..15).map(|i| format!("s{i:02}")).collect::<Vec<_>>();
    assert!(
        lines[5].contains(&format!(
            "of 25 more connections: {} and 15 others; their calls will fail until you install the ca-certificates package",
            names.join(", ")
        )),
        "{}",
        lines[5]
    );
    assert!(!lines[5].contains("s15"), "{}", lines[5]);
    Ok(())
}
