//! The relay's HTTP API: `fn router()` so tests can drive it without a socket;
//! everything under `/v1/` but the OpenAPI document needs `Authorization: Bearer <api key>`.

pub mod agents;
mod answer_body;
pub mod apikeys;
pub mod auth;
mod awaited;
pub mod call;
pub mod connection_test;
pub mod error;
pub mod every_request;
pub mod openapi;
pub mod token;

use std::convert::Infallible;
use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::middleware;
use axum::middleware::future::FromFnResponseFuture;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, delete, get, post};
use postern_protocol::ErrorCode;
use tower::{Layer, Service};

use crate::context::RelayContext;
pub use error::ApiError;

/// The largest body a management route takes (axum's default, said here so the 413
/// can name it); calls have `max_request_body`.
pub const MANAGEMENT_BODY_LIMIT: usize = 2 * 1024 * 1024;

/// What [`router`] gives: the whole API as one service, for the server and the tests.
pub trait Api:
    Service<Request, Response = Response, Error = Infallible, Future = FromFnResponseFuture>
    + Clone
    + Send
    + Sync
    + 'static
{
}

impl<T> Api for T where
    T: Service<Request, Response = Response, Error = Infallible, Future = FromFnResponseFuture>
        + Clone
        + Send
        + Sync
        + 'static
{
}

