//! HTTP/1.1 connections that are SSH channels: hyper-util's pooled client dials
//! by opening a `forwarded-tcpip` channel whose target names the agent's connection.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use postern_protocol::channel_io::ChannelIo;
use postern_protocol::version::FORWARD_ADDRESS;
use postern_protocol::{ChannelTarget, ConnectionName};

/// Why a channel to the agent could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("request URI names no connection")]
    NoConnection,
    #[error("invalid connection name: {0}")]
    BadName(#[from] postern_protocol::target::TargetError),
    #[error("the agent refused a channel for connection {connection:?}: {reason}")]
    Refused { connection: String, reason: String },
    #[error("the tunnel to the agent is closed")]
    SessionClosed,
}

/// Opens a channel per new pooled connection; the URI's host is the connection name.
#[derive(Clone)]
pub struct ChannelConnector {
    handle: russh::server::Handle,
}

impl ChannelConnector {
    pub fn new(handle: russh::server::Handle) -> Self {
        Self { handle }
    }
}

impl tower::Service<Uri> for ChannelConnector {
    type Response = HyperChannel;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<HyperChannel, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let handle = self.handle.clone();
        Box::pin(async move {
            let host = uri.host().ok_or(ConnectError::NoConnection)?;
            let target = ChannelTarget::Http(ConnectionName::parse(host)?);
            let channel = handle
                .channel_open_forwarded_tcpip(target.to_string(), 0, FORWARD_ADDRESS, 0)
                .await
                .map_err(|e| match e {
                    russh::Error::ChannelOpenFailure(reason) => ConnectError::Refused {
                        connection: host.to_owned(),
                        reason: format!("{reason:?}"),
                    },
                    _ => ConnectError::SessionClosed,
                })?;
            Ok(HyperChannel(TokioIo::new(ChannelIo::new(channel))))
        })
    }
}

/// An SSH channel as a hyper connection.
pub struct HyperChannel(TokioIo<ChannelIo<russh::server::Msg>>);

impl Connection for HyperChannel {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl hyper::rt::Read for HyperChannel {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for HyperChannel {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        hyper::rt::Write::is_write_vectored(&self.0)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
