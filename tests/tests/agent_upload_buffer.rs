//! What the agent holds of request bodies its internal servers have not read yet is
//! bounded per session, however many uploads stall; and every stalled upload still
//! arrives whole once the server reads again.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use bytes::Bytes;
use postern_tests::harness::{Tunnel, peak_rss_kib, rss_kib};
use postern_tests::temp::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;

/// Enough that whole 16 MiB windows (~300 MiB here) would be far past the bound.
const UPLOADS: usize = 24;
const SIZE: usize = 16 * 1024 * 1024;

/// An internal server that accepts connections but reads nothing until `release` turns
/// true; then it reads each request whole and answers with the body's length. A small
/// receive buffer keeps the kernel from taking much of each body meanwhile.
async fn late_reader() -> Result<(
    std::net::SocketAddr,
    watch::Sender<bool>,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
)> {
    let socket = TcpSocket::new_v4()?;
    socket.set_recv_buffer_size(64 * 1024)?;
    socket.bind("127.0.0.1:0".parse()?)?;
    let listener = socket.listen(1024)?;
    let addr = listener.local_addr()?;
    let (release, released) = watch::channel(false);
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = accepted.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut released = released.clone();
            tokio::spawn(async move {
                if released.wait_for(|r| *r).await.is_ok() {
                    let _ = answer_with_length(socket).await;
                }
            });
        }
    });
    Ok((addr, release, accepted))
}

async fn answer_with_length(mut socket: TcpStream) -> Result<()> {
    let mut seen = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let head_end = loop {
        if let Some(at) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = socket.read(&mut buf).await?;
        ensure!(n > 0, "the request ended inside its head");
        seen.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&seen[..head_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .context("no content-length")?
        .trim()
        .parse()?;
    let mut body = seen.len() - head_end;
    while body < length {
        let n = socket.read(&mut buf).await?;
        ensure!(n > 0, "the body ended after {body} of {length} bytes");
        body += n;
    }
    let text = body.to_string();
    socket
        .write_all(
            format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}",
                text.len()
            )
            .as_bytes(),
        )
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn uploads_a_server_does_not_read_pin_no_more_than_the_upload_buffer() -> Result<()> {
    let dir = TempDir::new("upload-buffer")?;
    let (late, release, accepted) = late_reader().await?;
    let tunnel = Tunnel::start(
        &postern_tests::bins!(),
        &dir,
        &format!("[connections.late]\nbase_uri = \"http://{late}\"\ntimeout = \"60s\"\n"),
    )
    .await?;
    let agent = tunnel.agent.pid();
    let before = rss_kib(agent)?;

    let body = Bytes::from(vec![b'u'; SIZE]);
    let uploads: Vec<_> = (0..UPLOADS)
        .map(|_| {
            let (api, body) = (tunnel.api.clone(), body.clone());
            tokio::spawn(async move {
                let answer = api
                    .http
                    .put(format!(
                        "{}/v1/agents/a1/connections/late/http/sink",
                        api.base
                    ))
                    .bearer_auth(&api.key)
                    .body(body)
                    .send()
                    .await?;
                anyhow::Ok((answer.status().as_u16(), answer.text().await?))
            })
        })
        .collect();
    // Every upload under way, its connection to the internal server open…
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while accepted.load(std::sync::atomic::Ordering::SeqCst) < UPLOADS {
        ensure!(
            std::time::Instant::now() < deadline,
            "only {} of {UPLOADS} uploads reached the internal server",
            accepted.load(std::sync::atomic::Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // …the relay sends what the agent's windows let it; the peak is what counts.
    let peak = peak_rss_kib(agent, Duration::from_secs(4)).await?;
    let grown = peak.saturating_sub(before);
    eprintln!("agent RSS {before} → {peak} KiB with {UPLOADS} uploads not read");
    ensure!(
        // The 64 MiB buffer and ~1 MiB of HTTP buffers per upload; with every window whole
        // at once (16 MiB each) the agent grew by ~300 MiB here.
        grown < 160 * 1024,
        "the agent held {grown} KiB more for {UPLOADS} stalled uploads, far past its 64 MiB upload buffer"
    );

    release.send(true)?;
    for upload in uploads {
        let (status, text) = tokio::time::timeout(Duration::from_secs(60), upload).await???;
        assert_eq!((status, text), (200, SIZE.to_string()));
    }
    Ok(())
}
