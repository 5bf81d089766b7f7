//! The postern agent: holds a reverse SSH tunnel to the relay and runs the
//! JWT-signed HTTP calls the relay asks for, on connections its config names.
//!
//! # Layout
//! - [`config`]: the agent's TOML config: parse, resolve files and secrets, validate.
//! - [`jwt`]: payload templates, key loading and JWT signing.
//! - [`upstream_url`]: maps a call's path under a connection's `base_uri`, refusing escapes.
//! - [`call`]: runs one call against the internal server and streams the answer.
//! - [`channel`]: serves HTTP/1.1 on each channel the relay opens.
//! - [`ssh_client`]: the russh client handler: host key pinning, channel admission.
//! - [`open_channels`]: how many channels a relay session holds open, up to a cap.
//! - [`status`]: the daemon's local Unix socket: status reports and reload requests.
//! - [`call_table`]: the connections served right now, swapped whole on reload.
//! - [`reload`]: re-reads the config under a running daemon, or refuses it.
//! - [`metrics`]: optional Prometheus metrics on a loopback address.
//! - [`daemon`]: puts the call table, reloads, status socket and tunnel together.
//! - [`tunnel`]: connect, authenticate, announce, serve; reconnect with backoff.
//! - `control_reader`: the relay's control lines after its welcome, ignored ones logged
//!   within a `postern_logs::LogBudget`, a few lines a minute per session.
//! - [`backoff`]: exponential backoff with full jitter.
//! - [`relay_dial`]: the TCP connection to a relay, trying each of its addresses.
//! - [`proxy`]: HTTP CONNECT to the relay through a corporate proxy.
//! - [`connection_test`]: a connection's test request, as `postern connection test` runs it.
//! - [`cli`]: the `postern` command line.

pub mod backoff;
pub mod call;
pub mod call_table;
pub mod channel;
pub mod cli;
pub mod config;
pub mod connection_test;
mod control_reader;
pub mod daemon;
pub mod jwt;
pub mod metrics;
pub mod open_channels;
pub mod proxy;
pub mod relay_dial;
pub mod reload;
pub mod ssh_client;
pub mod status;
pub mod tunnel;
pub mod upstream_url;

#[cfg(test)]
mod test_openssl;

pub use config::AgentConfig;
pub use daemon::run;
pub use tunnel::TunnelState;
