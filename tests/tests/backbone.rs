//! End to end: the real relay and agent binaries, an internal server on
//! loopback, a JWT-signed call through the tunnel, and every refusal the backbone promises.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use postern_agent::backoff::{BASE, CAP};
use postern_tests::harness::{
    AgentProcess, Api, Bins, RelayProcess, agent_cli, agent_command, agent_config, create_agent,
    create_api_key, mistyped, reconnect_delays, relay_cli, rss_kib,
};
use postern_tests::internal_server::{InternalServer, Verifier};
use postern_tests::keys::{self, RsaTestKey};
use postern_tests::relay_support::{ONLINE_WITHIN, error_code};
use postern_tests::temp::TempDir;

fn bins() -> Bins {
    postern_tests::bins!()
}

/// A relay, one agent named `warehouse-1` with connection `orders` (RS256 JWT),
/// and the internal server behind it.
struct World {
    dir: TempDir,
    bins: Bins,
    relay: RelayProcess,
    agent: AgentProcess,
    api: Api,
    internal: InternalServer,
    key: RsaTestKey,
    token: String,
}

fn orders_connection(base_uri: &str, extra: &str) -> String {
    format!(
        r#"
[connections.orders]
base_uri = "{base_uri}"
timeout = "2s"
{extra}
[connections.orders.auth]
type = "jwt_bearer"
algorithm = "RS256"
private_key_file = "orders.pem"
headers = {{ kid = "k1" }}
payload = {{ iss = "postern", sub = "svc", aud = "orders", iat = "{{{{now}}}}", exp = "{{{{now + 600}}}}" }}
"#
    )
}

impl World {
    async fn start() -> Result<Self> {
        let dir = TempDir::new("e2e")?;
        let bins = bins();
        let state = dir.path().join("relay");
        let relay = RelayProcess::start(&bins, &state, "127.0.0.1:0", "127.0.0.1:0")?;
        let (_id, token) = create_agent(&bins, &state, "warehouse-1")?;
        let api_key = create_api_key(&bins, &state, "platform")?;
        let key = keys::rsa_2048()?;
        let internal =
            InternalServer::start(Verifier::Rs256(key.public_der.clone()), "orders").await?;
        dir.write_private("orders.pem", &key.private_pem)?;
        let mut connections = orders_connection(&internal.base_uri(), "");
        connections.push_str(
            "\n[connections.dead]\nbase_uri = \"http://127.0.0.1:9/api\"\ntimeout = \"2s\"\n",
        );
        let config = dir.write_private(
            "agent.toml",
            &agent_config(relay.ssh, &relay.fingerprint, &token, &connections),
        )?;
        let agent = AgentProcess::start(&bins, &config)?;
        let api = Api::new(relay.api_base(), api_key);
        api.wait_online("warehouse-1", true, ONLINE_WITHIN).await?;
        Ok(Self {
            dir,
            bins,
            relay,
            agent,
            api,
            internal,
            key,
            token,
        })
    }
}

