//! Runs a connection's `test` request step by step (DNS, TCP, token, HTTP) and reports
//! each step's outcome and time: for `postern connection test`, as text or JSON, and for
//! the relay's test route, without what only the agent's host needs to see.

use std::fmt;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::HeaderMap;
use serde::{Deserialize, Serialize};

use crate::call::{CallContext, RequestBody, Wait, send_with_retries};
use crate::config::Auth;
use crate::jwt::exchange::shown_url;
use crate::upstream_url;

/// Who reads the report. The relay, and any API key that may call through it, learn
/// whether and where the test failed; not the query of the test's path (which may hold
/// a key, as a call's may) nor the addresses inside the agent's network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience {
    /// `postern connection test` on the agent's host: every detail.
    Local,
    /// The relay's `…/connections/{connection}/test`: the URL without its query, the
    /// resolved and connected addresses as a count.
    Relay,
}

/// The outcome of one step.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Step {
    pub name: String,
    pub ok: bool,
    pub detail: String,
    pub ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TestReport {
    pub connection: String,
    pub method: String,
    pub url: String,
    pub steps: Vec<Step>,
    /// The internal server's status, if it answered.
    pub status: Option<u16>,
    /// `200`-style exact status, or `2xx`.
    pub expected: String,
    /// From sending the request to its response headers.
    pub latency_ms: Option<u64>,
    pub ok: bool,
}

impl TestReport {
    fn step(
        &mut self,
        name: &'static str,
        started: Instant,
        result: Result<String, String>,
    ) -> bool {
        let ok = result.is_ok();
        self.steps.push(Step {
            name: name.to_owned(),
            ok,
            detail: result.unwrap_or_else(|e| e),
            ms: millis(started.elapsed()),
        });
        ok
    }
}

impl fmt::Display for TestReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "connection {}: {} {}",
            self.connection, self.method, self.url
        )?;
        for s in &self.steps {
            let mark = if s.ok { "ok  " } else { "FAIL" };
            writeln!(f, "  {mark}  {:<6} {} ({} ms)", s.name, s.detail, s.ms)?;
        }
        match (self.ok, self.latency_ms) {
            (true, Some(ms)) => write!(f, "result: ok (latency {ms} ms)"),
            _ => write!(f, "result: failed"),
        }
    }
}

