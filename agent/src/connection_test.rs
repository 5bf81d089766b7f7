//! Runs a connection's `test` request step by step (DNS, TCP, token, HTTP) and reports
//! each step's outcome and time: for `postern connection test`, as text or JSON.

use std::fmt;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::HeaderMap;
use serde::{Deserialize, Serialize};

use crate::call::{CallContext, RequestBody, Wait, send_with_retries};
use crate::config::Auth;
use crate::upstream_url;

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

/// Sends the connection's test request with its real auth (signing or exchanging a token).
pub async fn run(ctx: &CallContext) -> TestReport {
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
    let url = match upstream_url::build(&conn.base_uri, &test.path) {
        Ok(url) => url,
        Err(e) => {
            report.url = format!("{}{}", conn.base_uri, test.path);
            report.step("path", started, Err(format!("{e}: {:?}", test.path)));
            return report;
        }
    };
    report.url = url.to_string();
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
    let shown: Vec<String> = addrs.iter().take(3).map(|a| a.ip().to_string()).collect();
    report.step("dns", started, Ok(format!("{host} → {}", shown.join(", "))));
    let started = Instant::now();
    // Every address in turn, as calls' connector does: `localhost` is often `::1` first,
    // and a server on 127.0.0.1 alone must not fail the test while calls reach it.
    let tcp = crate::relay_dial::first_to_accept(addrs, conn.timeout, conn.timeout)
        .await
        .map(|stream| match stream.peer_addr() {
            Ok(peer) => format!("connected to {peer}"),
            Err(_) => "connected".to_owned(),
        })
        .map_err(|e| format!("cannot connect to {e}"));
    if !report.step("tcp", started, tcp) {
        return report;
    }
    let started = Instant::now();
    let bearer = match &ctx.bearer {
        None => None,
        Some(source) => match source.get(&ctx.token_http, conn.timeout).await {
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

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
