//! The API's TLS: PEM certificate chain and key served by rustls (aws-lc-rs), swapped on
//! SIGHUP without touching live connections; a lapsed certificate is refused on reload.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::cert_dates::{Validity, shown};

/// A SIGHUP reload that fails is logged with `%e`, so each says its cause in its message.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the TLS certificate {path}: {reason}")]
    Cert { path: PathBuf, reason: String },
    #[error("cannot read the TLS key {path}: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error(
        "the TLS key {key} is not the key of the certificate {cert} (the first certificate in the file, the leaf, is the one it must match)"
    )]
    Mismatch { cert: PathBuf, key: PathBuf },
    #[error("the TLS certificate {path} cannot be served: {why} (valid from {} to {})", shown(.validity.not_before), shown(.validity.not_after))]
    Lapsed {
        path: PathBuf,
        why: String,
        validity: Validity,
    },
    #[error("cannot set up TLS: {0}")]
    Setup(rustls::Error),
}

/// What rustls can use, said when a key is refused.
const KEYS_TAKEN: &str = "the relay takes RSA keys of 2048 to 8192 bits, ECDSA keys on P-256, P-384 or P-521, and Ed25519 keys";

/// The current TLS settings; new connections take whatever is current.
pub struct TlsReloader {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Loaded>,
}

#[derive(Clone)]
struct Loaded {
    config: Arc<ServerConfig>,
    /// `None` when the leaf's dates cannot be read (rustls took it all the same).
    validity: Option<Validity>,
}

impl TlsReloader {
    /// The files as `serve` starts. A lapsed certificate is served, with an error in the
    /// log: refusing to start would take the agents' SSH side down with the API.
    pub fn load(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let loaded = read(cert, key)?;
        let now = SystemTime::now();
        if let Some(validity) = loaded.validity {
            if let Some(why) = validity.lapsed_at(now) {
                tracing::error!(cert = %cert.display(), not_before = %shown(validity.not_before), not_after = %shown(validity.not_after), "the TLS certificate {why}: callers that check certificates refuse it; renew it and send SIGHUP (systemctl reload postern-relay)");
            } else {
                warn_if_ending_soon(cert, validity, now);
            }
        }
        Ok(Self {
            cert: cert.to_owned(),
            key: key.to_owned(),
            current: RwLock::new(loaded),
        })
    }

    /// Reads the files again; on any error, an expired or not yet valid certificate
    /// too, the old settings stay in force.
    pub fn reload(&self) -> Result<(), TlsError> {
        let loaded = usable(&self.cert, read(&self.cert, &self.key)?)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = loaded;
        Ok(())
    }

    /// `postern-relay check`: what a reload would take, or why it would not.
    pub fn check(cert: &Path, key: &Path) -> Result<Option<Validity>, TlsError> {
        Ok(usable(cert, read(cert, key)?)?.validity)
    }

    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.loaded().config)
    }

    /// When the certificate served now ends, if its dates could be read.
    pub fn not_after(&self) -> Option<SystemTime> {
        self.loaded().validity.map(|v| v.not_after)
    }

    fn loaded(&self) -> Loaded {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Refuses a certificate that is expired or not valid yet, and warns of one that ends soon.
fn usable(cert: &Path, loaded: Loaded) -> Result<Loaded, TlsError> {
    let Some(validity) = loaded.validity else {
        return Ok(loaded);
    };
    let now = SystemTime::now();
    if let Some(why) = validity.lapsed_at(now) {
        return Err(TlsError::Lapsed {
            path: cert.to_owned(),
            why,
            validity,
        });
    }
    warn_if_ending_soon(cert, validity, now);
    Ok(loaded)
}

fn warn_if_ending_soon(cert: &Path, validity: Validity, now: SystemTime) {
    if validity.ends_soon(now) {
        tracing::warn!(cert = %cert.display(), not_after = %shown(validity.not_after), "the TLS certificate expires within 14 days: renew it and send SIGHUP (systemctl reload postern-relay)");
    }
}

/// Said, not refused: a key group-readable for a certificate manager's group is common,
/// and refusing one that worked yesterday would take the API down at a renewal.
fn warn_if_world_readable(key: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(key)
        && meta.permissions().mode() & 0o004 != 0
    {
        let mode = format!("{:o}", meta.permissions().mode() & 0o777);
        tracing::warn!(key = %key.display(), %mode, "the TLS key is readable by every user: chmod o-r it");
    }
}

/// The certificate chain in `cert`, the leaf first: never empty.
pub fn chain(cert: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Cert {
            path: cert.to_owned(),
            reason: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::Cert {
            path: cert.to_owned(),
            reason: "no CERTIFICATE block in the file".into(),
        });
    }
    Ok(chain)
}

fn read(cert: &Path, key: &Path) -> Result<Loaded, TlsError> {
    let chain = chain(cert)?;
    let validity = chain.first().and_then(|leaf| Validity::of(leaf));
    warn_if_world_readable(key);
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
        path: key.to_owned(),
        reason: e.to_string(),
    })?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    // First on its own: rustls says only "failed to parse private key" of a key it cannot
    // use (a 1024-bit RSA key, DSA), which `with_single_cert` reported as a mismatch.
    provider
        .key_provider
        .load_private_key(private.clone_key())
        .map_err(|e| TlsError::Key {
            path: key.to_owned(),
            reason: format!("{e}; {KEYS_TAKEN}"),
        })?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Setup)?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(|e| match e {
            rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
                TlsError::Mismatch {
                    cert: cert.to_owned(),
                    key: key.to_owned(),
                }
            }
            // The key loaded above: what is left is the certificate's (one rustls cannot parse).
            e => TlsError::Cert {
                path: cert.to_owned(),
                reason: e.to_string(),
            },
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Loaded {
        config: Arc::new(config),
        validity,
    })
}
