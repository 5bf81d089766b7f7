//! A per-connection token bucket: calls over the limit wait their turn up to `max_wait`;
//! an upstream answer that asks for a pause (`pause_asked.rs`) pauses the whole connection.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::config::RateLimit;

/// The pause an upstream asks for (`pause_asked.rs`) is honoured up to this long.
pub const MAX_PAUSE: Duration = Duration::from_secs(600);

/// The wait the call would have needed, and whether an upstream's pause (its
/// `Retry-After`) is in it: then the connection's own `rate_limit` may not even exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    pub needed: Duration,
    pub paused: bool,
}

/// What asked for a pause, for `postern status`: the answer's status and the header that
/// named the wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AskedBy {
    pub status: u16,
    pub header: &'static str,
}

pub struct Limiter {
    limit: Option<RateLimit>,
    state: Mutex<Bucket>,
    /// How far pauses have pushed the connection's schedule back, in all. Waiting calls
    /// watch it, so a pause set after they took their turn delays them too. Changed
    /// only with `state` locked, so a turn and the shift it was reckoned with agree.
    shift: watch::Sender<Duration>,
    /// The limiters a reload that changed the limit put before and after this one: calls
    /// wait in both for a while, and an upstream's pause holds them all. The later one is
    /// held, so that a limiter between two with calls, itself without, keeps the chain;
    /// the earlier one is not, so nothing holds itself.
    before: Weak<Limiter>,
    after: Mutex<Option<Arc<Limiter>>>,
}

struct Bucket {
    /// May go below zero: each waiting call has reserved its token already, so later
    /// callers queue behind it instead of racing it.
    tokens: f64,
    /// Tokens accrue from here on. A pause moves it to the pause's end: the bucket stands
    /// still meanwhile, so the calls queued in it leave afterwards at the configured rate
    /// (at most `burst` at once), not all together the moment the pause ends.
    refilled: Instant,
    paused_until: Option<Instant>,
    /// What asked for the pause that ends at `paused_until`.
    asked_by: Option<AskedBy>,
    /// Turns whose callers left before them (the caller's own caller hung up), earliest
    /// first: each one's token is spent, so the next caller takes the turn instead of a
    /// token. Without this, callers that give up sooner than `max_wait` filled the queue
    /// with turns nobody took, and the internal server got next to no calls while the
    /// limit allowed many. One whose time has passed is of no use (sent later, it would
    /// come closer to the next turn than the rate allows), and a pause drops them all.
    freed: BinaryHeap<Reverse<Instant>>,
}

/// A call's turn: after `wait`, plus however much `shift` grows meanwhile.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Turn {
    wait: Duration,
    shift: Duration,
}

impl Limiter {
    pub fn new(limit: Option<RateLimit>) -> Self {
        let tokens = limit.map(|l| f64::from(l.burst)).unwrap_or(0.0);
        Self {
            limit,
            state: Mutex::new(Bucket {
                tokens,
                refilled: Instant::now(),
                paused_until: None,
                asked_by: None,
                freed: BinaryHeap::new(),
            }),
            shift: watch::Sender::new(Duration::ZERO),
            before: Weak::new(),
            after: Mutex::new(None),
        }
    }

    /// A limiter for `limit` that goes on from this one (a reload changed the limit): a
    /// pause under way holds on, and it starts with no more tokens than this one had, up
    /// to the new burst, so the change lets no burst past the old limit or the pause. The
    /// calls waiting in this one keep their turns in it, and a pause either one is told
    /// of holds both.
    pub fn succeeded_by(self: &Arc<Self>, limit: Option<RateLimit>) -> Arc<Self> {
        let next = Arc::new(self.following(limit));
        if let Ok(mut after) = self.after.lock() {
            *after = Some(next.clone());
        }
        next
    }

