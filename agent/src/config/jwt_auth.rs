//! Resolves a `jwt_bearer` auth table: the key or secret, the payload (with `lifetime`),
//! the headers, direct-bearer reuse and the RFC 7523 exchange settings.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use url::Url;

use super::file::{BodyEncoding, ClientAuth, ExchangeFile, JwtBearerFile};
use super::{MASKED_KEYS, SECRET_MASK, mask_problem, noted, one_secret};
use crate::jwt::certificate::thumbprints_of_file;
use crate::jwt::encrypted_key::decrypt_if_encrypted;
use crate::jwt::exchange::shown_url;
use crate::jwt::recipe::Recipe;
use crate::jwt::{Algorithm, JwtSigner, KeyMaterial, PayloadTemplate};

/// The RFC 7523 §2.1 grant type.
pub const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// The RFC 7523 §2.2 client assertion type.
pub const CLIENT_ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Form fields postern sets itself; `params` may not override them.
const RESERVED_PARAMS: [&str; 4] = [
    "grant_type",
    "assertion",
    "client_assertion",
    "client_assertion_type",
];

/// RFC 7523 §3 makes `exp` mandatory in an assertion, and identity providers refuse one
/// without it: refused at load rather than by the first call's token request.
const NO_EXP_FOR_EXCHANGE: &str = "auth.exchange: the assertion would have no exp claim, which RFC 7523 §3 requires (identity providers refuse it): set auth.lifetime (such as \"5m\") or payload.exp";

/// A `jwt_bearer` connection's auth, resolved.
#[derive(Debug)]
pub struct JwtBearer {
    pub signer: JwtSigner,
    /// Direct bearer only: reuse one JWT until this long before its `exp`.
    pub reuse_for: Option<Duration>,
    /// Present: trade the JWT for an access token (RFC 7523) instead of sending it.
    pub exchange: Option<Exchange>,
    /// All of the above as one digest: a reload keeps the cached token while it is equal.
    pub recipe: Recipe,
}

#[derive(Clone)]
pub struct Exchange {
    pub token_url: Url,
    pub grant_type: String,
    pub body: BodyEncoding,
    pub params: BTreeMap<String, String>,
    /// RFC 7523 §2.2: send the JWT as `client_assertion`, not `assertion`.
    pub client_assertion: bool,
    /// `Basic`: `params.client_id` and `params.client_secret` go as HTTP Basic, not in
    /// the body (they are in `params` still).
    pub client_auth: ClientAuth,
    /// Used when the token response has no `expires_in`.
    pub default_lifetime: Duration,
}

/// `params` may hold a `client_secret`: masked, as `connection show` masks it.
impl std::fmt::Debug for Exchange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let params: BTreeMap<&str, &str> = self
            .params
            .iter()
            .map(|(key, value)| {
                let masked = MASKED_KEYS.contains(&key.as_str());
                (key.as_str(), if masked { SECRET_MASK } else { value })
            })
            .collect();
        f.debug_struct("Exchange")
            .field("token_url", &self.token_url.as_str())
            .field("grant_type", &self.grant_type)
            .field("body", &self.body)
            .field("params", &params)
            .field("client_assertion", &self.client_assertion)
            .field("client_auth", &self.client_auth)
            .field("default_lifetime", &self.default_lifetime)
            .finish()
    }
}

impl JwtBearer {
    /// Neither exchanged nor reused: a JWT is signed for each call (at most once a second),
    /// and nothing is cached.
    pub fn signed_per_call(&self) -> bool {
        self.exchange.is_none() && self.reuse_for.is_none()
    }

