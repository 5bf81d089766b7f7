//! Loads a private key PEM as users paste it (PKCS#8, PKCS#1, SEC1, Ed25519), finds what
//! kind of key it is by parsing it, and turns it into a `jsonwebtoken` signing key.

use std::fmt;

use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair,
    EcdsaSigningAlgorithm, Ed25519KeyPair, RsaKeyPair,
};
use jsonwebtoken::EncodingKey;
use simple_asn1::{ASN1Block, BigInt, OID};

const EXPECTED_PEM: &str = "\"-----BEGIN PRIVATE KEY-----\" (PKCS#8), \
     \"-----BEGIN RSA PRIVATE KEY-----\" (PKCS#1) or \"-----BEGIN EC PRIVATE KEY-----\" (SEC1)";

/// The RSA sizes the crypto library signs with; smaller keys are reported, not loaded-and-validated,
/// so the caller can refuse them with a message naming their size.
const RSA_MIN_BITS: usize = 2048;
const RSA_MAX_BITS: usize = 8192;

const OID_RSA: &[u64] = &[1, 2, 840, 113_549, 1, 1, 1];
/// RSASSA-PSS: an RSA key its owner restricted to PSS signatures (`openssl genpkey
/// -algorithm RSA-PSS`); inside, an ordinary PKCS#1 key.
const OID_RSA_PSS: &[u64] = &[1, 2, 840, 113_549, 1, 1, 10];
const OID_EC: &[u64] = &[1, 2, 840, 10_045, 2, 1];
const OID_ED25519: &[u64] = &[1, 3, 101, 112];
const OID_P256: &[u64] = &[1, 2, 840, 10_045, 3, 1, 7];
const OID_P384: &[u64] = &[1, 3, 132, 0, 34];

/// What a PEM holds, found by parsing (not guessing from the label only where avoidable).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Rsa {
        bits: usize,
    },
    /// Signs PS256/384/512 only.
    RsaPss {
        bits: usize,
    },
    EcP256,
    EcP384,
    Ed25519,
}

impl fmt::Display for KeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyKind::Rsa { bits } => write!(f, "RSA {bits}-bit"),
            KeyKind::RsaPss { bits } => write!(
                f,
                "RSA-PSS {bits}-bit (restricted to PSS signatures: PS256, PS384, PS512)"
            ),
            KeyKind::EcP256 => f.write_str("EC P-256"),
            KeyKind::EcP384 => f.write_str("EC P-384"),
            KeyKind::Ed25519 => f.write_str("Ed25519"),
        }
    }
}

