//! The rustls settings of every HTTP client the agent builds: the system's CA roots read and
//! parsed once per process and shared; a connection's `ca_file` roots and identity in its own.

use std::sync::{Arc, Mutex, PoisonError};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tracing::{debug, warn};

use crate::config::tls::Tls;

#[derive(Debug, thiserror::Error)]
pub enum ClientTlsError {
    /// No system root and no `ca_file`: a client that could verify no server at all.
    #[error(
        "no CA certificates were loaded from the system (the system bundle, or SSL_CERT_FILE / SSL_CERT_DIR when set)"
    )]
    NoRoots,
    #[error("{0}")]
    Rustls(#[from] rustls::Error),
    #[error("{0}")]
    Verifier(#[from] rustls::client::VerifierBuilderError),
}

/// The system roots and the verifier over them alone, shared by every client that adds none.
struct System {
    roots: Arc<RootCertStore>,
    verifier: Arc<WebPkiServerVerifier>,
}

/// Held only once loaded with at least one root: an empty store is read again at the next
/// build, as every build read it before, so a fixed system bundle needs no restart.
static SYSTEM: Mutex<Option<Arc<System>>> = Mutex::new(None);

/// Drops the system roots read so far, so the next client reads them again: each load of
/// the config (start, reload) reads them once, and a reload after `update-ca-certificates`
/// trusts what it added.
pub fn read_system_roots_again() {
    *SYSTEM.lock().unwrap_or_else(PoisonError::into_inner) = None;
}

/// The settings for a client with `tls`'s trust and identity, ALPN `http/1.1` as reqwest
/// sets it without its `http2` feature.
pub fn client_config(tls: &Tls) -> Result<ClientConfig, ClientTlsError> {
    let provider = provider();
    let verifier: Arc<dyn ServerCertVerifier> = if tls.insecure_skip_verify {
        Arc::new(AcceptAny)
    } else {
        verifier(&tls.extra_roots, &provider)?
    };
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(rustls::ALL_VERSIONS)?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match &tls.identity {
        Some(id) => builder.with_client_auth_cert(id.chain.clone(), id.key.clone_key())?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The process's default provider if one was installed, else aws-lc-rs, as reqwest chose.
fn provider() -> Arc<CryptoProvider> {
    CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
}

/// The shared system verifier without extra roots; with them, a store of its own holding
/// them and a copy of the system's parsed anchors, never seen by another connection.
fn verifier(
    extra: &[CertificateDer<'static>],
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<WebPkiServerVerifier>, ClientTlsError> {
    let system = system(provider)?;
    if extra.is_empty() {
        return system
            .map(|s| s.verifier.clone())
            .ok_or(ClientTlsError::NoRoots);
    }
    let mut roots = RootCertStore::empty();
    for cert in extra {
        roots.add(cert.clone())?;
    }
    if let Some(system) = system {
        roots.roots.extend(system.roots.roots.iter().cloned());
    }
    Ok(WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone()).build()?)
}

/// The system roots, read on first use and then kept; `None` when there are none.
fn system(provider: &Arc<CryptoProvider>) -> Result<Option<Arc<System>>, ClientTlsError> {
    let mut held = SYSTEM.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(system) = held.as_ref() {
        return Ok(Some(system.clone()));
    }
    let loaded = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, ignored) = roots.add_parsable_certificates(loaded.certs);
    if ignored > 0 {
        warn!(
            ignored,
            "system CA root certificates ignored: they do not parse"
        );
    }
    for err in &loaded.errors {
        warn!(%err, "loading the system CA root certificates");
    }
    if roots.is_empty() {
        return Ok(None);
    }
    debug!(added, "system CA root certificates loaded");
    let roots = Arc::new(roots);
    let verifier =
        WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone()).build()?;
    let system = Arc::new(System { roots, verifier });
    *held = Some(system.clone());
    Ok(Some(system))
}

/// `insecure_skip_verify`: any certificate, any handshake signature, as reqwest's
/// `danger_accept_invalid_certs` accepted them.
#[derive(Debug)]
struct AcceptAny;

impl ServerCertVerifier for AcceptAny {
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
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![
            SignatureScheme::RSA_PKCS1_SHA1,
            SignatureScheme::ECDSA_SHA1_Legacy,
            SignatureScheme::RSA_PKCS1_SHA256,
            SignatureScheme::ECDSA_NISTP256_SHA256,
            SignatureScheme::RSA_PKCS1_SHA384,
            SignatureScheme::ECDSA_NISTP384_SHA384,
            SignatureScheme::RSA_PKCS1_SHA512,
            SignatureScheme::ECDSA_NISTP521_SHA512,
            SignatureScheme::RSA_PSS_SHA256,
            SignatureScheme::RSA_PSS_SHA384,
            SignatureScheme::RSA_PSS_SHA512,
            SignatureScheme::ED25519,
            SignatureScheme::ED448,
        ]
    }
}

/// Why an HTTP client could not be built: its TLS settings, or reqwest itself.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Tls(#[from] ClientTlsError),
    #[error(transparent)]
    Http(#[from] reqwest::Error),
}
