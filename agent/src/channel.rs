//! Serves one channel the relay opened: HTTP/1.1 keep-alive over the SSH
//! stream, one call at a time, until the relay closes it (a draining agent too: see `serve`);
//! or, for a `test:` channel, one connection test report.

mod call_state;
mod guarded_io;

use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use postern_protocol::ErrorCode;
use postern_protocol::channel_io::ChannelIo;
use postern_protocol::headers::{
    MAX_REQUEST_HEAD_BYTES, MAX_REQUEST_HEADER_LINES, REQUEST_HEADER_LINES_ADDED,
};
use russh::Channel;
use russh::client::Msg;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::call::{self, CallContext};
use crate::call_table::CallTable;
use crate::open_channels::Place;
use call_state::CallState;
use guarded_io::GuardedIo;

/// Room in a channel's buffer for a request head beyond the connection's
/// `max_header_bytes`: what the relay adds (`host`, `x-request-id`, its call timeout,
/// `transfer-encoding`: a few hundred bytes) with room to spare. 16 KiB is also the
/// relay's default `max_header_bytes`, so every head such a relay passes on reaches the
/// agent's own check (431 with a JSON body) whatever the connection's limit; a larger
/// one gets hyper's bare 431 and its channel closes.
const HEAD_MARGIN: usize = 16 * 1024;

/// How long the relay's writes may wait without its word (a relay before 2026-12-06
/// sends no `x-postern-call-timeout`): twice its default `call_timeout`.
const WRITE_LIMIT_UNSAID: Duration = Duration::from_secs(240);

/// Runs the connection's test request and writes its report as one JSON object; ends it
/// if the relay closes the channel first (its `call_timeout`, its caller gone): a test
/// waiting its turn under a long `max_wait` held its call slot on, and then sent the
/// request anyway, after the relay had answered 504. `place` is held to the end.
pub async fn serve_test(channel: Channel<Msg>, ctx: Arc<CallContext>, _place: Place) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut from_relay, mut to_relay) = tokio::io::split(ChannelIo::new(channel));
    // The relay sends nothing on a test's channel: its end is all there is to read.
    let relay_gone = async {
        let mut buf = [0u8; 256];
        while matches!(from_relay.read(&mut buf).await, Ok(n) if n > 0) {}
    };
    let report = tokio::select! {
        report = crate::connection_test::run(&ctx, crate::connection_test::Audience::Relay) => report,
        () = relay_gone => {
            warn!(connection = %ctx.connection.name, "connection test abandoned: the relay gave up on it (its call_timeout, or its caller gone)");
            return;
        }
    };
    let body = serde_json::to_vec(&report).unwrap_or_default();
    let _ = to_relay.write_all(&body).await;
    let _ = to_relay.shutdown().await;
}

/// Serves calls to the connection `name` until the relay closes the channel. Each call
/// takes the connection's settings as they are when it arrives: the relay keeps channels
/// open between calls, and a reload in between must apply to the next call on this one.
/// The head's limit is set once, from `max_header_bytes` at the channel's open.
///
/// A draining agent does not close the channel either: a request may be on its way on it,
/// and would be lost. The relay knows; told `draining`, it closes the channel once idle.
/// Only facing an older relay, which would not, does `close` end it once idle.
pub async fn serve(
    channel: Channel<Msg>,
    place: Place,
    (name, max_header_bytes): (Arc<str>, u32),
    calls: Arc<CallTable>,
    close: CancellationToken,
) {
    let state = CallState::new(WRITE_LIMIT_UNSAID);
    let io = GuardedIo::new(ChannelIo::new(channel), state.clone(), place, name.clone());
    let service = service_fn(move |request: http::Request<hyper::body::Incoming>| {
        let (ctx, name) = (calls.get(&name), name.clone());
        // Twice the relay's `call_timeout`: it grants window half a window at a time, so a
        // caller it would keep (one that takes half a window per call_timeout) never meets it.
        let relay_timeout = call::relay_call_timeout(request.headers());
        let write_limit = relay_timeout.map_or(WRITE_LIMIT_UNSAID, |t| t.saturating_mul(2));
        let request_id = call::request_id(request.headers());
        state.call_started(request_id.clone(), write_limit);
        let state = state.clone();
        async move {
            let response = match ctx {
                Some(ctx) => call::handle(ctx, request, request_id, relay_timeout).await,
                // Removed by a reload after the relay took this channel from its pool.
                None => call::error_response(
                    ErrorCode::UnknownConnection,
                    &format!("this agent no longer has a connection {name:?}"),
                ),
            };
            Ok::<_, std::convert::Infallible>(response.map(|body| state.answer(body)))
        }
    });
    // Whatever head the relay can pass on for this connection, with what it adds: past
    // hyper's default line count a caller's head the relay took got a bare 431. A head
    // is held to the connection's size: up to 1 MiB on each channel, as before 2026-12-07,
    // let a relay make every channel hold that much of a head that never ended. The
    // buffer stays as large: hyper reads a request body in pieces up to its size, and
    // uploads in pieces of a head's size were slower.
    let head_room = (max_header_bytes as usize).saturating_add(HEAD_MARGIN);
    let connection = http1::Builder::new()
        .keep_alive(true)
        .max_headers(MAX_REQUEST_HEADER_LINES + REQUEST_HEADER_LINES_ADDED)
        .max_header_size(head_room)
        .max_buf_size(MAX_REQUEST_HEAD_BYTES + 64 * 1024)
        .serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    let result = tokio::select! {
        r = connection.as_mut() => r,
        _ = close.cancelled() => {
            // Finish the call under way, then close the channel.
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = result {
        debug!(error = %e, "channel closed with an error");
    }
}
