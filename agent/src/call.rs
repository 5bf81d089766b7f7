//! One call: map the path under the connection's base, apply the rate limit, add the
//! bearer token, send it with reqwest (once more on a stale token's 401), stream the answer.

pub mod client_tls;
mod idle_timeout;
mod location;
pub(crate) mod pause_asked;
pub mod rate_limit;
mod replay;
mod request_limits;
mod send_again;
pub(crate) use send_again::send_with_retries;
pub mod slots;
pub(crate) mod system_roots_warning;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::TryStreamExt;
use http::header::{ALLOW, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use postern_protocol::headers::{
    ANSWER_HEADER_LINES_ADDED, MAX_ANSWER_HEADER_LINES, POSTERN_ERROR, REQUEST_ID, header_bytes,
};
use postern_protocol::{ErrorBody, ErrorCode};
use tracing::{info, warn};

use crate::config::{Auth, Connection};
use crate::jwt::{Bearer, BearerError, BearerSource};
use crate::metrics::AgentMetrics;
use crate::upstream_url;
use client_tls::ClientError;
use rate_limit::Limiter;
pub(crate) use replay::RequestBody;
use slots::{CallSlots, Slot};
use url::Url;

pub type CallBody = BoxBody<Bytes, std::io::Error>;

/// Everything a call on one connection needs; shared by all its channels.
pub struct CallContext {
    pub connection: Arc<Connection>,
    pub http: reqwest::Client,
    /// The token source of a `jwt_bearer` connection; its cache lives as long as the context.
    pub bearer: Option<BearerSource>,
    pub limiter: Arc<Limiter>,
    /// Calls answered by the internal server (any status).
    pub served: Arc<AtomicU64>,
    /// Calls that ended in a postern error (unreachable, timeout, refused path…).
    pub failed: Arc<AtomicU64>,
    /// One permit per call under way, up to `max_concurrent_calls`.
    pub(crate) in_flight: Arc<CallSlots>,
    metrics: Arc<AgentMetrics>,
}

/// How long a connection to an internal server may wait idle for the next call. Servers
/// close idle connections too, Node's, Apache's and uvicorn's after 5 s: one that closes
/// as a request goes out on it fails that call (502), so the agent lets go first.
const UPSTREAM_IDLE: Duration = Duration::from_secs(4);

impl CallContext {
    /// A context of its own, for one-off use such as `postern connection test`.
    pub fn new(connection: Arc<Connection>) -> Result<Self, ClientError> {
        Self::succeeding(connection, None, &Arc::default())
    }

    /// The context for a reloaded connection. It keeps the counters of the one it replaces,
    /// the count of its calls under way, and its rate limit bucket (one that goes on from it if
    /// the limit changed), so a reload neither resets the statistics nor lets a burst, or
    /// more calls at once, past the limits or an upstream's pause.
    pub fn succeeding(
        connection: Arc<Connection>,
        previous: Option<&CallContext>,
        metrics: &Arc<AgentMetrics>,
    ) -> Result<Self, ClientError> {
        if connection.tls.insecure_skip_verify {
            warn!(connection = %connection.name, "tls.insecure_skip_verify is on: this connection accepts ANY certificate, so anyone on the path can read and change its calls");
        }
        let http = reqwest::Client::builder()
            .connect_timeout(connect_timeout(connection.timeout))
            .pool_idle_timeout(UPSTREAM_IDLE)
            // Not `read_timeout`: see call/idle_timeout.rs.
            // Redirects could lead off the base URI: hand them back to the caller instead.
            .redirect(reqwest::redirect::Policy::none())
            // reqwest reads hyper's default, MAX_ANSWER_HEADER_LINES, as the relay does; not
            // set here, as setting it (even to the default) moves each head's parse to the heap.
            .no_proxy()
            // The system roots parsed once for all clients, this connection's own beside them.
            .tls_backend_preconfigured(client_tls::client_config(&connection.tls)?)
            .build()?;
        metrics.connection_known(connection.name.as_str());
        let bearer = match &connection.auth {
            Auth::None => None,
            Auth::JwtBearer(jwt) => Some(BearerSource::succeeding(
                jwt.clone(),
                metrics.exchange_counters(connection.name.as_str()),
                previous.and_then(|p| p.bearer.as_ref()),
            )?),
        };
        let limiter = match previous {
            Some(p) if p.connection.rate_limit == connection.rate_limit => p.limiter.clone(),
            Some(p) => p.limiter.succeeded_by(connection.rate_limit),
            None => Arc::new(Limiter::new(connection.rate_limit)),
        };
        let max_calls = connection.limits.max_concurrent_calls as usize;
        let in_flight = match previous {
            Some(p) => p.in_flight.succeeded_by(max_calls),
            None => CallSlots::new(max_calls),
        };
        Ok(Self {
            http,
            bearer,
            limiter,
            served: previous.map(|p| p.served.clone()).unwrap_or_default(),
            failed: previous.map(|p| p.failed.clone()).unwrap_or_default(),
            in_flight,
            metrics: metrics.clone(),
            connection,
        })
    }
}

/// The relay's request id of a call, `-` without one, for the lines about it.
pub(crate) fn request_id(headers: &HeaderMap) -> Arc<str> {
    headers
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .into()
}

/// Runs one call; never fails (errors become JSON responses). `request_id` and
/// `relay_timeout` are the relay's words on it ([`request_id`], [`relay_call_timeout`]).
pub async fn handle(
    ctx: Arc<CallContext>,
    request: Request<Incoming>,
    request_id: Arc<str>,
    relay_timeout: Option<Duration>,
) -> Response<CallBody> {
    let started = Instant::now();
    let method = request.method().clone();
    let mut unanswered = Unanswered {
        ctx: &ctx,
        request_id: &request_id,
        method: &method,
        relay_timeout,
        started,
        armed: true,
    };
    // Held until the answer's body is done, so streaming calls count too.
    let permit = ctx.in_flight.try_take();
    let outcome = match permit {
        None => Err(too_many_calls(&ctx.connection).into()),
        Some(permit) => run(&ctx, request, relay_timeout).await.map(|response| {
            response.map(|body| hold_until_done(body, permit, ctx.clone(), request_id.clone()))
        }),
    };
    let (response, postern_error) = match outcome {
        Ok(response) => {
            ctx.served
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            (response, "none")
        }
        Err(Refusal {
            code,
            message,
            status,
            retry_after,
        }) => {
            ctx.failed
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            warn!(%request_id, connection = %ctx.connection.name, code = code.as_str(), detail = %message, "call failed");
            let mut response = error_response(code, &message);
            if let Some(status) = status {
                *response.status_mut() = status;
            }
            if let Some(seconds) = retry_after {
                response
                    .headers_mut()
                    .insert(http::header::RETRY_AFTER, seconds.into());
            }
            if code == ErrorCode::MethodNotAllowed {
                response
                    .headers_mut()
                    .insert(ALLOW, HeaderValue::from_static(RELAYED_METHODS));
            }
            (response, code.as_str())
        }
    };
    unanswered.armed = false;
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    ctx.metrics
        .call_finished(ctx.connection.name.as_str(), status, postern_error, elapsed);
    info!(
        %request_id,
        connection = %ctx.connection.name,
        %method,
        status,
        ms = elapsed.as_millis() as u64,
        "call"
    );
    response
}

/// The length every `Content-Length` value states, if they are all one number.
fn single_length(headers: &http::HeaderMap) -> Option<u64> {
    let mut lengths = headers
        .get_all(CONTENT_LENGTH)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("x").split(','))
        .map(|n| {
            let n = n.trim();
            // Digits only: `+5` and ` ` parse or pass elsewhere, and must not here.
            (!n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                .then(|| n.parse::<u64>().ok())
                .flatten()
        });
    let first = lengths.next()??;
    lengths.all(|n| n == Some(first)).then_some(first)
}

/// The status a call given up on before its answer's head is counted with (nginx's
/// "client closed request"): no status ever went back.
pub const ABANDONED: u16 = 499;

/// Armed while a call has no answer yet: dropped so, the relay gave up on it (its caller
/// hung up, its `call_timeout`, the session's end) and hyper dropped the call with its
/// channel. Such a call left no line and no count, and the slowest calls were the ones
/// missing from the duration histogram.
struct Unanswered<'a> {
    ctx: &'a CallContext,
    request_id: &'a str,
    method: &'a Method,
    /// The relay's `call_timeout`, which tells its running out from a caller gone.
    relay_timeout: Option<Duration>,
    started: Instant,
    armed: bool,
}

