//! The agent as an operable daemon: several relays tried in turn, a corporate
//! proxy (a real tinyproxy), `config check`, and JSON logs without secrets.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use postern_tests::harness::{
    AgentProcess, Api, Bins, RelayProcess, agent_cli, create_agent, create_api_key, free_port,
    output_text, signal, status_json, stdout, wait_listening,
};
use postern_tests::internal_server::{InternalServer, Verifier};
use postern_tests::pki::KillOnDrop;
use postern_tests::relay_support::error_code;
use postern_tests::temp::TempDir;

fn bins() -> Bins {
    postern_tests::bins!()
}

struct Setup {
    dir: TempDir,
    bins: Bins,
    relay: RelayProcess,
    api: Api,
    token: String,
    internal: InternalServer,
}

async fn setup() -> Result<Setup> {
    let dir = TempDir::new("agentops")?;
    let bins = bins();
    let state = dir.path().join("relay");
    let relay = RelayProcess::start(&bins, &state, "127.0.0.1:0", "127.0.0.1:0")?;
    let (_, token) = create_agent(&bins, &state, "a1")?;
    let api = Api::new(relay.api_base(), create_api_key(&bins, &state, "k")?);
    let internal = InternalServer::start(Verifier::None, "").await?;
    Ok(Setup {
        dir,
        bins,
        relay,
        api,
        token,
        internal,
    })
}