// Messages never quote the key text: it is a secret, and errors end up in logs.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("the private key is not PEM text: no \"-----BEGIN ...-----\" line was found; expected {expected}", expected = EXPECTED_PEM)]
    NotPem,
    #[error(
        "the private key PEM is malformed ({reason}); expected a \"-----BEGIN <label>-----\" line, base64 lines, then the matching \"-----END <label>-----\" line"
    )]
    MalformedPem { reason: String },
    #[error("the PEM holds {found} but no private key (a public key or certificate cannot sign); expected {expected}", expected = EXPECTED_PEM)]
    NoPrivateKey { found: String },
    #[error("the PEM block \"{label}\" is not a supported private key; expected {expected}", expected = EXPECTED_PEM)]
    UnsupportedLabel { label: String },
    #[error(
        "the private key is encrypted with a passphrase; for a \"BEGIN ENCRYPTED PRIVATE KEY\" (PKCS#8) key set private_key_passphrase_file or private_key_passphrase_env; otherwise decrypt it with `openssl pkey -in key.pem -out key-plain.pem` (it asks for the passphrase) and protect the result like the original"
    )]
    Encrypted,
    #[error(
        "could not decrypt the encrypted PKCS#8 private key ({reason}): the passphrase is wrong, or the key uses a scheme postern does not read (expected PBES2: PBKDF2 or scrypt with AES-CBC, as `openssl pkcs8 -topk8` writes)"
    )]
    Decrypt { reason: String },
    #[error(
        "the private key uses OpenSSL's legacy PEM encryption (\"Proc-Type: 4,ENCRYPTED\"), which postern does not read; convert it to encrypted PKCS#8 with `openssl pkcs8 -topk8 -in key.pem -out key-pkcs8.pem` (it asks for the old and a new passphrase)"
    )]
    LegacyEncrypted,
    #[error(
        "the private key is in OpenSSH format (\"BEGIN OPENSSH PRIVATE KEY\"); expected PEM: convert a copy of an RSA or ECDSA key with `ssh-keygen -p -m PKCS8 -f <copy>`, or generate the key with openssl"
    )]
    OpenSsh,
    #[error(
        "the {format} private key is damaged or is not {format} ({reason}); expected an unencrypted {format} key"
    )]
    Malformed {
        format: &'static str,
        reason: String,
    },
    #[error(
        "the key is {algorithm}, which cannot sign these JWTs; expected an RSA, EC P-256, EC P-384 or Ed25519 key"
    )]
    UnsupportedAlgorithm { algorithm: String },
    #[error(
        "the EC key is on curve {curve}; expected P-256 (prime256v1, for ES256) or P-384 (secp384r1, for ES384)"
    )]
    UnsupportedCurve { curve: String },
    #[error(
        "the SEC1 EC private key does not name its curve; expected one with curve parameters, as `openssl ecparam -name prime256v1 -genkey -noout` writes"
    )]
    MissingCurve,
    #[error("the RSA key is {bits}-bit; expected 2048 to 8192 bits")]
    RsaTooLarge { bits: usize },
    #[error(
        "the {kind} key was rejected by the crypto library ({reason}), so it is damaged or inconsistent; expected a valid key: export or generate it again"
    )]
    Rejected { kind: KeyKind, reason: String },
}

/// Normalises PEM text as users paste it: trims whitespace and one pair of surrounding quotes
/// ('"' or '\''), turns literal `\n` / `\r\n` two-character escape sequences into real newlines,
/// fixes CRLF.
pub fn normalize_pem(text: &str) -> String {
    let trimmed = text.trim();
    let unquoted = ['"', '\'']
        .iter()
        .find_map(|q| trimmed.strip_prefix(*q)?.strip_suffix(*q))
        .unwrap_or(trimmed);
    // Base64 has no backslashes, so an escape can only be a mangled line break.
    unquoted
        .replace("\\r\\n", "\n")
        .replace("\\n", "\n")
        .replace("\r\n", "\n")
        .replace('\r', "\n")
        .trim()
        .to_owned()
}

/// Loads a private key PEM (PKCS#8 "BEGIN PRIVATE KEY", PKCS#1 "BEGIN RSA PRIVATE KEY", SEC1
/// "BEGIN EC PRIVATE KEY", Ed25519 PKCS#8) and returns its kind plus a `jsonwebtoken::EncodingKey`.
///
/// Every key is checked by the crypto library that will sign with it, except RSA keys under
/// 2048 bits: that library refuses to load them, so they come back with their size for the
/// caller to refuse.
pub fn load_private_key(pem_text: &str) -> Result<(KeyKind, EncodingKey), KeyError> {
    let block = private_key_block(&normalize_pem(pem_text))?;
    let der = block.contents();
    match block.tag() {
        "PRIVATE KEY" => load_pkcs8(der),
        "RSA PRIVATE KEY" => load_pkcs1(der),
        "EC PRIVATE KEY" => load_sec1(der),
        "ENCRYPTED PRIVATE KEY" => Err(KeyError::Encrypted),
        "OPENSSH PRIVATE KEY" => Err(KeyError::OpenSsh),
        other => Err(KeyError::UnsupportedLabel {
            label: other.to_owned(),
        }),
    }
}

