//! `postern jwt sign` prints the JWT a connection would send now; `postern jwt decode`
//! shows a token's header and claims and, with `--verify-with`, checks its signature.

use std::io::Read;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

use super::out;
use crate::config::{AgentConfig, Auth};
use crate::jwt::bearer::unix_now;

/// Prints a freshly signed JWT for the connection (for an exchange: the assertion).
pub(crate) fn sign(config: &AgentConfig, connection: &str) -> Result<ExitCode> {
    let conn = config
        .connection(connection)
        .with_context(|| format!("no connection named {connection:?} in the config"))?;
    let Auth::JwtBearer(jwt) = &conn.auth else {
        bail!("connection {connection} has auth type none: it sends no JWT");
    };
    let token = jwt
        .signer
        .sign(unix_now(), &|name| std::env::var(name).ok())
        .context("signing")?;
    out::stdout(|out| writeln!(out, "{token}"))?;
    Ok(ExitCode::SUCCESS)
}

/// Prints header and claims; exit 1 when `--verify-with` is given and the signature fails.
pub(crate) fn decode(token: &str, verify_with: Option<&Path>) -> Result<ExitCode> {
    let token = if token == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading the token from stdin")?;
        text
    } else {
        token.to_owned()
    };
    let token = token.trim();
    if token.is_empty() {
        bail!("no token to decode: pass it as the argument, or `-` with the token on stdin");
    }
    let parts: Vec<&str> = token.split('.').collect();
    let [header, claims, _signature] = parts.as_slice() else {
        bail!(
            "not a compact JWT: expected three base64url parts separated by '.', found {}",
            parts.len()
        );
    };
    let header = part_json("header", header)?;
    let claims = part_json("claims", claims)?;
    let mut shown = format!(
        "header:\n{}\nclaims:\n{}\n",
        serde_json::to_string_pretty(&header)?,
        serde_json::to_string_pretty(&claims)?
    );
    for name in ["iat", "nbf", "exp"] {
        if let Some(Value::Number(t)) = claims.get(name) {
            shown.push_str(&format!("{name}: {}\n", describe_time(t)));
        }
    }
    let Some(key_file) = verify_with else {
        shown.push_str("signature: not checked (pass --verify-with KEYFILE)\n");
        out::stdout(|out| out.write_all(shown.as_bytes()))?;
        return Ok(ExitCode::SUCCESS);
    };
    // The header and claims are shown even when the key cannot be read.
    out::stdout(|out| out.write_all(shown.as_bytes()))?;
    let alg_name = header
        .get("alg")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let algorithm: Algorithm = alg_name.parse().map_err(|_| {
        anyhow::anyhow!("the header's alg {alg_name:?} is not one postern can verify")
    })?;
    let key = decoding_key(algorithm, key_file)?;
    let mut validation = Validation::new(algorithm);
    // Only the signature: times are shown above, audiences are the server's business.
    validation.validate_exp = false;
    validation.validate_aud = false;
    validation.set_required_spec_claims::<&str>(&[]);
    match jsonwebtoken::decode::<Value>(token, &key, &validation) {
        Ok(_) => {
            out::stdout(|out| {
                writeln!(out, "signature: valid ({alg_name}, {})", key_file.display())
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            out::stdout(|out| {
                writeln!(
                    out,
                    "signature: INVALID ({alg_name}, {}): {e}",
                    key_file.display()
                )
            })?;
            Ok(ExitCode::FAILURE)
        }
    }
}

fn part_json(what: &str, part: &str) -> Result<Value> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part.trim_end_matches('='))
        .with_context(|| format!("the {what} is not base64url"))?;
    serde_json::from_slice(&bytes).with_context(|| format!("the {what} is not JSON"))
}