    /// A secret as `secret_encoding = "base64"` reads it: either alphabet, padded or not.
    /// `None` when it is not base64 or decodes to nothing: no secret is empty. `jwt decode
    /// --verify-with` reads a secret file with it too (this module is private to `config`).
    pub(crate) fn decode_base64(text: &str) -> Option<Vec<u8>> {
        // Wrapped as `openssl rand -base64` (64 columns) and `base64` (76) write it.
        let text: String = text.split_ascii_whitespace().collect();
        [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
            .iter()
            .find_map(|engine| engine.decode(&text).ok())
            .filter(|bytes| !bytes.is_empty())
    }
}

/// Every problem of the table, not only the first (see `resolve_connection`).
pub(super) fn resolve(
    jwt: JwtBearerFile,
    name: &str,
    base_dir: &Path,
    env: &dyn Fn(&str) -> Result<String, std::env::VarError>,
) -> Result<JwtBearer, Vec<String>> {
    let mut problems = Vec::new();
    let p = &mut problems;
    let algorithm: Option<Algorithm> = noted(
        p,
        jwt.algorithm
            .parse()
            .map_err(|e| format!("auth.algorithm: {e}")),
    );
    let key = algorithm
        .and_then(|algorithm| noted(p, key_material(&jwt, name, algorithm, base_dir, env)));
    let lifetime = noted(
        p,
        jwt.lifetime
            .as_deref()
            .map(|text| whole_seconds("auth.lifetime", text))
            .transpose(),
    );
    let (json_payload, not_json) = super::payload_json::payload_json(&jwt.payload);
    p.extend(not_json);
    let mut payload = json_payload.clone();
    if let Some(Some(lifetime)) = lifetime {
        // Only what the payload leaves out: an explicit iat/exp always wins.
        payload.entry("iat").or_insert_with(|| "{{now}}".into());
        payload
            .entry("exp")
            .or_insert_with(|| format!("{{{{now + {}}}}}", lifetime.as_secs()).into());
    }
    let payload_json = payload;
    let payload = noted(
        p,
        PayloadTemplate::parse_all(&payload_json).map_err(|errors| {
            errors
                .into_iter()
                .map(|e| format!("auth.payload: {e}"))
                .collect::<Vec<_>>()
        }),
    );
    if let Some(payload) = &payload {
        p.extend(
            payload
                .missing_env(env)
                .into_iter()
                .map(|missing| format!("auth.payload: {missing}")),
        );
    }
    p.extend(pasted_masks(&jwt, json_payload));
    let has_exp = payload.as_ref().map(|payload| payload.has_claim("exp"));
    let exp_in = payload
        .as_ref()
        .and_then(|payload| payload.seconds_from_now("exp"));
    let (headers, certified) = noted(p, headers_with_thumbprints(&jwt, base_dir)).unzip();
    let certified = certified.flatten();
    let has_exchange = jwt.exchange.is_some();
    let exchange = noted(p, jwt.exchange.map(resolve_exchange).transpose());
    let reuse_for = noted(
        p,
        jwt.reuse_for
            .as_deref()
            .map(|text| whole_seconds("auth.reuse_for", text))
            .transpose(),
    )
    .flatten();
    if reuse_for.is_some() {
        if has_exchange {
            p.push("auth.reuse_for applies to direct bearer JWTs; with an exchange the access token is cached until shortly before it expires".into());
        }
        // A lifetime that did not resolve is what left exp out: that problem is listed.
        if has_exp == Some(false) && lifetime.is_some() {
            p.push("auth.reuse_for needs an exp claim to count back from: set payload.exp or auth.lifetime".into());
        }
    }
    // A lifetime that did not resolve is what left exp out: that problem is listed.
    if has_exchange && has_exp == Some(false) && lifetime.is_some() {
        p.push(NO_EXP_FOR_EXCHANGE.to_owned());
    }
    if let (Some(reuse_for), Some(exp_in), false) = (reuse_for, exp_in, has_exchange)
        && i128::from(reuse_for.as_secs()) >= i128::from(exp_in)
    {
        // Every JWT would be signed with less than reuse_for left: none would ever be reused.
        let lifetime = match (&jwt.lifetime, jwt.payload.contains_key("exp")) {
            (Some(lifetime), false) => format!("auth.lifetime {lifetime:?}"),
            _ => format!("payload.exp = now + {exp_in} s"),
        };
        p.push(format!(
            "auth.reuse_for {:?} must be shorter than the JWT's lifetime ({lifetime}): it is how \
             long before exp a JWT stops being reused, so no JWT would ever be reused \
             (lifetime = \"10m\" with reuse_for = \"1m\" reuses one for about 9 minutes)",
            jwt.reuse_for.as_deref().unwrap_or_default(),
        ));
    }
    // The key is checked against its algorithm whatever else is wrong.
    let mut recipe = None;
    let signer = match (algorithm, key, payload, headers) {
        (Some(algorithm), Some(key), Some(payload), Some(headers)) => {
            recipe = exchange.as_ref().map(|exchange| {
                Recipe::of(
                    algorithm,
                    &key,
                    &headers,
                    &payload_json,
                    reuse_for,
                    exchange.as_ref(),
                )
            });
            noted(
                p,
                JwtSigner::new(algorithm, key, &headers, payload).map_err(|e| format!("auth: {e}")),
            )
        }
        _ => None,
    };
    // The thumbprints name the certificate; an identity provider checks the signature with
    // its key, and refuses every assertion when the two do not belong together (Azure:
    // AADSTS700027), which would show only at the first call.
    if let (Some(signer), Some((path, certified))) = (&signer, &certified)
        && signer.public_key().is_some_and(|key| key != *certified)
    {
        p.push(format!(
            "auth.certificate_file {} is not the certificate of this private key (its public key is another's): the identity provider would refuse every assertion",
            path.display()
        ));
    }
    let (Some(signer), Some(exchange), Some(recipe)) = (signer, exchange, recipe) else {
        return Err(problems);
    };
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(JwtBearer {
        signer,
        reuse_for,
        exchange,
        recipe,
    })
}

fn key_material(
    jwt: &JwtBearerFile,
    name: &str,
    algorithm: Algorithm,
    base_dir: &Path,
    env: &dyn Fn(&str) -> Result<String, std::env::VarError>,
) -> Result<KeyMaterial, String> {
    let is_hmac = matches!(
        algorithm,
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512
    );
    let has_secret = jwt.secret.is_some() || jwt.secret_file.is_some() || jwt.secret_env.is_some();
    let has_key = jwt.private_key.is_some()
        || jwt.private_key_file.is_some()
        || jwt.private_key_env.is_some();
    if !is_hmac {
        if has_secret || jwt.secret_encoding.is_some() {
            return Err(format!(
                "auth: {algorithm:?} signs with a private key; remove secret*"
            ));
        }
        let pem = one_secret(
            "auth.private_key",
            jwt.private_key.as_deref(),
            jwt.private_key_file.as_deref(),
            jwt.private_key_env.as_deref(),
            base_dir,
            env,
        )
        .map_err(|e| match e {
            // Read only when its mode is refused: a public key or certificate is rightly
            // readable by all, and `chmod 600` would not make it sign.
            super::ConfigError::Permissions { ref path, .. } => {
                public_pem(path).unwrap_or_else(|| e.to_string())
            }
            e => e.to_string(),
        })?;
        let has_passphrase =
            jwt.private_key_passphrase_file.is_some() || jwt.private_key_passphrase_env.is_some();
        if !has_passphrase {
            return Ok(KeyMaterial::PrivateKeyPem(pem));
        }
        let passphrase = one_secret(
            "auth.private_key_passphrase",
            None,
            jwt.private_key_passphrase_file.as_deref(),
            jwt.private_key_passphrase_env.as_deref(),
            base_dir,
            env,
        )
        .map_err(|e| e.to_string())?;
        let plain = decrypt_if_encrypted(&pem, &passphrase).map_err(|e| format!("auth: {e}"))?;
        return Ok(KeyMaterial::PrivateKeyPem(plain));
    }
    if has_key {
        return Err(format!(
            "auth: {algorithm:?} signs with a secret; remove private_key*"
        ));
    }
    let text = one_secret(
        "auth.secret",
        jwt.secret.as_deref(),
        jwt.secret_file.as_deref(),
        jwt.secret_env.as_deref(),
        base_dir,
        env,
    )
    .map_err(|e| e.to_string())?;
    let secret = match jwt.secret_encoding.as_deref().unwrap_or("text") {
        "text" => text.into_bytes(),
        // Named empty by the signer, as an empty "text" secret is, not as bad base64.
        "base64" if text.trim().is_empty() => Vec::new(),
        "base64" => JwtBearer::decode_base64(text.trim()).ok_or(
            "auth.secret is not valid base64 (secret_encoding = \"base64\"; standard or URL-safe alphabet, padding optional)",
        )?,
        other => {
            return Err(format!(
                "auth.secret_encoding {other:?}: expected \"text\" or \"base64\""
            ));
        }
    };
    if let Some(hash_len) = crate::jwt::signer::hmac_secret_shortfall(algorithm, secret.len()) {
        tracing::warn!(
            connection = name,
            "connections.{name}: auth.secret is {} bytes, shorter than {algorithm:?}'s {hash_len}-byte hash; use a longer random secret (such as `openssl rand -base64 {hash_len}` with secret_encoding = \"base64\")",
            secret.len()
        );
    }
    Ok(KeyMaterial::Secret(secret))
}

/// Where the table holds a masked key (`client_secret`, `password`, …) whose value is the
/// mask `connection show` prints: in `headers`, `payload` (at any depth) or the exchange's
/// `params`. `secret` and `private_key` are checked where they are read ([`one_secret`]).
fn pasted_masks(
    jwt: &JwtBearerFile,
    payload: serde_json::Map<String, serde_json::Value>,
) -> Vec<String> {
    fn walk(place: String, value: &serde_json::Value, found: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, value) in map {
                    let place = format!("{place}.{key}");
                    if MASKED_KEYS.contains(&key.as_str()) && value.as_str() == Some(SECRET_MASK) {
                        found.push(mask_problem(&place));
                    } else {
                        walk(place, value, found);
                    }
                }
            }
            serde_json::Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    walk(format!("{place}[{i}]"), item, found);
                }
            }
            _ => {}
        }
    }
    let strings = |place: &str, map: &BTreeMap<String, String>| {
        map.iter()
            .filter(|(key, value)| MASKED_KEYS.contains(&key.as_str()) && *value == SECRET_MASK)
            .map(|(key, _)| mask_problem(&format!("{place}.{key}")))
            .collect::<Vec<_>>()
    };
    let mut found = strings("auth.headers", &jwt.headers);
    walk(
        "auth.payload".to_owned(),
        &serde_json::Value::Object(payload),
        &mut found,
    );
    if let Some(exchange) = &jwt.exchange {
        found.extend(strings("auth.exchange.params", &exchange.params));
    }
    found
}

