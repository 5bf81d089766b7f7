//! Behind a real firewall: the relay in a *cloud* namespace, the agent and an
//! internal server in an *on-prem* namespace that accepts no inbound connections.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use postern_tests::harness::{
    AgentProcess, Bins, RelayProcess, agent_config, command_in, create_agent, create_api_key,
};
use postern_tests::keys;
use postern_tests::netns::{self, CLOUD_ADDR, ONPREM_ADDR, Topology};
use postern_tests::pki::KillOnDrop;
use postern_tests::temp::TempDir;

const INTERNAL_PORT: u16 = 8000;
const API: &str = "127.0.0.1:8080";

/// The internal server: Python's http.server checking RS256 JWTs with PyJWT,
/// an implementation independent of the agent's.
const INTERNAL_SERVER: &str = r#"
import http.server, json, sys, time, jwt
key = open(sys.argv[1]).read()
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        auth = self.headers.get("Authorization", "")
        try:
            claims = jwt.decode(auth.removeprefix("Bearer "), key, algorithms=["RS256"], audience="orders")
            code, body = 200, {"ok": True, "path": self.path, "sub": claims["sub"], "exp_is_int": isinstance(claims["exp"], int)}
        except Exception as e:
            code, body = 401, {"error": str(e)}
        if code == 200 and self.path.endswith("/big"):
            # 512 MiB at ~60 MB/s: still going when the test cuts the link.
            self.send_response(200)
            self.send_header("Content-Length", str(1 << 29))
            self.end_headers()
            chunk = b"\0" * 65536
            try:
                for _ in range((1 << 29) // 65536):
                    self.wfile.write(chunk)
                    time.sleep(0.001)
            except Exception:
                pass
            return
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("0.0.0.0", int(sys.argv[2])), H).serve_forever()
"#;

fn bins() -> Bins {
    postern_tests::bins!()
}

/// `curl` inside the cloud namespace, as the integration platform would call the relay.
fn curl_in(ns: &str, key: &str, path: &str) -> Result<(u16, String)> {
    let out = command_in(Some(ns), Path::new("curl"))
        .args(["-s", "--max-time", "20", "-w", "\n%{http_code}", "-H"])
        .arg(format!("Authorization: Bearer {key}"))
        .arg(format!("http://{API}{path}"))
        .output()
        .context("curl")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    Ok((code.trim().parse().unwrap_or(0), body.to_owned()))
}

