//! What a caller can conclude from the agent's refusals, through the real relay and
//! agent: `upstream_unreachable` only when the request never left, a distinct 502 when
//! it reached the internal server (odd answers from raw-socket servers), answers over
//! the limits as 502 `answer_too_large` rather than 413, and CONNECT, TRACE and TRACK
//! refused, in any case, before anything is signed or sent.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use postern_tests::harness::{Bins, Tunnel};
use postern_tests::relay_support::{error_code, refusal};
use postern_tests::temp::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn bins() -> Bins {
    postern_tests::bins!()
}

/// An HTTP server on 127.0.0.1:0 that answers each connection once: it reads the
/// request's head (the calls here have no body), keeps it, writes what `answer` makes of
/// it, and closes. An empty answer closes without a word.
struct Raw {
    addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Raw {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Raw {
    async fn start(answer: fn(&str) -> Vec<u8>) -> Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let heads = Arc::new(Mutex::new(Vec::new()));
        let seen = heads.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&head).into_owned();
                    let reply = answer(&head);
                    if let Ok(mut seen) = seen.lock() {
                        seen.push(head);
                    }
                    let _ = socket.write_all(&reply).await;
                    let _ = socket.shutdown().await;
                });
            }
        });
        Ok(Self { addr, heads, task })
    }

    fn requests(&self) -> usize {
        self.heads.lock().map(|h| h.len()).unwrap_or_default()
    }
}

/// A 200 with `count` extra header lines and a two-byte body.
fn with_headers(count: usize) -> Vec<u8> {
    let mut answer = String::from("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n");
    for i in 0..count {
        answer.push_str(&format!("x-h{i}: v\r\n"));
    }
    answer.push_str("\r\nok");
    answer.into_bytes()
}

fn connection(name: &str, addr: SocketAddr, extra: &str) -> String {
    format!("[connections.{name}]\nbase_uri = \"http://{addr}/\"\ntimeout = \"5s\"\n{extra}")
}

