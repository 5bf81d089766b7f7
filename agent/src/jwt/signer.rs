//! Signs compact JWTs: checks once that the key fits the algorithm, then renders the
//! payload template and signs header + payload for every call.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::EncodingKey;
use serde_json::{Map, Value};

use super::key::{KeyError, KeyKind, load_private_key};
use super::signing_key::SigningKey;
use super::template::{PayloadTemplate, TemplateError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    HS256,
    HS384,
    HS512,
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
}

impl Algorithm {
    pub const ALL: [Algorithm; 12] = [
        Algorithm::HS256,
        Algorithm::HS384,
        Algorithm::HS512,
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::PS384,
        Algorithm::PS512,
        Algorithm::ES256,
        Algorithm::ES384,
        Algorithm::EdDSA,
    ];

    /// The name used in config files and in the JWT `alg` header.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::HS256 => "HS256",
            Algorithm::HS384 => "HS384",
            Algorithm::HS512 => "HS512",
            Algorithm::RS256 => "RS256",
            Algorithm::RS384 => "RS384",
            Algorithm::RS512 => "RS512",
            Algorithm::PS256 => "PS256",
            Algorithm::PS384 => "PS384",
            Algorithm::PS512 => "PS512",
            Algorithm::ES256 => "ES256",
            Algorithm::ES384 => "ES384",
            Algorithm::EdDSA => "EdDSA",
        }
    }

    /// RSA signing costs 0.5 ms (2048-bit) to 40 ms (8192-bit) of CPU; the others, tens of
    /// microseconds at most.
    pub fn is_rsa(self) -> bool {
        matches!(
            self,
            Algorithm::RS256
                | Algorithm::RS384
                | Algorithm::RS512
                | Algorithm::PS256
                | Algorithm::PS384
                | Algorithm::PS512
        )
    }

    pub(crate) fn is_hmac(self) -> bool {
        matches!(self, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
    }

    /// What the key must be, in the words of the mismatch message.
    fn key_requirement(self) -> &'static str {
        match self {
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => "a shared secret",
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512 => "an RSA key of at least 2048 bits",
            Algorithm::ES256 => "an EC P-256 key",
            Algorithm::ES384 => "an EC P-384 key",
            Algorithm::EdDSA => "an Ed25519 key",
        }
    }

    fn accepts(self, kind: KeyKind) -> bool {
        match self {
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => false,
            Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512 => {
                matches!(kind, KeyKind::Rsa { bits } if bits >= 2048)
            }
            Algorithm::PS256 | Algorithm::PS384 | Algorithm::PS512 => matches!(
                kind,
                KeyKind::Rsa { bits } | KeyKind::RsaPss { bits } if bits >= 2048
            ),
            Algorithm::ES256 => kind == KeyKind::EcP256,
            Algorithm::ES384 => kind == KeyKind::EcP384,
            Algorithm::EdDSA => kind == KeyKind::Ed25519,
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Algorithm {
    type Err = JwtError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(algorithm) = Algorithm::ALL.into_iter().find(|a| a.as_str() == s) {
            return Ok(algorithm);
        }
        let near = Algorithm::ALL
            .into_iter()
            .find(|a| a.as_str().eq_ignore_ascii_case(s.trim()));
        Err(JwtError::UnknownAlgorithm {
            given: s.to_owned(),
            hint: near
                .map(|a| format!(" (names are case-sensitive: did you mean \"{a}\"?)"))
                .unwrap_or_default(),
        })
    }
}

/// The signing key as configured.
pub enum KeyMaterial {
    Secret(Vec<u8>),
    PrivateKeyPem(String),
}

impl fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyMaterial::Secret(secret) => write!(f, "Secret([redacted; {} bytes])", secret.len()),
            KeyMaterial::PrivateKeyPem(_) => f.write_str("PrivateKeyPem([redacted])"),
        }
    }
}

/// Header fields whose RFC 7515 / 7797 values are not strings; as strings they would make
/// every verifier reject the token.
const NON_STRING_HEADERS: [&str; 4] = ["crit", "jwk", "x5c", "b64"];

