//! A management request whose body is still arriving when `api_timeout` runs out is
//! the caller's slowness: 408 `request_timeout`, not 500 `internal`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::Result;
use postern_tests::harness::Bins;
use postern_tests::relay_support::RelayWorld;

fn bins() -> Bins {
    postern_tests::bins!()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_slower_than_api_timeout_is_408() -> Result<()> {
    let w = RelayWorld::start_configured(bins(), "api_timeout = \"300ms\"\n", &[]).await?;
    let mut caller = TcpStream::connect(w.relay.api)?;
    caller.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        caller,
        "POST /v1/agents HTTP/1.1\r\nhost: relay\r\nauthorization: Bearer {}\r\n\
         content-type: application/json\r\ncontent-length: 40\r\n\r\n{{\"name\":",
        w.admin.key
    )?;
    caller.flush()?;
    // The rest never comes; the answer does.
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&answer).contains("}}") {
        let n = caller.read(&mut buf)?;
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buf[..n]);
    }
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"code\":\"request_timeout\""), "{answer}");
    assert!(answer.contains("api_timeout"), "{answer}");
    Ok(())
}
