//! The relay's configuration: listen addresses and the state folder, from a TOML
//! file and/or the command line. Parse, then `validate`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayConfig {
    /// Holds the host key and the SQLite store.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Where agents connect (SSH).
    #[serde(default = "default_ssh_listen")]
    pub ssh_listen: SocketAddr,
    /// Where callers reach the HTTP API.
    #[serde(default = "default_api_listen")]
    pub api_listen: SocketAddr,
    /// How long a call may wait for the agent's response headers.
    #[serde(default = "default_call_timeout", with = "humantime_serde_compat")]
    pub call_timeout: Duration,
    /// How long in-flight calls get to finish on shutdown.
    #[serde(default = "default_shutdown_grace", with = "humantime_serde_compat")]
    pub shutdown_grace: Duration,
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/postern-relay")
}
fn default_ssh_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 2222))
}
fn default_api_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_call_timeout() -> Duration {
    Duration::from_secs(120)
}
fn default_shutdown_grace() -> Duration {
    Duration::from_secs(30)
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            state_dir: default_state_dir(),
            ssh_listen: default_ssh_listen(),
            api_listen: default_api_listen(),
            call_timeout: default_call_timeout(),
            shutdown_grace: default_shutdown_grace(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
}

impl RelayConfig {
    pub fn load(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(source),
        })
    }

    pub fn parse(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }
}

/// `"30s"`-style durations in TOML.
mod humantime_serde_compat {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_file_and_rejects_typos() {
        let cfg = RelayConfig::parse(
            "state_dir = \"/tmp/x\"\nssh_listen = \"127.0.0.1:2222\"\napi_listen = \"127.0.0.1:8080\"\ncall_timeout = \"45s\"\n",
        )
        .expect("valid");
        assert_eq!(cfg.call_timeout, Duration::from_secs(45));
        assert!(RelayConfig::parse("ssh_lisen = \"127.0.0.1:1\"").is_err());
        assert!(RelayConfig::parse("call_timeout = \"soon\"").is_err());
    }

    #[test]
    fn the_shipped_example_parses() {
        let text = include_str!("../../packaging/relay.example.toml");
        RelayConfig::parse(text).expect("packaging/relay.example.toml parses");
    }
}