#[tokio::test(flavor = "multi_thread")]
async fn only_a_request_that_never_left_is_upstream_unreachable() -> Result<()> {
    // With its Content-Length, 98 lines cross: the agent's side adds `date`, the relay reads 100.
    let most = Raw::start(|_| with_headers(97)).await?;
    let many = Raw::start(|_| with_headers(98)).await?;
    let too_many = Raw::start(|_| with_headers(150)).await?;
    let garbage = Raw::start(|_| b"NOT HTTP AT ALL\r\n\r\n".to_vec()).await?;
    let silent = Raw::start(|_| Vec::new()).await?;
    // The discard port, which nothing serves on loopback (as backbone's `dead`): a port
    // bound and let go could be taken by a test running beside this one.
    let closed = SocketAddr::from(([127, 0, 0, 1], 9));
    let dir = TempDir::new("http-semantics-sent")?;
    let connections = [
        connection("most", most.addr, ""),
        connection("many", many.addr, ""),
        connection("toomany", too_many.addr, ""),
        connection("garbage", garbage.addr, ""),
        connection("silent", silent.addr, ""),
        connection("closed", closed, ""),
    ]
    .concat();
    let t = Tunnel::start(&bins(), &dir, &connections).await?;

    let r = t.api.call("a1", "most", "/x").await?;
    let status = r.status();
    let headers = r.headers().clone();
    let text = r.text().await?;
    assert_eq!(status, 200, "{headers:?} {text}");
    assert_eq!(headers["x-h96"], "v");
    assert_eq!(text, "ok");

    // More than cross the tunnel, or than the agent reads: the server ran the request, so
    // no "unreachable" (and no tunnel error from the relay either).
    for (name, server) in [("many", &many), ("toomany", &too_many)] {
        let (status, header, body) = refusal(t.api.call("a1", name, "/x").await?).await?;
        assert_eq!(status, 502, "{name}: {body}");
        assert_eq!(header, "answer_too_large", "{name}: {body}");
        assert_eq!(error_code(&body), "answer_too_large");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("header lines"), "{name}: {message}");
        assert!(
            message.contains("may have been acted on"),
            "{name}: {message}"
        );
        assert_eq!(server.requests(), 1, "{name}: the request reached it");
    }

    // A GET closed on without a word is sent once more (as on a connection the server let
    // go just then); a server that does it every time gets it twice, and the caller 502.
    for (name, server, sent) in [("garbage", &garbage, 1), ("silent", &silent, 2)] {
        let (status, header, body) = refusal(t.api.call("a1", name, "/x").await?).await?;
        assert_eq!(status, 502, "{name}: {body}");
        assert_eq!(header, "upstream_bad_answer", "{name}: {body}");
        assert_eq!(error_code(&body), "upstream_bad_answer", "{name}");
        assert!(
            body.to_string().contains("may have been acted on"),
            "{name}: {body}"
        );
        assert_eq!(server.requests(), sent, "{name}: the request reached it");
    }

    let (status, header, body) = refusal(t.api.call("a1", "closed", "/x").await?).await?;
    assert_eq!(
        (status, header.as_str()),
        (502, "upstream_unreachable"),
        "{body}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_answer_over_the_limits_is_502_answer_too_large_naming_the_limit() -> Result<()> {
    let long = Raw::start(|_| {
        let mut answer =
            b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\nConnection: close\r\n\r\n".to_vec();
        answer.extend_from_slice(&[b'x'; 5000]);
        answer
    })
    .await?;
    let wide = Raw::start(|_| {
        format!(
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\nx-wide: {}\r\n\r\nok",
            "w".repeat(2048)
        )
        .into_bytes()
    })
    .await?;
    let dir = TempDir::new("http-semantics-limits")?;
    let limits = "max_response_body = 1000\nmax_header_bytes = 1024\n";
    let connections = [
        connection("long", long.addr, limits),
        connection("wide", wide.addr, limits),
    ]
    .concat();
    let t = Tunnel::start(&bins(), &dir, &connections).await?;
    for (name, limit) in [("long", "max_response_body"), ("wide", "max_header_bytes")] {
        let (status, header, body) = refusal(t.api.call("a1", name, "/x").await?).await?;
        assert_eq!(status, 502, "{name}: {body}");
        assert_eq!(header, "answer_too_large", "{name}: {body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(limit), "{name}: {message}");
        assert!(
            message.contains("may have been acted on"),
            "{name}: {message}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn connect_and_trace_are_refused_before_anything_is_signed_or_sent() -> Result<()> {
    // Answers a request with the request itself, as a server with TRACE enabled does.
    let echo = Raw::start(|head| {
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: message/http\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{head}",
            head.len()
        )
        .into_bytes()
    })
    .await?;
    let dir = TempDir::new("http-semantics-methods")?;
    let jwt = "[connections.j.auth]\ntype = \"jwt_bearer\"\nalgorithm = \"HS256\"\n\
               secret = \"a-secret-of-thirty-two-bytes-ok!\"\npayload = { sub = \"svc\" }\n";
    let t = Tunnel::start(&bins(), &dir, &connection("j", echo.addr, jwt)).await?;
    let url = format!("{}/v1/agents/a1/connections/j/http/x", t.api.base);

    // `trace` is an extension method to the http crate, but a server may take it for
    // TRACE; IIS's TRACK echoes as TRACE does.
    for method in ["TRACE", "trace", "TRACK"] {
        let r = t
            .api
            .http
            .request(reqwest::Method::from_bytes(method.as_bytes())?, &url)
            .bearer_auth(&t.api.key)
            .send()
            .await?;
        let allow = r.headers().get("allow").cloned();
        let (status, header, body) = refusal(r).await?;
        assert_eq!(
            (status, header.as_str()),
            (405, "method_not_allowed"),
            "{method}: {body}"
        );
        assert!(
            body.to_string()
                .contains(&format!("{method} is not relayed")),
            "{method}: {body}"
        );
        assert!(!body.to_string().contains("Bearer"), "{method}: {body}");
        assert!(
            allow.is_some_and(|a| a.to_str().is_ok_and(|a| a.contains("GET"))),
            "{method}"
        );
    }

    // reqwest cannot send CONNECT with a path: by hand.
    let api = t.api.base.trim_start_matches("http://").to_owned();
    let mut socket = tokio::net::TcpStream::connect(&api).await?;
    socket
        .write_all(
            format!(
                "CONNECT /v1/agents/a1/connections/j/http/x HTTP/1.1\r\nHost: {api}\r\n\
                 Authorization: Bearer {}\r\nConnection: close\r\n\r\n",
                t.api.key
            )
            .as_bytes(),
        )
        .await?;
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), socket.read_to_end(&mut answer))
        .await
        .context("no answer to CONNECT")??;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
    assert!(answer.contains("method_not_allowed"), "{answer}");
    assert!(answer.contains("CONNECT is not relayed"), "{answer}");

    assert_eq!(echo.requests(), 0, "the internal server was reached");
    Ok(())
}