#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    #[error(
        "unknown JWT algorithm {given:?}{hint}; expected one of HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA"
    )]
    UnknownAlgorithm { given: String, hint: String },
    #[error(
        "algorithm {algorithm} signs with a shared secret, but a private key was given; use an RS*, PS*, ES* or EdDSA algorithm with a private key"
    )]
    NeedsSecret { algorithm: Algorithm },
    #[error(
        "algorithm {algorithm} signs with a private key PEM, but a shared secret was given; use HS256, HS384 or HS512 with a shared secret"
    )]
    NeedsPrivateKey { algorithm: Algorithm },
    #[error("algorithm {algorithm} needs a non-empty shared secret, but the secret is empty")]
    EmptySecret { algorithm: Algorithm },
    // Key and Json say their cause and expose no source, so a `{:#}` chain says it once.
    #[error("could not load the private key: {0}")]
    Key(KeyError),
    #[error("algorithm {algorithm} needs {needs}, but the key is {found}")]
    KeyMismatch {
        algorithm: Algorithm,
        needs: &'static str,
        found: KeyKind,
    },
    #[error(
        "header alg is {given:?} but the algorithm is {algorithm}; remove alg from the headers (it is set from the algorithm) or make them match"
    )]
    HeaderAlgConflict { algorithm: Algorithm, given: String },
    #[error(
        "header {name} must be a JSON array, object or boolean, which a string-valued header cannot carry; remove it from the headers"
    )]
    NonStringHeader { name: String },
    #[error(transparent)]
    Template(#[from] TemplateError),
    #[error("could not encode the JWT as JSON: {0}")]
    Json(serde_json::Error),
    #[error("the key cannot sign {algorithm}: {reason}")]
    KeyUnusable {
        algorithm: Algorithm,
        reason: String,
    },
    #[error("signing with {algorithm} failed")]
    Signing { algorithm: Algorithm },
}

impl From<KeyError> for JwtError {
    fn from(e: KeyError) -> Self {
        Self::Key(e)
    }
}

impl From<serde_json::Error> for JwtError {
    fn from(e: serde_json::Error) -> Self {
        Self::Json(e)
    }
}

/// Signs fresh JWTs for one connection.
pub struct JwtSigner {
    algorithm: Algorithm,
    key: SigningKey,
    header_json: String,
    /// base64url of `header_json`: the header never changes between tokens.
    encoded_header: String,
    payload: PayloadTemplate,
}

impl fmt::Debug for JwtSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtSigner")
            .field("algorithm", &self.algorithm)
            .field("key", &"[redacted]")
            .field("header", &self.header_json)
            .field("payload", &self.payload)
            .finish()
    }
}

impl JwtSigner {
    /// Checks the key fits the algorithm (HS* need a Secret; RS*/PS* an RSA key of >= 2048 bits;
    /// ES256 a P-256 key; ES384 a P-384 key; EdDSA an Ed25519 key). `headers` are extra JWT
    /// header fields (kid, x5t, x5t#S256 or any custom string field); an `alg` among them must
    /// equal `algorithm`; `typ` defaults to "JWT".
    pub fn new(
        algorithm: Algorithm,
        key: KeyMaterial,
        headers: &BTreeMap<String, String>,
        payload: PayloadTemplate,
    ) -> Result<Self, JwtError> {
        let key = signing_key(algorithm, key)?;
        let header_json = serde_json::to_string(&header(algorithm, headers)?)?;
        let encoded_header = URL_SAFE_NO_PAD.encode(&header_json);
        Ok(Self {
            algorithm,
            key,
            header_json,
            encoded_header,
            payload,
        })
    }

