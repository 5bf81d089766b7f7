//! The `--log-level` / `--log-format` options both binaries take, and the subscriber
//! they set up: one line shape for the relay and the agent alike.

use tracing_subscriber::EnvFilter;

use crate::FlushGuard;

/// Logging options, flattened into each binary's top-level arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
    /// Log filter, e.g. `debug` or `info,russh=debug` (overrides RUST_LOG).
    #[arg(long, global = true, env = "POSTERN_LOG", value_parser = log_filter)]
    pub log_level: Option<String>,
    /// Log line format: `text` for people, `json` (one object a line) for log shippers.
    #[arg(
        long,
        global = true,
        env = "POSTERN_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,
}

/// A filter whose bare words are all levels. `EnvFilter` takes a bare word that is not a
/// level as a target to log at every level, so a mistyped `warning` or `inof` would
/// silently drop every line; a target is still named as `target=level`.
/// The directives are returned trimmed: checked one way and applied another, a space
/// after a comma (`info, russh=debug`) dropped that directive, and a trailing one
/// (`debug `) every line. None at all is the default, `info`.
fn log_filter(text: &str) -> Result<String, String> {
    const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
    let directives: Vec<&str> = text
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .collect();
    for &directive in &directives {
        if !directive.contains('=') && !LEVELS.contains(&directive.to_ascii_lowercase().as_str()) {
            return Err(format!(
                "{directive:?} is not a log level: use one of {}, or TARGET=LEVEL (e.g. info,russh=debug)",
                LEVELS.join(", ")
            ));
        }
        directive
            .parse::<tracing_subscriber::filter::Directive>()
            .map_err(|e| format!("{directive:?}: {e}"))?;
    }
    if directives.is_empty() {
        return Ok("info".to_owned());
    }
    Ok(directives.join(","))
}

/// `RUST_LOG` as the ecosystem reads it (a bare `russh` is that target at every level),
/// else `info`. One that does not parse is said on stderr rather than dropped without a word.
fn from_rust_log() -> EnvFilter {
    let Some(value) = std::env::var_os(EnvFilter::DEFAULT_ENV) else {
        return EnvFilter::new("info");
    };
    let value = value.to_string_lossy();
    let directives: Vec<&str> = value
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .collect();
    if directives.is_empty() {
        return EnvFilter::new("info");
    }
    match EnvFilter::try_new(directives.join(",")) {
        Ok(filter) => filter,
        Err(e) => {
            eprintln!("warning: RUST_LOG {value:?} is not a log filter ({e}); logging at info");
            EnvFilter::new("info")
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

impl LogArgs {
    /// Logs go to stderr in batches from a thread of their own ([`crate::batched`]),
    /// filtered by `--log-level`, else `RUST_LOG`, else `info`. Text is coloured only
    /// on a terminal, and its field values have control characters escaped. A JSON line holds `timestamp`, `level`, `target`, the event's
    /// fields (`message` among them) at the top level and the current span's fields
    /// under `span`. Keep the guard: dropping it writes what is pending.
    pub fn init(&self) -> FlushGuard {
        let (writer, guard) = crate::batched(std::io::stderr());
        let filter = match self.log_level.as_deref() {
            Some(level) => EnvFilter::new(level),
            None => from_rust_log(),
        };
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(move || writer.clone());
        // A second init (tests that run `main` twice) keeps the first subscriber.
        let _ = match self.log_format {
            LogFormat::Json => builder
                .json()
                .flatten_event(true)
                .with_current_span(true)
                // `span` holds the current one; the list of all would repeat it.
                .with_span_list(false)
                .try_init(),
            LogFormat::Text => builder
                .fmt_fields(crate::escaped_fields::EscapedFields)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .try_init(),
        };
        guard
    }
}

#[cfg(test)]
mod tests {
    use super::log_filter;

    #[test]
    fn bare_words_must_be_levels() {
        for good in [
            "info",
            "DEBUG",
            "warn,russh=debug",
            "postern_relay=trace",
            "off",
            "",
        ] {
            assert!(log_filter(good).is_ok(), "{good}");
        }
        for bad in ["warning", "inof", "info,russh", "russh=loud"] {
            assert!(log_filter(bad).is_err(), "{bad}");
        }
        // Applied as checked: trimmed, and none at all is the default.
        assert_eq!(
            log_filter("info, russh=debug ").as_deref(),
            Ok("info,russh=debug")
        );
        assert_eq!(log_filter("debug ").as_deref(), Ok("debug"));
        assert_eq!(log_filter(" , ").as_deref(), Ok("info"));
        assert_eq!(log_filter("").as_deref(), Ok("info"));
    }
}
