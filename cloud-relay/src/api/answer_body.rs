//! An answer's body on its way to the caller: counts its bytes, keeps its call in flight
//! until it ends, and logs and counts one that did not reach its end, and why.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tracing::{info, warn};

use crate::channel_pool::DrivenBody;
use crate::context::RelayContext;
use crate::metrics::BreakCause;
use crate::registry::{InFlightGuard, LiveSession};

pub struct AnswerBody {
    inner: DrivenBody,
    ctx: Arc<RelayContext>,
    /// The session the answer comes through: whether it ended says where a break came from.
    live: Arc<LiveSession>,
    _in_flight: InFlightGuard,
    /// The call's, for the line about how it ended.
    span: tracing::Span,
    sent: u64,
    /// Read to its end, or its failure logged.
    done: bool,
    /// Said to be of unknown length whatever the inner body says: a HEAD's answer without a
    /// Content-Length (hyper's client knows it has no body, and the server would otherwise
    /// write `content-length: 0`, as if what a GET would get were empty).
    length_unknown: bool,
}

impl AnswerBody {
    pub fn new(
        inner: DrivenBody,
        ctx: Arc<RelayContext>,
        live: Arc<LiveSession>,
        in_flight: InFlightGuard,
        length_unknown: bool,
    ) -> Self {
        Self {
            inner,
            ctx,
            live,
            _in_flight: in_flight,
            span: tracing::Span::current(),
            sent: 0,
            done: false,
            length_unknown,
        }
    }
}

impl HttpBody for AnswerBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let frame = Pin::new(&mut this.inner).poll_frame(cx);
        match &frame {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.sent += data.len() as u64;
                    this.ctx.metrics.add_bytes_out(data.len());
                }
                // Trailers end a body; hyper may not ask for more after them.
                this.done |= frame.is_trailers();
            }
            Poll::Ready(Some(Err(e))) => {
                this.done = true;
                broke_off(this, e.to_string());
            }
            Poll::Ready(None) => this.done = true,
            Poll::Pending => {}
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        if self.length_unknown {
            return SizeHint::default();
        }
        self.inner.size_hint()
    }
}

/// Logs at warn and counts an answer that broke off after its head. Its 200 (or other
/// status) has gone to the caller and stays counted; this says the answer was not whole.
/// The session's end, if it comes, may come just after the channel's: waited for apart.
fn broke_off(body: &AnswerBody, detail: String) {
    let (ctx, live, span, bytes) = (
        body.ctx.clone(),
        body.live.clone(),
        body.span.clone(),
        body.sent,
    );
    // Owned by the relay's tracker: a shutdown waits for it (at most SESSION_END_WAIT).
    let tasks = ctx.tasks.clone();
    tasks.spawn(async move {
        let tunnel_lost = live.ended_within(super::call::SESSION_END_WAIT).await;
        let _in_call = span.enter();
        if ctx.is_cutting_off() {
            warn!(bytes, "the answer was cut off by the relay's shutdown");
            return;
        }
        if tunnel_lost {
            ctx.metrics.call_broke_off(BreakCause::TUNNEL_LOST);
            warn!(
                bytes,
                %detail,
                "the answer broke off after its head: the tunnel to the agent was lost; the caller got its status and `bytes` of the body"
            );
        } else {
            ctx.metrics.call_broke_off(BreakCause::AGENT);
            warn!(
                bytes,
                %detail,
                "the answer broke off after its head: the agent ended it early (its internal server's answer broke off, or the agent cut it: see the agent's log for this request id); the caller got its status and `bytes` of the body"
            );
        }
    });
}

impl Drop for AnswerBody {
    fn drop(&mut self) {
        // hyper drops a body it has sent whole without asking for its end.
        if self.done || self.inner.is_end_stream() {
            return;
        }
        let bytes = self.sent;
        if self.ctx.is_cutting_off() {
            self.span
                .in_scope(|| warn!(bytes, "the answer was cut off by the relay's shutdown"));
            return;
        }
        self.span.in_scope(|| {
            info!(
                bytes,
                "the caller did not take the whole answer (it hung up, or stopped reading for call_timeout)"
            )
        });
    }
}
