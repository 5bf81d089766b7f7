//! The words the postern agent and relay share: versions, channel targets,
//! control messages, error codes, token format and API JSON. Pure data and parsing.
//!
//! # Layout
//! - [`version`]: the protocol version both sides announce.
//! - [`target`]: what a channel opened by the relay asks for (`http:<connection>`).
//! - [`control`]: the hello/welcome exchange on the agent's control channel.
//! - [`error`]: stable error codes and the JSON error body.
//! - [`token`]: access tokens and API keys: prefix, body, checksum.
//! - [`headers`]: header names and the hop-by-hop list.
//! - [`api`]: JSON bodies of the relay's HTTP API.
//! - [`certificate`]: fields of an X.509 certificate: its public key, its validity dates.
//! - With the feature `io`, the only I/O here, so both sides do it the same way:
//!   `channel_io`, a channel as a byte stream for HTTP over SSH, and
//!   `upload_progress`, the wait for an answer's head counted from the request
//!   body's last progress; `silent_link`, the socket option that ends an SSH link
//!   gone silent under unacknowledged data.

pub mod api;
pub mod certificate;
#[cfg(feature = "io")]
pub mod channel_io;
pub mod control;
pub mod error;
pub mod headers;
#[cfg(feature = "io")]
pub mod silent_link;
pub mod target;
pub mod token;
#[cfg(feature = "io")]
pub mod upload_progress;
pub mod version;

pub use error::{ErrorBody, ErrorCode};
pub use target::{ChannelTarget, ConnectionName};
pub use token::{SecretKind, SecretToken, TokenError};
pub use version::PROTOCOL_VERSION;