    fn following(self: &Arc<Self>, limit: Option<RateLimit>) -> Self {
        let now = Instant::now();
        let Ok(mut b) = self.state.lock() else {
            return Self::new(limit);
        };
        if let Some(old) = self.limit {
            refill(&mut b, old, now);
        }
        let paused_until = b.paused_until.filter(|until| *until > now);
        let tokens = match (self.limit, limit) {
            (Some(_), Some(new)) => b.tokens.min(f64::from(new.burst)),
            (None, Some(new)) => f64::from(new.burst),
            (_, None) => 0.0,
        };
        Self {
            limit,
            state: Mutex::new(Bucket {
                tokens,
                // Nothing accrues before a pause ends.
                refilled: paused_until.map_or(now, |until| until.max(b.refilled)),
                paused_until,
                asked_by: b.asked_by.filter(|_| paused_until.is_some()),
                freed: BinaryHeap::new(),
            }),
            shift: watch::Sender::new(Duration::ZERO),
            before: Arc::downgrade(self),
            after: Mutex::new(None),
        }
    }

    /// Takes a token, waiting up to `max_wait` for it (and for any pause to end, also one
    /// set while it waits).
    pub async fn acquire(&self, max_wait: Duration) -> Result<(), Refused> {
        let arrived = Instant::now();
        let turn = self.reserve(arrived, max_wait)?;
        if turn.wait.is_zero() {
            return Ok(());
        }
        let mut shifts = self.shift.subscribe();
        // Dropped before its time (the call given up on, or refused below), the turn
        // goes to the next caller.
        let mut held = Held {
            limiter: self,
            due: arrived + turn.wait,
            seen: turn.shift,
            taken: false,
        };
        // Ends: every turn of the loop but the last needs a new pause.
        loop {
            let moved = shifts.borrow_and_update().saturating_sub(held.seen);
            if !moved.is_zero() {
                held.seen += moved;
                held.due += moved;
                let needed = held.due.saturating_duration_since(arrived);
                if needed > max_wait {
                    return Err(Refused {
                        needed,
                        paused: true,
                    });
                }
            }
            tokio::select! {
                biased;
                () = tokio::time::sleep_until(held.due.into()) => {
                    held.taken = true;
                    return Ok(());
                }
                // Never an error: the sender is `self.shift`, alive while `self` is borrowed.
                _ = shifts.changed() => {}
            }
        }
    }

    /// Hands back the turn at `due`, reckoned with the shift `seen`, for the next caller.
    fn free(&self, due: Instant, seen: Duration) {
        let Ok(mut b) = self.state.lock() else {
            return;
        };
        // A pause since (not yet seen by the turn, or dropping the freed ones) or a turn
        // whose time has come: nothing to hand on. Read under the lock `shift` changes with.
        if self.limit.is_none() || *self.shift.borrow() != seen || due <= Instant::now() {
            return;
        }
        b.freed.push(Reverse(due));
    }

    /// The accounting of `acquire`: how long to wait, with the token reserved if it is
    /// within `max_wait`.
    fn reserve(&self, now: Instant, max_wait: Duration) -> Result<Turn, Refused> {
        let Ok(mut b) = self.state.lock() else {
            return Ok(Turn {
                wait: Duration::ZERO,
                shift: Duration::ZERO,
            });
        };
        let wait = match self.limit {
            None => b
                .paused_until
                .map(|until| until.saturating_duration_since(now))
                .unwrap_or_default(),
            Some(limit) => {
                refill(&mut b, limit, now);
                let deficit = (1.0 - b.tokens).max(0.0);
                // During a pause `refilled` is its end: nothing accrues before then.
                b.refilled.saturating_duration_since(now)
                    + Duration::from_secs_f64(deficit / rate(limit))
            }
        };
        while b.freed.peek().is_some_and(|Reverse(at)| *at <= now) {
            b.freed.pop();
        }
        // A turn someone left, if sooner than a token: its token is spent already.
        let freed = b.freed.peek().map(|Reverse(at)| at.duration_since(now));
        if let Some(sooner) = freed.filter(|f| *f < wait && *f <= max_wait) {
            b.freed.pop();
            return Ok(Turn {
                wait: sooner,
                shift: *self.shift.borrow(),
            });
        }
        if wait > max_wait {
            return Err(Refused {
                needed: wait,
                paused: b.paused_until.is_some_and(|until| until > now),
            });
        }
        if self.limit.is_some() {
            b.tokens -= 1.0;
        }
        Ok(Turn {
            wait,
            shift: *self.shift.borrow(),
        })
    }

