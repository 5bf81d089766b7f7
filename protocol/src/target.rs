//! Channel targets: what the relay asks for when it opens a channel to an agent.
//! The relay can only name one of the agent's connections, never a host or port.

use std::fmt;

use thiserror::Error;

/// Longest connection name accepted, in bytes.
pub const MAX_CONNECTION_NAME_LEN: usize = 64;

/// A connection name from the agent's config: 1–64 of `A-Z a-z 0-9 _ -`,
/// starting with a letter or digit. Safe in URL paths, hosts and logs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionName(String);

#[derive(Debug, Error, PartialEq, Eq)]
pub enum TargetError {
    #[error("connection name is empty")]
    EmptyName,
    #[error("connection name is longer than {MAX_CONNECTION_NAME_LEN} bytes")]
    NameTooLong,
    #[error(
        "connection name {0:?} may only hold letters, digits, '_' and '-', and must start with a letter or digit"
    )]
    BadName(String),
    #[error(
        "unknown channel target kind {0:?} (expected \"http:<connection>\" or \"test:<connection>\")"
    )]
    UnknownKind(String),
}

impl ConnectionName {
    pub fn parse(name: &str) -> Result<Self, TargetError> {
        if name.is_empty() {
            return Err(TargetError::EmptyName);
        }
        if name.len() > MAX_CONNECTION_NAME_LEN {
            return Err(TargetError::NameTooLong);
        }
        let mut bytes = name.bytes();
        let first_ok = bytes.next().is_some_and(|b| b.is_ascii_alphanumeric());
        let rest_ok = bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !first_ok || !rest_ok {
            return Err(TargetError::BadName(name.to_owned()));
        }
        Ok(Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ConnectionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a channel carries. Sent as the `connected_address` of a
/// `forwarded-tcpip` channel, e.g. `http:orders`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelTarget {
    /// HTTP/1.1 requests to be run against the named connection's `base_uri`.
    Http(ConnectionName),
    /// Run the connection's configured test request; the agent writes one JSON
    /// report (`postern connection test --json`) and closes the channel.
    Test(ConnectionName),
}

impl ChannelTarget {
    pub fn parse(wire: &str) -> Result<Self, TargetError> {
        match wire.split_once(':') {
            Some(("http", name)) => Ok(Self::Http(ConnectionName::parse(name)?)),
            Some(("test", name)) => Ok(Self::Test(ConnectionName::parse(name)?)),
            _ => Err(TargetError::UnknownKind(wire.chars().take(80).collect())),
        }
    }

    pub fn connection(&self) -> &ConnectionName {
        match self {
            Self::Http(name) | Self::Test(name) => name,
        }
    }
}

impl fmt::Display for ChannelTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Http(name) => write!(f, "http:{name}"),
            Self::Test(name) => write!(f, "test:{name}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_http_targets() {
        let t = ChannelTarget::parse("http:orders-v2_eu").expect("valid");
        assert_eq!(t.to_string(), "http:orders-v2_eu");
        assert_eq!(t.connection().as_str(), "orders-v2_eu");
        let t = ChannelTarget::parse("test:orders").expect("valid");
        assert_eq!(
            t,
            ChannelTarget::Test(ConnectionName::parse("orders").expect("name"))
        );
        assert_eq!(t.to_string(), "test:orders");
    }

    #[test]
    fn refuses_hosts_ports_and_odd_names() {
        for bad in [
            "http:",
            "http:../etc",
            "http:a/b",
            "http:10.0.0.1:22",
            "http:-lead",
            "http:a b",
            "http:a\nb",
            "tcp:orders",
            "orders",
            "",
        ] {
            assert!(ChannelTarget::parse(bad).is_err(), "{bad:?} accepted");
        }
        let long = format!("http:{}", "a".repeat(65));
        assert_eq!(ChannelTarget::parse(&long), Err(TargetError::NameTooLong));
    }
}
