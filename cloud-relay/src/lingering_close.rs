//! How the API closes a connection: it stops writing, then reads and drops what the
//! client is still sending for a moment, so the close does not reset the answer away.
//!
//! A socket closed with unread bytes sends a reset, and the client's kernel may drop
//! the answer it had not read yet: a caller uploading past a limit got "connection
//! closed" instead of the relay's 413. nginx calls this a lingering close.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// Longest a close waits for the client to stop sending.
const LINGER: Duration = Duration::from_secs(2);
/// Most bytes read and dropped on the way.
const LINGER_BYTES: usize = 64 * 1024 * 1024;

pub struct LingeringClose<S> {
    inner: S,
    drain: Option<Drain>,
}

struct Drain {
    until: Pin<Box<Sleep>>,
    left: usize,
}

impl<S> LingeringClose<S> {
    pub fn new(inner: S) -> Self {
        Self { inner, drain: None }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for LingeringClose<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for LingeringClose<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let drain = match &mut this.drain {
            Some(drain) => drain,
            None => {
                ready!(Pin::new(&mut this.inner).poll_shutdown(cx))?;
                this.drain.insert(Drain {
                    until: Box::pin(tokio::time::sleep(LINGER)),
                    left: LINGER_BYTES,
                })
            }
        };
        let mut scratch = [0u8; 8192];
        loop {
            if drain.until.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Ok(()));
            }
            let mut buf = ReadBuf::new(&mut scratch);
            match Pin::new(&mut this.inner).poll_read(cx, &mut buf) {
                Poll::Pending => return Poll::Pending,
                // The client's end, or its error: nothing left to reset.
                Poll::Ready(Err(_)) => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(())) if buf.filled().is_empty() => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(())) => {
                    drain.left = drain.left.saturating_sub(buf.filled().len());
                    if drain.left == 0 {
                        return Poll::Ready(Ok(()));
                    }
                }
            }
        }
    }
}
