//! Whether a call channel has a call under way, shared by the stream hyper reads
//! (`guarded_io`) and the service that runs each call.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};

use http_body_util::BodyExt;

use crate::call::CallBody;

pub struct CallState {
    /// Calls whose head came whole, counted so the stream sees each new one.
    started: AtomicU64,
    /// From a call's head until its answer is written (or dropped).
    busy: AtomicBool,
}

impl CallState {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            started: AtomicU64::new(0),
            busy: AtomicBool::new(false),
        })
    }

    /// A call's head came whole.
    pub fn call_started(&self) {
        self.busy.store(true, SeqCst);
        self.started.fetch_add(1, SeqCst);
    }

    /// The call's answer, which marks the call done as hyper lets go of it (written, or the
    /// channel gone).
    pub fn answer(self: &Arc<Self>, body: CallBody) -> CallBody {
        let done = CallDone(self.clone());
        BodyExt::boxed(body.map_frame(move |frame| {
            let _held = &done;
            frame
        }))
    }

    pub fn started(&self) -> u64 {
        self.started.load(SeqCst)
    }

    /// Whether bytes read now begin a request head: no call is under way (during one they
    /// are its request body).
    pub fn head_may_begin(&self) -> bool {
        !self.busy.load(SeqCst)
    }
}

struct CallDone(Arc<CallState>);

impl Drop for CallDone {
    fn drop(&mut self) {
        self.0.busy.store(false, SeqCst);
    }
}
