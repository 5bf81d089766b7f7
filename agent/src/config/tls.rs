//! TLS to an internal server: an extra CA bundle, a client certificate (mTLS),
//! and `insecure_skip_verify` for the desperate — checked and loaded at config time.

use std::fmt;
use std::path::{Path, PathBuf};

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
    pub extra_roots: Vec<reqwest::Certificate>,
    pub identity: Option<reqwest::Identity>,
    pub insecure_skip_verify: bool,
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
            let roots =
                reqwest::Certificate::from_pem_bundle(&read("ca_file", path)?).map_err(|e| {
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
            let mut pem = read("client_cert_file", cert)?;
            pem.push(b'\n');
            pem.extend(read("client_key_file", key)?);
            Some(reqwest::Identity::from_pem(&pem).map_err(|e| {
                format!("tls.client_cert_file/client_key_file: not a PEM certificate and private key: {e}")
            })?)
        }
        _ => return Err("tls: client_cert_file and client_key_file go together".to_owned()),
    };
    Ok(Tls {
        extra_roots,
        identity,
        insecure_skip_verify: file.insecure_skip_verify,
    })
}
