//! An agent's answer that ends before the length its head announced: the caller's
//! connection is aborted (never a short body that looks complete), the relay logs the
//! break with the bytes that did go out, and the next call through that agent works.
//! One framed by chunks that also states a length reaches the caller whole.

use std::time::Duration;

use anyhow::{Context, Result};
use postern_tests::relay_support::{
    RelayWorld, hand_driven_agent, next_channel, read_request_head,
};

#[tokio::test(flavor = "multi_thread")]
async fn an_answer_that_breaks_off_aborts_the_caller_and_is_logged() -> Result<()> {
    let w = RelayWorld::start(postern_tests::bins!()).await?;
    let (_ssh, _control, mut opened) =
        hand_driven_agent(&w, "brittle", Duration::ZERO, &["orders"]).await?;
    let api = w.admin.clone();
    let url = format!("{}/v1/agents/brittle/connections/orders/http/x", api.base);

    // The caller says when the answer's head has reached it, so the break comes after:
    // a break before the head closes the connection with no answer at all (faults.rs).
    let (head_seen, head_arrived) = tokio::sync::oneshot::channel();
    let caller = tokio::spawn({
        let (api, url) = (api.clone(), url.clone());
        async move {
            let answer = api.http.get(url).bearer_auth(&api.key).send().await?;
            let _ = head_seen.send(answer.status().as_u16());
            anyhow::Ok(answer.bytes().await)
        }
    });
    let mut channel = next_channel(&mut opened).await?;
    read_request_head(&mut channel).await?;
    // 100 bytes announced, 10 sent, then the channel ends.
    channel
        .data(&b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789"[..])
        .await?;
    let status = tokio::time::timeout(Duration::from_secs(5), head_arrived)
        .await
        .context("the answer's head did not reach the caller")??;
    assert_eq!(status, 200);
    channel.eof().await?;
    channel.close().await?;

    let body = tokio::time::timeout(Duration::from_secs(10), caller).await???;
    assert!(
        body.is_err(),
        "the caller got a body that looks complete: {body:?}"
    );
    w.relay.logs.wait_for(
        "the answer broke off after its head",
        Duration::from_secs(5),
    )?;
    let line = w
        .relay
        .logs
        .lines()
        .into_iter()
        .find(|l| l.contains("the answer broke off after its head"))
        .unwrap_or_default();
    assert!(line.contains("bytes=10"), "{line}");
    assert!(line.contains("agent=brittle"), "{line}");
    // The channel ended, the session lives on: the agent ended the answer.
    assert!(line.contains("the agent ended it early"), "{line}");
    assert!(line.contains("WARN"), "{line}");

    // The agent's session is unharmed: the next call gets a new channel and its answer.
    let next = tokio::spawn({
        let api = api.clone();
        async move {
            let answer = api.http.get(url).bearer_auth(&api.key).send().await?;
            anyhow::Ok((answer.status().as_u16(), answer.text().await?))
        }
    });
    let mut channel = next_channel(&mut opened).await?;
    read_request_head(&mut channel).await?;
    channel
        .data(&b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"[..])
        .await?;
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(10), next).await???,
        (200, "ok".to_owned())
    );
    Ok(())
}

/// An older agent passes on an internal server's answer with both a chunked encoding and
/// a Content-Length (RFC 9112 §6.3: the encoding frames it). The relay drops the length,
/// so the caller gets the whole body, not one cut at the stated length under a 200.
#[tokio::test(flavor = "multi_thread")]
async fn a_chunked_answer_with_a_length_reaches_the_caller_whole() -> Result<()> {
    let w = RelayWorld::start(postern_tests::bins!()).await?;
    let (_ssh, _control, mut opened) =
        hand_driven_agent(&w, "old", Duration::ZERO, &["orders"]).await?;
    let api = w.admin.clone();
    let url = format!("{}/v1/agents/old/connections/orders/http/x", api.base);
    let caller = tokio::spawn(async move {
        let answer = api.http.get(url).bearer_auth(&api.key).send().await?;
        let length = answer.headers().get("content-length").cloned();
        anyhow::Ok((answer.status().as_u16(), length, answer.text().await?))
    });
    let mut channel = next_channel(&mut opened).await?;
    read_request_head(&mut channel).await?;
    let body = "0123456789".repeat(50);
    channel
        .data(
            format!(
                "HTTP/1.1 200 OK\r\ncontent-length: 10\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        )
        .await?;
    let (status, length, got) = tokio::time::timeout(Duration::from_secs(10), caller).await???;
    assert_eq!(status, 200);
    assert_eq!(got, body, "the body was cut");
    assert_eq!(length, None, "the stated length was passed on");
    Ok(())
}

/// What the relay leaves of an agent's answer as it came: a HEAD answer's length (the
/// GET's, beside a chunked encoding from an older agent), and an internal server's own
/// 413 without the `connection: close` the relay adds to a 413 of its own.
#[tokio::test(flavor = "multi_thread")]
async fn a_head_answers_length_and_an_upstream_413_pass_as_they_came() -> Result<()> {
    let w = RelayWorld::start(postern_tests::bins!()).await?;
    let api = w.admin.clone();
    for (agent, method, answer) in [
        (
            "plain-head",
            reqwest::Method::HEAD,
            &b"HTTP/1.1 200 OK\r\ncontent-length: 500\r\ntransfer-encoding: chunked\r\n\r\n"[..],
        ),
        (
            "plain-413",
            reqwest::Method::POST,
            &b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 0\r\n\r\n"[..],
        ),
    ] {
        // An agent each: the relay keeps the first call's channel for the next call.
        let (_ssh, _control, mut opened) =
            hand_driven_agent(&w, agent, Duration::ZERO, &["orders"]).await?;
        let url = format!("{}/v1/agents/{agent}/connections/orders/http/x", api.base);
        let caller = tokio::spawn({
            let (api, url, method) = (api.clone(), url.clone(), method.clone());
            async move {
                let answer = api
                    .http
                    .request(method, url)
                    .bearer_auth(&api.key)
                    .body("x")
                    .send()
                    .await?;
                anyhow::Ok((answer.status().as_u16(), answer.headers().clone()))
            }
        });
        let mut channel = next_channel(&mut opened).await?;
        read_request_head(&mut channel).await?;
        channel.data(answer).await?;
        let (status, headers) = tokio::time::timeout(Duration::from_secs(10), caller).await???;
        if method == reqwest::Method::HEAD {
            assert_eq!(status, 200);
            assert_eq!(
                headers.get("content-length").map(|v| v.as_bytes()),
                Some(&b"500"[..]),
                "{headers:?}"
            );
        } else {
            assert_eq!(status, 413);
            assert!(headers.get("connection").is_none(), "{headers:?}");
        }
    }
    Ok(())
}
