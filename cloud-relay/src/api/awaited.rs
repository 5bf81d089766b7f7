//! Whether the request that asked for a new secret is still there to receive it: a
//! secret stored for a caller that went away (or past `api_timeout`) would be seen by no one.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tracing::{info, warn};

use crate::context::RelayContext;
use crate::store::{Store, StoreError};

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

/// Stores a new secret's record with `create`, run to its end even if the request is
/// given up on; when by then nobody waits for the answer, `undo` removes the record again
/// and the error says so. An undo that fails is logged: a `what` whose secret no one saw
/// is left, to be revoked.
pub async fn create_shown<T: Clone + Send + 'static>(
    ctx: &Arc<RelayContext>,
    what: &'static str,
    create: impl FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
    undo: impl FnOnce(&dyn Store, &T) -> Result<(), StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    // Dropped with this future, that is with the handler.
    let (_awaiting, awaited) = awaiting();
    let work = ctx.clone();
    ctx.to_completion(async move {
        let record = work.store_write(create).await?;
        if let Err(gone) = awaited.still() {
            let made = record.clone();
            match work.store_write(move |store| undo(store, &made)).await {
                Ok(()) => info!(what, "made for a request given up on, and removed again"),
                Err(e) => {
                    warn!(what, error = %e, "made for a request given up on, and not removed again: its secret was never shown; revoke it");
                }
            }
            return Err(StoreError::NotShown(gone));
        }
        Ok(record)
    })
    .await
}
