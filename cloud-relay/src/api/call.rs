//! `ANY /v1/agents/{agent}/connections/{connection}/http/{*path}`: forwards the
//! call over a pooled SSH channel to the agent and streams the answer back.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use http::header::{AUTHORIZATION, TRANSFER_ENCODING};
use http::{HeaderValue, Uri};
use postern_protocol::headers::{BARE_CALL, CALL_TIMEOUT, POSTERN_ERROR, REQUEST_ID};
use postern_protocol::upload_progress::{Progress, Tracked, within};
use postern_protocol::{ConnectionName, ErrorCode};
use tracing::{Instrument, info, info_span, warn};

use super::ApiError;
use super::agents::find;
use crate::channel_pool::CallError;
use crate::context::RelayContext;
use crate::registry::{InFlightGuard, LiveSession};
use crate::store::AgentRecord;

pub async fn call(
    State(ctx): State<Arc<RelayContext>>,
    request: Request,
) -> Result<Response, ApiError> {
    let (agent, connection) = names(request.uri());
    // `every_request` has put a sane id on every request already, and puts it on the answer.
    let request_id = super::every_request::request_id(request.headers());
    let started = std::time::Instant::now();
    let mut abandoned = Abandoned {
        ctx: ctx.clone(),
        // Not this module's target: the README's filter for busy relays, `api::call=warn`,
        // would drop the span, and with it the call's agent and request id from the
        // warnings it keeps (here and in `answer_body`).
        span: info_span!(target: "postern_relay::api", "call", %request_id, %agent, %connection),
        started,
        armed: true,
    };
    let result = forward(ctx, agent, connection, request, &request_id)
        .instrument(abandoned.span.clone())
        .await;
    abandoned.armed = false;
    let response = match result {
        Ok(response) => response,
        Err(Failure::Api(e)) => {
            abandoned.ctx.metrics.call_error("relay", e.code.as_str());
            abandoned.span.in_scope(|| {
                let (code, detail) = (e.code.as_str(), &e.message);
                if relays_own_failure(e.code) {
                    warn!(code, %detail, "call failed");
                } else {
                    info!(code, %detail, "call failed");
                }
            });
            axum::response::IntoResponse::into_response(e)
        }
        Err(Failure::CutOff) => {
            let ms = started.elapsed().as_millis() as u64;
            abandoned
                .span
                .in_scope(|| warn!(ms, "call cut off by the relay's shutdown; answered 502"));
            abandoned.ctx.metrics.call_cut_off();
            let code = ErrorCode::TunnelError;
            abandoned.ctx.metrics.call_error("relay", code.as_str());
            // Not `agent_offline`, which says the call can be sent again: the agent had
            // the request.
            return Ok(axum::response::IntoResponse::into_response(ApiError::new(
                code,
                "the relay is shutting down and cut this call off before its answer came; the agent had the request, so the internal server may have acted on it",
            )));
        }
        Err(Failure::CallerBodyBroke(detail)) => {
            abandoned.span.in_scope(|| {
                info!(
                    detail = %detail,
                    ms = started.elapsed().as_millis() as u64,
                    "the caller's request body broke off"
                )
            });
            // `abandoned`, not 4xx: a caller that hangs up mid-upload gets no status, and
            // whether hyper drops this handler first (`call abandoned by the caller`) or
            // the body's error reaches the tunnel first (here) is a race; one event, one class.
            abandoned.ctx.metrics.call_abandoned();
            // Nobody is likely to read this (the caller is gone or going), but a caller
            // that only half-closed gets told.
            return Ok(axum::response::IntoResponse::into_response(ApiError::new(
                ErrorCode::BadRequest,
                format!("the request body broke off before its end: {detail}"),
            )));
        }
    };
    abandoned
        .ctx
        .metrics
        .call_finished(response.status().as_u16(), started.elapsed());
    Ok(response)
}