/// Why the relay gave up on a call, as far as the agent can tell from how long it ran.
fn gave_up_because(elapsed: Duration, relay_timeout: Option<Duration>) -> (&'static str, String) {
    let Some(timeout) = relay_timeout else {
        // A relay from before 2026-12-06 does not say its call_timeout.
        return (
            "unknown",
            "the relay gave up on it (its caller gone, its call_timeout, or the session's end)"
                .to_owned(),
        );
    };
    // The relay's clock starts a moment before the agent's: a little slack, so its
    // timeout is not taken for a caller gone.
    let slack = (timeout / 10).min(Duration::from_secs(1));
    if elapsed + slack >= timeout {
        (
            "call_timeout",
            format!(
                "the relay's call_timeout ({}) ran out first, and it answered its caller 504",
                humantime::format_duration(timeout)
            ),
        )
    } else {
        (
            "given_up",
            format!(
                "the relay gave up on it before its call_timeout ({}): its caller gone, or the session's end",
                humantime::format_duration(timeout)
            ),
        )
    }
}

impl Drop for Unanswered<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let elapsed = self.started.elapsed();
        self.ctx
            .failed
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.ctx.metrics.call_finished(
            self.ctx.connection.name.as_str(),
            ABANDONED,
            "abandoned",
            elapsed,
        );
        let (cause, why) = gave_up_because(elapsed, self.relay_timeout);
        warn!(
            request_id = %self.request_id,
            connection = %self.ctx.connection.name,
            method = %self.method,
            ms = elapsed.as_millis() as u64,
            cause,
            "call abandoned before its answer: {why}; it may have reached the internal server"
        );
    }
}

