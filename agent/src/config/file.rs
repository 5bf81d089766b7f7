//! The config file's shape, exactly as users write it: `deny_unknown_fields`
//! everywhere so a typo is an error, defaults in named functions.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// One `host:port`, or a list tried in turn.
    pub relay: OneOrMany,
    /// `http://[user:pass@]host:port` to reach the relay through (HTTP CONNECT);
    /// absent: the `HTTPS_PROXY` / `ALL_PROXY` / `NO_PROXY` environment decides.
    pub proxy: Option<String>,
    /// Where the daemon answers `postern status` (a Unix socket, mode 0600).
    pub status_socket: Option<PathBuf>,
    /// `127.0.0.1:PORT` (or `[::1]:PORT`) to serve Prometheus metrics on; off when absent.
    pub metrics_listen: Option<String>,
    pub relay_fingerprint: String,
    pub token: Option<String>,
    pub token_file: Option<PathBuf>,
    pub token_env: Option<String>,
    #[serde(default)]
    pub connections: BTreeMap<String, ConnectionFile>,
}

/// `relay = "a:2222"` or `relay = ["a:2222", "b:2222"]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            Self::One(one) => vec![one],
            Self::Many(many) => many,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionFile {
    pub base_uri: String,
    #[serde(default = "default_timeout")]
    pub timeout: String,
    #[serde(default)]
    pub auth: AuthFile,
    pub rate_limit: Option<RateLimitFile>,
    /// How long a call may wait for the rate limit before it gets `rate_limited`.
    pub max_wait: Option<String>,
    /// The request `postern connection test` sends.
    pub test: Option<TestFile>,
    /// Extra CA, client certificate, or (loudly) no verification, for https:// base URIs.
    pub tls: Option<super::tls::TlsFile>,
    /// Calls under way at once on this connection (default 128); more get 429 `too_many_calls`.
    pub max_concurrent_calls: Option<u32>,
    /// Largest request body in bytes (default 64 MiB); larger gets 413 `payload_too_large`.
    pub max_request_body: Option<u64>,
    /// Largest answer in bytes (default 1 GiB); larger is refused or cut off.
    pub max_response_body: Option<u64>,
    /// Largest header block of a request or answer in bytes (default 64 KiB).
    pub max_header_bytes: Option<u32>,
}

/// `test = { method = "GET", path = "/health", expect_status = 200 }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestFile {
    #[serde(default = "default_test_method")]
    pub method: String,
    #[serde(default = "default_test_path")]
    pub path: String,
    pub expect_status: Option<u16>,
}

fn default_test_method() -> String {
    "GET".to_owned()
}

fn default_test_path() -> String {
    "/".to_owned()
}

/// `rate_limit = { requests = N, per = "1s", burst = M }`: a token bucket.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitFile {
    pub requests: u32,
    #[serde(default = "default_rate_per")]
    pub per: String,
    pub burst: Option<u32>,
}

fn default_rate_per() -> String {
    "1s".to_owned()
}

fn default_timeout() -> String {
    "30s".to_owned()
}

#[derive(Default, Deserialize)]
#[serde(try_from = "JwtBearerFile")]
pub enum AuthFile {
    #[default]
    None,
    JwtBearer(Box<JwtBearerFile>),
}

/// `type` in an auth table. It is a field of the one table shape ([`JwtBearerFile`]),
/// not a serde tag: a tagged enum buffers the table, and toml then places every error in
/// it at the table's header without naming the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthKind {
    None,
    JwtBearer,
}

impl AuthFile {
    /// The kind of auth, for listings: never a secret.
    pub fn describe(&self) -> String {
        match self {
            AuthFile::None => "none".to_owned(),
            AuthFile::JwtBearer(jwt) => match &jwt.exchange {
                None => format!("jwt_bearer {} (direct)", jwt.algorithm),
                Some(x) => format!(
                    "jwt_bearer {} (exchange at {})",
                    jwt.algorithm,
                    super::jwt_auth::shown(&x.token_url)
                ),
            },
        }
    }
}

