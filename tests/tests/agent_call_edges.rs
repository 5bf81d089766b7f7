//! The agent's call path at its edges, through the real relay and agent:
//! uploads slower than the timeout, `x-postern-error` from an internal server, the
//! token endpoint's TLS, and what `postern connection test` says about TLS.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use postern_tests::harness::{Bins, Tunnel, agent_cli, offline_agent_config};
use postern_tests::internal_server::{InternalServer, Verifier};
use postern_tests::paced_body::{paced_body, when};
use postern_tests::pki::{KillOnDrop, make_pki, python_https};
use postern_tests::relay_support::error_code;
use postern_tests::temp::TempDir;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn bins() -> Bins {
    postern_tests::bins!()
}

/// The connections' `timeout` in the upload tests.
const TIMEOUT: Duration = Duration::from_secs(1);
/// Time for scheduling on a busy machine, on top of what a test expects.
const SLACK: Duration = Duration::from_millis(1500);

async fn post(tunnel: &Tunnel, connection: &str, body: reqwest::Body) -> Result<reqwest::Response> {
    Ok(tunnel
        .api
        .http
        .post(format!(
            "{}/v1/agents/a1/connections/{connection}/http/upload",
            tunnel.api.base
        ))
        .bearer_auth(&tunnel.api.key)
        .body(body)
        .send()
        .await?)
}

