//! A signal listened for as a long-running command starts; when it cannot be, the log
//! says what the operator loses, and the command runs on without it.

use tokio::signal::unix::{Signal, SignalKind, signal};

/// Listens for `kind` (needs a Tokio runtime); `None` after a warning naming `name` and
/// `without`, what does not work then.
pub fn listen_or_warn(kind: SignalKind, name: &str, without: &str) -> Option<Signal> {
    signal(kind)
        .inspect_err(|e| tracing::warn!(error = %e, "cannot listen for {name}; {without}"))
        .ok()
}
