//! Certificate thumbprints for the JWT header: `x5t` (SHA-1) and `x5t#S256` (SHA-256) of
//! the certificate's DER, base64url without padding (RFC 7515 §4.1.7–8).

use aws_lc_rs::digest::{SHA1_FOR_LEGACY_USE_ONLY, SHA256, digest};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::key::normalize_pem;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Thumbprints {
    pub x5t: String,
    pub x5t_s256: String,
    /// The certified public key (the subjectPublicKey bits: PKCS#1 for RSA, the point for
    /// EC, the 32 bytes for Ed25519); `None` if the certificate cannot be read that far.
    pub public_key: Option<Vec<u8>>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CertificateError {
    #[error(
        "the certificate file is not PEM ({0}); expected a \"-----BEGIN CERTIFICATE-----\" block"
    )]
    NotPem(String),
    #[error("the certificate file holds no \"-----BEGIN CERTIFICATE-----\" block (found {0})")]
    NoCertificate(String),
    #[error(
        "the certificate file is neither PEM text nor a DER certificate; a PEM certificate (\"-----BEGIN CERTIFICATE-----\") is expected"
    )]
    NotCertificate,
}

/// Thumbprints of a certificate file: PEM, or DER as Windows exports a `.cer` by
/// default ("DER encoded binary X.509"), which the thumbprints are taken of anyway.
pub fn thumbprints_of_file(bytes: &[u8]) -> Result<Thumbprints, CertificateError> {
    if let Ok(text) = std::str::from_utf8(bytes) {
        return thumbprints(text);
    }
    use postern_protocol::certificate::{tbs, tbs_field};
    if tbs_field(bytes, tbs::SUBJECT_PUBLIC_KEY_INFO).is_none() {
        return Err(CertificateError::NotCertificate);
    }
    Ok(of_der(bytes))
}

/// Thumbprints of the first certificate in a PEM file (a chain's first is the leaf).
pub fn thumbprints(pem_text: &str) -> Result<Thumbprints, CertificateError> {
    let blocks = pem::parse_many(normalize_pem(pem_text))
        .map_err(|e| CertificateError::NotPem(e.to_string()))?;
    let Some(cert) = blocks.iter().find(|b| b.tag() == "CERTIFICATE") else {
        let found: Vec<String> = blocks.iter().map(|b| format!("{:?}", b.tag())).collect();
        return Err(CertificateError::NoCertificate(if found.is_empty() {
            "nothing".to_owned()
        } else {
            found.join(", ")
        }));
    };
    Ok(of_der(cert.contents()))
}

fn of_der(der: &[u8]) -> Thumbprints {
    Thumbprints {
        x5t: URL_SAFE_NO_PAD.encode(digest(&SHA1_FOR_LEGACY_USE_ONLY, der)),
        x5t_s256: URL_SAFE_NO_PAD.encode(digest(&SHA256, der)),
        public_key: certified_key(der),
    }
}