fn pyjwt_verify(token: &str, public_pem: &str) -> Result<serde_json::Value> {
    let script = r#"
import json, sys, jwt
token, key = sys.stdin.read().split("\n", 1)
header = jwt.get_unverified_header(token)
claims = jwt.decode(token, key, algorithms=["RS256"], audience="orders", options={"require": ["exp", "iat"]})
print(json.dumps({"header": header, "claims": claims, "types": {k: type(v).__name__ for k, v in claims.items()}}))
"#;
    let mut child = std::process::Command::new("python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("python3 (with PyJWT: pip install 'pyjwt[crypto]')")?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(format!("{token}\n{public_pem}").as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "PyJWT refused the token: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_jwt_signed_call_crosses_the_tunnel_and_verifies_independently() -> Result<()> {
    let w = World::start().await?;
    let response = w
        .api
        .http
        .post(format!(
            "{}/v1/agents/warehouse-1/connections/orders/http/v2/orders?since=2026-01-01&x=%20y",
            w.api.base
        ))
        .bearer_auth(&w.api.key)
        .header("x-request-id", "req-123")
        .header("x-custom", "kept")
        .header("proxy-foo", "for a proxy, not the server")
        .header("x-original-url", "/admin")
        .header("x-forwarded-for", "127.0.0.1")
        .header("forwarded", "for=127.0.0.1;host=admin.internal")
        .header("client-ip", "127.0.0.1")
        .header("true-client-ip", "127.0.0.1")
        .header("x-cluster-client-ip", "127.0.0.1")
        .header("x-forwarded", "for=127.0.0.1")
        .header("x-original-host", "admin.internal")
        .header("x-host", "admin.internal")
        .header("x-http-host-override", "admin.internal")
        .header("x-proxyuser-ip", "127.0.0.1")
        .body("hello body")
        .send()
        .await?;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-request-id"], "req-123");
    let body: serde_json::Value = response.json().await?;
    assert_eq!(body["ok"], true, "{body}");
    assert_eq!(body["sub"], "svc");
    assert_eq!(body["body_len"], 10);

    let seen = w.internal.requests();
    assert_eq!(seen.len(), 1);
    let request = &seen[0];
    assert_eq!(request.method, "POST");
    assert_eq!(
        request.path_and_query,
        "/api/v2/orders?since=2026-01-01&x=%20y"
    );
    let header = |name: &str| {
        request
            .headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(header("x-custom").as_deref(), Some("kept"));
    assert_eq!(header("x-request-id").as_deref(), Some("req-123"));
    assert_eq!(header("proxy-foo"), None, "Proxy-* headers are hop-by-hop");
    for rerouting in [
        "x-original-url",
        "x-forwarded-for",
        "forwarded",
        "client-ip",
        "true-client-ip",
        "x-cluster-client-ip",
        "x-forwarded",
        "x-original-host",
        "x-host",
        "x-http-host-override",
        "x-proxyuser-ip",
    ] {
        assert_eq!(header(rerouting), None, "{rerouting} reached the server");
    }
    // The relay's API key never reaches the internal network.
    assert!(!request.headers.iter().any(|(_, v)| v.contains(&w.api.key)));
    let jwt = request
        .authorization
        .as_deref()
        .and_then(|a| a.strip_prefix("Bearer "))
        .context("no bearer JWT")?;
    let verified = pyjwt_verify(jwt, &w.key.public_pem)?;
    assert_eq!(verified["header"]["kid"], "k1");
    assert_eq!(verified["header"]["alg"], "RS256");
    assert_eq!(verified["claims"]["iss"], "postern");
    assert_eq!(verified["types"]["iat"], "int", "iat must be a JSON number");
    assert_eq!(verified["types"]["exp"], "int", "exp must be a JSON number");
    let iat = verified["claims"]["iat"].as_i64().context("iat")?;
    let exp = verified["claims"]["exp"].as_i64().context("exp")?;
    assert_eq!(exp - iat, 600);

    // The agent logs one line per call, and never the JWT or the token.
    w.agent.logs.wait_for("req-123", Duration::from_secs(5))?;
    let logs = format!("{}\n{}", w.agent.logs.text(), w.relay.logs.text());
    assert!(!logs.contains(jwt), "JWT leaked into logs");
    assert!(!logs.contains(&w.token), "token leaked into logs");
    assert!(!logs.contains(&w.api.key), "API key leaked into logs");

    // A DELETE without a body reaches the internal server without one: no chunked
    // framing made up on the way (servers may refuse a DELETE with a body).
    let response = w
        .api
        .http
        .delete(format!(
            "{}/v1/agents/warehouse-1/connections/orders/http/v2/orders/7",
            w.api.base
        ))
        .bearer_auth(&w.api.key)
        .send()
        .await?;
    assert_eq!(response.status(), 200);
    let seen = w.internal.requests();
    let delete = seen.last().context("the DELETE")?;
    assert_eq!(delete.method, "DELETE");
    let framing: Vec<_> = delete
        .headers
        .iter()
        .filter(|(k, _)| k == "transfer-encoding" || k == "content-length")
        .collect();
    assert!(
        framing.is_empty(),
        "a bodiless DELETE arrived with {framing:?}"
    );

    let info = w.api.agent("warehouse-1").await?;
    assert_eq!(
        info.connections,
        vec!["dead".to_owned(), "orders".to_owned()]
    );
    assert_eq!(
        info.protocol_version,
        Some(postern_protocol::PROTOCOL_VERSION)
    );
    assert!(info.connected_since.is_some() && info.remote_addr.is_some());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_api_refuses_with_stable_codes() -> Result<()> {
    let w = World::start().await?;

    let r = w.api.call("warehouse-1", "nope", "/x").await?;
    assert_eq!(r.status(), 404);
    assert_eq!(error_code(&r.json().await?), "unknown_connection");

    let r = w.api.call("no-such-agent", "orders", "/x").await?;
    assert_eq!(r.status(), 404);
    assert_eq!(error_code(&r.json().await?), "agent_not_found");

    let r = w
        .api
        .call("warehouse-1", "dead", "/x?api_key=QUERYSECRET")
        .await?;
    assert_eq!(r.status(), 502);
    let body = r.json().await?;
    assert_eq!(error_code(&body), "upstream_unreachable");
    // reqwest's error names the whole URL: the caller's query must not reach the logs.
    assert!(!body.to_string().contains("QUERYSECRET"), "{body}");
    // Nor does a refused path's, which the refusal names.
    let r = w
        .api
        .call("warehouse-1", "orders", "/users/a@b?api_key=QUERYSECRET")
        .await?;
    assert_eq!(r.status(), 400);
    let body = r.json().await?;
    assert_eq!(error_code(&body), "path_rejected", "{body}");
    assert!(body.to_string().contains("/users/a@b?…"), "{body}");
    for (side, logs) in [
        ("agent", w.agent.logs.text()),
        ("relay", w.relay.logs.text()),
    ] {
        assert!(
            !logs.contains("QUERYSECRET"),
            "the {side} logged the query: {logs}"
        );
    }
    // The relay logs the agent's refusal as a failure, with the caller's code.
    let relay_logs = w.relay.logs.text();
    assert!(
        relay_logs
            .lines()
            .any(|l| l.contains("call failed at the agent")
                && l.contains("upstream_unreachable")
                && l.contains("status=502")),
        "{relay_logs}"
    );

    let r = w.api.call("warehouse-1", "orders", "/slow").await?;
    assert_eq!(r.status(), 504);
    assert_eq!(error_code(&r.json().await?), "upstream_timeout");

    let r = w
        .api
        .http
        .get(format!("{}/v1/agents", w.api.base))
        .send()
        .await?;
    assert_eq!(r.status(), 401);
    assert_eq!(error_code(&r.json().await?), "unauthorized");
    let r = w
        .api
        .http
        .get(format!("{}/v1/agents", w.api.base))
        .bearer_auth("psk_wrong")
        .send()
        .await?;
    assert_eq!(r.status(), 401);

    // An offline agent: created but never connected.
    let (_id, _token) = create_agent(&w.bins, &w.relay.state_dir, "sleeper")?;
    let r = w.api.call("sleeper", "orders", "/x").await?;
    assert_eq!(r.status(), 503);
    assert_eq!(error_code(&r.json().await?), "agent_offline");

    let r = w
        .api
        .http
        .get(format!("{}/healthz", w.api.base))
        .send()
        .await?;
    assert_eq!(r.status(), 200);

    // The API can create agents too; the token is shown once and works offline-checked.
    let r = w
        .api
        .http
        .post(format!("{}/v1/agents", w.api.base))
        .bearer_auth(&w.api.key)
        .json(&serde_json::json!({"name": "made-by-api"}))
        .send()
        .await?;
    assert_eq!(r.status(), 201);
    let created: postern_protocol::api::AgentCreated = r.json().await?;
    postern_protocol::SecretToken::parse(postern_protocol::SecretKind::AgentToken, &created.token)?;
    let r = w
        .api
        .http
        .post(format!("{}/v1/agents", w.api.base))
        .bearer_auth(&w.api.key)
        .json(&serde_json::json!({"name": "made-by-api"}))
        .send()
        .await?;
    assert_eq!(r.status(), 409);
    // A retry of a create whose answer was lost is told how to get a token.
    let refused: serde_json::Value = r.json().await?;
    assert!(
        refused["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("POST /v1/agents/made-by-api/token")),
        "{refused}"
    );
    let list: postern_protocol::api::AgentList = w
        .api
        .http
        .get(format!("{}/v1/agents", w.api.base))
        .bearer_auth(&w.api.key)
        .send()
        .await?
        .json()
        .await?;
    let online: Vec<_> = list
        .agents
        .iter()
        .filter(|a| a.online)
        .map(|a| a.name.as_str())
        .collect();
    assert_eq!(online, vec!["warehouse-1"]);
    assert_eq!(list.agents.len(), 3);
    Ok(())
}

/// Sends a raw request line, so no client library normalises the path first.
fn raw_get(api: &Api, path: &str) -> Result<(u16, String)> {
    let addr = api.base.trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
        api.key
    )?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no status line")?;
    Ok((status, text))
}

#[tokio::test(flavor = "multi_thread")]
async fn paths_cannot_escape_the_base_uri() -> Result<()> {
    let w = World::start().await?;
    let prefix = "/v1/agents/warehouse-1/connections/orders/http";
    for attempt in [
        "/../secret",
        "/v2/../../secret",
        "/%2e%2e/secret",
        "/.%2E/secret",
        "/a%2fb",
        "/a%2F..%2Fsecret",
        "/a%5c..%5csecret",
        "/%252e%252e/secret",
        "//evil.example/x",
        "/http://evil.example/x",
        "/user@evil.example/x",
        "/a%00b",
        "/a%0d%0aX-Injected:%20yes",
        "/a%0ab",
        "/a%0db",
        "/a\\..\\secret",
    ] {
        let (status, text) = raw_get(&w.api, &format!("{prefix}{attempt}"))?;
        assert_eq!(status, 400, "{attempt} → {text}");
        assert!(text.contains("path_rejected"), "{attempt} → {text}");
    }
    assert!(
        w.internal.requests().is_empty(),
        "an escape attempt reached the internal server"
    );
    let (status, _) = raw_get(&w.api, &format!("{prefix}/fine/path"))?;
    assert_eq!(status, 200);
    assert_eq!(w.internal.requests()[0].path_and_query, "/api/fine/path");
    // Not UTF-8 once decoded (Latin-1 `café`), yet nothing that leaves the base: as sent.
    let (status, text) = raw_get(&w.api, &format!("{prefix}/caf%E9"))?;
    assert_eq!(status, 200, "{text}");
    assert_eq!(w.internal.requests()[1].path_and_query, "/api/caf%E9");
    Ok(())
}

/// Sends `GET path` with one extra raw header line, exactly as given.
fn raw_get_with_header(api: &Api, path: &str, header: &[u8]) -> Result<(u16, String)> {
    let addr = api.base.trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nConnection: close\r\n",
        api.key
    )
    .into_bytes();
    request.extend_from_slice(header);
    request.extend_from_slice(b"\r\n\r\n");
    stream.write_all(&request)?;
    let mut text = Vec::new();
    // A refusal may close the connection with a reset: what was read until then counts.
    let _ = stream.read_to_end(&mut text);
    let text = String::from_utf8_lossy(&text).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((status, text))
}

#[tokio::test(flavor = "multi_thread")]
async fn control_characters_in_header_values_never_reach_the_internal_server() -> Result<()> {
    let w = World::start().await?;
    let path = "/v1/agents/warehouse-1/connections/orders/http/h";
    for header in [
        &b"X-Note: a\0b"[..],
        b"X-Note: a\rb",
        b"X-Note: a\r\n folded",
        b"X-Note: a\r\n\tfolded",
        b"X-No\0te: b",
        b"X Note: b",
        b"X-Note\r\n: b",
    ] {
        let shown = String::from_utf8_lossy(header).escape_debug().to_string();
        let (status, text) = raw_get_with_header(&w.api, path, header)?;
        assert_eq!(status, 400, "{shown} → {text}");
    }
    assert!(
        w.internal.requests().is_empty(),
        "a request with a control character in a header reached the internal server: {:?}",
        w.internal.requests()
    );
    // The same request with a clean header goes through.
    let (status, text) = raw_get_with_header(&w.api, path, b"X-Note: fine")?;
    assert_eq!(status, 200, "{text}");
    let seen = w.internal.requests();
    assert_eq!(seen.len(), 1);
    assert!(
        seen[0]
            .headers
            .iter()
            .any(|(k, v)| k == "x-note" && v == "fine")
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_token_is_refused() -> Result<()> {
    let dir = TempDir::new("wrongtoken")?;
    let bins = bins();
    let state = dir.path().join("relay");
    let relay = RelayProcess::start(&bins, &state, "127.0.0.1:0", "127.0.0.1:0")?;
    create_agent(&bins, &state, "warehouse-1")?;
    let api = Api::new(relay.api_base(), create_api_key(&bins, &state, "platform")?);
    // Well-formed (right prefix and checksum) but never issued by this relay.
    let foreign = postern_tests::harness::unknown_token();
    let config = dir.write_private(
        "agent.toml",
        &agent_config(
            relay.ssh,
            &relay.fingerprint,
            &foreign,
            "[connections.a]\nbase_uri = \"http://127.0.0.1:9\"\n",
        ),
    )?;
    let agent = AgentProcess::start(&bins, &config)?;
    agent
        .logs
        .wait_for("refused the access token", Duration::from_secs(15))?;
    relay
        .logs
        .wait_for("agent authentication refused", Duration::from_secs(5))?;
    assert!(!api.agent("warehouse-1").await?.online);

    // A typo is caught offline, before any connection.
    let typo = mistyped(&foreign, 10);
    let config = dir.write_private(
        "typo.toml",
        &agent_config(relay.ssh, &relay.fingerprint, &typo, ""),
    )?;
    let out = agent_cli(&bins, &config, &["run"])?;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("checksum"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_fingerprint_is_refused_before_the_token_is_sent() -> Result<()> {
    let dir = TempDir::new("wrongfp")?;
    let bins = bins();
    let state = dir.path().join("relay");
    let relay = RelayProcess::start(&bins, &state, "127.0.0.1:0", "127.0.0.1:0")?;
    let (_, token) = create_agent(&bins, &state, "warehouse-1")?;
    let pinned = "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let config = dir.write_private("agent.toml", &agent_config(relay.ssh, pinned, &token, ""))?;
    let agent = AgentProcess::start(&bins, &config)?;
    agent.logs.wait_for(
        "does not match the pinned fingerprint",
        Duration::from_secs(15),
    )?;
    let logs = agent.logs.text();
    assert!(
        logs.contains(pinned) && logs.contains(&relay.fingerprint),
        "{logs}"
    );
    // Sent anyway, the token (a valid one) would log the agent in: give it the time.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !relay.logs.contains("agent authenticated"),
        "the token must never be sent: {}",
        relay.logs.text()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_fingerprint_matches_openssh() -> Result<()> {
    let dir = TempDir::new("fp")?;
    let bins = bins();
    let state = dir.path().join("relay");
    let relay = RelayProcess::start(&bins, &state, "127.0.0.1:0", "127.0.0.1:0")?;
    let printed = relay_cli(
        &bins,
        &["fingerprint", "--state-dir", &state.to_string_lossy()],
    )?;
    assert_eq!(printed.trim(), relay.fingerprint);
    let scan = std::process::Command::new("ssh-keyscan")
        .args([
            "-t",
            "ed25519",
            "-p",
            &relay.ssh.port().to_string(),
            "127.0.0.1",
        ])
        .output()?;
    let scanned = dir.write_private("scan", &String::from_utf8_lossy(&scan.stdout))?;
    let keygen = std::process::Command::new("ssh-keygen")
        .arg("-lf")
        .arg(&scanned)
        .output()?;
    let shown = String::from_utf8_lossy(&keygen.stdout);
    assert!(
        shown.contains(&relay.fingerprint),
        "ssh-keygen shows {shown:?}, relay prints {}",
        relay.fingerprint
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_agent_comes_back_after_a_relay_restart() -> Result<()> {
    let mut w = World::start().await?;
    let (ssh, api_addr) = (w.relay.ssh.to_string(), w.relay.api.to_string());
    let earlier = reconnect_delays(&w.agent.logs.so_far()).len();
    w.relay.kill();
    // Back at once on the same ports: each moment the relay is away lets the agent's
    // jittered backoff grow.
    w.relay = RelayProcess::start(&w.bins, &w.relay.state_dir.clone(), &ssh, &api_addr)?;
    let listening = Instant::now();
    // Past the backoff's cap, so only a reconnect that never comes fails here; how
    // promptly it came is checked below against the waits the agent announced.
    w.api
        .wait_online("warehouse-1", true, CAP + ONLINE_WITHIN)
        .await?;
    let back_after = listening.elapsed();
    let r = w
        .api
        .call("warehouse-1", "orders", "/after-restart")
        .await?;
    assert_eq!(r.status(), 200, "{}", r.text().await?);
    let delays: Vec<_> = reconnect_delays(&w.agent.logs.text())
        .into_iter()
        .skip(earlier)
        .collect();
    // The session had come up, so the backoff starts over briskly: at most 2·BASE.
    let first = *delays.first().context("the agent announced no reconnect")?;
    assert!(first <= BASE * 2, "first wait {first:?}; all: {delays:?}");
    // Once the relay listens, the agent connects when the wait it is in ends (at most
    // the longest it announced), plus a handshake on a busy machine: no extra attempts.
    let longest = delays.iter().max().copied().unwrap_or_default();
    assert!(
        back_after < longest + Duration::from_secs(4),
        "agent took {back_after:?} to return after waits of {delays:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_agent_is_dropped_at_once() -> Result<()> {
    let w = World::start().await?;
    let state = w.relay.state_dir.to_string_lossy().into_owned();
    relay_cli(
        &w.bins,
        &["agent", "revoke", "warehouse-1", "--state-dir", &state],
    )?;
    // The CLI wrote to the store of the running relay; it notices within a second.
    let r_deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = w.api.call("warehouse-1", "orders", "/x").await?;
        if r.status() == 404 {
            break;
        }
        if Instant::now() > r_deadline {
            bail!("revoked agent still served calls: {}", r.status());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The relay said why before it hung up: the agent knows its token is dead and
    // backs off to the cap instead of retrying it at full speed.
    w.agent.logs.wait_for(
        "the relay no longer accepts this agent's token",
        Duration::from_secs(5),
    )?;
    assert!(w.agent.logs.contains("agent revoked"));
    w.agent
        .logs
        .wait_for("reconnecting delay_ms=", Duration::from_secs(5))?;
    let lines = w.agent.logs.lines();
    let delay: u64 = lines
        .iter()
        .skip_while(|l| !l.contains("the relay no longer accepts this agent's token"))
        .find_map(|l| l.split("reconnecting delay_ms=").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .with_context(|| w.agent.logs.text())?;
    assert!(
        delay >= 15_000,
        "a revoked agent retries after {delay} ms, not the slow 15–30 s"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn revoking_through_the_api_drops_the_session() -> Result<()> {
    let w = World::start().await?;
    let r = w
        .api
        .http
        .delete(format!("{}/v1/agents/warehouse-1", w.api.base))
        .bearer_auth(&w.api.key)
        .send()
        .await?;
    assert_eq!(r.status(), 204);
    w.agent
        .logs
        .wait_for("agent revoked", Duration::from_secs(5))?;
    let r = w.api.call("warehouse-1", "orders", "/x").await?;
    assert_eq!(r.status(), 404);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_in_flight_calls_and_exits_0() -> Result<()> {
    let mut w = World::start().await?;
    // /slow answers after 3 s; give this connection a longer timeout.
    let slow = w.dir.write_private(
        "slow.toml",
        &agent_config(
            w.relay.ssh,
            &w.relay.fingerprint,
            &w.token,
            &orders_connection(&w.internal.base_uri(), "").replace("\"2s\"", "\"10s\""),
        ),
    )?;
    let _ = w.agent.terminate()?;
    w.api
        .wait_online("warehouse-1", false, Duration::from_secs(5))
        .await?;
    w.agent = AgentProcess::start(&w.bins, &slow)?;
    w.api
        .wait_online("warehouse-1", true, ONLINE_WITHIN)
        .await?;
    let api = w.api.clone();
    let call = tokio::spawn(async move { api.call("warehouse-1", "orders", "/slow").await });
    // Wait until the call is at the internal server, then ask the agent to stop.
    let deadline = Instant::now() + Duration::from_secs(5);
    while w.internal.requests().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = w.agent.terminate()?;
    assert!(status.success(), "agent exited with {status}");
    let response = call.await??;
    assert_eq!(
        response.status(),
        200,
        "the in-flight call was cut: {}",
        response.text().await?
    );
    Ok(())
}

/// Makes `total` calls of `call` from four tasks, `warmup` of them first, and fails if the
/// relay's or the agent's RSS grew by `max_growth_kib` or more over the rest.
async fn assert_memory_flat<F, Fut>(
    w: &World,
    what: &str,
    total: usize,
    warmup: usize,
    max_growth_kib: u64,
    call: F,
) -> Result<()>
where
    F: Fn(Api) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<()>> + Send,
{
    const WORKERS: usize = 4;
    let run = |count: usize| {
        let (api, call) = (w.api.clone(), call.clone());
        async move {
            let mut handles = Vec::new();
            for _ in 0..WORKERS {
                let (api, call) = (api.clone(), call.clone());
                handles.push(tokio::spawn(async move {
                    for _ in 0..count / WORKERS {
                        call(api.clone()).await?;
                    }
                    Ok::<_, anyhow::Error>(())
                }));
            }
            for h in handles {
                h.await??;
            }
            Ok::<_, anyhow::Error>(())
        }
    };
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(120), run(warmup)).await??;
    let (relay0, agent0) = (rss_kib(w.relay.pid())?, rss_kib(w.agent.pid())?);
    tokio::time::timeout(Duration::from_secs(600), run(total - warmup)).await??;
    let (relay1, agent1) = (rss_kib(w.relay.pid())?, rss_kib(w.agent.pid())?);
    eprintln!(
        "{total} {what} in {:?}: relay {relay0} → {relay1} KiB, agent {agent0} → {agent1} KiB",
        started.elapsed()
    );
    assert!(
        relay1.saturating_sub(relay0) < max_growth_kib,
        "relay grew {relay0} → {relay1} KiB over {total} {what}"
    );
    assert!(
        agent1.saturating_sub(agent0) < max_growth_kib,
        "agent grew {agent0} → {agent1} KiB over {total} {what}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn memory_stays_flat_over_20000_calls() -> Result<()> {
    let w = World::start().await?;
    assert_memory_flat(&w, "calls", 20_000, 2_000, 8 * 1024, |api| async move {
        let r = api.call("warehouse-1", "orders", "/ping").await?;
        if r.status() != 200 {
            bail!("call failed: {}", r.status());
        }
        r.bytes().await?;
        Ok(())
    })
    .await?;
    assert_eq!(w.internal.requests().len(), 20_000);
    Ok(())
}

/// Every connection test opens a channel of its own and closes it: russh 0.65.1 kept
/// each channel its side closed first for good (~4 KiB); the vendored patch frees it.
/// Unpatched, the agent grows by ~18 MiB over these channels.
#[tokio::test(flavor = "multi_thread")]
async fn memory_stays_flat_over_6000_opened_and_closed_channels() -> Result<()> {
    let w = World::start().await?;
    assert_memory_flat(&w, "channels", 6_000, 600, 6 * 1024, |api| async move {
        let r = api
            .http
            .post(format!(
                "{}/v1/agents/warehouse-1/connections/orders/test",
                api.base
            ))
            .bearer_auth(&api.key)
            .send()
            .await?;
        if r.status() != 200 {
            bail!("connection test failed: {}", r.status());
        }
        r.bytes().await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn init_writes_a_private_config_that_connects() -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("init")?;
    let bins = bins();
    let state = dir.path().join("relay");
    let relay = RelayProcess::start(&bins, &state, "127.0.0.1:0", "127.0.0.1:0")?;
    let (_, token) = create_agent(&bins, &state, "warehouse-1")?;
    let api = Api::new(relay.api_base(), create_api_key(&bins, &state, "platform")?);
    let config = dir.path().join("sub/agent.toml");
    let ssh = relay.ssh.to_string();
    let init = |extra_env: Option<&str>, force: bool| {
        let mut args = vec!["init", "--relay", &ssh, "--fingerprint", &relay.fingerprint];
        if force {
            args.push("--force");
        }
        let mut cmd = agent_command(&bins, &config, &args);
        cmd.env_remove("POSTERN_TOKEN");
        if let Some(t) = extra_env {
            cmd.env("POSTERN_TOKEN", t);
        }
        cmd.output()
    };
    // A mistyped token is refused and nothing is written.
    let out = init(Some(&mistyped(&token, token.len() - 1)), false)?;
    assert!(!out.status.success());
    assert!(!config.exists());
    // One that is not UTF-8 is said to be so, not taken as unset.
    let mut cmd = agent_command(
        &bins,
        &config,
        &["init", "--relay", &ssh, "--fingerprint", &relay.fingerprint],
    );
    cmd.env("POSTERN_TOKEN", std::ffi::OsStr::from_bytes(b"pst_\xff"));
    let out = cmd.output()?;
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("POSTERN_TOKEN is set but is not valid UTF-8"),
        "{said}"
    );
    assert!(!config.exists());
    let out = init(Some(&token), false)?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::metadata(&config)?.permissions().mode() & 0o777,
        0o600
    );
    // The token is not in the process's arguments and never printed.
    assert!(!String::from_utf8_lossy(&out.stdout).contains(&token));
    // No silent overwrite.
    let out = init(Some(&token), false)?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--force"));
    // From a token file, replacing the config.
    let token_file = dir.write_private("token", &format!("{token}\n"))?;
    let out = agent_command(
        &bins,
        &config,
        &[
            "init",
            "--force",
            "--relay",
            &ssh,
            "--fingerprint",
            &relay.fingerprint,
            "--token-file",
            &token_file.to_string_lossy(),
        ],
    )
    .env_remove("POSTERN_TOKEN")
    .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _agent = AgentProcess::start(&bins, &config)?;
    api.wait_online("warehouse-1", true, ONLINE_WITHIN).await?;

    // A config others can read is refused with the fix in the message.
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644))?;
    let out = agent_cli(&bins, &config, &["run"])?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("chmod 600"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn large_bodies_stream_both_ways() -> Result<()> {
    const SIZE: usize = 24 * 1024 * 1024;
    let w = World::start().await?;
    let r = w
        .api
        .call("warehouse-1", "orders", &format!("/bytes/{SIZE}"))
        .await?;
    assert_eq!(r.status(), 200);
    let body = r.bytes().await?;
    assert_eq!(body.len(), SIZE);
    assert!(body.iter().all(|b| *b == b'x'));
    let upload = vec![b'y'; SIZE];
    let r = w
        .api
        .http
        .put(format!(
            "{}/v1/agents/warehouse-1/connections/orders/http/upload",
            w.api.base
        ))
        .bearer_auth(&w.api.key)
        .body(upload)
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    let echoed: serde_json::Value = r.json().await?;
    assert_eq!(echoed["body_len"], SIZE);
    // Both answers were taken whole: nothing says otherwise.
    let logs = w.relay.logs.text();
    assert!(
        !logs.contains("whole answer") && !logs.contains("broke off"),
        "{logs}"
    );
    // The CLI lists the agent the API sees.
    let list = relay_cli(
        &w.bins,
        &[
            "agent",
            "list",
            "--json",
            "--state-dir",
            &w.relay.state_dir.to_string_lossy(),
        ],
    )?;
    let list: serde_json::Value = serde_json::from_str(&list)?;
    assert_eq!(list["agents"][0]["name"], "warehouse-1");
    Ok(())
}
