//! On a link with a long round trip, a download's SSH window grows from its first 256 KiB
//! (russh patch 8): without growth a window per round trip caps it at ~3 MB/s here.

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use postern_tests::harness::Tunnel;
use postern_tests::internal_server::{InternalServer, Verifier};
use postern_tests::temp::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Each way; the round trip is twice this.
const DELAY: Duration = Duration::from_millis(40);
const SIZE: usize = 32 * 1024 * 1024;

/// Forwards one direction of a connection, each piece `DELAY` after it was read: a link
/// of that latency and no bandwidth limit (SSH's windows bound what is in flight).
async fn delayed(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
) {
    let (pieces, mut due) = tokio::sync::mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let read = async move {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n) = from.read(&mut buf).await {
            if n == 0
                || pieces
                    .send((Instant::now() + DELAY, buf[..n].to_vec()))
                    .is_err()
            {
                break;
            }
        }
    };
    let write = async move {
        while let Some((at, piece)) = due.recv().await {
            tokio::time::sleep_until(at.into()).await;
            if to.write_all(&piece).await.is_err() {
                break;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(read, write);
}

/// A proxy to `target` that delays both directions by `DELAY`.
async fn long_link(target: std::net::SocketAddr) -> Result<std::net::SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((near, _)) = listener.accept().await {
            let Ok(far) = TcpStream::connect(target).await else {
                continue;
            };
            let _ = (near.set_nodelay(true), far.set_nodelay(true));
            let (near_read, near_write) = near.into_split();
            let (far_read, far_write) = far.into_split();
            tokio::spawn(delayed(near_read, far_write));
            tokio::spawn(delayed(far_read, near_write));
        }
    });
    Ok(addr)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_download_over_a_long_link_grows_its_window() -> Result<()> {
    let dir = TempDir::new("long-link")?;
    let internal = InternalServer::start(Verifier::None, "").await?;
    let connections = format!("[connections.o]\nbase_uri = \"{}\"\n", internal.base_uri());
    let tunnel = Tunnel::start_via(&postern_tests::bins!(), &dir, &connections, long_link).await?;
    let api = &tunnel.api;

    let started = Instant::now();
    let mut answer = api.call("a1", "o", &format!("/bytes/{SIZE}")).await?;
    ensure!(answer.status() == 200, "{}", answer.status());
    let mut received = 0;
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(60), answer.chunk()).await?? {
        received += chunk.len();
    }
    let took = started.elapsed();
    eprintln!(
        "{SIZE} bytes over an {:?} round trip in {took:?}",
        DELAY * 2
    );
    ensure!(received == SIZE, "the download was cut short at {received}");
    // 256 KiB per 80 ms round trip is 3.2 MB/s: 32 MiB would take over 10 s.
    ensure!(
        took < Duration::from_secs(6),
        "32 MiB over an 80 ms round trip took {took:?}: the window did not grow"
    );
    Ok(())
}