/// A JWT's headers, and the certificate they name (its path and public key), if any.
type CertifiedHeaders = (BTreeMap<String, String>, Option<(PathBuf, Vec<u8>)>);

/// The configured headers plus `x5t` / `x5t#S256` of `certificate_file`, if set, and the
/// public key that certificate holds.
fn headers_with_thumbprints(
    jwt: &JwtBearerFile,
    base_dir: &Path,
) -> Result<CertifiedHeaders, String> {
    let mut headers = jwt.headers.clone();
    let Some(file) = &jwt.certificate_file else {
        return Ok((headers, None));
    };
    if let Some(name) = ["x5t", "x5t#S256"]
        .iter()
        .find(|n| headers.contains_key(**n))
    {
        return Err(format!(
            "auth.headers.{name} is computed from auth.certificate_file; remove one of them"
        ));
    }
    let path = base_dir.join(file);
    // A certificate is public: no permission check, unlike keys.
    let bytes = std::fs::read(&path)
        .map_err(|e| format!("auth.certificate_file {}: {e}", path.display()))?;
    let t = thumbprints_of_file(&bytes)
        .map_err(|e| format!("auth.certificate_file {}: {e}", path.display()))?;
    headers.insert("x5t".to_owned(), t.x5t);
    headers.insert("x5t#S256".to_owned(), t.x5t_s256);
    Ok((headers, t.public_key.map(|key| (path, key))))
}

