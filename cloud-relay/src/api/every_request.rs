//! What every API request goes through, in one layer: a request id (the caller's when
//! sane, else a new one) on the request and its answer, `max_header_bytes`, the API key
//! under `/v1/`, a time bound on all but calls, and JSON bodies on the relay's refusals.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue};
use postern_protocol::ErrorCode;
use postern_protocol::headers::REQUEST_ID;

use super::ApiError;
use crate::context::RelayContext;

/// One layer rather than one per concern: each axum `from_fn` layer clones the inner
/// service and boxes a future per request, which a small call pays for on the relay.
pub async fn every_request(
    State(ctx): State<Arc<RelayContext>>,
    mut request: Request,
    next: Next,
) -> Response {
    // Measured as the caller sent it, before the id below is added.
    let head_too_big = head_bytes(&request) > ctx.config.header_limit();
    let id = request_id(request.headers());
    let value = HeaderValue::from_str(&id).ok();
    if let Some(v) = &value {
        request.headers_mut().insert(REQUEST_ID, v.clone());
    }
    let method = request.method().clone();
    let (request, body) = watch_body(request);
    let response = if head_too_big {
        head_too_large(ctx.config.header_limit())
    } else {
        bounded_unless_call(&ctx, request, body.clone(), next).await
    };
    let mut response = super::error::json_error(&method, response).await;
    if let Some(v) = value {
        response.headers_mut().insert(REQUEST_ID, v);
    }
    // An answer given before the request's body was all read (the relay's refusals, a
    // 413 or 429 the agent decided from the head, an offline agent) leaves it unread, and
    // hyper closes the connection after it: said, so the client does not send its next
    // request into the closing connection (RFC 9112 §9.6).
    if body.as_ref().is_some_and(|b| !b.ended()) {
        response
            .headers_mut()
            .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// Bounds every request but calls (which have `call_timeout` and stream) by `api_timeout`.
async fn bounded_unless_call(
    ctx: &Arc<RelayContext>,
    request: Request,
    body: Option<Arc<BodyReading>>,
    next: Next,
) -> Response {
    // "", "v1", "agents", {agent}, "connections", …
    let is_call = request.uri().path().split('/').nth(4) == Some("connections");
    if is_call {
        return with_api_key(ctx, request, next).await;
    }
    let limit = ctx.config.api_timeout;
    let outcome = given_up_on(request.method());
    match tokio::time::timeout(limit, with_api_key(ctx, request, next)).await {
        Ok(response) => response,
        // The caller's to blame: its body was being read and had not all come.
        Err(_) if body.is_some_and(|b| b.cut_short()) => ApiError::new(
            ErrorCode::RequestTimeout,
            format!("the request body did not arrive within the relay's api_timeout ({limit:?})"),
        )
        .into_response(),
        // The relay's own slowness (a handler, the store): `internal` with a clear message.
        Err(_) => ApiError::new(
            ErrorCode::Internal,
            format!(
                "the request did not complete within the relay's api_timeout ({limit:?}); {outcome}"
            ),
        )
        .into_response(),
    }
}

/// What became of a request given up on, for its caller to know whether to send it again:
/// a create or a rotation is undone as it lands (its secret would reach no one), a revoke
/// goes on (`RelayContext::to_completion`).
fn given_up_on(method: &http::Method) -> &'static str {
    match *method {
        http::Method::DELETE => {
            "the revoke goes on and takes effect once the store takes it: check with GET before sending it again"
        }
        http::Method::POST => {
            "nothing was created or changed (a change that lands later is undone): send it again"
        }
        _ => "nothing was changed: send it again",
    }
}

/// How far a handler got with a request's body.
#[derive(Default)]
struct BodyReading {
    begun: AtomicBool,
    ended: AtomicBool,
}

impl BodyReading {
    /// Begun and not ended: a handler waits for the rest of it.
    fn cut_short(&self) -> bool {
        self.begun.load(Ordering::Relaxed) && !self.ended()
    }

    /// Read to its end (by the relay's handler, or passed on to the agent whole).
    fn ended(&self) -> bool {
        self.ended.load(Ordering::Relaxed)
    }
}

/// The request with its body noting into the returned [`BodyReading`] as it is read;
/// `None` for a request without a body (most calls: nothing to watch, nothing to pay).
fn watch_body(request: Request) -> (Request, Option<Arc<BodyReading>>) {
    if http_body::Body::is_end_stream(request.body()) {
        return (request, None);
    }
    let reading = Arc::new(BodyReading::default());
    let request = request.map(|inner| {
        axum::body::Body::new(Watched {
            inner,
            reading: reading.clone(),
        })
    });
    (request, Some(reading))
}

struct Watched {
    inner: axum::body::Body,
    reading: Arc<BodyReading>,
}

impl http_body::Body for Watched {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        this.reading.begun.store(true, Ordering::Relaxed);
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        // A body that failed is over too: what the handler does next is its own time.
        let ended = match &polled {
            Poll::Ready(None | Some(Err(_))) => true,
            Poll::Ready(Some(Ok(_))) => this.inner.is_end_stream(),
            Poll::Pending => false,
        };
        if ended {
            this.reading.ended.store(true, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The request head's size as sent.
fn head_bytes(request: &Request) -> usize {
    let target = request.uri().path_and_query().map_or("/", |pq| pq.as_str());
    postern_protocol::headers::head_bytes(request.method(), target, request.headers())
}

/// 431, as the HTTP server would answer, with the contract's body.
fn head_too_large(limit: usize) -> Response {
    let mut response = ApiError::new(
        ErrorCode::PayloadTooLarge,
        format!("the request head is larger than the relay's max_header_bytes ({limit} bytes)"),
    )
    .into_response();
    *response.status_mut() = http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE;
    response
}

/// Everything under `/v1/` but the OpenAPI document needs an API key, routed or not: a
/// path that names no route is refused like any other without a key, so the key check
/// cannot be missed by a route added later, and no one learns the routes without a key.
fn needs_api_key(path: &str) -> bool {
    path.starts_with("/v1/") && path != "/v1/openapi.json"
}

/// Runs the request once its API key (if it needs one) checks out, with the caller
/// ([`super::auth::ApiCaller`]) in its extensions for the handlers.
async fn with_api_key(ctx: &Arc<RelayContext>, mut request: Request, next: Next) -> Response {
    if needs_api_key(request.uri().path()) {
        match super::auth::check_api_key(ctx, request.headers(), request.extensions()).await {
            Ok(caller) => {
                request.extensions_mut().insert(caller);
            }
            Err(refused) => return refused.into_response(),
        }
    }
    next.run(request).await
}

/// The caller's request id if it is sane (1–128 visible ASCII), else a new one.
pub fn request_id(headers: &HeaderMap) -> String {
    headers
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
        .unwrap_or_else(|| {
            // A v4 UUID from the thread's CSPRNG: `Uuid::new_v4` costs a getrandom syscall per call.
            uuid::Builder::from_random_bytes(rand::random())
                .into_uuid()
                .to_string()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_a_sane_id_and_replaces_others() {
        let mut h = HeaderMap::new();
        h.insert(REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&h), "abc-123");
        h.insert(REQUEST_ID, HeaderValue::from_static("has space"));
        assert_ne!(request_id(&h), "has space");
        let long = "x".repeat(129);
        h.insert(REQUEST_ID, HeaderValue::from_str(&long).expect("header"));
        let fresh = request_id(&h);
        let parsed = uuid::Uuid::parse_str(&fresh).expect("a UUID");
        assert_eq!(parsed.get_version_num(), 4, "{fresh}");
        assert_eq!(parsed.get_variant(), uuid::Variant::RFC4122, "{fresh}");
        assert_ne!(request_id(&h), fresh);
    }

    /// A router of two slow routes, a management one and a call, behind the layer, and
    /// where its store lives. Requests to it carry the store's one API key.
    fn slow_routes(api_timeout: std::time::Duration) -> (Routes, std::path::PathBuf) {
        let (store, key, dir) =
            crate::api::tests::store_with_key(postern_protocol::api::ApiKeyScope::Call);
        let config = crate::config::RelayConfig {
            api_timeout,
            ..Default::default()
        };
        let ctx = Arc::new(RelayContext::new(
            config,
            store,
            tokio_util::sync::CancellationToken::new(),
        ));
        let slow = || async {
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            "done"
        };
        let app = axum::Router::new()
            .route("/v1/agents", axum::routing::get(slow))
            .route(
                "/v1/agents/a/connections/c/http/x",
                axum::routing::get(slow),
            )
            .layer(axum::middleware::from_fn_with_state(ctx, every_request));
        let key = format!("Bearer {}", key.expose());
        (Routes { app, key }, dir)
    }

    struct Routes {
        app: axum::Router,
        key: String,
    }

    async fn send(routes: &Routes, method: &str, path: &str, id: Option<&str>) -> Response {
        send_with(routes, method, path, id, None).await
    }

    /// As `send`, with one more header (name, value) if given.
    async fn send_with(
        routes: &Routes,
        method: &str,
        path: &str,
        id: Option<&str>,
        extra: Option<(&str, String)>,
    ) -> Response {
        use tower::ServiceExt;
        let mut request = http::Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::AUTHORIZATION, &routes.key);
        if let Some(id) = id {
            request = request.header(REQUEST_ID, id);
        }
        if let Some((name, value)) = extra {
            request = request.header(name, value);
        }
        routes
            .app
            .clone()
            .oneshot(request.body(axum::body::Body::empty()).expect("request"))
            .await
            .expect("answer")
    }

    async fn json(response: Response) -> serde_json::Value {
        let body = axum::body::to_bytes(response.into_body(), 4096)
            .await
            .expect("body");
        serde_json::from_slice(&body).expect("a JSON body")
    }

    #[tokio::test]
    async fn management_requests_are_bounded_and_calls_are_not() {
        let (app, dir) = slow_routes(std::time::Duration::from_millis(50));
        let slow = send(&app, "GET", "/v1/agents", Some("mgmt-1")).await;
        assert_eq!(slow.status(), 500);
        assert_eq!(slow.headers()[REQUEST_ID], "mgmt-1");
        let body = json(slow).await;
        assert_eq!(body["error"]["code"], "internal", "{body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("api_timeout"), "{message}");
        let call = send(&app, "GET", "/v1/agents/a/connections/c/http/x", None).await;
        assert_eq!(call.status(), 200, "a call outlives api_timeout");
        let id = call.headers()[REQUEST_ID]
            .to_str()
            .expect("ascii")
            .to_owned();
        assert!(uuid::Uuid::parse_str(&id).is_ok(), "a fresh id: {id}");
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A management route that reads its body and then takes 300 ms, behind the layer
    /// with a 100 ms `api_timeout`, sent a body of one piece and then (unless `ends`) nothing.
    async fn body_then_slow(ends: bool) -> Response {
        use futures_util::StreamExt;
        use tower::ServiceExt;
        let (store, key, dir) =
            crate::api::tests::store_with_key(postern_protocol::api::ApiKeyScope::Admin);
        let config = crate::config::RelayConfig {
            api_timeout: std::time::Duration::from_millis(100),
            ..Default::default()
        };
        let ctx = Arc::new(RelayContext::new(
            config,
            store,
            tokio_util::sync::CancellationToken::new(),
        ));
        let app = axum::Router::new()
            .route(
                "/v1/apikeys",
                axum::routing::post(|body: axum::body::Bytes| async move {
                    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                    body.len().to_string()
                }),
            )
            .layer(axum::middleware::from_fn_with_state(ctx, every_request));
        let piece = futures_util::stream::once(async {
            Ok::<_, std::io::Error>(axum::body::Bytes::from_static(b"{\"na"))
        });
        let body = if ends {
            axum::body::Body::from_stream(piece)
        } else {
            axum::body::Body::from_stream(piece.chain(futures_util::stream::pending()))
        };
        let request = http::Request::post("/v1/apikeys")
            .header(
                http::header::AUTHORIZATION,
                format!("Bearer {}", key.expose()),
            )
            .body(body)
            .expect("request");
        let response = app.oneshot(request).await.expect("answer");
        let _ = std::fs::remove_dir_all(dir);
        response
    }

    #[tokio::test]
    async fn a_body_still_arriving_at_api_timeout_is_408_and_a_slow_handler_500() {
        let stalled = body_then_slow(false).await;
        assert_eq!(stalled.status(), 408);
        assert_eq!(json(stalled).await["error"]["code"], "request_timeout");
        let slow = body_then_slow(true).await;
        assert_eq!(slow.status(), 500);
        assert_eq!(json(slow).await["error"]["code"], "internal");
    }

    #[tokio::test]
    async fn the_routers_own_refusals_get_the_json_body_and_the_id() {
        let (app, dir) = slow_routes(std::time::Duration::from_secs(5));
        let refused = send(&app, "DELETE", "/v1/agents", Some("del-7")).await;
        assert_eq!(refused.status(), 405);
        assert_eq!(refused.headers()[REQUEST_ID], "del-7");
        assert!(refused.headers().contains_key(http::header::ALLOW));
        assert_eq!(json(refused).await["error"]["code"], "method_not_allowed");
        let missing = send(&app, "GET", "/nowhere", Some("bad id")).await;
        assert_eq!(missing.status(), 404);
        assert_ne!(missing.headers()[REQUEST_ID], "bad id");
        assert_eq!(json(missing).await["error"]["code"], "not_found");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn a_head_over_max_header_bytes_gets_431_with_the_json_body() {
        let (routes, dir) = slow_routes(std::time::Duration::from_secs(5));
        let limit = crate::config::RelayConfig::default().header_limit();
        let big = |size: usize| Some(("x-big", "x".repeat(size)));
        let over = send_with(&routes, "GET", "/v1/agents", Some("big-1"), big(limit)).await;
        assert_eq!(over.status(), 431);
        assert_eq!(over.headers()[REQUEST_ID], "big-1");
        let body = json(over).await;
        assert_eq!(body["error"]["code"], "payload_too_large", "{body}");
        let under = send_with(&routes, "GET", "/v1/agents", None, big(limit - 512)).await;
        assert_eq!(under.status(), 200);
        let _ = std::fs::remove_dir_all(dir);
    }
}
