//! `POST /v1/agents/{agent}/token` takes its body as the other JSON routes do: a body
//! without a JSON content type is 400 `bad_request` (and changes nothing), one past the
//! limit 413 `payload_too_large` on every route. No body at all still means no options.

use anyhow::Result;
use postern_tests::harness::Bins;
use postern_tests::relay_support::{RelayWorld, error_code, ssh_login};

fn bins() -> Bins {
    postern_tests::bins!()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_token_route_takes_json_as_the_others_do() -> Result<()> {
    let w = RelayWorld::start(bins()).await?;
    let token = w.create_agent("site").await?;
    let post = |path: &str, content_type: Option<&str>, body: Vec<u8>| {
        let mut request = w
            .admin
            .http
            .post(format!("{}{path}", w.admin.base))
            .bearer_auth(&w.admin.key)
            .body(body);
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        async move {
            let response = request.send().await?;
            let status = response.status().as_u16();
            let json: serde_json::Value = response.json().await.unwrap_or_default();
            anyhow::Ok((status, json))
        }
    };
    let rotate = "/v1/agents/site/token";
    let grace = br#"{"grace":"5m"}"#.to_vec();

    let (status, json) = post(rotate, Some("text/plain"), grace.clone()).await?;
    assert_eq!((status, error_code(&json)), (400, "bad_request"), "{json}");
    let (status, json) = post(rotate, None, grace.clone()).await?;
    assert_eq!((status, error_code(&json)), (400, "bad_request"), "{json}");
    // Refused, so nothing changed: the first token still logs in.
    assert!(
        ssh_login(w.relay.ssh, &token).await?.1,
        "the token was rotated"
    );

    let big = {
        let mut body = br#"{"name":""#.to_vec();
        body.resize(3 * 1024 * 1024, b'a');
        body.extend_from_slice(br#""}"#);
        body
    };
    for path in [rotate, "/v1/agents", "/v1/apikeys"] {
        let (status, json) = post(path, Some("application/json"), big.clone()).await?;
        assert_eq!(
            (status, error_code(&json)),
            (413, "payload_too_large"),
            "{path}: {json}"
        );
    }

    let (status, json) = post(rotate, Some("application/json"), grace).await?;
    assert_eq!(status, 200, "{json}");
    assert!(json["old_token_valid_until"].is_string(), "{json}");
    for content_type in [None, Some("text/plain")] {
        let (status, json) = post(rotate, content_type, Vec::new()).await?;
        assert_eq!(status, 200, "no body: {json}");
        assert!(json["old_token_valid_until"].is_null(), "{json}");
    }
    Ok(())
}
