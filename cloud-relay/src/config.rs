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
    /// How long a call may wait for the agent's response headers after its request body
    /// last moved.
    #[serde(default = "default_call_timeout", with = "humantime_serde_compat")]
    pub call_timeout: Duration,
    /// How long in-flight calls get to finish on shutdown.
    #[serde(default = "default_shutdown_grace", with = "humantime_serde_compat")]
    pub shutdown_grace: Duration,
    /// Calls under way at once per agent; more get 429 `too_many_calls`.
    #[serde(default = "default_max_calls_per_agent")]
    pub max_calls_per_agent: u64,
    /// Room for answers from one agent that their callers have not read yet (bytes): what
    /// call channels' SSH windows may grow by, in all, from 256 KiB towards 16 MiB each.
    #[serde(default = "default_answer_buffer_per_agent")]
    pub answer_buffer_per_agent: u64,
    /// Largest request body a caller may send through a call (bytes); 413 above.
    #[serde(default = "default_max_request_body")]
    pub max_request_body: u64,
    /// Room for a request's line and headers (bytes, at least 8192); 431 above.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// A client must send its whole request head within this (slowloris).
    #[serde(
        default = "default_header_read_timeout",
        with = "humantime_serde_compat"
    )]
    pub header_read_timeout: Duration,
    /// A pooled call channel idle this long is closed (within a second more).
    #[serde(
        default = "default_idle_channel_timeout",
        with = "humantime_serde_compat"
    )]
    pub idle_channel_timeout: Duration,
    /// Limit for management requests (everything but calls, which have `call_timeout`).
    #[serde(default = "default_api_timeout", with = "humantime_serde_compat")]
    pub api_timeout: Duration,
    /// PEM certificate chain for HTTPS on the API (with `tls_key`); reread on SIGHUP.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) for `tls_cert`.
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// Serve plain HTTP on a non-loopback API address (behind a TLS proxy, say).
    #[serde(default)]
    pub allow_plain_http: bool,
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
fn default_max_calls_per_agent() -> u64 {
    256
}
fn default_answer_buffer_per_agent() -> u64 {
    64 * MIB
}
fn default_max_request_body() -> u64 {
    64 * 1024 * 1024
}
fn default_max_header_bytes() -> usize {
    16 * 1024
}
fn default_header_read_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_idle_channel_timeout() -> Duration {
    Duration::from_secs(90)
}
fn default_api_timeout() -> Duration {
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
            max_calls_per_agent: default_max_calls_per_agent(),
            answer_buffer_per_agent: default_answer_buffer_per_agent(),
            max_request_body: default_max_request_body(),
            max_header_bytes: default_max_header_bytes(),
            header_read_timeout: default_header_read_timeout(),
            idle_channel_timeout: default_idle_channel_timeout(),
            api_timeout: default_api_timeout(),
            tls_cert: None,
            tls_key: None,
            allow_plain_http: false,
        }
    }
}

/// Only the CLI prints these, as a chain (`{:#}`): a cause is the source, not repeated in
/// the message.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("tls_cert and tls_key go together: set both or neither")]
    TlsHalf,
    #[error(
        "the API would serve plain HTTP on {0}, which is not a loopback address: set tls_cert and tls_key, or allow_plain_http = true if a TLS proxy sits in front"
    )]
    PlainHttp(SocketAddr),
    #[error("{key} must be {range} (it is {value})")]
    OutOfRange {
        key: &'static str,
        value: String,
        range: String,
    },
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
}

impl RelayConfig {
    /// `max_header_bytes` as enforced: a smaller setting counts as 8192, the least hyper
    /// itself reads of a head.
    pub fn header_limit(&self) -> usize {
        self.max_header_bytes.max(8192)
    }