/// Every problem of the table, not only the first (see `resolve_connection`).
fn resolve_exchange(x: ExchangeFile) -> Result<Exchange, Vec<String>> {
    let mut problems = Vec::new();
    let p = &mut problems;
    let token_url = noted(p, resolve_token_url(&x.token_url));
    p.extend(
        x.params
            .keys()
            .filter(|k| RESERVED_PARAMS.contains(&k.as_str()))
            .map(|name| {
                format!(
                    "auth.exchange.params.{name} is set by postern; use grant_type / client_assertion instead"
                )
            }),
    );
    if x.client_assertion && x.params.contains_key("client_secret") {
        p.push("auth.exchange.params.client_secret and client_assertion = true are two ways to authenticate the client (RFC 6749 §2.3 allows one): choose one".to_owned());
    }
    if x.client_auth == ClientAuth::Basic {
        if x.client_assertion {
            p.push("auth.exchange.client_auth = \"basic\" and client_assertion = true are two ways to authenticate the client: choose one".to_owned());
        }
        for name in crate::jwt::exchange::CLIENT_CREDENTIALS {
            if !x.params.contains_key(name) {
                p.push(format!(
                    "auth.exchange.client_auth = \"basic\" needs auth.exchange.params.{name} (sent as HTTP Basic, not in the body)"
                ));
            }
        }
    }
    let default_lifetime = noted(
        p,
        duration("auth.exchange.default_lifetime", &x.default_lifetime),
    );
    let (Some(token_url), Some(default_lifetime)) = (token_url, default_lifetime) else {
        return Err(problems);
    };
    if !problems.is_empty() {
        return Err(problems);
    }
    let grant_type = x.grant_type.unwrap_or_else(|| {
        if x.client_assertion {
            "client_credentials".to_owned()
        } else {
            JWT_BEARER_GRANT.to_owned()
        }
    });
    Ok(Exchange {
        token_url,
        grant_type,
        body: x.body,
        params: x.params,
        client_assertion: x.client_assertion,
        client_auth: x.client_auth,
        default_lifetime,
    })
}