/// A public key PEM (RSA, EC, Ed25519) or, for HS*, a file holding the shared secret.
/// The key's kind is read from the PEM first: jsonwebtoken takes an RSA private key
/// as if it were the public one (and then calls every signature invalid), and names a
/// key of the wrong kind only as `InvalidKeyFormat`.
fn decoding_key(algorithm: Algorithm, file: &Path) -> Result<DecodingKey> {
    let text = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    use Algorithm as A;
    let (needed, fits): (&str, fn(&PublicKind) -> bool) = match algorithm {
        A::HS256 | A::HS384 | A::HS512 => return Ok(DecodingKey::from_secret(text.trim_ascii())),
        A::RS256 | A::RS384 | A::RS512 | A::PS256 | A::PS384 | A::PS512 => {
            ("an RSA public key", |k| *k == PublicKind::Rsa)
        }
        A::ES256 => ("an EC P-256 public key", |k| *k == PublicKind::EcP256),
        A::ES384 => ("an EC P-384 public key", |k| *k == PublicKind::EcP384),
        A::EdDSA => ("an Ed25519 public key", |k| *k == PublicKind::Ed25519),
        other => bail!("postern cannot verify {other:?} signatures"),
    };
    let refuse = |holds: &str| -> anyhow::Error {
        anyhow::anyhow!(
            "{algorithm:?} needs {needed} PEM to verify with; {} holds {holds}",
            file.display()
        )
    };
    let kind = match key_in(&text) {
        KeyInFile::Public(kind) if fits(&kind) => kind,
        KeyInFile::Public(kind) => return Err(refuse(&kind.to_string())),
        KeyInFile::Private(what) => {
            return Err(refuse(&format!(
                "{what}, not a public key (write its public key with `openssl pkey -in {} -pubout`)",
                file.display()
            )));
        }
        KeyInFile::Other(what) => return Err(refuse(&what)),
    };
    let key = match kind {
        PublicKind::Rsa => DecodingKey::from_rsa_pem(&text),
        PublicKind::EcP256 | PublicKind::EcP384 => DecodingKey::from_ec_pem(&text),
        PublicKind::Ed25519 => DecodingKey::from_ed_pem(&text),
        PublicKind::Unknown(what) => return Err(refuse(&what)),
    };
    key.map_err(|e| refuse(&format!("{kind} that cannot be read ({e})")))
}

/// A public key's kind, from its SubjectPublicKeyInfo (or PKCS#1 for "RSA PUBLIC KEY").
#[derive(Debug, Clone, PartialEq, Eq)]
enum PublicKind {
    Rsa,
    EcP256,
    EcP384,
    Ed25519,
    /// Described for the message, e.g. "an EC public key on curve 1.3.132.0.35".
    Unknown(String),
}

impl std::fmt::Display for PublicKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PublicKind::Rsa => f.write_str("an RSA public key"),
            PublicKind::EcP256 => f.write_str("an EC P-256 public key"),
            PublicKind::EcP384 => f.write_str("an EC P-384 public key"),
            PublicKind::Ed25519 => f.write_str("an Ed25519 public key"),
            PublicKind::Unknown(what) => f.write_str(what),
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum KeyInFile {
    Public(PublicKind),
    /// What private key, e.g. "an RSA private key".
    Private(String),
    /// What the file holds instead, e.g. "no PEM block".
    Other(String),
}

/// What the key file holds, by its first PEM block's label and, for a SubjectPublicKeyInfo
/// or certificate, the key's algorithm identifier.
fn key_in(text: &[u8]) -> KeyInFile {
    let Ok(blocks) = pem::parse_many(text) else {
        return KeyInFile::Other("a damaged PEM block".to_owned());
    };
    let Some(block) = blocks.first() else {
        return KeyInFile::Other("no PEM block (no \"-----BEGIN …-----\" line)".to_owned());
    };
    match block.tag() {
        "RSA PUBLIC KEY" => KeyInFile::Public(PublicKind::Rsa),
        "PUBLIC KEY" | "CERTIFICATE" => KeyInFile::Public(spki_kind(block.contents())),
        "RSA PRIVATE KEY" => KeyInFile::Private("an RSA private key".to_owned()),
        "EC PRIVATE KEY" => KeyInFile::Private("an EC private key".to_owned()),
        "PRIVATE KEY" => {
            let what = match crate::jwt::key::load_private_key(&String::from_utf8_lossy(text)) {
                Ok((kind, _)) => format!("an {kind} private key"),
                Err(_) => "a private key".to_owned(),
            };
            KeyInFile::Private(what)
        }
        "ENCRYPTED PRIVATE KEY" => KeyInFile::Private("an encrypted private key".to_owned()),
        other => KeyInFile::Other(format!("a \"{other}\" PEM block, not a public key")),
    }
}

