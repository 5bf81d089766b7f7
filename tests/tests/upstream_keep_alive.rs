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