/// Holds the call's place until its answer's body is done. An answer that breaks off
/// after its head (the internal server reset, the idle timeout, `max_response_body`
/// passed without a length up front) counts as failed, not served, and as broken in the
/// metrics beside its head's status, with a line saying why: the caller sees only a body
/// cut short. An answer the relay stops taking (its caller gone, the tunnel lost) is
/// dropped, not failed: it is the relay's to count.
fn hold_until_done(
    body: CallBody,
    permit: Slot,
    ctx: Arc<CallContext>,
    request_id: Arc<str>,
) -> CallBody {
    use std::sync::atomic::Ordering::Relaxed;
    let mut counted = false;
    BodyExt::boxed(
        body.map_frame(move |frame| {
            let _held = &permit;
            frame
        })
        .map_err(move |e| {
            // hyper reads no further after an error, but one answer is one call to move.
            if std::mem::replace(&mut counted, true) {
                return e;
            }
            ctx.served.fetch_sub(1, Relaxed);
            ctx.failed.fetch_add(1, Relaxed);
            ctx.metrics.answer_broke_off(ctx.connection.name.as_str());
            warn!(%request_id, connection = %ctx.connection.name, error = %e, "call's answer broke off");
            e
        }),
    )
}

async fn run(
    ctx: &CallContext,
    request: Request<Incoming>,
    relay_timeout: Option<Duration>,
) -> Result<Response<CallBody>, Refusal> {
    let conn = &ctx.connection;
    refuse_method(request.method())?;
    let path_and_query = request
        .uri()
        .path_and_query()
        .map(|pq| pq.as_str())
        .unwrap_or("/");
    let url = upstream_url::build(&conn.base_uri, path_and_query).map_err(|e| {
        let shown = without_query(path_and_query);
        (ErrorCode::PathRejected, format!("{e}: {shown:?}"))
    })?;
    request_limits::url_fits(&url)?;
    let call_path = path_and_query
        .split_once('?')
        .map_or(path_and_query, |(path, _)| path)
        .to_owned();
    let (mut parts, body) = request.into_parts();
    // Taken off first: the relay's word, not the caller's headers.
    let wait = Wait::for_call(conn, relay_timeout, &mut parts.headers);
    let bare = parts
        .headers
        .remove(postern_protocol::headers::BARE_CALL)
        .map(|form| form.as_bytes() == b"1");
    let declared = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > conn.limits.max_request_body) {
        return Err(body_too_large(conn, "").into());
    }
    let max_headers = conn.limits.max_header_bytes as usize;
    request_limits::head_fits(&parts.method, &url, &parts.headers, max_headers)?;
    let mut headers = parts.headers;
    postern_protocol::headers::strip_before_internal_server(&mut headers);
    // Only the agent authenticates to the internal server.
    headers.remove(AUTHORIZATION);
    confine_destination(&conn.base_uri, &mut headers)?;
    ctx.limiter
        .acquire(wait.longest())
        .await
        .map_err(|refused| rate_limited(conn, refused, wait))?;
    let bearer = match &ctx.bearer {
        Some(source) => Some(source.get(conn.timeout).await.map_err(bearer_error)?),
        None => None,
    };
    let body = if send_again::may_retry_refused(bearer.as_ref()) {
        RequestBody::read_small(&headers, body, conn.timeout, conn.limits.max_request_body)
            .await
            .map_err(|e| match e {
                replay::ReadError::Stalled => (
                    ErrorCode::UpstreamTimeout,
                    format!(
                        "the request body stopped arriving for {:?} before the call was sent; nothing reached {}, so the call can be sent again",
                        conn.timeout, conn.base_uri
                    ),
                ),
                replay::ReadError::TooLarge => body_too_large(conn, ""),
                replay::ReadError::Body(e) => (
                    ErrorCode::TunnelError,
                    format!("reading the request body: {e}"),
                ),
            })?
    } else {
        RequestBody::stream(body)
    };
    let (upstream, _) =
        send_again::send_with_retries(ctx, &parts.method, &url, &headers, bearer, body).await?;
    // Only a 101 gets here (hyper's client reads past the others). No upgrade was asked
    // for (`Upgrade` never crosses), and a call has no way to carry the other protocol:
    // passed on, the caller got a 101 that upgraded nothing and then a closed connection.
    if upstream.status().is_informational() {
        return Err((
            ErrorCode::UpstreamBadAnswer,
            format!(
                "{} answered {}: the internal server switched protocols, which a call cannot carry (no upgrade was asked for); {SENT}",
                conn.base_uri,
                upstream.status()
            ),
        )
        .into());
    }
    if let Some(asked) = pause_asked::pause_asked(upstream.status(), upstream.headers()) {
        let asked_by = rate_limit::AskedBy {
            status: upstream.status().as_u16(),
            header: asked.header,
        };
        let pause = ctx.limiter.pause(asked.wait, asked_by);
        ctx.metrics.upstream_paused(conn.name.as_str());
        warn!(connection = %conn.name, status = asked_by.status, header = asked_by.header, pause_ms = pause.as_millis() as u64, "upstream asked to slow down; pausing the connection");
    }
    let mut upstream_headers = upstream.headers().clone();
    // Both at once: the body was read as chunked, and a Content-Length passed on would
    // make the agent's server cut it at that length, or break it (RFC 9112 §6.3: an
    // intermediary removes it). A HEAD answer has no body, and its length is the GET's.
    if upstream_headers.contains_key(TRANSFER_ENCODING) && parts.method != Method::HEAD {
        upstream_headers.remove(CONTENT_LENGTH);
    }
    // As one number, or not at all: hyper's client takes `5, 5` (and, on a HEAD, 204 or
    // 304, checks nothing), but the agent's server writes no head with such a value and
    // closed the channel with no answer, while the call was logged served.
    match single_length(&upstream_headers) {
        Some(length) => {
            upstream_headers.insert(CONTENT_LENGTH, HeaderValue::from(length));
        }
        None => {
            upstream_headers.remove(CONTENT_LENGTH);
        }
    }
    postern_protocol::headers::strip_hop_by_hop(&mut upstream_headers);
    location::point_back(
        &mut upstream_headers,
        location::Called {
            internal: &url,
            base: &conn.base_uri,
            path: &call_path,
            bare,
        },
    );
    // The header marks postern's own errors; an internal server must not be able to fake one.
    upstream_headers.remove(POSTERN_ERROR);
    // Measured as it will cross: a `Location` mapped back may have grown.
    if header_bytes(&upstream_headers) > max_headers {
        return Err((
            ErrorCode::AnswerTooLarge,
            format!(
                "the internal server's answer headers are larger than this connection's max_header_bytes ({max_headers} bytes); {SENT}"
            ),
        )
        .into());
    }
    // Past this the relay could not read the head, and the caller would get only a tunnel error.
    let max_lines = MAX_ANSWER_HEADER_LINES - ANSWER_HEADER_LINES_ADDED;
    if upstream_headers.len() > max_lines {
        return Err((
            ErrorCode::AnswerTooLarge,
            format!(
                "the internal server's answer has {} header lines, more than the {max_lines} that cross the tunnel; {SENT}",
                upstream_headers.len()
            ),
        )
        .into());
    }
    let mut builder = Response::builder().status(upstream.status());
    if let Some(h) = builder.headers_mut() {
        *h = upstream_headers;
    }
    let max = conn.limits.max_response_body;
    if upstream.content_length().is_some_and(|n| n > max) {
        return Err((
            ErrorCode::AnswerTooLarge,
            format!(
                "the internal server's answer is larger than this connection's max_response_body ({max} bytes); {SENT}"
            ),
        )
        .into());
    }
    let mut seen = 0u64;
    let pieces = upstream
        .bytes_stream()
        .map_err(|e| std::io::Error::other(error_chain(&e.without_url())));
    let stream =
        idle_timeout::IdleTimeout::new(Box::pin(pieces), conn.timeout).and_then(move |chunk| {
            seen += chunk.len() as u64;
            // Without a length up front the answer is cut off once it passes the limit.
            let result = if seen > max {
                Err(std::io::Error::other(format!(
                    "answer larger than max_response_body ({max} bytes)"
                )))
            } else {
                Ok(Frame::data(chunk))
            };
            std::future::ready(result)
        });
    builder
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .map_err(|e| (ErrorCode::Internal, e.to_string()).into())
}