/// A failure of the tunnel under a call, or the relay's own `call_timeout`: logged at warn,
/// so a busy relay's `api::call=warn` filter keeps them. Refusals (4xx, `agent_offline`,
/// `too_many_calls`) stay at info: an offline agent's many callers must not flood warn.
fn relays_own_failure(code: ErrorCode) -> bool {
    matches!(code, ErrorCode::TunnelError | ErrorCode::UpstreamTimeout)
}

/// Logs and counts a call whose caller went away before its answer's head was ready:
/// hyper then drops the handler's future, so nothing after its `await` runs.
struct Abandoned {
    ctx: Arc<RelayContext>,
    span: tracing::Span,
    started: std::time::Instant,
    armed: bool,
}

impl Drop for Abandoned {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let ms = self.started.elapsed().as_millis() as u64;
        // Not in the duration histogram: it measures the time to an answer's head,
        // which this call never had.
        if self.ctx.is_cutting_off() {
            self.span
                .in_scope(|| warn!(ms, "call cut off by the relay's shutdown"));
            self.ctx.metrics.call_cut_off();
        } else {
            self.span
                .in_scope(|| info!(ms, "call abandoned by the caller"));
            self.ctx.metrics.call_abandoned();
        }
    }
}

/// Why a call got no answer from its agent.
enum Failure {
    /// Answered by the relay with this error.
    Api(ApiError),
    /// The caller's own request body failed (it hung up mid-upload, or sent a broken
    /// chunked body): the caller's doing, not the tunnel's.
    CallerBodyBroke(String),
    /// The relay's shutdown cut it off while it waited for its answer's head.
    CutOff,
}

impl From<ApiError> for Failure {
    fn from(e: ApiError) -> Self {
        Self::Api(e)
    }
}

/// Marks an error of the caller's request body as it travels through hyper's client
/// towards the agent, so [`classify`] can tell it from a failure of the tunnel.
#[derive(Debug, thiserror::Error)]
#[error("the caller's request body failed")]
struct CallerBodyError(#[source] axum::Error);

async fn forward(
    ctx: Arc<RelayContext>,
    agent: String,
    connection: String,
    request: Request,
    request_id: &str,
) -> Result<Response, Failure> {
    let record = find(&ctx, agent).await?;
    let (live, name) = serving(&ctx, &record, &connection)?;
    let (parts, body) = request.into_parts();
    let limit = ctx.config.max_request_body;
    let declared = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large(limit).into());
    }
    // Said chunked, a body of unknown length goes on; left to hyper, a GET's or a HEAD's
    // would not (its guess: those have none), and the agent would get none.
    let chunked = hyper::body::Body::size_hint(&body).exact().is_none();
    let body = http_body_util::BodyExt::map_err(body, CallerBodyError);
    // A chunked body is cut off (and the call refused) once it passes the limit.
    let body = http_body_util::Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX));
    let uri = upstream_uri(&parts.uri)?;
    let mut headers = parts.headers;
    postern_protocol::headers::strip_hop_by_hop(&mut headers);
    if chunked {
        headers.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
    }
    headers.remove(AUTHORIZATION);
    if let Ok(value) = HeaderValue::from_str(request_id) {
        headers.insert(REQUEST_ID, value);
    }
    headers.insert(CALL_TIMEOUT, ctx.call_timeout_header.clone());
    headers.remove(BARE_CALL);
    if let Some(form) = base_form(&parts.uri) {
        headers.insert(BARE_CALL, HeaderValue::from_static(form));
    }
    let counter = ctx.clone();
    let counted = http_body_util::BodyExt::map_frame(body, move |frame| {
        if let Some(data) = frame.data_ref() {
            counter.metrics.add_bytes_in(data.len());
        }
        frame
    });
    // The channel takes the body only as fast as the agent reads it: a long upload
    // keeps moving, a stalled one (or an agent with nothing to say after it) does not.
    let progress = Progress::new();
    let body = Body::new(Tracked::new(counted, &progress));
    let mut outgoing = http::Request::new(body);
    *outgoing.method_mut() = parts.method.clone();
    *outgoing.uri_mut() = uri;
    *outgoing.headers_mut() = headers;

    let (live, name, in_flight) = call_slot(&ctx, &record, &connection, (live, name))?;
    let started = std::time::Instant::now();
    let sent = std::pin::pin!(live.channels.send(name, outgoing));
    let waited = tokio::select! {
        waited = within(sent, &progress, ctx.config.call_timeout) => waited,
        _ = ctx.cut_off_calls.cancelled() => return Err(Failure::CutOff),
    };
    let upstream = match waited {
        None => {
            return Err(ApiError::new(
                ErrorCode::UpstreamTimeout,
                format!(
                    "no answer from the agent within {:?} of the request's last progress",
                    ctx.config.call_timeout
                ),
            )
            .into());
        }
        Some(Err(e)) => return Err(classify(&ctx, &live, &connection, &e).await),
        Some(Ok(response)) => response,
    };
    let (status, ms) = (
        upstream.status().as_u16(),
        started.elapsed().as_millis() as u64,
    );
    // The agent's own refusals (it strips this header from the internal server's
    // answers) are failures to an operator, with the code the caller got.
    match upstream
        .headers()
        .get(POSTERN_ERROR)
        .and_then(|c| c.to_str().ok())
    {
        Some(code) => {
            ctx.metrics.call_error("agent", code);
            info!(method = %parts.method, status, ms, code, "call failed at the agent");
        }
        None => info!(method = %parts.method, status, ms, "call answered"),
    }
    let is_head = parts.method == http::Method::HEAD;
    let (mut parts, body) = upstream.into_parts();
    // Framed by its Transfer-Encoding, an answer's Content-Length says nothing (RFC 9112
    // §6.3), and passed on without the encoding it would make hyper cut the body there
    // under a 200. Agents before 2026-12-06 passed both on from the internal server. A
    // HEAD answer's length is the GET's, and stays.
    if !is_head && parts.headers.contains_key(http::header::TRANSFER_ENCODING) {
        parts.headers.remove(http::header::CONTENT_LENGTH);
    }
    postern_protocol::headers::strip_hop_by_hop(&mut parts.headers);
    parts.extensions.insert(super::error::FromAgent);
    // The call stays counted in flight until its body has been sent (or dropped).
    let length_unknown = is_head && !parts.headers.contains_key(http::header::CONTENT_LENGTH);
    let body = super::answer_body::AnswerBody::new(
        body,
        ctx.clone(),
        live.clone(),
        in_flight,
        length_unknown,
    );
    Ok(Response::from_parts(parts, Body::new(body)))
}

