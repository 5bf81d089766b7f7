//! Reaching the relay through a corporate proxy: HTTP CONNECT with optional basic
//! auth, from `proxy = …` or the usual `HTTPS_PROXY` / `ALL_PROXY` / `NO_PROXY`.

use std::fmt;

use base64::Engine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use url::Url;

/// Longest proxy answer header we read before giving up.
const MAX_RESPONSE_HEAD: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("{0:?} is not a proxy URL like http://[user:pass@]host:port")]
    BadUrl(String),
    #[error("only http:// proxies (HTTP CONNECT) are supported, not {0}://")]
    Scheme(String),
    #[error("cannot reach the proxy {proxy}: {source}")]
    Connect {
        proxy: String,
        source: std::io::Error,
    },
    #[error("the proxy {proxy} closed the connection or sent no valid answer to CONNECT")]
    BadAnswer { proxy: String },
    #[error("the proxy {proxy} refused CONNECT {target}: {status}")]
    Refused {
        proxy: String,
        target: String,
        status: String,
    },
}

#[derive(Clone, PartialEq, Eq)]
pub struct Proxy {
    host: String,
    port: u16,
    /// `Basic …` value; secret, never printed.
    authorization: Option<String>,
    no_proxy: Vec<String>,
}

impl fmt::Debug for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Proxy({}, auth: {})", self, self.authorization.is_some())
    }
}

impl fmt::Display for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}:{}", self.host, self.port)
    }
}

impl Proxy {
    pub fn parse(text: &str) -> Result<Self, ProxyError> {
        let url = Url::parse(text).map_err(|_| ProxyError::BadUrl(redact(text)))?;
        if url.scheme() != "http" {
            return Err(ProxyError::Scheme(url.scheme().to_owned()));
        }
        let host = url
            .host_str()
            .ok_or_else(|| ProxyError::BadUrl(redact(text)))?
            .to_owned();
        let port = url.port_or_known_default().unwrap_or(3128);
        let authorization = (!url.username().is_empty()).then(|| {
            let user = percent_encoding::percent_decode_str(url.username()).decode_utf8_lossy();
            let pass = percent_encoding::percent_decode_str(url.password().unwrap_or(""))
                .decode_utf8_lossy();
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
            )
        });
        Ok(Self {
            host,
            port,
            authorization,
            no_proxy: Vec::new(),
        })
    }

    /// The proxy the environment names for reaching the relay, as curl would pick it.
    pub fn from_env(
        env: &dyn Fn(&str) -> Option<String>,
        relays: &[String],
    ) -> Result<Option<Self>, ProxyError> {
        let var = |name: &str| {
            env(name)
                .or_else(|| env(&name.to_ascii_lowercase()))
                .filter(|v| !v.trim().is_empty())
        };
        let Some(text) = var("HTTPS_PROXY").or_else(|| var("ALL_PROXY")) else {
            return Ok(None);
        };
        let mut proxy = Self::parse(text.trim())?;
        proxy.no_proxy = var("NO_PROXY")
            .map(|v| {
                v.split(',')
                    .map(|e| e.trim().to_ascii_lowercase())
                    .filter(|e| !e.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        if relays.iter().all(|r| !proxy.applies_to(r)) {
            return Ok(None);
        }
        Ok(Some(proxy))
    }

    /// False when `NO_PROXY` exempts the relay's host.
    pub fn applies_to(&self, relay: &str) -> bool {
        let host = relay
            .rsplit_once(':')
            .map_or(relay, |(h, _)| h)
            .trim_matches(['[', ']'])
            .to_ascii_lowercase();
        !self.no_proxy.iter().any(|entry| {
            let entry = entry
                .rsplit_once(':')
                .map_or(entry.as_str(), |(h, _)| h)
                .trim_start_matches('.');
            entry == "*" || host == entry || host.ends_with(&format!(".{entry}"))
        })
    }

    /// A TCP stream to `target` (`host:port`) through the proxy.
    pub async fn connect(&self, target: &str) -> Result<TcpStream, ProxyError> {
        let name = self.to_string();
        let mut stream = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|source| ProxyError::Connect {
                proxy: name.clone(),
                source,
            })?;
        let _ = stream.set_nodelay(true);
        let mut request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
        if let Some(auth) = &self.authorization {
            request.push_str(&format!("Proxy-Authorization: {auth}\r\n"));
        }
        request.push_str("\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|source| ProxyError::Connect {
                proxy: name.clone(),
                source,
            })?;
        // Read byte by byte up to the blank line, so no SSH bytes are swallowed.
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            if head.len() >= MAX_RESPONSE_HEAD {
                return Err(ProxyError::BadAnswer { proxy: name });
            }
            let byte = stream.read_u8().await.map_err(|_| ProxyError::BadAnswer {
                proxy: name.clone(),
            })?;
            head.push(byte);
        }
        let status = String::from_utf8_lossy(&head)
            .lines()
            .next()
            .unwrap_or("")
            .trim()
            .to_owned();
        let code = status.split_whitespace().nth(1);
        if !status.starts_with("HTTP/1.") || code.is_none() {
            return Err(ProxyError::BadAnswer { proxy: name });
        }
        if code != Some("200") {
            return Err(ProxyError::Refused {
                proxy: name,
                target: target.to_owned(),
                status,
            });
        }
        Ok(stream)
    }
}

/// A URL for an error message, without its password.
fn redact(text: &str) -> String {
    match text.split_once('@') {
        Some((_, rest)) => format!("…@{rest}"),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls_and_keeps_the_password_out_of_debug() {
        let p = Proxy::parse("http://alice:s%40cret@proxy.corp:3128").expect("valid");
        assert_eq!(p.to_string(), "http://proxy.corp:3128");
        let shown = format!("{p:?}");
        assert!(
            !shown.contains("cret") && shown.contains("auth: true"),
            "{shown}"
        );
        assert!(matches!(
            Proxy::parse("socks5://p:1080"),
            Err(ProxyError::Scheme(_))
        ));
        assert!(matches!(
            Proxy::parse("not a url"),
            Err(ProxyError::BadUrl(_))
        ));
        let message = Proxy::parse("http://u:pw@")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(!message.contains("pw"), "{message}");
    }

    #[test]
    fn the_environment_decides_like_curl() {
        let relays = vec!["relay.example.com:2222".to_owned()];
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        assert!(Proxy::from_env(&env(&[]), &relays).expect("ok").is_none());
        let p = Proxy::from_env(&env(&[("https_proxy", "http://p:3128")]), &relays).expect("ok");
        assert_eq!(p.map(|p| p.to_string()).as_deref(), Some("http://p:3128"));
        let p = Proxy::from_env(&env(&[("ALL_PROXY", "http://p:8080")]), &relays).expect("ok");
        assert!(p.is_some());
        for no in [
            ".example.com",
            "example.com",
            "relay.example.com",
            "*",
            "other, example.com:2222",
        ] {
            let pairs: &'static [(&'static str, &'static str)] =
                Box::leak(vec![("HTTPS_PROXY", "http://p:1"), ("NO_PROXY", no)].into_boxed_slice());
            assert!(
                Proxy::from_env(&env(pairs), &relays).expect("ok").is_none(),
                "{no}"
            );
        }
        let p = Proxy::from_env(
            &env(&[("HTTPS_PROXY", "http://p:1"), ("NO_PROXY", "ample.com")]),
            &relays,
        )
        .expect("ok");
        assert!(p.is_some(), "suffix match only on a dot boundary");
    }
}