    /// Holds every call on this connection until `for_how_long` has passed, at most
    /// [`MAX_PAUSE`]: the pause taken.
    pub fn pause(&self, for_how_long: Duration, asked_by: AskedBy) -> Duration {
        let now = Instant::now();
        self.pause_at(now, for_how_long, asked_by);
        // The calls of a call table before or after a reload: told by a call that began
        // before the reload, the pause must hold the calls after it too, and the other way.
        let mut before = self.before.upgrade();
        while let Some(limiter) = before {
            limiter.pause_at(now, for_how_long, asked_by);
            before = limiter.before.upgrade();
        }
        let mut after = self.after.lock().ok().and_then(|a| a.clone());
        while let Some(limiter) = after {
            limiter.pause_at(now, for_how_long, asked_by);
            after = limiter.after.lock().ok().and_then(|a| a.clone());
        }
        for_how_long.min(MAX_PAUSE)
    }

    /// The pause under way, if any: when it ends and what asked for it.
    pub fn paused(&self) -> Option<(Instant, AskedBy)> {
        let b = self.state.lock().ok()?;
        b.paused_until
            .filter(|until| *until > Instant::now())
            .zip(b.asked_by)
    }

    fn pause_at(&self, now: Instant, for_how_long: Duration, asked_by: AskedBy) {
        let until = now + for_how_long.min(MAX_PAUSE);
        let Ok(mut b) = self.state.lock() else {
            return;
        };
        let from = b.paused_until.map_or(now, |p| p.max(now));
        let longer = until.saturating_duration_since(from);
        if longer.is_zero() {
            return;
        }
        if let Some(limit) = self.limit {
            refill(&mut b, limit, now);
            b.refilled = b.refilled.max(now) + longer;
        }
        // Their times were reckoned before the pause: the calls that would take them are
        // after it now, behind the waiting ones.
        b.freed.clear();
        b.paused_until = Some(until);
        b.asked_by = Some(asked_by);
        self.shift.send_modify(|shift| *shift += longer);
    }
}

/// A waiting call's turn, handed back if the call leaves before it.
struct Held<'a> {
    limiter: &'a Limiter,
    due: Instant,
    /// The shift `due` was reckoned with.
    seen: Duration,
    taken: bool,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        if !self.taken {
            self.limiter.free(self.due, self.seen);
        }
    }
}

fn rate(limit: RateLimit) -> f64 {
    f64::from(limit.requests) / limit.per.as_secs_f64()
}

/// Adds the tokens accrued since `refilled`, up to `burst`; none while paused.
fn refill(b: &mut Bucket, limit: RateLimit, now: Instant) {
    if now <= b.refilled {
        return;
    }
    let elapsed = now.duration_since(b.refilled).as_secs_f64();
    b.tokens = (b.tokens + elapsed * rate(limit)).min(f64::from(limit.burst));
    b.refilled = now;
}

#[cfg(test)]
mod tests {
    use super::*;

    const ASKED: AskedBy = AskedBy {
        status: 429,
        header: "Retry-After",
    };

    fn wait_of(l: &Limiter, now: Instant, max_wait: Duration) -> Result<Duration, Refused> {
        l.reserve(now, max_wait).map(|turn| turn.wait)
    }

    fn limiter(requests: u32, per_ms: u64, burst: u32) -> Limiter {
        Limiter::new(Some(RateLimit {
            requests,
            per: Duration::from_millis(per_ms),
            burst,
        }))
    }

    #[test]
    fn burst_passes_then_calls_queue_at_the_rate() {
        let l = limiter(10, 1000, 3);
        let now = Instant::now();
        for _ in 0..3 {
            assert_eq!(wait_of(&l, now, Duration::ZERO), Ok(Duration::ZERO));
        }
        // 10 per second: the next tokens come 100 ms apart, and each waiter has its own.
        let w1 = wait_of(&l, now, Duration::from_secs(1)).expect("queued");
        let w2 = wait_of(&l, now, Duration::from_secs(1)).expect("queued");
        assert!((w1.as_millis() as i64 - 100).abs() <= 1, "{w1:?}");
        assert!((w2.as_millis() as i64 - 200).abs() <= 1, "{w2:?}");
        let refused = wait_of(&l, now, Duration::from_millis(250)).expect_err("over max_wait");
        assert!(refused.needed > Duration::from_millis(250));
        // A refused call reserves nothing: with more patience the same slot is free.
        let w3 = wait_of(&l, now, Duration::from_secs(1)).expect("queued");
        assert!((w3.as_millis() as i64 - 300).abs() <= 1, "{w3:?}");
        // Time refills the bucket, never above the burst.
        let later = now + Duration::from_secs(10);
        for _ in 0..3 {
            assert_eq!(wait_of(&l, later, Duration::ZERO), Ok(Duration::ZERO));
        }
        assert!(wait_of(&l, later, Duration::ZERO).is_err());
    }