    pub fn load(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config = Self::parse(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(source),
        })?;
        // As in the agent's config: a relative path is the file's folder's, so the relay
        // finds the same files whatever folder it starts in (systemd starts it in /).
        let folder = path.parent().unwrap_or(std::path::Path::new(""));
        let paths = [
            Some(&mut config.state_dir),
            config.tls_cert.as_mut(),
            config.tls_key.as_mut(),
        ];
        for p in paths.into_iter().flatten() {
            if p.is_relative() {
                *p = folder.join(&*p);
            }
        }
        Ok(config)
    }

    pub fn parse(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }

    /// Checks what parsing cannot: every limit within a range that can work, TLS files
    /// in pairs, no plain HTTP off loopback.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check_limits()?;
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), Some(_)) => Ok(()),
            (None, None) => {
                if self.api_listen.ip().is_loopback() || self.allow_plain_http {
                    Ok(())
                } else {
                    Err(ConfigError::PlainHttp(self.api_listen))
                }
            }
            _ => Err(ConfigError::TlsHalf),
        }
    }
}

const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(24 * 3600);
const MIB: u64 = 1024 * 1024;

/// Upper bounds for the limits. A zero limit refuses every call (or connection), and
/// a huge duration would overflow the `Instant` arithmetic of the timers that use it.
pub const MAX_CALL_TIMEOUT: Duration = DAY;
/// Longer than systemd's stop timeout is pointless, and a stop should not hang for long.
pub const MAX_SHUTDOWN_GRACE: Duration = HOUR;
/// Past ten minutes a slow request head is not a slow network but a slowloris.
pub const MAX_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(600);
pub const MAX_API_TIMEOUT: Duration = HOUR;
pub const MAX_IDLE_CHANNEL_TIMEOUT: Duration = DAY;
/// Each call is an SSH channel; russh keeps per-channel buffers.
pub const MAX_CALLS_PER_AGENT: u64 = 65_536;
pub const MAX_REQUEST_BODY: u64 = 1024 * 1024 * MIB;
/// Below a megabyte the windows could barely grow, and every stream would crawl.
pub const MIN_ANSWER_BUFFER_PER_AGENT: u64 = MIB;
pub const MAX_ANSWER_BUFFER_PER_AGENT: u64 = 1024 * 1024 * MIB;
/// It sizes hyper's read buffer, allocated per API connection.
pub const MAX_HEADER_BYTES: usize = postern_protocol::headers::MAX_REQUEST_HEAD_BYTES;

