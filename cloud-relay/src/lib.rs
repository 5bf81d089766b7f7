//! The postern relay: an SSH server agents dial out to, an HTTP API callers use,
//! and the registry that joins the two. `cli` is what the binary runs.
//!
//! # Layout
//! - [`config`]: the relay's TOML config and its defaults.
//! - [`host_key`]: the Ed25519 host key in the state folder and its fingerprint.
//! - [`state_lock`]: one `serve` per state folder.
//! - [`store`]: agents and API keys at rest, behind the [`store::Store`] trait (SQLite).
//! - [`secrets`]: making tokens and keys from the OS's randomness.
//! - [`auth_throttle`]: the growing delay for failed SSH logins, per source address.
//! - [`keyed_slots`]: places counted per key, given back when dropped.
//! - [`address_slots`]: how many handshakes one source address may hold at once.
//! - [`context`]: what every part of a running relay shares.
//! - [`lookups`]: the per-call API key and agent lookups, cached until the store changes.
//! - [`registry`]: the live agent sessions, one per agent.
//! - [`ssh_server`]: accepting agent connections and their russh handler.
//! - [`login_end`]: a login ended with the relay's own reason rather than refused.
//! - [`control`]: the hello/welcome exchange that brings an agent online.
//! - [`channel_pool`]: HTTP/1.1 connections that are SSH channels to an agent, kept for reuse.
//! - [`idle_channels`]: closes pooled channels left idle too long.
//! - [`revocation_watch`]: drops sessions of agents revoked by another process.
//! - [`metrics`]: Prometheus counters and their text encoding (`/metrics`).
//! - [`api`]: the HTTP API (axum).
//! - [`tls`]: the API's rustls settings from PEM files, reloaded on SIGHUP.
//! - [`cert_dates`]: the API certificate's validity dates.
//! - [`api_server`]: HTTP/1.1 for the API with header size and read-time limits.
//! - [`lingering_close`]: closing an API connection without resetting its last answer.
//! - [`server`]: `run`, which starts all of the above and drains on shutdown.
//! - [`health`]: `postern-relay health`, asking a running relay's API whether it serves.
//! - [`cli`]: the `postern-relay` command line.

pub mod address_slots;
pub mod api;
pub mod api_server;
pub mod auth_throttle;
pub mod cert_dates;
pub mod channel_pool;
pub mod cli;
pub mod config;
pub mod context;
pub mod control;
pub mod health;
pub mod host_key;
pub mod idle_channels;
pub mod keyed_slots;
pub mod lingering_close;
pub mod login_end;
pub mod lookups;
pub mod metrics;
pub mod registry;
pub mod revocation_watch;
pub mod secrets;
pub mod server;
pub mod ssh_server;
pub mod state_lock;
pub mod store;
pub mod tls;

pub use config::RelayConfig;
pub use server::{RelayListeners, run};
