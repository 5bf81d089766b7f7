//! postern patch: a channel's incoming queue. Unbounded, so the session loop never waits
//! on one slow channel; bounded in bytes by the SSH window, granted back only as read.
//!
//! Upstream russh queues into a bounded channel and grants window on arrival: a reader
//! that stops makes the session loop wait, stalling every channel (head-of-line). Here
//! the loop hands data over without waiting, and the peer may send more only once the
//! application has taken data out: the reader counts what it took and wakes the session
//! when half a window is due, which then sends `CHANNEL_WINDOW_ADJUST`.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use tokio::sync::Notify;
use tokio::sync::mpsc::error::SendError;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use super::ChannelMsg;

/// postern patch: notices (any message but data, whose bytes the window bounds, and
/// window adjusts, one unread at most) a reader may leave unread; more are dropped. A
/// peer that repeats one (a channel confirmation, an EOF) on a channel nobody reads just
/// then, an idle pooled one say, grew its queue without end. No channel of a peer that
/// keeps to the protocol has this many: an open, a few replies, an EOF, an exit status.
pub(crate) const MAX_UNREAD_NOTICES: u32 = 64;

pub(crate) fn queue() -> (QueueSender, QueueReceiver) {
    let (tx, rx) = unbounded_channel();
    let read = Arc::new(ReadCredit::default());
    (
        QueueSender {
            tx,
            read: read.clone(),
        },
        QueueReceiver { rx, read },
    )
}

/// Bytes the application has taken out and the session has not granted back yet.
#[derive(Debug, Default)]
struct ReadCredit {
    taken: AtomicU32,
    /// The session's wake-up.
    wake: OnceLock<Arc<Notify>>,
    /// The amount that is worth a window adjust: half the channel's window, set by the
    /// first delivery and raised as the session grows that window (`WindowBudget`). It
    /// never falls, so a reader that reads a stale value can only wake the session early.
    threshold: AtomicU32,
    /// A `WindowAdjusted` is queued and not taken yet: the next one is not queued.
    adjusted_unread: AtomicBool,
    /// Notices queued and not taken yet ([`MAX_UNREAD_NOTICES`]).
    notices_unread: AtomicU32,
}

/// Whether `msg` is a notice: neither data nor a window adjust.
fn is_notice(msg: &ChannelMsg) -> bool {
    !matches!(
        msg,
        ChannelMsg::Data { .. } | ChannelMsg::ExtendedData { .. } | ChannelMsg::WindowAdjusted { .. }
    )
}

impl ReadCredit {
    fn add(&self, n: usize) {
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        let before = self.taken.fetch_add(n, Ordering::AcqRel);
        let threshold = self.threshold.load(Ordering::Acquire);
        if before < threshold && before.saturating_add(n) >= threshold {
            if let Some(wake) = self.wake.get() {
                wake.notify_one();
            }
        }
    }
}

/// postern patch: whether a channel's reader is still there, once its sender went with
/// the channel's close (`Encrypted::linger`).
#[derive(Debug, Clone)]
pub(crate) struct ReaderAlive(std::sync::Weak<ReadCredit>);

impl ReaderAlive {
    pub(crate) fn alive(&self) -> bool {
        self.0.strong_count() > 0
    }
}

/// The session's end of a channel's queue.
#[derive(Debug)]
pub struct QueueSender {
    tx: UnboundedSender<ChannelMsg>,
    read: Arc<ReadCredit>,
}

impl QueueSender {
    /// Never waits; `async` so that call sites written for a bounded queue stay as they are.
    pub async fn send(&self, msg: ChannelMsg) -> Result<(), SendError<ChannelMsg>> {
        self.try_send(msg)
    }

    /// Queues `msg`; a notice past [`MAX_UNREAD_NOTICES`] unread is dropped.
    pub fn try_send(&self, msg: ChannelMsg) -> Result<(), SendError<ChannelMsg>> {
        if is_notice(&msg) {
            let unread = self.read.notices_unread.fetch_add(1, Ordering::AcqRel);
            if unread >= MAX_UNREAD_NOTICES {
                self.read.notices_unread.fetch_sub(1, Ordering::AcqRel);
                return Ok(());
            }
        }
        self.tx.send(msg)
    }

    /// Tells the reader the peer adjusted the window, unless it has such news unread. Each
    /// `CHANNEL_WINDOW_ADJUST` queued a message, whatever its amount, and a channel nobody
    /// reads (idle, or past its use) would hold every one: a peer sending them without end
    /// grew the queue without end. The window itself grows whether or not this is queued.
    pub(crate) fn window_adjusted(&self, new_size: u32) {
        if !self.read.adjusted_unread.swap(true, Ordering::AcqRel) {
            let _ = self.tx.send(ChannelMsg::WindowAdjusted { new_size });
        }
    }

