//! Logging for the CLI: a `tracing` subscriber on stderr, filtered by
//! `--log-level`, else `RUST_LOG`, else `info`; text (coloured on a terminal) or JSON lines.

use postern_logs::FlushGuard;
use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum LogFormat {
    Text,
    Json,
}

/// Logs go to stderr in batches from a thread of their own (`postern_logs`). Keep the
/// guard: dropping it writes what is pending.
pub(crate) fn init_tracing(level: Option<&str>, format: LogFormat) -> FlushGuard {
    let (writer, guard) = postern_logs::batched(std::io::stderr());
    let filter = level
        .map(EnvFilter::new)
        .or_else(|| EnvFilter::try_from_default_env().ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(move || writer.clone());
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
