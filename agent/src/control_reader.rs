//! The relay's control lines after its welcome: an `ending` goes to the session; any other
//! line is ignored, and logged as a short summary within a budget per session.

use std::borrow::Cow;

use postern_protocol::control::{EndReason, MAX_CONTROL_LINE, RelayMessage, decode_line};
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader, Take};
use tokio::sync::mpsc;
use tracing::warn;

use postern_logs::LogBudget;

/// Lines a minute about the lines one session's relay sends and the agent ignores: the
/// relay decides how many it sends, not how many lines the agent logs (as the relay's
/// own budget for what an agent sends).
const IGNORED_LOG_LINES: u32 = 10;

/// The longest message type a log line shows: a relay picks it, up to 64 KiB.
const SHOWN_TYPE_CHARS: usize = 64;

/// The relay ends the session, and why.
pub(crate) struct Ending {
    pub reason: EndReason,
    pub message: String,
}

/// Reads the relay's control lines until EOF, passing each `ending` on.
///
/// Other lines do not end the session, junk included: the budget already bounds their
/// log, SSH makes sure only the relay itself can have written them, and a session ended
/// for them would be followed within half a second by the next (a short session's
/// reconnect), whose own lines would log more than the budget lets through.
pub(crate) async fn read_control<R: AsyncRead + Unpin>(
    mut reader: BufReader<Take<R>>,
    endings: mpsc::Sender<Ending>,
) {
    let mut budget = LogBudget::per_minute(IGNORED_LOG_LINES, "about this session's messages");
    let mut line = Vec::new();
    loop {
        line.clear();
        // Each line gets the full length allowance.
        reader.get_mut().set_limit(MAX_CONTROL_LINE as u64 + 1);
        match reader.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let ignored = match decode_line::<RelayMessage>(&line) {
            Ok(RelayMessage::Ending { reason, message }) => {
                if endings.send(Ending { reason, message }).await.is_err() {
                    return;
                }
                continue;
            }
            Ok(RelayMessage::Welcome { .. }) => Ignored::Unexpected("welcome"),
            Ok(RelayMessage::Refused { .. }) => Ignored::Unexpected("refused"),
            Err(_) => Ignored::of(&line),
        };
        let Some(left_out) = budget.take() else {
            continue;
        };
        let bytes = line.len();
        match ignored {
            Ignored::Unexpected(kind) => {
                warn!(message_type = %kind, bytes, "unexpected control message ignored{left_out}");
            }
            // A newer relay may say what this agent does not know yet.
            Ignored::Unreadable(kind) => {
                warn!(message_type = %kind, bytes, "control message this agent cannot read ignored (from a newer relay?){left_out}");
            }
            Ignored::Malformed => {
                warn!(
                    bytes,
                    "malformed control line ignored: not a JSON object with a type{left_out}"
                );
            }
        }
    }
}

/// What an ignored line was, in a few words whatever its size: the relay's words, which
/// may be 64 KiB a line, are not logged.
enum Ignored<'a> {
    /// A message this agent knows, out of its place (a second welcome).
    Unexpected(&'static str),
    /// A JSON object with a `type` that does not decode as any message this agent knows,
    /// as a newer relay's would; the type, cut to [`SHOWN_TYPE_CHARS`].
    Unreadable(Cow<'a, str>),
    /// No control message of any version: not a JSON object with a string `type`.
    Malformed,
}

impl<'a> Ignored<'a> {
    /// A line that did not decode as a [`RelayMessage`].
    fn of(line: &'a [u8]) -> Self {
        #[derive(Deserialize)]
        struct Typed<'a> {
            #[serde(rename = "type", borrow)]
            kind: Cow<'a, str>,
        }
        match decode_line::<Typed>(line) {
            Ok(Typed { kind }) => Self::Unreadable(cut(kind, SHOWN_TYPE_CHARS)),
            Err(_) => Self::Malformed,
        }
    }
}

/// `text`'s first `chars` characters, and `…` if there were more.
fn cut(text: Cow<'_, str>, chars: usize) -> Cow<'_, str> {
    match text.char_indices().nth(chars) {
        Some((end, _)) => format!("{}…", &text[..end]).into(),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ignored_line_is_summed_up_in_a_few_words() {
        let kind = |line: &[u8]| match Ignored::of(line) {
            Ignored::Unreadable(kind) => Some(kind.into_owned()),
            Ignored::Malformed => None,
            Ignored::Unexpected(_) => unreachable!("`of` never says so"),
        };
        assert_eq!(kind(b"x\n"), None);
        assert_eq!(kind(b"[1,2]\n"), None);
        assert_eq!(kind(b"{\"type\":7}\n"), None);
        assert_eq!(kind(b"{\"kind\":\"welcome\"}\n"), None);
        assert_eq!(
            kind(b"{\"type\":\"pause\",\"for\":30}\n").as_deref(),
            Some("pause")
        );
        // A known type whose fields this agent cannot read, as a newer relay's could be.
        assert_eq!(
            kind(b"{\"type\":\"welcome\"}\n").as_deref(),
            Some("welcome")
        );
        let long = format!("{{\"type\":\"{}\"}}\n", "é".repeat(30_000));
        let shown = kind(long.as_bytes()).expect("a type");
        assert_eq!(shown, format!("{}…", "é".repeat(SHOWN_TYPE_CHARS)));
    }
}
