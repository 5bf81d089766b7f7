//! What the relay tells about an agent (calls in flight, last seen, why its
//! last session ended) and request ids on every answer and in both logs.

use std::time::Duration;

use anyhow::Result;
use postern_tests::harness::Bins;
use postern_tests::relay_support::{
    ONLINE_WITHIN, OnlineAgent, RelayWorld, eventually, send, wait_calls_in_flight,
};
use reqwest::Method;

fn bins() -> Bins {
    postern_tests::bins!()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_reports_calls_in_flight_last_seen_and_why_it_left() -> Result<()> {
    let w = RelayWorld::start(bins()).await?;
    let OnlineAgent {
        token,
        process: mut agent,
        info,
    } = w.agent_online("warehouse-1").await?;
    assert_eq!(info.calls_in_flight, 0);
    assert!(info.last_seen.is_some(), "an online agent is seen now");
    assert_eq!(info.last_disconnect_reason, None);

    // Two slow calls (the internal server takes 3 s) are counted while under way.
    let slow = |api: postern_tests::harness::Api| async move {
        api.call("warehouse-1", "orders", "/slow").await
    };
    let a = tokio::spawn(slow(w.admin.clone()));
    let b = tokio::spawn(slow(w.admin.clone()));
    wait_calls_in_flight(&w.admin, "warehouse-1", 2, Duration::from_secs(3)).await?;
    assert_eq!(a.await??.status(), 200);
    assert_eq!(b.await??.status(), 200);
    wait_calls_in_flight(&w.admin, "warehouse-1", 0, Duration::from_secs(5)).await?;

    // The agent stops (SIGTERM): offline, seen until then, and why.
    agent.terminate()?;
    let gone = w
        .admin
        .wait_online("warehouse-1", false, ONLINE_WITHIN)
        .await?;
    let api = w.admin.clone();
    eventually("a disconnect reason", ONLINE_WITHIN, || {
        let api = api.clone();
        async move {
            api.agent("warehouse-1")
                .await
                .is_ok_and(|i| i.last_disconnect_reason.is_some())
        }
    })
    .await?;
    let gone_info = w.admin.agent("warehouse-1").await?;
    assert!(gone_info.last_seen.is_some());
    assert_eq!(gone_info.calls_in_flight, 0);
    let reason = gone_info.last_disconnect_reason.unwrap_or_default();
    assert!(
        reason.contains("closed") || reason.contains("lost"),
        "reason: {reason}"
    );
    assert!(!gone.online);

    // Every listed agent carries the new fields.
    let _again = w.start_agent(&token)?;
    w.admin
        .wait_online("warehouse-1", true, ONLINE_WITHIN)
        .await?;
    let _other_agent = w.agent_online("warehouse-2").await?;
    let list = send(&w.admin, Method::GET, "/v1/agents", None).await?;
    for agent in list.json["agents"].as_array().cloned().unwrap_or_default() {
        for field in ["calls_in_flight", "last_seen", "last_disconnect_reason"] {
            assert!(agent.get(field).is_some(), "{field} in {agent}");
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn every_answer_carries_a_request_id_and_both_logs_hold_it() -> Result<()> {
    let w = RelayWorld::start(bins()).await?;
    let agent = w.agent_online("warehouse-1").await?.process;

    // The caller's id is kept, on a call, and shows in the relay's and the agent's log.
    let response = w
        .admin
        .http
        .get(format!(
            "{}/v1/agents/warehouse-1/connections/orders/http/traced",
            w.admin.base
        ))
        .bearer_auth(&w.admin.key)
        .header("x-request-id", "trace-e2e-4242")
        .send()
        .await?;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-request-id"], "trace-e2e-4242");
    w.relay.logs.wait_for("trace-e2e-4242", ONLINE_WITHIN)?;
    agent.logs.wait_for("trace-e2e-4242", ONLINE_WITHIN)?;

    // Without one (or with a bad one) the relay makes one, and it too is in both logs.
    let response = w.admin.call("warehouse-1", "orders", "/made").await?;
    let made = response.headers()["x-request-id"].to_str()?.to_owned();
    assert_eq!(made.len(), 36, "a UUID: {made}");
    w.relay.logs.wait_for(&made, ONLINE_WITHIN)?;
    agent.logs.wait_for(&made, ONLINE_WITHIN)?;
    let response = w
        .admin
        .http
        .get(format!("{}/v1/agents", w.admin.base))
        .bearer_auth(&w.admin.key)
        .header("x-request-id", "bad id with spaces")
        .send()
        .await?;
    let replaced = response.headers()["x-request-id"].to_str()?.to_owned();
    assert_ne!(replaced, "bad id with spaces");
    assert_eq!(replaced.len(), 36);

    // Error answers carry one too: no key, wrong route, unknown agent, offline call, health.
    let client = reqwest::Client::new();
    for (url, status) in [
        (format!("{}/v1/agents", w.admin.base), 401),
        (format!("{}/nothing-here", w.admin.base), 404),
        (format!("{}/healthz", w.admin.base), 200),
    ] {
        let r = client
            .get(&url)
            .header("x-request-id", "err-check-1")
            .send()
            .await?;
        assert_eq!(r.status(), status, "{url}");
        assert_eq!(r.headers()["x-request-id"], "err-check-1", "{url}");
    }
    let unknown = send(&w.admin, Method::GET, "/v1/agents/nobody", None).await?;
    assert_eq!(unknown.status, 404);
    assert!(unknown.headers.contains_key("x-request-id"));
    let offline_call = w
        .admin
        .http
        .get(format!(
            "{}/v1/agents/nobody/connections/orders/http/x",
            w.admin.base
        ))
        .bearer_auth(&w.admin.key)
        .header("x-request-id", "failed-call-77")
        .send()
        .await?;
    assert_eq!(offline_call.status(), 404);
    assert_eq!(offline_call.headers()["x-request-id"], "failed-call-77");
    w.relay.logs.wait_for("failed-call-77", ONLINE_WITHIN)?;
    Ok(())
}
