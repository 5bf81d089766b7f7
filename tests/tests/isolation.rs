//! One slow caller must not stall other calls through the same agent (russh head-of-line
//! blocking: RUSSH-NOTES pitfall 2), and a slow caller is slowed, not cut off.

use std::time::{Duration, Instant};

use anyhow::Result;
use postern_tests::harness::{Tunnel, rss_kib};
use postern_tests::internal_server::{InternalServer, Verifier};
use postern_tests::temp::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_reader_does_not_block_other_calls() -> Result<()> {
    let dir = TempDir::new("hol")?;
    let internal = InternalServer::start(Verifier::None, "").await?;
    // An internal server that accepts uploads and never reads them.
    let deaf = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let deaf_addr = deaf.local_addr()?;
    let held = std::sync::Arc::new(tokio::sync::Mutex::new(Vec::new()));
    let keep = held.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = deaf.accept().await {
            keep.lock().await.push(socket);
        }
    });
    let Tunnel {
        relay, agent, api, ..
    } = Tunnel::start(
        &postern_tests::bins!(),
        &dir,
        &format!(
            "[connections.o]\nbase_uri = \"{}\"\n[connections.deaf]\nbase_uri = \"http://{deaf_addr}\"\ntimeout = \"10s\"\n",
            internal.base_uri()
        ),
    )
    .await?;
    let key = api.key.clone();
    let rss = || -> Result<(u64, u64)> { Ok((rss_kib(relay.pid())?, rss_kib(agent.pid())?)) };
    let before = rss()?;

    // A caller asks for 60 MiB and then stops reading.
    let mut stalled = tokio::net::TcpStream::connect(relay.api).await?;
    stalled
        .write_all(format!("GET /v1/agents/a1/connections/o/http/bytes/62914560 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\r\n").as_bytes())
        .await?;
    let mut first = [0u8; 1024];
    let n = stalled.read(&mut first).await?;
    let head = String::from_utf8_lossy(&first[..n]);
    // A quick error would be no stall at all.
    anyhow::ensure!(
        head.starts_with("HTTP/1.1 200"),
        "the stalled download did not start: {head}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;

    // And another caller uploads 60 MiB to the internal server that never reads.
    let upload_api = api.clone();
    let upload = tokio::spawn(async move {
        upload_api
            .http
            .put(format!(
                "{}/v1/agents/a1/connections/deaf/http/sink",
                upload_api.base
            ))
            .bearer_auth(&upload_api.key)
            .body(vec![0u8; 60 * 1024 * 1024])
            .send()
            .await
    });
    // The upload reached the internal server that does not read it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while held.lock().await.is_empty() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the upload never reached the deaf server"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    let mut worst = Duration::ZERO;
    for _ in 0..20 {
        let started = Instant::now();
        let r =
            tokio::time::timeout(Duration::from_secs(30), api.call("a1", "o", "/ping")).await??;
        assert_eq!(r.status(), 200);
        worst = worst.max(started.elapsed());
    }
    eprintln!("worst small call while another caller stalls: {worst:?}");
    // Each stalled channel holds at most its 16 MiB window, not the 60 MiB behind it.
    let during = rss()?;
    eprintln!("relay, agent RSS {before:?} → {during:?} KiB while both callers stall");
    assert!(
        during.0.saturating_sub(before.0) < 40 * 1024
            && during.1.saturating_sub(before.1) < 40 * 1024,
        "a stalled channel was buffered beyond its window: {before:?} → {during:?} KiB"
    );
    // Blocked, a call would wait for the stalled caller (indefinitely, or the upload's
    // 10 s timeout); 3 s is slack for a busy machine, not a speed target.
    assert!(
        worst < Duration::from_secs(3),
        "a stalled caller blocked other calls for {worst:?}"
    );
    // The upload to a server that never reads ends at the connection's timeout, with an
    // error, not served forever from memory.
    drop(stalled);
    let upload = tokio::time::timeout(Duration::from_secs(90), upload).await??;
    assert!(upload.is_err() || upload.is_ok_and(|r| !r.status().is_success()));
    drop(held);
    Ok(())
}

/// Before SSH window was granted on read, a caller more than 16 MiB behind its download
/// had its channel closed, and one that paused longer than the connection's timeout was
/// cut off by the agent's read timeout; now the agent waits and the whole body arrives.
#[tokio::test(flavor = "multi_thread")]
async fn a_caller_that_pauses_mid_download_gets_the_whole_body() -> Result<()> {
    const SIZE: usize = 48 * 1024 * 1024;
    let dir = TempDir::new("slow-reader")?;
    let internal = InternalServer::start(Verifier::None, "").await?;
    let connections = format!(
        "[connections.o]\nbase_uri = \"{}\"\ntimeout = \"2s\"\n",
        internal.base_uri()
    );
    let tunnel = Tunnel::start(&postern_tests::bins!(), &dir, &connections).await?;
    let api = &tunnel.api;

    let mut download = api.call("a1", "o", &format!("/bytes/{SIZE}")).await?;
    assert_eq!(download.status(), 200);
    let mut received = download.chunk().await?.map_or(0, |c| c.len());
    // Long enough for the agent to get far more than a window ahead, were it allowed, and
    // twice the connection's timeout.
    tokio::time::sleep(Duration::from_secs(4)).await;
    // Meanwhile other calls through the same agent go on.
    let r = tokio::time::timeout(Duration::from_secs(5), api.call("a1", "o", "/ping")).await??;
    assert_eq!(r.status(), 200);
    while let Some(chunk) =
        tokio::time::timeout(Duration::from_secs(30), download.chunk()).await??
    {
        assert!(chunk.iter().all(|&b| b == b'x'), "the body was corrupted");
        received += chunk.len();
    }
    assert_eq!(received, SIZE, "the paused download was cut short");
    Ok(())
}
