//! A test OAuth token endpoint (RFC 7523) and the API it guards, on 127.0.0.1:0: it checks
//! each assertion with jsonwebtoken (signature, `aud`, `iss`, `exp`) and records every exchange.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// How the endpoint states the token's lifetime.
#[derive(Clone, Copy, Debug)]
pub enum ExpiresIn {
    Number(u64),
    /// As a numeric string, as some providers do.
    Text(u64),
    /// No `expires_in` at all (Salesforce); the API still expires tokens after this long.
    Absent(u64),
}

impl ExpiresIn {
    fn seconds(self) -> u64 {
        match self {
            ExpiresIn::Number(s) | ExpiresIn::Text(s) | ExpiresIn::Absent(s) => s,
        }
    }
}

#[derive(Clone)]
pub struct EndpointConfig {
    pub key: DecodingKey,
    pub algorithm: Algorithm,
    pub audience: String,
    pub issuer: String,
    /// The `grant_type` a request must carry.
    pub grant_type: String,
    pub expires_in: ExpiresIn,
    /// Each exchange takes this long (to make concurrent callers overlap).
    pub delay: Duration,
    /// Hands back the newest token issued while it is valid and not revoked, as some
    /// providers do, instead of a new one each time.
    pub reissue: bool,
}

/// One exchange as the endpoint saw it.
#[derive(Debug, Clone)]
pub struct Exchange {
    pub content_type: String,
    pub fields: HashMap<String, String>,
    pub claims: Value,
    pub issued: Option<String>,
}

/// One call to the guarded API.
#[derive(Debug, Clone)]
pub struct ApiCall {
    pub token: Option<String>,
    pub status: u16,
    pub body: String,
}

struct Issued {
    at: Instant,
    lifetime: Duration,
    revoked: bool,
}

/// A misbehaviour of the token endpoint, for fault tests.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Answers only after this long.
    Slow(Duration),
    /// Answers 429 `{"error":"slow_down"}` with this `Retry-After`, as a throttling
    /// identity provider does.
    Throttle { retry_after: &'static str },
    /// Answers this status, content type and body instead of a token.
    Answer {
        status: u16,
        content_type: &'static str,
        body: &'static str,
    },
}

#[derive(Default)]
struct Records {
    exchanges: Vec<Exchange>,
    calls: Vec<ApiCall>,
    issued: HashMap<String, Issued>,
    fault: Option<Fault>,
    /// Exchanges answered with a [`Fault::Answer`] or [`Fault::Throttle`] (not in
    /// `exchanges`).
    faulted: usize,
}

impl Records {
    fn newest_valid(&self) -> Option<String> {
        self.issued
            .iter()
            .filter(|(_, i)| !i.revoked && i.at.elapsed() < i.lifetime)
            .max_by_key(|(_, i)| i.at)
            .map(|(token, _)| token.clone())
    }
}

#[derive(Clone)]
struct AppState {
    config: EndpointConfig,
    records: Arc<Mutex<Records>>,
}

pub struct TokenEndpoint {
    pub addr: SocketAddr,
    records: Arc<Mutex<Records>>,
    shutdown: CancellationToken,
}

impl TokenEndpoint {
    /// Starts on 127.0.0.1:0: `POST /token`, and the guarded API under `/api`.
    pub async fn start(config: EndpointConfig) -> anyhow::Result<Self> {
        Self::start_on("127.0.0.1:0".parse()?, config).await
    }

