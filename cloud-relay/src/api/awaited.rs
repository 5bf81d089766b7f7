//! Whether the request that asked for a new secret is still there to receive it: a
//! secret stored for a caller that went away (or past `api_timeout`) would be seen by no one.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Held by the handler; dropping it (the handler given up on) marks the answer unawaited.
pub struct Awaiting(Arc<AtomicBool>);

/// Asked by the work that outlives the handler, just before it keeps the secret.
#[derive(Clone)]
pub struct Awaited(Arc<AtomicBool>);

pub fn awaiting() -> (Awaiting, Awaited) {
    let gone = Arc::new(AtomicBool::new(false));
    (Awaiting(gone.clone()), Awaited(gone))
}

impl Drop for Awaiting {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

impl Awaited {
    /// `Ok` while the handler waits; an error to undo the change with once it is gone.
    pub fn still(&self) -> std::io::Result<()> {
        if self.0.load(Ordering::SeqCst) {
            return Err(std::io::Error::other(
                "the request was given up on (its caller gone, or api_timeout) before the secret could be shown",
            ));
        }
        Ok(())
    }
}
