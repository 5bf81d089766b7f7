//! An internal server's `Location` through the real relay and agent: a 302 to an absolute
//! internal URL and a 201's path-absolute one come back pointing at the relay's call route,
//! so a caller's HTTP client follows them and gets the target; other hosts pass unchanged.

use std::time::Duration;

use anyhow::{Context, Result};
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use postern_tests::harness::{Bins, Tunnel};
use postern_tests::internal_server::serve_until_cancelled;
use postern_tests::temp::TempDir;
use reqwest::Url;
use reqwest::header::{CONTENT_LOCATION, LOCATION};

fn bins() -> Bins {
    postern_tests::bins!()
}

/// The internal server: redirects and a created item, as many web frameworks write them.
async fn internal(State(me): State<String>, request: Request) -> Response {
    let query = request.uri().query().unwrap_or_default().to_owned();
    let redirect = |to: String| (StatusCode::FOUND, [(LOCATION, to)]).into_response();
    match (request.method().clone(), request.uri().path()) {
        (Method::GET, "/api/v2/start") => redirect(format!("http://{me}/api/v2/target?from=start")),
        (Method::GET, "/api/") => redirect("/api/v2/target?from=root".to_owned()),
        (Method::GET, "/api/away") => redirect("https://elsewhere.invalid/x?y=1".to_owned()),
        (Method::GET, "/api/v2/target") => format!("target {query}").into_response(),
        (Method::POST, "/api/items") => (
            StatusCode::CREATED,
            [
                (LOCATION, "/api/items/7"),
                (CONTENT_LOCATION, "/api/items/7"),
            ],
            "created",
        )
            .into_response(),
        (Method::GET, "/api/items/7") => "item 7".into_response(),
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn redirects_and_created_locations_lead_back_through_the_relay() -> Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let me = listener.local_addr()?.to_string();
    let app = Router::new().fallback(internal).with_state(me.clone());
    let _server = serve_until_cancelled(listener, app);
    let dir = TempDir::new("agent-locations")?;
    let connection =
        format!("[connections.site]\nbase_uri = \"http://{me}/api\"\ntimeout = \"5s\"\n");
    let t = Tunnel::start(&bins(), &dir, &connection).await?;
    let route = format!("{}/v1/agents/a1/connections/site/http", t.api.base);
    let following = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::limited(3))
        .timeout(Duration::from_secs(20))
        .build()?;

    // A 302 to the absolute internal URL, from a call below the base, from the bare route
    // (whose relative references start one directory higher) and from the base's `/`.
    for (called, body) in [
        (format!("{route}/v2/start"), "target from=start"),
        (route.clone(), "target from=root"),
        (format!("{route}/"), "target from=root"),
    ] {
        let answer = following
            .get(&called)
            .bearer_auth(&t.api.key)
            .send()
            .await?;
        let (status, landed) = (answer.status(), answer.url().clone());
        let text = answer.text().await?;
        assert_eq!((status.as_u16(), text.as_str()), (200, body), "{called}");
        assert_eq!(landed.as_str(), format!("{route}/v2/target?{}", &body[7..]));
    }

    // A 201's path-absolute Location and Content-Location: read as a client does, against
    // the URL it called.
    let called = Url::parse(&format!("{route}/items"))?;
    let created = t
        .api
        .http
        .post(called.clone())
        .bearer_auth(&t.api.key)
        .send()
        .await?;
    assert_eq!(created.status(), 201);
    for name in [LOCATION, CONTENT_LOCATION] {
        let value = created
            .headers()
            .get(&name)
            .and_then(|v| v.to_str().ok())
            .context("no location")?;
        let item = called.join(value)?;
        assert_eq!(item.as_str(), format!("{route}/items/7"), "{name}: {value}");
        let answer = t.api.http.get(item).bearer_auth(&t.api.key).send().await?;
        assert_eq!(answer.status(), 200);
        assert_eq!(answer.text().await?, "item 7");
    }

    // Another host passes as the internal server wrote it.
    let away = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?
        .get(format!("{route}/away"))
        .bearer_auth(&t.api.key)
        .send()
        .await?;
    assert_eq!(away.status(), 302);
    assert_eq!(away.headers()[LOCATION], "https://elsewhere.invalid/x?y=1");
    Ok(())
}
