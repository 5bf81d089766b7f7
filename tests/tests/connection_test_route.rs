//! `POST /v1/agents/{agent}/connections/{connection}/test`: the relay asks the
//! agent to run a connection's test request and returns the agent's report.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use postern_tests::harness::{Bins, Tunnel, agent_cli, output_text};
use postern_tests::internal_server::{InternalServer, Verifier};
use postern_tests::relay_support::{
    OpenedChannels, RelayWorld, eventually, hand_driven_agent, sample, scrape,
};
use postern_tests::temp::TempDir;

fn tunnel_bins() -> Bins {
    postern_tests::bins!()
}

/// The report says each step's outcome, but not the test path's query nor the addresses
/// the agent resolved and connected to: the relay, and any API key that may call, see it.
#[tokio::test(flavor = "multi_thread")]
async fn the_relay_runs_a_connection_test_on_the_agent() -> Result<()> {
    let bins = postern_tests::bins!();
    let dir = TempDir::new("conntest")?;
    let internal = InternalServer::start(Verifier::None, "").await?;
    // By name, so that no step needs to show 127.0.0.1.
    let base = internal.base_uri().replace("127.0.0.1", "localhost");
    // Port 9 (discard): nothing listens there, whereas a port picked free and let go
    // could be taken by another test before the agent tries it.
    let dead = "localhost:9";
    let connections = format!(
        "[connections.good]\nbase_uri = \"{base}\"\n\
         test = {{ path = \"/health?api_key=TESTSECRET\", expect_status = 200 }}\n\
         [connections.down]\nbase_uri = \"http://{dead}\"\ntimeout = \"2s\"\n"
    );
    let tunnel = Tunnel::start(&bins, &dir, &connections).await?;
    let api = &tunnel.api;

    let test = |connection: &'static str| api.connection_test("a1", connection);
    let r = test("good").await?;
    assert_eq!(r.status(), 200);
    let report: serde_json::Value = r.json().await?;
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["status"], 200);
    assert_eq!(report["connection"], "good");
    assert_eq!(
        internal.requests()[0].path_and_query,
        "/api/health?api_key=TESTSECRET"
    );
    assert_eq!(report["url"], format!("{base}/health?…"), "{report}");
    let internal_only = ["TESTSECRET", "127.0.0.1", "::1"];
    for hidden in internal_only {
        assert!(!report.to_string().contains(hidden), "{hidden}: {report}");
    }

    let report: serde_json::Value = test("down").await?.json().await?;
    assert_eq!(report["ok"], false, "{report}");
    assert_eq!(report["steps"][1]["name"], "tcp", "{report}");
    assert_eq!(report["steps"][1]["ok"], false, "{report}");
    let said = report["steps"][1]["detail"].as_str().unwrap_or_default();
    assert!(
        said.starts_with("cannot connect to localhost:9: "),
        "{report}"
    );
    for hidden in internal_only {
        assert!(!report.to_string().contains(hidden), "{hidden}: {report}");
    }

    let r = test("nope").await?;
    assert_eq!(r.status(), 404);
    let body: serde_json::Value = r.json().await?;
    assert_eq!(body["error"]["code"], "unknown_connection");
    Ok(())
}

/// A relay with `call_timeout = 1s` and a hand-driven agent `slow` serving `orders`
/// that confirms each channel `SLOW_CONFIRM` after it is asked: the world, the session
/// and control channel (to keep them up) and the channels as they are confirmed.
async fn slow_agent() -> Result<(RelayWorld, impl Sized, OpenedChannels)> {
    let w = RelayWorld::start_configured(postern_tests::bins!(), "call_timeout = \"1s\"\n", &[])
        .await?;
    let (ssh, control, opened) = hand_driven_agent(&w, "slow", SLOW_CONFIRM, &["orders"]).await?;
    Ok((w, (ssh, control), opened))
}

/// Well past `call_timeout` (1 s), so a loaded machine has 2 s to answer the 504 before
/// the confirmation, while a timeout counted from the confirmation (≥ 4 s) stays caught.
const SLOW_CONFIRM: Duration = Duration::from_secs(3);

