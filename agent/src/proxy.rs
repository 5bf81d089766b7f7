//! Reaching the relay through a corporate proxy: HTTP CONNECT with optional basic
//! auth, from `proxy = …` or the usual `HTTPS_PROXY` / `ALL_PROXY` / `NO_PROXY`.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

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
    /// A proxy URL has no use for them: a raw `#`, `?` or `/` in a password ended the
    /// host part there, and the rest would be dropped in silence.
    #[error(
        "{0:?} has a path, query or fragment, which a proxy URL does not take: percent-encode a `/`, `?` or `#` in the user name or password (%2F, %3F, %23)"
    )]
    Trailing(String),
    #[error("only http:// proxies (HTTP CONNECT) are supported, not {0}://")]
    Scheme(String),
    /// The cause is in the message and not a `source`, so a `{:#}` chain says it once.
    #[error("cannot reach the proxy {proxy}: {error}")]
    Connect {
        proxy: String,
        error: std::io::Error,
    },
    /// Each of its addresses and why it failed (see `relay_dial`).
    #[error("cannot reach the proxy {proxy}: {reason}")]
    Unreachable { proxy: String, reason: String },
    #[error("the proxy {proxy} closed the connection or sent no valid answer to CONNECT")]
    BadAnswer { proxy: String },
    #[error("the proxy {proxy} did not answer CONNECT {target} within {waited:?}")]
    Silent {
        proxy: String,
        target: String,
        waited: Duration,
    },
    #[error("the proxy {proxy} refused CONNECT {target}: {status}")]
    Refused {
        proxy: String,
        target: String,
        status: String,
    },
}

#[derive(Clone, PartialEq, Eq)]
pub struct Proxy {
    /// A name or an IP address, IPv6 without brackets: as the connector dials it.
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
        if self.host.contains(':') {
            write!(f, "http://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "http://{}:{}", self.host, self.port)
        }
    }
}

