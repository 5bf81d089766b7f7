//! Odd token-endpoint answers and URLs, end to end: huge `expires_in`, a `token_type` no
//! header can carry, a refresh that fails while the token still holds (and `postern
//! status` saying so), a refusal shown by `postern status`, credentials in
//! `token_url`/`base_uri` and keys beside `auth = none` refused by `postern config check`.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use jsonwebtoken::{Algorithm, DecodingKey};
use postern_tests::harness::{
    Bins, Tunnel, agent_cli, agent_command, offline_agent_config, output_text, status_json,
};
use postern_tests::temp::TempDir;
use postern_tests::token_endpoint::{EndpointConfig, ExpiresIn, Fault, TokenEndpoint};
use serde_json::Value;

fn bins() -> Bins {
    postern_tests::bins!()
}

async fn endpoint(public_pem: &str, expires_in: ExpiresIn) -> Result<TokenEndpoint> {
    TokenEndpoint::start(EndpointConfig {
        key: DecodingKey::from_ec_pem(public_pem.as_bytes())?,
        algorithm: Algorithm::ES256,
        audience: "https://idp.test/token".to_owned(),
        issuer: "postern-edge".to_owned(),
        grant_type: "urn:ietf:params:oauth:grant-type:jwt-bearer".to_owned(),
        expires_in,
        delay: Duration::ZERO,
        reissue: false,
    })
    .await
}

async fn call(tunnel: &Tunnel, connection: &str) -> Result<(u16, Value)> {
    let response = tunnel.api.call("a1", connection, "/x").await?;
    let status = response.status().as_u16();
    let text = response.text().await?;
    let body = serde_json::from_str(&text).with_context(|| format!("not JSON: {text}"))?;
    Ok((status, body))
}