impl RelayConfig {
    fn check_limits(&self) -> Result<(), ConfigError> {
        let durations = [
            ("call_timeout", self.call_timeout, MAX_CALL_TIMEOUT),
            ("shutdown_grace", self.shutdown_grace, MAX_SHUTDOWN_GRACE),
            (
                "header_read_timeout",
                self.header_read_timeout,
                MAX_HEADER_READ_TIMEOUT,
            ),
            ("api_timeout", self.api_timeout, MAX_API_TIMEOUT),
            (
                "idle_channel_timeout",
                self.idle_channel_timeout,
                MAX_IDLE_CHANNEL_TIMEOUT,
            ),
        ];
        for (key, value, max) in durations {
            if value.is_zero() || value > max {
                return Err(ConfigError::OutOfRange {
                    key,
                    value: format!("{:?}", humantime::format_duration(value).to_string()),
                    range: format!(
                        "more than zero and at most {}",
                        humantime::format_duration(max)
                    ),
                });
            }
        }
        let max_header_bytes = self.max_header_bytes as u64;
        let counts = [
            (
                "max_calls_per_agent",
                self.max_calls_per_agent,
                1,
                MAX_CALLS_PER_AGENT,
            ),
            (
                "answer_buffer_per_agent",
                self.answer_buffer_per_agent,
                MIN_ANSWER_BUFFER_PER_AGENT,
                MAX_ANSWER_BUFFER_PER_AGENT,
            ),
            (
                "max_request_body",
                self.max_request_body,
                1,
                MAX_REQUEST_BODY,
            ),
            (
                "max_header_bytes",
                max_header_bytes,
                1,
                MAX_HEADER_BYTES as u64,
            ),
        ];
        for (key, value, min, max) in counts {
            if !(min..=max).contains(&value) {
                return Err(ConfigError::OutOfRange {
                    key,
                    value: value.to_string(),
                    range: format!("at least {min} and at most {max}"),
                });
            }
        }
        Ok(())
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
    fn a_header_limit_under_8192_counts_as_8192() {
        let limit = |text: &str| RelayConfig::parse(text).expect("parses").header_limit();
        assert_eq!(limit(""), 16 * 1024);
        assert_eq!(limit("max_header_bytes = 32768"), 32768);
        assert_eq!(limit("max_header_bytes = 1024"), 8192);
    }

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
    fn plain_http_only_on_loopback_or_when_allowed() {
        let at = |text: &str| RelayConfig::parse(text).expect("parses").validate();
        assert!(at("api_listen = \"127.0.0.1:8080\"").is_ok());
        assert!(at("api_listen = \"[::1]:8080\"").is_ok());
        assert!(matches!(
            at("api_listen = \"0.0.0.0:8080\""),
            Err(ConfigError::PlainHttp(_))
        ));
        assert!(at("api_listen = \"0.0.0.0:8080\"\nallow_plain_http = true").is_ok());
        assert!(
            at("api_listen = \"0.0.0.0:8080\"\ntls_cert = \"c.pem\"\ntls_key = \"k.pem\"").is_ok()
        );
        assert!(matches!(
            at("tls_cert = \"c.pem\""),
            Err(ConfigError::TlsHalf)
        ));
    }

    #[test]
    fn the_shipped_example_parses() {
        let text = include_str!("../../packaging/relay.example.toml");
        let config = RelayConfig::parse(text).expect("packaging/relay.example.toml parses");
        config
            .validate()
            .expect("packaging/relay.example.toml is valid");
    }

    #[test]
    fn limits_that_cannot_work_are_refused_by_name() {
        let refused = |text: &str| match RelayConfig::parse(text).expect("parses").validate() {
            Err(e @ ConfigError::OutOfRange { .. }) => e.to_string(),
            other => panic!("{text}: expected out of range, got {other:?}"),
        };
        for key in [
            "call_timeout",
            "shutdown_grace",
            "header_read_timeout",
            "api_timeout",
            "idle_channel_timeout",
        ] {
            let zero = refused(&format!("{key} = \"0s\""));
            assert!(
                zero.starts_with(&format!("{key} must be more than zero and at most ")),
                "{zero}"
            );
            assert!(zero.ends_with("(it is \"0s\")"), "{zero}");
            let huge = refused(&format!("{key} = \"300000000000y\""));
            assert!(huge.starts_with(key), "{huge}");
        }
        for key in [
            "max_calls_per_agent",
            "max_request_body",
            "max_header_bytes",
        ] {
            let zero = refused(&format!("{key} = 0"));
            assert!(
                zero.starts_with(&format!("{key} must be at least 1 and at most ")),
                "{zero}"
            );
            assert!(zero.ends_with("(it is 0)"), "{zero}");
            let huge = refused(&format!("{key} = 9223372036854775807"));
            assert!(huge.starts_with(key), "{huge}");
        }
        // Below a megabyte the windows could barely grow.
        assert_eq!(
            refused("answer_buffer_per_agent = 1048575"),
            "answer_buffer_per_agent must be at least 1048576 and at most 1099511627776 (it is 1048575)"
        );
        assert!(refused("answer_buffer_per_agent = 1099511627777").starts_with("answer_buffer"));
    }

    #[test]
    fn limits_at_their_bounds_are_accepted() {
        let valid = |text: &str| {
            RelayConfig::parse(text)
                .expect("parses")
                .validate()
                .unwrap_or_else(|e| panic!("{text}: {e}"))
        };
        valid("");
        valid(
            "call_timeout = \"1ms\"\nmax_calls_per_agent = 1\nmax_request_body = 1\nmax_header_bytes = 1",
        );
        valid(
            "call_timeout = \"1day\"\nidle_channel_timeout = \"1day\"\napi_timeout = \"1h\"\nshutdown_grace = \"1h\"\nheader_read_timeout = \"10m\"",
        );
        valid(
            "max_calls_per_agent = 65536\nmax_request_body = 1099511627776\nmax_header_bytes = 1048576",
        );
        valid("answer_buffer_per_agent = 1048576");
        valid("answer_buffer_per_agent = 1099511627776");
    }
}
