//! Signals listened for as a long-running command starts; when one cannot be, the log
//! says what the operator loses, and the command runs on without it.

use tokio::signal::unix::{Signal, SignalKind, signal};

/// Listens for `kind` (needs a Tokio runtime); `None` after a warning naming `name` and
/// `without`, what does not work then.
pub fn listen_or_warn(kind: SignalKind, name: &str, without: &str) -> Option<Signal> {
    signal(kind)
        .inspect_err(|e| tracing::warn!(error = %e, "cannot listen for {name}; {without}"))
        .ok()
}

/// SIGTERM and SIGINT, listened for as a long-running command starts: the first starts
/// its drain, a second ends the drain at once.
pub struct StopSignals {
    term: Option<Signal>,
    interrupt: Option<Signal>,
}

impl StopSignals {
    /// Listens for both (needs a Tokio runtime); `program` names who cannot then be
    /// stopped with one that cannot be listened for.
    pub fn listen(program: &str) -> Self {
        let without = format!("{program} cannot be stopped with it");
        Self {
            term: listen_or_warn(SignalKind::terminate(), "SIGTERM", &without),
            interrupt: listen_or_warn(SignalKind::interrupt(), "SIGINT", &without),
        }
    }

    /// The next SIGTERM or SIGINT; never, when neither is listened for.
    pub async fn next(&mut self) {
        async fn one(signal: &mut Option<Signal>) {
            // A stream that cannot deliver (not listened for, or closed) never fires.
            if let Some(s) = signal
                && s.recv().await.is_some()
            {
                return;
            }
            std::future::pending().await
        }
        tokio::select! {
            _ = one(&mut self.term) => {}
            _ = one(&mut self.interrupt) => {}
        }
    }
}
