//! Header names both sides use, and the hop-by-hop headers that never cross a hop.
//! Lower-case, as HTTP/2 and `http::HeaderName` want them.

/// Request id carried from the caller through the relay to the agent and back.
pub const REQUEST_ID: &str = "x-request-id";

/// Set by the agent or relay on responses it made itself (not the upstream's),
/// holding the stable error code, so a caller can tell the two apart.
pub const POSTERN_ERROR: &str = "x-postern-error";

/// Headers that describe one connection only (RFC 9110 §7.6.1), plus the ones
/// each hop sets itself. Never forwarded.
pub const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
];

/// Whether a header must be dropped when a request or response crosses a hop.
pub fn is_hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP.iter().any(|h| h.eq_ignore_ascii_case(name))
}
