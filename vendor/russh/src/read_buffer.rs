//! postern patch: the session loop's reads go through a small buffer, so a packet costs
//! one `recv` instead of two (length, then the rest) and several small packets share one.
//!
//! Each read lands on the stack and only what is left over goes to the heap, until it is
//! read: a session waiting for data (every idle agent on a relay) keeps no memory here. Reads at least as large as the buffer go
//! straight to the stream, so bulk data is not copied once more.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, ReadBuf};

/// How much one `recv` may fetch ahead of what the packet reader asked for.
const CAPACITY: usize = 8 * 1024;

pub(crate) struct ReadBuffer<R> {
    inner: R,
    buffer: Vec<u8>,
    position: usize,
}

impl<R> ReadBuffer<R> {
    pub(crate) fn new(inner: R) -> Self {
        Self {
            inner,
            buffer: Vec::new(),
            position: 0,
        }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for ReadBuffer<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.position == this.buffer.len() {
            if out.remaining() >= CAPACITY {
                return Pin::new(&mut this.inner).poll_read(cx, out);
            }
            // Read on the stack; only what is left over after `out` moves to the heap.
            let mut chunk = [0u8; CAPACITY];
            let mut fill = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut fill))?;
            let filled = fill.filled();
            let n = filled.len().min(out.remaining());
            out.put_slice(&filled[..n]);
            if n < filled.len() {
                this.buffer = filled[n..].to_vec();
                this.position = 0;
            }
            return Poll::Ready(Ok(()));
        }
        let available = &this.buffer[this.position..];
        let n = available.len().min(out.remaining());
        out.put_slice(&available[..n]);
        this.position += n;
        if this.position == this.buffer.len() {
            this.buffer = Vec::new();
            this.position = 0;
        }
        Poll::Ready(Ok(()))
    }
}
