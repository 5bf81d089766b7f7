//! Keeps every SSH channel drained: a task reads each channel into a bounded buffer
//! at once, so one stalled reader can never freeze the session (russh head-of-line blocking).
//!
//! russh delivers a session's data through one loop that waits whenever a channel's
//! queue is full, and it grants window on arrival, not on read. A consumer that stops
//! reading would stall every channel and the keepalives. Here the pump always reads;
//! a consumer more than `limit` bytes behind gets an error and its channel is closed.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use russh::{Channel, ChannelId, ChannelMsg};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, DropGuard};

/// Unread bytes a channel may hold before it counts as stalled: 16 MiB, the SSH window.
pub const DEFAULT_LIMIT: usize = 16 * 1024 * 1024;

/// Slices shorter than this are joined before they are written: one SSH packet's worth.
const JOIN_BELOW: usize = 32 * 1024;

/// An SSH channel as a byte stream whose reading side never blocks the session.
pub struct PumpedStream {
    incoming: mpsc::UnboundedReceiver<io::Result<Bytes>>,
    current: Bytes,
    buffered: Arc<AtomicUsize>,
    writer: Pin<Box<dyn AsyncWrite + Send + Sync>>,
    /// Dropping the stream closes the channel.
    _close: DropGuard,
}

/// Starts the pump task for `channel`; it ends when the channel or the stream does.
pub fn pump<S>(channel: Channel<S>, limit: usize) -> PumpedStream
where
    S: From<(ChannelId, ChannelMsg)> + Send + Sync + 'static,
{
    let (tx, incoming) = mpsc::unbounded_channel();
    let buffered = Arc::new(AtomicUsize::new(0));
    let writer = Box::pin(channel.make_writer());
    let close = CancellationToken::new();
    let pump_buffered = buffered.clone();
    let pump_close = close.clone();
    tokio::spawn(async move {
        let mut channel = channel;
        let mut tx = Some(tx);
        loop {
            let msg = tokio::select! {
                _ = pump_close.cancelled() => {
                    let _ = channel.close().await;
                    return;
                }
                msg = channel.wait() => msg,
            };
            match msg {
                Some(ChannelMsg::Data { data }) => {
                    let Some(sender) = &tx else { continue };
                    let now = pump_buffered.fetch_add(data.len(), Ordering::AcqRel) + data.len();
                    if now > limit {
                        let _ = sender.send(Err(io::Error::other(format!(
                            "the reader of this channel fell more than {} MiB behind; channel closed",
                            limit / (1024 * 1024)
                        ))));
                        let _ = channel.close().await;
                        return;
                    }
                    if sender.send(Ok(data)).is_err() {
                        // The stream is gone; its guard closes the channel.
                        tx = None;
                    }
                }
                // End of the peer's data: the reader sees EOF, writing stays possible.
                Some(ChannelMsg::Eof) => tx = None,
                Some(_) => {}
                None => return,
            }
        }
    });
    PumpedStream {
        incoming,
        current: Bytes::new(),
        buffered,
        writer,
        _close: close.drop_guard(),
    }
}

/// What one write sends of `bufs`: a large slice as it is (no copy), a lone small one
/// as it is, several small ones joined up to `JOIN_BELOW`, so headers and a short body
/// still travel in one SSH packet. The same `bufs` always give the same bytes, as a
/// retried write after `Pending` needs.
fn next_packet<'a>(bufs: &'a [io::IoSlice<'_>]) -> std::borrow::Cow<'a, [u8]> {
    let mut slices = bufs.iter().filter(|b| !b.is_empty()).map(|b| &**b);
    let Some(first) = slices.next() else {
        return std::borrow::Cow::Borrowed(&[]);
    };
    let mut rest = slices.peekable();
    if first.len() >= JOIN_BELOW || rest.peek().is_none() {
        return std::borrow::Cow::Borrowed(first);
    }
    let total: usize = bufs.iter().map(|b| b.len()).sum();
    let mut joined = Vec::with_capacity(total.min(JOIN_BELOW));
    joined.extend_from_slice(first);
    for slice in rest {
        let room = JOIN_BELOW - joined.len();
        if room == 0 {
            break;
        }
        joined.extend_from_slice(&slice[..slice.len().min(room)]);
    }
    std::borrow::Cow::Owned(joined)
}

impl AsyncRead for PumpedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        while self.current.is_empty() {
            match self.incoming.poll_recv(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                Poll::Ready(Some(Ok(chunk))) => self.current = chunk,
            }
        }
        let n = self.current.len().min(buf.remaining());
        buf.put_slice(&self.current[..n]);
        self.current.advance(n);
        self.buffered.fetch_sub(n, Ordering::AcqRel);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for PumpedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.writer.as_mut().poll_write(cx, buf)
    }

    /// Vectored, so hyper queues body chunks instead of copying them into its own buffer
    /// first (see `next_packet`).
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let packet = next_packet(bufs);
        if packet.is_empty() {
            return Poll::Ready(Ok(0));
        }
        self.writer.as_mut().poll_write(cx, &packet)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.writer.as_mut().poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.writer.as_mut().poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;
    use std::io::IoSlice;

    use super::{JOIN_BELOW, next_packet};

    #[test]
    fn large_and_lone_slices_go_out_uncopied() {
        let big = vec![1u8; JOIN_BELOW];
        let small = b"HTTP/1.1 200 OK\r\n\r\n".to_vec();
        let bufs = [IoSlice::new(&[]), IoSlice::new(&big), IoSlice::new(&small)];
        assert!(matches!(next_packet(&bufs), Cow::Borrowed(b) if b.len() == JOIN_BELOW));
        let lone = [IoSlice::new(&small), IoSlice::new(&[])];
        assert!(matches!(next_packet(&lone), Cow::Borrowed(b) if b == small.as_slice()));
        assert!(next_packet(&[IoSlice::new(&[])]).is_empty());
    }

    #[test]
    fn small_slices_are_joined_up_to_one_packet() {
        let head = b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\n".to_vec();
        let body = b"{ok}".to_vec();
        let bufs = [IoSlice::new(&head), IoSlice::new(&body)];
        let joined = next_packet(&bufs);
        assert_eq!(joined.as_ref(), [head.as_slice(), body.as_slice()].concat());
        // A large slice after a small one is cut where the packet is full.
        let big = vec![2u8; 3 * JOIN_BELOW];
        let bufs = [IoSlice::new(&head), IoSlice::new(&big)];
        let joined = next_packet(&bufs);
        assert_eq!(joined.len(), JOIN_BELOW);
        assert_eq!(&joined[..head.len()], head.as_slice());
        assert!(joined[head.len()..].iter().all(|&b| b == 2));
    }
}