    #[test]
    fn a_pause_holds_even_unlimited_connections() {
        let l = Limiter::new(None);
        assert_eq!(
            wait_of(&l, Instant::now(), Duration::ZERO),
            Ok(Duration::ZERO)
        );
        l.pause(Duration::from_secs(2), ASKED);
        let now = Instant::now();
        let wait = wait_of(&l, now, Duration::from_secs(5)).expect("within max_wait");
        assert!(
            wait > Duration::from_millis(1900) && wait <= Duration::from_secs(2),
            "{wait:?}"
        );
        assert!(wait_of(&l, now, Duration::from_secs(1)).is_err());
        l.pause(Duration::from_secs(100_000), ASKED);
        let wait = wait_of(&l, Instant::now(), Duration::from_secs(100_000)).expect("capped");
        assert!(wait <= MAX_PAUSE, "{wait:?}");
    }

    #[test]
    fn after_a_pause_at_most_burst_calls_go_at_once_then_the_rate() {
        // 50 per second, burst 100, an upstream's Retry-After of 5 s.
        let l = limiter(50, 1000, 100);
        let now = Instant::now();
        l.pause_at(now, Duration::from_secs(5), ASKED);
        let pause = Duration::from_secs(5);
        let waits: Vec<Duration> = (0..400)
            .map(|_| wait_of(&l, now, Duration::from_secs(60)).expect("within max_wait"))
            .collect();
        assert!(
            waits.iter().all(|w| *w >= pause),
            "none before the pause ends"
        );
        let at_once = waits.iter().filter(|w| **w == pause).count();
        assert_eq!(at_once, 100, "the burst, and no more, when the pause ends");
        // Then one every 20 ms, in the order the calls came.
        for (k, w) in waits.iter().enumerate().skip(100) {
            let expected = pause + Duration::from_millis(20 * (k as u64 - 99));
            let off = w.abs_diff(expected);
            assert!(off <= Duration::from_millis(1), "call {k}: {w:?}");
        }
    }

    #[test]
    fn a_pause_while_calls_queue_moves_their_turns_back_by_its_length() {
        let l = limiter(10, 1000, 1);
        let now = Instant::now();
        assert_eq!(wait_of(&l, now, Duration::ZERO), Ok(Duration::ZERO));
        let before = l.reserve(now, Duration::from_secs(5)).expect("queued");
        assert!(before.wait.abs_diff(Duration::from_millis(100)) <= Duration::from_millis(1));
        l.pause_at(now, Duration::from_secs(2), ASKED);
        let after = l.reserve(now, Duration::from_secs(5)).expect("queued");
        // The queued call is moved back 2 s (through the shift it watches), and the next
        // one keeps its place behind it instead of leaving with it.
        assert_eq!(after.shift - before.shift, Duration::from_secs(2));
        let expected = Duration::from_millis(2200);
        assert!(
            after.wait.abs_diff(expected) <= Duration::from_millis(1),
            "{after:?}"
        );
        // A shorter pause inside this one changes nothing; a longer one adds only the rest.
        l.pause_at(now, Duration::from_secs(1), ASKED);
        assert_eq!(*l.shift.borrow(), Duration::from_secs(2));
        l.pause_at(now, Duration::from_secs(3), ASKED);
        assert_eq!(*l.shift.borrow(), Duration::from_secs(3));
    }