/// The subjectPublicKey of a DER certificate (RFC 5280 §4.1).
fn certified_key(cert: &[u8]) -> Option<Vec<u8>> {
    use pkcs8::der::{Decode, Encode};
    use postern_protocol::certificate::{tbs, tbs_field};
    let spki = tbs_field(cert, tbs::SUBJECT_PUBLIC_KEY_INFO)?
        .to_der()
        .ok()?;
    let spki = pkcs8::SubjectPublicKeyInfoRef::from_der(&spki).ok()?;
    spki.subject_public_key.as_bytes().map(<[u8]>::to_vec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_openssl::openssl;

    /// openssl's own fingerprints of `cert` in `dir`, turned from hex into base64url.
    fn openssl_fingerprint(dir: &std::path::Path, cert: &str, hash: &str) -> String {
        let out = openssl(dir, &["x509", "-noout", "-fingerprint", hash, "-in", cert]);
        let text = String::from_utf8_lossy(&out);
        let hex = text
            .trim()
            .rsplit('=')
            .next()
            .unwrap_or_default()
            .replace(':', "");
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
            .collect();
        URL_SAFE_NO_PAD.encode(bytes)
    }

    #[test]
    fn thumbprints_match_openssl() {
        let dir = std::env::temp_dir().join(format!("postern-x5t-{}", std::process::id()));
        openssl(
            &dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-subj",
                "/CN=postern-test",
                "-days",
                "2",
                "-keyout",
                "key.pem",
                "-out",
                "cert.pem",
            ],
        );
        let text = std::fs::read_to_string(dir.join("cert.pem")).expect("cert");
        let t = thumbprints(&text).expect("thumbprints");
        assert_eq!(t.x5t, openssl_fingerprint(&dir, "cert.pem", "-sha1"));
        assert_eq!(t.x5t_s256, openssl_fingerprint(&dir, "cert.pem", "-sha256"));
        assert_eq!(t.x5t.len(), 27);
        // The same certificate as DER (a Windows `.cer`) gives the same thumbprints.
        openssl(
            &dir,
            &[
                "x509", "-outform", "DER", "-in", "cert.pem", "-out", "cert.cer",
            ],
        );
        let bytes = std::fs::read(dir.join("cert.cer")).expect("der");
        assert_eq!(thumbprints_of_file(&bytes), Ok(t.clone()));
        // Binary that is not a certificate (a DER key, say) is named as such.
        assert_eq!(
            thumbprints_of_file(&[0x30, 0x03, 0x02, 0x01, 0xff, 0xfe]),
            Err(CertificateError::NotCertificate)
        );
        assert_eq!(t.x5t_s256.len(), 43);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The certified key, as read here, is the signer's public key for every kind of key
    /// a certificate can go with, and another key's certificate holds another.
    #[test]
    fn the_certified_key_is_the_signers_public_key() {
        use crate::jwt::{Algorithm, JwtSigner, KeyMaterial, PayloadTemplate};
        let dir = std::env::temp_dir().join(format!("postern-certkey-{}", std::process::id()));
        let kinds: [(&str, &[&str], Algorithm); 3] = [
            ("rsa", &["-newkey", "rsa:2048"], Algorithm::PS256),
            (
                "ec",
                &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
                Algorithm::ES256,
            ),
            ("ed", &["-newkey", "ed25519"], Algorithm::EdDSA),
        ];
        let mut certified = Vec::new();
        for (name, newkey, algorithm) in kinds {
            let (key, cert) = (format!("{name}.key"), format!("{name}.pem"));
            let mut args = vec!["req", "-x509", "-nodes", "-subj", "/CN=t", "-days", "2"];
            args.extend_from_slice(newkey);
            args.extend_from_slice(&["-keyout", &key, "-out", &cert]);
            openssl(&dir, &args);
            let read = |file: &str| std::fs::read_to_string(dir.join(file)).expect("read");
            let signer = JwtSigner::new(
                algorithm,
                KeyMaterial::PrivateKeyPem(read(&key)),
                &Default::default(),
                PayloadTemplate::parse(&Default::default()).expect("payload"),
            )
            .expect("signer");
            let from_cert = thumbprints(&read(&cert)).expect("cert").public_key;
            assert!(from_cert.is_some(), "{name}: read");
            assert_eq!(from_cert, signer.public_key(), "{name}");
            certified.push(from_cert);
        }
        // A certificate made for a second RSA key holds that key, not the first.
        openssl(
            &dir,
            &[
                "req",
                "-x509",
                "-nodes",
                "-subj",
                "/CN=t",
                "-days",
                "2",
                "-newkey",
                "rsa:2048",
                "-keyout",
                "other.key",
                "-out",
                "other.pem",
            ],
        );
        let other = std::fs::read_to_string(dir.join("other.pem")).expect("read");
        assert_ne!(thumbprints(&other).expect("cert").public_key, certified[0]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_key_is_not_a_certificate() {
        let err = thumbprints("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
            .expect_err("no cert");
        assert_eq!(
            err.to_string(),
            "the certificate file holds no \"-----BEGIN CERTIFICATE-----\" block (found \"PRIVATE KEY\")"
        );
        assert!(matches!(
            thumbprints("hello"),
            Err(CertificateError::NoCertificate(_))
        ));
    }
}
