//! The agent's connections to an internal server: reused between calls close together,
//! let go after 4 s idle, before the common 5 s server keep-alive closes them under a call.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Result;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use postern_tests::harness::Tunnel;
use postern_tests::temp::TempDir;

/// An HTTP/1.1 server that keeps connections open (never closes one itself) and counts
/// the connections it accepted.
async fn counting_server() -> Result<(std::net::SocketAddr, Arc<AtomicUsize>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let service = service_fn(|_| async {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(
                        http_body_util::Full::new(bytes::Bytes::from_static(b"ok")),
                    ))
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok((addr, accepted))
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_upstream_connection_is_let_go_before_the_servers_keep_alive_ends() -> Result<()> {
    let (addr, accepted) = counting_server().await?;
    let dir = TempDir::new("upstream-keep-alive")?;
    let connections = format!("[connections.o]\nbase_uri = \"http://{addr}/api\"\n");
    let tunnel = Tunnel::start(&postern_tests::bins!(), &dir, &connections).await?;
    let call = async || -> Result<()> {
        let r = tunnel.api.call("a1", "o", "/x").await?;
        anyhow::ensure!(r.status() == 200, "status {}", r.status());
        Ok(())
    };
    call().await?;
    // hyper puts a connection back in its pool from a task of its own, just after the
    // answer: the next call a moment later finds it there (a second: time enough on a
    // busy machine, and well inside the agent's 4 s idle limit).
    tokio::time::sleep(Duration::from_secs(1)).await;
    call().await?;
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "calls close together share one"
    );
    // Idle past the agent's 4 s, still inside the server's keep-alive: not used again.
    tokio::time::sleep(Duration::from_millis(4500)).await;
    call().await?;
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        2,
        "an idle one was used again"
    );
    Ok(())
}

/// A server that answers each connection's first request (keeping it open) and, reading
/// its second, closes it without a word: as a server whose idle limit ends just as the
/// agent sends a call on a kept connection. Counts the requests it read. With `pause`,
/// every request is closed on unanswered after that long (a worker its server killed).
async fn closing_on_second_request() -> Result<(std::net::SocketAddr, Arc<AtomicUsize>)> {
    closing_server(None).await
}

async fn closing_server(
    pause: Option<Duration>,
) -> Result<(std::net::SocketAddr, Arc<AtomicUsize>)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let requests = Arc::new(AtomicUsize::new(0));
    let count = requests.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                for answered in [true, false] {
                    // A head (these calls have no body).
                    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => seen.extend_from_slice(&buf[..n]),
                        }
                    }
                    seen.clear();
                    count.fetch_add(1, Ordering::SeqCst);
                    if let Some(pause) = pause {
                        tokio::time::sleep(pause).await;
                        return;
                    }
                    if answered {
                        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if stream.write_all(ok).await.is_err() {
                            return;
                        }
                    }
                }
                // Dropped: closed, the second request unanswered.
            });
        }
    });
    Ok((addr, requests))
}

/// A GET sent on a connection the server closes unanswered goes once more, on a new
/// connection, and the caller gets its answer; a POST, which the server may have acted
/// on, is not sent twice: 502 `upstream_bad_answer`; nor is a GET closed on only after
/// a while.
#[tokio::test(flavor = "multi_thread")]
async fn a_safe_call_on_a_connection_closed_under_it_goes_once_more() -> Result<()> {
    let (addr, requests) = closing_on_second_request().await?;
    let dir = TempDir::new("upstream-closed-under")?;
    let connections = format!("[connections.o]\nbase_uri = \"http://{addr}/api\"\n");
    let tunnel = Tunnel::start(&postern_tests::bins!(), &dir, &connections).await?;
    let url = format!("{}/v1/agents/a1/connections/o/http/x", tunnel.api.base);
    let r = tunnel.api.call("a1", "o", "/x").await?;
    assert_eq!(r.status(), 200);
    // Back in the agent's pool (see above), the connection takes the next call.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let r = tunnel.api.call("a1", "o", "/x").await?;
    assert_eq!(r.status(), 200, "{}", r.text().await?);
    assert_eq!(
        requests.load(Ordering::SeqCst),
        3,
        "sent twice, answered once"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let r = tunnel
        .api
        .http
        .post(&url)
        .bearer_auth(&tunnel.api.key)
        .send()
        .await?;
    assert_eq!(r.status(), 502);
    assert_eq!(r.headers()["x-postern-error"], "upstream_bad_answer");
    assert_eq!(requests.load(Ordering::SeqCst), 4, "a POST is sent once");

    // A close that came only after a while is the request's doing: not sent again.
    let (slow, slow_requests) = closing_server(Some(Duration::from_millis(1500))).await?;
    drop(tunnel);
    let dir = TempDir::new("upstream-closed-late")?;
    let connections = format!("[connections.o]\nbase_uri = \"http://{slow}/api\"\n");
    let tunnel = Tunnel::start(&postern_tests::bins!(), &dir, &connections).await?;
    let r = tunnel.api.call("a1", "o", "/x").await?;
    assert_eq!(r.status(), 502);
    assert_eq!(slow_requests.load(Ordering::SeqCst), 1, "sent once");
    Ok(())
}

/// A connection test is sent as a call is: on a kept connection the server closes
/// unanswered, it goes once more and passes, and its report says it was sent again.
#[tokio::test(flavor = "multi_thread")]
async fn a_connection_test_on_a_connection_closed_under_it_goes_once_more() -> Result<()> {
    let (addr, requests) = closing_on_second_request().await?;
    let dir = TempDir::new("upstream-closed-under-test")?;
    let connections = format!("[connections.o]\nbase_uri = \"http://{addr}/api\"\n");
    let tunnel = Tunnel::start(&postern_tests::bins!(), &dir, &connections).await?;
    let r = tunnel.api.call("a1", "o", "/x").await?;
    assert_eq!(r.status(), 200);
    // Back in the agent's pool (see above), the connection takes the test.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let r = tunnel.api.connection_test("a1", "o").await?;
    assert_eq!(r.status(), 200);
    let report: serde_json::Value = r.json().await?;
    assert_eq!(report["ok"], true, "{report}");
    let http = report["steps"]
        .as_array()
        .and_then(|steps| steps.iter().find(|s| s["name"] == "http"))
        .ok_or_else(|| anyhow::anyhow!("no http step: {report}"))?;
    let detail = http["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("sent again: the server closed the connection without answering"),
        "{detail}"
    );
    assert_eq!(
        requests.load(Ordering::SeqCst),
        3,
        "sent twice, answered once"
    );
    Ok(())
}
