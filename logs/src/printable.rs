//! Text from the network made safe to show: control characters and the bidirectional
//! overrides escaped, so a peer's words cannot start a line or drive a terminal.

use std::borrow::Cow;

/// `text` with control characters (and the bidirectional overrides that reorder what a
/// terminal shows) escaped as `\u{1b}`, `\n`…: names, reasons and paths that come from a
/// peer must neither forge a log line nor drive the admin's terminal. JSON output is
/// escaped by serde already.
pub fn printable(text: &str) -> Cow<'_, str> {
    if !text.chars().any(unsafe_char) {
        return text.into();
    }
    let mut escaped = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if unsafe_char(c) {
            escaped.extend(c.escape_default());
        } else {
            escaped.push(c);
        }
    }
    escaped.into()
}

fn unsafe_char(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::printable;

    #[test]
    fn peer_text_cannot_drive_the_terminal() {
        assert_eq!(printable("agent a1"), "agent a1");
        assert_eq!(printable("café ✓"), "café ✓");
        assert_eq!(
            printable("bye\u{1b}]0;pwned\u{7}\u{1b}[2J\r\nfake line\u{9b}"),
            "bye\\u{1b}]0;pwned\\u{7}\\u{1b}[2J\\r\\nfake line\\u{9b}"
        );
        assert_eq!(printable("a\u{202e}b"), "a\\u{202e}b");
    }
}
