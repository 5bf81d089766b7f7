//! Serves one channel the relay opened: HTTP/1.1 keep-alive over the SSH
//! stream, one call at a time, until the relay closes it (a draining agent too: see `serve`);
//! or, for a `test:` channel, one connection test report.

use std::sync::Arc;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use postern_protocol::ErrorCode;
use postern_protocol::channel_io::ChannelIo;
use russh::Channel;
use russh::client::Msg;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::call::{self, CallContext};
use crate::call_table::CallTable;
use crate::open_channels::Place;

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
///
/// A draining agent does not close the channel either: a request may be on its way on it,
/// and would be lost. The relay knows; told `draining`, it closes the channel once idle.
/// Only facing an older relay, which would not, does `close` end it once idle. `place`
/// is held to the end.
pub async fn serve(
    channel: Channel<Msg>,
    _place: Place,
    name: Arc<str>,
    calls: Arc<CallTable>,
    close: CancellationToken,
) {
    let io = TokioIo::new(ChannelIo::new(channel));
    let service = service_fn(move |request| {
        let (ctx, name) = (calls.get(&name), name.clone());
        async move {
            Ok::<_, std::convert::Infallible>(match ctx {
                Some(ctx) => call::handle(ctx, request).await,
                // Removed by a reload after the relay took this channel from its pool.
                None => call::error_response(
                    ErrorCode::UnknownConnection,
                    &format!("this agent no longer has a connection {name:?}"),
                ),
            })
        }
    });
    use postern_protocol::headers::{
        MAX_REQUEST_HEAD_BYTES, MAX_REQUEST_HEADER_LINES, REQUEST_HEADER_LINES_ADDED,
    };
    // Whatever head the relay can pass on, with what it adds: past hyper's defaults (100
    // lines, 256 KiB here before) a caller's head the relay took got a bare 431.
    let connection = http1::Builder::new()
        .keep_alive(true)
        .max_headers(MAX_REQUEST_HEADER_LINES + REQUEST_HEADER_LINES_ADDED)
        .max_buf_size(MAX_REQUEST_HEAD_BYTES + 64 * 1024)
        .serve_connection(io, service);
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