/// The live session of `record`'s agent and its connection `connection`: 503
/// `agent_offline` or 404 `unknown_connection` otherwise.
pub(super) fn serving(
    ctx: &RelayContext,
    record: &AgentRecord,
    connection: &str,
) -> Result<(Arc<LiveSession>, ConnectionName), ApiError> {
    let live = ctx.registry.get(&record.id).ok_or_else(|| {
        ApiError::new(
            ErrorCode::AgentOffline,
            format!("agent {:?} is not connected", record.name),
        )
    })?;
    if live.channels.is_draining() {
        return Err(draining(&record.name));
    }
    let Some(name) = live.serving(connection) else {
        return Err(ApiError::new(
            ErrorCode::UnknownConnection,
            match live.connections().as_slice() {
                [] => format!(
                    "agent {:?} has no connection {connection:?} (it serves none yet)",
                    record.name
                ),
                served => format!(
                    "agent {:?} has no connection {connection:?} (it serves: {})",
                    record.name,
                    served.join(", ")
                ),
            },
        ));
    };
    Ok((live, name))
}

/// A place among the agent's calls under way (429 `too_many_calls` past the limit) on
/// the session `serving` found, or on the one that took over since. A retirement or
/// revoke drains a session before it counts the session's calls, and a call counts itself
/// before it looks at the drain, so either the session waits for the call, or the call
/// sees the drain and goes to the newer session (or gets why there is none).
pub(super) fn call_slot(
    ctx: &RelayContext,
    record: &AgentRecord,
    connection: &str,
    (mut live, mut name): (Arc<LiveSession>, ConnectionName),
) -> Result<(Arc<LiveSession>, ConnectionName, InFlightGuard), ApiError> {
    // Each round needs a session drained since the one before: a few are plenty.
    for _ in 0..3 {
        let slot = live.try_call_started(ctx.config.max_calls_per_agent);
        let Some(slot) = slot else {
            return Err(ApiError::new(
                ErrorCode::TooManyCalls,
                format!(
                    "agent {:?} has {} calls under way already (max_calls_per_agent)",
                    record.name, ctx.config.max_calls_per_agent
                ),
            ));
        };
        if !live.channels.is_draining() {
            return Ok((live, name, slot));
        }
        drop(slot);
        (live, name) = serving(ctx, record, connection)?;
    }
    Err(draining(&record.name))
}