/// WebDAV's COPY and MOVE name where to write in `Destination`, an absolute URL: from a
/// caller it could name any path of the internal server, or another server. The caller
/// gives a path under the connection instead, as for the call itself, and the agent sends
/// the URL it maps to; anything else is refused.
fn confine_destination(base: &Url, headers: &mut HeaderMap) -> Result<(), (ErrorCode, String)> {
    let name = http::HeaderName::from_static("destination");
    let Some(given) = headers.get(&name) else {
        return Ok(());
    };
    let refused = |why: String| {
        (
            ErrorCode::PathRejected,
            format!(
                "Destination: {why}; give a path under the connection, as in the call's own path (/folder/file)"
            ),
        )
    };
    let path = given
        .to_str()
        .ok()
        .filter(|d| d.starts_with('/'))
        .ok_or_else(|| refused("not a path".to_owned()))?;
    let url = upstream_url::build(base, path)
        .map_err(|e| refused(format!("{e}: {:?}", without_query(path))))?;
    let value = HeaderValue::from_str(url.as_str()).map_err(|e| refused(e.to_string()))?;
    headers.insert(name, value);
    Ok(())
}

/// Connecting gives up a tenth before the wait for the answer's head does, so a server
/// that never answers the connect (a firewall that drops) is `upstream_unreachable`, the
/// request not sent, rather than a timeout after which it may have been acted on.
fn connect_timeout(timeout: Duration) -> Duration {
    timeout - timeout / 10
}