impl TryFrom<JwtBearerFile> for AuthFile {
    type Error = String;

    fn try_from(table: JwtBearerFile) -> Result<Self, String> {
        match table.kind {
            AuthKind::JwtBearer if table.algorithm.is_empty() => Err(
                "type = \"jwt_bearer\" needs `algorithm` (such as HS256, RS256, ES256 or EdDSA)"
                    .to_owned(),
            ),
            AuthKind::JwtBearer => Ok(AuthFile::JwtBearer(Box::new(table))),
            AuthKind::None => match table.keys_set().first() {
                None => Ok(AuthFile::None),
                Some(key) => Err(format!(
                    "unknown field `{key}` with type = \"none\", which takes no other keys"
                )),
            },
        }
    }
}

/// No `Debug`, like the other file types that can hold a secret inline (`token`,
/// `secret`, `private_key`, `params.client_secret`): nothing prints one by accident.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtBearerFile {
    #[serde(rename = "type")]
    pub kind: AuthKind,
    /// Empty when absent, which only `type = "none"` allows ([`AuthFile`]'s `try_from`).
    #[serde(default)]
    pub algorithm: String,
    pub secret: Option<String>,
    pub secret_file: Option<PathBuf>,
    pub secret_env: Option<String>,
    pub private_key: Option<String>,
    pub private_key_file: Option<PathBuf>,
    pub private_key_env: Option<String>,
    /// For a `BEGIN ENCRYPTED PRIVATE KEY` (PKCS#8) key.
    pub private_key_passphrase_file: Option<PathBuf>,
    pub private_key_passphrase_env: Option<String>,
    /// Adds `x5t` and `x5t#S256` header thumbprints of this certificate.
    pub certificate_file: Option<PathBuf>,
    #[serde(default, deserialize_with = "strings_not_a_date")]
    pub headers: BTreeMap<String, String>,
    /// As TOML, not JSON: toml would hand a date to serde_json as its private marker
    /// object, which would be signed as it is (`payload_json` refuses dates by name).
    #[serde(default, deserialize_with = "table_not_a_date")]
    pub payload: toml::Table,
    /// Adds `iat` and `exp` (now + lifetime) when the payload sets neither.
    pub lifetime: Option<String>,
    /// Direct bearer: reuse one JWT until this long before its `exp`.
    pub reuse_for: Option<String>,
    /// `text` (default) or `base64` for HMAC secrets.
    pub secret_encoding: Option<String>,
    /// Present: exchange the JWT for an access token (RFC 7523).
    pub exchange: Option<ExchangeFile>,
}

impl JwtBearerFile {
    /// The keys set besides `type`, in the order they are declared.
    fn keys_set(&self) -> Vec<&'static str> {
        let Self {
            kind: _,
            algorithm,
            secret,
            secret_file,
            secret_env,
            private_key,
            private_key_file,
            private_key_env,
            private_key_passphrase_file,
            private_key_passphrase_env,
            certificate_file,
            headers,
            payload,
            lifetime,
            reuse_for,
            secret_encoding,
            exchange,
        } = self;
        [
            ("algorithm", !algorithm.is_empty()),
            ("secret", secret.is_some()),
            ("secret_file", secret_file.is_some()),
            ("secret_env", secret_env.is_some()),
            ("private_key", private_key.is_some()),
            ("private_key_file", private_key_file.is_some()),
            ("private_key_env", private_key_env.is_some()),
            (
                "private_key_passphrase_file",
                private_key_passphrase_file.is_some(),
            ),
            (
                "private_key_passphrase_env",
                private_key_passphrase_env.is_some(),
            ),
            ("certificate_file", certificate_file.is_some()),
            ("headers", !headers.is_empty()),
            ("payload", !payload.is_empty()),
            ("lifetime", lifetime.is_some()),
            ("reuse_for", reuse_for.is_some()),
            ("secret_encoding", secret_encoding.is_some()),
            ("exchange", exchange.is_some()),
        ]
        .into_iter()
        .filter_map(|(key, set)| set.then_some(key))
        .collect()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExchangeFile {
    pub token_url: String,
    pub grant_type: Option<String>,
    #[serde(default)]
    pub body: BodyEncoding,
    #[serde(default, deserialize_with = "strings_not_a_date")]
    pub params: BTreeMap<String, String>,
    #[serde(default)]
    pub client_assertion: bool,
    /// Where `params.client_id` and `params.client_secret` go: the body, or HTTP Basic.
    #[serde(default)]
    pub client_auth: ClientAuth,
    #[serde(default = "default_lifetime")]
    pub default_lifetime: String,
}

/// How a token endpoint is told the client's id and secret (RFC 6749 §2.3.1): in the
/// request body (the default, which most providers take), or as HTTP Basic, which every
/// server must take and some take alone.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    #[default]
    Body,
    Basic,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BodyEncoding {
    #[default]
    Form,
    Json,
}

fn default_lifetime() -> String {
    "10m".to_owned()
}

/// Why a config file is not valid TOML, or not in the config's shape. Unlike toml's own
/// error it never quotes the file: the offending line may be `token = "pst_…"` or a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ParseError {
    /// 1-based line and column (in characters) where toml found the problem.
    pub position: Option<(usize, usize)>,
    /// toml's message, with any value serde quotes in it left out.
    pub message: String,
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.position {
            Some((line, column)) => write!(
                f,
                "TOML parse error at line {line}, column {column}: {}",
                self.message
            ),
            None => write!(f, "TOML parse error: {}", self.message),
        }
    }
}

