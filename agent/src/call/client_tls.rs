//! The rustls settings of every HTTP client the agent builds: the system's CA roots read and
//! parsed once per config load and shared; a connection's `ca_file` roots and identity in its own.

use std::sync::{Arc, Mutex, PoisonError};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, OtherError, RootCertStore, SignatureScheme};
use tracing::{debug, warn};

use crate::config::tls::Tls;

#[derive(Debug, thiserror::Error)]
pub enum ClientTlsError {
    #[error("{0}")]
    Rustls(#[from] rustls::Error),
    #[error("{0}")]
    Verifier(#[from] rustls::client::VerifierBuilderError),
}

/// The system roots and the verifier over them alone, shared by every client that adds none.
struct System {
    /// Whether the system has any: the verifier holds them, and only this is asked.
    has_roots: bool,
    /// Over the roots; without any, [`NoSystemRoots`].
    verifier: Arc<dyn ServerCertVerifier>,
}

/// The system roots as read for this load of the config, none among them or not.
static SYSTEM: Mutex<Option<Arc<System>>> = Mutex::new(None);

/// Drops the system roots read so far, so the next client reads them again: each load of
/// the config (start, reload) reads them once, and a reload after `update-ca-certificates`
/// (or after a missing bundle was installed) trusts what it added.
pub fn read_system_roots_again() {
    *SYSTEM.lock().unwrap_or_else(PoisonError::into_inner) = None;
}

/// Whether this load of the config found any system root.
pub fn system_has_roots() -> bool {
    system(&provider()).is_ok_and(|s| s.has_roots)
}

/// The settings for a client with `tls`'s trust and identity, ALPN `http/1.1` as reqwest
/// sets it without its `http2` feature.
pub fn client_config(tls: &Tls) -> Result<ClientConfig, ClientTlsError> {
    let provider = provider();
    let verifier: Arc<dyn ServerCertVerifier> = if tls.insecure_skip_verify {
        Arc::new(AcceptAny)
    } else if tls.system_roots_only() {
        system(&provider)?.verifier.clone()
    } else {
        with_extra_roots(&tls.extra_roots, &provider)?
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

/// A verifier of its own over `extra`, never seen by another connection, then the shared
/// system verifier for a server `extra` did not issue: the system's anchors (~150) are
/// not copied into each connection that has a `ca_file`, tens of KB each.
fn with_extra_roots(
    extra: &[CertificateDer<'static>],
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ServerCertVerifier>, ClientTlsError> {
    let mut roots = RootCertStore::empty();
    for cert in extra {
        roots.add(cert.clone())?;
    }
    let own =
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone()).build()?;
    let system = system(provider)?;
    // Without system roots, a server its own CA did not issue is an unknown issuer, not
    // one "only a system root could verify": the connection has a `ca_file`.
    if !system.has_roots {
        return Ok(own);
    }
    Ok(Arc::new(OwnThenSystem {
        own,
        system: system.verifier.clone(),
    }))
}

/// A connection's own CAs first, then the system's.
#[derive(Debug)]
struct OwnThenSystem {
    own: Arc<WebPkiServerVerifier>,
    system: Arc<dyn ServerCertVerifier>,
}

impl ServerCertVerifier for OwnThenSystem {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verify = |v: &dyn ServerCertVerifier| {
            v.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        };
        let own = match verify(self.own.as_ref()) {
            Ok(verified) => return Ok(verified),
            Err(e) => e,
        };
        // Not verified by the connection's CAs (none issued it, or one of theirs names
        // the same issuer): one of the system's may have. When neither does, the more
        // telling error: the connection's own, unless it only found no issuer.
        verify(self.system.as_ref()).map_err(|system| {
            let unknown = rustls::CertificateError::UnknownIssuer;
            match own {
                rustls::Error::InvalidCertificate(e) if e == unknown => system,
                own => own,
            }
        })
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.own.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.own.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.own.supported_verify_schemes()
    }
}

/// The system roots, read on first use in this load of the config and then kept.
fn system(provider: &Arc<CryptoProvider>) -> Result<Arc<System>, ClientTlsError> {
    let mut held = SYSTEM.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(system) = held.as_ref() {
        return Ok(system.clone());
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
    debug!(added, "system CA root certificates loaded");
    let has_roots = !roots.is_empty();
    let verifier: Arc<dyn ServerCertVerifier> = if has_roots {
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone()).build()?
    } else {
        Arc::new(NoSystemRoots)
    };
    let system = Arc::new(System {
        has_roots,
        verifier,
    });
    *held = Some(system.clone());
    Ok(system)
}

/// What a server that only a system root could verify is refused with while there is none.
#[derive(Debug, thiserror::Error)]
#[error(
    "the agent has no system CA certificates to verify this server with (none in the system bundle, or in SSL_CERT_FILE / SSL_CERT_DIR when set): install the ca-certificates package, or set SSL_CERT_FILE to a CA bundle, then reload the agent; for an internal server, its connection's tls.ca_file can name its CA instead"
)]
struct NoSystemRootsError;

fn no_system_roots() -> rustls::Error {
    rustls::Error::Other(OtherError(Arc::new(NoSystemRootsError)))
}

/// Stands for the system roots while there are none: every server is refused saying so,
/// rather than the agent refusing to start or a bare "unknown issuer".
#[derive(Debug)]
struct NoSystemRoots;

impl ServerCertVerifier for NoSystemRoots {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Err(no_system_roots())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(no_system_roots())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(no_system_roots())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        AcceptAny.supported_verify_schemes()
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::pem::PemObject;

    /// A CA named `ca_name` and a server certificate it signed for `internal.example`, made
    /// by openssl.
    struct Pki {
        ca: CertificateDer<'static>,
        server: CertificateDer<'static>,
    }

    fn pki(dir: &std::path::Path, ca_name: &str) -> Pki {
        let run = |args: &[&str]| {
            crate::test_openssl::openssl(dir, args);
        };
        run(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            &format!("/CN={ca_name}"),
        ]);
        run(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=internal.example",
        ]);
        std::fs::write(dir.join("ext"), "subjectAltName=DNS:internal.example\n").expect("ext");
        run(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "ext",
        ]);
        let cert = |name: &str| {
            CertificateDer::from_pem_file(dir.join(name)).expect("a certificate openssl made")
        };
        Pki {
            ca: cert("ca.pem"),
            server: cert("server.pem"),
        }
    }

    /// When neither the connection's CA nor the system's verify a server, the error said is
    /// the connection's own (a wrong name, say), unless its CA simply did not issue the
    /// certificate: then the system's, which may have been meant to.
    #[test]
    fn the_more_telling_refusal_is_said() {
        let dir =
            std::env::temp_dir().join(format!("postern-own-then-system-{}", std::process::id()));
        let ours = pki(&dir.join("ours"), "our CA");
        let theirs = pki(&dir.join("theirs"), "their CA");
        let namesake = pki(&dir.join("namesake"), "our CA");
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut roots = RootCertStore::empty();
        roots.add(ours.ca.clone()).expect("our CA");
        let own = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .expect("verifier");
        // A system without roots refuses every server, saying so: which refusal is said
        // shows which verifier had the last word.
        let verifier = OwnThenSystem {
            own,
            system: Arc::new(NoSystemRoots),
        };
        let verify = |cert: &CertificateDer<'_>, name: &'static str| {
            let name = ServerName::try_from(name).expect("a name");
            verifier.verify_server_cert(cert, &[], &name, &[], UnixTime::now())
        };

        assert!(verify(&ours.server, "internal.example").is_ok());
        // Ours issued it, for another name: that is the trouble, not the system's roots.
        let wrong_name = verify(&ours.server, "other.example").expect_err("another name");
        assert!(
            matches!(
                wrong_name,
                rustls::Error::InvalidCertificate(
                    rustls::CertificateError::NotValidForNameContext { .. }
                )
            ),
            "{wrong_name:?}"
        );
        // Ours did not issue it: the system's refusal.
        let unknown = verify(&theirs.server, "internal.example").expect_err("another CA's");
        assert!(
            unknown.to_string().contains("no system CA certificates"),
            "{unknown:?}"
        );
        // One of ours has the issuer's name but did not sign it (a CA made again under its
        // old name): that is said, not the system's roots.
        let namesake = verify(&namesake.server, "internal.example").expect_err("a namesake's");
        assert_eq!(
            namesake,
            rustls::Error::InvalidCertificate(rustls::CertificateError::BadSignature)
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
