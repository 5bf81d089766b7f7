//! A table of hostile HTTP requests sent raw to a running relay (bad JSON, huge and
//! malformed heads, invalid UTF-8, smuggling, method overrides, wrong credentials):
//! each gets a clear refusal, nothing changes, and the connected agent keeps serving.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::{Result, bail};
use postern_tests::relay_support::{OnlineAgent, RelayWorld};

/// Sends `request` as it is; returns the status (0 if the relay only closed) and the answer.
fn raw(addr: std::net::SocketAddr, request: &[u8]) -> Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(request)?;
    let mut answer = Vec::new();
    // A refusal may end in a reset once the relay has answered: what arrived counts.
    let _ = stream.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|t| t.get(..3))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((status, text))
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_requests_are_refused_clearly_and_the_relay_keeps_serving() -> Result<()> {
    let w = RelayWorld::start(postern_tests::bins!()).await?;
    let OnlineAgent {
        token,
        process: _agent,
        ..
    } = w.agent_online("a1").await?;
    let addr = w.relay.api;
    let key = w.admin.key.clone();
    let head = |line: &str, extra: &str| {
        format!(
            "{line}\r\nHost: relay\r\nAuthorization: Bearer {key}\r\nConnection: close\r\n{extra}"
        )
    };
    let post = |path: &str, content_type: &str, body: &str| {
        format!(
            "{}Content-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{body}",
            head(&format!("POST {path} HTTP/1.1"), ""),
            body.len()
        )
        .into_bytes()
    };
    let get = |path: &str, extra: &str| {
        format!("{}\r\n", head(&format!("GET {path} HTTP/1.1"), extra)).into_bytes()
    };
    let huge = "x".repeat(64 * 1024);
    let long_name = format!("{{\"name\":\"{}\"}}", "n".repeat(10_000));
    let mut invalid_utf8_path = b"GET /v1/agents/\xff\xfe HTTP/1.1\r\nHost: relay\r\n".to_vec();
    invalid_utf8_path.extend_from_slice(
        format!("Authorization: Bearer {key}\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    // (name, request, expected status, expected error code; "" for a bare refusal by the parser)
    let rows: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("truncated JSON", post("/v1/agents", "application/json", "{\"name\":"), 400, "bad_request"),
        ("JSON of the wrong shape", post("/v1/agents", "application/json", "{\"name\":5}"), 400, "bad_request"),
        ("JSON with an unknown field", post("/v1/agents", "application/json", "{\"name\":\"x1\",\"admin\":true}"), 400, "bad_request"),
        ("not JSON at all", post("/v1/agents", "text/plain", "name=x2"), 400, "bad_request"),
        ("a 10,000-character name", post("/v1/agents", "application/json", &long_name), 400, "bad_request"),
        ("a name with a slash", post("/v1/agents", "application/json", "{\"name\":\"../x\"}"), 400, "bad_request"),
        ("raw invalid UTF-8 in the path", invalid_utf8_path, 400, ""),
        ("percent-encoded invalid UTF-8 in the path", get("/v1/agents/%FF%FE", ""), 400, "bad_request"),
        ("an unknown agent", get("/v1/agents/nobody", ""), 404, "agent_not_found"),
        ("a call to an unknown agent", get("/v1/agents/nobody/connections/orders/http/x", ""), 404, "agent_not_found"),
        ("a call to an unknown connection", get("/v1/agents/a1/connections/nope/http/x", ""), 404, "unknown_connection"),
        ("an unknown route", get("/v2/everything", ""), 404, "not_found"),
        ("a method override header", get("/v1/agents/a1", "X-HTTP-Method-Override: DELETE\r\nX-Method-Override: DELETE\r\n"), 200, ""),
        ("no API key", b"GET /v1/agents HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n".to_vec(), 401, "unauthorized"),
        ("a malformed API key", b"GET /v1/agents HTTP/1.1\r\nHost: relay\r\nAuthorization: Bearer psk_nope\r\nConnection: close\r\n\r\n".to_vec(), 401, "unauthorized"),
        ("an agent token as API key", format!("GET /v1/agents HTTP/1.1\r\nHost: relay\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n").into_bytes(), 401, "unauthorized"),
        ("a 64 KiB header", get("/v1/agents", &format!("X-Big: {huge}\r\n")), 431, ""),
        ("a 20 KiB header (over max_header_bytes, under the read buffer)", get("/v1/agents", &format!("X-Big: {}\r\n", &huge[..20 * 1024])), 431, "payload_too_large"),
        ("a space in the path", b"GET /v1/age nts HTTP/1.1\r\nHost: relay\r\n\r\n".to_vec(), 400, ""),
        ("CR/LF smuggled into a header value", get("/v1/agents", "X-A: a\rInjected: b\r\n"), 400, ""),
        ("an absurd Content-Length", format!("{}Content-Length: 99999999999999999999999\r\n\r\n", head("POST /v1/agents HTTP/1.1", "")).into_bytes(), 400, ""),
        ("Content-Length and chunked at once", format!("{}Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", head("POST /v1/agents HTTP/1.1", "")).into_bytes(), 400, ""),
        ("chunked garbage", format!("{}Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n", head("POST /v1/agents HTTP/1.1", "")).into_bytes(), 400, ""),
        ("a TLS hello on the plain port", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03".to_vec(), 400, ""),
        ("HTTP/0.9", b"GET /v1/agents\r\n\r\n".to_vec(), 400, ""),
    ];
    for (name, request, status, code) in rows {
        let (got, text) = raw(addr, &request)?;
        // A parser refusal may be a bare status or a close; never a success or a 5xx.
        let refused_by_parser = code.is_empty() && status >= 400 && (got == status || got == 0);
        if !(got == status || refused_by_parser) {
            bail!("{name}: expected {status}, got {got}:\n{text}");
        }
        if !code.is_empty() {
            assert!(
                text.contains(&format!("\"code\":\"{code}\"")),
                "{name}: expected code {code}:\n{text}"
            );
        }
    }
    // A method the route lacks: 405, and which methods it has.
    let (got, text) = raw(addr, &get("/v1/agents/a1/token", ""))?;
    assert_eq!(got, 405, "{text}");
    assert!(text.contains("\"code\":\"method_not_allowed\""), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("\r\nallow: post\r\n"),
        "a 405 lists the route's methods in Allow:\n{text}"
    );
    assert!(
        text.contains("GET is not allowed on this route; it takes POST"),
        "and in its message:\n{text}"
    );
    // A key sent with another scheme is told which one to use.
    let basic = b"GET /v1/agents HTTP/1.1\r\nHost: relay\r\nAuthorization: Basic YWRtaW46eA==\r\nConnection: close\r\n\r\n";
    let (got, text) = raw(addr, basic)?;
    assert_eq!(got, 401, "{text}");
    assert!(
        text.contains("the Authorization scheme must be Bearer"),
        "{text}"
    );
    // Every 401 says how to authenticate; one for a key sent but not taken, that it is not.
    let challenge = |text: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix("www-authenticate: "))
            .map(str::to_owned)
    };
    assert_eq!(
        challenge(&text).as_deref(),
        Some(r#"Bearer realm="postern""#),
        "{text}"
    );
    let malformed = b"GET /v1/agents HTTP/1.1\r\nHost: relay\r\nAuthorization: Bearer psk_nope\r\nConnection: close\r\n\r\n";
    let (got, text) = raw(addr, malformed)?;
    assert_eq!(got, 401, "{text}");
    assert_eq!(
        challenge(&text).as_deref(),
        Some(r#"Bearer realm="postern", error="invalid_token""#),
        "{text}"
    );
    // Nothing changed: the override did not delete, no bad name was created.
    let agents = w.admin.agent("a1").await?;
    assert!(
        agents.online,
        "the method override must not have revoked a1"
    );
    let list: serde_json::Value = w
        .admin
        .http
        .get(format!("{}/v1/agents", w.admin.base))
        .bearer_auth(&w.admin.key)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(list["agents"].as_array().map(Vec::len), Some(1), "{list}");
    // And the agent still serves calls.
    assert_eq!(
        w.admin.call("a1", "orders", "/still-fine").await?.status(),
        200
    );
    Ok(())
}

/// A name in a call's path is the caller's text: in the relay's log it stays on the line
/// it belongs to, escaped, and cannot pass for an entry of the relay's own.
#[tokio::test(flavor = "multi_thread")]
async fn a_caller_cannot_forge_relay_log_lines() -> Result<()> {
    let w = RelayWorld::start(postern_tests::bins!()).await?;
    let key = w.admin.key.clone();
    let forged = "x%0A2026-01-01T00:00:00.000000Z%20ERROR%20FORGED-ENTRY%1B%5B2J";
    let request = format!(
        "GET /v1/agents/{forged}/connections/c%0Dd/http/x HTTP/1.1\r\nHost: relay\r\nAuthorization: Bearer {key}\r\nConnection: close\r\n\r\n"
    );
    let (status, text) = raw(w.relay.api, request.as_bytes())?;
    assert_eq!(status, 404, "{text}");
    let escaped = r"x\n2026-01-01T00:00:00.000000Z ERROR FORGED-ENTRY\u{1b}[2J";
    w.relay.logs.wait_for(escaped, Duration::from_secs(10))?;
    let logs = w.relay.logs.text();
    for line in logs.lines().filter(|l| l.contains("FORGED-ENTRY")) {
        assert!(line.contains(escaped), "a line of its own:\n{logs}");
        assert!(!line.contains('\u{1b}'), "a raw escape:\n{logs}");
    }
    assert!(logs.contains(r"c\rd"), "{logs}");
    Ok(())
}
