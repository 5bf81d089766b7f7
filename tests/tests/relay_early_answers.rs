//! An answer that leaves before the request's body was all read (an offline agent, a
//! 413 the agent decided from `Content-Length`, a refused key) says `connection: close`,
//! as hyper then closes; one given after the whole body keeps the connection.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use postern_tests::harness::Tunnel;
use postern_tests::temp::TempDir;

/// Sends `POST path` with a body of `size` bytes from a thread of its own, while reading
/// the answer; returns the answer's head, lowercased.
fn post_and_read_head(api: SocketAddr, path: &str, key: &str, size: usize) -> Result<String> {
    let mut client = std::net::TcpStream::connect(api)?;
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: relay\r\nauthorization: Bearer {key}\r\n\
         content-type: application/octet-stream\r\ncontent-length: {size}\r\n\r\n"
    );
    let mut writer = client.try_clone()?;
    let sending = std::thread::spawn(move || -> std::io::Result<()> {
        writer.write_all(head.as_bytes())?;
        writer.write_all(&vec![b'x'; size])
    });
    client.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut answer = Vec::new();
    let mut byte = [0u8; 1];
    while !answer.ends_with(b"\r\n\r\n") {
        let n = client.read(&mut byte).context("reading the answer head")?;
        anyhow::ensure!(n == 1, "closed before a whole head: {answer:?}");
        answer.push(byte[0]);
    }
    // The rest of the upload is the relay's to take or drop as it closes.
    drop(client);
    let _ = sending.join();
    Ok(String::from_utf8_lossy(&answer).to_ascii_lowercase())
}

#[tokio::test(flavor = "multi_thread")]
async fn answers_before_the_body_is_read_say_the_connection_closes() -> Result<()> {
    let internal = postern_tests::internal_server::InternalServer::start(
        postern_tests::internal_server::Verifier::None,
        "",
    )
    .await?;
    let dir = TempDir::new("early-answers")?;
    let connections = format!(
        "[connections.small]\nbase_uri = \"{}\"\nmax_request_body = 1048576\n",
        internal.base_uri()
    );
    let bins = postern_tests::bins!();
    let tunnel = Tunnel::start(&bins, &dir, &connections).await?;
    let api = tunnel.relay.api;
    let key = tunnel.api.key.clone();
    let big = 16 * 1024 * 1024;

    // The agent's own 413, from the stated length: the relay passed on the head only.
    let said = tokio::task::spawn_blocking({
        let key = key.clone();
        move || post_and_read_head(api, "/v1/agents/a1/connections/small/http/up", &key, big)
    })
    .await??;
    assert!(said.starts_with("http/1.1 413"), "{said}");
    assert!(said.contains("\r\nconnection: close\r\n"), "{said}");

    // An agent that is not online: 503 before any of the body is read.
    postern_tests::harness::create_agent(&bins, &tunnel.relay.state_dir, "offline-one")?;
    let said = tokio::task::spawn_blocking({
        let key = key.clone();
        move || {
            post_and_read_head(
                api,
                "/v1/agents/offline-one/connections/small/http/up",
                &key,
                big,
            )
        }
    })
    .await??;
    assert!(said.starts_with("http/1.1 503"), "{said}");
    assert!(said.contains("\r\nconnection: close\r\n"), "{said}");

    // A wrong key: 401 before the body.
    let said = tokio::task::spawn_blocking(move || {
        post_and_read_head(
            api,
            "/v1/agents/a1/connections/small/http/up",
            "psk_wrong",
            big,
        )
    })
    .await??;
    assert!(said.starts_with("http/1.1 401"), "{said}");
    assert!(said.contains("\r\nconnection: close\r\n"), "{said}");

    // After the whole body, and without one, the connection is kept.
    let said = tokio::task::spawn_blocking(move || {
        post_and_read_head(api, "/v1/agents/a1/connections/small/http/up", &key, 1000)
    })
    .await??;
    assert!(said.starts_with("http/1.1 200"), "{said}");
    assert!(!said.contains("connection: close"), "{said}");
    let r = tunnel.api.call("a1", "small", "/x").await?;
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("connection").is_none(), "{:?}", r.headers());
    Ok(())
}
