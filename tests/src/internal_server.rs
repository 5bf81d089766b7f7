//! A demo internal API on 127.0.0.1:0 that checks each request's bearer JWT
//! itself (signature, `aud`, `exp`) and records what reached it.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// How the server checks tokens.
#[derive(Clone)]
pub enum Verifier {
    /// RS256 with this PKCS#1 DER public key.
    Rs256(Vec<u8>),
    /// HS256 with this secret.
    Hs256(Vec<u8>),
    /// No check (for `auth = none` connections).
    None,
}

/// One request as the internal server saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path_and_query: String,
    pub authorization: Option<String>,
    pub headers: Vec<(String, String)>,
}

#[derive(Clone)]
struct AppState {
    verifier: Verifier,
    audience: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

pub struct InternalServer {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    shutdown: CancellationToken,
}

impl InternalServer {
    /// Starts on 127.0.0.1:0; returns once it accepts connections.
    pub async fn start(verifier: Verifier, audience: &str) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let state = AppState {
            verifier,
            audience: audience.to_owned(),
            seen: seen.clone(),
        };
        let app = Router::new().fallback(handle).with_state(state);
        let shutdown = serve_until_cancelled(listener, app);
        Ok(Self {
            addr,
            seen,
            shutdown,
        })
    }

    pub fn base_uri(&self) -> String {
        format!("http://{}/api", self.addr)
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Waits (up to 10 s) until a request whose path ends with `suffix` has come in.
    pub async fn has_seen(&self, suffix: &str) -> anyhow::Result<()> {
        crate::relay_support::eventually(
            &format!("the internal server has a request for …{suffix}"),
            Duration::from_secs(10),
            || {
                let seen = self
                    .requests()
                    .iter()
                    .any(|r| r.path_and_query.ends_with(suffix));
                async move { seen }
            },
        )
        .await
    }
}

/// Serves `app` on `listener` from a spawned task until the returned token is cancelled.
pub fn serve_until_cancelled(listener: tokio::net::TcpListener, app: Router) -> CancellationToken {
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
    });
    shutdown
}

impl Drop for InternalServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn handle(State(state): State<AppState>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let path_and_query = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let authorization = parts
        .headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let headers = parts
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    if let Ok(mut seen) = state.seen.lock() {
        seen.push(Seen {
            method: parts.method.to_string(),
            path_and_query: path_and_query.clone(),
            authorization: authorization.clone(),
            headers,
        });
    }
    let claims = match verify(&state, authorization.as_deref()) {
        Ok(claims) => claims,
        Err(detail) => {
            return (
                StatusCode::UNAUTHORIZED,
                axum::Json(json!({"error": "invalid_token", "detail": detail})),
            )
                .into_response();
        }
    };
    let body: Bytes = axum::body::to_bytes(body, 64 * 1024 * 1024)
        .await
        .unwrap_or_default();
    let path = parts.uri.path();
    if path.ends_with("/slow") {
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    // For a test that must act while calls are under way, with room for a loaded machine.
    if path.ends_with("/slower") {
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
    // Outlasts a drain for new settings (10 s), within a stop's grace (30 s).
    if path.ends_with("/slowest") {
        tokio::time::sleep(Duration::from_secs(16)).await;
    }
    if path.ends_with("/big-headers") {
        let big = "h".repeat(8 * 1024);
        return (StatusCode::OK, [("x-big", big)], "headers galore").into_response();
    }
    if let Some(size) = path
        .strip_prefix("/api/bytes/")
        .and_then(|n| n.parse::<usize>().ok())
    {
        return (StatusCode::OK, vec![b'x'; size.min(64 * 1024 * 1024)]).into_response();
    }
    if let Some(size) = path
        .strip_prefix("/api/chunked/")
        .and_then(|n| n.parse::<usize>().ok())
    {
        // No Content-Length: the answer's size shows only as it streams.
        let pieces = (0..size.div_ceil(1024)).map(move |i| {
            Ok::<_, std::io::Error>(Bytes::from(vec![b'x'; (size - i * 1024).min(1024)]))
        });
        let body = axum::body::Body::from_stream(futures_util::stream::iter(pieces));
        return (StatusCode::OK, body).into_response();
    }
    if path.ends_with("/break-off") {
        return (StatusCode::OK, breaking_body()).into_response();
    }
    if let Some(secs) = path
        .strip_prefix("/api/stall-after-head/")
        .and_then(|n| n.parse::<u64>().ok())
    {
        return (StatusCode::OK, stalling_body(Duration::from_secs(secs))).into_response();
    }
    axum::Json(json!({
        "ok": true,
        "method": parts.method.as_str(),
        "path": path,
        "query": parts.uri.query(),
        "body_len": body.len(),
        "sub": claims.get("sub"),
        "message": "hello from the internal server: your JWT checked out",
    }))
    .into_response()
}

/// 10 bytes, a pause (so the head and those bytes go out first), then a failure: the
/// server aborts the connection in the middle of its chunked answer.
fn breaking_body() -> axum::body::Body {
    let pieces = futures_util::stream::iter([0, 1]).then(|i| async move {
        if i == 0 {
            return Ok(Bytes::from_static(b"0123456789"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        Err(std::io::Error::other("the internal server breaks off"))
    });
    axum::body::Body::from_stream(pieces)
}

/// 10 bytes, then nothing for `pause`, then 10 more and the end: an answer under way
/// that a test can act on (hang up, cut the tunnel) between its head and its end.
fn stalling_body(pause: Duration) -> axum::body::Body {
    let pieces = futures_util::stream::iter([0, 1]).then(move |i| async move {
        if i == 1 {
            tokio::time::sleep(pause).await;
        }
        Ok::<_, std::io::Error>(Bytes::from_static(b"0123456789"))
    });
    axum::body::Body::from_stream(pieces)
}

fn verify(state: &AppState, authorization: Option<&str>) -> Result<serde_json::Value, String> {
    let (key, alg) = match &state.verifier {
        Verifier::None => return Ok(json!({})),
        Verifier::Rs256(der) => (DecodingKey::from_rsa_der(der), Algorithm::RS256),
        Verifier::Hs256(secret) => (DecodingKey::from_secret(secret), Algorithm::HS256),
    };
    let token = authorization
        .and_then(|a| a.strip_prefix("Bearer "))
        .ok_or("missing bearer token")?;
    let mut validation = Validation::new(alg);
    validation.set_audience(&[state.audience.as_str()]);
    validation.set_required_spec_claims(&["exp", "iat", "aud"]);
    jsonwebtoken::decode::<serde_json::Value>(token, &key, &validation)
        .map(|data| data.claims)
        .map_err(|e| e.to_string())
}
