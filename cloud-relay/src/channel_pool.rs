//! HTTP/1.1 to one agent over pooled SSH channels, one pool per connection name. The
//! task that makes a call drives its connection itself: no task per channel to hand off to.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use axum::body::Body;
use bytes::Bytes;
use http::header::HOST;
use http::{HeaderValue, Request, Response};
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use postern_protocol::channel_io::ChannelIo;
use postern_protocol::version::FORWARD_ADDRESS;
use postern_protocol::{ChannelTarget, ConnectionName};
use prometheus_client::metrics::counter::Counter;
use russh::Channel;
use russh::server::Msg;
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

/// Why a call could not be sent to the agent or answered by it.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("the agent refused a channel for connection {connection:?}: {reason:?}")]
    Refused {
        connection: String,
        reason: russh::ChannelOpenFailure,
    },
    #[error("the tunnel to the agent is closed")]
    SessionClosed,
    /// `sent` once any of the request may have reached the agent: the internal server
    /// may have acted on it, so it must not be taken for one that never left.
    #[error("{error}")]
    Http {
        #[source]
        error: hyper::Error,
        sent: bool,
    },
}

type Driver = http1::Connection<TokioIo<ChannelIo<Msg>>, Body>;

/// One HTTP/1.1 connection over one channel: the half that sends requests and the
/// half that moves bytes, which whoever waits on the connection polls.
struct Conn {
    sender: http1::SendRequest<Body>,
    /// `None` once the connection has ended. Boxed: a `Conn` moves at each checkout and
    /// checkin, and into every answer's body, and hyper's connection is ~900 bytes.
    driver: Option<Box<Driver>>,
}

impl Conn {
    /// Moves the connection's reads and writes along as far as they go now.
    fn drive(&mut self, cx: &mut Context<'_>) {
        if let Some(driver) = &mut self.driver
            && Pin::new(&mut **driver).poll(cx).is_ready()
        {
            self.driver = None;
        }
    }

    /// Whether it can take another request: alive and done with the last one.
    fn reusable(&mut self) -> bool {
        // A channel the agent closed while idle ends here, with nobody waiting on it.
        self.drive(&mut Context::from_waker(Waker::noop()));
        self.driver.is_some() && self.sender.is_ready()
    }
}

struct Idle {
    conn: Conn,
    since: Instant,
}

/// The idle channels to one agent, by connection name, at most `max_idle` in all.
pub struct ChannelPool {
    handle: russh::server::Handle,
    idle: Mutex<HashMap<ConnectionName, Vec<Idle>>>,
    max_idle: usize,
    /// Set once the agent said it drains: no channel goes back to the pool after that
    /// (`checkin` reads it under the `idle` lock, which `drain`'s sweep takes after it).
    draining: AtomicBool,
    opened: Counter,
    /// Channel opens run here, so one its caller gave up on still ends (see `open`).
    opens: TaskTracker,
    /// One permit per channel open under way, as many as calls may run: an agent that
    /// never answers an open holds its permits for the session's life, so its callers
    /// giving up cannot pile up opens (and the channels a late answer would bring).
    opening: Arc<Semaphore>,
}

impl ChannelPool {
    /// Keeps up to `max_idle` idle channels in all; counts each channel it opens in
    /// `opened`; runs channel opens on `opens` (the relay's tracker, drained on shutdown).
    pub fn new(
        handle: russh::server::Handle,
        max_idle: usize,
        opened: Counter,
        opens: TaskTracker,
    ) -> Arc<Self> {
        Arc::new(Self {
            handle,
            idle: Mutex::new(HashMap::new()),
            max_idle,
            draining: AtomicBool::new(false),
            opened,
            opens,
            opening: Arc::new(Semaphore::new(max_idle.clamp(1, Semaphore::MAX_PERMITS))),
        })
    }