    /// Signs a fresh token: renders the payload at `now_unix` with `env`, returns the compact JWT.
    pub fn sign(
        &self,
        now_unix: u64,
        env: &dyn Fn(&str) -> Result<String, std::env::VarError>,
    ) -> Result<String, JwtError> {
        let claims = self.payload.render(now_unix, env)?;
        // Room for the claims in base64 and the longest signature (RSA-4096: 683 characters).
        let mut token =
            String::with_capacity(self.encoded_header.len() + claims.len() * 4 / 3 + 700);
        token.push_str(&self.encoded_header);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(&claims, &mut token);
        let signature = self
            .key
            .sign(token.as_bytes())
            .map_err(|_| JwtError::Signing {
                algorithm: self.algorithm,
            })?;
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(signature, &mut token);
        Ok(token)
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The public half of the key, as a certificate holds it; `None` for a shared secret.
    pub fn public_key(&self) -> Option<Vec<u8>> {
        self.key.public_key()
    }

    /// Whether the payload sets this top-level claim (with `lifetime`'s `exp` added).
    pub fn sets_claim(&self, name: &str) -> bool {
        self.payload.has_claim(name)
    }

    /// Whether two tokens signed in the same second may carry different claims.
    pub fn differs_within_a_second(&self) -> bool {
        self.payload.differs_within_a_second()
    }
}

/// HMAC secrets shorter than the hash output (32/48/64 bytes) are allowed; this lets the
/// caller warn: the hash output's length, when the secret is shorter.
pub fn hmac_secret_shortfall(algorithm: Algorithm, secret_len: usize) -> Option<usize> {
    let hash_len = match algorithm {
        Algorithm::HS256 => 32,
        Algorithm::HS384 => 48,
        Algorithm::HS512 => 64,
        _ => return None,
    };
    (secret_len < hash_len).then_some(hash_len)
}

/// The key for `algorithm`, checked to fit it and made ready to sign.
fn signing_key(algorithm: Algorithm, key: KeyMaterial) -> Result<SigningKey, JwtError> {
    let key = encoding_key(algorithm, key)?;
    SigningKey::new(algorithm, &key).map_err(|reason| JwtError::KeyUnusable { algorithm, reason })
}

fn encoding_key(algorithm: Algorithm, key: KeyMaterial) -> Result<EncodingKey, JwtError> {
    match key {
        KeyMaterial::Secret(_) if !algorithm.is_hmac() => {
            Err(JwtError::NeedsPrivateKey { algorithm })
        }
        KeyMaterial::Secret(secret) if secret.is_empty() => {
            Err(JwtError::EmptySecret { algorithm })
        }
        KeyMaterial::Secret(secret) => Ok(EncodingKey::from_secret(&secret)),
        KeyMaterial::PrivateKeyPem(_) if algorithm.is_hmac() => {
            Err(JwtError::NeedsSecret { algorithm })
        }
        KeyMaterial::PrivateKeyPem(pem) => {
            let (kind, key) = load_private_key(&pem)?;
            if !algorithm.accepts(kind) {
                return Err(JwtError::KeyMismatch {
                    algorithm,
                    needs: algorithm.key_requirement(),
                    found: kind,
                });
            }
            Ok(key)
        }
    }
}

fn header(
    algorithm: Algorithm,
    extra: &BTreeMap<String, String>,
) -> Result<Map<String, Value>, JwtError> {
    let mut header = Map::new();
    header.insert("alg".to_owned(), Value::from(algorithm.as_str()));
    header.insert("typ".to_owned(), Value::from("JWT"));
    for (name, value) in extra {
        if name == "alg" {
            if value != algorithm.as_str() {
                return Err(JwtError::HeaderAlgConflict {
                    algorithm,
                    given: value.clone(),
                });
            }
        } else if NON_STRING_HEADERS.contains(&name.as_str()) {
            return Err(JwtError::NonStringHeader { name: name.clone() });
        } else {
            header.insert(name.clone(), Value::from(value.as_str()));
        }
    }
    Ok(header)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwt::key::test_keys::keys;
    use jsonwebtoken::{DecodingKey, Validation};
    use serde_json::json;
    use std::io::Write;
    use std::process::{Command, Stdio};
    use std::time::{SystemTime, UNIX_EPOCH};

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .expect("clock after 1970")
    }

    fn payload(value: Value) -> PayloadTemplate {
        let Value::Object(map) = value else {
            panic!("payload must be an object")
        };
        PayloadTemplate::parse(&map).expect("payload parses")
    }

    fn standard_payload() -> PayloadTemplate {
        payload(json!({
            "iss": "postern",
            "sub": "{{env.SERVICE_USER}}",
            "iat": "{{now}}",
            "exp": "{{now + 600}}",
            "jti": "{{uuid}}",
            "scope": ["read", "write"],
        }))
    }

    fn env(name: &str) -> Result<String, std::env::VarError> {
        (name == "SERVICE_USER")
            .then(|| "svc-orders".to_owned())
            .ok_or(std::env::VarError::NotPresent)
    }

    fn signer(algorithm: Algorithm, key: KeyMaterial) -> JwtSigner {
        JwtSigner::new(algorithm, key, &BTreeMap::new(), standard_payload())
            .unwrap_or_else(|e| panic!("{algorithm} signer: {e}"))
    }

