//! `postern-relay health`: asks a running relay's API for `/healthz` over loopback, as a
//! container HEALTHCHECK or a monitor without curl would, and says why when it is not `ok`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::task::AbortOnDropHandle;

use crate::config::RelayConfig;

/// `/healthz` says `ok`; an answer longer than this is not the relay's.
const ANSWER_LIMIT: usize = 4096;

/// Where `health` asks: the API's address, and with TLS the certificate file it should serve.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub tls_cert: Option<PathBuf>,
}

impl Target {
    pub fn of(config: &RelayConfig) -> Self {
        let tls = config.tls_cert.is_some() && config.tls_key.is_some();
        Self {
            addr: reachable(config.api_listen),
            tls_cert: config.tls_cert.clone().filter(|_| tls),
        }
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls_cert.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}/healthz", self.addr)
    }
}

/// An address that reaches a listener on `listen`: a wildcard one through its loopback.
fn reachable(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}

#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error(
        "nothing listens on {0}: the relay is not running, or its API listens elsewhere (give health the --config or --api-listen that serve runs with)"
    )]
    NotListening(SocketAddr),
    #[error("cannot connect to {addr}: {error}")]
    Connect {
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error(
        "no TLS with {addr}: {error} (the config names tls_cert and tls_key, so health speaks HTTPS; is this the config serve runs with?)"
    )]
    Tls {
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error("{url}: {error}{hint}")]
    Http {
        url: String,
        error: hyper::Error,
        hint: &'static str,
    },
    #[error("{url} sent an answer that broke off or is over {ANSWER_LIMIT} bytes: {reason}")]
    Answer { url: String, reason: String },
    #[error("{url} answered {status}: {body:?}")]
    NotOk {
        url: String,
        status: hyper::StatusCode,
        body: String,
    },
    #[error("{url} did not answer within {}", humantime::format_duration(*.within))]
    Timeout { url: String, within: Duration },
}

/// The relay answered `ok`; with TLS, whether the certificate it serves is the one in its
/// `tls_cert` file (a changed file is served only after a reload).
#[derive(Debug)]
pub struct Healthy {
    pub url: String,
    pub served: Served,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Served {
    PlainHttp,
    TheFilesCertificate,
    AnotherCertificate { file: PathBuf },
    Unknown { file: PathBuf, reason: String },
}

impl std::fmt::Display for Healthy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: ok", self.url)?;
        match &self.served {
            Served::PlainHttp | Served::TheFilesCertificate => Ok(()),
            Served::AnotherCertificate { file } => write!(
                f,
                "; but it serves a certificate other than the one now in {}: reload it \
                 (systemctl reload postern-relay, or SIGHUP) to serve the file's",
                file.display()
            ),
            Served::Unknown { file, reason } => write!(
                f,
                "; whether it serves the certificate in {} is not known: {reason}",
                file.display()
            ),
        }
    }
}

/// GET `/healthz` at `target`, all of it within `within`.
pub async fn probe(target: &Target, within: Duration) -> Result<Healthy, HealthError> {
    let url = target.url();
    match tokio::time::timeout(within, ask(target, &url)).await {
        Ok(answer) => answer,
        Err(_) => Err(HealthError::Timeout { url, within }),
    }
}

async fn ask(target: &Target, url: &str) -> Result<Healthy, HealthError> {
    let addr = target.addr;
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|source| match source.kind() {
            std::io::ErrorKind::ConnectionRefused => HealthError::NotListening(addr),
            _ => HealthError::Connect {
                addr,
                error: source,
            },
        })?;
    let Some(file) = &target.tls_cert else {
        get(tcp, addr, url).await?;
        return Ok(Healthy {
            url: url.to_owned(),
            served: Served::PlainHttp,
        });
    };
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let verifier = AnyHolderOfItsKey(provider.signature_verification_algorithms);
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| HealthError::Tls {
            addr,
            error: std::io::Error::other(e),
        })?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::IpAddress(addr.ip().into()), tcp)
        .await
        .map_err(|error| HealthError::Tls { addr, error })?;
    let served = match tls.get_ref().1.peer_certificates().and_then(|c| c.first()) {
        Some(leaf) => compare(leaf, file),
        None => Served::Unknown {
            file: file.clone(),
            reason: "the relay showed no certificate".into(),
        },
    };
    get(tls, addr, url).await?;
    Ok(Healthy {
        url: url.to_owned(),
        served,
    })
}