/// An internal server that reads a request's head and its whole `Content-Length` or
/// chunked body, counts the body's bytes, and then never answers.
struct Silent {
    addr: SocketAddr,
    read: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Silent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Silent {
    async fn start() -> Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let read = Arc::new(AtomicUsize::new(0));
        let counter = read.clone();
        let task = tokio::spawn(async move {
            for _ in 0..16 {
                let Ok((socket, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(hold(socket, counter.clone()));
            }
        });
        Ok(Self { addr, read, task })
    }
}

/// Reads everything the agent sends until the body's end (a chunked body ends with
/// `0\r\n\r\n`), then keeps the connection open without a word for a minute.
async fn hold(mut socket: tokio::net::TcpStream, read: Arc<AtomicUsize>) {
    let mut seen = Vec::new();
    let mut buffer = vec![0u8; 64 * 1024];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while tokio::time::Instant::now() < deadline {
        let n = match tokio::time::timeout_at(deadline, socket.read(&mut buffer)).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => return,
        };
        seen.extend_from_slice(&buffer[..n]);
        read.store(seen.len(), Ordering::SeqCst);
        if seen.ends_with(b"0\r\n\r\n") {
            break;
        }
    }
    tokio::time::sleep_until(deadline).await;
    let _ = socket.shutdown().await;
}

/// `r` is 504 `upstream_timeout`, come one connection timeout after the body's last piece
/// (`last`, as [`paced_body`] notes it); returns its message.
async fn answered_504_a_timeout_after(
    r: reqwest::Response,
    last: &std::sync::Mutex<Option<Instant>>,
) -> Result<String> {
    let answered = Instant::now();
    let status = r.status();
    let answer: Value = r.json().await?;
    assert_eq!(status, 504, "{answer}");
    assert_eq!(error_code(&answer), "upstream_timeout", "{answer}");
    let after = answered.duration_since(when(last)?);
    // Twice the slack (3 s) for a loaded machine: a call not timed from its last piece
    // would get 200 after the stall, or wait far longer.
    assert!(
        after >= TIMEOUT && after < TIMEOUT + 2 * SLACK,
        "504 {after:?} after the last piece"
    );
    Ok(answer["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned())
}

/// An upload that takes three times the connection's timeout, but never pauses that long,
/// goes through whole; one that stalls for longer than the timeout gets 504.
#[tokio::test(flavor = "multi_thread")]
async fn uploads_are_timed_from_their_last_progress() -> Result<()> {
    let internal = InternalServer::start(Verifier::None, "unused").await?;
    let silent = Silent::start().await?;
    let dir = TempDir::new("review-upload")?;
    let connections = format!(
        "[connections.reads]\nbase_uri = \"{}\"\ntimeout = \"1s\"\n\
         [connections.silent]\nbase_uri = \"http://{}/api\"\ntimeout = \"1s\"\n",
        internal.base_uri(),
        silent.addr
    );
    let tunnel = Tunnel::start(&bins(), &dir, &connections).await?;

    // 12 pieces 250 ms apart: 3 s in all against a 1 s timeout.
    let started = Instant::now();
    let (body, _) = paced_body(12, Duration::from_millis(250), None);
    let r = post(&tunnel, "reads", body).await?;
    let took = started.elapsed();
    let status = r.status();
    let answer: Value = r.json().await?;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["body_len"], 12 * 64 * 1024, "{answer}");
    assert!(took > 2 * TIMEOUT, "the upload took {took:?}");

    // Two pieces, then silence for four timeouts: 504 about one timeout after the last piece.
    let (body, last) = paced_body(2, Duration::from_millis(100), Some(4 * TIMEOUT));
    let r = post(&tunnel, "reads", body).await?;
    let message = answered_504_a_timeout_after(r, &last).await?;
    assert!(message.contains("did not answer within 1s"), "{message}");

    // The whole body, slowly, to a server that takes it all and never answers: 504 one
    // timeout after the body's end, not one timeout after the call's start.
    let (body, last) = paced_body(8, Duration::from_millis(250), None);
    let r = post(&tunnel, "silent", body).await?;
    answered_504_a_timeout_after(r, &last).await?;
    assert!(
        silent.read.load(Ordering::SeqCst) > 8 * 64 * 1024,
        "the server got the whole body"
    );
    Ok(())
}

/// On a connection that caches its token, a small body is read whole before it is sent
/// (to send it again after a 401): a caller that stalls there gets 504 one timeout after
/// its last piece too, not a wait for the relay's `call_timeout`; a chunked body that
/// passes `max_request_body` there is refused before anything is sent.
#[tokio::test(flavor = "multi_thread")]
async fn a_small_body_read_for_a_retry_is_timed_and_bounded_too() -> Result<()> {
    let internal = InternalServer::start(Verifier::None, "unused").await?;
    let dir = TempDir::new("review-upload-signed")?;
    dir.write_private(
        "hmac.secret",
        "a shared secret of at least thirty-two bytes!",
    )?;
    // Two connections alike but for max_request_body: below and at what is kept.
    let connection = |name: &str, max_body: usize| {
        format!(
            "[connections.{name}]\nbase_uri = \"{}\"\ntimeout = \"1s\"\nmax_request_body = {max_body}\n\
             [connections.{name}.auth]\ntype = \"jwt_bearer\"\nalgorithm = \"HS256\"\n\
             secret_file = \"hmac.secret\"\nlifetime = \"5m\"\nreuse_for = \"1m\"\n\
             payload = {{ aud = \"unused\" }}\n",
            internal.base_uri()
        )
    };
    let connections = connection("signed", 64 * 1024) + &connection("small", 1000);
    let tunnel = Tunnel::start(&bins(), &dir, &connections).await?;
    // The first call signs the token the next ones reuse (and could retry with another).
    for name in ["signed", "small"] {
        let r = tunnel.api.call("a1", name, "/warm").await?;
        assert_eq!(r.status(), 200);
    }

    // Three pieces of 600 bytes: the second passes the limit; none went out.
    let pieces =
        futures_util::stream::iter((0..3).map(|_| Ok::<_, std::io::Error>(vec![b'x'; 600])));
    let seen = internal.requests().len();
    let r = post(&tunnel, "small", reqwest::Body::wrap_stream(pieces)).await?;
    assert_eq!(r.status(), 413);
    let answer: Value = r.json().await?;
    assert!(
        answer.to_string().contains("max_request_body (1000 bytes)"),
        "{answer}"
    );
    assert_eq!(internal.requests().len(), seen, "nothing was sent");

    // One piece (64 KiB: not past what is kept for a retry, nor the limit), then silence.
    // Nothing was sent, and the message says so (before 2026-12-07 it said the internal
    // server did not answer).
    let (body, last) = paced_body(1, Duration::from_millis(100), Some(4 * TIMEOUT));
    let seen = internal.requests().len();
    let r = post(&tunnel, "signed", body).await?;
    let message = answered_504_a_timeout_after(r, &last).await?;
    assert!(
        message.contains("stopped arriving for 1s before the call was sent; nothing reached"),
        "{message}"
    );
    assert_eq!(internal.requests().len(), seen, "nothing was sent");
    Ok(())
}

/// An internal server that answers with postern's own error header.
async fn faking_server() -> Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = axum::Router::new().fallback(|uri: axum::http::Uri| async move {
        let status = if uri.path().ends_with("/down") {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::OK
        };
        (
            status,
            [("x-postern-error", "rate_limited"), ("x-own", "kept")],
            "the internal server's own answer",
        )
            .into_response()
    });
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((addr, task))
}

#[tokio::test(flavor = "multi_thread")]
async fn an_internal_server_cannot_fake_a_postern_error() -> Result<()> {
    let (addr, server) = faking_server().await?;
    let dir = TempDir::new("review-fake")?;
    let connections = format!("[connections.fake]\nbase_uri = \"http://{addr}/api\"\n");
    let tunnel = Tunnel::start(&bins(), &dir, &connections).await?;
    for (path, status) in [("/ok", 200), ("/down", 503)] {
        let r = tunnel.api.call("a1", "fake", path).await?;
        assert_eq!(r.status(), status);
        assert_eq!(
            r.headers().get("x-own").and_then(|v| v.to_str().ok()),
            Some("kept"),
            "the internal server's other headers pass"
        );
        assert!(
            r.headers().get("x-postern-error").is_none(),
            "{path}: {:?}",
            r.headers()
        );
        assert_eq!(r.text().await?, "the internal server's own answer");
    }
    // postern's own errors still carry it.
    let r = tunnel.api.call("a1", "fake", "/..;/admin").await?;
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.headers()
            .get("x-postern-error")
            .and_then(|v| v.to_str().ok()),
        Some("path_rejected")
    );
    server.abort();
    Ok(())
}

