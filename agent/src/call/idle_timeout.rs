//! The connection's `timeout` between pieces of an answer, counted only while the agent
//! is waiting for the internal server, never while the caller is slow to take a piece.
//!
//! reqwest's `read_timeout` restarts its clock when it hands out a piece, so a caller
//! that paused longer than the timeout had its download cut off though nothing was late.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use tokio::time::Sleep;

pub struct IdleTimeout<S> {
    inner: S,
    timeout: Duration,
    /// Runs from the first poll that found nothing ready; gone once a piece arrives.
    waiting: Option<Pin<Box<Sleep>>>,
}

impl<S> IdleTimeout<S> {
    pub fn new(inner: S, timeout: Duration) -> Self {
        Self {
            inner,
            timeout,
            waiting: None,
        }
    }
}

impl<S, T> Stream for IdleTimeout<S>
where
    S: Stream<Item = Result<T, std::io::Error>> + Unpin,
{
    type Item = Result<T, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Poll::Ready(item) = Pin::new(&mut self.inner).poll_next(cx) {
            self.waiting = None;
            return Poll::Ready(item);
        }
        let timeout = self.timeout;
        let waiting = self
            .waiting
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match waiting.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("the internal server sent nothing for {timeout:?}"),
            )))),
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures_util::StreamExt;

    use super::IdleTimeout;

    type Item = Result<u8, std::io::Error>;

    #[tokio::test]
    async fn a_slow_consumer_is_not_timed_out_but_a_silent_producer_is() {
        let timeout = Duration::from_millis(200);
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Item>();
        let mut stream = IdleTimeout::new(tokio_stream_from(rx), timeout);
        tx.send(Ok(1)).expect("queued");
        assert_eq!(stream.next().await.expect("item").expect("data"), 1);
        // The consumer takes five timeouts before asking again: no error.
        tokio::time::sleep(5 * timeout).await;
        tx.send(Ok(2)).expect("queued");
        assert_eq!(stream.next().await.expect("item").expect("data"), 2);
        // The producer goes silent while the consumer waits: an error after the timeout.
        let started = std::time::Instant::now();
        let err = stream.next().await.expect("item").expect_err("timed out");
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= timeout);
        drop(tx);
    }

    fn tokio_stream_from(
        mut rx: tokio::sync::mpsc::UnboundedReceiver<Item>,
    ) -> impl futures_util::Stream<Item = Item> + Unpin {
        Box::pin(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)))
    }
}