impl Setup {
    fn config(&self, head: &str) -> String {
        format!(
            "{head}\nrelay_fingerprint = \"{}\"\ntoken = \"{}\"\nstatus_socket = \"agent.sock\"\n[connections.o]\nbase_uri = \"{}\"\n",
            self.relay.fingerprint,
            self.token,
            self.internal.base_uri()
        )
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn relays_are_tried_in_turn() -> Result<()> {
    let s = setup().await?;
    // Port 9 (discard): nothing listens there, whereas a port picked free and let go
    // could be taken by another test by the time the agent dials it.
    let head = format!("relay = [\"127.0.0.1:9\", \"{}\"]", s.relay.ssh);
    let config = s.dir.write_private("agent.toml", &s.config(&head))?;
    let agent = AgentProcess::start(&s.bins, &config)?;
    s.api
        .wait_online("a1", true, Duration::from_secs(15))
        .await?;
    assert_eq!(s.api.call("a1", "o", "/x").await?.status(), 200);
    // The dead relay first, named as such, then the live one.
    let lines = agent.logs.lines();
    let dead = lines
        .iter()
        .position(|l| l.contains("cannot reach the relay at 127.0.0.1:9"));
    let live = lines.iter().position(|l| {
        l.contains("connected to relay") && l.contains(&format!("relay={}", s.relay.ssh))
    });
    assert!(
        matches!((dead, live), (Some(d), Some(l)) if d < l),
        "the dead relay was not tried first: {}",
        agent.logs.text()
    );
    // `postern status` says which of the two it is with.
    let live = s.relay.ssh.to_string();
    let status = status_json(&s.bins, &config)?;
    assert_eq!(status["connected_to"], live.as_str(), "{status}");
    let text = stdout(&agent_cli(&s.bins, &config, &["status"])?);
    assert!(
        text.contains(&format!("  relay        {live} (of 127.0.0.1:9, {live})\n")),
        "{text}"
    );
    Ok(())
}

/// An agent given the relay's API port, which takes the connection but speaks HTTP, says
/// so (the handshake failed there), not that the relay cannot be reached.
#[tokio::test(flavor = "multi_thread")]
async fn a_relay_address_that_is_not_ssh_is_named_as_such() -> Result<()> {
    let s = setup().await?;
    let head = format!("relay = \"{}\"", s.relay.api);
    let config = s.dir.write_private("agent.toml", &s.config(&head))?;
    let agent = AgentProcess::start(&s.bins, &config)?;
    agent.logs.wait_for(
        &format!(
            "{} took the connection, but the SSH handshake failed",
            s.relay.api
        ),
        Duration::from_secs(15),
    )?;
    assert!(
        agent
            .logs
            .text()
            .contains("is it the relay's ssh_listen address?"),
        "{}",
        agent.logs.text()
    );
    assert!(
        !agent.logs.text().contains("cannot reach the relay"),
        "{}",
        agent.logs.text()
    );
    Ok(())
}

/// A real tinyproxy on loopback that requires basic auth and logs connections.
fn tinyproxy(dir: &TempDir) -> Result<(KillOnDrop, u16, std::path::PathBuf)> {
    let log = dir.path().join("tinyproxy.log");
    // tinyproxy takes no port 0, and a port picked free may be taken by another test
    // before tinyproxy binds it (it then exits): so another port then, and ready only
    // once tinyproxy itself listens on it, not when anything answers there.
    for _ in 0..5 {
        let port = free_port()?;
        let conf = dir.write_private(
            "tinyproxy.conf",
            &format!(
                "Port {port}\nListen 127.0.0.1\nTimeout 60\nMaxClients 20\nLogFile \"{}\"\nLogLevel Connect\nBasicAuth alice s3cret\nAllow 127.0.0.1\n",
                log.display()
            ),
        )?;
        let child = Command::new("tinyproxy")
            .args(["-d", "-c"])
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("tinyproxy (apt-get install tinyproxy)")?;
        let mut guard = KillOnDrop(child);
        if let Some(ports) =
            wait_listening(&mut guard.0, Duration::from_secs(10)).context("tinyproxy")?
        {
            anyhow::ensure!(
                ports.contains(&port),
                "tinyproxy listens on {ports:?}, not {port}"
            );
            return Ok((guard, port, log));
        }
    }
    bail!("tinyproxy exited five times without listening (ports taken?)")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_tunnel_goes_through_a_corporate_proxy() -> Result<()> {
    let s = setup().await?;
    let (_proxy, port, log) = tinyproxy(&s.dir)?;

    // Wrong proxy password: a clear refusal in the log, never online.
    let head = format!(
        "relay = \"{}\"\nproxy = \"http://alice:wrong@127.0.0.1:{port}\"",
        s.relay.ssh
    );
    let config = s.dir.write_private("bad.toml", &s.config(&head))?;
    let agent = AgentProcess::start(&s.bins, &config)?;
    agent
        .logs
        .wait_for("refused CONNECT", Duration::from_secs(10))?;
    // tinyproxy answers a bad password with 401 where RFC 9110 says 407; either is a refusal.
    assert!(
        agent.logs.contains("407 Proxy") || agent.logs.contains("401 Unauthorized"),
        "{}",
        agent.logs.text()
    );
    assert!(
        !agent.logs.contains("wrong"),
        "the proxy password leaked into the log"
    );
    drop(agent);
    // What the proxy logs from here on is the next agent's: the refused one's CONNECTs
    // are logged too (before the password is checked).
    let seen_before = std::fs::read_to_string(&log)?.len();

    // Through the proxy with the right credentials, set by HTTPS_PROXY.
    let head = format!("relay = \"{}\"", s.relay.ssh);
    let config = s.dir.write_private("agent.toml", &s.config(&head))?;
    let mut cmd = Command::new(&s.bins.agent);
    cmd.args(["run", "--config"])
        .arg(&config)
        .env(
            "HTTPS_PROXY",
            format!("http://alice:s3cret@127.0.0.1:{port}"),
        )
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _agent = KillOnDrop(cmd.spawn()?);
    s.api
        .wait_online("a1", true, Duration::from_secs(15))
        .await?;
    assert_eq!(s.api.call("a1", "o", "/through-proxy").await?.status(), 200);
    let proxy_log = std::fs::read_to_string(&log)?;
    let since = proxy_log.get(seen_before..).unwrap_or_default();
    assert!(
        since.contains(&format!("CONNECT 127.0.0.1:{}", s.relay.ssh.port()))
            && since.contains("Established connection to host \"127.0.0.1\""),
        "the proxy never took the agent's CONNECT to the relay:\n{since}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn config_check_lists_every_problem() -> Result<()> {
    let s = setup().await?;
    let good = s.dir.write_private(
        "good.toml",
        &s.config(&format!("relay = \"{}\"", s.relay.ssh)),
    )?;
    let out = agent_cli(&s.bins, &good, &["config", "check"])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok"));

    let bad = s.dir.write_private(
        "bad.toml",
        "relay = \"nohost\"\nrelay_fingerprint = \"MD5:x\"\ntoken = \"pst_short\"\n\
         [connections.a]\nbase_uri = \"ftp://x\"\n\
         [connections.b]\nbase_uri = \"http://x\"\n[connections.b.auth]\ntype = \"jwt_bearer\"\nalgorithm = \"HS256\"\nsecret = \"s\"\npayload = { exp = \"{{later}}\" }\n",
    )?;
    let out = agent_cli(&s.bins, &bad, &["config", "check"])?;
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stderr);
    for expected in [
        "5 problems",
        "relay \"nohost\"",
        "relay_fingerprint",
        "token:",
        "connections.a",
        "connections.b",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }

    let syntax = s.dir.write_private("syntax.toml", "relay = \n")?;
    let out = agent_cli(&s.bins, &syntax, &["config", "check"])?;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("line 1"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn json_logs_carry_each_call_and_no_secret() -> Result<()> {
    let s = setup().await?;
    let config = s.dir.write_private(
        "agent.toml",
        &s.config(&format!("relay = \"{}\"", s.relay.ssh)),
    )?;
    let child = Command::new(&s.bins.agent)
        .args(["--log-format", "json", "run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    s.api
        .wait_online("a1", true, Duration::from_secs(15))
        .await?;
    let r = s
        .api
        .http
        .get(format!(
            "{}/v1/agents/a1/connections/o/http/json-log",
            s.api.base
        ))
        .bearer_auth(&s.api.key)
        .header("x-request-id", "json-req-1")
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    signal(child.id(), "TERM")?;
    let out = child.wait_with_output()?;
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stderr);
    let mut saw_call = false;
    for line in text.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("not JSON: {line}"))?;
        if v["request_id"] == "json-req-1" && v["message"] == "call" {
            assert_eq!(v["status"], 200);
            assert_eq!(v["connection"], "o");
            saw_call = true;
        }
    }
    assert!(saw_call, "no JSON call line in:\n{text}");
    assert!(!text.contains(&s.token) && !text.contains(&s.api.key));
    Ok(())
}

fn status(bins: &Bins, config: &std::path::Path, json: bool) -> Result<(Option<i32>, String)> {
    let args: &[&str] = if json {
        &["status", "--json"]
    } else {
        &["status"]
    };
    let out = agent_cli(bins, config, args)?;
    Ok((out.status.code(), output_text(&out)))
}

#[tokio::test(flavor = "multi_thread")]
async fn status_reports_the_tunnel_and_each_connection() -> Result<()> {
    let mut s = setup().await?;
    let config = s.dir.write_private(
        "agent.toml",
        &s.config(&format!("relay = \"{}\"", s.relay.ssh)),
    )?;
    let (code, text) = status(&s.bins, &config, false)?;
    assert_eq!(code, Some(2), "no daemon yet: {text}");

    let mut agent = AgentProcess::start(&s.bins, &config)?;
    s.api
        .wait_online("a1", true, Duration::from_secs(15))
        .await?;
    assert_eq!(s.api.call("a1", "o", "/one").await?.status(), 200);
    assert_eq!(s.api.call("a1", "o", "/two").await?.status(), 200);
    assert_eq!(s.api.call("a1", "o", "/a%2fthree").await?.status(), 400);

    let (code, text) = status(&s.bins, &config, false)?;
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("connected since") && text.contains("a1"),
        "{text}"
    );
    let (_, json) = status(&s.bins, &config, true)?;
    let v: serde_json::Value = serde_json::from_str(json.trim())?;
    assert_eq!(v["connected"], true);
    assert_eq!(v["connections"]["o"]["calls_served"], 2);
    assert_eq!(v["connections"]["o"]["calls_failed"], 1);
    assert!(
        !json.contains(&s.token),
        "the status must not show the token"
    );

    // The relay goes away: the agent says so, with the reason.
    s.relay.kill();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (code, text) = status(&s.bins, &config, false)?;
        if code == Some(1) {
            assert!(
                text.contains("NOT connected") && text.contains("last error"),
                "{text}"
            );
            break;
        }
        if Instant::now() > deadline {
            bail!("status never said not connected: {text}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    agent.terminate()?;
    let (code, _) = status(&s.bins, &config, false)?;
    assert_eq!(code, Some(2), "a stopped agent removes its socket");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn connection_limits_give_clear_errors_and_the_agent_keeps_serving() -> Result<()> {
    let s = setup().await?;
    let text = s.config(&format!("relay = \"{}\"", s.relay.ssh))
        + "max_concurrent_calls = 2\nmax_request_body = 1000\nmax_response_body = 1000\nmax_header_bytes = 2048\ntimeout = \"10s\"\n";
    let config = s.dir.write_private("agent.toml", &text)?;
    let agent = AgentProcess::start(&s.bins, &config)?;
    s.api
        .wait_online("a1", true, Duration::from_secs(15))
        .await?;

    // Two slow calls hold both slots; a third is refused at once.
    let mut slow = Vec::new();
    for _ in 0..2 {
        let api = s.api.clone();
        slow.push(tokio::spawn(
            async move { api.call("a1", "o", "/slow").await },
        ));
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while s.internal.requests().len() < 2 {
        if Instant::now() > deadline {
            bail!("the slow calls never arrived");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = s.api.call("a1", "o", "/third").await?;
    // Refused at once, not queued: exactly, while both slow calls (3 s at the internal
    // server) still hold their slots, rather than within a fixed time a busy machine
    // may exceed.
    let both_still_running = slow.iter().all(|call| !call.is_finished());
    assert_eq!(r.status(), 429);
    assert_eq!(error_code(&r.json().await?), "too_many_calls");
    assert!(both_still_running, "refused at once, not queued");
    for call in slow {
        assert_eq!(call.await??.status(), 200);
    }

    let r = s
        .api
        .http
        .put(format!(
            "{}/v1/agents/a1/connections/o/http/upload",
            s.api.base
        ))
        .bearer_auth(&s.api.key)
        .body(vec![b'x'; 2000])
        .send()
        .await?;
    assert_eq!(r.status(), 413);
    assert_eq!(error_code(&r.json().await?), "payload_too_large");
    // Without a length up front (chunked), the body is cut off once past the limit,
    // however much passed before; one within it goes through whole.
    let chunked_upload = |pieces: usize| {
        let body = futures_util::stream::iter(
            (0..pieces).map(|_| Ok::<_, std::io::Error>(vec![b'x'; 300])),
        );
        s.api
            .http
            .put(format!(
                "{}/v1/agents/a1/connections/o/http/upload",
                s.api.base
            ))
            .bearer_auth(&s.api.key)
            .body(reqwest::Body::wrap_stream(body))
            .send()
    };
    let r = chunked_upload(7).await?;
    assert_eq!(r.status(), 413);
    let body: serde_json::Value = r.json().await?;
    assert_eq!(error_code(&body), "payload_too_large");
    assert!(
        body.to_string().contains("max_request_body (1000 bytes)"),
        "{body}"
    );
    let r = chunked_upload(3).await?;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<serde_json::Value>().await?["body_len"], 900);

    // The request was processed: its answer's size is no 413 (which would blame the request).
    let r = s.api.call("a1", "o", "/bytes/5000").await?;
    assert_eq!(r.status(), 502);
    let body: serde_json::Value = r.json().await?;
    assert_eq!(error_code(&body), "answer_too_large");
    assert!(body.to_string().contains("max_response_body"), "{body}");

    // Without a length up front the answer is cut off once past the limit; the agent
    // says why and counts the call as failed, not served.
    let before = status_json(&s.bins, &config)?;
    let r = s.api.call("a1", "o", "/chunked/50000").await?;
    let whole = match r.bytes().await {
        Ok(body) => body.len() == 50_000,
        Err(_) => false,
    };
    assert!(!whole, "an answer past max_response_body arrived whole");
    agent
        .logs
        .wait_for("call's answer broke off", Duration::from_secs(5))?;
    assert!(
        agent
            .logs
            .contains("answer larger than max_response_body (1000 bytes)"),
        "{}",
        agent.logs.text()
    );
    let after = status_json(&s.bins, &config)?;
    let count = |report: &serde_json::Value, what: &str| report["connections"]["o"][what].as_u64();
    assert_eq!(
        count(&after, "calls_served"),
        count(&before, "calls_served")
    );
    assert_eq!(
        count(&after, "calls_failed"),
        count(&before, "calls_failed").map(|n| n + 1)
    );

    // Headers: a 4 KiB request header never reaches the internal server; an answer with
    // 8 KiB of headers is not passed on.
    let seen_before = s.internal.requests().len();
    let r = s
        .api
        .http
        .get(format!("{}/v1/agents/a1/connections/o/http/h", s.api.base))
        .bearer_auth(&s.api.key)
        .header("x-large", "v".repeat(4096))
        .send()
        .await?;
    assert_eq!(r.status(), 431);
    let body: serde_json::Value = r.json().await?;
    assert_eq!(error_code(&body), "payload_too_large");
    assert!(body.to_string().contains("max_header_bytes"), "{body}");
    assert_eq!(s.internal.requests().len(), seen_before);
    let r = s.api.call("a1", "o", "/big-headers").await?;
    assert_eq!(r.status(), 502);
    let body: serde_json::Value = r.json().await?;
    assert_eq!(error_code(&body), "answer_too_large");
    assert!(body.to_string().contains("answer headers"), "{body}");

    // Within the limits everything still works.
    let r = s.api.call("a1", "o", "/bytes/900").await?;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await?.len(), 900);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_callers_host_header_cannot_redirect_the_call() -> Result<()> {
    let s = setup().await?;
    let config = s.dir.write_private(
        "agent.toml",
        &s.config(&format!("relay = \"{}\"", s.relay.ssh)),
    )?;
    let _agent = AgentProcess::start(&s.bins, &config)?;
    s.api
        .wait_online("a1", true, Duration::from_secs(15))
        .await?;
    // Raw request: a Host header naming another server, and X-Forwarded-Host for good measure.
    let mut stream = std::net::TcpStream::connect(s.relay.api)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    use std::io::{Read, Write};
    write!(
        stream,
        "GET /v1/agents/a1/connections/o/http/where HTTP/1.1\r\nHost: evil.example\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
        s.api.key
    )?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let seen = s.internal.requests();
    let host = seen[0]
        .headers
        .iter()
        .find(|(k, _)| k == "host")
        .map(|(_, v)| v.clone());
    assert_eq!(
        host.as_deref(),
        Some(s.internal.addr.to_string().as_str()),
        "the Host must be the connection's own"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_and_the_token_are_managed_from_the_cli() -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let s = setup().await?;
    let head = format!(
        "# managed by hand — keep this comment\nrelay = \"{}\"",
        s.relay.ssh
    );
    let config = s.dir.write_private("agent.toml", &s.config(&head))?;
    let agent = |args: &[&str], stdin: Option<&str>| -> Result<(bool, String)> {
        use std::io::Write;
        let mut child = Command::new(&s.bins.agent)
            .args(args)
            .arg("--config")
            .arg(&config)
            .env("ORDERS_SECRET", "0123456789abcdef0123456789abcdef")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        if let Some(input) = stdin {
            child
                .stdin
                .take()
                .context("stdin")?
                .write_all(input.as_bytes())?;
        }
        let out = child.wait_with_output()?;
        Ok((
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        ))
    };

    let (ok, text) = agent(
        &[
            "connection",
            "add",
            "orders",
            "--base-uri",
            &s.internal.base_uri(),
            "--auth",
            "jwt_bearer",
            "--algorithm",
            "HS256",
            "--secret-env",
            "ORDERS_SECRET",
            "--header",
            "kid=k1",
            "--payload",
            "aud=orders",
            "--payload",
            "iat={{now}}",
            "--payload",
            "exp={{now + 60}}",
        ],
        None,
    )?;
    assert!(ok, "{text}");
    let written = std::fs::read_to_string(&config)?;
    assert!(
        written.contains("# managed by hand — keep this comment"),
        "comments kept:\n{written}"
    );
    assert!(written.contains("[connections.orders.auth]"), "{written}");
    assert_eq!(
        std::fs::metadata(&config)?.permissions().mode() & 0o777,
        0o600
    );
    let (ok, text) = agent(&["config", "check"], None)?;
    assert!(ok, "{text}");

    // Refused edits leave the file as it was.
    let before = std::fs::read_to_string(&config)?;
    for bad in [
        vec!["connection", "add", "orders", "--base-uri", "http://x"],
        vec!["connection", "add", "broken", "--base-uri", "ftp://x"],
        vec![
            "connection",
            "add",
            "nokey",
            "--base-uri",
            "http://x",
            "--auth",
            "jwt_bearer",
            "--algorithm",
            "RS256",
        ],
        vec!["connection", "remove", "nope"],
    ] {
        let (ok, text) = agent(&bad, None)?;
        assert!(!ok, "{bad:?} was accepted: {text}");
        assert_eq!(
            std::fs::read_to_string(&config)?,
            before,
            "{bad:?} changed the file"
        );
    }

    let (ok, text) = agent(&["connection", "show", "o"], None)?;
    assert!(ok && text.contains("base_uri"), "{text}");

    // An HS256 connection `name` keyed by hmac.txt, with `more` arguments.
    let add_hs256 = |name: &str, more: &[&str]| {
        let mut args = vec![
            "connection",
            "add",
            name,
            "--base-uri",
            "http://127.0.0.1:9/x",
            "--auth",
            "jwt_bearer",
            "--algorithm",
            "HS256",
            "--secret-file",
            "hmac.txt",
        ];
        args.extend_from_slice(more);
        agent(&args, None)
    };
    // A secret file that is not there yet is refused; once written, the add goes through.
    let (ok, text) = add_hs256("inline", &[])?;
    assert!(!ok, "a missing secret file is refused: {text}");
    s.dir
        .write_private("hmac.txt", "a-long-enough-hmac-secret-for-tests")?;
    let (ok, text) = add_hs256("inline", &[])?;
    assert!(ok, "{text}");
    // Values keep the type they were written with: a numeric kid is still a string.
    let (ok, text) = add_hs256(
        "typed",
        &[
            "--header",
            "kid=1",
            "--payload",
            "sub=0012",
            "--payload",
            "ref=\"42\"",
            "--payload",
            "n=42",
        ],
    )?;
    assert!(ok, "{text}");
    let (ok, text) = agent(&["jwt", "sign", "--connection", "typed"], None)?;
    assert!(ok, "{text}");
    let jwt = text
        .lines()
        .find(|l| l.matches('.').count() == 2)
        .context("no JWT printed")?;
    let part = |i: usize| -> Result<serde_json::Value> {
        use base64::Engine;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(jwt.split('.').nth(i).unwrap_or_default())?;
        Ok(serde_json::from_slice(&bytes)?)
    };
    let (header, claims) = (part(0)?, part(1)?);
    assert_eq!(header["kid"], "1", "{header}");
    assert_eq!(claims["sub"], "0012", "{claims}");
    assert_eq!(claims["ref"], "42", "{claims}");
    assert_eq!(claims["n"], 42, "{claims}");
    let (ok, text) = agent(&["connection", "remove", "typed"], None)?;
    assert!(ok, "{text}");
    let (ok, text) = agent(&["connection", "remove", "inline"], None)?;
    assert!(ok, "{text}");
    assert!(!std::fs::read_to_string(&config)?.contains("[connections.inline"));

    // token set: a mistyped token is refused; a good one lands and the agent connects with it.
    let (ok, text) = agent(&["token", "set"], Some("pst_typo\n"))?;
    assert!(!ok && text.contains("not valid"), "{text}");
    let state = s.relay.state_dir.to_string_lossy().into_owned();
    let (_, fresh) = create_agent(&s.bins, std::path::Path::new(&state), "a2")?;
    let (ok, text) = agent(&["token", "set"], Some(&format!("{fresh}\n")))?;
    assert!(ok, "{text}");
    assert!(!text.contains(&fresh), "the token is never echoed");
    let mut cmd = Command::new(&s.bins.agent);
    cmd.args(["run", "--config"])
        .arg(&config)
        .env("ORDERS_SECRET", "0123456789abcdef0123456789abcdef")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _running = KillOnDrop(cmd.spawn()?);
    s.api
        .wait_online("a2", true, Duration::from_secs(15))
        .await?;
    assert_eq!(s.api.call("a2", "orders", "/signed").await?.status(), 200);
    let jwt = s.internal.requests()[0]
        .authorization
        .clone()
        .unwrap_or_default();
    assert!(jwt.starts_with("Bearer ey"), "{jwt}");
    Ok(())
}