fn answer(body: &'static str) -> Option<Fault> {
    Some(Fault::Answer {
        status: 200,
        content_type: "application/json",
        body,
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn odd_token_answers_give_a_result_and_the_right_error_code() -> Result<()> {
    let dir = TempDir::new("jwt-review-odd")?;
    let (_, public) = postern_tests::pki::ec256(dir.path())?;
    let endpoint = endpoint(&public, ExpiresIn::Number(3600)).await?;
    let connections = [
        endpoint.connection("huge", "ES256", "ec.pem", "", ""),
        endpoint.connection("huge_text", "ES256", "ec.pem", "", ""),
        endpoint.connection("badtype", "ES256", "ec.pem", "", ""),
    ]
    .concat();
    let tunnel = Tunnel::start(&bins(), &dir, &connections).await?;

    // Once these panicked the agent's call task: the caller got a dropped channel.
    for (name, body) in [
        ("huge", r#"{"access_token":"a","expires_in":1e300}"#),
        (
            "huge_text",
            r#"{"access_token":"a","expires_in":"10000000000000000000"}"#,
        ),
    ] {
        endpoint.set_fault(answer(body));
        // The guarded API does not know "a": its 401 is the proof the token was sent.
        let (status, body) = call(&tunnel, name).await?;
        assert_eq!(status, 401, "{name}: {body}");
        let sent = endpoint.calls().last().and_then(|c| c.token.clone());
        assert_eq!(sent.as_deref(), Some("a"), "{name}");
    }

    endpoint.set_fault(answer(
        r#"{"access_token":"b","token_type":"Bear\u0001er"}"#,
    ));
    let (status, body) = call(&tunnel, "badtype").await?;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"]["code"], "token_exchange_failed", "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("is not a scheme a header can carry"),
        "{message}"
    );
    Ok(())
}

/// A connection whose token endpoint refuses has no token: `postern status` says why, as
/// the calls' error does (the token URL without its query, the endpoint's text on one
/// line), until a token is had again.
#[tokio::test(flavor = "multi_thread")]
async fn status_shows_why_a_connection_has_no_token_until_it_has_one() -> Result<()> {
    let dir = TempDir::new("jwt-status-failure")?;
    let (_, public) = postern_tests::pki::ec256(dir.path())?;
    let endpoint = endpoint(&public, ExpiresIn::Number(3600)).await?;
    let token_url = endpoint.token_url();
    let connection = endpoint
        .connection("erp", "ES256", "ec.pem", "", "")
        .replace(
            &format!("token_url = \"{token_url}\""),
            &format!("token_url = \"{token_url}?tenant=QUERYSECRET\""),
        );
    let tunnel = Tunnel::start(&bins(), &dir, &connection).await?;
    endpoint.set_fault(Some(Fault::Answer {
        status: 400,
        content_type: "application/json",
        body: r#"{"error":"invalid_grant","error_description":"key revoked\nask the admin"}"#,
    }));
    let (status, body) = call(&tunnel, "erp").await?;
    assert_eq!(status, 502, "{body}");
    let refused = format!(
        "token endpoint {token_url}?… refused the assertion (HTTP 400): invalid_grant: key revoked\\nask the admin"
    );

    let status = status_json(&bins(), &tunnel.config)?;
    let erp = &status["connections"]["erp"];
    assert_eq!(erp["token_cache"], "none", "{status}");
    assert_eq!(erp["token_failure"]["error"], refused.as_str(), "{status}");
    let at = erp["token_failure"]["at"].as_str().unwrap_or_default();
    assert!(humantime::parse_rfc3339(at).is_ok(), "{status}");
    assert!(
        erp["token_failure"].get("token_used_until").is_none(),
        "no token serves: {status}"
    );
    let out = agent_cli(&bins(), &tunnel.config, &["status"])?;
    let text = output_text(&out);
    assert!(
        text.contains(&format!("\n    last token failure at {at}: {refused}\n")),
        "{text}"
    );
    assert!(!text.contains("QUERYSECRET") && !status.to_string().contains("QUERYSECRET"));

    endpoint.set_fault(None);
    // The failure is held for the calls of the next second: at most 20 tries in 5 s.
    let mut answer = call(&tunnel, "erp").await?;
    for _ in 0..20 {
        if answer.0 == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        answer = call(&tunnel, "erp").await?;
    }
    assert_eq!(answer.0, 200, "{}", answer.1);
    let status = status_json(&bins(), &tunnel.config)?;
    let erp = &status["connections"]["erp"];
    assert!(erp["token_failure"].is_null(), "{status}");
    let text = output_text(&agent_cli(&bins(), &tunnel.config, &["status"])?);
    assert!(!text.contains("last token failure"), "{text}");
    Ok(())
}

/// The access token a first call got, and a time after its life began: before that
/// call the agent had none, and it counts from its own request to the endpoint.
struct Issued {
    first: Value,
    issued_by: Instant,
    /// Taken just before the first call: the token's life began after this.
    asked: Instant,
}

/// An ES256 exchange connection `erp` whose tokens live `lifetime`, after a first call.
async fn with_a_token(
    tag: &str,
    lifetime: Duration,
) -> Result<(TempDir, TokenEndpoint, Tunnel, Issued)> {
    let dir = TempDir::new(tag)?;
    let (_, public) = postern_tests::pki::ec256(dir.path())?;
    let endpoint = endpoint(&public, ExpiresIn::Number(lifetime.as_secs())).await?;
    let tunnel = Tunnel::start(
        &bins(),
        &dir,
        &endpoint.connection("erp", "ES256", "ec.pem", "", ""),
    )
    .await?;
    let asked = Instant::now();
    let (status, body) = call(&tunnel, "erp").await?;
    anyhow::ensure!(status == 200, "first call: {status} {body}");
    let issued = Issued {
        first: body["token"].clone(),
        issued_by: Instant::now(),
        asked,
    };
    Ok((dir, endpoint, tunnel, issued))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_refresh_keeps_using_the_still_valid_token() -> Result<()> {
    // Refreshed after 27 s (a tenth before expiry), expired after 30 s: the three calls
    // and two `postern status` runs inside that window have 2.9 s, room for a loaded machine.
    const LIFETIME: Duration = Duration::from_secs(30);
    let (
        _dir,
        endpoint,
        tunnel,
        Issued {
            first,
            issued_by,
            asked,
        },
    ) = with_a_token("jwt-review-refresh", LIFETIME).await?;

    // Down for a while, from before the refresh window opens.
    endpoint.set_fault(Some(Fault::Answer {
        status: 503,
        content_type: "text/plain",
        body: "maintenance",
    }));
    tokio::time::sleep(
        (issued_by + LIFETIME * 9 / 10 + Duration::from_millis(100))
            .saturating_duration_since(Instant::now()),
    )
    .await;
    for _ in 0..3 {
        let (status, body) = call(&tunnel, "erp").await?;
        assert_eq!(status, 200, "the old token still works: {body}");
        assert_eq!(body["token"], first);
    }
    // Measured from just before the first call (not from before the setup, which is
    // no part of the token's life): the token expires no earlier than `asked + LIFETIME`.
    assert!(
        asked.elapsed() < LIFETIME,
        "too slow to be inside the refresh window: {:?}",
        asked.elapsed()
    );
    // Inside the refresh window: a refresh was tried, and failed.
    assert!(
        endpoint.faulted() >= 1,
        "no refresh was tried inside the refresh window"
    );
    // `postern status` says so while the token still serves, not only once calls fail.
    let status = status_json(&bins(), &tunnel.config)?;
    let erp = &status["connections"]["erp"];
    let cache = erp["token_cache"].as_str().unwrap_or_default();
    let until = cache
        .strip_prefix("valid until ")
        .with_context(|| format!("too slow: the token expired before `status`: {status}"))?;
    let error = erp["token_failure"]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("answered HTTP 503 without an OAuth error: maintenance"),
        "{status}"
    );
    let at = erp["token_failure"]["at"].as_str().unwrap_or_default();
    assert!(humantime::parse_rfc3339(at).is_ok(), "{status}");
    assert_eq!(erp["token_failure"]["token_used_until"], until, "{status}");
    let text = output_text(&agent_cli(&bins(), &tunnel.config, &["status"])?);
    assert!(
        text.contains(&format!(
            "\n    last token failure at {at}: {error} (the current token is used until {until})\n"
        )),
        "{text}"
    );

    // Expired: never sent; the failure comes back.
    tokio::time::sleep(
        (issued_by + LIFETIME + Duration::from_millis(300))
            .saturating_duration_since(Instant::now()),
    )
    .await;
    let (status, body) = call(&tunnel, "erp").await?;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"]["code"], "token_exchange_failed", "{body}");
    assert!(
        endpoint.calls().iter().all(|c| c.status == 200),
        "no expired token reached the API"
    );

    // Up again: the first call a second after that failure (which is handed on to the
    // calls of that second) exchanges and succeeds.
    endpoint.set_fault(None);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let (status, body) = call(&tunnel, "erp").await?;
    assert_eq!(status, 200, "{body}");
    assert_ne!(body["token"], first);
    assert_eq!(endpoint.exchanges().len(), 2);
    let status = status_json(&bins(), &tunnel.config)?;
    assert!(
        status["connections"]["erp"]["token_failure"].is_null(),
        "a token clears it: {status}"
    );
    Ok(())
}

/// A refresh that the token endpoint is slow to answer holds up only the call that makes
/// it: the others go on with the token still valid, rather than queue behind the exchange
/// (up to the connection's timeout) and then, past its expiry, fail.
#[tokio::test(flavor = "multi_thread")]
async fn a_slow_refresh_holds_up_only_the_call_that_makes_it() -> Result<()> {
    // Refreshed after 18 s, expired after 20 s.
    let (
        _dir,
        endpoint,
        tunnel,
        Issued {
            first, issued_by, ..
        },
    ) = with_a_token("jwt-slow-refresh", Duration::from_secs(20)).await?;

    endpoint.set_fault(Some(Fault::Slow(Duration::from_secs(4))));
    tokio::time::sleep(
        (issued_by + Duration::from_millis(18_100)).saturating_duration_since(Instant::now()),
    )
    .await;
    // Four calls at once: one makes the refresh; the others must not wait for it.
    let calls: Vec<_> = (0..4)
        .map(|_| {
            let api = tunnel.api.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                let r = api.call("a1", "erp", "/x").await?;
                let status = r.status().as_u16();
                let body: Value = r.json().await?;
                anyhow::Ok((status, body["token"].clone(), started.elapsed()))
            })
        })
        .collect();
    let mut answers = Vec::new();
    for call in calls {
        answers.push(call.await??);
    }
    assert!(
        answers.iter().all(|(status, ..)| *status == 200),
        "{answers:?}"
    );
    // Behind the exchange, each would have waited its 4 s, then had the new token.
    let quick_with_the_old = answers
        .iter()
        .filter(|(_, token, took)| *token == first && *took < Duration::from_secs(2))
        .count();
    assert_eq!(quick_with_the_old, 3, "{answers:?}");
    assert_eq!(
        answers
            .iter()
            .filter(|(_, token, _)| *token != first)
            .count(),
        1,
        "the refreshing call has the new token: {answers:?}"
    );
    Ok(())
}

#[test]
fn config_check_refuses_user_info_in_urls_and_keys_beside_auth_none() -> Result<()> {
    let dir = TempDir::new("jwt-review-check")?;
    postern_tests::pki::ec256(dir.path())?;
    let check = |text: &str, env: &[(&str, &str)]| -> Result<(bool, String)> {
        // The relay's domain is the one `no_proxy` exempts below.
        let config = dir.write_private(
            "agent.toml",
            &offline_agent_config("relay.example.com:2222", text),
        )?;
        let out = agent_command(&bins(), &config, &["config", "check"])
            .env_remove("HTTPS_PROXY")
            .env_remove("https_proxy")
            .env_remove("ALL_PROXY")
            .env_remove("all_proxy")
            .env_remove("NO_PROXY")
            .env_remove("no_proxy")
            .envs(env.iter().copied())
            .output()?;
        Ok((out.status.success(), output_text(&out)))
    };

    let (ok, out) = check("", &[])?;
    assert!(ok, "{out}");

    let (ok, out) = check(
        "[connections.typo]\nbase_uri = \"http://orders.internal/api\"\nauth = { type = \"none\", algoritm = \"RS256\" }\n",
        &[],
    )?;
    assert!(!ok && out.contains("unknown field `algoritm`"), "{out}");

    let (ok, out) = check(
        "[connections.open]\nbase_uri = \"http://:s3cret@orders.internal/api\"\n",
        &[],
    )?;
    assert!(!ok, "{out}");
    assert!(
        out.contains(
            "base_uri \"http://orders.internal/api\" may not hold a user name or password"
        ),
        "{out}"
    );
    assert!(!out.contains("s3cret"), "{out}");

    let (ok, out) = check(
        r#"
[connections.erp]
base_uri = "https://erp.internal/api"
[connections.erp.auth]
type = "jwt_bearer"
algorithm = "ES256"
private_key_file = "ec.pem"
payload = { iss = "postern" }
[connections.erp.auth.exchange]
token_url = "https://client:s3cret@idp.internal/token"
"#,
        &[],
    )?;
    assert!(!ok, "{out}");
    assert!(
        out.contains(
            "auth.exchange.token_url \"https://idp.internal/token\" may not hold a user name or password"
        ),
        "{out}"
    );
    assert!(!out.contains("s3cret"), "{out}");

    // curl's reading of a proxy without a scheme; and one NO_PROXY exempts is not read at all.
    let (ok, out) = check("", &[("https_proxy", "proxy.corp:3128")])?;
    assert!(ok, "{out}");
    let (ok, out) = check(
        "",
        &[
            ("https_proxy", "socks5://proxy.corp:1080"),
            ("no_proxy", ".example.com"),
        ],
    )?;
    assert!(ok, "{out}");
    Ok(())
}
