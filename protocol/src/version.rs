//! The protocol version the agent announces in its hello and the relay accepts.
//! Bump it only for changes an older peer would misread.

/// Version of the agent ⇄ relay protocol (control messages and channel targets).
pub const PROTOCOL_VERSION: u32 = 2;

/// The first version whose relay, told `draining`, closes the agent's channels itself
/// (see `control::AgentMessage::Draining`). Facing an older relay, a draining agent
/// closes them itself, as all did before.
pub const RELAY_CLOSES_DRAINING: u32 = 2;

/// Oldest agent protocol version this build of the relay still serves.
pub const MIN_SUPPORTED_PROTOCOL_VERSION: u32 = 1;

/// The address the agent asks the relay to forward (`tcpip-forward`); the relay
/// opens every call channel as a `forwarded-tcpip` channel for this address.
pub const FORWARD_ADDRESS: &str = "postern";

/// The SSH user name the agent authenticates with; the token alone names the agent.
pub const SSH_USER: &str = "postern-agent";

/// The git commit this build was made from (`unknown` outside a git checkout).
pub const GIT_COMMIT: &str = env!("POSTERN_GIT_COMMIT");

/// What `--version` prints after the program name: `0.1.0 (commit 1a2b3c4d5e6f)`.
pub const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("POSTERN_GIT_COMMIT"),
    ")"
);
