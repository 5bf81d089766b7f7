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

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;

    use super::{CAPACITY, ReadBuffer};

    /// Reads of every size, small ones served from what a read fetched ahead and large
    /// ones straight from the stream, give back the stream's bytes in order, and nothing
    /// stays held once they are read.
    #[tokio::test]
    async fn reads_of_any_size_give_the_bytes_in_order_and_hold_nothing_after() {
        let stream: Vec<u8> = (0..5 * CAPACITY + 123).map(|i| (i % 251) as u8).collect();
        let mut reader = ReadBuffer::new(&stream[..]);
        let mut got = Vec::new();
        for size in [4, 1000, 7, CAPACITY, 1, CAPACITY * 2, 13, 4096, 5].iter().cycle() {
            let mut buf = vec![0u8; *size];
            let n = reader.read(&mut buf).await.expect("read");
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, stream);
        assert!(reader.buffer.is_empty() && reader.buffer.capacity() == 0);
    }
}
