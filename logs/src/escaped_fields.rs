//! How text log lines write fields: like tracing-subscriber's default, but with every
//! value escaped by [`printable`], so a peer's text cannot forge a line of its own.
//!
//! The default writes `%` fields and the message as they are: an agent name of
//! `x\n… ERROR …` taken from a request path would become a second journal entry.

use std::fmt::{self, Write as _};

use tracing_subscriber::field::{RecordFields, Visit};
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::format::Writer;

use crate::printable::printable;

/// `message` first as it is, then `name=value` separated by spaces, values escaped.
pub struct EscapedFields;

impl<'writer> FormatFields<'writer> for EscapedFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'writer>, fields: R) -> fmt::Result {
        let mut visitor = Escaping {
            writer,
            empty: true,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct Escaping<'writer> {
    writer: Writer<'writer>,
    empty: bool,
    result: fmt::Result,
}

impl Visit for Escaping<'_> {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "message" {
            self.record_debug(field, &format_args!("{value}"));
        } else {
            self.record_debug(field, &value);
        }
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
        let name = field.name();
        // Metadata of lines from the `log` crate (russh's), shown by the line's own header.
        if self.result.is_err() || name.starts_with("log.") {
            return;
        }
        let pad = if self.empty { "" } else { " " };
        self.empty = false;
        self.result = match name {
            "message" => write!(self.writer, "{pad}"),
            name => write!(
                self.writer,
                "{pad}{}=",
                name.strip_prefix("r#").unwrap_or(name)
            ),
        }
        .and_then(|()| write!(Escaped(&mut self.writer), "{value:?}"));
    }
}

/// Writes what it is given through [`printable`], piece by piece: no copy of the value.
struct Escaped<'a, W>(&'a mut W);

impl<W: fmt::Write> fmt::Write for Escaped<'_, W> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        self.0.write_str(&printable(text))
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};

    use super::EscapedFields;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0
                .lock()
                .map_err(|_| io::ErrorKind::Other)?
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn peer_text_stays_on_its_line() {
        let out = Captured::default();
        let writer = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .fmt_fields(EscapedFields)
            .with_ansi(false)
            .without_time()
            .with_writer(move || writer.clone())
            .finish();
        let agent = "x\n2026-01-01T00:00:00Z ERROR agent revoked";
        let reason = "bye\u{1b}[2J\r";
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("call", %agent, connection = "c\u{7}");
            let _in = span.enter();
            tracing::warn!(%reason, r#type = 7, count = 3, "call failed: {agent}");
        });
        let text = String::from_utf8(out.0.lock().expect("lock").clone()).expect("utf-8");
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.ends_with('\n'), "{text:?}");
        assert!(
            text.contains(
                r#"call{agent=x\n2026-01-01T00:00:00Z ERROR agent revoked connection="c\u{7}"}"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r"call failed: x\n2026-01-01T00:00:00Z ERROR agent revoked reason=bye\u{1b}[2J\r type=7 count=3"),
            "{text}"
        );
    }
}