/// The first private key block; others (certificates, `EC PARAMETERS`) may sit beside it.
fn private_key_block(text: &str) -> Result<pem::Pem, KeyError> {
    let blocks = pem::parse_many(text).map_err(|e| KeyError::MalformedPem {
        reason: e.to_string(),
    })?;
    if blocks.is_empty() {
        return Err(if text.contains("-----BEGIN ") {
            KeyError::MalformedPem {
                reason: "the \"-----BEGIN\" line has no matching \"-----END\" line".to_owned(),
            }
        } else {
            KeyError::NotPem
        });
    }
    let labels: Vec<String> = blocks.iter().map(|b| format!("\"{}\"", b.tag())).collect();
    let Some(block) = blocks
        .into_iter()
        .find(|b| b.tag().ends_with("PRIVATE KEY"))
    else {
        return Err(KeyError::NoPrivateKey {
            found: labels.join(", "),
        });
    };
    // Legacy OpenSSL encryption keeps the usual label and marks the block with headers.
    if block
        .headers()
        .get("Proc-Type")
        .is_some_and(|v| v.contains("ENCRYPTED"))
    {
        return Err(KeyError::Encrypted);
    }
    Ok(block)
}

fn load_pkcs8(der: &[u8]) -> Result<(KeyKind, EncodingKey), KeyError> {
    let malformed = |reason: &str| KeyError::Malformed {
        format: "PKCS#8",
        reason: reason.to_owned(),
    };
    let blocks = simple_asn1::from_der(der).map_err(|e| malformed(&e.to_string()))?;
    let [ASN1Block::Sequence(_, fields)] = blocks.as_slice() else {
        return Err(malformed("expected one SEQUENCE"));
    };
    let (Some(ASN1Block::Sequence(_, algorithm)), Some(ASN1Block::OctetString(_, inner))) =
        (fields.get(1), fields.get(2))
    else {
        return Err(malformed("expected an algorithm and a private key"));
    };
    let Some(ASN1Block::ObjectIdentifier(_, algorithm_oid)) = algorithm.first() else {
        return Err(malformed("the algorithm has no object identifier"));
    };
    let algorithm_oid = oid_numbers(algorithm_oid);
    match algorithm_oid.as_slice() {
        OID_RSA => load_pkcs1(inner),
        OID_RSA_PSS => match load_pkcs1(inner)? {
            (KeyKind::Rsa { bits }, key) => Ok((KeyKind::RsaPss { bits }, key)),
            loaded => Ok(loaded),
        },
        OID_EC => {
            let Some(ASN1Block::ObjectIdentifier(_, curve)) = algorithm.get(1) else {
                return Err(malformed("the EC key does not name its curve"));
            };
            let (kind, signing) = curve_of(curve)?;
            EcdsaKeyPair::from_pkcs8(signing, der).map_err(|e| rejected(kind, &e))?;
            Ok((kind, EncodingKey::from_ec_der(der)))
        }
        OID_ED25519 => {
            Ed25519KeyPair::from_pkcs8(der).map_err(|e| rejected(KeyKind::Ed25519, &e))?;
            Ok((KeyKind::Ed25519, EncodingKey::from_ed_der(der)))
        }
        other => Err(KeyError::UnsupportedAlgorithm {
            algorithm: algorithm_name(other),
        }),
    }
}

