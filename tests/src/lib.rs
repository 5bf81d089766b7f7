//! Test support shared by the end-to-end tests and the local demo: an internal
//! server that checks JWTs itself, key generation, and process harnesses.
//!
//! # Layout
//! - [`internal_server`]: a demo internal API that accepts only valid JWTs signed for it.
//! - [`keys`]: RSA test keys made with aws-lc-rs, as PEM.
//! - [`netns`]: a cloud and an on-prem network namespace behind a real firewall.
//! - [`harness`]: starts the real relay and agent binaries on loopback and waits until ready.
//! - [`hand_relay`]: a relay driven by hand, for what the agent does when its relay misbehaves.
//! - [`store_reads`]: a running relay's store whose reads fail for a while.
//! - [`temp`]: throwaway folders removed on drop.

pub mod hand_relay;
pub mod harness;
pub mod internal_server;
pub mod keys;
pub mod netns;
pub mod paced_body;
pub mod pki;
pub mod relay_support;
pub mod store_reads;
pub mod temp;
pub mod token_endpoint;
