//! An SSH channel as the byte stream hyper runs HTTP/1.1 over, on both sides: russh's
//! stream, plus vectored writes so that a small answer still travels in one SSH packet.
//!
//! A reader that stops cannot stall the session's other channels: the patched russh
//! (vendor/russh, POSTERN-PATCH.md) queues each channel's data without waiting and grants
//! SSH window only as it is read, so a slow reader slows its own sender and no other.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use russh::{Channel, ChannelId, ChannelMsg, ChannelStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Slices shorter than this are joined before they are written: one SSH packet's worth.
const JOIN_BELOW: usize = 32 * 1024;

/// An SSH channel as a byte stream; dropping it closes the channel.
pub struct ChannelIo<S: From<(ChannelId, ChannelMsg)> + Send + 'static>(ChannelStream<S>);

impl<S> ChannelIo<S>
where
    S: From<(ChannelId, ChannelMsg)> + Send + Sync + 'static,
{
    pub fn new(channel: Channel<S>) -> Self {
        Self(channel.into_stream())
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

impl<S> AsyncRead for ChannelIo<S>
where
    S: From<(ChannelId, ChannelMsg)> + Send + 'static,
{
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S> AsyncWrite for ChannelIo<S>
where
    S: From<(ChannelId, ChannelMsg)> + Send + Sync + 'static,
{
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
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
        Pin::new(&mut self.0).poll_write(cx, &packet)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
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