/// The API's routes behind [`every_request::every_request`]. The layer wraps the router
/// rather than each route so it sees every answer as axum finishes it: axum adds a
/// 405's `Allow` above the routes' layers, and the 405's message names those methods.
pub fn router(ctx: Arc<RelayContext>) -> impl Api {
    let routes = Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/v1/openapi.json", get(openapi::serve))
        .route("/v1/agents", get(agents::list).post(agents::create))
        .route(
            "/v1/agents/{agent}",
            get(agents::show).delete(agents::revoke),
        )
        .route("/v1/agents/{agent}/token", post(token::rotate))
        .route(
            "/v1/agents/{agent}/connections/{connection}/test",
            post(connection_test::run),
        )
        .route("/v1/apikeys", get(apikeys::list).post(apikeys::create))
        .route("/v1/apikeys/{name}", delete(apikeys::revoke))
        .route(
            "/v1/agents/{agent}/connections/{connection}/http",
            any(call::call),
        )
        .route(
            "/v1/agents/{agent}/connections/{connection}/http/",
            any(call::call),
        )
        .route(
            "/v1/agents/{agent}/connections/{connection}/http/{*path}",
            any(call::call),
        )
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MANAGEMENT_BODY_LIMIT))
        .with_state(ctx.clone());
    middleware::from_fn_with_state(ctx, every_request::every_request).layer(routes)
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// OpenMetrics text (Prometheus reads it), for any valid API key (either scope). Also on
/// a loopback address: a TLS proxy in front of the relay would otherwise serve it to anyone.
async fn metrics(
    State(ctx): State<Arc<RelayContext>>,
    request: Request,
) -> Result<impl IntoResponse, ApiError> {
    auth::check_api_key(&ctx, request.headers(), request.extensions()).await?;
    Ok((
        [(http::header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        ctx.metrics.render(ctx.registry.online()),
    ))
}

async fn not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such route")
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use http::Request;
    use postern_protocol::SecretKind;
    use tokio_util::sync::CancellationToken;
    use tower::ServiceExt;

    use super::*;
    use crate::config::RelayConfig;
    use crate::store::{SqliteStore, Store};

    /// A store in a fresh directory, holding one API key of `scope`; remove the
    /// directory when done.
    pub(crate) fn store_with_key(
        scope: postern_protocol::api::ApiKeyScope,
    ) -> (
        Arc<SqliteStore>,
        postern_protocol::SecretToken,
        std::path::PathBuf,
    ) {
        let dir = std::env::temp_dir().join(format!(
            "postern-api-test-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        let store = Arc::new(SqliteStore::open_in(&dir).expect("store"));
        let key = crate::secrets::new_token(SecretKind::ApiKey);
        store
            .create_scoped_api_key("test", &key, scope)
            .expect("key");
        (store, key, dir)
    }

    async fn status(app: impl Api, key: Option<&str>) -> u16 {
        status_of(app, "GET", "/metrics", key).await
    }

    async fn status_of(app: impl Api, method: &str, path: &str, key: Option<&str>) -> u16 {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(key) = key {
            request = request.header("authorization", format!("Bearer {key}"));
        }
        let response = app
            .oneshot(request.body(Body::empty()).expect("request"))
            .await
            .expect("answer");
        response.status().as_u16()
    }

    #[tokio::test]
    async fn metrics_need_a_key_wherever_the_api_listens() {
        let (store, key, dir) = store_with_key(postern_protocol::api::ApiKeyScope::Call);
        let app_on = |listen: &str| {
            let config = RelayConfig {
                api_listen: listen.parse().expect("addr"),
                ..RelayConfig::default()
            };
            router(Arc::new(RelayContext::new(
                config,
                store.clone(),
                CancellationToken::new(),
            )))
        };
        for listen in ["127.0.0.1:8080", "[::1]:8080", "0.0.0.0:8080"] {
            assert_eq!(status(app_on(listen), None).await, 401, "{listen}");
            assert_eq!(
                status(app_on(listen), Some(key.expose())).await,
                200,
                "{listen}"
            );
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    /// The management API's own refusals say what to send instead: the body limit, the
    /// methods a route takes, the `Authorization` scheme.
    #[tokio::test]
    async fn management_refusals_say_what_to_fix() {
        let (store, key, dir) = store_with_key(postern_protocol::api::ApiKeyScope::Admin);
        let app = router(Arc::new(RelayContext::new(
            RelayConfig::default(),
            store,
            CancellationToken::new(),
        )));
        let ask = |method: &str, authorization: String, body: Vec<u8>| {
            let request = Request::builder()
                .method(method)
                .uri("/v1/agents")
                .header("authorization", authorization)
                .header("content-type", "application/json")
                .body(Body::from(body))
                .expect("request");
            let app = app.clone();
            async move {
                let response = app.oneshot(request).await.expect("answer");
                let status = response.status().as_u16();
                let body = axum::body::to_bytes(response.into_body(), 1 << 16)
                    .await
                    .expect("body");
                let json: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
                (
                    status,
                    json["error"]["message"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                )
            }
        };
        let bearer = format!("Bearer {}", key.expose());
        let (status, message) = ask("POST", bearer.clone(), vec![b' '; 3 << 20]).await;
        assert_eq!(status, 413);
        assert_eq!(
            message,
            "the request body is larger than the 2 MiB the management API takes"
        );
        let (status, message) = ask("PUT", bearer, Vec::new()).await;
        assert_eq!(status, 405);
        assert_eq!(
            message,
            "PUT is not allowed on this route; it takes GET, HEAD, POST"
        );
        let (status, message) = ask("GET", "Basic YWRtaW46eA==".into(), Vec::new()).await;
        assert_eq!(status, 401);
        assert!(
            message.starts_with("the Authorization scheme must be Bearer"),
            "{message}"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A key sent but not taken (malformed, unknown) is an `invalid_token` in the 401's
    /// challenge; no key, or another scheme, is a bare challenge (RFC 6750 §3.1).
    #[tokio::test]
    async fn a_401_says_how_to_authenticate() {
        let (store, _, dir) = store_with_key(postern_protocol::api::ApiKeyScope::Admin);
        let app = router(Arc::new(RelayContext::new(
            RelayConfig::default(),
            store,
            CancellationToken::new(),
        )));
        let unknown = crate::secrets::new_token(SecretKind::ApiKey);
        let unknown = format!("Bearer {}", unknown.expose());
        let bare = r#"Bearer realm="postern""#;
        let invalid = r#"Bearer realm="postern", error="invalid_token""#;
        for (path, authorization, expected) in [
            ("/v1/agents", None, bare),
            ("/metrics", None, bare),
            ("/v1/no-such-route", None, bare),
            ("/v1/agents", Some("Basic YWRtaW46eA=="), bare),
            ("/v1/agents", Some("Bearer psk_nope"), invalid),
            ("/v1/agents", Some(unknown.as_str()), invalid),
            ("/metrics", Some(unknown.as_str()), invalid),
        ] {
            let mut request = Request::builder().uri(path);
            if let Some(value) = authorization {
                request = request.header("authorization", value);
            }
            let response = app
                .clone()
                .oneshot(request.body(Body::empty()).expect("request"))
                .await
                .expect("answer");
            assert_eq!(response.status(), 401, "{path} {authorization:?}");
            let challenge = response.headers().get(http::header::WWW_AUTHENTICATE);
            assert_eq!(
                challenge.and_then(|v| v.to_str().ok()),
                Some(expected),
                "{path} {authorization:?}"
            );
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn everything_under_v1_but_the_document_needs_a_key_routed_or_not() {
        let (store, key, dir) = store_with_key(postern_protocol::api::ApiKeyScope::Admin);
        let app = router(Arc::new(RelayContext::new(
            RelayConfig::default(),
            store,
            CancellationToken::new(),
        )));
        let ask = |method, path, key| status_of(app.clone(), method, path, key);
        let with_key = || Some(key.expose());
        assert_eq!(ask("GET", "/v1/openapi.json", None).await, 200);
        assert_eq!(ask("GET", "/healthz", None).await, 200);
        assert_eq!(ask("GET", "/v1/agents", None).await, 401);
        assert_eq!(ask("GET", "/v1/agents", with_key()).await, 200);
        // Routes or not, methods or not: no key, no answer beyond 401.
        assert_eq!(ask("GET", "/v1/no-such-route", None).await, 401);
        assert_eq!(ask("GET", "/v1/no-such-route", with_key()).await, 404);
        assert_eq!(ask("PUT", "/v1/agents", None).await, 401);
        assert_eq!(ask("PUT", "/v1/agents", with_key()).await, 405);
        assert_eq!(
            ask("GET", "/v1/agents/x/connections/c/http/y", None).await,
            401
        );
        assert_eq!(ask("GET", "/v2/anything", None).await, 404);
        let _ = std::fs::remove_dir_all(dir);
    }
}
