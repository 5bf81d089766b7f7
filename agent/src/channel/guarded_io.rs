//! A call channel as hyper's stream, with the bounds the agent keeps on the relay itself:
//! a request head that began must come whole in time, and a write must not wait too long.
//!
//! The clock for a head starts at its first byte, never on a channel idle between calls:
//! only the relay knows whether a request is on its way on one, so the agent closes none
//! of those (README, "How the tunnel carries calls"). hyper's `header_read_timeout` would.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use postern_protocol::channel_io::ChannelIo;
use russh::client::Msg;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;
use tracing::warn;

use super::call_state::CallState;
use crate::open_channels::Place;

/// How long a request head may take from its first byte to its last. The relay has the
/// whole head before it sends any of it (it reads its caller's first, within its own
/// `header_read_timeout`), and a head is at most `max_header_bytes` (128 KiB) and what the
/// relay adds: on a link that carries it in 30 s nothing else would work either.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(30);

/// What a write must move in all, unless it takes everything it was given, to count as
/// the relay taking the answer: one SSH packet. An honest relay grants half a window,
/// 128 KiB at least, at a time; a window given a few bytes at a time does not hold a call.
const PROGRESS: usize = 32 * 1024;

pub struct GuardedIo {
    inner: ChannelIo<Msg>,
    state: Arc<CallState>,
    /// The channel's place among the session's; its log budget too.
    place: Place,
    connection: Arc<str>,
    /// The call count the stream last saw: a new call means the head it waited for came.
    seen_started: u64,
    head_deadline: Option<Pin<Box<Sleep>>>,
    /// Runs while writes wait for the relay, until enough of them move.
    write_deadline: Option<Pin<Box<Sleep>>>,
    moved: usize,
}

impl GuardedIo {
    pub fn new(
        inner: ChannelIo<Msg>,
        state: Arc<CallState>,
        place: Place,
        connection: Arc<str>,
    ) -> Self {
        Self {
            inner,
            state,
            place,
            connection,
            seen_started: 0,
            head_deadline: None,
            write_deadline: None,
            moved: 0,
        }
    }

    /// A new call since the last look: its head came whole, and its writes start afresh.
    fn note_new_call(&mut self) {
        let started = self.state.started();
        if started != self.seen_started {
            self.seen_started = started;
            self.head_deadline = None;
            self.write_deadline = None;
            self.moved = 0;
        }
    }

    fn head_timed_out(&self) -> io::Error {
        if let Some(left_out) = self.place.may_log() {
            warn!(connection = %self.connection, "the relay sent part of a request head and not the rest within {HEAD_TIMEOUT:?}; channel closed{left_out}");
        }
        io::Error::new(io::ErrorKind::TimedOut, "request head not whole in time")
    }

    /// `polled` is a write of `given` bytes.
    fn guard_write(
        &mut self,
        cx: &mut Context<'_>,
        given: usize,
        polled: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match polled {
            Poll::Ready(Ok(n)) => {
                self.moved += n;
                if n >= given || self.moved >= PROGRESS {
                    self.write_deadline = None;
                    self.moved = 0;
                }
                Poll::Ready(Ok(n))
            }
            Poll::Pending => {
                let limit = self.state.write_limit();
                let deadline = self.write_deadline.get_or_insert_with(|| {
                    self.moved = 0;
                    Box::pin(tokio::time::sleep(limit))
                });
                if deadline.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                // Once per call: the error ends the channel, and the call with it.
                warn!(
                    connection = %self.connection,
                    request_id = %self.state.request_id(),
                    waited_ms = limit.as_millis() as u64,
                    "call aborted: the relay took none of its answer for twice its call_timeout; the internal server's connection and the call's place among max_concurrent_calls are let go"
                );
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the relay took nothing of the answer in time",
                )))
            }
            failed => failed,
        }
    }
}

impl AsyncRead for GuardedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.note_new_call();
        if self.head_deadline.as_ref().is_some_and(|d| d.is_elapsed()) {
            return Poll::Ready(Err(self.head_timed_out()));
        }
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before
                    && self.head_deadline.is_none()
                    && self.state.head_may_begin()
                {
                    self.head_deadline = Some(Box::pin(tokio::time::sleep(HEAD_TIMEOUT)));
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                let expired = self
                    .head_deadline
                    .as_mut()
                    .is_some_and(|deadline| deadline.as_mut().poll(cx).is_ready());
                if expired {
                    return Poll::Ready(Err(self.head_timed_out()));
                }
                Poll::Pending
            }
            failed => failed,
        }
    }
}

impl AsyncWrite for GuardedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.note_new_call();
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.guard_write(cx, buf.len(), polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.note_new_call();
        let given = bufs.iter().map(|b| b.len()).sum();
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.guard_write(cx, given, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
