//! TLS to an internal server: an extra CA bundle, a client certificate (mTLS),
//! and `insecure_skip_verify` for the desperate — checked and loaded at config time.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;

/// `[connections.X.tls]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFile {
    /// PEM bundle trusted in addition to the system roots.
    pub ca_file: Option<PathBuf>,
    /// PEM certificate chain presented to the server (mTLS); needs `client_key_file`.
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

/// Loaded and checked; the client key never shows in `Debug`.
#[derive(Clone, Default)]
pub struct Tls {
    /// Trusted by this connection's client only, beside the system roots.
    pub extra_roots: Vec<CertificateDer<'static>>,
    pub identity: Option<ClientIdentity>,
    pub insecure_skip_verify: bool,
}

/// The client certificate chain and its key, as checked at load.
#[derive(Clone)]
pub struct ClientIdentity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: Arc<PrivateKeyDer<'static>>,
}

impl Tls {
    /// Whether the system's CA roots alone verify the server: no `ca_file` of its own, and
    /// verification not skipped.
    pub fn system_roots_only(&self) -> bool {
        !self.insecure_skip_verify && self.extra_roots.is_empty()
    }
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls")
            .field("extra_roots", &self.extra_roots.len())
            .field("client_certificate", &self.identity.is_some())
            .field("insecure_skip_verify", &self.insecure_skip_verify)
            .finish()
    }
}

pub fn resolve(file: Option<TlsFile>, base_dir: &Path) -> Result<Tls, String> {
    let Some(file) = file else {
        return Ok(Tls::default());
    };
    let read = |what: &str, path: &Path| {
        let path = base_dir.join(path);
        std::fs::read(&path).map_err(|e| format!("tls.{what} {}: {e}", path.display()))
    };
    let extra_roots = match &file.ca_file {
        Some(path) => {
            let roots = CertificateDer::pem_slice_iter(&read("ca_file", path)?)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| {
                    format!(
                        "tls.ca_file {}: not a PEM certificate bundle: {e}",
                        path.display()
                    )
                })?;
            if roots.is_empty() {
                return Err(format!(
                    "tls.ca_file {}: holds no certificate",
                    path.display()
                ));
            }
            roots
        }
        None => Vec::new(),
    };
    let identity = match (&file.client_cert_file, &file.client_key_file) {
        (None, None) => None,
        (Some(cert), Some(key)) => {
            super::check_private(&base_dir.join(key))
                .map_err(|e| format!("tls.client_key_file: {e}"))?;
            let cert_pem = read("client_cert_file", cert)?;
            let key_pem = read("client_key_file", key)?;
            Some(check_identity(
                &cert_pem,
                &key_pem,
                &base_dir.join(cert),
                &base_dir.join(key),
            )?)
        }
        _ => return Err("tls: client_cert_file and client_key_file go together".to_owned()),
    };
    Ok(Tls {
        extra_roots,
        identity,
        insecure_skip_verify: file.insecure_skip_verify,
    })
}

/// What rustls checks when the client is built (the certificate parses as X.509 v3, the
/// key is one it can sign with and matches it), so the config is refused at load with the
/// reason instead of every client build failing with "invalid peer certificate".
fn check_identity(
    cert_pem: &[u8],
    key_pem: &[u8],
    cert: &Path,
    key: &Path,
) -> Result<ClientIdentity, String> {
    let unusable = |why: String| {
        format!(
            "tls.client_cert_file {}: the client certificate is not usable: {why}",
            cert.display()
        )
    };
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| unusable(format!("not a PEM certificate: {e}")))?;
    if chain.is_empty() {
        return Err(unusable("the file holds no PEM certificate".to_owned()));
    }
    let private = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| {
        format!(
            "tls.client_key_file {}: not a PEM private key: {e}",
            key.display()
        )
    })?;
    let provider = rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider()));
    let identity = ClientIdentity {
        chain: chain.clone(),
        key: Arc::new(private.clone_key()),
    };
    match rustls::sign::CertifiedKey::from_der(chain, private, &provider) {
        Ok(_) => Ok(identity),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            Err(format!(
                "tls.client_key_file {}: the client key does not belong to the client certificate {}",
                key.display(),
                cert.display()
            ))
        }
        Err(rustls::Error::General(e)) => Err(format!(
            "tls.client_key_file {}: not a private key TLS can sign with: {e}",
            key.display()
        )),
        // webpki's error names itself only in Debug (`UnsupportedCertVersion`).
        Err(e) if format!("{e:?}").contains("UnsupportedCertVersion") => Err(unusable(
            "it is an X.509 v1 certificate; TLS needs v3 (issue it with extensions, such as \
             `openssl x509 -req … -extfile` holding extendedKeyUsage=clientAuth)"
                .to_owned(),
        )),
        Err(rustls::Error::InvalidCertificate(e)) => Err(unusable(format!("{e:?}"))),
        Err(e) => Err(unusable(e.to_string())),
    }
}