    /// Hands data over and says whether a reader will count it when it takes it out; if
    /// not (no reader), the caller grants the window at once, as upstream does.
    pub(crate) fn deliver(&self, msg: ChannelMsg, wake: &Arc<Notify>, threshold: u32) -> bool {
        self.read.wake.get_or_init(|| wake.clone());
        if self.read.threshold.load(Ordering::Relaxed) == 0 {
            self.read
                .threshold
                .store(threshold.max(1), Ordering::Release);
        }
        self.tx.send(msg).is_ok()
    }

    /// A new amount worth a window adjust, after the session grew the channel's window.
    /// Wakes the session if the reader has taken that much already.
    pub(crate) fn set_threshold(&self, threshold: u32) {
        let threshold = threshold.max(1);
        self.read.threshold.store(threshold, Ordering::Release);
        if self.read.taken.load(Ordering::Acquire) >= threshold {
            if let Some(wake) = self.read.wake.get() {
                wake.notify_one();
            }
        }
    }

    /// postern patch 13: whether the channel's reader is gone (its queue closed).
    pub(crate) fn reader_gone(&self) -> bool {
        self.tx.is_closed()
    }

    /// A watch on the reader, for after this sender is gone.
    pub(crate) fn reader_alive(&self) -> ReaderAlive {
        ReaderAlive(Arc::downgrade(&self.read))
    }

    /// What the reader has taken since the last call.
    pub(crate) fn take_read(&self) -> u32 {
        self.read.taken.swap(0, Ordering::AcqRel)
    }
}

/// The application's end of a channel's queue; counts data as it is taken out.
#[derive(Debug)]
pub struct QueueReceiver {
    rx: UnboundedReceiver<ChannelMsg>,
    read: Arc<ReadCredit>,
}

impl QueueReceiver {
    fn count(&self, msg: &ChannelMsg) {
        match msg {
            ChannelMsg::Data { data } | ChannelMsg::ExtendedData { data, .. } => {
                self.read.add(data.len())
            }
            ChannelMsg::WindowAdjusted { .. } => {
                self.read.adjusted_unread.store(false, Ordering::Release)
            }
            _ => {
                self.read.notices_unread.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }

    pub async fn recv(&mut self) -> Option<ChannelMsg> {
        let msg = self.rx.recv().await;
        if let Some(msg) = &msg {
            self.count(msg);
        }
        msg
    }

    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<ChannelMsg>> {
        let polled = self.rx.poll_recv(cx);
        if let Poll::Ready(Some(msg)) = &polled {
            self.count(msg);
        }
        polled
    }

    /// postern patch: what is queued already, without waiting (channels/io/rx.rs).
    pub fn try_recv(&mut self) -> Option<ChannelMsg> {
        let msg = self.rx.try_recv().ok()?;
        self.count(&msg);
        Some(msg)
    }

    pub fn close(&mut self) {
        self.rx.close()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A peer that repeats a notice (here an EOF) on a channel nobody reads leaves at
    /// most `MAX_UNREAD_NOTICES` of them queued; once the reader takes them, notices
    /// are queued again.
    #[test]
    fn repeated_notices_wait_unread_up_to_a_cap() {
        let (tx, mut rx) = queue();
        for _ in 0..10_000 {
            let _ = tx.try_send(ChannelMsg::Eof);
        }
        let mut unread = 0;
        while let Some(msg) = rx.try_recv() {
            assert!(matches!(msg, ChannelMsg::Eof));
            unread += 1;
        }
        assert_eq!(unread, MAX_UNREAD_NOTICES);
        let _ = tx.try_send(ChannelMsg::Close);
        assert!(matches!(rx.try_recv(), Some(ChannelMsg::Close)));
        // Data is not a notice: its bytes are the window's to bound. Sent while the cap's
        // worth of notices waits unread, all of it is queued still.
        for _ in 0..MAX_UNREAD_NOTICES {
            let _ = tx.try_send(ChannelMsg::Eof);
        }
        for _ in 0..100 {
            assert!(tx.try_send(ChannelMsg::Data { data: vec![1].into() }).is_ok());
        }
        let data = std::iter::from_fn(|| rx.try_recv())
            .filter(|msg| matches!(msg, ChannelMsg::Data { .. }))
            .count();
        assert_eq!(data, 100);
    }

    /// A peer's window adjusts without end leave at most one message for a reader that
    /// does not read; once it takes that one, the next adjust is news again.
    #[test]
    fn window_adjusts_wait_unread_one_at_a_time() {
        let (tx, mut rx) = queue();
        for size in 1..=10_000 {
            tx.window_adjusted(size);
        }
        assert!(matches!(
            rx.try_recv(),
            Some(ChannelMsg::WindowAdjusted { new_size: 1 })
        ));
        assert!(rx.try_recv().is_none());
        tx.window_adjusted(20_000);
        assert!(matches!(
            rx.try_recv(),
            Some(ChannelMsg::WindowAdjusted { new_size: 20_000 })
        ));
    }
}
