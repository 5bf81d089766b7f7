use std::borrow::BorrowMut;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::AsyncRead;

use super::{ChannelMsg, ChannelReadHalf};

#[derive(Debug)]
pub struct ChannelRx<R> {
    channel: R,
    buffer: Option<(ChannelMsg, usize)>,

    ext: Option<u32>,
}

impl<R> ChannelRx<R> {
    pub fn new(channel: R, ext: Option<u32>) -> Self {
        Self {
            channel,
            buffer: None,
            ext,
        }
    }
}

impl<R> ChannelRx<R>
where
    R: BorrowMut<ChannelReadHalf> + Unpin,
{
    /// The bytes `msg` carries for this stream (data, or the extended data it reads), if any.
    fn stream_data<'m>(&self, msg: &'m ChannelMsg) -> Option<&'m [u8]> {
        match (msg, self.ext) {
            (ChannelMsg::Data { data }, None) => Some(data),
            (ChannelMsg::ExtendedData { data, ext }, Some(target)) if *ext == target => Some(data),
            _ => None,
        }
    }

    /// postern patch: copies `msg` from `idx` into `buf`, then whatever more of the stream
    /// is queued already, as far as `buf` has room. One read per packet (32 KiB) made a
    /// reader such as hyper take a body 32 KiB at a time, a task wake-up and a write
    /// each; now a reader that falls behind catches up in one read. Stops at the first
    /// message that is not the stream's data and keeps it for the next read, as it keeps
    /// the part of a message that did not fit.
    fn take_queued(
        &mut self,
        mut msg: ChannelMsg,
        mut idx: usize,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) {
        loop {
            let Some(data) = self.stream_data(&msg) else {
                self.buffer = Some((msg, 0));
                return;
            };
            let readable = buf.remaining().min(data.len() - idx);

            // Clamped to maximum `buf.remaining()` and `data.len() - idx` with `.min`
            #[allow(clippy::indexing_slicing)]
            buf.put_slice(&data[idx..idx + readable]);
            idx += readable;

            if idx != data.len() {
                self.buffer = Some((msg, idx));
                return;
            }
            if buf.remaining() == 0 {
                return;
            }
            match self.channel.borrow_mut().receiver.try_recv() {
                Some(next) => (msg, idx) = (next, 0),
                None => return,
            }
        }
    }
}

impl<R> AsyncRead for ChannelRx<R>
where
    R: BorrowMut<ChannelReadHalf> + Unpin,
{
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let (msg, idx) = match self.buffer.take() {
            Some(msg) => msg,
            None => match ready!(self.channel.borrow_mut().receiver.poll_recv(cx)) {
                Some(msg) => (msg, 0),
                None => return Poll::Ready(Ok(())),
            },
        };

        if self.stream_data(&msg).is_some() {
            self.take_queued(msg, idx, buf);
            return Poll::Ready(Ok(()));
        }
        match msg {
            ChannelMsg::Eof => {
                self.channel.borrow_mut().receiver.close();

                Poll::Ready(Ok(()))
            }
            _ => {
                cx.waker().wake_by_ref();
                Poll::Pending
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use tokio::io::AsyncReadExt;

    use super::ChannelRx;
    use crate::channels::{queue, ChannelMsg, ChannelReadHalf};

    fn data(bytes: &[u8]) -> ChannelMsg {
        ChannelMsg::Data {
            data: Bytes::copy_from_slice(bytes),
        }
    }

    // postern patch: a read takes what is queued as far as the buffer has room, keeps
    // what did not fit, and stops at a message that is not the stream's data.
    #[tokio::test]
    async fn a_read_takes_every_queued_packet_that_fits() {
        let (tx, rx) = queue();
        let mut reader = ChannelRx::new(ChannelReadHalf { receiver: rx }, None);
        for msg in [data(b"abc"), data(b"defg"), data(b"hi")] {
            tx.try_send(msg).unwrap();
        }
        let mut buf = [0u8; 6];
        assert_eq!(reader.read(&mut buf).await.unwrap(), 6);
        assert_eq!(&buf, b"abcdef");
        tx.try_send(ChannelMsg::ExtendedData {
            data: Bytes::from_static(b"stderr"),
            ext: 1,
        })
        .unwrap();
        tx.try_send(data(b"jk")).unwrap();
        tx.try_send(ChannelMsg::Eof).unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(reader.read(&mut buf).await.unwrap(), 3);
        assert_eq!(&buf[..3], b"ghi");
        // The stderr packet is skipped as before, and EOF still ends the stream after "jk".
        assert_eq!(reader.read(&mut buf).await.unwrap(), 2);
        assert_eq!(&buf[..2], b"jk");
        assert_eq!(reader.read(&mut buf).await.unwrap(), 0);
    }
}