fn resolve_token_url(text: &str) -> Result<Url, String> {
    if let Some(problem) = super::missing_scheme("auth.exchange.token_url", text) {
        return Err(problem);
    }
    let token_url =
        Url::parse(text).map_err(|e| format!("auth.exchange.token_url {:?}: {e}", shown(text)))?;
    if !matches!(token_url.scheme(), "http" | "https") || token_url.host_str().is_none() {
        return Err(format!(
            "auth.exchange.token_url {:?} must be an http:// or https:// URL with a host",
            shown(text)
        ));
    }
    refuse_user_info(
        "auth.exchange.token_url",
        &token_url,
        "put the client's credentials in auth.exchange.params (client_id, client_secret) or authenticate with client_assertion = true",
    )?;
    Ok(token_url)
}

/// A user name or password in a URL would be sent as Basic auth beside the Bearer and show
/// in every error message about the URL, which reaches the remote caller and the log.
pub(super) fn refuse_user_info(what: &str, url: &Url, instead: &str) -> Result<(), String> {
    if url.username().is_empty() && url.password().is_none() {
        return Ok(());
    }
    Err(format!(
        "{what} {:?} may not hold a user name or password (found one before the host); {instead}",
        shown_url(url)
    ))
}

/// A URL from the config or the environment as error messages may quote it: whatever
/// stands before its last `@` is left out, even when the URL does not parse or has no
/// scheme. The last `@` anywhere, not only in the authority: a password may hold a raw
/// `@`, `/`, `?` or `#` (`svc:p#ss@proxy`), and then the authority seems to end in it. A
/// path's own `@` hides a little more than it must, in an error message only.
pub(crate) fn shown(raw: &str) -> String {
    let (scheme, rest) = match raw.split_once("://") {
        Some((scheme, rest)) => (format!("{scheme}://"), rest),
        None => (String::new(), raw),
    };
    match rest.rfind('@') {
        Some(at) => format!("{scheme}…@{}", &rest[at + 1..]),
        None => raw.to_owned(),
    }
}

