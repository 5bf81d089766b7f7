//! A connection's key, ready to sign: the aws-lc-rs key object is made once, where
//! `jsonwebtoken::crypto::sign` makes it again for every token (HMAC pads, RSA parse, EC/Ed public key).

use aws_lc_rs::hmac;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair,
    RSA_PKCS1_SHA256, RSA_PKCS1_SHA384, RSA_PKCS1_SHA512, RSA_PSS_SHA256, RSA_PSS_SHA384,
    RSA_PSS_SHA512, RsaEncoding, RsaKeyPair,
};
use jsonwebtoken::EncodingKey;

use super::signer::Algorithm;

pub(crate) enum SigningKey {
    /// Boxed: aws-lc keeps the whole HMAC context inline (over 1 KiB).
    Hmac(Box<hmac::Key>),
    Rsa(RsaKeyPair, &'static dyn RsaEncoding),
    Ecdsa(EcdsaKeyPair),
    Ed25519(Ed25519KeyPair),
}

impl SigningKey {
    /// `key` holds what jsonwebtoken keeps: the secret, PKCS#1 DER for RSA, PKCS#8 DER for
    /// EC and Ed25519 (the key loader has already checked it fits `algorithm`).
    pub(crate) fn new(algorithm: Algorithm, key: &EncodingKey) -> Result<Self, String> {
        let der = key.as_bytes();
        let rejected = |e: aws_lc_rs::error::KeyRejected| e.to_string();
        let hmac_key = |algorithm| SigningKey::Hmac(Box::new(hmac::Key::new(algorithm, der)));
        let rsa = |encoding: &'static dyn RsaEncoding| {
            RsaKeyPair::from_der(der)
                .map(|pair| SigningKey::Rsa(pair, encoding))
                .map_err(rejected)
        };
        let ecdsa = |curve| {
            EcdsaKeyPair::from_pkcs8(curve, der)
                .map(SigningKey::Ecdsa)
                .map_err(rejected)
        };
        match algorithm {
            Algorithm::HS256 => Ok(hmac_key(hmac::HMAC_SHA256)),
            Algorithm::HS384 => Ok(hmac_key(hmac::HMAC_SHA384)),
            Algorithm::HS512 => Ok(hmac_key(hmac::HMAC_SHA512)),
            Algorithm::RS256 => rsa(&RSA_PKCS1_SHA256),
            Algorithm::RS384 => rsa(&RSA_PKCS1_SHA384),
            Algorithm::RS512 => rsa(&RSA_PKCS1_SHA512),
            Algorithm::PS256 => rsa(&RSA_PSS_SHA256),
            Algorithm::PS384 => rsa(&RSA_PSS_SHA384),
            Algorithm::PS512 => rsa(&RSA_PSS_SHA512),
            Algorithm::ES256 => ecdsa(&ECDSA_P256_SHA256_FIXED_SIGNING),
            Algorithm::ES384 => ecdsa(&ECDSA_P384_SHA384_FIXED_SIGNING),
            Algorithm::EdDSA => Ed25519KeyPair::from_pkcs8(der)
                .map(SigningKey::Ed25519)
                .map_err(rejected),
        }
    }

    /// The public half as a certificate carries it (see `Thumbprints::public_key`);
    /// `None` for a shared secret.
    pub(crate) fn public_key(&self) -> Option<Vec<u8>> {
        use aws_lc_rs::signature::KeyPair;
        match self {
            SigningKey::Hmac(_) => None,
            SigningKey::Rsa(pair, _) => Some(pair.public_key().as_ref().to_vec()),
            SigningKey::Ecdsa(pair) => Some(pair.public_key().as_ref().to_vec()),
            SigningKey::Ed25519(pair) => Some(pair.public_key().as_ref().to_vec()),
        }
    }

    /// The raw signature of `message` (ECDSA in the fixed `r || s` form JWS uses).
    pub(crate) fn sign(&self, message: &[u8]) -> Result<Vec<u8>, aws_lc_rs::error::Unspecified> {
        match self {
            SigningKey::Hmac(key) => Ok(hmac::sign(key, message).as_ref().to_vec()),
            SigningKey::Rsa(pair, encoding) => {
                let mut signature = vec![0; pair.public_modulus_len()];
                pair.sign(*encoding, &SystemRandom::new(), message, &mut signature)?;
                Ok(signature)
            }
            SigningKey::Ecdsa(pair) => {
                Ok(pair.sign(&SystemRandom::new(), message)?.as_ref().to_vec())
            }
            SigningKey::Ed25519(pair) => Ok(pair.sign(message).as_ref().to_vec()),
        }
    }
}
