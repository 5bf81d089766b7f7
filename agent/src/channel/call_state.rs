//! Whether a call channel has a call under way, shared by the stream hyper reads
//! (`guarded_io`) and the service that runs each call, with what the stream needs of it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::BodyExt;

use crate::call::CallBody;

pub struct CallState {
    /// Calls whose head came whole, counted so the stream sees each new one.
    started: AtomicU64,
    /// From a call's head until its answer is written (or dropped).
    busy: AtomicBool,
    /// How long a write to the channel may wait for the relay to take it, this call.
    write_limit_ms: AtomicU64,
    request_id: Mutex<Arc<str>>,
}

impl CallState {
    pub fn new(write_limit: Duration) -> Arc<Self> {
        Arc::new(Self {
            started: AtomicU64::new(0),
            busy: AtomicBool::new(false),
            write_limit_ms: AtomicU64::new(millis(write_limit)),
            request_id: Mutex::new("-".into()),
        })
    }

    /// A call's head came whole; its writes may wait `write_limit`.
    pub fn call_started(&self, request_id: Arc<str>, write_limit: Duration) {
        *self.request_id.lock().unwrap_or_else(|p| p.into_inner()) = request_id;
        self.write_limit_ms.store(millis(write_limit), SeqCst);
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

    pub fn write_limit(&self) -> Duration {
        Duration::from_millis(self.write_limit_ms.load(SeqCst))
    }

    pub fn request_id(&self) -> Arc<str> {
        self.request_id
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

struct CallDone(Arc<CallState>);

impl Drop for CallDone {
    fn drop(&mut self) {
        self.0.busy.store(false, SeqCst);
    }
}
