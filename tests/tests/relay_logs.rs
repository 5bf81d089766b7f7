//! The relay's `--log-format json`: every line is one JSON object with the call's request
//! id in its span, and a full run leaves no token or key in any log; per-call lines filter out.

use anyhow::Result;
use postern_tests::harness::{AgentProcess, Api, Bins};
use postern_tests::relay_support::{ONLINE_WITHIN, OnlineAgent, RelayWorld, eventually, send};
use reqwest::Method;

fn bins() -> Bins {
    postern_tests::bins!()
}

#[tokio::test(flavor = "multi_thread")]
async fn json_logs_of_a_full_run_hold_request_ids_and_no_secret() -> Result<()> {
    let w = RelayWorld::start_configured(bins(), "", &["--log-format", "json"]).await?;
    let (relay, api) = (&w.relay, &w.admin);
    let OnlineAgent {
        token: first_token,
        process: mut agent,
        ..
    } = w.agent_online("warehouse-1").await?;
    let mut secrets = vec![api.key.clone(), first_token];

    // A call, a wrong key, a call key, a rotation, and the agent back with the new token.
    let traced = api
        .http
        .get(format!(
            "{}/v1/agents/warehouse-1/connections/orders/http/x",
            api.base
        ))
        .bearer_auth(&api.key)
        .header("x-request-id", "json-log-req-1")
        .send()
        .await?;
    assert_eq!(traced.status(), 200);
    let wrong = Api::new(relay.api_base(), "psk_not_a_real_key".to_owned());
    assert_eq!(
        send(&wrong, Method::GET, "/v1/agents", None).await?.status,
        401
    );
    let call_key = send(
        api,
        Method::POST,
        "/v1/apikeys",
        Some(serde_json::json!({"name": "runner", "scope": "call"})),
    )
    .await?;
    secrets.push(call_key.json["key"].as_str().unwrap_or_default().to_owned());
    let rotated = send(api, Method::POST, "/v1/agents/warehouse-1/token", None).await?;
    let new_token = rotated.json["token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    secrets.push(new_token.clone());
    agent.logs.wait_for(
        "the relay no longer accepts this agent's token",
        ONLINE_WITHIN,
    )?;
    agent.terminate()?;
    let agent = w.start_agent(&new_token)?;
    api.wait_online("warehouse-1", true, ONLINE_WITHIN).await?;
    eventually("the relay logged the call", ONLINE_WITHIN, || {
        let text = relay.logs.text();
        async move { text.contains("json-log-req-1") }
    })
    .await?;

    let lines = relay.logs.lines();
    assert!(lines.len() > 5);
    let mut call_line = None;
    for line in &lines {
        let value: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| anyhow::anyhow!("not a JSON log line ({e}): {line}"))?;
        assert!(value["level"].is_string() && value["message"].is_string());
        // The current span once, under `span`: no list of spans repeating it.
        assert!(value.get("spans").is_none(), "{line}");
        if value["span"]["request_id"] == "json-log-req-1" {
            call_line = Some(value);
        }
    }
    let call_line =
        call_line.ok_or_else(|| anyhow::anyhow!("no line with the request id in its span"))?;
    assert_eq!(call_line["span"]["agent"], "warehouse-1");

    let all_logs = format!("{}\n{}", relay.logs.text(), agent.logs.text());
    for secret in secrets.iter().filter(|s| s.len() > 10) {
        assert!(
            !all_logs.contains(secret.as_str()),
            "a secret leaked into the logs"
        );
    }
    assert!(!all_logs.contains("pst_") && !all_logs.contains("psk_"));
    Ok(())
}

/// An operator's filter drops the per-call lines of both sides (the bulk of the log at
/// high call rates) and keeps the rest: sessions, and the agent's warnings on failed calls.
#[tokio::test(flavor = "multi_thread")]
async fn per_call_lines_can_be_filtered_out_keeping_the_rest() -> Result<()> {
    let w = RelayWorld::start_configured(
        bins(),
        "",
        &["--log-level", "info,postern_relay::api::call=warn"],
    )
    .await?;
    let (relay, api) = (&w.relay, &w.admin);
    let token = w.create_agent("warehouse-1").await?;
    // `down` points at a port nothing listens on: its calls fail, and the agent warns.
    let config = w.write_agent_config_with(
        &token,
        "\n[connections.down]\nbase_uri = \"http://127.0.0.1:1\"\n",
    )?;
    let mut command = std::process::Command::new(&w.bins.agent);
    command
        .args(["run", "--config"])
        .arg(&config)
        .args(["--log-level", "info,postern_agent::call=warn"]);
    let agent = AgentProcess::spawn(command)?;
    api.wait_online("warehouse-1", true, ONLINE_WITHIN).await?;
    for i in 0..5 {
        let answer = api
            .call("warehouse-1", "orders", &format!("/x?i={i}"))
            .await?;
        assert_eq!(answer.status(), 200);
    }
    assert!(
        api.call("warehouse-1", "down", "/x")
            .await?
            .status()
            .is_server_error()
    );
    agent.logs.wait_for("call failed", ONLINE_WITHIN)?;

    let (relay_logs, agent_logs) = (relay.logs.text(), agent.logs.text());
    assert!(relay_logs.contains("agent online"), "{relay_logs}");
    assert!(!relay_logs.contains("call answered"), "{relay_logs}");
    assert!(agent_logs.contains("connected"), "{agent_logs}");
    assert!(
        !agent_logs
            .lines()
            .any(|l| l.contains("INFO") && l.contains("postern_agent::call:")),
        "{agent_logs}"
    );
    Ok(())
}