/// How long a failed call waits for its session's end to show, when its channel's end
/// may have come first.
pub(super) const SESSION_END_WAIT: std::time::Duration = std::time::Duration::from_millis(200);

async fn classify(
    ctx: &RelayContext,
    live: &crate::registry::LiveSession,
    connection: &str,
    e: &CallError,
) -> Failure {
    // Once the request may have reached the agent, the caller must not take the loss
    // for an agent that was never asked: a POST sent again could run twice.
    let sent = matches!(e, CallError::Http { sent: true, .. });
    let offline = || {
        if sent {
            return ApiError::new(
                ErrorCode::TunnelError,
                format!(
                    "the tunnel to agent {:?} closed during the call, after the request went \
                     to it: the internal server may have acted on it; check before sending it again",
                    live.agent_name
                ),
            )
            .into();
        }
        ApiError::new(
            ErrorCode::AgentOffline,
            format!(
                "the tunnel to agent {:?} closed before the call went to it: retry",
                live.agent_name
            ),
        )
        .into()
    };
    // A replaced session finishing its calls is live until it is told to go.
    let still_live = ctx
        .registry
        .sessions_of(&live.agent_id)
        .iter()
        .any(|s| s.session_id == live.session_id);
    // A session that failed a channel open is ending, though it may not be out of the
    // registry yet; the channel never opened, so nothing was sent.
    if !still_live || matches!(e, CallError::SessionClosed) {
        return offline();
    }
    if let CallError::Refused { reason, .. } = e {
        return refused(&live.agent_name, connection, reason).into();
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(err) = source {
        if err.is::<http_body_util::LengthLimitError>() {
            return too_large(ctx.config.max_request_body).into();
        }
        if let Some(broke) = err.downcast_ref::<CallerBodyError>() {
            return Failure::CallerBodyBroke(broke.0.to_string());
        }
        source = err.source();
    }
    // The session's end wakes its calls before the registry hears of it, and a replaced
    // one stays there until its calls are done: a tunnel that dropped (the agent's
    // process gone, a link cut) is the agent offline, not a broken call.
    if live.ended_within(SESSION_END_WAIT).await {
        return offline();
    }
    warn!(error = %e, %connection, "call through the tunnel failed");
    ApiError::new(
        ErrorCode::TunnelError,
        format!("the call through the tunnel failed: {e}"),
    )
    .into()
}

/// An agent's refusal of a channel: 404 when it no longer has the connection (a reload
/// since its hello); 503 when it is stopping or reconnecting and takes no new calls now,
/// or holds as many channels as it allows, which a caller may retry (a 404 would read as
/// a mistake in its configuration).
pub(super) fn refused(
    agent: &str,
    connection: &str,
    reason: &russh::ChannelOpenFailure,
) -> ApiError {
    match reason {
        russh::ChannelOpenFailure::ConnectFailed => ApiError::new(
            ErrorCode::UnknownConnection,
            format!("agent {agent:?} has no connection {connection:?}"),
        ),
        russh::ChannelOpenFailure::AdministrativelyProhibited => draining(agent),
        // Agents since 2026-12-07 cap the channels a session holds; the pool has closed
        // its idle ones to the agent (`ChannelPool`), so a retry finds room.
        russh::ChannelOpenFailure::ResourceShortage => ApiError::new(
            ErrorCode::AgentOffline,
            format!(
                "agent {agent:?} refused a new channel for connection {connection:?}: it has as many channels open as it allows (3 × its connections' max_concurrent_calls, at least 1024); nothing was sent: retry shortly"
            ),
        ),
        // Not something this agent sends: whatever it means, the call did not go through.
        other => ApiError::new(
            ErrorCode::TunnelError,
            format!("agent {agent:?} refused a channel for connection {connection:?}: {other:?}"),
        ),
    }
}

/// 503 for an agent that drains, whether it said so or refused the channel.
fn draining(agent: &str) -> ApiError {
    ApiError::new(
        ErrorCode::AgentOffline,
        format!(
            "agent {agent:?} takes no new calls now (it is stopping or reconnecting): retry shortly"
        ),
    )
}

fn too_large(limit: u64) -> ApiError {
    ApiError::new(
        ErrorCode::PayloadTooLarge,
        format!("the request body is larger than the relay's limit of {limit} bytes"),
    )
}

/// The agent and connection a call names, percent-decoded. Not axum's `Path`: it decodes
/// every capture, the rest of the path too, and refuses one that is not UTF-8 then (a
/// Latin-1 `caf%E9`), where that rest goes to the agent as sent. A name that is not
/// UTF-8 names no agent or connection, and is answered as such.
fn names(uri: &Uri) -> (String, String) {
    // "", "v1", "agents", A, "connections", C, …
    let mut segments = uri.path().split('/').skip(3).step_by(2);
    let mut decoded = || {
        let raw = segments.next().unwrap_or_default();
        percent_encoding::percent_decode_str(raw)
            .decode_utf8_lossy()
            .into_owned()
    };
    (decoded(), decoded())
}

/// For a call of the connection's base, which form the caller named: `1` for the bare
/// `.../http`, `0` for `.../http/`. Both are forwarded as `/`, but a relative `Location`
/// resolves against another directory; told even for `0`, so that the agent can tell this
/// relay from one that does not say (before 2026-12-07). `None` for any other path.
fn base_form(original: &Uri) -> Option<&'static str> {
    match under_route(original) {
        None => Some("1"),
        Some("") => Some("0"),
        Some(_) => None,
    }
}