    /// Starts on `addr`: after [`Self::stop`], the same address brings it back.
    pub async fn start_on(addr: SocketAddr, config: EndpointConfig) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let records = Arc::new(Mutex::new(Records::default()));
        let state = AppState {
            config,
            records: records.clone(),
        };
        let app = Router::new()
            .route("/token", post(token))
            .fallback(api)
            .with_state(state);
        let shutdown = crate::internal_server::serve_until_cancelled(listener, app);
        Ok(Self {
            addr,
            records,
            shutdown,
        })
    }

    pub fn token_url(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    pub fn api_uri(&self) -> String {
        format!("http://{}/api", self.addr)
    }

    /// A `jwt_bearer` connection that exchanges its JWT here and calls `api_uri`;
    /// `extra_auth` / `extra_exchange` add lines to those tables.
    pub fn connection(
        &self,
        name: &str,
        algorithm: &str,
        key_file: &str,
        extra_auth: &str,
        extra_exchange: &str,
    ) -> String {
        format!(
            r#"
[connections.{name}]
base_uri = "{api}"
timeout = "5s"
[connections.{name}.auth]
type = "jwt_bearer"
algorithm = "{algorithm}"
private_key_file = "{key_file}"
payload = {{ iss = "postern-edge", sub = "svc", aud = "https://idp.test/token", jti = "{{{{uuid}}}}" }}
lifetime = "5m"
{extra_auth}
[connections.{name}.auth.exchange]
token_url = "{token_url}"
{extra_exchange}
"#,
            api = self.api_uri(),
            token_url = self.token_url(),
        )
    }

    pub fn exchanges(&self) -> Vec<Exchange> {
        self.records
            .lock()
            .map(|r| r.exchanges.clone())
            .unwrap_or_default()
    }

    /// How many exchanges a [`Fault::Answer`] or [`Fault::Throttle`] refused.
    pub fn faulted(&self) -> usize {
        self.records.lock().map(|r| r.faulted).unwrap_or_default()
    }

    pub fn calls(&self) -> Vec<ApiCall> {
        self.records
            .lock()
            .map(|r| r.calls.clone())
            .unwrap_or_default()
    }

    /// Misbehaves from now on (`None`: behaves again).
    pub fn set_fault(&self, fault: Option<Fault>) {
        if let Ok(mut r) = self.records.lock() {
            r.fault = fault;
        }
    }

    /// Stops listening: connections are refused until it starts again.
    pub async fn stop(self) {
        self.shutdown.cancel();
        // The listener closes once the server task sees the cancellation.
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && tokio::net::TcpStream::connect(self.addr).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Makes every token issued so far invalid, as a provider's key rotation would.
    pub fn revoke_all(&self) {
        if let Ok(mut r) = self.records.lock() {
            for issued in r.issued.values_mut() {
                issued.revoked = true;
            }
        }
    }
}

impl Drop for TokenEndpoint {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn oauth_error(error: &str, description: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(json!({"error": error, "error_description": description})),
    )
        .into_response()
}

async fn token(State(state): State<AppState>, request: Request) -> Response {
    let content_type = request
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body: Bytes = axum::body::to_bytes(request.into_body(), 1024 * 1024)
        .await
        .unwrap_or_default();
    let fields: HashMap<String, String> = if content_type.starts_with("application/json") {
        serde_json::from_slice::<HashMap<String, String>>(&body).unwrap_or_default()
    } else {
        // reqwest's re-exported url crate decodes forms exactly as servers do.
        reqwest::Url::parse(&format!("http://form/?{}", String::from_utf8_lossy(&body)))
            .map(|u| u.query_pairs().into_owned().collect())
            .unwrap_or_default()
    };
    tokio::time::sleep(state.config.delay).await;
    let fault = state.records.lock().ok().and_then(|r| r.fault.clone());
    match fault {
        Some(Fault::Slow(pause)) => tokio::time::sleep(pause).await,
        Some(Fault::Throttle { retry_after }) => {
            if let Ok(mut r) = state.records.lock() {
                r.faulted += 1;
            }
            return (
                StatusCode::TOO_MANY_REQUESTS,
                [("retry-after", retry_after)],
                axum::Json(json!({"error": "slow_down"})),
            )
                .into_response();
        }
        Some(Fault::Answer {
            status,
            content_type,
            body,
        }) => {
            if let Ok(mut r) = state.records.lock() {
                r.faulted += 1;
            }
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return (status, [("content-type", content_type)], body).into_response();
        }
        None => {}
    }
    let mut exchange = Exchange {
        content_type,
        fields: fields.clone(),
        claims: Value::Null,
        issued: None,
    };
    let result = check(&state.config, &fields);
    let response = match result {
        Err((error, description)) => oauth_error(error, &description),
        Ok(claims) => {
            exchange.claims = claims;
            let seconds = state.config.expires_in.seconds();
            let access_token = state
                .config
                .reissue
                .then(|| state.records.lock().ok()?.newest_valid())
                .flatten()
                .unwrap_or_else(|| format!("at-{}", uuid_like()));
            exchange.issued = Some(access_token.clone());
            if let Ok(mut r) = state.records.lock() {
                r.issued.entry(access_token.clone()).or_insert(Issued {
                    at: Instant::now(),
                    lifetime: Duration::from_secs(seconds),
                    revoked: false,
                });
            }
            let mut answer = json!({"access_token": access_token, "token_type": "bearer"});
            match state.config.expires_in {
                ExpiresIn::Number(s) => answer["expires_in"] = json!(s),
                ExpiresIn::Text(s) => answer["expires_in"] = json!(s.to_string()),
                ExpiresIn::Absent(_) => {}
            }
            axum::Json(answer).into_response()
        }
    };
    if let Ok(mut r) = state.records.lock() {
        r.exchanges.push(exchange);
    }
    response
}

/// RFC 7523 §3: the grant, then the JWT's signature, `iss`, `aud` and `exp`.
fn check(
    config: &EndpointConfig,
    fields: &HashMap<String, String>,
) -> Result<Value, (&'static str, String)> {
    let grant = fields
        .get("grant_type")
        .map(String::as_str)
        .unwrap_or_default();
    if grant != config.grant_type {
        return Err(("unsupported_grant_type", format!("grant_type {grant:?}")));
    }
    let assertion = if grant == "client_credentials" {
        if fields.get("client_assertion_type").map(String::as_str)
            != Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
        {
            return Err(("invalid_client", "bad client_assertion_type".to_owned()));
        }
        fields.get("client_assertion")
    } else {
        fields.get("assertion")
    };
    let Some(assertion) = assertion else {
        return Err(("invalid_request", "no assertion".to_owned()));
    };
    let mut validation = Validation::new(config.algorithm);
    validation.leeway = 0;
    validation.set_audience(&[config.audience.as_str()]);
    validation.set_issuer(&[config.issuer.as_str()]);
    validation.set_required_spec_claims(&["exp", "aud", "iss"]);
    jsonwebtoken::decode::<Value>(assertion, &config.key, &validation)
        .map(|data| data.claims)
        .map_err(|e| ("invalid_grant", format!("assertion rejected: {e}")))
}

async fn api(State(state): State<AppState>, request: Request) -> Response {
    // Like an API that says 401 where it means 403: no token is good enough here.
    let refuses_all = request.uri().path().ends_with("/forbidden");
    let token = request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let body: Bytes = axum::body::to_bytes(request.into_body(), 1024 * 1024)
        .await
        .unwrap_or_default();
    let body = String::from_utf8_lossy(&body).into_owned();
    let Ok(mut r) = state.records.lock() else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let valid = token
        .as_ref()
        .and_then(|t| r.issued.get(t))
        .is_some_and(|i| !i.revoked && i.at.elapsed() < i.lifetime)
        && !refuses_all;
    let status = if valid { 200 } else { 401 };
    r.calls.push(ApiCall {
        token: token.clone(),
        status,
        body: body.clone(),
    });
    if !valid {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"error": "invalid_token"})),
        )
            .into_response();
    }
    axum::Json(json!({"ok": true, "token": token, "body": body})).into_response()
}

fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{nanos:x}-{}", N.fetch_add(1, Ordering::Relaxed))
}