/// A test whose channel the agent confirms only after `call_timeout` gets 504, and the
/// channel confirmed late is closed by the relay rather than left open on both sides.
#[tokio::test(flavor = "multi_thread")]
async fn a_test_channel_confirmed_after_the_timeout_is_closed() -> Result<()> {
    let (w, _ssh, mut opened) = slow_agent().await?;
    let started = Instant::now();
    let answer = w.admin.connection_test("slow", "orders").await?;
    assert_eq!(answer.status(), 504);
    let body: serde_json::Value = answer.json().await?;
    assert_eq!(body["error"]["code"], "upstream_timeout", "{body}");
    assert!(started.elapsed() < SLOW_CONFIRM, "answered late");

    let mut channel = tokio::time::timeout(Duration::from_secs(5), opened.recv())
        .await?
        .ok_or_else(|| anyhow::anyhow!("the channel was never confirmed"))?;
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(msg) = channel.wait().await {
            if matches!(msg, russh::ChannelMsg::Close) {
                return;
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the relay left the late channel open on both sides"
    );
    Ok(())
}

/// A call's channel confirmed after `call_timeout` is not lost: the call got 504, and
/// the channel waits in the relay's pool and carries the next call.
#[tokio::test(flavor = "multi_thread")]
async fn a_call_channel_confirmed_after_the_timeout_carries_the_next_call() -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let (w, _ssh, mut opened) = slow_agent().await?;
    let first = w.admin.call("slow", "orders", "/first").await?;
    assert_eq!(first.status(), 504);

    let channel = tokio::time::timeout(Duration::from_secs(5), opened.recv())
        .await?
        .ok_or_else(|| anyhow::anyhow!("the channel was never confirmed"))?;
    let serve = tokio::spawn(async move {
        let mut stream = channel.into_stream();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if stream.read(&mut byte).await? == 0 {
                anyhow::bail!("the channel closed before a request came");
            }
            head.push(byte[0]);
        }
        stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\npooled")
            .await?;
        stream.flush().await?;
        // Kept open until the relay has read the answer.
        tokio::time::sleep(Duration::from_secs(3)).await;
        Ok(String::from_utf8_lossy(&head).into_owned())
    });
    // Once the late channel is in the pool, a second call is answered on it at once,
    // with no new channel (which this agent would confirm too late). The relay counts the
    // channel and pools it in one step, with no wait in between.
    eventually(
        "the late channel counted",
        Duration::from_secs(5),
        || async {
            scrape(&w.admin)
                .await
                .is_ok_and(|s| sample(&s, "postern_call_channels_opened_total") == 1.0)
        },
    )
    .await?;
    let second = w.admin.call("slow", "orders", "/second").await?;
    assert_eq!(second.status(), 200);
    assert_eq!(second.text().await?, "pooled");
    let head = serve.await??;
    assert!(head.starts_with("GET /second "), "{head}");
    Ok(())
}

/// A `base_uri` with an IPv6 literal (`http://[::1]:PORT`): the test connects to it as
/// calls do, rather than failing at a "dns" step on the bracketed name.
#[tokio::test(flavor = "multi_thread")]
async fn a_connection_test_reaches_an_ipv6_literal() -> Result<()> {
    let listener = match tokio::net::TcpListener::bind("[::1]:0").await {
        Ok(listener) => listener,
        // CI's machines have it: there a missing one is a failure, not a skip.
        Err(e) if std::env::var_os("CI").is_none() => {
            println!("SKIPPED ipv6 connection test: no IPv6 loopback here ({e})");
            return Ok(());
        }
        Err(e) => return Err(e).context("binding [::1]:0 (CI is set: IPv6 loopback expected)"),
    };
    let port = listener.local_addr()?.port();
    let app = axum::Router::new().fallback(|| async { "ok" });
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let dir = TempDir::new("conntest-v6")?;
    let connections = format!(
        "[connections.v6]\nbase_uri = \"http://[::1]:{port}/api\"\n\
         test = {{ path = \"/health\", expect_status = 200 }}\n"
    );
    let tunnel = Tunnel::start(&postern_tests::bins!(), &dir, &connections).await?;
    let api = &tunnel.api;
    let r = api.connection_test("a1", "v6").await?;
    assert_eq!(r.status(), 200);
    let report: serde_json::Value = r.json().await?;
    assert_eq!(report["ok"], true, "{report}");
    // A call goes the same way.
    assert_eq!(api.call("a1", "v6", "/x").await?.status(), 200);
    server.abort();
    Ok(())
}