fn load_pkcs1(der: &[u8]) -> Result<(KeyKind, EncodingKey), KeyError> {
    let malformed = |reason: &str| KeyError::Malformed {
        format: "PKCS#1 RSA",
        reason: reason.to_owned(),
    };
    let blocks = simple_asn1::from_der(der).map_err(|e| malformed(&e.to_string()))?;
    let [ASN1Block::Sequence(_, fields)] = blocks.as_slice() else {
        return Err(malformed("expected one SEQUENCE"));
    };
    let Some(ASN1Block::Integer(_, modulus)) = fields.get(1) else {
        return Err(malformed("expected the modulus as its second field"));
    };
    if *modulus <= BigInt::from(0u8) {
        return Err(malformed("the modulus is not positive"));
    }
    let bits = usize::try_from(modulus.bits()).unwrap_or(usize::MAX);
    let kind = KeyKind::Rsa { bits };
    if bits > RSA_MAX_BITS {
        return Err(KeyError::RsaTooLarge { bits });
    }
    if bits >= RSA_MIN_BITS {
        RsaKeyPair::from_der(der).map_err(|e| rejected(kind, &e))?;
    }
    // jsonwebtoken signs RSA from the PKCS#1 structure, even for PKCS#8 input.
    Ok((kind, EncodingKey::from_rsa_der(der)))
}

/// SEC1 ("BEGIN EC PRIVATE KEY"), which jsonwebtoken does not read: re-wrapped as PKCS#8.
fn load_sec1(der: &[u8]) -> Result<(KeyKind, EncodingKey), KeyError> {
    let malformed = |reason: &str| KeyError::Malformed {
        format: "SEC1 EC",
        reason: reason.to_owned(),
    };
    let blocks = simple_asn1::from_der(der).map_err(|e| malformed(&e.to_string()))?;
    let [ASN1Block::Sequence(_, fields)] = blocks.as_slice() else {
        return Err(malformed("expected one SEQUENCE"));
    };
    // Only the `[0] parameters` field holds an object identifier: the named curve.
    let curve = fields.iter().find_map(|field| match field {
        ASN1Block::Explicit(_, _, _, inner) => match inner.as_ref() {
            ASN1Block::ObjectIdentifier(_, oid) => Some(oid),
            _ => None,
        },
        _ => None,
    });
    let (kind, signing) = curve_of(curve.ok_or(KeyError::MissingCurve)?)?;
    let pair = EcdsaKeyPair::from_private_key_der(signing, der).map_err(|e| rejected(kind, &e))?;
    let pkcs8 = pair.to_pkcs8v1().map_err(|e| KeyError::Rejected {
        kind,
        reason: e.to_string(),
    })?;
    Ok((kind, EncodingKey::from_ec_der(pkcs8.as_ref())))
}

fn curve_of(oid: &OID) -> Result<(KeyKind, &'static EcdsaSigningAlgorithm), KeyError> {
    match oid_numbers(oid).as_slice() {
        OID_P256 => Ok((KeyKind::EcP256, &ECDSA_P256_SHA256_FIXED_SIGNING)),
        OID_P384 => Ok((KeyKind::EcP384, &ECDSA_P384_SHA384_FIXED_SIGNING)),
        other => Err(KeyError::UnsupportedCurve {
            curve: curve_name(other),
        }),
    }
}

fn rejected(kind: KeyKind, error: &aws_lc_rs::error::KeyRejected) -> KeyError {
    KeyError::Rejected {
        kind,
        reason: error.to_string(),
    }
}

/// A public key's kind, from its SubjectPublicKeyInfo (or PKCS#1 for "RSA PUBLIC KEY").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublicKind {
    Rsa,
    /// An RSA key restricted to PSS signatures: verifies PS256/384/512 only.
    RsaPss,
    EcP256,
    EcP384,
    Ed25519,
    /// Described for the message, e.g. "an EC public key on curve 1.3.132.0.35".
    Unknown(String),
}

impl fmt::Display for PublicKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PublicKind::Rsa => f.write_str("an RSA public key"),
            PublicKind::RsaPss => f.write_str(
                "an RSA-PSS public key (restricted to PSS signatures: PS256, PS384, PS512)",
            ),
            PublicKind::EcP256 => f.write_str("an EC P-256 public key"),
            PublicKind::EcP384 => f.write_str("an EC P-384 public key"),
            PublicKind::Ed25519 => f.write_str("an Ed25519 public key"),
            PublicKind::Unknown(what) => f.write_str(what),
        }
    }
}