/// Whether `leaf` is the first certificate of `file`, as the relay reads it.
fn compare(leaf: &CertificateDer<'_>, file: &std::path::Path) -> Served {
    match crate::tls::chain(file) {
        Ok(chain) if chain.first().is_some_and(|c| c.as_ref() == leaf.as_ref()) => {
            Served::TheFilesCertificate
        }
        Ok(_) => Served::AnotherCertificate {
            file: file.to_owned(),
        },
        Err(e) => Served::Unknown {
            file: file.to_owned(),
            reason: match e {
                crate::tls::TlsError::Cert { reason, .. } => format!("cannot read it: {reason}"),
                other => other.to_string(),
            },
        },
    }
}

async fn get<S>(stream: S, addr: SocketAddr, url: &str) -> Result<(), HealthError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // A TLS port answers plain HTTP with an alert, which hyper reads as a bad version.
    let hint = if url.starts_with("http:") {
        " (if the API serves HTTPS, give health the config that names its TLS files)"
    } else {
        ""
    };
    let http = |error| HealthError::Http {
        url: url.to_owned(),
        error,
        hint,
    };
    let (mut sender, connection) = http1::handshake(TokioIo::new(stream)).await.map_err(http)?;
    let _driver = AbortOnDropHandle::new(tokio::spawn(connection));
    let request = hyper::Request::get("/healthz")
        .header(hyper::header::HOST, addr.to_string())
        .header(hyper::header::USER_AGENT, "postern-relay-health")
        .body(Empty::<Bytes>::new())
        .map_err(|e| HealthError::Answer {
            url: url.to_owned(),
            reason: e.to_string(),
        })?;
    let answer = sender.send_request(request).await.map_err(http)?;
    let status = answer.status();
    let body = Limited::new(answer.into_body(), ANSWER_LIMIT)
        .collect()
        .await
        .map_err(|e| HealthError::Answer {
            url: url.to_owned(),
            reason: e.to_string(),
        })?
        .to_bytes();
    let body = String::from_utf8_lossy(&body);
    if status == hyper::StatusCode::OK && body.trim() == "ok" {
        return Ok(());
    }
    Err(HealthError::NotOk {
        url: url.to_owned(),
        status,
        body: body.chars().take(200).collect(),
    })
}

/// Any certificate, from a server that proves it holds that certificate's key. `health`
/// asks whether the relay answers, not whether callers trust its certificate: a lapsed
/// or renewed one must not fail a liveness check, whose failure restarts the relay and
/// with it every agent's session. Which certificate it is, is said beside `ok`.
#[derive(Debug)]
struct AnyHolderOfItsKey(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AnyHolderOfItsKey {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wildcard_listener_is_asked_through_its_loopback() {
        let at = |text: &str| reachable(text.parse().expect("address"));
        assert_eq!(at("0.0.0.0:8443"), "127.0.0.1:8443".parse().expect("v4"));
        assert_eq!(at("[::]:8443"), "[::1]:8443".parse().expect("v6"));
        assert_eq!(at("10.1.2.3:8080"), "10.1.2.3:8080".parse().expect("own"));
        assert_eq!(at("[::1]:8080"), "[::1]:8080".parse().expect("own v6"));
    }

    #[test]
    fn https_only_with_both_tls_files() {
        let mut config = RelayConfig {
            api_listen: "0.0.0.0:8443".parse().expect("address"),
            tls_cert: Some("/tls/cert.pem".into()),
            ..RelayConfig::default()
        };
        assert_eq!(Target::of(&config).url(), "http://127.0.0.1:8443/healthz");
        config.tls_key = Some("/tls/key.pem".into());
        assert_eq!(Target::of(&config).url(), "https://127.0.0.1:8443/healthz");
    }
}