/// A connection test sends the connection's request for real, so it keeps to the
/// connection's limits: at `max_concurrent_calls`, it fails at a "limits" step and sends
/// nothing. Its report names the URL it would have sent, the query hidden from the relay.
#[tokio::test(flavor = "multi_thread")]
async fn a_connection_test_keeps_to_the_connections_limits() -> Result<()> {
    let internal = InternalServer::start(Verifier::None, "").await?;
    let dir = TempDir::new("conntest-limits")?;
    let base = internal.base_uri();
    let connections = format!(
        "[connections.one]\nbase_uri = \"{base}\"\nmax_concurrent_calls = 1\n\
         test = {{ path = \"/health?key=TESTSECRET\", expect_status = 200 }}\n"
    );
    let tunnel = Tunnel::start(&tunnel_bins(), &dir, &connections).await?;
    let api = tunnel.api.clone();
    let slow = tokio::spawn(async move { api.call("a1", "one", "/slow").await });
    internal.has_seen("/slow").await?;
    let api = &tunnel.api;
    let r = api.connection_test("a1", "one").await?;
    assert_eq!(r.status(), 200);
    let report: serde_json::Value = r.json().await?;
    assert_eq!(report["ok"], false, "{report}");
    assert_eq!(report["steps"][0]["name"], "limits", "{report}");
    assert_eq!(report["url"], format!("{base}/health?…"), "{report}");
    assert!(!report.to_string().contains("TESTSECRET"), "{report}");
    // On the agent's host, by the running agent: the whole URL.
    let out = agent_cli(
        &tunnel_bins(),
        &tunnel.config,
        &["connection", "test", "one"],
    )?;
    let said = output_text(&out);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains(&format!(
            "connection one: GET {base}/health?key=TESTSECRET\n"
        )) && said.contains("FAIL  limits"),
        "{said}"
    );
    assert!(
        !internal
            .requests()
            .iter()
            .any(|r| r.path_and_query.contains("/health")),
        "the test was sent past the limit"
    );
    assert_eq!(slow.await??.status(), 200);
    Ok(())
}

/// An agent that leaves the relay's channel opens unanswered gets at most as many opens
/// under way as calls may run (`max_calls_per_agent`), however many callers gave up
/// waiting: the rest never reach it, and no more channels come of a late answer.
#[tokio::test(flavor = "multi_thread")]
async fn unanswered_channel_opens_are_capped_at_the_calls_allowed() -> Result<()> {
    // Long enough for three waves of callers to give up (1 s each) before the first
    // opens are answered, with room for a loaded machine.
    const CONFIRM: Duration = Duration::from_secs(8);
    let w = RelayWorld::start_configured(
        postern_tests::bins!(),
        "call_timeout = \"1s\"\nmax_calls_per_agent = 2\n",
        &[],
    )
    .await?;
    let (_ssh, _control, mut opened) = hand_driven_agent(&w, "slow", CONFIRM, &["orders"]).await?;
    let started = Instant::now();
    for wave in 0..3 {
        // Two at a time: as many as may run, so none is refused with 429.
        let calls = (0..2).map(|i| {
            let api = w.admin.clone();
            async move { api.call("slow", "orders", &format!("/w{wave}-{i}")).await }
        });
        for answer in futures_util::future::join_all(calls).await {
            assert_eq!(answer?.status(), 504);
        }
    }
    assert!(
        started.elapsed() < CONFIRM,
        "the waves outlasted the first opens ({:?}): the test proves nothing",
        started.elapsed()
    );
    let mut confirmed = 0;
    while tokio::time::timeout(CONFIRM, opened.recv())
        .await
        .is_ok_and(|c| c.is_some())
    {
        confirmed += 1;
    }
    assert_eq!(confirmed, 2, "channel opens sent to the agent");
    Ok(())
}

/// A test waiting its turn under a long `max_wait` past the relay's `call_timeout` ends
/// when the relay gives up on it (504): it lets its call slot go and sends nothing. It
/// held the slot for up to `max_wait`, then sent the request anyway.
#[tokio::test(flavor = "multi_thread")]
async fn a_test_the_relay_gave_up_on_lets_its_call_slot_go() -> Result<()> {
    let w = RelayWorld::start_configured(postern_tests::bins!(), "call_timeout = \"2s\"\n", &[])
        .await?;
    let token = w.create_agent("site").await?;
    let limited = format!(
        "[connections.limited]\nbase_uri = \"{}\"\nmax_concurrent_calls = 1\nmax_wait = \"5m\"\n\
         rate_limit = {{ requests = 1, per = \"60s\", burst = 1 }}\n\
         test = {{ path = \"/tested\" }}\n",
        w.internal.base_uri()
    );
    let config = w.write_agent_config_with(&token, &limited)?;
    let agent = postern_tests::harness::AgentProcess::start(&w.bins, &config)?;
    w.admin
        .wait_online("site", true, Duration::from_secs(15))
        .await?;
    // The first call takes the minute's one turn…
    assert_eq!(
        w.admin.call("site", "limited", "/first").await?.status(),
        200
    );
    // …so the test waits for the next, past the relay's patience.
    let test = w.admin.connection_test("site", "limited").await?;
    assert_eq!(test.status(), 504);
    agent
        .logs
        .wait_for("connection test abandoned", Duration::from_secs(5))?;
    // Its slot is free: a call is held back by the rate limit, not refused for the slot.
    let r = w.admin.call("site", "limited", "/second").await?;
    let status = r.status();
    let body: serde_json::Value = r.json().await?;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    assert!(
        !w.internal
            .requests()
            .iter()
            .any(|r| r.path_and_query.ends_with("/tested")),
        "the abandoned test was sent"
    );
    Ok(())
}
