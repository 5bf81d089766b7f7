//! Calls whose caller goes away before the answer: one that hangs up while it waits,
//! one whose upload breaks off. Both are logged and counted as `abandoned`, and
//! neither passes for a failure of the tunnel.

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use anyhow::Result;
use postern_tests::harness::{Bins, Logs};
use postern_tests::relay_support::{RelayWorld, eventually, sample, scrape};

fn bins() -> Bins {
    postern_tests::bins!()
}

const ABANDONED: &str = "postern_calls_total{class=\"abandoned\"}";

/// The line of `logs` (the relay's, an agent's) holding `needle`, once it is there.
fn line_with(logs: &Logs, needle: &str) -> Result<String> {
    logs.wait_for(needle, Duration::from_secs(10))?;
    Ok(logs
        .so_far()
        .lines()
        .find(|l| l.contains(needle))
        .unwrap_or_default()
        .to_owned())
}

fn class_counts(samples: &std::collections::HashMap<String, f64>) -> [f64; 3] {
    [
        sample(samples, ABANDONED),
        sample(samples, "postern_calls_total{class=\"2xx\"}"),
        sample(samples, "postern_calls_total{class=\"5xx\"}"),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn a_caller_that_hangs_up_while_waiting_is_logged_and_counted() -> Result<()> {
    let w = RelayWorld::start(bins()).await?;
    let agent = w.agent_online("site").await?;
    let mut caller = TcpStream::connect(w.relay.api)?;
    write!(
        caller,
        "GET /v1/agents/site/connections/orders/http/slow HTTP/1.1\r\nhost: relay\r\n\
         authorization: Bearer {}\r\nx-request-id: gone-1\r\n\r\n",
        w.admin.key
    )?;
    w.internal.has_seen("/slow").await?;
    drop(caller);

    let line = line_with(&w.relay.logs, "call abandoned by the caller")?;
    for part in ["gone-1", "site", "orders", "ms="] {
        assert!(line.contains(part), "no {part:?} in {line}");
    }
    // The internal server answers after 3 s: by then the call is long counted, once.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let samples = scrape(&w.admin).await?;
    assert_eq!(class_counts(&samples), [1.0, 0.0, 0.0]);
    let logs = w.relay.logs.text();
    assert!(!logs.contains("call answered"), "{logs}");
    assert!(!logs.contains("call failed"), "{logs}");
    // The agent, whose call the relay dropped with its channel, says so too: before
    // 2026-12-06 such a call left no line and no count there. Well before the relay's
    // call_timeout (120 s), so not for that.
    let agent_line = line_with(&agent.process.logs, "call abandoned before its answer")?;
    for part in [
        "request_id=gone-1",
        "connection=orders",
        "method=GET",
        "ms=",
        "cause=\"given_up\"",
        "before its call_timeout (2m): its caller gone, or the session's end",
    ] {
        assert!(agent_line.contains(part), "no {part:?} in {agent_line:?}");
    }
    Ok(())
}

/// A call the relay gives up on at its `call_timeout` (its caller answered 504) is said to
/// be so on the agent too, as soon as the relay lets go of it: not a caller gone.
#[tokio::test(flavor = "multi_thread")]
async fn a_call_past_the_relays_call_timeout_is_said_so_on_the_agent() -> Result<()> {
    let w = RelayWorld::start_configured(bins(), "call_timeout = \"1s\"\n", &[]).await?;
    let agent = w.agent_online("site").await?;
    let answer = w
        .admin
        .http
        .get(format!(
            "{}/v1/agents/site/connections/orders/http/slower",
            w.admin.base
        ))
        .bearer_auth(&w.admin.key)
        .header("x-request-id", "late-1")
        .send()
        .await?;
    assert_eq!(answer.status(), 504);
    let line = line_with(&agent.process.logs, "call abandoned before its answer")?;
    for part in [
        "request_id=late-1",
        "cause=\"call_timeout\"",
        "the relay's call_timeout (1s) ran out first, and it answered its caller 504",
    ] {
        assert!(line.contains(part), "no {part:?} in {line:?}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upload_that_breaks_off_is_the_callers_doing_not_the_tunnels() -> Result<()> {
    let w = RelayWorld::start(bins()).await?;
    let _agent = w.agent_online("site").await?;
    let mut caller = TcpStream::connect(w.relay.api)?;
    write!(
        caller,
        "POST /v1/agents/site/connections/orders/http/upload HTTP/1.1\r\nhost: relay\r\n\
         authorization: Bearer {}\r\nx-request-id: cut-1\r\ncontent-length: 100000\r\n\r\n",
        w.admin.key
    )?;
    caller.write_all(&[b'x'; 5000])?;
    caller.flush()?;
    // Let the head and the first bytes reach the agent before the caller hangs up.
    eventually("5 KB forwarded", Duration::from_secs(10), || async {
        scrape(&w.admin)
            .await
            .is_ok_and(|s| sample(&s, "postern_call_request_bytes_total") >= 5000.0)
    })
    .await?;
    drop(caller);

    eventually("the call counted", Duration::from_secs(10), || async {
        scrape(&w.admin).await.is_ok_and(|s| {
            sample(&s, ABANDONED) + sample(&s, "postern_calls_total{class=\"5xx\"}") > 0.0
        })
    })
    .await?;
    let samples = scrape(&w.admin).await?;
    assert_eq!(class_counts(&samples), [1.0, 0.0, 0.0]);
    let logs = w.relay.logs.text();
    assert!(!logs.contains("tunnel"), "{logs}");
    assert!(!logs.contains("WARN"), "{logs}");
    let line = logs
        .lines()
        .find(|l| l.contains("cut-1"))
        .unwrap_or_default();
    assert!(
        line.contains("the caller's request body broke off")
            || line.contains("call abandoned by the caller"),
        "{logs}"
    );

    // The tunnel is fine: the next call goes through.
    let next = w.admin.call("site", "orders", "/after").await?;
    assert_eq!(next.status(), 200);
    Ok(())
}

/// A caller that reads the head of a large download and then nothing more has its
/// connection closed once its writes have waited `call_timeout`: its call ends (no
/// longer in flight, and logged as not taken whole) instead of holding a window of
/// answer on the relay for good.
#[tokio::test(flavor = "multi_thread")]
async fn a_caller_that_stops_reading_is_let_go_after_call_timeout() -> Result<()> {
    use std::io::Read;
    let w = RelayWorld::start_configured(bins(), "call_timeout = \"2s\"\n", &[]).await?;
    let _agent = w.agent_online("site").await?;
    let mut caller = TcpStream::connect(w.relay.api)?;
    // Far more than the socket buffers and the channel's window hold.
    write!(
        caller,
        "GET /v1/agents/site/connections/orders/http/bytes/268435456 HTTP/1.1\r\nhost: relay\r\n\
         authorization: Bearer {}\r\n\r\n",
        w.admin.key
    )?;
    let mut head = [0u8; 1024];
    let n = caller.read(&mut head)?;
    assert!(
        String::from_utf8_lossy(&head[..n]).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&head[..n])
    );
    postern_tests::relay_support::wait_calls_in_flight(&w.admin, "site", 1, Duration::from_secs(5))
        .await?;
    // Not read from here on: 2 s of stalled writes, then the relay lets go.
    postern_tests::relay_support::wait_calls_in_flight(
        &w.admin,
        "site",
        0,
        Duration::from_secs(15),
    )
    .await?;
    // What had reached the socket's buffers is there, and then the end: not 256 MiB.
    caller.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut got = n;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match caller.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(k) => got += k,
        }
    }
    assert!(got < 256 << 20, "the whole body arrived: {got} bytes");
    let line = line_with(&w.relay.logs, "the caller did not take the whole answer")?;
    for part in ["site", "orders", "bytes="] {
        assert!(line.contains(part), "no {part:?} in {line}");
    }
    Ok(())
}