/// Answers `GET` with what it got, and `POST` (the token endpoint) with an access token.
const HTTPS_SERVER: &str = r#"
import http.server, ssl, sys, json
cert, key, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
class H(http.server.BaseHTTPRequestHandler):
    def answer(self, body):
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def do_GET(self):
        self.answer({"ok": True, "authorization": self.headers.get("Authorization")})
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.answer({"access_token": "from-the-https-endpoint", "token_type": "Bearer", "expires_in": 300})
    def log_message(self, *a):
        pass
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
srv = http.server.ThreadingHTTPServer(("127.0.0.1", port), H)
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
srv.serve_forever()
"#;

/// Python's HTTPS server on a free port; returns once it accepts connections.
fn https_server(dir: &TempDir) -> Result<(KillOnDrop, u16)> {
    python_https(dir.path(), HTTPS_SERVER, &[])
}

/// Connections to an HTTPS server whose certificate only `ca.pem` vouches for: one
/// skipping verification, one trusting `ca.pem`; each with and without a token exchange
/// at the same server.
fn tls_connections(port: u16) -> String {
    let mut text = String::new();
    for (name, tls) in [
        ("skip", "{ insecure_skip_verify = true }"),
        ("own-ca", "{ ca_file = \"ca.pem\" }"),
    ] {
        text.push_str(&format!(
            r#"
[connections.{name}]
base_uri = "https://127.0.0.1:{port}/api"
tls = {tls}
test = {{ path = "/health" }}

[connections.{name}-exchange]
base_uri = "https://127.0.0.1:{port}/api"
tls = {tls}
[connections.{name}-exchange.auth]
type = "jwt_bearer"
algorithm = "HS256"
secret = "a-review-secret-of-32-bytes-long"
payload = {{ iss = "postern", aud = "https://127.0.0.1:{port}/token" }}
lifetime = "5m"
[connections.{name}-exchange.auth.exchange]
token_url = "https://127.0.0.1:{port}/token"
"#
        ));
    }
    text
}

/// The token endpoint is reached with the system's roots only: a connection's
/// `insecure_skip_verify` or `ca_file` are for its internal server, so a token endpoint
/// whose certificate only those would accept fails the exchange.
#[tokio::test(flavor = "multi_thread")]
async fn the_token_endpoint_gets_none_of_the_connections_tls_settings() -> Result<()> {
    let dir = TempDir::new("review-token-tls")?;
    make_pki(dir.path())?;
    let (_server, port) = https_server(&dir)?;
    let tunnel = Tunnel::start(&bins(), &dir, &tls_connections(port)).await?;
    for name in ["skip", "own-ca"] {
        // The internal server itself is reached with the connection's settings.
        let r = tunnel.api.call("a1", name, "/x").await?;
        assert_eq!(r.status(), 200, "{name}: {}", r.text().await?);

        let exchange = format!("{name}-exchange");
        let r = tunnel.api.call("a1", &exchange, "/x").await?;
        let status = r.status();
        let answer: Value = r.json().await?;
        assert_eq!(status, 502, "{exchange}: {answer}");
        assert_eq!(error_code(&answer), "token_exchange_failed", "{answer}");
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        // Refused for its certificate, not for anything else on the way.
        assert!(
            message.contains(&format!("https://127.0.0.1:{port}/token"))
                && message.contains("invalid peer certificate: UnknownIssuer"),
            "{message}"
        );
    }
    Ok(())
}