    /// Sends `request` to `connection` on an idle channel, or a new one, and waits for
    /// the answer's head; the body streams as it is read, and its channel goes back
    /// to the pool once the body has been read to its end.
    pub async fn send(
        self: &Arc<Self>,
        connection: ConnectionName,
        mut request: Request<Body>,
    ) -> Result<Response<DrivenBody>, CallError> {
        // HTTP/1.1 wants a Host on every request; the caller's was dropped as hop-by-hop,
        // and the agent drops this one in turn (the internal server gets its own).
        if let Ok(host) = HeaderValue::from_str(connection.as_str()) {
            request.headers_mut().insert(HOST, host);
        }
        loop {
            let (mut conn, reused) = match self.checkout(&connection) {
                Some(conn) => (conn, true),
                // Boxed: an open is rare (pooled channels serve most calls), and inline
                // it would more than double the size of every call's future.
                None => (Box::pin(self.open(&connection)).await?, false),
            };
            let answer = conn.sender.try_send_request(request);
            let mut answer = std::pin::pin!(answer);
            let answer = std::future::poll_fn(|cx| {
                conn.drive(cx);
                answer.as_mut().poll(cx)
            })
            .await;
            match answer {
                Ok(response) => {
                    let pool = Arc::downgrade(self);
                    return Ok(response.map(|body| DrivenBody {
                        inner: body,
                        held: Some((conn, connection)),
                        pool,
                    }));
                }
                // A pooled channel that closed before the request went out: nothing was
                // sent, so it is safe to send again on another.
                Err(mut e) => match e.take_message() {
                    Some(back) if reused => request = back,
                    back => {
                        return Err(CallError::Http {
                            sent: back.is_none(),
                            error: e.into_error(),
                        });
                    }
                },
            }
        }
    }

    fn checkout(&self, connection: &ConnectionName) -> Option<Conn> {
        let mut idle = self.lock();
        let list = idle.get_mut(connection)?;
        // The most recently used first: the one most likely still warm.
        while let Some(Idle { mut conn, .. }) = list.pop() {
            if conn.reusable() {
                return Some(conn);
            }
        }
        None
    }

    /// Closes the channels idle for `timeout` or longer, and those that ended or were
    /// written to while idle.
    pub fn close_idle(&self, timeout: Duration) {
        let now = Instant::now();
        let mut closed = Vec::new();
        let mut idle = self.lock();
        for list in idle.values_mut() {
            // Oldest first: those past their time are all at the front.
            let stale = list
                .iter()
                .take_while(|i| now.duration_since(i.since) >= timeout)
                .count();
            closed.extend(list.drain(..stale));
            // An answer with no request is a broken (or hostile) agent, and what it sent
            // sits in the channel's queue, up to a whole window, until someone reads it:
            // reading now ends such a channel, and frees that, within a sweep.
            closed.extend(list.extract_if(.., |i| !i.conn.reusable()));
        }
        idle.retain(|_, list| !list.is_empty());
        drop(idle);
        // Each closes its channel as it is dropped, outside the lock (one whose connection
        // ended while it was read above has let go of its channel already).
        drop(closed);
    }