/// A HEAD's answer says what a GET's would: the length it declares reaches the caller,
/// and one that declares none (chunked) does not become `content-length: 0`, which
/// would tell the caller the resource is empty.
#[tokio::test(flavor = "multi_thread")]
async fn a_heads_answer_keeps_its_length_or_its_lack_of_one() -> Result<()> {
    let sized = Raw::start(|_| b"HTTP/1.1 200 OK\r\ncontent-length: 1234\r\n\r\n".to_vec()).await?;
    let chunked =
        Raw::start(|_| b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec()).await?;
    let dir = TempDir::new("http-semantics-head")?;
    let connections = [
        connection("sized", sized.addr, ""),
        connection("chunked", chunked.addr, ""),
    ]
    .concat();
    let t = Tunnel::start(&bins(), &dir, &connections).await?;
    let head = |name: &str| {
        t.api
            .http
            .head(format!(
                "{}/v1/agents/a1/connections/{name}/http/x",
                t.api.base
            ))
            .bearer_auth(&t.api.key)
            .send()
    };
    let r = head("sized").await?;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-length"], "1234");
    let r = head("chunked").await?;
    assert_eq!(r.status(), 200);
    assert!(
        r.headers().get("content-length").is_none(),
        "{:?}",
        r.headers()
    );
    Ok(())
}

/// An answer that says both `Transfer-Encoding: chunked` and a `Content-Length` is read
/// as chunked, and passed on without the length (RFC 9112 §6.3): passed on, the length
/// made the agent cut the body at it (a longer body) or break it (a shorter one), with a
/// 200 and nothing logged.
#[tokio::test(flavor = "multi_thread")]
async fn an_answer_with_a_length_and_chunks_arrives_whole() -> Result<()> {
    fn both(longer: bool) -> Vec<u8> {
        let body = if longer {
            "x".repeat(5000)
        } else {
            "y".repeat(10)
        };
        format!(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 100\r\nConnection: close\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
            body.len()
        )
        .into_bytes()
    }
    let longer = Raw::start(|_| both(true)).await?;
    let shorter = Raw::start(|_| both(false)).await?;
    let dir = TempDir::new("http-semantics-te-cl")?;
    let connections = [
        connection("longer", longer.addr, ""),
        connection("shorter", shorter.addr, ""),
    ]
    .concat();
    let t = Tunnel::start(&bins(), &dir, &connections).await?;
    for (name, expected) in [("longer", "x".repeat(5000)), ("shorter", "y".repeat(10))] {
        let r = t.api.call("a1", name, "/x").await?;
        assert_eq!(r.status(), 200, "{name}");
        assert!(
            r.headers().get("content-length").is_none(),
            "{name}: {:?}",
            r.headers()
        );
        assert_eq!(r.text().await?, expected, "{name}");
    }
    Ok(())
}

/// A `Content-Length` the agent's own server would not write (`5, 5`, which hyper's
/// client takes; anything at all on a HEAD's answer, which it does not check) passes on
/// as one number, or not at all: before, the channel closed with no answer (502
/// `tunnel_error` at the relay) while the agent logged the call served.
#[tokio::test(flavor = "multi_thread")]
async fn a_length_the_agent_could_not_write_passes_on_as_one_number_or_none() -> Result<()> {
    let twice =
        Raw::start(|_| b"HTTP/1.1 200 OK\r\ncontent-length: 5, 5\r\n\r\nhello".to_vec()).await?;
    let garbled =
        Raw::start(|_| b"HTTP/1.1 200 OK\r\ncontent-length: lots\r\n\r\n".to_vec()).await?;
    let dir = TempDir::new("http-semantics-odd-length")?;
    let connections = [
        connection("twice", twice.addr, ""),
        connection("garbled", garbled.addr, ""),
    ]
    .concat();
    let t = Tunnel::start(&bins(), &dir, &connections).await?;
    let r = t.api.call("a1", "twice", "/x").await?;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-length"], "5");
    assert_eq!(r.text().await?, "hello");
    let r = t
        .api
        .http
        .head(format!(
            "{}/v1/agents/a1/connections/garbled/http/x",
            t.api.base
        ))
        .bearer_auth(&t.api.key)
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    assert!(
        r.headers().get("content-length").is_none(),
        "{:?}",
        r.headers()
    );
    Ok(())
}