impl Proxy {
    pub fn parse(text: &str) -> Result<Self, ProxyError> {
        // curl takes `proxy.corp:3128` as `http://proxy.corp:3128`, and so do we.
        let full;
        let text = if text.contains("://") {
            text
        } else {
            full = format!("http://{text}");
            &full
        };
        let url = Url::parse(text).map_err(|_| ProxyError::BadUrl(crate::config::shown(text)))?;
        if url.scheme() != "http" {
            return Err(ProxyError::Scheme(url.scheme().to_owned()));
        }
        let host = match url.host() {
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            Some(host) => host.to_string(),
            None => return Err(ProxyError::BadUrl(crate::config::shown(text))),
        };
        if url.query().is_some() || url.fragment().is_some() || url.path() != "/" {
            return Err(ProxyError::Trailing(crate::config::shown(text)));
        }
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
        env: &dyn Fn(&str) -> Result<String, std::env::VarError>,
        relays: &[String],
    ) -> Result<Option<Self>, ProxyError> {
        let var = |name: &str| {
            env(name)
                .ok()
                .or_else(|| env(&name.to_ascii_lowercase()).ok())
                .filter(|v| !v.trim().is_empty())
        };
        let Some(text) = var("HTTPS_PROXY").or_else(|| var("ALL_PROXY")) else {
            return Ok(None);
        };
        let no_proxy: Vec<String> = var("NO_PROXY")
            .map(|v| {
                v.split(',')
                    .map(|e| e.trim().to_ascii_lowercase())
                    .filter(|e| !e.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        // A proxy the relay never goes through cannot stop the agent, however it is written.
        if relays.iter().all(|r| exempt(&no_proxy, r)) {
            return Ok(None);
        }
        let mut proxy = Self::parse(text.trim())?;
        proxy.no_proxy = no_proxy;
        Ok(Some(proxy))
    }

    /// False when `NO_PROXY` exempts the relay's host.
    pub fn applies_to(&self, relay: &str) -> bool {
        !exempt(&self.no_proxy, relay)
    }

    /// A TCP stream to `target` (`host:port`) through the proxy: its dial bounded as a
    /// relay's (each address in turn), then its answer by [`ANSWER_TIMEOUT`].
    pub async fn connect(&self, target: &str) -> Result<TcpStream, ProxyError> {
        self.connect_within(target, ANSWER_TIMEOUT).await
    }

    async fn connect_within(
        &self,
        target: &str,
        answer: Duration,
    ) -> Result<TcpStream, ProxyError> {
        let name = self.to_string();
        let stream = crate::relay_dial::dial_to((self.host.as_str(), self.port), &name)
            .await
            .map_err(|reason| ProxyError::Unreachable {
                proxy: name.clone(),
                reason,
            })?;
        tokio::time::timeout(answer, self.tunnel(stream, &name, target))
            .await
            .map_err(|_| ProxyError::Silent {
                proxy: name.clone(),
                target: target.to_owned(),
                waited: answer,
            })?
    }

    /// Asks the proxy for a tunnel to `target` on `stream`, and reads its answer.
    async fn tunnel(
        &self,
        mut stream: TcpStream,
        name: &str,
        target: &str,
    ) -> Result<TcpStream, ProxyError> {
        let name = name.to_owned();
        let mut request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
        if let Some(auth) = &self.authorization {
            request.push_str(&format!("Proxy-Authorization: {auth}\r\n"));
        }
        request.push_str("\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|error| ProxyError::Connect {
                proxy: name.clone(),
                error,
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
        // RFC 9110 §9.3.6: any 2xx means the tunnel is open.
        if !code.is_some_and(|c| {
            c.len() == 3 && c.starts_with('2') && c.bytes().all(|b| b.is_ascii_digit())
        }) {
            return Err(ProxyError::Refused {
                proxy: name,
                target: target.to_owned(),
                status,
            });
        }
        Ok(stream)
    }
}

/// How long the proxy may take to answer CONNECT (it dials the relay meanwhile).
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether a `NO_PROXY` entry covers the relay's host, as curl decides: a name by itself
/// or as a domain suffix, an IP address as that address or inside a `10.0.0.0/8` range.
fn exempt(no_proxy: &[String], relay: &str) -> bool {
    let host = host_part(relay).to_ascii_lowercase();
    let ip = host.parse::<IpAddr>().ok();
    no_proxy.iter().any(|entry| {
        if entry == "*" {
            return true;
        }
        if let Some(ip) = ip {
            return covers_ip(entry, ip);
        }
        let entry = host_part(entry)
            .trim_start_matches('.')
            .to_ascii_lowercase();
        host == entry || host.ends_with(&format!(".{entry}"))
    })
}

/// An IP entry (`10.1.2.3`, `[fd00::1]:22`) or range (`10.0.0.0/8`, `fd00::/8`) that
/// holds `ip`. Never by suffix: `0.0.1` is no domain of `10.0.0.1`.
fn covers_ip(entry: &str, ip: IpAddr) -> bool {
    let (address, bits) = match entry.split_once('/') {
        Some((address, bits)) => match bits.parse::<u32>() {
            Ok(bits) => (address, Some(bits)),
            Err(_) => return false,
        },
        None => (entry, None),
    };
    let Ok(net) = host_part(address).parse::<IpAddr>() else {
        return false;
    };
    let same_prefix = |a: u128, b: u128, width: u32, bits: u32| {
        bits <= width && (bits == 0 || (a ^ b) >> (width - bits) == 0)
    };
    match (net, ip, bits) {
        (_, _, None) => net == ip,
        (IpAddr::V4(n), IpAddr::V4(i), Some(bits)) => {
            same_prefix(u32::from(n).into(), u32::from(i).into(), 32, bits)
        }
        (IpAddr::V6(n), IpAddr::V6(i), Some(bits)) => {
            same_prefix(u128::from(n), u128::from(i), 128, bits)
        }
        _ => false,
    }
}

/// The host of `host`, `host:port`, `[v6]`, `[v6]:port` or a bare IPv6 address (whose
/// colons are no port's).
fn host_part(text: &str) -> &str {
    if let Some(rest) = text.strip_prefix('[') {
        return rest.split_once(']').map_or(rest, |(v6, _)| v6);
    }
    match text.split_once(':') {
        Some((host, port)) if !port.contains(':') => host,
        _ => text,
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

    /// A raw `#`, `?` or `/` in a password ends the URL's host part early: the URL is
    /// refused (it would parse as host `u`, port 1234 and dial that in silence), and no
    /// part of the password is shown.
    #[test]
    fn a_raw_delimiter_in_a_password_is_refused_without_showing_it() {
        for text in [
            "http://svc:p#ss@proxy.corp:3128",
            "http://u:1234#5678@proxy.corp:3128",
            "http://u:1234?5678@proxy.corp:3128",
            "http://u:1234/5678@proxy.corp:3128",
            "u:1234#5678@proxy.corp:3128",
        ] {
            let message = Proxy::parse(text)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(
                !message.is_empty() && !message.contains("5678") && !message.contains("#ss"),
                "{text}: {message}"
            );
            assert!(message.contains("proxy.corp:3128"), "{text}: {message}");
        }
        assert!(Proxy::parse("http://proxy.corp:3128/").is_ok());
        assert!(Proxy::parse("http://u:1234%235678@proxy.corp:3128").is_ok());
    }

    #[test]
    fn a_scheme_less_proxy_is_http_as_curl_takes_it() {
        let p = Proxy::parse("proxy.corp:3128").expect("curl accepts it");
        assert_eq!(p.to_string(), "http://proxy.corp:3128");
        let p = Proxy::parse("alice:pw@proxy.corp").expect("with user info");
        assert_eq!(p.to_string(), "http://proxy.corp:80");
        assert!(p.authorization.is_some());
        let relays = vec!["relay.example.com:2222".to_owned()];
        let env = |name: &str| {
            (name == "https_proxy")
                .then(|| "proxy.corp:3128".to_owned())
                .ok_or(std::env::VarError::NotPresent)
        };
        let p = Proxy::from_env(&env, &relays).expect("loads");
        assert_eq!(
            p.map(|p| p.to_string()).as_deref(),
            Some("http://proxy.corp:3128")
        );
    }

    #[test]
    fn a_proxy_no_proxy_exempts_the_relay_from_is_never_parsed() {
        let relays = vec!["relay.example.com:2222".to_owned()];
        let env = |name: &str| match name {
            "HTTPS_PROXY" => Ok("socks5://nothing-we-speak:1080".to_owned()),
            "NO_PROXY" => Ok("example.com".to_owned()),
            _ => Err(std::env::VarError::NotPresent),
        };
        assert!(
            Proxy::from_env(&env, &relays)
                .expect("not our proxy")
                .is_none()
        );
        let other = vec!["relay.other.net:2222".to_owned()];
        assert!(matches!(
            Proxy::from_env(&env, &other),
            Err(ProxyError::Scheme(_))
        ));
    }

    #[test]
    fn no_proxy_entries_match_ipv6_relays_as_curl_does() {
        let v6 = "[fd00::10]:2222";
        for entry in ["fd00::10", "[fd00::10]", "[fd00::10]:2222", "FD00::10"] {
            assert!(exempt(&[entry.to_owned()], v6), "{entry}");
        }
        assert!(!exempt(&["fd00::1".to_owned()], v6));
        assert!(!exempt(&["::1".to_owned()], v6));
        assert!(exempt(&["::1".to_owned()], "[::1]:22"));
        assert!(exempt(&[".corp".to_owned()], "relay.corp:2222"));
        assert!(exempt(&["relay.corp:2222".to_owned()], "relay.corp:2222"));
        assert!(!exempt(&["elay.corp".to_owned()], "relay.corp:2222"));
        assert!(exempt(&["fd00:0::10".to_owned()], v6), "the same address");
    }

    #[test]
    fn no_proxy_ranges_and_addresses_match_ip_relays_as_curl_does() {
        let at = |entries: &[&str], relay: &str| {
            let entries: Vec<String> = entries.iter().map(|e| e.to_string()).collect();
            exempt(&entries, relay)
        };
        let relay = "10.50.1.20:2222";
        for covering in [
            "10.0.0.0/8",
            "10.50.0.0/16",
            "10.50.1.20/32",
            "10.50.1.20",
            "0.0.0.0/0",
        ] {
            assert!(at(&["localhost", covering], relay), "{covering}");
        }
        for not in [
            "11.0.0.0/8",
            "10.50.1.21",
            "0.1.20",
            "1.20",
            "10.50.1.20/33",
            "10.0.0.0/x",
            "fd00::/8",
        ] {
            assert!(!at(&[not], relay), "{not}");
        }
        assert!(at(&["fd00::/8"], "[fd00::10]:2222"));
        assert!(at(&["fd00::10/128"], "[fd00::10]:2222"));
        assert!(!at(&["fe80::/10"], "[fd00::10]:2222"));
        assert!(!at(&["10.0.0.0/8"], "[fd00::10]:2222"));
        // Names keep the suffix rule; an IP range says nothing of them.
        assert!(!at(&["10.0.0.0/8"], "relay.corp:2222"));
    }

    #[test]
    fn an_ipv6_proxy_is_dialled_without_brackets() {
        let p = Proxy::parse("http://[fd00::1]:3128").expect("valid");
        assert_eq!(p.host, "fd00::1");
        assert_eq!(p.port, 3128);
        assert_eq!(p.to_string(), "http://[fd00::1]:3128");
    }

    #[test]
    fn a_password_with_a_raw_at_sign_stays_out_of_the_error() {
        for text in [
            "http://u:pw@s3cr@",
            "u:pw@s3cr@",
            "http://u:pw@s3cr@host:99999",
        ] {
            let message = Proxy::parse(text)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(
                message.contains("…@") && !message.contains("s3cr") && !message.contains("u:pw"),
                "{text}: {message}"
            );
        }
    }

    /// A CONNECT proxy for one client on `bind`: answers `status_line`, then greets through
    /// the tunnel. `None` when `bind` cannot be bound here. Its task yields the request head.
    async fn one_shot_proxy(
        bind: &str,
        status_line: &'static str,
    ) -> Option<(std::net::SocketAddr, tokio::task::JoinHandle<String>)> {
        let listener = tokio::net::TcpListener::bind(bind).await.ok()?;
        let addr = listener.local_addr().ok()?;
        let task = tokio::spawn(async move {
            let Ok((mut stream, _)) = listener.accept().await else {
                return String::new();
            };
            let mut head = Vec::new();
            while !head.ends_with(b"\r\n\r\n") && head.len() < MAX_RESPONSE_HEAD {
                match stream.read_u8().await {
                    Ok(b) => head.push(b),
                    Err(_) => break,
                }
            }
            let _ = stream
                .write_all(format!("{status_line}\r\n\r\nhello").as_bytes())
                .await;
            String::from_utf8_lossy(&head).into_owned()
        });
        Some((addr, task))
    }

    async fn through(proxy: &Proxy) -> Result<String, ProxyError> {
        let connect = proxy.connect("relay.example.com:2222");
        let mut stream = tokio::time::timeout(std::time::Duration::from_secs(5), connect)
            .await
            .map_err(|_| ProxyError::BadAnswer {
                proxy: "timed out".to_owned(),
            })??;
        let mut greeting = [0u8; 5];
        stream
            .read_exact(&mut greeting)
            .await
            .map_err(|error| ProxyError::Connect {
                proxy: proxy.to_string(),
                error,
            })?;
        Ok(String::from_utf8_lossy(&greeting).into_owned())
    }

    /// A proxy no address of which accepts is named with each address and why, as a
    /// relay's dial is, rather than a bare timeout of the whole attempt.
    #[tokio::test]
    async fn an_unreachable_proxy_names_each_address() {
        // Port 9 (discard): nothing listens there.
        let proxy = Proxy::parse("http://127.0.0.1:9").expect("valid");
        let err = through(&proxy).await.expect_err("no proxy there");
        let said = err.to_string();
        assert!(matches!(err, ProxyError::Unreachable { .. }), "{said}");
        assert!(
            said.starts_with("cannot reach the proxy http://127.0.0.1:9: 127.0.0.1:9: "),
            "{said}"
        );
    }

    /// A proxy that takes the connection and never answers CONNECT is given up on, and
    /// named for it, rather than waited for until the whole attempt's time is gone.
    #[tokio::test]
    async fn a_proxy_that_never_answers_connect_is_given_up_on() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let held = tokio::spawn(async move {
            let accepted = listener.accept().await;
            tokio::time::sleep(std::time::Duration::from_secs(30)).await;
            drop(accepted);
        });
        let proxy = Proxy::parse(&format!("http://{addr}")).expect("valid");
        let wait = std::time::Duration::from_millis(300);
        let started = std::time::Instant::now();
        let err = proxy
            .connect_within("relay.example.com:2222", wait)
            .await
            .expect_err("no answer");
        assert!(matches!(err, ProxyError::Silent { .. }), "{err}");
        assert_eq!(
            err.to_string(),
            format!(
                "the proxy http://{addr} did not answer CONNECT relay.example.com:2222 within 300ms"
            )
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
        held.abort();
    }

    #[tokio::test]
    async fn connects_through_a_proxy_on_ipv6_loopback() {
        let Some((addr, seen)) =
            one_shot_proxy("[::1]:0", "HTTP/1.1 200 Connection established").await
        else {
            println!("skipped: cannot bind [::1]:0 (no IPv6 loopback here)");
            return;
        };
        let proxy = Proxy::parse(&format!("http://[::1]:{}", addr.port())).expect("valid");
        assert_eq!(through(&proxy).await.expect("tunnel"), "hello");
        let head = seen.await.expect("proxy task");
        assert!(
            head.starts_with("CONNECT relay.example.com:2222 HTTP/1.1\r\n"),
            "{head}"
        );
    }

    #[tokio::test]
    async fn any_2xx_answer_to_connect_opens_the_tunnel() {
        for status_line in [
            "HTTP/1.1 200 OK",
            "HTTP/1.0 201 Created",
            "HTTP/1.1 204 No Content",
        ] {
            let (addr, _) = one_shot_proxy("127.0.0.1:0", status_line)
                .await
                .expect("bind");
            let proxy = Proxy::parse(&format!("http://{addr}")).expect("valid");
            assert_eq!(through(&proxy).await.expect(status_line), "hello");
        }
        for status_line in [
            "HTTP/1.1 407 Proxy Authentication Required",
            "HTTP/1.1 302 Found",
            "HTTP/1.1 2xx Odd",
        ] {
            let (addr, _) = one_shot_proxy("127.0.0.1:0", status_line)
                .await
                .expect("bind");
            let proxy = Proxy::parse(&format!("http://{addr}")).expect("valid");
            let err = through(&proxy).await.expect_err(status_line);
            assert!(
                matches!(err, ProxyError::Refused { .. }),
                "{status_line}: {err}"
            );
        }
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
                    .ok_or(std::env::VarError::NotPresent)
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