/// The kind of the first SubjectPublicKeyInfo in `der`: a SEQUENCE of an algorithm
/// SEQUENCE and a BIT STRING. A certificate's own signature algorithm comes before its
/// subject's key, but sits in a SEQUENCE of three, so it is not taken for the key.
pub fn public_key_kind(der: &[u8]) -> PublicKind {
    use ASN1Block as B;
    fn find(blocks: &[B]) -> Option<&[B]> {
        blocks.iter().find_map(|block| match block {
            B::Sequence(_, fields) => match fields.as_slice() {
                [B::Sequence(_, algorithm), B::BitString(..)]
                    if matches!(algorithm.first(), Some(B::ObjectIdentifier(..))) =>
                {
                    Some(algorithm.as_slice())
                }
                _ => find(fields),
            },
            B::Explicit(_, _, _, inner) => find(std::slice::from_ref(inner.as_ref())),
            _ => None,
        })
    }
    let arcs = |block: Option<&B>| match block {
        Some(B::ObjectIdentifier(_, oid)) => oid_numbers(oid),
        _ => Vec::new(),
    };
    let blocks = simple_asn1::from_der(der).unwrap_or_default();
    let Some(algorithm) = find(&blocks) else {
        return PublicKind::Unknown("a PEM block whose public key cannot be read".to_owned());
    };
    match arcs(algorithm.first()).as_slice() {
        OID_RSA => PublicKind::Rsa,
        OID_RSA_PSS => PublicKind::RsaPss,
        OID_ED25519 => PublicKind::Ed25519,
        OID_EC => match arcs(algorithm.get(1)).as_slice() {
            OID_P256 => PublicKind::EcP256,
            OID_P384 => PublicKind::EcP384,
            other => PublicKind::Unknown(format!("an EC public key on curve {}", dotted(other))),
        },
        other => PublicKind::Unknown(format!("a public key of algorithm {}", dotted(other))),
    }
}

/// An OID's arcs; an arc too large for u64 becomes an empty list, which matches nothing.
fn oid_numbers(oid: &OID) -> Vec<u64> {
    oid.as_vec::<u64>().unwrap_or_default()
}

fn dotted(arcs: &[u64]) -> String {
    arcs.iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(".")
}

fn algorithm_name(arcs: &[u64]) -> String {
    let name = match arcs {
        [1, 2, 840, 10_040, 4, 1] => "DSA",
        [1, 3, 101, 110] => "X25519",
        [1, 3, 101, 111] => "X448",
        [1, 3, 101, 113] => "Ed448",
        _ => return format!("an unknown algorithm (OID {})", dotted(arcs)),
    };
    format!("{name} (OID {})", dotted(arcs))
}

fn curve_name(arcs: &[u64]) -> String {
    let name = match arcs {
        [1, 3, 132, 0, 35] => "P-521 (secp521r1; ES512 is not supported)",
        [1, 3, 132, 0, 10] => "secp256k1 (ES256K is not supported)",
        [1, 3, 36, 3, 3, 2, 8, 1, 1, 7] => "brainpoolP256r1",
        _ => return format!("OID {}", dotted(arcs)),
    };
    name.to_owned()
}

#[cfg(test)]
pub(crate) mod test_keys {
    //! Real keys made with the `openssl` CLI once per test run, shared by the jwt tests.

    use std::path::Path;
    use std::sync::OnceLock;

    pub(crate) struct TestKeys {
        pub rsa_pkcs8: String,
        pub rsa_pkcs1: String,
        pub rsa_public: String,
        pub rsa1024_pkcs8: String,
        pub ec256_sec1: String,
        pub ec256_sec1_with_params: String,
        pub ec256_pkcs8: String,
        pub ec256_public: String,
        pub ec384_sec1: String,
        pub ec384_pkcs8: String,
        pub ec384_public: String,
        pub ed25519_pkcs8: String,
        pub ed25519_public: String,
        pub ec521_pkcs8: String,
        pub encrypted_pkcs8: String,
        pub legacy_encrypted_rsa: String,
    }

