//! Control messages on the channel the agent opens after authenticating:
//! one JSON object per line, the agent's hello first, the relay's answer second.

use serde::{Deserialize, Serialize};

/// Longest control line either side reads, in bytes; a longer line is an error.
pub const MAX_CONTROL_LINE: usize = 64 * 1024;

/// Messages the agent sends to the relay. Fields a later version adds are ignored, not
/// refused: the hello comes before either side knows the other's version, so a field
/// added to it would otherwise cut a newer agent off from every older relay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AgentMessage {
    /// First line: who the agent is and which connections it serves (names only).
    Hello {
        protocol_version: u32,
        agent_version: String,
        connections: Vec<String>,
    },
    /// After a reload changed which connections the agent serves: the full new list.
    /// A relay that predates it reads and ignores it.
    Inventory { connections: Vec<String> },
    /// The agent is stopping or reconnecting and takes no new calls. The relay answers
    /// new calls itself and closes the channels it holds to the agent, each idle one at
    /// once and each busy one when its call ends: only the relay knows which of them has
    /// a request on its way, so the agent closes none. Sent only to a relay of protocol
    /// `RELAY_CLOSES_DRAINING` or later (an older one would ignore it).
    Draining,
}

/// Messages the relay sends to the agent; fields a later version adds are ignored, as above.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RelayMessage {
    /// The hello was accepted: the agent is online and calls may arrive.
    Welcome {
        protocol_version: u32,
        agent_id: String,
        agent_name: String,
    },
    /// The hello was refused; the relay closes the session after this line.
    Refused { code: String, message: String },
    /// The relay is about to end this session, and why; the SSH disconnect follows.
    Ending { reason: EndReason, message: String },
}

/// Why the relay ends a session, so the agent can act on it without parsing text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// Another session of the same agent (the same token) connected.
    Replaced,
    /// The agent was revoked.
    Revoked,
    /// The agent's token was rotated and the old one is no longer accepted.
    TokenRotated,
}

impl EndReason {
    /// The words the relay logs, counts and sends as the SSH disconnect description.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Replaced => "replaced by a newer session of the same agent",
            Self::Revoked => "agent revoked",
            Self::TokenRotated => "token rotated",
        }
    }
}

/// Its message says the cause, and it exposes none as its source, so a `{:#}` chain says it once.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("control line longer than {MAX_CONTROL_LINE} bytes")]
    TooLong,
    #[error("malformed control message: {0}")]
    Malformed(serde_json::Error),
}

impl From<serde_json::Error> for ControlError {
    fn from(e: serde_json::Error) -> Self {
        Self::Malformed(e)
    }
}

/// Encodes a message as one line, newline included.
pub fn encode_line<T: Serialize>(msg: &T) -> Vec<u8> {
    // Serialising these plain enums cannot fail: no maps with non-string keys.
    let mut line = serde_json::to_vec(msg).unwrap_or_default();
    line.push(b'\n');
    line
}

/// Decodes one line (with or without its newline).
pub fn decode_line<'a, T: Deserialize<'a>>(line: &'a [u8]) -> Result<T, ControlError> {
    if line.len() > MAX_CONTROL_LINE {
        return Err(ControlError::TooLong);
    }
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    Ok(serde_json::from_slice(line)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_round_trips() {
        let hello = AgentMessage::Hello {
            protocol_version: 1,
            agent_version: "0.1.0".into(),
            connections: vec!["orders".into()],
        };
        let line = encode_line(&hello);
        assert_eq!(line.last(), Some(&b'\n'));
        assert_eq!(decode_line::<AgentMessage>(&line).expect("decodes"), hello);
    }

    #[test]
    fn inventory_round_trips() {
        let inventory = AgentMessage::Inventory {
            connections: vec!["orders".into(), "erp".into()],
        };
        let line = encode_line(&inventory);
        assert_eq!(
            std::str::from_utf8(&line).expect("utf-8"),
            "{\"type\":\"inventory\",\"connections\":[\"orders\",\"erp\"]}\n"
        );
        assert_eq!(
            decode_line::<AgentMessage>(&line).expect("decodes"),
            inventory
        );
    }

    #[test]
    fn draining_is_its_type_alone() {
        let line = encode_line(&AgentMessage::Draining);
        assert_eq!(line, b"{\"type\":\"draining\"}\n");
        assert_eq!(
            decode_line::<AgentMessage>(&line).expect("decodes"),
            AgentMessage::Draining
        );
    }

    #[test]
    fn ending_carries_a_typed_reason() {
        let ending = RelayMessage::Ending {
            reason: EndReason::TokenRotated,
            message: EndReason::TokenRotated.describe().into(),
        };
        let line = encode_line(&ending);
        assert!(
            std::str::from_utf8(&line)
                .expect("utf-8")
                .starts_with("{\"type\":\"ending\",\"reason\":\"token_rotated\"")
        );
        assert_eq!(decode_line::<RelayMessage>(&line).expect("decodes"), ending);
    }

    /// A later version's extra field is ignored (both ways); a message missing a field,
    /// of an unknown type, or not JSON, is refused.
    #[test]
    fn ignores_added_fields_and_refuses_garbage() {
        let hello = decode_line::<AgentMessage>(b"{\"type\":\"hello\",\"protocol_version\":3,\"agent_version\":\"x\",\"connections\":[\"a\"],\"capabilities\":[\"gzip\"]}");
        assert_eq!(
            hello.expect("an added field is ignored"),
            AgentMessage::Hello {
                protocol_version: 3,
                agent_version: "x".to_owned(),
                connections: vec!["a".to_owned()],
            }
        );
        let welcome = decode_line::<RelayMessage>(b"{\"type\":\"welcome\",\"protocol_version\":3,\"agent_id\":\"agt_1\",\"agent_name\":\"n\",\"region\":\"eu\"}");
        assert!(
            matches!(welcome, Ok(RelayMessage::Welcome { .. })),
            "{welcome:?}"
        );
        assert!(
            decode_line::<AgentMessage>(
                b"{\"type\":\"hello\",\"protocol_version\":1,\"connections\":[]}"
            )
            .is_err()
        );
        assert!(decode_line::<AgentMessage>(b"\xff\xfe").is_err());
        assert!(decode_line::<RelayMessage>(b"{\"type\":\"nope\"}").is_err());
        assert!(matches!(
            decode_line::<AgentMessage>(&vec![b' '; MAX_CONTROL_LINE + 1]),
            Err(ControlError::TooLong)
        ));
    }

    #[test]
    fn a_malformed_line_says_its_cause_once() {
        let Err(e) = decode_line::<RelayMessage>(b"{\"type\":") else {
            panic!("garbage decoded");
        };
        assert!(std::error::Error::source(&e).is_none(), "{e}");
        assert!(
            e.to_string().starts_with("malformed control message: EOF"),
            "{e}"
        );
    }
}
