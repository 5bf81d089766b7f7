//! What the agent refuses of a call's request before sending it, and what it does not pass
//! on, through the real relay and agent: a URL longer than it can send (414
//! `path_rejected`), a head over the connection's `max_header_bytes` counted with its
//! request line (431), and `Expect`, which its client does not honour. (An internal
//! server's unasked-for `101` is in `agent_http_semantics.rs`.)

use anyhow::Result;
use postern_tests::harness::{AgentProcess, Bins, Tunnel};
use postern_tests::internal_server::{InternalServer, Verifier};
use postern_tests::relay_support::{ONLINE_WITHIN, RelayWorld, error_code, refusal};
use postern_tests::temp::TempDir;

fn bins() -> Bins {
    postern_tests::bins!()
}

/// The longest URL the agent sends: the `http` crate's `Uri` takes no more.
const MAX_URL_BYTES: usize = 65_534;

fn message(body: &serde_json::Value) -> &str {
    body["error"]["message"].as_str().unwrap_or_default()
}

/// A URL the relay takes (its request-target under the 65,534 bytes hyper parses, its
/// head under a raised `max_header_bytes`) but that, under a long `base_uri` path, is
/// longer than the agent can send: before, reqwest refused it as a "builder error" and the
/// caller got 502 `upstream_unreachable`, a code that says "send again", for a call that
/// fails the same way every time. One at the limit still goes through.
#[tokio::test(flavor = "multi_thread")]
async fn a_url_longer_than_the_agent_can_send_is_414_and_nothing_is_sent() -> Result<()> {
    let w = RelayWorld::start_configured(bins(), "max_header_bytes = 262144\n", &[]).await?;
    let token = w.create_agent("a1").await?;
    let internal = InternalServer::start(Verifier::None, "orders").await?;
    let base_path = format!("/internal/services/{}", "p".repeat(300));
    let base = format!("http://{}{base_path}", internal.addr);
    let config = w.write_agent_config_with(
        &token,
        &format!(
            "[connections.longbase]\nbase_uri = \"{base}\"\ntimeout = \"10s\"\nmax_header_bytes = 131072\n"
        ),
    )?;
    let _agent = AgentProcess::start(&w.bins, &config)?;
    w.admin.wait_online("a1", true, ONLINE_WITHIN).await?;
    // `/x?q=` then a's, so that the URL the agent builds is `length` bytes long.
    let path = |length: usize| format!("/x?q={}", "a".repeat(length - base.len() - 5));

    let over = path(MAX_URL_BYTES + 1);
    let caller_target = format!("/v1/agents/a1/connections/longbase/http{over}");
    assert!(
        caller_target.len() < MAX_URL_BYTES,
        "the relay would refuse it first"
    );
    let (status, header, body) = refusal(w.admin.call("a1", "longbase", &over).await?).await?;
    assert_eq!((status, header.as_str()), (414, "path_rejected"), "{body}");
    assert_eq!(error_code(&body), "path_rejected");
    let said = message(&body);
    assert!(
        said.contains(&format!("{} bytes long", MAX_URL_BYTES + 1)),
        "{said}"
    );
    assert!(said.contains(&MAX_URL_BYTES.to_string()), "{said}");
    assert!(said.contains("nothing was sent"), "{said}");
    assert!(internal.requests().is_empty(), "the internal server got it");

    let r = w.admin.call("a1", "longbase", &path(MAX_URL_BYTES)).await?;
    assert_eq!(r.status(), 200, "{:?}", r.headers());
    let seen = internal.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        format!("http://{}{}", internal.addr, seen[0].path_and_query).len(),
        MAX_URL_BYTES
    );
    Ok(())
}

/// The connection's `max_header_bytes` counts the request line the internal server would
/// read (with `base_uri`'s path) with the headers, as the relay counts its own, and
/// answers 431, HTTP's status for a head too large, where it answered 413, which blames
/// the body, and counted the headers alone.
#[tokio::test(flavor = "multi_thread")]
async fn a_head_over_the_connections_limit_is_431_counting_its_request_line() -> Result<()> {
    let internal = InternalServer::start(Verifier::None, "orders").await?;
    let dir = TempDir::new("request-limits-head")?;
    let connection = format!(
        "[connections.small]\nbase_uri = \"{}\"\ntimeout = \"10s\"\nmax_header_bytes = 1024\n",
        internal.base_uri()
    );
    let t = Tunnel::start(&bins(), &dir, &connection).await?;

    let r = t.api.call("a1", "small", "/x?q=short").await?;
    assert_eq!(r.status(), 200, "{:?}", r.headers());

    // Headers far under the limit, a request line over it.
    let long_line = format!("/x?q={}", "a".repeat(1100));
    let big_header = t
        .api
        .http
        .get(format!(
            "{}/v1/agents/a1/connections/small/http/x",
            t.api.base
        ))
        .bearer_auth(&t.api.key)
        .header("x-big", "b".repeat(2000))
        .send()
        .await?;
    for (what, r) in [
        (
            "a long request line",
            t.api.call("a1", "small", &long_line).await?,
        ),
        ("a large header", big_header),
    ] {
        let (status, header, body) = refusal(r).await?;
        assert_eq!(
            (status, header.as_str()),
            (431, "payload_too_large"),
            "{what}: {body}"
        );
        let said = message(&body);
        assert!(said.contains("request line"), "{what}: {said}");
        assert!(
            said.contains("max_header_bytes (1024 bytes)"),
            "{what}: {said}"
        );
    }
    assert_eq!(internal.requests().len(), 1, "a refused call was sent");
    Ok(())
}

/// `Expect: 100-continue` stops at the agent: its client never waits for a 100, so the
/// internal server was told of a wait that does not happen. The call and its body arrive.
#[tokio::test(flavor = "multi_thread")]
async fn expect_does_not_reach_the_internal_server() -> Result<()> {
    let internal = InternalServer::start(Verifier::None, "orders").await?;
    let dir = TempDir::new("request-limits-expect")?;
    let connection = format!(
        "[connections.o]\nbase_uri = \"{}\"\ntimeout = \"10s\"\n",
        internal.base_uri()
    );
    let t = Tunnel::start(&bins(), &dir, &connection).await?;
    let r = t
        .api
        .http
        .post(format!("{}/v1/agents/a1/connections/o/http/x", t.api.base))
        .bearer_auth(&t.api.key)
        .header("expect", "100-continue")
        .body("hello")
        .send()
        .await?;
    assert_eq!(r.status(), 200, "{:?}", r.headers());
    let body: serde_json::Value = r.json().await?;
    assert_eq!(body["body_len"], 5, "{body}");
    let seen = internal.requests();
    assert_eq!(seen.len(), 1);
    assert!(
        !seen[0]
            .headers
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case("expect")),
        "{:?}",
        seen[0].headers
    );
    Ok(())
}
