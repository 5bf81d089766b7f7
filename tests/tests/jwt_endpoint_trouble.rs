//! A token endpoint's trouble and a reload, end to end: a throttling endpoint (429 with
//! `Retry-After`) is asked once, not every second, and callers get its `Retry-After`; a
//! failed refresh names its connection in the log; a reload keeps the cached token unless
//! the key changed.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use jsonwebtoken::{Algorithm, DecodingKey};
use postern_tests::harness::{Bins, Tunnel, agent_cli, output_text};
use postern_tests::temp::TempDir;
use postern_tests::token_endpoint::{EndpointConfig, ExpiresIn, Fault, TokenEndpoint};
use serde_json::Value;

fn bins() -> Bins {
    postern_tests::bins!()
}

/// An ES256 exchange connection `erp` (key `ec.pem` in `dir`) on a fresh tunnel.
async fn world(tag: &str, expires_in: u64) -> Result<(TempDir, TokenEndpoint, Tunnel)> {
    let dir = TempDir::new(tag)?;
    let (_, public) = postern_tests::pki::ec256(dir.path())?;
    let endpoint = TokenEndpoint::start(EndpointConfig {
        key: DecodingKey::from_ec_pem(public.as_bytes())?,
        algorithm: Algorithm::ES256,
        audience: "https://idp.test/token".to_owned(),
        issuer: "postern-edge".to_owned(),
        grant_type: "urn:ietf:params:oauth:grant-type:jwt-bearer".to_owned(),
        expires_in: ExpiresIn::Number(expires_in),
        delay: Duration::ZERO,
        reissue: false,
    })
    .await?;
    let tunnel = Tunnel::start(
        &bins(),
        &dir,
        &endpoint.connection("erp", "ES256", "ec.pem", "", ""),
    )
    .await?;
    Ok((dir, endpoint, tunnel))
}

/// The status, the `Retry-After` and the JSON body of a call of `erp`.
async fn call(tunnel: &Tunnel) -> Result<(u16, Option<u64>, Value)> {
    let response = tunnel.api.call("a1", "erp", "/x").await?;
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok()?.parse().ok());
    let text = response.text().await?;
    let body = serde_json::from_str(&text).with_context(|| format!("not JSON: {text}"))?;
    Ok((status, retry_after, body))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_throttling_token_endpoint_is_left_alone_for_its_retry_after() -> Result<()> {
    let (_dir, endpoint, tunnel) = world("jwt-trouble-429", 600).await?;
    endpoint.set_fault(Some(Fault::Throttle { retry_after: "30" }));
    // Three seconds of calls: asked every second, the endpoint would see three or four.
    let started = Instant::now();
    let mut answers = Vec::new();
    for _ in 0..12 {
        answers.push(call(&tunnel).await?);
        tokio::time::sleep(Duration::from_millis(250)).await;
        if started.elapsed() > Duration::from_secs(10) {
            break;
        }
    }
    assert!(started.elapsed() > Duration::from_millis(2_500));
    assert_eq!(endpoint.faulted(), 1, "asked again within its Retry-After");
    for (status, retry_after, body) in &answers {
        assert_eq!(*status, 502, "{body}");
        assert_eq!(body["error"]["code"], "token_exchange_failed", "{body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("failed: throttled (HTTP 429): slow_down"),
            "{message}"
        );
        assert!(!message.contains("refused the assertion"), "{message}");
        assert!(
            retry_after.is_some_and(|s| (26..=30).contains(&s)),
            "Retry-After {retry_after:?}: {body}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_refresh_names_its_connection_in_the_log() -> Result<()> {
    // Refreshed 2.7 s after it was issued, expired after 3 s.
    let (_dir, endpoint, tunnel) = world("jwt-trouble-span", 3).await?;
    let (status, _, body) = call(&tunnel).await?;
    anyhow::ensure!(status == 200, "first call: {status} {body}");
    let issued = Instant::now();
    endpoint.set_fault(Some(Fault::Answer {
        status: 503,
        content_type: "text/plain",
        body: "maintenance",
    }));
    tokio::time::sleep(
        (issued + Duration::from_millis(2_750)).saturating_duration_since(Instant::now()),
    )
    .await;
    let (status, _, body) = call(&tunnel).await?;
    assert_eq!(status, 200, "the current token still serves: {body}");
    let said = "token refresh failed";
    tunnel.agent.logs.wait_for(said, Duration::from_secs(5))?;
    let line = tunnel
        .agent
        .logs
        .lines()
        .into_iter()
        .find(|l| l.contains(said))
        .unwrap_or_default();
    assert!(line.contains("connection=erp"), "{line}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_keeps_the_token_unless_the_key_changed() -> Result<()> {
    let (dir, endpoint, tunnel) = world("jwt-trouble-reload", 600).await?;
    let (status, _, first) = call(&tunnel).await?;
    anyhow::ensure!(status == 200, "first call: {status} {first}");
    assert_eq!(endpoint.exchanges().len(), 1);

    let reload = || -> Result<()> {
        let out = agent_cli(&bins(), &tunnel.config, &["reload"])?;
        anyhow::ensure!(out.status.success(), "reload: {}", output_text(&out));
        Ok(())
    };
    reload()?;
    let (status, _, body) = call(&tunnel).await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["token"], first["token"], "the cached token, kept");
    assert_eq!(
        endpoint.exchanges().len(),
        1,
        "a reload with no change exchanged"
    );

    // The same file name, another key: exchanged afresh (and refused, as the endpoint
    // knows only the first key).
    postern_tests::pki::ec256(dir.path())?;
    reload()?;
    let (status, _, body) = call(&tunnel).await?;
    assert_eq!(status, 502, "{body}");
    assert_eq!(
        endpoint.exchanges().len(),
        2,
        "a new key kept the old token"
    );
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("refused the assertion"), "{message}");
    Ok(())
}