/// Sends the connection's test request with its real auth (signing or exchanging a token),
/// and reports it as `audience` may read it.
pub async fn run(ctx: &CallContext, audience: Audience) -> TestReport {
    let relay = audience == Audience::Relay;
    let conn = &ctx.connection;
    let test = &conn.test;
    let mut report = TestReport {
        connection: conn.name.to_string(),
        method: test.method.to_string(),
        url: String::new(),
        steps: Vec::new(),
        status: None,
        expected: test
            .expect_status
            .map(|s| s.to_string())
            .unwrap_or_else(|| "2xx".to_owned()),
        latency_ms: None,
        ok: false,
    };
    // Before the limits: a report that stops at them names its URL too.
    let built = upstream_url::build(&conn.base_uri, &test.path);
    let shown_path = if relay {
        without_query(&test.path)
    } else {
        test.path.clone()
    };
    report.url = match &built {
        Ok(url) if relay => shown_url(url),
        Ok(url) => url.to_string(),
        Err(_) => format!("{}{shown_path}", conn.base_uri),
    };
    let started = Instant::now();
    // A test sends the connection's request for real: it counts among its calls and
    // waits its turn as one does, or a caller could test past the limits.
    let Some(_permit) = ctx.in_flight.try_take() else {
        let (_, why) = crate::call::too_many_calls(conn);
        report.step("limits", started, Err(why));
        return report;
    };
    if let Err(refused) = ctx.limiter.acquire(conn.max_wait).await {
        let refusal = crate::call::rate_limited(conn, refused, Wait::configured(conn));
        report.step("limits", started, Err(refusal.message));
        return report;
    }
    let started = Instant::now();
    let url = match built {
        Ok(url) => url,
        Err(e) => {
            report.step("path", started, Err(format!("{e}: {shown_path:?}")));
            return report;
        }
    };
    // An IPv6 literal without its brackets: `[::1]` is no name a resolver knows.
    let host = match url.host() {
        Some(url::Host::Ipv6(address)) => address.to_string(),
        _ => url.host_str().unwrap_or_default().to_owned(),
    };
    let port = url.port_or_known_default().unwrap_or(80);
    let started = Instant::now();
    let lookup =
        tokio::time::timeout(conn.timeout, tokio::net::lookup_host((host.as_str(), port))).await;
    let addrs: Vec<std::net::SocketAddr> = match lookup {
        Ok(Ok(addrs)) => addrs.collect(),
        Ok(Err(e)) => {
            report.step("dns", started, Err(format!("cannot resolve {host}: {e}")));
            return report;
        }
        Err(_) => {
            report.step(
                "dns",
                started,
                Err(format!("resolving {host} took over {:?}", conn.timeout)),
            );
            return report;
        }
    };
    if addrs.is_empty() {
        report.step("dns", started, Err(format!("{host} has no addresses")));
        return report;
    }
    let resolved = if relay {
        match addrs.len() {
            1 => format!("{host}: 1 address"),
            n => format!("{host}: {n} addresses"),
        }
    } else {
        let shown: Vec<String> = addrs.iter().take(3).map(|a| a.ip().to_string()).collect();
        format!("{host} → {}", shown.join(", "))
    };
    report.step("dns", started, Ok(resolved));
    let started = Instant::now();
    // Every address in turn, as calls' connector does: `localhost` is often `::1` first,
    // and a server on 127.0.0.1 alone must not fail the test while calls reach it.
    let tcp = crate::relay_dial::first_to_accept(addrs, conn.timeout, conn.timeout)
        .await
        .map(|stream| match stream.peer_addr() {
            Ok(peer) if !relay => format!("connected to {peer}"),
            _ => "connected".to_owned(),
        })
        .map_err(|failed| match relay {
            false => format!("cannot connect to {failed}"),
            // As the URL says it: an IPv6 literal in brackets.
            true => format!(
                "cannot connect to {}:{port}: {}",
                url.host_str().unwrap_or_default(),
                failed.without_addresses()
            ),
        });
    if !report.step("tcp", started, tcp) {
        return report;
    }
    let started = Instant::now();
    let bearer = match &ctx.bearer {
        None => None,
        Some(source) => match source.get(conn.timeout).await {
            Ok(bearer) => {
                let what = match &conn.auth {
                    Auth::JwtBearer(jwt) => match &jwt.exchange {
                        Some(x) => format!(
                            "{} JWT exchanged at {} for an access token",
                            jwt.signer.algorithm(),
                            crate::jwt::exchange::shown_url(&x.token_url)
                        ),
                        None => format!("{} JWT signed (direct bearer)", jwt.signer.algorithm()),
                    },
                    Auth::None => "none".to_owned(),
                };
                report.step("token", started, Ok(what));
                Some(bearer)
            }
            Err(e) => {
                report.step("token", started, Err(e.to_string()));
                return report;
            }
        },
    };
    let started = Instant::now();
    let sent = send_with_retries(
        ctx,
        &test.method,
        &url,
        &HeaderMap::new(),
        bearer,
        RequestBody::Buffered(Bytes::new()),
    )
    .await;
    let latency = millis(started.elapsed());
    let (response, again) = match sent {
        Ok(sent) => sent,
        Err((code, message)) => {
            report.step(
                "http",
                started,
                Err(format!("{}: {message}", code.as_str())),
            );
            return report;
        }
    };
    let status = response.status();
    report.status = Some(status.as_u16());
    report.latency_ms = Some(latency);
    let expected = match test.expect_status {
        Some(want) => status.as_u16() == want,
        None => status.is_success(),
    };
    let tls = match (url.scheme() == "https", conn.tls.insecure_skip_verify) {
        (false, _) => "",
        (true, false) => ", TLS verified",
        (true, true) => ", TLS not verified (insecure_skip_verify)",
    };
    let again = match (again.after_close, again.with_new_token) {
        (false, false) => "",
        (true, false) => " (sent again: the server closed the connection without answering)",
        (false, true) => " (sent again: the cached token was refused, and replaced)",
        (true, true) => {
            " (sent again twice: the server closed the connection without answering, then refused the cached token)"
        }
    };
    let detail = format!("{status}{tls}, expected {}{again}", report.expected);
    report.ok = report.step(
        "http",
        started,
        if expected { Ok(detail) } else { Err(detail) },
    );
    report
}