/// A path for a message that is logged: a query may carry a secret (an `api_key=`), so
/// only that there was one is said.
fn without_query(path_and_query: &str) -> std::borrow::Cow<'_, str> {
    match path_and_query.split_once('?') {
        Some((path, _)) => format!("{path}?…").into(),
        None => path_and_query.into(),
    }
}

/// Sends the request once. The connection's timeout bounds the wait for the response
/// headers, counted from the request body's last progress (see `postern_protocol::upload_progress`).
async fn send(
    ctx: &CallContext,
    method: &Method,
    url: &Url,
    headers: &HeaderMap,
    bearer: Option<&Bearer>,
    body: RequestBody,
) -> Result<reqwest::Response, SendFailed> {
    let conn = &ctx.connection;
    let mut request = ctx
        .http
        .request(method.clone(), url.clone())
        .headers(headers.clone());
    if let Some(bearer) = bearer {
        request = request.header(AUTHORIZATION, bearer.header.clone());
    }
    let progress = postern_protocol::upload_progress::Progress::new();
    // An empty buffered body stays absent, as the caller sent it.
    let empty = matches!(&body, RequestBody::Buffered(b) if b.is_empty());
    if !empty || headers.contains_key(CONTENT_LENGTH) {
        let body = body.into_reqwest(&progress, conn.limits.max_request_body);
        // Said chunked, a body of unknown length goes out; left to hyper, a GET's or a
        // HEAD's would not (its guess: those have none), and the server would get none.
        if hyper::body::Body::size_hint(&body).exact().is_none() {
            request = request.header(TRANSFER_ENCODING, "chunked");
        }
        request = request.body(body);
    }
    let sent = std::pin::pin!(request.send());
    match postern_protocol::upload_progress::within(sent, &progress, conn.timeout).await {
        None => Err(timeout_error(conn).into()),
        // A connect that timed out sent nothing: `send_error` says `upstream_unreachable`.
        Some(Err(e)) if e.is_timeout() && !e.is_connect() => Err(timeout_error(conn).into()),
        // reqwest's error names the URL, the caller's query too (an `api_key=`, say):
        // the base is said, the rest stays out of the log.
        Some(Err(e)) => {
            let e = e.without_url();
            Err(SendFailed {
                closed_unanswered: closed_unanswered(&e),
                refusal: send_error(conn, &e),
            })
        }
        Some(Ok(r)) => Ok(r),
    }
}