impl ParseError {
    fn new(error: &toml::de::Error, text: &str) -> Self {
        Self::at(error.message(), error.span(), text)
    }

    /// The same for toml_edit's error (the CLI's edits), whose own text quotes the line.
    pub fn of_edit(error: &toml_edit::TomlError, text: &str) -> Self {
        Self::at(error.message(), error.span(), text)
    }

    fn at(message: &str, span: Option<std::ops::Range<usize>>, text: &str) -> Self {
        let mut message = without_values(message.trim_end());
        if let Some(key) = top_level_key_in_a_table(&message) {
            message.push_str(&format!(
                "; `{key}` is a top-level setting, and TOML takes a key written after a [table] header as that table's: move it above the first [table] header"
            ));
        }
        let start = span.map(|span| span.start);
        if let Some(datetime) = start.and_then(|start| datetime_at(text, start))
            && let Some(expected) = message.strip_prefix("invalid type: map, ")
        {
            let quote = match expected {
                "expected a string" => format!(": write it quoted (\"{datetime}\")"),
                _ => String::new(),
            };
            message = format!("invalid type: TOML date/time, {expected}{quote}");
        }
        let key = start.and_then(|start| key_of_value_at(text, start));
        Self {
            position: start.map(|start| line_and_column(text, start)),
            message: match key {
                Some(key) => format!("{key}: {message}"),
                None => message,
            },
        }
    }
}

/// The key toml hands a date or time under, as a one-key map, where serde asks for a map.
const DATE_MARKER: &str = "$__toml_private_datetime";

/// A table of strings (`headers`, `params`); a date written as the whole value is refused as
/// one, where it would pass as a table of toml's marker key and be sent.
fn strings_not_a_date<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    let table = BTreeMap::<String, String>::deserialize(d)?;
    not_a_date(table.keys().map(String::as_str)).map(|()| table)
}

/// The payload table, a date written as the whole of it refused (see `strings_not_a_date`).
fn table_not_a_date<'de, D: serde::Deserializer<'de>>(d: D) -> Result<toml::Table, D::Error> {
    let table = toml::Table::deserialize(d)?;
    not_a_date(table.keys().map(String::as_str)).map(|()| table)
}

fn not_a_date<'a, E: serde::de::Error>(mut keys: impl Iterator<Item = &'a str>) -> Result<(), E> {
    match (keys.next(), keys.next()) {
        // Said as "invalid type: map", which `ParseError::at` tells as the date it is.
        (Some(DATE_MARKER), None) => Err(E::invalid_type(serde::de::Unexpected::Map, &"a table")),
        _ => Ok(()),
    }
}

