//! The relay's limits from its config file: concurrent calls per agent (429),
//! request body size (413), header size (431), slow request heads and idle kept-alive
//! connections cut off, and `call_timeout` counted from an upload's last progress.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::Result;
use postern_tests::harness::{Api, Bins};
use postern_tests::paced_body::{paced_body, when};
use postern_tests::relay_support::{OnlineAgent, RelayWorld, send, wait_calls_in_flight};
use reqwest::Method;

fn bins() -> Bins {
    postern_tests::bins!()
}

const LIMITS: &str = r#"
max_calls_per_agent = 2
max_request_body = 100000
max_header_bytes = 8192
header_read_timeout = "2s"
"#;

/// A relay with [`LIMITS`] and agent `warehouse-1` online on it.
async fn start() -> Result<(RelayWorld, OnlineAgent)> {
    let w = RelayWorld::start_configured(bins(), LIMITS, &[]).await?;
    let agent = w.agent_online("warehouse-1").await?;
    Ok((w, agent))
}

#[tokio::test(flavor = "multi_thread")]
async fn too_many_calls_and_too_large_bodies_are_refused_with_their_codes() -> Result<()> {
    let (l, _agent) = start().await?;
    // Two slow calls fill the agent's allowance; the third is refused at once.
    let slow = |api: Api| async move { api.call("warehouse-1", "orders", "/slow").await };
    let a = tokio::spawn(slow(l.admin.clone()));
    let b = tokio::spawn(slow(l.admin.clone()));
    wait_calls_in_flight(&l.admin, "warehouse-1", 2, Duration::from_secs(3)).await?;
    let third = l.admin.call("warehouse-1", "orders", "/third").await?;
    assert_eq!(third.status(), 429);
    assert_eq!(third.headers()["x-postern-error"], "too_many_calls");
    // A connection test is a call too: it cannot open channels past the allowance.
    let test = send(
        &l.admin,
        Method::POST,
        "/v1/agents/warehouse-1/connections/orders/test",
        None,
    )
    .await?;
    assert_eq!(test.status, 429, "{}", test.json);
    assert_eq!(test.code(), "too_many_calls");
    assert_eq!(a.await??.status(), 200);
    assert_eq!(b.await??.status(), 200);
    let after = l.admin.call("warehouse-1", "orders", "/after").await?;
    assert_eq!(after.status(), 200, "the allowance frees up");

    let url = format!(
        "{}/v1/agents/warehouse-1/connections/orders/http/upload",
        l.admin.base
    );
    // Declared too large: refused before anything is forwarded.
    let big = l
        .admin
        .http
        .post(&url)
        .bearer_auth(&l.admin.key)
        .body(vec![b'x'; 200_000])
        .send()
        .await?;
    assert_eq!(big.status(), 413);
    assert_eq!(big.headers()["x-postern-error"], "payload_too_large");
    // Chunked (no length), over a raw socket: cut off once past the limit.
    let addr = l.relay.api;
    let key = l.admin.key.clone();
    let status_line = tokio::task::spawn_blocking(move || -> Result<String> {
        let mut stream = TcpStream::connect(addr)?;
        stream.set_read_timeout(Some(Duration::from_secs(20)))?;
        write!(
            stream,
            "POST /v1/agents/warehouse-1/connections/orders/http/upload HTTP/1.1\r\nHost: relay\r\nAuthorization: Bearer {key}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        )?;
        for _ in 0..20 {
            // The relay may answer and close before we are done sending.
            if write!(stream, "2710\r\n{}\r\n", "y".repeat(10_000)).is_err() {
                break;
            }
        }
        let _ = stream.write_all(b"0\r\n\r\n");
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        let text = String::from_utf8_lossy(&answer);
        Ok(text.lines().next().unwrap_or_default().to_owned() + "\n" + &text)
    })
    .await??;
    assert!(status_line.starts_with("HTTP/1.1 413"), "{status_line}");
    assert!(status_line.contains("payload_too_large"), "{status_line}");
    // Under the limit: passes.
    let fine = l
        .admin
        .http
        .post(&url)
        .bearer_auth(&l.admin.key)
        .body(vec![b'z'; 50_000])
        .send()
        .await?;
    assert_eq!(fine.status(), 200);
    let body: serde_json::Value = fine.json().await?;
    assert_eq!(body["body_len"], 50_000);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_and_slow_request_heads_are_cut_off() -> Result<()> {
    let (l, _agent) = start().await?;
    // Headers beyond max_header_bytes: 431.
    let huge = l
        .admin
        .http
        .get(format!("{}/v1/agents", l.admin.base))
        .bearer_auth(&l.admin.key)
        .header("x-padding", "p".repeat(20_000))
        .send()
        .await?;
    assert_eq!(huge.status(), 431);

    // Slowloris: ten clients each send their request head one byte every 300 ms.
    let api = l.relay.api;
    let mut slow_clients = Vec::new();
    for _ in 0..10 {
        slow_clients.push(std::thread::spawn(move || -> Result<Duration> {
            let started = Instant::now();
            let mut stream = TcpStream::connect(api)?;
            stream.set_read_timeout(Some(Duration::from_millis(300)))?;
            let head = b"GET /healthz HTTP/1.1\r\nHost: relay\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
            for byte in head.iter().cycle().take(60) {
                if started.elapsed() > Duration::from_secs(12) {
                    break;
                }
                if stream.write_all(&[*byte]).is_err() {
                    return Ok(started.elapsed());
                }
                let mut buf = [0u8; 512];
                match stream.read(&mut buf) {
                    Ok(0) => return Ok(started.elapsed()),
                    Ok(_) => return Ok(started.elapsed()),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut => {}
                    Err(_) => return Ok(started.elapsed()),
                }
            }
            anyhow::bail!("a slow client was never cut off")
        }));
    }
    // Meanwhile a normal client is served at once, again and again.
    for _ in 0..10 {
        let started = Instant::now();
        let ok = reqwest::get(format!("{}/healthz", l.admin.base)).await?;
        assert_eq!(ok.status(), 200);
        assert!(started.elapsed() < Duration::from_secs(1));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for client in slow_clients {
        let took = client
            .join()
            .map_err(|_| anyhow::anyhow!("slow client panicked"))??;
        // header_read_timeout is 2 s; sending the whole head would take 18 s.
        assert!(took < Duration::from_secs(5), "cut off after {took:?}");
    }
    Ok(())
}

/// An idle kept-alive connection is let go after `header_read_timeout` too (README: a
/// caller's pool should drop idle connections sooner): its next request would find it
/// closed, so the relay says so by closing it, not by racing a request.
#[tokio::test(flavor = "multi_thread")]
async fn an_idle_kept_alive_connection_is_closed_after_header_read_timeout() -> Result<()> {
    let (l, _agent) = start().await?;
    let mut client = TcpStream::connect(l.relay.api)?;
    client.write_all(b"GET /healthz HTTP/1.1\r\nhost: relay\r\n\r\n")?;
    let mut answer = [0u8; 1024];
    let n = client.read(&mut answer)?;
    assert!(answer[..n].starts_with(b"HTTP/1.1 200"));
    let idle = Instant::now();
    client.set_read_timeout(Some(Duration::from_secs(15)))?;
    let n = client.read(&mut answer)?;
    let took = idle.elapsed();
    assert_eq!(n, 0, "closed, with nothing more said");
    // header_read_timeout is 2 s.
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(6),
        "closed after {took:?}"
    );
    Ok(())
}

/// `call_timeout` bounds the wait for the agent's answer from the request body's last
/// progress: an upload three times longer that keeps moving goes through whole, and
/// one that stops gets 504 about `call_timeout` after its last piece.
#[tokio::test(flavor = "multi_thread")]
async fn call_timeout_counts_from_an_uploads_last_progress() -> Result<()> {
    let timeout = Duration::from_secs(1);
    let w = RelayWorld::start_configured(bins(), "call_timeout = \"1s\"\n", &[]).await?;
    let _agent = w.agent_online("warehouse-1").await?;
    let url = format!(
        "{}/v1/agents/warehouse-1/connections/orders/http/upload",
        w.admin.base
    );

    let upload = |body: reqwest::Body| {
        w.admin
            .http
            .post(&url)
            .bearer_auth(&w.admin.key)
            .body(body)
            .send()
    };

    let started = Instant::now();
    let (body, _) = paced_body(12, Duration::from_millis(250), None);
    let moving = upload(body).await?;
    assert_eq!(moving.status(), 200);
    let answer: serde_json::Value = moving.json().await?;
    assert_eq!(answer["body_len"], 12 * 64 * 1024, "{answer}");
    assert!(
        started.elapsed() > 2 * timeout,
        "the upload took {:?}",
        started.elapsed()
    );

    let (body, last) = paced_body(2, Duration::from_millis(100), Some(4 * timeout));
    let stalled = upload(body).await?;
    let answered = Instant::now();
    assert_eq!(stalled.status(), 504);
    assert_eq!(stalled.headers()["x-postern-error"], "upstream_timeout");
    let after = answered.duration_since(when(&last)?);
    // 3 s of slack for a loaded machine: an upload not timed from its last piece would
    // be answered 200 once the stall ends, or wait far longer.
    assert!(
        after >= timeout && after < timeout + Duration::from_secs(3),
        "504 {after:?} after the last piece"
    );
    Ok(())
}