    pub(crate) fn keys() -> &'static TestKeys {
        static KEYS: OnceLock<TestKeys> = OnceLock::new();
        KEYS.get_or_init(generate)
    }

    fn generate() -> TestKeys {
        let dir = std::env::temp_dir().join(format!("postern-jwt-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        let run = |args: &[&str]| {
            crate::test_openssl::openssl(&dir, args);
        };
        let read =
            |name: &str| std::fs::read_to_string(dir.join(name)).expect("read generated key");
        run(&[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            "rsa.pem",
        ]);
        run(&[
            "rsa",
            "-in",
            "rsa.pem",
            "-traditional",
            "-out",
            "rsa-pkcs1.pem",
        ]);
        run(&["pkey", "-in", "rsa.pem", "-pubout", "-out", "rsa-pub.pem"]);
        run(&[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:1024",
            "-out",
            "rsa1024.pem",
        ]);
        for (curve, name) in [
            ("prime256v1", "ec256"),
            ("secp384r1", "ec384"),
            ("secp521r1", "ec521"),
        ] {
            let sec1 = format!("{name}-sec1.pem");
            run(&[
                "ecparam", "-name", curve, "-genkey", "-noout", "-out", &sec1,
            ]);
            run(&[
                "pkcs8",
                "-topk8",
                "-nocrypt",
                "-in",
                &sec1,
                "-out",
                &format!("{name}.pem"),
            ]);
            run(&[
                "pkey",
                "-in",
                &sec1,
                "-pubout",
                "-out",
                &format!("{name}-pub.pem"),
            ]);
        }
        run(&[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-out",
            "ec256-params.pem",
        ]);
        run(&["genpkey", "-algorithm", "ed25519", "-out", "ed.pem"]);
        run(&["pkey", "-in", "ed.pem", "-pubout", "-out", "ed-pub.pem"]);
        run(&[
            "pkcs8",
            "-topk8",
            "-in",
            "ec256.pem",
            "-passout",
            "pass:secret",
            "-out",
            "enc.pem",
        ]);
        run(&[
            "rsa",
            "-in",
            "rsa.pem",
            "-traditional",
            "-aes128",
            "-passout",
            "pass:secret",
            "-out",
            "rsa-enc.pem",
        ]);
        let keys = TestKeys {
            rsa_pkcs8: read("rsa.pem"),
            rsa_pkcs1: read("rsa-pkcs1.pem"),
            rsa_public: read("rsa-pub.pem"),
            rsa1024_pkcs8: read("rsa1024.pem"),
            ec256_sec1: read("ec256-sec1.pem"),
            ec256_sec1_with_params: read("ec256-params.pem"),
            ec256_pkcs8: read("ec256.pem"),
            ec256_public: read("ec256-pub.pem"),
            ec384_sec1: read("ec384-sec1.pem"),
            ec384_pkcs8: read("ec384.pem"),
            ec384_public: read("ec384-pub.pem"),
            ed25519_pkcs8: read("ed.pem"),
            ed25519_public: read("ed-pub.pem"),
            ec521_pkcs8: read("ec521.pem"),
            encrypted_pkcs8: read("enc.pem"),
            legacy_encrypted_rsa: read("rsa-enc.pem"),
        };
        remove_dir(&dir);
        keys
    }

    fn remove_dir(dir: &Path) {
        let _ = std::fs::remove_dir_all(dir);
    }
}

#[cfg(test)]
mod tests {
    use super::test_keys::keys;
    use super::*;
    use jsonwebtoken::{Algorithm, DecodingKey};

    fn kind_of(pem: &str) -> KeyKind {
        match load_private_key(pem) {
            Ok((kind, _)) => kind,
            Err(e) => panic!("key should load: {e}"),
        }
    }