/// A caller's head at the relay's limit of 100 lines reaches the internal server: with
/// the lines the relay adds it is over hyper's 100 at the agent, whose server answered it
/// a bare 431 before 2026-12-06.
#[tokio::test(flavor = "multi_thread")]
async fn a_head_at_the_relays_limit_of_lines_reaches_the_internal_server() -> Result<()> {
    let raw = Raw::start(|head| {
        let lines = head.lines().filter(|l| l.contains(':')).count();
        format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{lines}",
            lines.to_string().len()
        )
        .into_bytes()
    })
    .await?;
    let dir = TempDir::new("http-semantics-many-lines")?;
    let t = Tunnel::start(&bins(), &dir, &connection("many", raw.addr, "")).await?;
    // reqwest sends `host`, `accept` and `authorization` besides these: 100 in all.
    let mut request = t
        .api
        .http
        .get(format!(
            "{}/v1/agents/a1/connections/many/http/x",
            t.api.base
        ))
        .bearer_auth(&t.api.key);
    for i in 0..97 {
        request = request.header(format!("x-line-{i}"), "v");
    }
    let r = request.send().await?;
    assert_eq!(r.status(), 200, "{:?}", r.headers());
    let lines: usize = r.text().await?.parse()?;
    assert!(lines >= 99, "the internal server saw {lines} header lines");
    Ok(())
}

/// An internal server that never answers the connect (its backlog full, as behind a
/// firewall that drops) gets 502 `upstream_unreachable`: nothing was sent. Connecting gave
/// up together with the wait for the answer, which won, and the caller got 504
/// `upstream_timeout`, "may have been acted on".
#[tokio::test(flavor = "multi_thread")]
async fn a_connect_never_answered_is_upstream_unreachable() -> Result<()> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    let listener = socket.listen(0)?;
    let addr = listener.local_addr()?;
    // One connection fills a backlog of 0; the kernel drops the SYNs that come after it.
    let _filler = tokio::net::TcpStream::connect(addr).await?;
    let dir = TempDir::new("http-semantics-connect")?;
    let t = Tunnel::start(&bins(), &dir, &connection("dropped", addr, "")).await?;
    let (status, header, body) = refusal(t.api.call("a1", "dropped", "/x").await?).await?;
    assert_eq!(
        (status, header.as_str()),
        (502, "upstream_unreachable"),
        "{body}"
    );
    Ok(())
}

/// An internal server that answers `101 Switching Protocols` unasked (the caller's
/// `Upgrade` never crosses): the caller gets 502 `upstream_bad_answer` saying so, not a
/// 101 that upgrades nothing followed by a closed connection.
#[tokio::test(flavor = "multi_thread")]
async fn an_unasked_for_101_is_502_upstream_bad_answer() -> Result<()> {
    let switching = Raw::start(|_| {
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
            .to_vec()
    })
    .await?;
    let dir = TempDir::new("http-semantics-101")?;
    let t = Tunnel::start(&bins(), &dir, &connection("up", switching.addr, "")).await?;
    let (status, header, body) = refusal(t.api.call("a1", "up", "/s101").await?).await?;
    assert_eq!(
        (status, header.as_str()),
        (502, "upstream_bad_answer"),
        "{body}"
    );
    let said = body["error"]["message"].as_str().unwrap_or_default();
    assert!(said.contains("switched protocols"), "{said}");
    assert!(said.contains("request was sent"), "{said}");
    assert_eq!(switching.requests(), 1);
    Ok(())
}