/// A send that failed: what the caller is told, and whether the server closed the
/// connection before a whole answer head came.
pub(crate) struct SendFailed {
    refusal: (ErrorCode, String),
    closed_unanswered: bool,
}

impl From<(ErrorCode, String)> for SendFailed {
    fn from(refusal: (ErrorCode, String)) -> Self {
        Self {
            refusal,
            closed_unanswered: false,
        }
    }
}

impl From<SendFailed> for (ErrorCode, String) {
    fn from(failed: SendFailed) -> Self {
        failed.refusal
    }
}

/// hyper's "connection closed before message completed", or a reset, before any answer.
fn closed_unanswered(e: &reqwest::Error) -> bool {
    !e.is_connect()
        && !e.is_body()
        && causes(e).any(|c| {
            c.downcast_ref::<hyper::Error>()
                .is_some_and(hyper::Error::is_incomplete_message)
                || c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionReset)
        })
}

/// A call whose body passes the connection's `max_request_body`; `then` says what
/// became of what was sent before the limit.
fn body_too_large(conn: &Connection, then: &str) -> (ErrorCode, String) {
    (
        ErrorCode::PayloadTooLarge,
        format!(
            "the request body is larger than this connection's max_request_body ({} bytes){then}",
            conn.limits.max_request_body
        ),
    )
}

/// The `Allow` of a refused method: the standard ones a call carries (any other
/// extension method, `PROPFIND` say, crosses too).
const RELAYED_METHODS: &str = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS";

/// Said of every failure after the request went out, so no one takes it as safe to resend.
const SENT: &str = "the request was sent and may have been acted on";

/// What a failed send means for the caller. Only a request that never left is
/// `upstream_unreachable`: a caller may send that one again without running it twice.
fn send_error(conn: &Connection, e: &reqwest::Error) -> (ErrorCode, String) {
    let chain = error_chain(e);
    let hyper = || causes(e).filter_map(|c| c.downcast_ref::<hyper::Error>());
    if e.is_connect() {
        return (
            ErrorCode::UpstreamUnreachable,
            format!("cannot reach {}: {chain}", conn.base_uri),
        );
    }
    // hyper hands back a request it never started to write as canceled.
    if e.is_builder() || hyper().any(|h| h.is_canceled()) {
        return (
            ErrorCode::UpstreamUnreachable,
            format!("the request was not sent to {}: {chain}", conn.base_uri),
        );
    }
    if causes(e).any(|c| c.is::<http_body_util::LengthLimitError>()) {
        return body_too_large(
            conn,
            "; the internal server got the part before, cut off without its end",
        );
    }
    // The body reqwest read from failed: the caller's upload, through the tunnel.
    let upload_broke = causes(e)
        .skip(1)
        .filter_map(|c| c.downcast_ref::<reqwest::Error>())
        .any(|r| r.is_body());
    if upload_broke {
        return (
            ErrorCode::TunnelError,
            format!(
                "the request body broke off before it was all sent to {}: {chain}",
                conn.base_uri
            ),
        );
    }
    if hyper().any(|h| h.is_parse_too_large()) {
        return (
            ErrorCode::AnswerTooLarge,
            format!(
                "the internal server's answer head is larger than the agent reads (over {MAX_ANSWER_HEADER_LINES} header lines, or about 400 KiB); {SENT}: {chain}"
            ),
        );
    }
    (
        ErrorCode::UpstreamBadAnswer,
        format!(
            "no usable answer from {} (it closed the connection, or its answer is not HTTP); {SENT}: {chain}",
            conn.base_uri
        ),
    )
}

/// CONNECT asks for a raw tunnel, which a call's request and answer cannot carry (reqwest
/// would send it without the path). TRACE, and IIS's TRACK, have the server echo the
/// request back, this agent's `Authorization: Bearer <JWT>` included, to the caller. All
/// are refused, in any case (`trace` is an extension method to the http crate, but a
/// server may take it for TRACE), before anything is signed or sent.
pub(crate) fn refuse_method(method: &Method) -> Result<(), (ErrorCode, String)> {
    let is = |name: &str| method.as_str().eq_ignore_ascii_case(name);
    let why = if is("CONNECT") {
        "it asks for a raw tunnel, which a call cannot carry"
    } else if is("TRACE") || is("TRACK") {
        "the internal server would echo the agent's credentials back"
    } else {
        return Ok(());
    };
    Err((
        ErrorCode::MethodNotAllowed,
        format!("{method} is not relayed to internal servers: {why}"),
    ))
}