    fn load_err(pem: &str) -> KeyError {
        match load_private_key(pem) {
            Ok((kind, _)) => panic!("key should be refused, but loaded as {kind}"),
            Err(e) => e,
        }
    }

    /// Proves the loaded key really signs: the signature checks out against the public key.
    fn assert_signs(private_pem: &str, public_key: &DecodingKey, algorithm: Algorithm) {
        let (_, key) = load_private_key(private_pem).expect("loads");
        let message = b"header.payload";
        let signature = jsonwebtoken::crypto::sign(message, &key, algorithm).expect("signs");
        let ok = jsonwebtoken::crypto::verify(&signature, message, public_key, algorithm)
            .expect("verifies");
        assert!(ok, "{algorithm:?} signature must verify");
    }

    #[test]
    fn every_key_form_loads_with_its_kind() {
        let k = keys();
        assert_eq!(kind_of(&k.rsa_pkcs8), KeyKind::Rsa { bits: 2048 });
        assert_eq!(kind_of(&k.rsa_pkcs1), KeyKind::Rsa { bits: 2048 });
        assert_eq!(kind_of(&k.rsa1024_pkcs8), KeyKind::Rsa { bits: 1024 });
        assert_eq!(kind_of(&k.ec256_sec1), KeyKind::EcP256);
        assert_eq!(kind_of(&k.ec256_sec1_with_params), KeyKind::EcP256);
        assert_eq!(kind_of(&k.ec256_pkcs8), KeyKind::EcP256);
        assert_eq!(kind_of(&k.ec384_sec1), KeyKind::EcP384);
        assert_eq!(kind_of(&k.ec384_pkcs8), KeyKind::EcP384);
        assert_eq!(kind_of(&k.ed25519_pkcs8), KeyKind::Ed25519);
        assert!(k.rsa_pkcs1.contains("BEGIN RSA PRIVATE KEY"));
        assert!(k.ec256_sec1.contains("BEGIN EC PRIVATE KEY"));
        assert!(k.ec256_sec1_with_params.contains("BEGIN EC PARAMETERS"));
    }

    #[test]
    fn loaded_keys_sign_verifiably() {
        let k = keys();
        let rsa = DecodingKey::from_rsa_pem(k.rsa_public.as_bytes()).expect("rsa public");
        let ec256 = DecodingKey::from_ec_pem(k.ec256_public.as_bytes()).expect("ec256 public");
        let ec384 = DecodingKey::from_ec_pem(k.ec384_public.as_bytes()).expect("ec384 public");
        let ed = DecodingKey::from_ed_pem(k.ed25519_public.as_bytes()).expect("ed public");
        assert_signs(&k.rsa_pkcs8, &rsa, Algorithm::RS256);
        assert_signs(&k.rsa_pkcs1, &rsa, Algorithm::PS256);
        assert_signs(&k.ec256_sec1, &ec256, Algorithm::ES256);
        assert_signs(&k.ec256_pkcs8, &ec256, Algorithm::ES256);
        assert_signs(&k.ec384_sec1, &ec384, Algorithm::ES384);
        assert_signs(&k.ed25519_pkcs8, &ed, Algorithm::EdDSA);
    }

    #[test]
    fn pasted_forms_load() {
        let k = keys();
        let one_line = k.ec256_sec1.replace('\n', "\\n");
        assert!(!one_line.contains('\n'));
        assert_eq!(kind_of(&one_line), KeyKind::EcP256);
        assert_eq!(
            kind_of(&k.rsa_pkcs8.replace('\n', "\\r\\n")),
            KeyKind::Rsa { bits: 2048 }
        );
        assert_eq!(
            kind_of(&k.ed25519_pkcs8.replace('\n', "\r\n")),
            KeyKind::Ed25519
        );
        assert_eq!(
            kind_of(&format!("  \n\"{}\"\n ", k.ec384_pkcs8)),
            KeyKind::EcP384
        );
        assert_eq!(
            kind_of(&format!("'{}'", k.rsa_pkcs1.replace('\n', "\\n"))),
            KeyKind::Rsa { bits: 2048 }
        );
        // Newlines flattened to spaces, as some secret stores do.
        assert_eq!(kind_of(&k.ec256_pkcs8.replace('\n', " ")), KeyKind::EcP256);
    }

