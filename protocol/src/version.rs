//! The protocol version the agent announces in its hello and the relay accepts.
//! Bump it only for changes an older peer would misread.

/// Version of the agent ⇄ relay protocol (control messages and channel targets).
pub const PROTOCOL_VERSION: u32 = 1;

/// Oldest agent protocol version this build of the relay still serves.
pub const MIN_SUPPORTED_PROTOCOL_VERSION: u32 = 1;

/// The address the agent asks the relay to forward (`tcpip-forward`); the relay
/// opens every call channel as a `forwarded-tcpip` channel for this address.
pub const FORWARD_ADDRESS: &str = "postern";

/// The SSH user name the agent authenticates with; the token alone names the agent.
pub const SSH_USER: &str = "postern-agent";
