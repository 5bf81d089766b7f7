//! `POST /v1/agents/{agent}/connections/{connection}/test`: the relay asks the
//! agent to run a connection's test request and returns the agent's report.

use anyhow::Result;
use postern_tests::harness::Tunnel;
use postern_tests::internal_server::{InternalServer, Verifier};
use postern_tests::temp::TempDir;

#[tokio::test(flavor = "multi_thread")]
async fn the_relay_runs_a_connection_test_on_the_agent() -> Result<()> {
    let bins = postern_tests::bins!();
    let dir = TempDir::new("conntest")?;
    let internal = InternalServer::start(Verifier::None, "").await?;
    let dead = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let connections = format!(
        "[connections.good]\nbase_uri = \"{}\"\ntest = {{ path = \"/health\", expect_status = 200 }}\n\
         [connections.down]\nbase_uri = \"http://{dead}\"\ntimeout = \"2s\"\n",
        internal.base_uri()
    );
    let tunnel = Tunnel::start(&bins, &dir, &connections).await?;
    let api = &tunnel.api;

    let test = |connection: &'static str| {
        let api = api.clone();
        async move {
            api.http
                .post(format!(
                    "{}/v1/agents/a1/connections/{connection}/test",
                    api.base
                ))
                .bearer_auth(&api.key)
                .send()
                .await
        }
    };
    let r = test("good").await?;
    assert_eq!(r.status(), 200);
    let report: serde_json::Value = r.json().await?;
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["status"], 200);
    assert_eq!(report["connection"], "good");
    assert_eq!(internal.requests()[0].path_and_query, "/api/health");

    let report: serde_json::Value = test("down").await?.json().await?;
    assert_eq!(report["ok"], false, "{report}");
    assert!(
        report["steps"]
            .as_array()
            .is_some_and(|s| s.iter().any(|step| step["ok"] == false))
    );

    let r = test("nope").await?;
    assert_eq!(r.status(), 404);
    let body: serde_json::Value = r.json().await?;
    assert_eq!(body["error"]["code"], "unknown_connection");
    Ok(())
}