    fn pem(text: &str) -> KeyMaterial {
        KeyMaterial::PrivateKeyPem(text.to_owned())
    }

    fn new_err(algorithm: Algorithm, key: KeyMaterial) -> JwtError {
        match JwtSigner::new(algorithm, key, &BTreeMap::new(), standard_payload()) {
            Ok(_) => panic!("{algorithm} should be refused"),
            Err(e) => e,
        }
    }

    fn decode_part(part: &str) -> Value {
        let bytes = URL_SAFE_NO_PAD.decode(part).expect("base64url");
        serde_json::from_slice(&bytes).expect("json")
    }

    fn verify(token: &str, algorithm: Algorithm, key: &DecodingKey) -> Value {
        let validation =
            Validation::new(algorithm.as_str().parse().expect("jsonwebtoken knows it"));
        jsonwebtoken::decode::<Value>(token, key, &validation)
            .unwrap_or_else(|e| panic!("{algorithm} token must verify: {e}"))
            .claims
    }

    #[test]
    fn every_algorithm_signs_tokens_that_verify() {
        let k = keys();
        let rsa = DecodingKey::from_rsa_pem(k.rsa_public.as_bytes()).expect("rsa public");
        let ec256 = DecodingKey::from_ec_pem(k.ec256_public.as_bytes()).expect("ec256 public");
        let ec384 = DecodingKey::from_ec_pem(k.ec384_public.as_bytes()).expect("ec384 public");
        let ed = DecodingKey::from_ed_pem(k.ed25519_public.as_bytes()).expect("ed public");
        let hmac = DecodingKey::from_secret(SECRET);
        let cases: Vec<(Algorithm, &str, &DecodingKey)> = vec![
            (Algorithm::HS256, "", &hmac),
            (Algorithm::HS384, "", &hmac),
            (Algorithm::HS512, "", &hmac),
            (Algorithm::RS256, &k.rsa_pkcs8, &rsa),
            (Algorithm::RS384, &k.rsa_pkcs1, &rsa),
            (Algorithm::RS512, &k.rsa_pkcs8, &rsa),
            (Algorithm::PS256, &k.rsa_pkcs1, &rsa),
            (Algorithm::PS384, &k.rsa_pkcs8, &rsa),
            (Algorithm::PS512, &k.rsa_pkcs8, &rsa),
            (Algorithm::ES256, &k.ec256_sec1, &ec256),
            (Algorithm::ES256, &k.ec256_pkcs8, &ec256),
            (Algorithm::ES384, &k.ec384_sec1, &ec384),
            (Algorithm::ES384, &k.ec384_pkcs8, &ec384),
            (Algorithm::EdDSA, &k.ed25519_pkcs8, &ed),
        ];
        let now = now();
        for (algorithm, private, public) in cases {
            let key = if algorithm.is_hmac() {
                KeyMaterial::Secret(SECRET.to_vec())
            } else {
                pem(private)
            };
            let token = signer(algorithm, key).sign(now, &env).expect("signs");
            let claims = verify(&token, algorithm, public);
            assert_eq!(claims["exp"], json!(now + 600), "{algorithm}");
            assert!(
                claims["exp"].is_u64() && claims["iat"].is_u64(),
                "{algorithm}: times are integers"
            );
            assert_eq!(claims["sub"], json!("svc-orders"));
            assert_eq!(claims["scope"], json!(["read", "write"]));
            let header = decode_part(token.split('.').next().unwrap_or_default());
            assert_eq!(header, json!({ "alg": algorithm.as_str(), "typ": "JWT" }));
        }
    }

