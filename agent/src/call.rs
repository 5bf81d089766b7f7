//! One call: map the path under the connection's base, sign the JWT, send it
//! with reqwest and stream the internal server's answer back; errors as JSON codes.

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::TryStreamExt;
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyDataStream, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use postern_protocol::headers::{POSTERN_ERROR, REQUEST_ID, is_hop_by_hop};
use postern_protocol::{ErrorBody, ErrorCode};
use tracing::{info, warn};

use crate::config::{Auth, Connection};
use crate::upstream_url;

pub type CallBody = BoxBody<Bytes, std::io::Error>;

/// Everything a call on one connection needs; shared by all its channels.
pub struct CallContext {
    pub connection: Arc<Connection>,
    pub http: reqwest::Client,
}

impl CallContext {
    pub fn new(connection: Arc<Connection>) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .connect_timeout(connection.timeout)
            .read_timeout(connection.timeout)
            // Redirects could lead off the base URI: hand them back to the caller instead.
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()?;
        Ok(Self { connection, http })
    }
}

/// Runs one call; never fails (errors become JSON responses).
pub async fn handle(ctx: Arc<CallContext>, request: Request<Incoming>) -> Response<CallBody> {
    let started = Instant::now();
    let request_id = request
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_owned();
    let method = request.method().clone();
    let response = match run(&ctx, request).await {
        Ok(response) => response,
        Err((code, message)) => {
            warn!(%request_id, connection = %ctx.connection.name, code = code.as_str(), %message, "call failed");
            error_response(code, &message)
        }
    };
    info!(
        %request_id,
        connection = %ctx.connection.name,
        %method,
        status = response.status().as_u16(),
        ms = started.elapsed().as_millis() as u64,
        "call"
    );
    response
}

async fn run(
    ctx: &CallContext,
    request: Request<Incoming>,
) -> Result<Response<CallBody>, (ErrorCode, String)> {
    let conn = &ctx.connection;
    let path_and_query = request
        .uri()
        .path_and_query()
        .map(|pq| pq.as_str())
        .unwrap_or("/");
    let url = upstream_url::build(&conn.base_uri, path_and_query)
        .map_err(|e| (ErrorCode::PathRejected, format!("{e}: {path_and_query:?}")))?;
    let (parts, body) = request.into_parts();
    let mut headers = parts.headers;
    strip_for_hop(&mut headers);
    // Only the agent authenticates to the internal server.
    headers.remove(AUTHORIZATION);
    if let Auth::JwtBearer(signer) = &conn.auth {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let jwt = signer
            .sign(now, &|name| std::env::var(name).ok())
            .map_err(|e| (ErrorCode::SigningFailed, e.to_string()))?;
        let value = HeaderValue::from_str(&format!("Bearer {jwt}")).map_err(|_| {
            (
                ErrorCode::SigningFailed,
                "the JWT is not a valid header value".to_owned(),
            )
        })?;
        headers.insert(AUTHORIZATION, value);
    }
    let body = reqwest::Body::wrap_stream(BodyDataStream::new(body));
    let send = ctx
        .http
        .request(parts.method, url)
        .headers(headers)
        .body(body)
        .send();
    let upstream = match tokio::time::timeout(conn.timeout, send).await {
        Err(_) => return Err(timeout_error(conn)),
        Ok(Err(e)) if e.is_timeout() => return Err(timeout_error(conn)),
        Ok(Err(e)) => {
            return Err((
                ErrorCode::UpstreamUnreachable,
                format!("cannot reach {}: {}", conn.base_uri, error_chain(&e)),
            ));
        }
        Ok(Ok(r)) => r,
    };
    let mut builder = Response::builder().status(upstream.status());
    if let Some(h) = builder.headers_mut() {
        let mut upstream_headers = upstream.headers().clone();
        strip_for_hop(&mut upstream_headers);
        *h = upstream_headers;
    }
    let stream = upstream
        .bytes_stream()
        .map_ok(Frame::data)
        .map_err(|e| std::io::Error::other(error_chain(&e)));
    builder
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .map_err(|e| (ErrorCode::Internal, e.to_string()))
}

fn timeout_error(conn: &Connection) -> (ErrorCode, String) {
    (
        ErrorCode::UpstreamTimeout,
        format!("{} did not answer within {:?}", conn.base_uri, conn.timeout),
    )
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

pub fn error_response(code: ErrorCode, message: &str) -> Response<CallBody> {
    let body = ErrorBody::new(code, message).to_json();
    let mut response = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() =
        StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(POSTERN_ERROR, HeaderValue::from_static(code.as_str()));
    response
}

fn strip_for_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    let hop: Vec<HeaderName> = headers
        .keys()
        .filter(|k| is_hop_by_hop(k.as_str()))
        .cloned()
        .collect();
    for name in hop {
        headers.remove(name);
    }
}