/// The key whose value starts at `offset` (`lifetime` in `lifetime = 300`, also inside an
/// inline table), as written: toml's messages about a value do not name its key. Only the
/// key is taken, never text before it, which may be another key's secret value.
fn key_of_value_at(text: &str, offset: usize) -> Option<&str> {
    let before = text.get(..offset)?;
    let line = &before[before.rfind('\n').map_or(0, |i| i + 1)..];
    let key = line.trim_end().strip_suffix('=')?.trim_end();
    let start = key
        .rfind(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
        .map_or(0, |i| i + 1);
    Some(&key[start..]).filter(|key| !key.is_empty())
}

/// The TOML date or time written at `offset`, if one is: toml hands a date to serde as a
/// map, so a string setting would be said to have got a map the user never wrote.
fn datetime_at(text: &str, offset: usize) -> Option<toml::value::Datetime> {
    let rest = text.get(offset..)?;
    let end = rest.find(['\n', ',', '}', ']', '#']).unwrap_or(rest.len());
    rest[..end].trim().parse().ok()
}

/// Counted as editors count: characters, not bytes, so a multibyte value before it
/// does not shift the column.
fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let mut end = offset.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let before = &text[..end];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (
        before.matches('\n').count() + 1,
        before[line_start..].chars().count() + 1,
    )
}

/// The config's own top-level keys but `connections`, as `ConfigFile` names them.
const TOP_LEVEL_KEYS: [&str; 8] = [
    "relay",
    "proxy",
    "status_socket",
    "metrics_listen",
    "relay_fingerprint",
    "token",
    "token_file",
    "token_env",
];

/// A top-level key serde found unknown: written (appended by hand, as a README line
/// suggests) after a `[connections.….auth]` header, it landed in that table, whose own
/// keys the message lists.
fn top_level_key_in_a_table(message: &str) -> Option<&'static str> {
    let unknown = message.strip_prefix("unknown field `")?;
    let key = &unknown[..unknown.find('`')?];
    TOP_LEVEL_KEYS.into_iter().find(|k| *k == key)
}

/// serde's `invalid type: integer `12345`, expected a string` quotes the value it got,
/// which may be a token or secret typed as the wrong type: keep only the value's kind.
fn without_values(message: &str) -> String {
    let Some((prefix, rest)) = ["invalid type: ", "invalid value: "]
        .iter()
        .find_map(|prefix| message.strip_prefix(prefix).map(|rest| (*prefix, rest)))
    else {
        return message.to_owned();
    };
    // The last one: a quoted string value may itself hold ", expected ".
    let Some(at) = rest.rfind(", expected ") else {
        return format!("{prefix}a value it cannot take");
    };
    let (got, expected) = rest.split_at(at);
    let kind = got
        .split(['`', '"', '\''])
        .next()
        .unwrap_or_default()
        .trim();
    format!("{prefix}{kind}{expected}")
}