/// `postern connection test` says "TLS verified" only when it was.
#[tokio::test(flavor = "multi_thread")]
async fn connection_test_says_when_tls_is_not_verified() -> Result<()> {
    let dir = TempDir::new("review-conn-test")?;
    make_pki(dir.path())?;
    let (_server, port) = https_server(&dir)?;
    // The command runs locally, without a relay.
    let config = dir.write_private(
        "agent.toml",
        &offline_agent_config("127.0.0.1:1", &tls_connections(port)),
    )?;
    let test = |name: &str| -> Result<String> {
        let out = agent_cli(&bins(), &config, &["connection", "test", name])?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            bail!(
                "connection test {name} failed:\n{text}{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(text)
    };
    let text = test("skip")?;
    assert!(
        text.contains("ok    http   200 OK, TLS not verified (insecure_skip_verify), expected 2xx"),
        "{text}"
    );
    let text = test("own-ca")?;
    assert!(
        text.contains("ok    http   200 OK, TLS verified, expected 2xx"),
        "{text}"
    );
    Ok(())
}

/// An internal server that refuses every JWT the agent makes (here: another secret) is
/// said in the agent's log, once a minute, naming the connection: before 2026-12-07 each
/// 401 went back to its caller and counted as served, with nothing at WARN.
#[tokio::test(flavor = "multi_thread")]
async fn tokens_the_internal_server_refuses_are_said_once_a_minute() -> Result<()> {
    let internal = InternalServer::start(
        Verifier::Hs256(b"the internal server's own secret, 32+ bytes".to_vec()),
        "refusing",
    )
    .await?;
    let dir = TempDir::new("review-refused-jwt")?;
    dir.write_private("hmac.secret", "another secret of at least thirty-two bytes")?;
    // `slow`: one call a minute, none waited for, so a second one is postern's own 429.
    let connections = format!(
        "metrics_listen = \"127.0.0.1:0\"\n\
         [connections.slow]\nbase_uri = \"{0}\"\nmax_wait = \"0s\"\n\
         rate_limit = {{ requests = 1, per = \"1m\", burst = 1 }}\n\
         [connections.wrongkey]\nbase_uri = \"{0}\"\n\
         [connections.wrongkey.auth]\ntype = \"jwt_bearer\"\nalgorithm = \"HS256\"\n\
         secret_file = \"hmac.secret\"\nlifetime = \"5m\"\npayload = {{ aud = \"refusing\" }}\n",
        internal.base_uri()
    );
    let tunnel = Tunnel::start(&bins(), &dir, &connections).await?;
    for _ in 0..5 {
        let r = tunnel.api.call("a1", "wrongkey", "/x").await?;
        assert_eq!(r.status(), 401);
        assert!(
            r.headers().get("x-postern-error").is_none(),
            "the server's own 401"
        );
    }
    let line = "the internal server refused (401) a token made for this call";
    tunnel.agent.logs.wait_for(line, Duration::from_secs(5))?;
    let said = tunnel.agent.logs.text();
    assert_eq!(said.matches(line).count(), 1, "{said}");
    assert!(
        said.lines()
            .any(|l| l.contains(line) && l.contains("connection=wrongkey") && l.contains("WARN")),
        "{said}"
    );

    // The metrics tell postern's own answers from the internal server's: a 401 or 429
    // alone says nothing of whose it was (before 2026-12-07 there was no such label).
    let mut statuses = Vec::new();
    for _ in 0..2 {
        let r = tunnel.api.call("a1", "slow", "/x").await?;
        statuses.push(r.status().as_u16());
    }
    assert_eq!(statuses[1], 429, "{statuses:?}");
    let port = tunnel.agent.metrics_port()?;
    let metrics = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await?
        .text()
        .await?;
    for series in [
        "postern_agent_calls_total{connection=\"wrongkey\",status=\"401\",postern_error=\"none\"} 5\n",
        "postern_agent_calls_total{connection=\"slow\",status=\"429\",postern_error=\"rate_limited\"} 1\n",
    ] {
        assert!(
            metrics.contains(series),
            "{series:?} missing from:\n{metrics}"
        );
    }
    Ok(())
}