    /// Takes the agent's word that it drains (it is stopping or reconnecting): closes
    /// the idle channels now and each busy one as its call ends. The agent leaves this
    /// to the relay, which alone knows whether a request is on its way on a channel.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
        // A channel checked in before the flag was set is idle by now: swept with the rest.
        self.close_idle(Duration::ZERO);
    }

    /// Whether the agent said it drains: it takes no new calls on this session.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Keeps `conn` for the next call to `connection`; past `max_idle` idle channels in
    /// all, the one idle longest (whatever its connection) is closed to make room.
    fn checkin(&self, connection: ConnectionName, mut conn: Conn) {
        if self.max_idle == 0 || !conn.reusable() {
            return;
        }
        let mut idle = self.lock();
        // Read under the lock `drain`'s sweep takes after setting it.
        if self.is_draining() {
            return;
        }
        let total: usize = idle.values().map(Vec::len).sum();
        // Each list is oldest first, so the longest idle is at the front of one of them.
        let evicted = (total >= self.max_idle)
            .then(|| {
                idle.values_mut()
                    .filter(|list| !list.is_empty())
                    .min_by_key(|list| list[0].since)
                    .map(|list| list.remove(0))
            })
            .flatten();
        idle.entry(connection).or_default().push(Idle {
            conn,
            since: Instant::now(),
        });
        drop(idle);
        // Closes its channel outside the lock.
        drop(evicted);
    }

    /// Opens a channel in a task of its own. Given up on half way (the caller gone,
    /// `call_timeout`), russh's open would still be confirmed by the agent but reach no
    /// one: a channel open on both sides that nobody closes. Run to its end, the channel
    /// waits in the pool for the next call instead.
    async fn open(self: &Arc<Self>, connection: &ConnectionName) -> Result<Conn, CallError> {
        let (pool, name) = (self.clone(), connection.clone());
        let opened = async move { pool.open_now(&name).await };
        let (pool, name) = (self.clone(), connection.clone());
        self.detached(opened, move |conn| pool.checkin(name, conn))
            .await
    }

    /// Opens a channel for a one-shot exchange (`test:`), outside the pool, in a task of
    /// its own for the reason `open` gives; one its caller gave up on is closed as it drops.
    pub async fn open_oneshot(
        self: &Arc<Self>,
        target: ChannelTarget,
    ) -> Result<ChannelIo<Msg>, CallError> {
        let pool = self.clone();
        let open = async move { pool.open_channel(&target).await.map(ChannelIo::new) };
        self.detached(open, drop).await
    }

    /// Runs `work` in a task the pool tracks and hands its outcome back; a success its
    /// caller is no longer there for goes to `unclaimed`.
    async fn detached<T: Send + 'static>(
        &self,
        work: impl Future<Output = Result<T, CallError>> + Send + 'static,
        unclaimed: impl FnOnce(T) + Send + 'static,
    ) -> Result<T, CallError> {
        // Never closed.
        let permit = self
            .opening
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| CallError::SessionClosed)?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.opens.spawn(async move {
            let done = work.await;
            drop(permit);
            if let Err(Ok(done)) = tx.send(done) {
                unclaimed(done);
            }
        });
        rx.await.unwrap_or(Err(CallError::SessionClosed))
    }

    async fn open_channel(&self, target: &ChannelTarget) -> Result<Channel<Msg>, CallError> {
        let refused = match self
            .handle
            .channel_open_forwarded_tcpip(target.to_string(), 0, FORWARD_ADDRESS, 0)
            .await
        {
            Ok(channel) => return Ok(channel),
            Err(russh::Error::ChannelOpenFailure(reason)) => reason,
            Err(_) => return Err(CallError::SessionClosed),
        };
        // The agent holds as many channels as it allows: the idle ones are all this side
        // can give back (a pool full of one connection's would otherwise keep another's
        // calls out until they timed out), and the agent counts them closed as their
        // closes reach it, before any later open.
        if refused == russh::ChannelOpenFailure::ResourceShortage {
            self.close_idle(Duration::ZERO);
        }
        Err(CallError::Refused {
            connection: target.connection().as_str().to_owned(),
            reason: refused,
        })
    }

    async fn open_now(&self, connection: &ConnectionName) -> Result<Conn, CallError> {
        let channel = self
            .open_channel(&ChannelTarget::Http(connection.clone()))
            .await?;
        self.opened.inc();
        let (sender, driver) = http1::handshake(TokioIo::new(ChannelIo::new(channel)))
            .await
            .map_err(|error| CallError::Http { error, sent: false })?;
        Ok(Conn {
            sender,
            driver: Some(Box::new(driver)),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ConnectionName, Vec<Idle>>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// An answer's body that moves its connection along as it is read, and returns the
/// channel to the pool when it has been read to its end (dropped earlier, it closes it).
pub struct DrivenBody {
    inner: Incoming,
    /// The connection and whose it is, until the body ends or fails.
    held: Option<(Conn, ConnectionName)>,
    pool: Weak<ChannelPool>,
}

impl DrivenBody {
    fn release(&mut self) {
        if let (Some((conn, connection)), Some(pool)) = (self.held.take(), self.pool.upgrade()) {
            pool.checkin(connection, conn);
        }
    }
}

impl HttpBody for DrivenBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        if let Some((conn, _)) = &mut this.held {
            conn.drive(cx);
        }
        let frame = Pin::new(&mut this.inner).poll_frame(cx);
        match &frame {
            Poll::Ready(None) => this.release(),
            Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => this.release(),
            Poll::Ready(Some(Err(_))) => this.held = None,
            _ => {}
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for DrivenBody {
    fn drop(&mut self) {
        // An empty body is never polled, so it goes back from here. A body cut short
        // takes its connection with it, which closes the channel.
        if self.inner.is_end_stream() {
            self.release();
        }
    }
}
