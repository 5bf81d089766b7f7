//! Agent names cannot look like agent ids: otherwise a name equal to one agent's id
//! would make a retried `DELETE /v1/agents/{id}` revoke a second, different agent.

use anyhow::Result;
use postern_tests::harness::{Bins, relay_cli_output};
use postern_tests::relay_support::{RelayWorld, send};
use reqwest::Method;
use serde_json::json;

fn bins() -> Bins {
    postern_tests::bins!()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_name_shaped_like_an_id_is_refused_and_a_retried_revoke_hits_nothing() -> Result<()> {
    let w = RelayWorld::start(bins()).await?;
    let created = send(
        &w.admin,
        Method::POST,
        "/v1/agents",
        Some(json!({"name": "site-a"})),
    )
    .await?;
    assert_eq!(created.status, 201, "{}", created.json);
    let id = created.json["id"].as_str().unwrap_or_default().to_owned();
    assert!(id.starts_with("agt_"), "{id}");

    for name in [id.as_str(), "agt_anything"] {
        let twin = send(
            &w.admin,
            Method::POST,
            "/v1/agents",
            Some(json!({ "name": name })),
        )
        .await?;
        assert_eq!(twin.status, 400, "{name}: {}", twin.json);
        assert_eq!(twin.code(), "bad_request", "{}", twin.json);
        let message = twin.json["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("agt_"), "{message}");
    }

    let first = send(&w.admin, Method::DELETE, &format!("/v1/agents/{id}"), None).await?;
    assert_eq!(first.status, 204, "{}", first.json);
    let retry = send(&w.admin, Method::DELETE, &format!("/v1/agents/{id}"), None).await?;
    assert_eq!(retry.status, 404, "{}", retry.json);
    assert_eq!(retry.code(), "agent_not_found");

    // The CLI refuses the same, and creates nothing.
    let dir = w.state_dir().to_string_lossy().into_owned();
    let out = relay_cli_output(&w.bins, &["agent", "create", &id, "--state-dir", &dir])?;
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("kept for agent ids"), "{stderr}");
    let list = send(&w.admin, Method::GET, "/v1/agents", None).await?;
    assert_eq!(list.json["agents"], json!([]), "{}", list.json);
    Ok(())
}