/// With a `Retry-After` while a throttling token endpoint is left alone, so that a
/// caller's client waits too.
fn bearer_error(e: BearerError) -> Refusal {
    let code = match e.cause() {
        BearerError::Exchange(_) => ErrorCode::TokenExchangeFailed,
        BearerError::Signing(_) | BearerError::BadHeader | BearerError::Held { .. } => {
            ErrorCode::SigningFailed
        }
    };
    let refusal = Refusal::from((code, e.to_string()));
    match e.retry_after() {
        Some(wait) => refusal.with_retry_after(wait),
        None => refusal,
    }
}

pub(crate) fn too_many_calls(conn: &Connection) -> (ErrorCode, String) {
    (
        ErrorCode::TooManyCalls,
        format!(
            "connection {} already has {} calls under way (max_concurrent_calls)",
            conn.name, conn.limits.max_concurrent_calls
        ),
    )
}

/// The relay's `call_timeout`, as it says it on each call.
pub(crate) fn relay_call_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    headers
        .get(postern_protocol::headers::CALL_TIMEOUT)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .map(Duration::from_millis)
}

/// How long a call may wait its turn: `max_wait`, and no longer than leaves the internal
/// server its `timeout` to answer before the relay gives up on the call (its
/// `call_timeout`, which it sends with each call). A call sent after the relay answered
/// its caller 504 would still be acted on, and the caller's retry would do it again.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Wait {
    max_wait: Duration,
    relay_call_timeout: Option<Duration>,
    upstream_timeout: Duration,
}

impl Wait {
    /// Takes the relay's header, read as `relay_call_timeout`, off `headers`: it is for
    /// the agent, not the server.
    fn for_call(
        conn: &Connection,
        relay_call_timeout: Option<Duration>,
        headers: &mut http::HeaderMap,
    ) -> Self {
        headers.remove(postern_protocol::headers::CALL_TIMEOUT);
        Self {
            relay_call_timeout,
            ..Self::configured(conn)
        }
    }

    /// Without a relay's word (one before 2026-12-06), `max_wait`.
    pub(crate) fn configured(conn: &Connection) -> Self {
        Self {
            max_wait: conn.max_wait,
            relay_call_timeout: None,
            upstream_timeout: conn.timeout,
        }
    }

    fn relay_allows(&self) -> Option<Duration> {
        self.relay_call_timeout.map(|t| {
            let left = t.saturating_sub(self.upstream_timeout);
            // A `timeout` as long as the relay's leaves no wait at all; half the relay's
            // time still keeps a queued call from going out after it gave up.
            if left.is_zero() { t / 2 } else { left }
        })
    }

    fn longest(&self) -> Duration {
        self.relay_allows()
            .map_or(self.max_wait, |allowed| allowed.min(self.max_wait))
    }
}

/// 429 `rate_limited`, with the wait in `Retry-After` (whole seconds, rounded up) so a
/// caller's client waits rather than retrying into the same refusal.
pub(crate) fn rate_limited(conn: &Connection, refused: rate_limit::Refused, wait: Wait) -> Refusal {
    let needed = refused.needed;
    let limit = match wait.relay_allows() {
        Some(allowed) if allowed < wait.max_wait => format!(
            "{:?}: max_wait is {:?}, but the relay gives up on a call after {:?} (its call_timeout) and the internal server may take this connection's timeout ({:?}) to answer (half the call_timeout when that leaves nothing)",
            allowed,
            wait.max_wait,
            wait.relay_call_timeout.unwrap_or_default(),
            wait.upstream_timeout
        ),
        // As the config writes it: Debug says "0ns" for "0s".
        _ => format!("max_wait ({})", humantime::format_duration(wait.max_wait)),
    };
    let why = if refused.paused {
        "the internal server asked for a pause (its Retry-After, or the reset of a rate-limit window it said was used up)"
    } else {
        "it is over its rate limit"
    };
    Refusal::from((
        ErrorCode::RateLimited,
        format!(
            "connection {}: {why}; the call would wait {:.1}s, longer than {limit}",
            conn.name,
            needed.as_secs_f64(),
        ),
    ))
    .with_retry_after(needed)
}

