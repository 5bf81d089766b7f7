//! A wait for an answer's head counted from the request body's last progress (the
//! agent's `timeout`, the relay's `call_timeout`): a large upload over a slow link may
//! take far longer than the timeout in all, yet one that stops moving (or a peer that
//! takes the whole body and then says nothing) still ends in `upstream_timeout`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http_body::{Body, Frame, SizeHint};

/// When the request body last moved: the call's start until a piece is taken.
pub struct Progress {
    origin: Instant,
    /// Nanoseconds after `origin`: an atomic, as the body moves on another task than the waiter.
    last: AtomicU64,
}

impl Progress {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            origin: Instant::now(),
            last: AtomicU64::new(0),
        })
    }

    fn touch(&self) {
        let since = u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last.store(since, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.origin + Duration::from_nanos(self.last.load(Ordering::Relaxed))
    }
}

/// A request body that notes each piece the HTTP client takes from it. The client takes
/// the next piece only once it has room to write it, so a stalled internal server stops
/// the progress as surely as a stalled caller.
pub struct Tracked<B> {
    inner: B,
    progress: Arc<Progress>,
}

impl<B> Tracked<B> {
    pub fn new(inner: B, progress: &Arc<Progress>) -> Self {
        Self {
            inner,
            progress: progress.clone(),
        }
    }
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if polled.is_ready() {
            this.progress.touch();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// `head`'s output, or `None` once `timeout` has passed since the body last moved.
/// `head` is borrowed, pinned where the caller holds it: taken by value, an async fn
/// keeps its argument and the pinned copy both, and a large future (the relay's
/// channel send) would be held twice in every call.
pub async fn within<F: Future>(
    mut head: Pin<&mut F>,
    progress: &Progress,
    timeout: Duration,
) -> Option<F::Output> {
    // Ends: every turn after the first needs the body to have moved since the one before.
    loop {
        // A timeout past what the clock can count never ends.
        let Some(deadline) = progress.last().checked_add(timeout) else {
            return Some(head.await);
        };
        match tokio::time::timeout_at(deadline.into(), &mut head).await {
            Ok(output) => return Some(output),
            Err(_) => {
                let moved_on = progress.last().checked_add(timeout);
                if moved_on.is_some_and(|d| d <= Instant::now()) {
                    return None;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use bytes::Bytes;
    use http_body_util::{BodyExt, StreamBody};

    use super::*;

    type Piece = Result<Frame<Bytes>, std::io::Error>;

    #[tokio::test]
    async fn each_piece_moves_the_deadline_and_silence_ends_it() {
        let timeout = Duration::from_millis(300);
        let (tx, rx) = tokio::sync::mpsc::channel::<Piece>(1);
        let progress = Progress::new();
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|piece| (piece, rx))
        });
        let mut body = Tracked::new(StreamBody::new(Box::pin(stream)), &progress);
        // Stands in for the HTTP client: takes every piece, and "answers" once the body ends.
        let head = async move {
            let mut pieces = 0;
            while let Some(piece) = body.frame().await {
                piece.map_err(|e| e.to_string())?;
                pieces += 1;
            }
            std::future::pending::<()>().await;
            Ok::<_, String>(pieces)
        };
        let started = Instant::now();
        let sender = tokio::spawn(async move {
            for _ in 0..6 {
                tokio::time::sleep(timeout / 3).await;
                if tx
                    .send(Ok(Frame::data(Bytes::from_static(b"x"))))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
        let outcome = within(std::pin::pin!(head), &progress, timeout).await;
        assert!(outcome.is_none(), "nothing answered");
        let elapsed = started.elapsed();
        // Six pieces 100 ms apart, then 300 ms of silence: well past one timeout in all.
        assert!(elapsed >= 6 * timeout / 3 + timeout, "{elapsed:?}");
        assert!(elapsed < 6 * timeout, "{elapsed:?}");
        sender.await.expect("sender");
    }

    #[tokio::test]
    async fn a_timeout_past_the_clock_waits_for_the_answer() {
        let progress = Progress::new();
        let answer = async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            7
        };
        assert_eq!(
            within(std::pin::pin!(answer), &progress, Duration::MAX).await,
            Some(7)
        );
    }
}
