//! Logging for the CLI: a `tracing` subscriber on stderr, filtered by
//! `--log-level`, else `RUST_LOG`, else `info`; text (coloured on a terminal) or JSON lines.

use tracing_appender::non_blocking::{NonBlocking, WorkerGuard};
use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum LogFormat {
    Text,
    Json,
}

/// Logs go to stderr from a thread of their own, in batches: a line per call written
/// inline, under stderr's lock, showed in the call threads' profile. Keep the guard:
/// dropping it flushes.
pub(crate) fn init_tracing(level: Option<&str>, format: LogFormat) -> WorkerGuard {
    let (writer, guard) = non_blocking_stderr();
    let filter = level
        .map(EnvFilter::new)
        .or_else(|| EnvFilter::try_from_default_env().ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
    };
    guard
}

/// stderr behind a queue (blocking, never dropping lines, when full) and a buffer
/// that the writing thread flushes whenever the queue is empty.
fn non_blocking_stderr() -> (NonBlocking, WorkerGuard) {
    tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .finish(std::io::BufWriter::new(std::io::stderr()))
}