/// `path` with its query, if any, shown as `?…` (as [`shown_url`] shows a URL's).
fn without_query(path: &str) -> String {
    match path.split_once('?') {
        Some((path, _)) => format!("{path}?…"),
        None => path.to_owned(),
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::AgentConfig;
    use crate::config::ConfigFile;

    /// A context for the connection `t` of a config whose `[connections.t]` is `table`.
    fn context(table: &str) -> CallContext {
        let token = postern_protocol::SecretToken::generate(
            postern_protocol::SecretKind::AgentToken,
            &[7u8; postern_protocol::token::BODY_LEN],
        );
        let text = format!(
            "relay = \"127.0.0.1:2222\"\n\
             relay_fingerprint = \"SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU\"\n\
             token = \"{}\"\n[connections.t]\n{table}",
            token.expose()
        );
        let file = ConfigFile::parse(&text).expect("parses");
        let config = AgentConfig::resolve(file, Path::new("/nonexistent"), &|_| {
            Err(std::env::VarError::NotPresent)
        })
        .expect("resolves");
        let connection = Arc::clone(config.connection("t").expect("t"));
        CallContext::new(connection).expect("a client")
    }

    /// One HTTP server on 127.0.0.1 that answers every request 200.
    async fn answering() -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("address").port();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut head = [0u8; 4096];
                    let _ = socket.read(&mut head).await;
                    let answer =
                        b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
                    let _ = socket.write_all(answer).await;
                });
            }
        });
        port
    }

    /// The relay learns each step's outcome, without the test path's query or the
    /// addresses the agent resolved and connected to; `postern connection test` on the
    /// agent's host keeps them.
    #[tokio::test]
    async fn the_relays_report_leaves_out_the_query_and_the_internal_addresses() {
        let port = answering().await;
        let ctx = context(&format!(
            "base_uri = \"http://localhost:{port}/api\"\n\
             test = {{ path = \"/health?api_key=SECRET1\", expect_status = 200 }}\n"
        ));
        let relay = run(&ctx, Audience::Relay).await;
        assert!(relay.ok, "{relay}");
        assert_eq!(relay.url, format!("http://localhost:{port}/api/health?…"));
        let json = serde_json::to_string(&relay).expect("json");
        for internal in ["SECRET1", "127.0.0.1", "::1"] {
            assert!(!json.contains(internal), "{internal} in {json}");
        }
        assert_eq!(relay.steps[1].detail, "connected", "{relay}");

        let local = run(&ctx, Audience::Local).await;
        assert!(local.ok, "{local}");
        assert!(
            local.url.ends_with("/api/health?api_key=SECRET1"),
            "{local}"
        );
        assert!(local.steps[0].detail.starts_with("localhost → "), "{local}");
        assert_eq!(
            local.steps[1].detail,
            format!("connected to 127.0.0.1:{port}"),
            "{local}"
        );

        // Port 9 (discard): nothing listens there. The failure still says what happened.
        let ctx = context(
            "base_uri = \"http://localhost:9\"\ntimeout = \"2s\"\n\
             test = { path = \"/h?k=SECRET2\" }\n",
        );
        let relay = run(&ctx, Audience::Relay).await;
        assert!(!relay.ok, "{relay}");
        assert!(
            relay.steps[1]
                .detail
                .starts_with("cannot connect to localhost:9: "),
            "{relay}"
        );
        let json = serde_json::to_string(&relay).expect("json");
        for internal in ["SECRET2", "127.0.0.1", "::1"] {
            assert!(!json.contains(internal), "{internal} in {json}");
        }
        let local = run(&ctx, Audience::Local).await;
        assert!(local.steps[1].detail.contains("127.0.0.1:9: "), "{local}");
    }
}
