//! `ANY /v1/agents/{agent}/connections/{connection}/http/{*path}`: forwards the
//! call over a pooled SSH channel to the agent and streams the answer back.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::response::Response;
use http::header::{AUTHORIZATION, CONNECTION};
use http::{HeaderMap, HeaderName, HeaderValue, Uri};
use postern_protocol::ErrorCode;
use postern_protocol::headers::{REQUEST_ID, is_hop_by_hop};
use tracing::{Instrument, info, info_span, warn};

use super::ApiError;
use super::agents::find;
use crate::channel_connector::ConnectError;
use crate::context::RelayContext;

pub async fn call(
    State(ctx): State<Arc<RelayContext>>,
    Path(params): Path<HashMap<String, String>>,
    request: Request,
) -> Result<Response, ApiError> {
    let request_id = request_id(request.headers());
    let agent = params.get("agent").cloned().unwrap_or_default();
    let connection = params.get("connection").cloned().unwrap_or_default();
    let span = info_span!("call", %request_id, %agent, %connection);
    let mut response = forward(ctx, agent, connection, request, &request_id)
        .instrument(span)
        .await
        .unwrap_or_else(axum::response::IntoResponse::into_response);
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    Ok(response)
}

async fn forward(
    ctx: Arc<RelayContext>,
    agent: String,
    connection: String,
    request: Request,
    request_id: &str,
) -> Result<Response, ApiError> {
    let record = find(&ctx, agent).await?;
    let live = ctx.registry.get(&record.id).ok_or_else(|| {
        ApiError::new(
            ErrorCode::AgentOffline,
            format!("agent {:?} is not connected", record.name),
        )
    })?;
    if !live.serves(&connection) {
        return Err(ApiError::new(
            ErrorCode::UnknownConnection,
            format!(
                "agent {:?} has no connection {connection:?} (it serves: {})",
                record.name,
                live.connections.join(", ")
            ),
        ));
    }
    let (parts, body) = request.into_parts();
    let uri = upstream_uri(&connection, &parts.uri)?;
    let mut headers = parts.headers;
    strip_for_hop(&mut headers);
    headers.remove(AUTHORIZATION);
    if let Ok(value) = HeaderValue::from_str(request_id) {
        headers.insert(REQUEST_ID, value);
    }
    let mut outgoing = http::Request::new(body);
    *outgoing.method_mut() = parts.method.clone();
    *outgoing.uri_mut() = uri;
    *outgoing.headers_mut() = headers;

    let started = std::time::Instant::now();
    let result = tokio::time::timeout(ctx.config.call_timeout, live.client.request(outgoing)).await;
    let upstream = match result {
        Err(_) => {
            return Err(ApiError::new(
                ErrorCode::UpstreamTimeout,
                format!(
                    "no answer from the agent within {:?}",
                    ctx.config.call_timeout
                ),
            ));
        }
        Ok(Err(e)) => return Err(classify(&ctx, &live, &connection, &e)),
        Ok(Ok(response)) => response,
    };
    info!(method = %parts.method, status = upstream.status().as_u16(), ms = started.elapsed().as_millis() as u64, "call answered");
    let (mut parts, body) = upstream.into_parts();
    strip_for_hop(&mut parts.headers);
    Ok(Response::from_parts(parts, Body::new(body)))
}

fn classify(
    ctx: &RelayContext,
    live: &crate::registry::LiveSession,
    connection: &str,
    e: &hyper_util::client::legacy::Error,
) -> ApiError {
    let still_live = ctx
        .registry
        .get(&live.agent_id)
        .is_some_and(|s| s.session_id == live.session_id);
    if !still_live {
        return ApiError::new(
            ErrorCode::AgentOffline,
            format!(
                "the tunnel to agent {:?} closed during the call",
                live.agent_name
            ),
        );
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(err) = source {
        if let Some(connect) = err.downcast_ref::<ConnectError>() {
            return match connect {
                ConnectError::Refused { .. } => {
                    ApiError::new(ErrorCode::UnknownConnection, connect.to_string())
                }
                _ => ApiError::new(ErrorCode::TunnelError, connect.to_string()),
            };
        }
        source = err.source();
    }
    warn!(error = %e, %connection, "call through the tunnel failed");
    ApiError::new(
        ErrorCode::TunnelError,
        format!("the call through the tunnel failed: {e}"),
    )
}

/// `http://<connection>/<rest of the path>?<query>`, keeping the caller's
/// percent-encoding exactly, so the agent judges the path as it was sent.
fn upstream_uri(connection: &str, original: &Uri) -> Result<Uri, ApiError> {
    // "", "v1", "agents", A, "connections", C, "http", rest
    let rest = original.path().splitn(8, '/').nth(7).unwrap_or("");
    let mut target = format!("http://{connection}/{rest}");
    if let Some(query) = original.query() {
        target.push('?');
        target.push_str(query);
    }
    target.parse().map_err(|_| {
        ApiError::new(
            ErrorCode::PathRejected,
            "the request path is not a valid URI",
        )
    })
}

/// Drops hop-by-hop headers and any header the `Connection` header names.
pub(crate) fn strip_for_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
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

/// The caller's request id if it is sane (1–128 visible ASCII), else a new one.
fn request_id(headers: &HeaderMap) -> String {
    headers
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_path_encoding_and_query() {
        let original: Uri = "/v1/agents/a/connections/orders/http/v2/x%2Fy?since=1&b=%20"
            .parse()
            .expect("uri");
        let uri = upstream_uri("orders", &original).expect("uri");
        assert_eq!(uri.to_string(), "http://orders/v2/x%2Fy?since=1&b=%20");
        let bare: Uri = "/v1/agents/a/connections/orders/http".parse().expect("uri");
        assert_eq!(upstream_uri("orders", &bare).expect("uri").path(), "/");
    }

    #[test]
    fn strips_hop_by_hop_and_connection_named_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("close, x-secret-hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("host", HeaderValue::from_static("relay"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        strip_for_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-keep"));
    }
}
