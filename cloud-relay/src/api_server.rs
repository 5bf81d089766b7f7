//! Serves the API router over HTTP/1.1 with hyper directly (not `axum::serve`),
//! for the settings axum does not expose: read buffer size and header read timeout.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use tracing::{debug, warn};

use crate::config::RelayConfig;
use crate::lingering_close::LingeringClose;
use crate::server::{AcceptErrors, accept_next};
use crate::tls::TlsReloader;

async fn serve_one<I, S>(
    builder: http1::Builder,
    io: I,
    service: S,
    stop: CancellationToken,
    peer: std::net::SocketAddr,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming> + Send,
    S::Future: Send,
    S::ResBody: Send + 'static,
    <S::ResBody as hyper::body::Body>::Data: Send,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let connection = builder.serve_connection(io, service);
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(e) = result {
                debug!(%peer, error = %e, "api connection ended");
            }
        }
        _ = stop.cancelled() => {
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
    }
}

/// hyper's read buffer, which also caps each piece of a request body it reads: with
/// the 16 KiB of `max_header_bytes` as the cap, an upload crossed the tunnel in 16 KiB
/// SSH packets instead of 32 KiB ones (uploads ~14% slower, BENCHMARKS.md item 27). The header limit is enforced by
/// `every_request` instead, with hyper's own refusal past this size as a backstop.
const READ_BUFFER_BYTES: usize = 64 * 1024;

/// Open API connections at most; past it a new connection is closed at once. Each holds
/// a file descriptor and a task; a platform needs far fewer (its calls share kept-alive
/// connections), and a flood of idle ones must not exhaust the relay's descriptors.
pub const MAX_API_CONNECTIONS: usize = 4096;

/// Accepts until `shutdown`, then asks every connection to finish its request
/// and waits for them (the caller bounds the wait; dropping this future ends the
/// connections still open).
pub async fn serve(
    listener: TcpListener,
    app: impl crate::api::Api,
    config: &RelayConfig,
    tls: Option<Arc<TlsReloader>>,
    shutdown: CancellationToken,
) {
    // A JoinSet, not a detached tracker: connections belong to this future and end with it.
    let mut connections = JoinSet::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .max_buf_size(config.header_limit().max(READ_BUFFER_BYTES))
        .keep_alive(true);
    let mut errors = AcceptErrors::default();
    // Logged once per run of refusals.
    let mut refusing = false;
    while let Some((stream, peer)) =
        accept_next("api", &mut errors, &shutdown, || listener.accept()).await
    {
        while connections.try_join_next().is_some() {}
        if connections.len() >= MAX_API_CONNECTIONS {
            if !refusing {
                refusing = true;
                warn!(
                    limit = MAX_API_CONNECTIONS,
                    "too many open API connections; closing new ones until some end"
                );
            }
            drop(stream);
            continue;
        }
        refusing = false;
        let _ = stream.set_nodelay(true);
        // A caller that takes none of an answer for `call_timeout` is gone in all but
        // name: without this it would hold its call, and a window of answer (16 MiB) on
        // the relay, until it disconnected. Writes only: reads are bounded by hyper's
        // `header_read_timeout`, which also ends a kept-alive connection idle that long.
        let mut stream = tokio_io_timeout::TimeoutStream::new(stream);
        stream.set_write_timeout(Some(config.call_timeout));
        let stream = LingeringClose::new(Box::pin(stream));
        let app = app.clone();
        let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            let app = app.clone();
            let mut request = request.map(Body::new);
            // Who sent a refused API key is logged (`auth`).
            request.extensions_mut().insert(ConnectInfo(peer));
            async move {
                let response = app.oneshot(request).await;
                Ok::<_, Infallible>(match response {
                    Ok(r) => r,
                    Err(never) => match never {},
                })
            }
        });
        let builder = builder.clone();
        let stop = shutdown.clone();
        let handshake_limit = config.header_read_timeout;
        let tls = tls.as_ref().map(|t| t.acceptor());
        connections.spawn(async move {
            match tls {
                None => serve_one(builder, TokioIo::new(stream), service, stop, peer).await,
                Some(acceptor) => {
                    // The handshake counts against the same clock as a slow request head.
                    match tokio::time::timeout(handshake_limit, acceptor.accept(stream)).await {
                        Ok(Ok(tls_stream)) => {
                            serve_one(builder, TokioIo::new(tls_stream), service, stop, peer).await
                        }
                        Ok(Err(e)) => debug!(%peer, error = %e, "tls handshake failed"),
                        Err(_) => debug!(%peer, "tls handshake too slow"),
                    }
                }
            }
        });
    }
    // New connections are refused from here on, not left waiting in the backlog.
    drop(listener);
    while connections.join_next().await.is_some() {}
}
