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
use crate::config::{AgentConfig, Auth, JwtBearer};
use crate::jwt::bearer::unix_now;
use crate::jwt::key::{PublicKind, public_key_kind};

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
        .sign(unix_now(), &|name| std::env::var(name))
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
    let keys = decoding_keys(algorithm, key_file)?;
    let mut validation = Validation::new(algorithm);
    // Only the signature: times are shown above, audiences are the server's business.
    validation.validate_exp = false;
    validation.validate_aud = false;
    validation.set_required_spec_claims::<&str>(&[]);
    let mut failure = None;
    for (key, read_as) in &keys {
        match jsonwebtoken::decode::<Value>(token, key, &validation) {
            Ok(_) => {
                out::stdout(|out| {
                    writeln!(
                        out,
                        "signature: valid ({alg_name}, {}{})",
                        key_file.display(),
                        read_as.map(|r| format!(", {r}")).unwrap_or_default()
                    )
                })?;
                return Ok(ExitCode::SUCCESS);
            }
            Err(e) => failure = failure.or(Some(e)),
        }
    }
    let tried = match keys.as_slice() {
        [_, _, ..] => ", the secret read as text and as base64",
        [(_, Some(_))] => ", the secret read as text (it is not base64)",
        _ => "",
    };
    let failure = failure.map(|e| e.to_string()).unwrap_or_default();
    out::stdout(|out| {
        writeln!(
            out,
            "signature: INVALID ({alg_name}, {}{tried}): {failure}",
            key_file.display()
        )
    })?;
    Ok(ExitCode::FAILURE)
}

/// The keys to verify with, each with how the file was read when that needs saying. An
/// HS* secret file is read as text, then as base64 (`secret_encoding = "base64"` in the
/// config, for secrets that are random bytes): the token says which one signed it, so
/// trying both finds it without an option, and either still needs the secret.
fn decoding_keys(
    algorithm: Algorithm,
    file: &Path,
) -> Result<Vec<(DecodingKey, Option<&'static str>)>> {
    use Algorithm as A;
    if !matches!(algorithm, A::HS256 | A::HS384 | A::HS512) {
        return Ok(vec![(decoding_key(algorithm, file)?, None)]);
    }
    let text = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let secret = text.trim_ascii();
    let mut keys = vec![(
        DecodingKey::from_secret(secret),
        Some("the secret read as text"),
    )];
    // As the config reads `secret_encoding = "base64"`.
    if let Some(bytes) = std::str::from_utf8(secret)
        .ok()
        .and_then(JwtBearer::decode_base64)
    {
        keys.push((
            DecodingKey::from_secret(&bytes),
            Some("the secret read as base64"),
        ));
    }
    Ok(keys)
}

fn part_json(what: &str, part: &str) -> Result<Value> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part.trim_end_matches('='))
        .with_context(|| format!("the {what} is not base64url"))?;
    serde_json::from_slice(&bytes).with_context(|| format!("the {what} is not JSON"))
}

/// A public key PEM (RSA, EC, Ed25519); for HS*, a file holding the shared secret as text.
/// The key's kind is read from the PEM first: jsonwebtoken takes an RSA private key
/// as if it were the public one (and then calls every signature invalid), and names a
/// key of the wrong kind only as `InvalidKeyFormat`.
fn decoding_key(algorithm: Algorithm, file: &Path) -> Result<DecodingKey> {
    let text = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    use Algorithm as A;
    type Read = fn(&[u8]) -> jsonwebtoken::errors::Result<DecodingKey>;
    let (expected, read): (PublicKind, Read) = match algorithm {
        A::HS256 | A::HS384 | A::HS512 => return Ok(DecodingKey::from_secret(text.trim_ascii())),
        A::RS256 | A::RS384 | A::RS512 | A::PS256 | A::PS384 | A::PS512 => {
            (PublicKind::Rsa, DecodingKey::from_rsa_pem)
        }
        A::ES256 => (PublicKind::EcP256, DecodingKey::from_ec_pem),
        A::ES384 => (PublicKind::EcP384, DecodingKey::from_ec_pem),
        A::EdDSA => (PublicKind::Ed25519, DecodingKey::from_ed_pem),
        other => bail!("postern cannot verify {other:?} signatures"),
    };
    let refuse = |holds: &str| -> anyhow::Error {
        anyhow::anyhow!(
            "{algorithm:?} needs {expected} PEM to verify with; {} holds {holds}",
            file.display()
        )
    };
    let pss = matches!(algorithm, A::PS256 | A::PS384 | A::PS512);
    match key_in(&text) {
        KeyInFile::Public(kind) if kind == expected => {}
        KeyInFile::Public(PublicKind::RsaPss) if pss => {
            return rsa_pss_key(&text)
                .ok_or_else(|| refuse("an RSA-PSS public key that cannot be read"));
        }
        KeyInFile::Public(kind) => return Err(refuse(&kind.to_string())),
        KeyInFile::Private(what) => {
            return Err(refuse(&format!(
                "{what}, not a public key (write its public key with `openssl pkey -in {} -pubout`)",
                file.display()
            )));
        }
        KeyInFile::Other(what) => return Err(refuse(&what)),
    }
    read(&text).map_err(|e| refuse(&format!("{expected} that cannot be read ({e})")))
}

/// The RSA key inside an RSA-PSS SubjectPublicKeyInfo (or a certificate holding one),
/// which jsonwebtoken reads only as PKCS#1.
fn rsa_pss_key(text: &[u8]) -> Option<DecodingKey> {
    use pkcs8::der::{Decode, Encode};
    use postern_protocol::certificate::{tbs, tbs_field};
    let block = pem::parse_many(text).ok()?.into_iter().next()?;
    let spki = match block.tag() {
        "CERTIFICATE" => tbs_field(block.contents(), tbs::SUBJECT_PUBLIC_KEY_INFO)?
            .to_der()
            .ok()?,
        _ => block.contents().to_vec(),
    };
    let spki = pkcs8::SubjectPublicKeyInfoRef::from_der(&spki).ok()?;
    Some(DecodingKey::from_rsa_der(
        spki.subject_public_key.as_bytes()?,
    ))
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
        "PUBLIC KEY" | "CERTIFICATE" => KeyInFile::Public(public_key_kind(block.contents())),
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