    #[test]
    fn normalize_pem_cleans_up_pastes() {
        assert_eq!(
            normalize_pem("  \"-----BEGIN X-----\\nAAAA\\r\\n-----END X-----\"  "),
            "-----BEGIN X-----\nAAAA\n-----END X-----"
        );
        assert_eq!(normalize_pem("'a\r\nb'"), "a\nb");
        assert_eq!(normalize_pem("\"unbalanced"), "\"unbalanced");
        assert_eq!(normalize_pem("\"'a'\""), "'a'");
        // Found by the pem_key fuzz target: an escaped line break at the very end was
        // left behind as a trailing newline once unescaped.
        assert_eq!(normalize_pem("-----END X-----\\n"), "-----END X-----");
    }

    #[test]
    fn refusals_say_what_was_found_and_expected() {
        let k = keys();
        let err = load_err("not a key at all");
        assert_eq!(err, KeyError::NotPem);
        assert!(err.to_string().contains("BEGIN PRIVATE KEY"), "{err}");

        let err = load_err(&k.rsa_public);
        assert_eq!(
            err,
            KeyError::NoPrivateKey {
                found: "\"PUBLIC KEY\"".into()
            }
        );
        assert!(err.to_string().contains("cannot sign"), "{err}");

        assert_eq!(load_err(&k.encrypted_pkcs8), KeyError::Encrypted);
        assert_eq!(load_err(&k.legacy_encrypted_rsa), KeyError::Encrypted);
        assert_eq!(
            load_err(
                "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----\n"
            ),
            KeyError::OpenSsh
        );
        assert_eq!(
            load_err("-----BEGIN DSA PRIVATE KEY-----\nAAAA\n-----END DSA PRIVATE KEY-----\n"),
            KeyError::UnsupportedLabel {
                label: "DSA PRIVATE KEY".into()
            }
        );

        let err = load_err(&k.ec521_pkcs8);
        assert!(
            matches!(&err, KeyError::UnsupportedCurve { curve } if curve.starts_with("P-521")),
            "{err}"
        );
        assert!(err.to_string().contains("expected P-256"), "{err}");

        let truncated: String = k.ec256_pkcs8.lines().take(2).collect::<Vec<_>>().join("\n");
        assert!(matches!(
            load_err(&truncated),
            KeyError::MalformedPem { .. }
        ));

        let garbage = "-----BEGIN PRIVATE KEY-----\nAAECAwQF\n-----END PRIVATE KEY-----\n";
        assert!(matches!(
            load_err(garbage),
            KeyError::Malformed {
                format: "PKCS#8",
                ..
            }
        ));
    }

    #[test]
    fn inconsistent_keys_are_rejected_at_load() {
        // Flip a bit of the embedded public key: the crypto library must notice the pair is broken.
        let block = pem::parse(&keys().ec256_pkcs8).expect("pem");
        let mut der = block.contents().to_vec();
        if let Some(last) = der.last_mut() {
            *last ^= 1;
        }
        let damaged = pem::encode(&pem::Pem::new("PRIVATE KEY", der));
        let err = load_err(&damaged);
        assert!(
            matches!(
                err,
                KeyError::Rejected {
                    kind: KeyKind::EcP256,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn key_kinds_display_for_messages() {
        assert_eq!(KeyKind::Rsa { bits: 3072 }.to_string(), "RSA 3072-bit");
        assert_eq!(KeyKind::EcP256.to_string(), "EC P-256");
        assert_eq!(KeyKind::EcP384.to_string(), "EC P-384");
        assert_eq!(KeyKind::Ed25519.to_string(), "Ed25519");
    }
}
