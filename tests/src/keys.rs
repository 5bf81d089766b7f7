//! Test and demo keys made at run time with aws-lc-rs (the project's one crypto
//! provider), as the PEM text users would have: PKCS#8 private, PKCS#1 public.

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::{KeyPair, KeySize};
use aws_lc_rs::signature::KeyPair as _;
use base64::Engine;

pub struct RsaTestKey {
    /// `-----BEGIN PRIVATE KEY-----` (PKCS#8).
    pub private_pem: String,
    /// `-----BEGIN RSA PUBLIC KEY-----` (PKCS#1).
    pub public_pem: String,
    /// PKCS#1 DER of the public key, for `jsonwebtoken::DecodingKey::from_rsa_der`.
    pub public_der: Vec<u8>,
}

pub fn rsa_2048() -> anyhow::Result<RsaTestKey> {
    let pair = KeyPair::generate(KeySize::Rsa2048)
        .map_err(|_| anyhow::anyhow!("RSA key generation failed"))?;
    let private_der = pair
        .as_der()
        .map_err(|_| anyhow::anyhow!("PKCS#8 encoding failed"))?;
    let public_der = pair.public_key().as_ref().to_vec();
    Ok(RsaTestKey {
        private_pem: pem("PRIVATE KEY", private_der.as_ref()),
        public_pem: pem("RSA PUBLIC KEY", &public_der),
        public_der,
    })
}

pub fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}