/// The path after `.../http/`: `None` for the bare `.../http`, `""` for `.../http/`.
fn under_route(original: &Uri) -> Option<&str> {
    // "", "v1", "agents", A, "connections", C, "http", rest
    original.path().splitn(8, '/').nth(7)
}

/// `/<rest of the path>?<query>`, keeping the caller's percent-encoding exactly, so
/// the agent judges the path as it was sent.
fn upstream_uri(original: &Uri) -> Result<Uri, ApiError> {
    let rest = under_route(original).unwrap_or("");
    let mut target = format!("/{rest}");
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_decoded_and_the_rest_is_not_looked_at() {
        let original: Uri = "/v1/agents/site%2D1/connections/orders/http/caf%E9"
            .parse()
            .expect("uri");
        assert_eq!(names(&original), ("site-1".into(), "orders".into()));
        let latin1: Uri = "/v1/agents/%E9/connections/c/http".parse().expect("uri");
        assert_eq!(names(&latin1), ("\u{fffd}".into(), "c".into()));
    }

    #[test]
    fn keeps_path_encoding_and_query() {
        let original: Uri = "/v1/agents/a/connections/orders/http/v2/x%2Fy?since=1&b=%20"
            .parse()
            .expect("uri");
        let uri = upstream_uri(&original).expect("uri");
        assert_eq!(uri.to_string(), "/v2/x%2Fy?since=1&b=%20");
        let bare: Uri = "/v1/agents/a/connections/orders/http".parse().expect("uri");
        assert_eq!(upstream_uri(&bare).expect("uri").to_string(), "/");
        assert_eq!(base_form(&bare), Some("1"));
        let slash: Uri = "/v1/agents/a/connections/orders/http/?q"
            .parse()
            .expect("uri");
        assert_eq!(upstream_uri(&slash).expect("uri").to_string(), "/?q");
        assert_eq!(base_form(&slash), Some("0"));
        assert_eq!(base_form(&original), None);
    }
}
