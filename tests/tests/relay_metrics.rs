//! `/metrics` scraped like Prometheus would: every family is there and the
//! counters move with real sessions, refused logins, refused API keys and calls.

use anyhow::{Context, Result};
use postern_protocol::SecretKind;
use postern_tests::harness::Bins;
use postern_tests::relay_support::{
    ONLINE_WITHIN, RelayWorld, eventually, sample as get, scrape, send,
};

fn bins() -> Bins {
    postern_tests::bins!()
}

#[tokio::test(flavor = "multi_thread")]
async fn counters_move_with_sessions_logins_and_calls() -> Result<()> {
    let w = RelayWorld::start(bins()).await?;
    let before = scrape(&w.admin).await?;
    assert_eq!(get(&before, "postern_agents_online"), 0.0);
    assert!(before.contains_key("postern_call_duration_seconds_bucket{le=\"+Inf\"}"));
    // Without TLS there is no certificate: no expiry, rather than a 0 read as 1970.
    assert!(
        !before.keys().any(|k| k.starts_with("postern_tls")),
        "{before:?}"
    );

    let mut agent = w.agent_online("warehouse-1").await?.process;
    let online = scrape(&w.admin).await?;
    assert_eq!(get(&online, "postern_agents_online"), 1.0);
    assert_eq!(get(&online, "postern_sessions_opened_total"), 1.0);

    // Three answered calls with a body, one refused (unknown connection).
    let body = vec![b'b'; 10_000];
    for _ in 0..3 {
        let r = w
            .admin
            .http
            .post(format!(
                "{}/v1/agents/warehouse-1/connections/orders/http/echo",
                w.admin.base
            ))
            .bearer_auth(&w.admin.key)
            .body(body.clone())
            .send()
            .await?;
        assert_eq!(r.status(), 200);
        r.bytes().await?;
    }
    let refused = w.admin.call("warehouse-1", "nope", "/x").await?;
    assert_eq!(refused.status(), 404);
    // And one the agent refuses (an encoded slash): postern's own errors, by who said them.
    let slash = w.admin.call("warehouse-1", "orders", "/a%2Fb").await?;
    assert_eq!(slash.status(), 400);
    let calls = scrape(&w.admin).await?;
    assert_eq!(get(&calls, "postern_calls_total{class=\"2xx\"}"), 3.0);
    assert_eq!(get(&calls, "postern_calls_total{class=\"4xx\"}"), 2.0);
    for (series, count) in [
        ("{by=\"relay\",code=\"unknown_connection\"}", 1.0),
        ("{by=\"agent\",code=\"path_rejected\"}", 1.0),
    ] {
        let series = format!("postern_call_errors_total{series}");
        assert_eq!(get(&calls, &series), count, "{series}: {calls:?}");
    }
    assert_eq!(get(&calls, "postern_call_duration_seconds_count"), 5.0);
    assert_eq!(
        get(&calls, "postern_call_duration_seconds_bucket{le=\"+Inf\"}"),
        5.0
    );
    assert!(get(&calls, "postern_call_duration_seconds_sum") > 0.0);
    assert!(get(&calls, "postern_call_request_bytes_total") >= 30_000.0);
    assert!(get(&calls, "postern_call_response_bytes_total") > 0.0);

    // A wrong (well-formed) token is a refused login.
    let wrong = postern_relay::secrets::new_token(SecretKind::AgentToken);
    let intruder = w.start_agent(wrong.expose())?;
    let api = w.admin.clone();
    eventually("an auth failure counted", ONLINE_WITHIN, || {
        let api = api.clone();
        async move {
            scrape(&api).await.is_ok_and(|s| {
                get(&s, "postern_auth_failures_total{reason=\"unknown_token\"}") >= 1.0
            })
        }
    })
    .await?;
    drop(intruder);

    // API requests refused for their key, each under its reason.
    let agents = format!("{}/v1/agents", w.admin.base);
    let unknown = postern_relay::secrets::new_token(SecretKind::ApiKey);
    let body = serde_json::json!({"name": "gone"});
    let made = send(&w.admin, reqwest::Method::POST, "/v1/apikeys", Some(body)).await?;
    let revoked = made.json["key"].as_str().unwrap_or_default().to_owned();
    let gone = send(&w.admin, reqwest::Method::DELETE, "/v1/apikeys/gone", None).await?;
    assert_eq!(gone.status, 204, "{}", gone.json);
    for key in [
        None,
        Some("not-a-key"),
        Some(unknown.expose()),
        Some(unknown.expose()),
        Some(revoked.as_str()),
    ] {
        let mut request = w.admin.http.get(&agents);
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        assert_eq!(request.send().await?.status(), 401, "{key:?}");
    }
    let refusals = scrape(&w.admin).await?;
    for (reason, count) in [
        ("missing", 1.0),
        ("malformed", 1.0),
        ("unknown", 2.0),
        ("revoked", 1.0),
    ] {
        assert_eq!(
            get(
                &refusals,
                &format!("postern_api_key_refusals_total{{reason=\"{reason}\"}}")
            ),
            count,
            "{reason}"
        );
    }

    // The agent stops: offline, and its session closed by the agent.
    agent.terminate()?;
    eventually("the session closed", ONLINE_WITHIN, || {
        let api = api.clone();
        async move {
            scrape(&api).await.is_ok_and(|s| {
                // Closed by the agent's goodbye, or seen as a lost link if the
                // socket closed first: either way one closed session.
                let closed: f64 = s
                    .iter()
                    .filter(|(k, _)| k.starts_with("postern_sessions_closed_total{"))
                    .map(|(_, v)| v)
                    .sum();
                get(&s, "postern_agents_online") == 0.0 && closed == 1.0
            })
        }
    })
    .await
    .with_context(|| format!("{:?}", w.relay.logs.text()))?;
    Ok(())
}
