//! The postern relay: an SSH server agents dial out to, an HTTP API callers use,
//! and the registry that joins the two. `cli` is what the binary runs.
//!
//! # Layout
//! - [`config`]: the relay's TOML config and its defaults.
//! - [`host_key`]: the Ed25519 host key in the state folder and its fingerprint.
//! - [`store`]: agents and API keys at rest, behind the [`store::Store`] trait (SQLite).
//! - [`secrets`]: making tokens and keys from the OS's randomness.
//! - [`auth_throttle`]: the growing delay for failed SSH logins, per source address.
//! - [`context`]: what every part of a running relay shares.
//! - [`registry`]: the live agent sessions, one per agent.
//! - [`ssh_server`]: accepting agent connections and their russh handler.
//! - [`control`]: the hello/welcome exchange that brings an agent online.
//! - [`channel_connector`]: HTTP/1.1 connections that are SSH channels to an agent.
//! - [`revocation_watch`]: drops sessions of agents revoked by another process.
//! - [`api`]: the HTTP API (axum).
//! - [`server`]: `run`, which starts all of the above and drains on shutdown.
//! - [`cli`]: the `postern-relay` command line.

pub mod api;
pub mod auth_throttle;
pub mod channel_connector;
pub mod cli;
pub mod config;
pub mod context;
pub mod control;
pub mod host_key;
pub mod registry;
pub mod revocation_watch;
pub mod secrets;
pub mod server;
pub mod ssh_server;
pub mod store;

pub use config::RelayConfig;
pub use server::{RelayListeners, run};