    #[test]
    fn pyjwt_verifies_rs256_es256_eddsa_and_hs256() {
        let k = keys();
        let now = now();
        let cases = [
            (Algorithm::RS256, pem(&k.rsa_pkcs1), k.rsa_public.clone()),
            (Algorithm::ES256, pem(&k.ec256_sec1), k.ec256_public.clone()),
            (
                Algorithm::EdDSA,
                pem(&k.ed25519_pkcs8),
                k.ed25519_public.clone(),
            ),
            (
                Algorithm::HS256,
                KeyMaterial::Secret(SECRET.to_vec()),
                String::from_utf8_lossy(SECRET).into_owned(),
            ),
        ];
        let mut headers = BTreeMap::new();
        headers.insert("kid".to_owned(), "key-1".to_owned());
        let input: Vec<Value> = cases
            .into_iter()
            .map(|(algorithm, key, public)| {
                let signer = JwtSigner::new(algorithm, key, &headers, standard_payload()).expect("signer");
                json!({ "token": signer.sign(now, &env).expect("signs"), "key": public, "alg": algorithm.as_str() })
            })
            .collect();
        let script = r#"
import json, sys, jwt
out = []
for case in json.load(sys.stdin):
    claims = jwt.decode(case["token"], case["key"], algorithms=[case["alg"]])
    header = jwt.get_unverified_header(case["token"])
    out.append({"claims": claims, "types": {k: type(v).__name__ for k, v in claims.items()}, "header": header})
print(json.dumps(out))
"#;
        let mut child = Command::new("python3")
            .args(["-c", script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run python3");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(&serde_json::to_vec(&input).expect("json"))
            .expect("write tokens");
        let out = child.wait_with_output().expect("python3 finishes");
        assert!(
            out.status.success(),
            "PyJWT refused a token: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let results: Vec<Value> =
            serde_json::from_slice(&out.stdout).expect("python output is json");
        assert_eq!(results.len(), 4);
        for (result, case) in results.iter().zip(&input) {
            let alg = &case["alg"];
            assert_eq!(result["header"]["alg"], *alg);
            assert_eq!(result["header"]["kid"], json!("key-1"));
            assert_eq!(result["claims"]["exp"], json!(now + 600), "{alg}");
            assert_eq!(result["claims"]["iss"], json!("postern"));
            assert_eq!(
                result["types"]["exp"],
                json!("int"),
                "{alg}: exp must be an int for PyJWT"
            );
            assert_eq!(
                result["types"]["iat"],
                json!("int"),
                "{alg}: iat must be an int for PyJWT"
            );
            assert_eq!(result["types"]["jti"], json!("str"));
        }
    }

    #[test]
    fn mismatched_keys_are_refused_with_what_was_found() {
        let k = keys();
        let cases = [
            (
                Algorithm::RS256,
                &k.ec256_pkcs8,
                "algorithm RS256 needs an RSA key of at least 2048 bits, but the key is EC P-256",
            ),
            (
                Algorithm::ES256,
                &k.ec384_sec1,
                "algorithm ES256 needs an EC P-256 key, but the key is EC P-384",
            ),
            (
                Algorithm::PS256,
                &k.rsa1024_pkcs8,
                "algorithm PS256 needs an RSA key of at least 2048 bits, but the key is RSA 1024-bit",
            ),
            (
                Algorithm::ES256,
                &k.rsa_pkcs8,
                "algorithm ES256 needs an EC P-256 key, but the key is RSA 2048-bit",
            ),
            (
                Algorithm::ES384,
                &k.ed25519_pkcs8,
                "algorithm ES384 needs an EC P-384 key, but the key is Ed25519",
            ),
            (
                Algorithm::EdDSA,
                &k.ec256_sec1,
                "algorithm EdDSA needs an Ed25519 key, but the key is EC P-256",
            ),
        ];
        for (algorithm, key, message) in cases {
            let err = new_err(algorithm, pem(key));
            assert!(matches!(err, JwtError::KeyMismatch { .. }), "{err}");
            assert_eq!(err.to_string(), message);
        }
        let err = new_err(Algorithm::RS256, pem(&k.rsa1024_pkcs8));
        assert!(
            err.to_string().ends_with("but the key is RSA 1024-bit"),
            "{err}"
        );
    }

    #[test]
    fn key_material_must_match_the_algorithm_family() {
        let k = keys();
        let err = new_err(Algorithm::HS256, pem(&k.ec256_pkcs8));
        assert!(
            matches!(
                err,
                JwtError::NeedsSecret {
                    algorithm: Algorithm::HS256
                }
            ),
            "{err}"
        );
        let err = new_err(Algorithm::RS256, KeyMaterial::Secret(SECRET.to_vec()));
        assert!(
            matches!(
                err,
                JwtError::NeedsPrivateKey {
                    algorithm: Algorithm::RS256
                }
            ),
            "{err}"
        );
        let err = new_err(Algorithm::HS512, KeyMaterial::Secret(Vec::new()));
        assert!(matches!(err, JwtError::EmptySecret { .. }), "{err}");
        let err = new_err(Algorithm::ES256, pem("garbage"));
        assert!(
            err.to_string()
                .starts_with("could not load the private key: the private key is not PEM"),
            "{err}"
        );
    }

    #[test]
    fn extra_headers_are_added_and_alg_conflicts_refused() {
        let mut headers = BTreeMap::new();
        for (name, value) in [
            ("kid", "k1"),
            ("x5t", "dGh1bWI"),
            ("x5t#S256", "c2hhMjU2"),
            ("tenant", "acme"),
            ("alg", "HS256"),
            ("typ", "at+jwt"),
        ] {
            headers.insert(name.to_owned(), value.to_owned());
        }
        let signer = JwtSigner::new(
            Algorithm::HS256,
            KeyMaterial::Secret(SECRET.to_vec()),
            &headers,
            standard_payload(),
        )
        .expect("signer");
        let token = signer.sign(now(), &env).expect("signs");
        let header = decode_part(token.split('.').next().unwrap_or_default());
        assert_eq!(
            header,
            json!({ "alg": "HS256", "typ": "at+jwt", "kid": "k1", "x5t": "dGh1bWI", "x5t#S256": "c2hhMjU2", "tenant": "acme" })
        );
        let decoded = jsonwebtoken::decode_header(&token).expect("jsonwebtoken reads the header");
        assert_eq!(decoded.kid.as_deref(), Some("k1"));
        assert_eq!(decoded.x5t_s256.as_deref(), Some("c2hhMjU2"));

        headers.insert("alg".to_owned(), "RS256".to_owned());
        let err = JwtSigner::new(
            Algorithm::HS256,
            KeyMaterial::Secret(SECRET.to_vec()),
            &headers,
            standard_payload(),
        )
        .expect_err("alg conflict");
        assert_eq!(
            err.to_string(),
            "header alg is \"RS256\" but the algorithm is HS256; remove alg from the headers (it is set from the algorithm) or make them match"
        );

        let crit = BTreeMap::from([("crit".to_owned(), "exp".to_owned())]);
        let err = JwtSigner::new(
            Algorithm::HS256,
            KeyMaterial::Secret(SECRET.to_vec()),
            &crit,
            standard_payload(),
        )
        .expect_err("crit is not a string");
        assert!(
            matches!(err, JwtError::NonStringHeader { ref name } if name == "crit"),
            "{err}"
        );
    }

    #[test]
    fn claims_are_the_rendered_json_and_tokens_differ() {
        let signer = signer(Algorithm::HS256, KeyMaterial::Secret(SECRET.to_vec()));
        let a = signer.sign(1_700_000_000, &env).expect("signs");
        let b = signer.sign(1_700_000_000, &env).expect("signs");
        assert_ne!(a, b, "a fresh jti makes every token unique");
        let claims = decode_part(a.split('.').nth(1).unwrap_or_default());
        assert_eq!(claims["exp"], json!(1_700_000_600u64));
        let raw = String::from_utf8(
            URL_SAFE_NO_PAD
                .decode(a.split('.').nth(1).unwrap_or_default())
                .expect("b64"),
        )
        .expect("utf8");
        assert!(
            raw.contains("\"exp\":1700000600"),
            "numbers stay unquoted: {raw}"
        );
    }

    #[test]
    fn template_errors_surface_from_sign() {
        let signer = signer(Algorithm::HS256, KeyMaterial::Secret(SECRET.to_vec()));
        let err = signer
            .sign(now(), &|_| Err(std::env::VarError::NotPresent))
            .expect_err("SERVICE_USER missing");
        assert!(
            matches!(err, JwtError::Template(TemplateError::MissingEnv { .. })),
            "{err}"
        );
        assert!(err.to_string().contains("SERVICE_USER"), "{err}");
    }

    fn sign_input(signing_input: &str, key: &SigningKey) -> String {
        URL_SAFE_NO_PAD.encode(key.sign(signing_input.as_bytes()).expect("signs"))
    }

    #[test]
    fn rfc7515_a1_hs256_vector() {
        // RFC 7515 Appendix A.1: the JWK `k` and the exact signing input, CRLFs included.
        let k = "AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow";
        let signing_input = "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ";
        let secret = URL_SAFE_NO_PAD.decode(k).expect("k is base64url");
        let key = signing_key(Algorithm::HS256, KeyMaterial::Secret(secret)).expect("secret key");
        let signature = sign_input(signing_input, &key);
        assert_eq!(signature, "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk");
    }

    /// RFC 7515 Appendix A.2's RSA key (its JWK `n`, `e`, `d`, `p`, `q` as PKCS#1).
    const RFC7515_A2_KEY: &str = "-----BEGIN RSA PRIVATE KEY-----
MIIEowIBAAKCAQEAofgWCuLjybRlzo0tZWJjNiuSfb4p4fAkd/wWJcyQoTbji9k0
l8W26mPddxHmfHQp+Vaw+4qPCJrcS2mJPMEzP1Pt0Bm4d4QlL+yRT+SFd2lZS+pC
gNMsD1W/YpRPEwOWvG6b32690r2jZ47soMZo9wGzjb/7OMg0LOL+bSf63kpaSHSX
ndS5z5rexMdbBYUsLA9e+KXBdQOS+UTo7WTBEMa2R2CapHg665xsmtdVMTBQY4uD
Zlxvb3qCo5ZwKh9kG4LT6/I5IhlJH7aGhyxXFvUK+DWNmoudF8NAco9/h9iaGNj8
q2ethFkMLs91kzk2PAcDTW9gb54h4FRWyuXpoQIDAQABAoIBABKucaRpzQorw35S
bEUAVx8dYXUdZOlJcHtiWQ+dC6V8ljxAHj/PLyzTveyI5QO/xkObCyjIL303l2cf
UhPu2MFaJdjVzqACXuOrLot/eSFvxjvqVidTtAZExqFRJ9mylUVAoLvhowVWmC1O
n95fZCXxTUtxNEG1Xcc7m0rtzJKs45J+N/V9DP1edYH6USyPSWGp6wuA+KgHRnKK
Vf9GRx80JQY7nVNkL17eHoTWEwga+lwi0FEoW9Y7lDtWXYmKBWhUE+U8PGxlJf8f
40493HDw1WRQ/aSLoS4QTp3rn7gYgeHEvfJdkkf0UMhlknlo53M09EFPdadQ4TlU
bjqKc50CgYEA4BzEEOtIpmVdVEZNCqS7baC4crd0pqnRH/5IB3jw3bcxGn6QLvnE
tfdUdiYrqBdss1l58BQ3KhooKeQTa9AB0Hw/Py5PJdTJNPY8cQn7ouZ2KKDcmnPG
BY5t7yLc1QlQ5xHdwW1VhvKn+nXqhJTBgIPgtldC+KDV5z+y2XDwGUcCgYEAuQPE
fgmVtjL0Uyyx88GZFF1fOunH3+7cepKmtH4pxhtCoHqpWmT8YAmZxaewHgHAjLYs
p1ZSe7zFYHj7C6ul7TjeLQeZD/YwD66t62wDmpe/HlB+TnBA+njbglfIsRLtXlnD
zQkv5dTltRJ11BKBBypeeF6689rjcJIDEz9RWdcCgYAHAp9XcCSrn8wVkMVkKdb7
DOX4IKjzdahm+ctDAJN4O/y7OW5FKebvUjdAIt2GuoTZ71iTG+7F0F+lP88jtjP4
U4qe7VHoewl4MKOfXZKTe+YCS1XbNvfgwJ3Ltyl1OH9hWvu2yza7q+d5PCsDzqtm
27kxuvULVeya+TEdAB1ijQKBgQCH/3r6YrVH/uCWGy6bzV1nGNOdjKc9tmkfOJmN
54dxdixdpozCQ6U4OxZrsj3FcOhHBsqAHvX2uuYjagqvo3cOj1TRqNocX40omfCC
Mx3bD1yPPf/6TI2XECva/ggqEY2mYzmIiA5LVVmc5nrybr+lssFKneeyxN2Wq93S
0iJMdQKBgCGHewxzoa1r8ZMD0LETNrToK423K377UCYqXfg5XMclbrjPbEC3YI1Z
NqMtuhdBJqUnBi6tjKMF+34Xf0CUN8ncuXGO2CAYvO8PdyCixHX52ybaDjy1FtCE
6yUXjoKNXKvUm7MWGsAYH6f4IegOetN5NvmUMFStCSkh7ixZLkN1
-----END RSA PRIVATE KEY-----
";

    #[test]
    fn rfc7515_a2_rs256_vector() {
        let key = signing_key(Algorithm::RS256, pem(RFC7515_A2_KEY)).expect("RFC key loads");
        let signing_input = "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ";
        let signature = sign_input(signing_input, &key);
        assert_eq!(
            signature,
            "cC4hiUPoj9Eetdgtv3hF80EGrhuB__dzERat0XF9g2VtQgr9PJbu3XOiZj5RZmh7AAuHIm4Bh-0Qc_lF5YKt_O8W2Fp5jujGbds9uJdbF9CUAr7t1dnZcAcQjbKBYNX4BAynRFdiuB--f_nZLgrnbyTyWzO75vRK5h6xBArLIARNPvkSjtQBMHlb1L07Qe7K0GarZRmB_eSN9383LcOLn6_dO--xi12jzDwusC-eOkHWEsqtFZESc6BfI7noOPqvhJ1phCnvWh6IeYI2w9QOYEUipUTI8np6LbgGY9Fs98rqVt5AXLIhWkWywlVmtVrBp0igcN_IoypGlUPQGe77Rw"
        );
    }

    #[test]
    fn rfc8037_a4_ed25519_vector() {
        // RFC 8037 Appendix A.1's `d`, wrapped in the fixed Ed25519 PKCS#8 prefix.
        let seed = URL_SAFE_NO_PAD
            .decode("nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A")
            .expect("d is base64url");
        let mut der = vec![
            0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22,
            0x04, 0x20,
        ];
        der.extend_from_slice(&seed);
        let pem_text = pem::encode(&pem::Pem::new("PRIVATE KEY", der));
        let key = signing_key(Algorithm::EdDSA, pem(&pem_text)).expect("RFC key loads");
        let signature = sign_input(
            "eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc",
            &key,
        );
        assert_eq!(
            signature,
            "hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg"
        );
    }

    #[test]
    fn algorithm_names_parse_exactly() {
        for algorithm in Algorithm::ALL {
            assert_eq!(
                algorithm.as_str().parse::<Algorithm>().expect("parses"),
                algorithm
            );
            assert_eq!(algorithm.to_string(), algorithm.as_str());
        }
        let err = "rs256".parse::<Algorithm>().expect_err("case-sensitive");
        assert_eq!(
            err.to_string(),
            "unknown JWT algorithm \"rs256\" (names are case-sensitive: did you mean \"RS256\"?); expected one of HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA"
        );
        let err = "ES512".parse::<Algorithm>().expect_err("unsupported");
        assert!(
            err.to_string()
                .starts_with("unknown JWT algorithm \"ES512\"; expected one of HS256"),
            "{err}"
        );
    }

    #[test]
    fn debug_output_hides_key_material() {
        let secret = b"correct horse battery staple".to_vec();
        assert_eq!(
            format!("{:?}", KeyMaterial::Secret(secret.clone())),
            "Secret([redacted; 28 bytes])"
        );
        let pem_text = keys().ec256_pkcs8.clone();
        let body_line = pem_text.lines().nth(1).unwrap_or_default().to_owned();
        assert!(!format!("{:?}", pem(&pem_text)).contains(&body_line));

        let hs = signer(Algorithm::HS256, KeyMaterial::Secret(secret));
        let debug = format!("{hs:?}");
        assert!(
            !debug.contains("correct horse") && debug.contains("[redacted]"),
            "{debug}"
        );
        let es = signer(Algorithm::ES256, pem(&pem_text));
        assert!(!format!("{es:?}").contains(&body_line));
        assert_eq!(es.algorithm(), Algorithm::ES256);
    }

    #[test]
    fn short_hmac_secrets_are_flagged() {
        assert_eq!(hmac_secret_shortfall(Algorithm::HS256, 31), Some(32));
        assert_eq!(hmac_secret_shortfall(Algorithm::HS256, 32), None);
        assert_eq!(hmac_secret_shortfall(Algorithm::HS384, 47), Some(48));
        assert_eq!(hmac_secret_shortfall(Algorithm::HS384, 48), None);
        assert_eq!(hmac_secret_shortfall(Algorithm::HS512, 63), Some(64));
        assert_eq!(hmac_secret_shortfall(Algorithm::HS512, 64), None);
        assert_eq!(hmac_secret_shortfall(Algorithm::RS256, 0), None);
    }
}