/// A JWT's `lifetime`, `reuse_for` or an exchange's `default_lifetime`: at most a day,
/// as long as an exchanged token is ever kept (`expires_in` is capped alike).
pub(super) fn duration(what: &str, text: &str) -> Result<Duration, String> {
    super::limits::bounded_duration(what, text, crate::jwt::exchange::MAX_LIFETIME)
}

/// A [`duration`] that JWT times count in: whole seconds (`500ms` would write an `exp` of
/// now, and `1500ms` one second, in silence).
fn whole_seconds(what: &str, text: &str) -> Result<Duration, String> {
    let d = duration(what, text)?;
    if d.subsec_nanos() != 0 {
        return Err(format!(
            "{what} must be whole seconds, as JWT times are (it is {text:?})"
        ));
    }
    Ok(d)
}

/// What to say of a private key file that holds a public key or a certificate instead.
fn public_pem(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    if text.contains("PRIVATE KEY") {
        return None;
    }
    let holds = if text.contains("-----BEGIN CERTIFICATE-----") {
        "a certificate"
    } else if text.contains("PUBLIC KEY-----") {
        "a public key"
    } else {
        return None;
    };
    Some(format!(
        "auth.private_key_file: {} holds {holds}, not a private key, and cannot sign: give the private key's PEM",
        path.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(connection: &str) -> Result<crate::config::AgentConfig, String> {
        use crate::config::tests::{base, parse};
        parse(&base(connection))
    }

    fn with_token_url(url: &str) -> String {
        format!(
            "[connections.erp]\nbase_uri = \"https://erp.internal/api\"\n[connections.erp.auth]\ntype = \"jwt_bearer\"\nalgorithm = \"HS256\"\nsecret_env = \"HMAC\"\npayload = {{ iss = \"p\" }}\nlifetime = \"5m\"\n[connections.erp.auth.exchange]\ntoken_url = \"{url}\"\n"
        )
    }

    #[test]
    fn a_token_url_with_user_info_is_refused_without_showing_the_password() {
        load(&with_token_url("https://idp.internal/token")).expect("a plain token_url loads");
        for url in [
            "https://client:s3cret@idp.internal/token",
            "https://:s3cret@idp.internal/token",
            "https://client@idp.internal/token",
        ] {
            let err = load(&with_token_url(url)).expect_err(url);
            assert!(
                err.contains("connections.erp: auth.exchange.token_url \"https://idp.internal/token\" may not hold a user name or password")
                    && err.contains("client_secret"),
                "{url}: {err}"
            );
            assert!(!err.contains("s3cret") && !err.contains("client@"), "{err}");
        }
    }

    #[test]
    fn jwt_times_are_whole_seconds() {
        let with = |line: &str| {
            format!(
                "[connections.erp]\nbase_uri = \"https://erp.internal/api\"\n[connections.erp.auth]\ntype = \"jwt_bearer\"\nalgorithm = \"HS256\"\nsecret_env = \"HMAC\"\npayload = {{ iss = \"p\" }}\n{line}\n"
            )
        };
        load(&with("lifetime = \"2m\"\nreuse_for = \"30s\"")).expect("whole seconds load");
        for (line, key) in [
            ("lifetime = \"500ms\"", "auth.lifetime"),
            ("lifetime = \"1500ms\"", "auth.lifetime"),
            (
                "lifetime = \"2m\"\nreuse_for = \"1s 500ms\"",
                "auth.reuse_for",
            ),
        ] {
            let err = load(&with(line)).expect_err(line);
            assert!(
                err.contains(&format!("{key} must be whole seconds")),
                "{line}: {err}"
            );
        }
    }

    #[test]
    fn a_client_secret_beside_a_client_assertion_is_refused() {
        let both = format!(
            "{}client_assertion = true\nparams = {{ client_id = \"c\", client_secret = \"s\" }}\n",
            with_token_url("https://idp.internal/token")
        );
        let err = load(&both).expect_err("two ways");
        assert!(
            err.contains("auth.exchange.params.client_secret and client_assertion = true"),
            "{err}"
        );
        let one = format!(
            "{}client_assertion = true\nparams = {{ client_id = \"c\" }}\n",
            with_token_url("https://idp.internal/token")
        );
        load(&one).expect("an assertion alone loads");
    }

    #[test]
    fn urls_that_do_not_parse_are_quoted_without_their_user_info() {
        for raw in [
            "http://user:pa@ss@host:99999/api",
            "ftp://user:secret@host/token",
            "http://:secret@/x",
        ] {
            let text = shown(raw);
            assert!(
                !text.contains("secret") && !text.contains("pa@ss"),
                "{text}"
            );
        }
        // Any `@` may end a password holding a raw `/`, `?` or `#` (where the authority
        // seems to end): a path's `@` hides the path before it too.
        assert_eq!(shown("http://u:p/w@host/api"), "http://…@host/api");
        assert_eq!(shown("http://u:p#w@host"), "http://…@host");
        assert_eq!(shown("http://host/a@b"), "http://…@b");
        assert_eq!(shown("http://host/api"), "http://host/api");
        for connection in [
            "[connections.a]\nbase_uri = \"http://u:secret@host:99999/api\"\n",
            "[connections.a]\nbase_uri = \"ftp://u:secret@host/api\"\n",
        ] {
            let err = load(connection).expect_err("refused");
            assert!(!err.contains("secret"), "{err}");
        }
    }

    #[test]
    fn a_base_uri_with_user_info_is_refused_without_showing_the_password() {
        for uri in [
            "http://:s3cret@h/api",
            "http://user:s3cret@h/api",
            "http://user@h/api",
        ] {
            let err = load(&format!("[connections.c]\nbase_uri = \"{uri}\"\n")).expect_err(uri);
            assert!(
                err.contains(
                    "connections.c: base_uri \"http://h/api\" may not hold a user name or password"
                ),
                "{uri}: {err}"
            );
            assert!(!err.contains("s3cret"), "{err}");
        }
        let err = load("[connections.c]\nbase_uri = \"http://h/api?x=1\"\n").expect_err("query");
        assert!(err.contains("may not hold a query or fragment"), "{err}");
    }

    #[test]
    fn debug_output_masks_the_exchanges_client_secret() {
        let text = format!(
            "{}params = {{ client_id = \"c\", client_secret = \"s3cret-value\" }}\n",
            with_token_url("https://idp.internal/token")
        );
        let config = load(&text).expect("loads");
        let shown = format!("{config:?}");
        assert!(!shown.contains("s3cret-value"), "{shown}");
        assert!(
            shown.contains(&format!("\"client_secret\": \"{SECRET_MASK}\"")),
            "{shown}"
        );
        assert!(shown.contains("\"client_id\": \"c\""), "{shown}");
    }

    #[test]
    fn base64_secrets_decode_in_both_alphabets() {
        let decode = JwtBearer::decode_base64;
        assert_eq!(decode("aGVsbG8+Pz8/"), Some(b"hello>???".to_vec()));
        assert_eq!(decode("aGVsbG8-Pz8_"), Some(b"hello>???".to_vec()));
        assert_eq!(decode("aGk"), Some(b"hi".to_vec()));
        assert_eq!(decode("not base64!"), None);
        assert_eq!(decode(""), None);
        // 64 random bytes as `openssl rand -base64 64` writes them: wrapped at 64 columns.
        let bytes: Vec<u8> = (0..64u8).map(|b| b.wrapping_mul(37)).collect();
        let text = STANDARD.encode(&bytes);
        let wrapped = format!("{}\n{}\n", &text[..64], &text[64..]);
        assert_eq!(decode(&wrapped), Some(bytes));
    }
}