    /// Starts a call that waits on `l` with `max_wait`, sets a pause of `pause` 50 ms later,
    /// and returns how the call ended (bounded at 10 s).
    async fn wait_through_a_new_pause(
        l: &std::sync::Arc<Limiter>,
        max_wait: Duration,
        pause: Duration,
    ) -> Result<(), Refused> {
        let waiter = {
            let l = l.clone();
            tokio::spawn(async move { l.acquire(max_wait).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        l.pause(pause, ASKED);
        tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .expect("bounded")
            .expect("task")
    }

    /// Real time, short spans: tokio's paused clock needs a feature this crate does not turn on.
    #[tokio::test]
    async fn calls_already_waiting_wait_out_a_newer_pause() {
        // Waiting for a token: due after 100 ms, then a 400 ms pause is set at 50 ms.
        let l = std::sync::Arc::new(limiter(10, 1000, 1));
        l.acquire(Duration::ZERO).await.expect("the burst");
        let started = Instant::now();
        let done =
            wait_through_a_new_pause(&l, Duration::from_secs(5), Duration::from_millis(400)).await;
        done.expect("within max_wait");
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(480), "left at {waited:?}");

        // Waiting out a pause on a connection without a rate limit: 200 ms, extended at
        // 50 ms to end at 450 ms.
        let l = std::sync::Arc::new(Limiter::new(None));
        l.pause(Duration::from_millis(200), ASKED);
        let started = Instant::now();
        let done =
            wait_through_a_new_pause(&l, Duration::from_secs(5), Duration::from_millis(400)).await;
        done.expect("within max_wait");
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(440), "left at {waited:?}");

        // A newer pause that takes a waiting call past its max_wait refuses it at once.
        l.pause(Duration::from_millis(200), ASKED);
        let started = Instant::now();
        let done =
            wait_through_a_new_pause(&l, Duration::from_millis(500), Duration::from_secs(5)).await;
        let refused = done.expect_err("past max_wait");
        assert!(refused.needed > Duration::from_secs(4), "{refused:?}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn a_turn_left_goes_to_the_next_caller_while_its_time_is_ahead() {
        let l = limiter(10, 1000, 1);
        let now = Instant::now();
        let max_wait = Duration::from_secs(5);
        assert_eq!(wait_of(&l, now, Duration::ZERO), Ok(Duration::ZERO));
        let first = l.reserve(now, max_wait).expect("queued");
        let second = l.reserve(now, max_wait).expect("queued");
        // The first caller leaves: the next one takes its turn, 100 ms out, not 300.
        l.free(now + first.wait, first.shift);
        let next = wait_of(&l, now, max_wait).expect("queued");
        assert_eq!(next, first.wait);
        // Taken once only: the one after waits behind the second.
        let after = wait_of(&l, now, max_wait).expect("queued");
        assert!(after.abs_diff(Duration::from_millis(300)) <= Duration::from_millis(1));
        // A turn whose time has passed is not handed on: it would come too close to the
        // next one.
        l.free(Instant::now() - Duration::from_millis(1), second.shift);
        let later = wait_of(&l, now, max_wait).expect("queued");
        assert!(later.abs_diff(Duration::from_millis(400)) <= Duration::from_millis(1));
        // Nor one reckoned before a pause, nor one left before a pause.
        l.free(now + second.wait, second.shift);
        l.pause_at(now, Duration::from_secs(1), ASKED);
        l.free(now + second.wait, second.shift);
        let paused = wait_of(&l, now, max_wait).expect("queued");
        assert!(paused > Duration::from_secs(1), "{paused:?}");
    }

    /// Real time: callers that give up before their turn (their own caller hung up) do
    /// not keep the turns from the callers after them.
    #[tokio::test]
    async fn a_call_given_up_on_hands_its_turn_on() {
        let l = std::sync::Arc::new(limiter(10, 1000, 1));
        l.acquire(Duration::ZERO).await.expect("the burst");
        let started = Instant::now();
        // Three callers queue (100, 200, 300 ms) and leave at once.
        let waiting: Vec<_> = (0..3)
            .map(|_| {
                let l = l.clone();
                tokio::spawn(async move { l.acquire(Duration::from_secs(5)).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(30)).await;
        for w in &waiting {
            w.abort();
        }
        for w in waiting {
            let _ = w.await;
        }
        // The next caller goes at the first of their turns, not behind all three.
        tokio::time::timeout(Duration::from_secs(5), l.acquire(Duration::from_secs(5)))
            .await
            .expect("bounded")
            .expect("within max_wait");
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(95) && waited < Duration::from_millis(250),
            "went at {waited:?}"
        );
    }

    #[test]
    fn a_changed_limit_keeps_the_pause_and_lets_no_burst_through() {
        let l = Arc::new(limiter(10, 1000, 5));
        let now = Instant::now();
        for _ in 0..5 {
            assert_eq!(wait_of(&l, now, Duration::ZERO), Ok(Duration::ZERO));
        }
        // The bucket is empty: a larger burst does not fill it.
        let next = l.succeeded_by(Some(RateLimit {
            requests: 20,
            per: Duration::from_secs(1),
            burst: 50,
        }));
        assert!(wait_of(&next, Instant::now(), Duration::ZERO).is_err());
        // A pause (an upstream's Retry-After) holds across the change, with or without a limit.
        l.pause(Duration::from_secs(30), ASKED);
        for limit in [
            None,
            Some(RateLimit {
                requests: 1,
                per: Duration::from_secs(1),
                burst: 1,
            }),
        ] {
            let next = l.succeeded_by(limit);
            let wait = wait_of(&next, Instant::now(), Duration::from_secs(60)).expect("queued");
            assert!(wait > Duration::from_secs(29), "{limit:?}: {wait:?}");
        }
        // Unlimited before: the new limit starts with its burst.
        let open = Arc::new(Limiter::new(None)).succeeded_by(Some(RateLimit {
            requests: 1,
            per: Duration::from_secs(1),
            burst: 2,
        }));
        let now = Instant::now();
        assert_eq!(wait_of(&open, now, Duration::ZERO), Ok(Duration::ZERO));
        assert_eq!(wait_of(&open, now, Duration::ZERO), Ok(Duration::ZERO));
        assert!(wait_of(&open, now, Duration::ZERO).is_err());
    }

    /// A reload that changes the limit leaves calls waiting in the old limiter while new
    /// ones use the new: an upstream's pause, told through either, holds both.
    #[test]
    fn a_pause_holds_the_limiters_before_and_after_a_changed_limit() {
        let first = Arc::new(limiter(10, 1000, 5));
        let second = first.succeeded_by(Some(RateLimit {
            requests: 20,
            per: Duration::from_secs(1),
            burst: 5,
        }));
        let third = second.succeeded_by(None);
        // The middle one has no calls left (only the first's and the third's remain).
        let middle = Arc::downgrade(&second);
        drop(second);
        // Told by a call that began before the reloads.
        first.pause(Duration::from_secs(30), ASKED);
        let wait = wait_of(&third, Instant::now(), Duration::from_secs(60)).expect("queued");
        assert!(wait > Duration::from_secs(29), "third: {wait:?}");
        // Told by a call after them, a longer one holds the calls waiting before them.
        third.pause(Duration::from_secs(90), ASKED);
        let wait = wait_of(&first, Instant::now(), Duration::from_secs(120)).expect("queued");
        assert!(wait > Duration::from_secs(89), "first: {wait:?}");
        // Nothing holds itself: the first gone, the rest go with it but the newest.
        drop(first);
        assert!(
            middle.upgrade().is_none(),
            "the middle one outlived the chain"
        );
    }

    /// `postern status` says what asked for the pause under way: the longest one's asker,
    /// carried over a reload, and nothing once it is over.
    #[test]
    fn the_pause_under_way_is_known_with_what_asked_for_it() {
        let l = Arc::new(limiter(10, 1000, 5));
        assert_eq!(l.paused(), None);
        let secondary = AskedBy {
            status: 403,
            header: "Retry-After",
        };
        let reset = AskedBy {
            status: 429,
            header: "X-RateLimit-Reset",
        };
        l.pause(Duration::from_secs(30), secondary);
        l.pause(Duration::from_secs(10), reset);
        let (until, asked_by) = l.paused().expect("paused");
        assert_eq!(
            asked_by, secondary,
            "a shorter pause inside it changes nothing"
        );
        assert!(until > Instant::now() + Duration::from_secs(29));
        l.pause(Duration::from_secs(60), reset);
        assert_eq!(l.paused().map(|(_, by)| by), Some(reset));

        let reloaded = l.succeeded_by(None);
        assert_eq!(reloaded.paused().map(|(_, by)| by), Some(reset));

        let short = limiter(10, 1000, 5);
        short.pause(Duration::from_millis(20), ASKED);
        assert!(short.paused().is_some());
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(short.paused(), None, "over");
    }
}