fn wait_online(ns: &str, key: &str, online: bool, limit: Duration) -> Result<Duration> {
    let started = Instant::now();
    while started.elapsed() < limit {
        let (code, body) = curl_in(ns, key, "/v1/agents/onprem-1")?;
        if code == 200 && body.contains(&format!("\"online\":{online}")) {
            return Ok(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("agent online={online} not reached within {limit:?}")
}

#[test]
fn calls_cross_a_firewall_that_admits_only_outbound_connections() -> Result<()> {
    if let Some(why) = netns::unavailable() {
        eprintln!("SKIPPED firewall suite: {why}");
        return Ok(());
    }
    let tag = format!("{}", std::process::id() % 100_000);
    let topo = Topology::create(&tag)?;
    let dir = TempDir::new("fw")?;
    let bins = bins();
    let state = dir.path().join("relay");

    // The on-prem internal server, reachable from on-prem only.
    let key = keys::rsa_2048()?;
    let public = dir.write_private("orders.pub", &key.public_pem)?;
    dir.write_private("orders.pem", &key.private_pem)?;
    let _internal = KillOnDrop(
        command_in(Some(&topo.onprem), Path::new("python3"))
            .args(["-c", INTERNAL_SERVER])
            .arg(&public)
            .arg(INTERNAL_PORT.to_string())
            .stdout(Stdio::null())
            .spawn()?,
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !topo.can_connect(&topo.onprem, "127.0.0.1", INTERNAL_PORT) {
        if Instant::now() > deadline {
            bail!("internal server did not start");
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    // The relay in the cloud.
    let mut relay = RelayProcess::start_in(
        Some(&topo.cloud),
        &bins,
        &state,
        &format!("{CLOUD_ADDR}:2222"),
        API,
    )?;
    let (_, token) = create_agent(&bins, &state, "onprem-1")?;
    let api_key = create_api_key(&bins, &state, "platform")?;

    // First the boundary itself: on-prem reaches the cloud, the cloud reaches nothing on-prem.
    assert!(
        topo.can_connect(&topo.onprem, CLOUD_ADDR, 2222),
        "on-prem → cloud must work"
    );
    assert!(
        !topo.can_connect(&topo.cloud, ONPREM_ADDR, INTERNAL_PORT),
        "the cloud must not reach the on-prem internal server"
    );

    let connections = format!(
        r#"
[connections.orders]
base_uri = "http://127.0.0.1:{INTERNAL_PORT}/api"
timeout = "5s"
[connections.orders.auth]
type = "jwt_bearer"
algorithm = "RS256"
private_key_file = "orders.pem"
payload = {{ sub = "fw-test", aud = "orders", iat = "{{{{now}}}}", exp = "{{{{now + 300}}}}" }}
"#
    );
    let config = dir.write_private(
        "agent.toml",
        &agent_config(
            format!("{CLOUD_ADDR}:2222").parse()?,
            &relay.fingerprint,
            &token,
            &connections,
        ),
    )?;
    let agent = AgentProcess::start_in(Some(&topo.onprem), &bins, &config)?;
    wait_online(&topo.cloud, &api_key, true, Duration::from_secs(15))?;

    // Every call crosses the boundary through the tunnel.
    for i in 0..20 {
        let (code, body) = curl_in(
            &topo.cloud,
            &api_key,
            &format!("/v1/agents/onprem-1/connections/orders/http/orders/{i}"),
        )?;
        assert_eq!(code, 200, "{body}");
        assert!(
            body.contains(&format!("\"path\": \"/api/orders/{i}\"")),
            "{body}"
        );
        assert!(body.contains("\"exp_is_int\": true"), "{body}");
    }

    // A silently dead link (packets dropped, no reset) is noticed within ~15 s on both sides.
    topo.cut_link()?;
    let cut_at = Instant::now();
    let noticed = wait_online(&topo.cloud, &api_key, false, Duration::from_secs(25))?;
    eprintln!("relay noticed the dead link after {noticed:?}");
    assert!(
        noticed <= Duration::from_secs(15),
        "relay took {noticed:?} (target: within 15 s)"
    );
    agent.logs.wait_for(
        "tunnel down",
        Duration::from_secs(25).saturating_sub(cut_at.elapsed()),
    )?;
    let (code, body) = curl_in(
        &topo.cloud,
        &api_key,
        "/v1/agents/onprem-1/connections/orders/http/x",
    )?;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("agent_offline"), "{body}");
    topo.restore_link()?;
    wait_online(&topo.cloud, &api_key, true, Duration::from_secs(40))?;
    let (code, body) = curl_in(
        &topo.cloud,
        &api_key,
        "/v1/agents/onprem-1/connections/orders/http/after",
    )?;
    assert_eq!(code, 200, "{body}");

    // A link that dies under a download, the agent's socket full of answer not yet
    // acknowledged: the agent notices as soon (TCP_USER_TIMEOUT ends its blocked write),
    // not after the 60 s of inactivity that bounded that write before.
    let downs = || {
        agent
            .logs
            .lines()
            .iter()
            .filter(|l| l.contains("tunnel down"))
            .count()
    };
    let before = downs();
    let _download = KillOnDrop(
        command_in(Some(&topo.cloud), Path::new("curl"))
            .args(["-s", "-o", "/dev/null", "--max-time", "90", "-H"])
            .arg(format!("Authorization: Bearer {api_key}"))
            .arg(format!(
                "http://{API}/v1/agents/onprem-1/connections/orders/http/big"
            ))
            .spawn()?,
    );
    std::thread::sleep(Duration::from_secs(2));
    topo.cut_link()?;
    let cut_at = Instant::now();
    while downs() == before {
        if cut_at.elapsed() > Duration::from_secs(45) {
            bail!("the agent did not notice the link die under a download within 45 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let noticed = cut_at.elapsed();
    eprintln!("agent noticed the link die under a download after {noticed:?}");
    assert!(
        noticed <= Duration::from_secs(20),
        "the agent took {noticed:?} (target: within 20 s)"
    );
    topo.restore_link()?;
    wait_online(&topo.cloud, &api_key, true, Duration::from_secs(40))?;

    // Relay killed and restarted in the cloud: the agent comes back by itself.
    relay.kill();
    relay = RelayProcess::start_in(
        Some(&topo.cloud),
        &bins,
        &state,
        &format!("{CLOUD_ADDR}:2222"),
        API,
    )?;
    let back = wait_online(&topo.cloud, &api_key, true, Duration::from_secs(15))?;
    eprintln!("agent back {back:?} after the relay restart");
    let (code, body) = curl_in(
        &topo.cloud,
        &api_key,
        "/v1/agents/onprem-1/connections/orders/http/restarted",
    )?;
    assert_eq!(code, 200, "{body}");
    drop(relay);
    Ok(())
}