impl ConfigFile {
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        toml::from_str(text).map_err(|e| ParseError::new(&e, text))
    }

    /// Every file the config names (token, keys, certificates), with where it is named;
    /// a relative path is taken from `base_dir`, as loading does.
    pub fn named_files(&self, base_dir: &std::path::Path) -> Vec<(String, PathBuf)> {
        let mut named = Vec::new();
        let mut add = |place: String, path: &Option<PathBuf>| {
            if let Some(path) = path {
                named.push((place, base_dir.join(path)));
            }
        };
        add("token_file".to_owned(), &self.token_file);
        for (name, c) in &self.connections {
            if let AuthFile::JwtBearer(jwt) = &c.auth {
                add(
                    format!("connections.{name}.auth.secret_file"),
                    &jwt.secret_file,
                );
                add(
                    format!("connections.{name}.auth.private_key_file"),
                    &jwt.private_key_file,
                );
                add(
                    format!("connections.{name}.auth.private_key_passphrase_file"),
                    &jwt.private_key_passphrase_file,
                );
                add(
                    format!("connections.{name}.auth.certificate_file"),
                    &jwt.certificate_file,
                );
            }
            if let Some(tls) = &c.tls {
                add(format!("connections.{name}.tls.ca_file"), &tls.ca_file);
                add(
                    format!("connections.{name}.tls.client_cert_file"),
                    &tls.client_cert_file,
                );
                add(
                    format!("connections.{name}.tls.client_key_file"),
                    &tls.client_key_file,
                );
            }
        }
        named
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_top_level_key_written_in_a_table_is_said_to_belong_above_it() {
        let head = "relay = \"r:1\"\nrelay_fingerprint = \"x\"\ntoken = \"t\"\n\
            [connections.erp]\nbase_uri = \"https://h\"\n[connections.erp.auth]\ntype = \"none\"\n";
        for key in TOP_LEVEL_KEYS {
            let text = format!("{head}{key} = \"v\"\n");
            let Err(e) = ConfigFile::parse(&text) else {
                panic!("{key} taken in the auth table");
            };
            let said = e.to_string();
            assert!(
                said.contains(&format!("`{key}` is a top-level setting")),
                "{key}: {said}"
            );
        }
        let Err(e) = ConfigFile::parse(&format!("{head}bogus = 1\n")) else {
            panic!("bogus taken");
        };
        assert!(!e.to_string().contains("top-level"), "{e}");
        // The list is the file's: serde names every top-level key of an unknown one.
        let Err(e) = ConfigFile::parse("bogus = 1\n") else {
            panic!("bogus taken");
        };
        let said = e.to_string();
        let mut listed: Vec<&str> = said
            .split_once("expected one of ")
            .map(|(_, list)| list.split('`').skip(1).step_by(2).collect())
            .unwrap_or_default();
        let mut expected = TOP_LEVEL_KEYS.to_vec();
        expected.push("connections");
        listed.sort_unstable();
        expected.sort_unstable();
        assert_eq!(listed, expected, "{said}");
    }

    #[test]
    fn named_files_are_every_file_the_config_names_from_its_folder() {
        let text = "relay = \"r:1\"\nrelay_fingerprint = \"x\"\ntoken_file = \"token\"\n\
            [connections.erp]\nbase_uri = \"https://h\"\n\
            tls = { ca_file = \"/etc/ssl/ca.pem\", client_cert_file = \"c.pem\", client_key_file = \"c.key\" }\n\
            [connections.erp.auth]\ntype = \"jwt_bearer\"\nalgorithm = \"RS256\"\n\
            private_key_file = \"/home/a/k.pem\"\nprivate_key_passphrase_file = \"pass\"\n\
            certificate_file = \"cert.pem\"\n\
            [connections.hr]\nbase_uri = \"http://h\"\nauth = { type = \"jwt_bearer\", algorithm = \"HS256\", secret_file = \"s\" }\n";
        let file = ConfigFile::parse(text).expect("parses");
        let named: Vec<String> = file
            .named_files(std::path::Path::new("/etc/postern"))
            .into_iter()
            .map(|(place, path)| format!("{place}={}", path.display()))
            .collect();
        assert_eq!(
            named,
            [
                "token_file=/etc/postern/token",
                "connections.erp.auth.private_key_file=/home/a/k.pem",
                "connections.erp.auth.private_key_passphrase_file=/etc/postern/pass",
                "connections.erp.auth.certificate_file=/etc/postern/cert.pem",
                "connections.erp.tls.ca_file=/etc/ssl/ca.pem",
                "connections.erp.tls.client_cert_file=/etc/postern/c.pem",
                "connections.erp.tls.client_key_file=/etc/postern/c.key",
                "connections.hr.auth.secret_file=/etc/postern/s",
            ]
        );
    }

    fn auth(table: &str) -> Result<AuthFile, String> {
        let text = format!(
            "relay = \"r:1\"\nrelay_fingerprint = \"SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU\"\n[connections.c]\nbase_uri = \"http://h\"\nauth = {table}\n"
        );
        let file = ConfigFile::parse(&text).map_err(|e| e.to_string())?;
        file.connections
            .into_values()
            .next()
            .map(|c| c.auth)
            .ok_or_else(|| "no connection".to_owned())
    }

    /// The parse error for `tail` after a config's first lines.
    fn parse_error(tail: &str) -> String {
        let text = format!("relay = \"r:1\"\nrelay_fingerprint = \"x\"\n{tail}");
        match ConfigFile::parse(&text) {
            Ok(_) => panic!("{tail:?} parsed"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn parse_errors_give_line_and_column_but_never_the_line_or_value() {
        for (tail, expected) in [
            (
                "token = \"pst_SECRET\n",
                "TOML parse error at line 3, column 20: invalid basic string",
            ),
            (
                "token = 12345\n",
                "TOML parse error at line 3, column 9: token: invalid type: integer, expected a string",
            ),
            (
                "token = true\n",
                "TOML parse error at line 3, column 9: token: invalid type: boolean, expected a string",
            ),
            (
                "[connections.c]\nbase_uri = \"h\"\nmax_concurrent_calls = \"pst_SECRET\"\n",
                "TOML parse error at line 5, column 24: max_concurrent_calls: invalid type: string, expected u32",
            ),
            (
                "[connections.c]\nbase_uri = \"h\"\nrate_limit = { requests = -5 }\n",
                "TOML parse error at line 5, column 27: requests: invalid value: integer, expected u32",
            ),
            (
                "[connections.c]\nbase_uri = \"h\"\ntest = { body = \"pst_SECRET\" }\n",
                "unknown field `body`, expected one of `method`, `path`, `expect_status`",
            ),
        ] {
            let err = parse_error(tail);
            assert!(err.contains(expected), "{tail:?}: {err}");
            assert!(
                !err.contains("SECRET")
                    && !err.contains("12345")
                    && !err.contains("-5")
                    && !err.contains("true"),
                "{tail:?}: {err}"
            );
        }
    }

    #[test]
    fn columns_count_characters_and_values_lose_only_their_quote() {
        assert_eq!(line_and_column("ä = \"x\nb", 7), (1, 7));
        assert_eq!(line_and_column("a\nbc", 4), (2, 3));
        assert_eq!(line_and_column("a", 99), (1, 2));
        assert_eq!(
            without_values("invalid value: string \"a, expected b\", expected u32"),
            "invalid value: string, expected u32"
        );
        assert_eq!(
            without_values("invalid type: floating point `1.5`, expected a string"),
            "invalid type: floating point, expected a string"
        );
        assert_eq!(without_values("duplicate key"), "duplicate key");
        let inline = "auth = { secret = \"s3cret\", lifetime = 300 }";
        let value = inline.find("300").unwrap_or_default();
        assert_eq!(key_of_value_at(inline, value), Some("lifetime"));
        assert_eq!(key_of_value_at("a.b-c = 1", 8), Some("a.b-c"));
        assert_eq!(key_of_value_at("x = \"unterminated", 17), None);
    }

    #[test]
    fn errors_in_an_auth_table_point_at_the_key() {
        let auth = "[connections.u]\nbase_uri = \"http://h\"\n[connections.u.auth]\n\
                    type = \"jwt_bearer\"\nalgorithm = \"HS256\"\n";
        for (tail, expected) in [
            (
                "lifetime = 300\n",
                "at line 8, column 12: lifetime: invalid type: integer, expected a string",
            ),
            (
                "secret = 300\n",
                "at line 8, column 10: secret: invalid type: integer, expected a string",
            ),
            (
                "[connections.u.auth.exchange]\ntoken_url = \"https://idp/t\"\nbogus = 1\n",
                "at line 10, column 1: unknown field `bogus`, expected one of `token_url`",
            ),
            (
                "[connections.u.auth.exchange]\ntoken_url = \"https://idp/t\"\nbody = \"xml\"\n",
                "at line 10, column 8: body: unknown variant `xml`",
            ),
        ] {
            let err = parse_error(&format!("{auth}{tail}"));
            assert!(err.contains(expected), "{tail:?}: {err}");
        }
        let err = parse_error(
            "[connections.u]\nbase_uri = \"http://h\"\nauth = { type = \"jwt_bearer\" }\n",
        );
        assert!(err.contains("needs `algorithm`"), "{err}");
    }

    #[test]
    fn a_date_where_a_string_goes_is_said_to_be_a_date_to_quote() {
        let auth = "[connections.u]\nbase_uri = \"http://h\"\n[connections.u.auth]\n\
                    type = \"jwt_bearer\"\nalgorithm = \"HS256\"\n";
        for (tail, expected) in [
            (
                "headers = { kid = 2026-12-01 }\n",
                "kid: invalid type: TOML date/time, expected a string: write it quoted (\"2026-12-01\")",
            ),
            (
                "[connections.u.auth.headers]\nkid = 07:32:00 # a comment\n",
                "kid: invalid type: TOML date/time, expected a string: write it quoted (\"07:32:00\")",
            ),
            (
                "[connections.u.auth.exchange]\ntoken_url = \"https://idp/t\"\n\
                 params = { scope = \"s\", not_before = 1979-05-27T07:32:00Z }\n",
                "not_before: invalid type: TOML date/time, expected a string: write it quoted (\"1979-05-27T07:32:00Z\")",
            ),
        ] {
            let err = parse_error(&format!("{auth}{tail}"));
            assert!(err.contains(expected), "{tail:?}: {err}");
            assert!(!err.contains("map"), "{tail:?}: {err}");
        }
        let err =
            parse_error("[connections.u]\nbase_uri = \"http://h\"\ntest = { path = 2026-12-01 }\n");
        assert!(
            err.contains("path: invalid type: TOML date/time, expected a string: write it quoted"),
            "{err}"
        );
        let err = parse_error(
            "[connections.u]\nbase_uri = \"http://h\"\nmax_concurrent_calls = 2026-12-01\n",
        );
        assert!(
            err.contains("max_concurrent_calls: invalid type: TOML date/time, expected u32"),
            "{err}"
        );
        // A table written as one is still a map.
        let err = parse_error("token = { a = 1 }\n");
        assert!(
            err.contains("invalid type: map, expected a string"),
            "{err}"
        );
    }

    /// A date written as the whole of a table setting would pass as a table holding toml's
    /// marker key, and be signed or sent as it is.
    #[test]
    fn a_date_where_a_table_goes_is_said_to_be_a_date() {
        let auth = "[connections.u]\nbase_uri = \"http://h\"\n[connections.u.auth]\n\
                    type = \"jwt_bearer\"\nalgorithm = \"HS256\"\n";
        for (tail, key) in [
            ("payload = 2026-12-01\n", "payload"),
            ("headers = 07:32:00\n", "headers"),
            (
                "[connections.u.auth.exchange]\ntoken_url = \"https://idp/t\"\nparams = 1979-05-27T07:32:00Z\n",
                "params",
            ),
        ] {
            let err = parse_error(&format!("{auth}{tail}"));
            let expected = format!("{key}: invalid type: TOML date/time, expected a table");
            assert!(err.contains(&expected), "{tail:?}: {err}");
        }
    }

    #[test]
    fn auth_none_refuses_other_keys_by_name() {
        assert!(matches!(auth(r#"{ type = "none" }"#), Ok(AuthFile::None)));
        let err = auth(r#"{ type = "none", algoritm = "RS256" }"#)
            .err()
            .expect("a typo");
        assert!(err.contains("unknown field `algoritm`"), "{err}");
        let err = auth(r#"{ type = "jwt_bearer", algoritm = "RS256" }"#)
            .err()
            .expect("a typo");
        assert!(err.contains("unknown field `algoritm`"), "{err}");
        let err = auth(r#"{ type = "none", secret_env = "S" }"#)
            .err()
            .expect("a key of jwt_bearer");
        assert!(
            err.contains("unknown field `secret_env` with type = \"none\""),
            "{err}"
        );
        assert!(auth(r#"{ algorithm = "HS256", secret = "s" }"#).is_err());
        assert!(auth(r#"{ type = "nothing" }"#).is_err());
    }
}
