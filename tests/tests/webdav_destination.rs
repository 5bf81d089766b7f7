//! WebDAV's COPY and MOVE name where to write in `Destination`: the caller gives a path
//! under the connection, the internal server gets the URL it maps to, and nothing outside
//! `base_uri` can be named.

use anyhow::Result;
use postern_tests::relay_support::{RelayWorld, error_code};
use reqwest::Method;

async fn move_to(w: &RelayWorld, destination: &str) -> Result<(u16, serde_json::Value)> {
    let r = w
        .admin
        .http
        .request(
            Method::from_bytes(b"MOVE")?,
            format!(
                "{}/v1/agents/site/connections/orders/http/public/report.pdf",
                w.admin.base
            ),
        )
        .bearer_auth(&w.admin.key)
        .header("destination", destination)
        .send()
        .await?;
    let status = r.status().as_u16();
    Ok((status, r.json().await.unwrap_or_default()))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_destination_is_a_path_under_the_connection() -> Result<()> {
    let w = RelayWorld::start(postern_tests::bins!()).await?;
    let _agent = w.agent_online("site").await?;

    let (status, body) = move_to(&w, "/archive/report.pdf").await?;
    assert_eq!(status, 200, "{body}");
    let seen = w.internal.requests();
    let destination = seen
        .last()
        .and_then(|r| r.headers.iter().find(|(n, _)| n == "destination"))
        .map(|(_, v)| v.clone());
    assert_eq!(
        destination,
        Some(format!("{}/archive/report.pdf", w.internal.base_uri()))
    );

    // A URL (of the internal server itself, or of another), or a path that climbs out of
    // the base: refused, and nothing sent.
    let before = w.internal.requests().len();
    for outside in [
        format!("http://{}/private/report.pdf", w.internal.addr),
        "http://elsewhere.internal/report.pdf".to_owned(),
        "/../private/report.pdf".to_owned(),
        "/%2e%2e/private/report.pdf".to_owned(),
        "//elsewhere.internal/report.pdf".to_owned(),
    ] {
        let (status, body) = move_to(&w, &outside).await?;
        assert_eq!(status, 400, "{outside}: {body}");
        assert_eq!(error_code(&body), "path_rejected", "{outside}: {body}");
    }
    assert_eq!(
        w.internal.requests().len(),
        before,
        "a refused MOVE was sent"
    );
    Ok(())
}