fn timeout_error(conn: &Connection) -> (ErrorCode, String) {
    (
        ErrorCode::UpstreamTimeout,
        format!(
            "{} did not answer within {:?} of the request's last progress",
            conn.base_uri, conn.timeout
        ),
    )
}

/// An error and its causes, `: `-joined; a cause that says what the one before it said is
/// left out (reqwest nests "builder error"s).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(e);
    while let Some(e) = next {
        let text = e.to_string();
        if parts.last() != Some(&text) {
            parts.push(text);
        }
        next = e.source();
    }
    parts.join(": ")
}

/// An error, then each of its sources in turn.
fn causes<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(e), |e| e.source())
}

/// Why the agent answered a call itself: the contract's code, the message, and a status
/// where HTTP has one more exact than the code's own (414 for a URL too long, 431 for a
/// head too large, as the relay answers its own with `payload_too_large`), so that a
/// code keeps one meaning while a client's generic HTTP handling still reads the status.
pub(crate) struct Refusal {
    code: ErrorCode,
    pub(crate) message: String,
    status: Option<StatusCode>,
    /// Seconds for `Retry-After`, where the agent knows when the call would go through.
    retry_after: Option<u64>,
}

impl Refusal {
    fn with_status(self, status: StatusCode) -> Self {
        Self {
            status: Some(status),
            ..self
        }
    }

    fn with_retry_after(self, wait: Duration) -> Self {
        Self {
            retry_after: Some(wait.as_secs() + u64::from(wait.subsec_nanos() > 0)),
            ..self
        }
    }
}

impl From<(ErrorCode, String)> for Refusal {
    fn from((code, message): (ErrorCode, String)) -> Self {
        Self {
            code,
            message,
            status: None,
            retry_after: None,
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_given_up_on_near_the_relays_call_timeout_is_said_to_be_its_timeout() {
        let cause = |ms: u64, timeout: Option<u64>| {
            gave_up_because(
                Duration::from_millis(ms),
                timeout.map(Duration::from_millis),
            )
            .0
        };
        assert_eq!(cause(52, Some(120_000)), "given_up");
        assert_eq!(cause(118_999, Some(120_000)), "given_up");
        // A second of slack at most, a tenth of a short timeout.
        assert_eq!(cause(119_000, Some(120_000)), "call_timeout");
        assert_eq!(cause(300_000, Some(120_000)), "call_timeout");
        assert_eq!(cause(899, Some(1_000)), "given_up");
        assert_eq!(cause(900, Some(1_000)), "call_timeout");
        assert_eq!(cause(5_000, None), "unknown");
        let (_, why) = gave_up_because(Duration::from_secs(2), Some(Duration::from_secs(1)));
        assert!(why.contains("call_timeout (1s) ran out first"), "{why}");
    }

    #[test]
    fn a_length_passes_on_only_as_one_number() {
        let with = |values: &[&str]| {
            let mut h = http::HeaderMap::new();
            for v in values {
                h.append(CONTENT_LENGTH, HeaderValue::from_str(v).expect("value"));
            }
            single_length(&h)
        };
        assert_eq!(with(&["5"]), Some(5));
        assert_eq!(with(&["5, 5"]), Some(5));
        assert_eq!(with(&["5", "5"]), Some(5));
        assert_eq!(with(&["5, 6"]), None);
        assert_eq!(with(&["abc"]), None);
        assert_eq!(with(&["+5"]), None);
        assert_eq!(with(&["5,"]), None);
        assert_eq!(with(&[]), None);
    }

    #[test]
    fn a_call_waits_no_longer_than_the_relay_leaves_it() {
        let secs = Duration::from_secs;
        let longest = |relay: Option<u64>, timeout: u64, max_wait: u64| {
            Wait {
                max_wait: secs(max_wait),
                relay_call_timeout: relay.map(secs),
                upstream_timeout: secs(timeout),
            }
            .longest()
        };
        assert_eq!(longest(None, 30, 300), secs(300), "an older relay");
        assert_eq!(longest(Some(120), 30, 300), secs(90));
        assert_eq!(longest(Some(120), 30, 5), secs(5));
        // A timeout as long as the relay's: half the relay's time, not no wait at all.
        assert_eq!(longest(Some(120), 120, 300), secs(60));
        assert_eq!(longest(Some(30), 120, 300), secs(15));
    }
}