const OID_RSA: &[u64] = &[1, 2, 840, 113_549, 1, 1, 1];
const OID_EC: &[u64] = &[1, 2, 840, 10_045, 2, 1];
const OID_ED25519: &[u64] = &[1, 3, 101, 112];
const OID_P256: &[u64] = &[1, 2, 840, 10_045, 3, 1, 7];
const OID_P384: &[u64] = &[1, 3, 132, 0, 34];

/// The kind of the first SubjectPublicKeyInfo in `der`: a SEQUENCE of an algorithm
/// SEQUENCE and a BIT STRING. A certificate's own signature algorithm comes before its
/// subject's key, but sits in a SEQUENCE of three, so it is not taken for the key.
fn spki_kind(der: &[u8]) -> PublicKind {
    use simple_asn1::ASN1Block as B;
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
        Some(B::ObjectIdentifier(_, oid)) => oid.as_vec::<u64>().unwrap_or_default(),
        _ => Vec::new(),
    };
    let dotted = |arcs: &[u64]| {
        arcs.iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(".")
    };
    let blocks = simple_asn1::from_der(der).unwrap_or_default();
    let Some(algorithm) = find(&blocks) else {
        return PublicKind::Unknown("a PEM block whose public key cannot be read".to_owned());
    };
    match arcs(algorithm.first()).as_slice() {
        OID_RSA => PublicKind::Rsa,
        OID_ED25519 => PublicKind::Ed25519,
        OID_EC => match arcs(algorithm.get(1)).as_slice() {
            OID_P256 => PublicKind::EcP256,
            OID_P384 => PublicKind::EcP384,
            other => PublicKind::Unknown(format!("an EC public key on curve {}", dotted(other))),
        },
        other => PublicKind::Unknown(format!("a public key of algorithm {}", dotted(other))),
    }
}

/// The last second humantime can write (it fails on five-digit years).
const LAST_DATE: u64 = 253_402_300_799; // 9999-12-31T23:59:59Z

/// A NumericDate as a date with how far off it is. Any JSON number may sit in a token,
/// so those without a date (negative, past year 9999, not finite) are shown as given.
fn describe_time(value: &serde_json::Number) -> String {
    let seconds = match (value.as_u64(), value.as_i64(), value.as_f64()) {
        (Some(s), _, _) => Some(s),
        (None, Some(_), _) => None,
        // RFC 7519 allows fractions of a second; the date shows whole ones.
        (None, None, Some(f)) if f >= 0.0 && f <= LAST_DATE as f64 => Some(f.trunc() as u64),
        _ => None,
    };
    let at = seconds
        .filter(|s| *s <= LAST_DATE)
        .and_then(|s| UNIX_EPOCH.checked_add(Duration::from_secs(s)));
    let Some(at) = at else {
        let out_of_range = if value.as_f64().is_some_and(|f| f < 0.0) {
            "before 1970"
        } else {
            "beyond year 9999"
        };
        return format!("{value} ({out_of_range})");
    };
    let when = humantime::format_rfc3339_seconds(at);
    let now = SystemTime::now();
    let relative = match at.duration_since(now) {
        Ok(ahead) => format!(
            "in {}",
            humantime::format_duration(Duration::from_secs(ahead.as_secs()))
        ),
        Err(past) => format!(
            "{} ago",
            humantime::format_duration(Duration::from_secs(past.duration().as_secs()))
        ),
    };
    format!("{value} = {when} ({relative})")
}
