//! The agent's TOML config: a pure parse into `file` types, then `resolve`
//! reads token and key files, builds the signers, and validates everything.

mod file;
mod jwt_auth;
mod limits;
mod owner_access;
mod payload_json;
pub mod tls;
pub use owner_access::unreadable_by_owner;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use postern_protocol::{ConnectionName, SecretKind, SecretToken};
use url::Url;

pub use file::{
    AuthFile, BodyEncoding, ClientAuth, ConfigFile, ConnectionFile, ExchangeFile, JwtBearerFile,
    ParseError,
};
use jwt_auth::refuse_user_info;
pub(crate) use jwt_auth::shown;
pub use jwt_auth::{CLIENT_ASSERTION_TYPE, Exchange, JWT_BEARER_GRANT, JwtBearer};
pub use limits::{RateLimit, TestRequest};

/// A loaded, validated config. Secrets inside never print in `Debug`.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// `host:port` of the relay's SSH listeners, tried in turn.
    pub relays: Vec<String>,
    /// The HTTP CONNECT proxy to reach the relay through, from the config or environment.
    pub proxy: Option<crate::proxy::Proxy>,
    /// The Unix socket `postern status` asks.
    pub status_socket: PathBuf,
    /// Where to serve `GET /metrics`: a loopback address, or `None` for no metrics.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// The relay host key fingerprint to pin (`SHA256:…`).
    pub relay_fingerprint: String,
    pub token: SecretToken,
    pub connections: BTreeMap<String, Arc<Connection>>,
    /// The digest of the file's bytes as loaded ([`file_digest`]), so a CLI can tell
    /// whether the running agent's config is the file as it is now.
    pub file_digest: Option<String>,
}

#[derive(Debug)]
pub struct Connection {
    pub name: ConnectionName,
    pub base_uri: Url,
    /// Time allowed for the internal server's response headers, and between body reads.
    pub timeout: Duration,
    pub auth: Auth,
    /// Calls per period as a token bucket; `None` is unlimited.
    pub rate_limit: Option<RateLimit>,
    /// How long a call may wait for the rate limit (or an upstream `Retry-After`) before `rate_limited`.
    pub max_wait: Duration,
    /// What `postern connection test` sends (default: `GET /`, any 2xx).
    pub test: TestRequest,
    pub tls: tls::Tls,
    pub limits: CallLimits,
}

/// Per-connection bounds, so one connection cannot exhaust the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallLimits {
    pub max_concurrent_calls: u32,
    pub max_request_body: u64,
    pub max_response_body: u64,
    /// Bytes of a request's or an answer's header block (names, values, `: ` and CRLF).
    pub max_header_bytes: u32,
}

/// The most `max_header_bytes` may be: each call channel may hold that much of a head (and
/// 16 KiB more for what the relay adds) until it is whole or timed out.
pub const MAX_HEADER_BYTES_CEILING: u32 = 128 * 1024;

impl Default for CallLimits {
    fn default() -> Self {
        Self {
            max_concurrent_calls: 128,
            max_request_body: 64 * 1024 * 1024,
            max_response_body: 1024 * 1024 * 1024,
            max_header_bytes: 64 * 1024,
        }
    }
}

#[derive(Debug)]
pub enum Auth {
    None,
    JwtBearer(Arc<JwtBearer>),
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The cause is in the message, not a `source`: a reload logs this with Display only,
    /// and `{:#}` would say it twice.
    #[error("cannot read {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    /// `--config` names a folder or nothing: the path is what is wrong, not a file.
    #[error("{0}")]
    ConfigPath(String),
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error(
        "{path} is readable by other users (mode {mode:03o}) and holds secrets; run: chmod 600 {path}"
    )]
    Permissions { path: PathBuf, mode: u32 },
    #[error("{0}")]
    Invalid(String),
    #[error("{}", list_problems(.0))]
    Problems(Vec<String>),
}

fn list_problems(problems: &[String]) -> String {
    match problems {
        [one] => one.clone(),
        many => format!("{} problems:\n  - {}", many.len(), many.join("\n  - ")),
    }
}

fn invalid(msg: impl Into<String>) -> ConfigError {
    ConfigError::Invalid(msg.into())
}

/// OpenSSH's form, the only one the agent compares against: a typo would otherwise be
/// found only when every connection attempt is refused.
fn is_sha256_fingerprint(text: &str) -> bool {
    use base64::Engine;
    text.strip_prefix("SHA256:")
        .filter(|digest| digest.len() == 43)
        .and_then(|digest| {
            base64::engine::general_purpose::STANDARD_NO_PAD
                .decode(digest)
                .ok()
        })
        .is_some_and(|bytes| bytes.len() == 32)
}

impl ConfigFile {
    /// The file as written (private to its owner, valid TOML), nothing resolved: no
    /// secret is read, so it needs nothing from the service's environment.
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        Self::read_with_digest(path).map(|(file, _)| file)
    }

    /// `read`, and the [`file_digest`] of the bytes it parsed.
    pub fn read_with_digest(path: &Path) -> Result<(Self, String), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| {
            match config_path_problem(path, &error) {
                Some(problem) => ConfigError::ConfigPath(problem),
                None => ConfigError::Read {
                    path: path.to_owned(),
                    error,
                },
            }
        })?;
        check_private(path)?;
        let file = ConfigFile::parse(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        Ok((file, file_digest(text.as_bytes())))
    }
}

/// What is wrong with the `--config` path itself, when reading it failed with `error`: a
/// folder (`/etc/postern` for `/etc/postern/agent.toml`, a common slip) or nothing there.
/// `None` for other failures (permissions, I/O), said as they are.
pub fn config_path_problem(path: &Path, error: &std::io::Error) -> Option<String> {
    match error.kind() {
        std::io::ErrorKind::IsADirectory => Some(a_folder(path)),
        std::io::ErrorKind::NotFound => Some(format!(
            "{} does not exist: pass the agent's config with --config FILE (or \
             POSTERN_CONFIG), or write one with `postern init`",
            path.display()
        )),
        _ => None,
    }
}

/// `--config` naming a folder, said with the file path meant.
pub fn a_folder(path: &Path) -> String {
    format!(
        "{} is a folder: --config takes the config file's path (such as {})",
        path.display(),
        path.join("agent.toml").display()
    )
}

/// What is wrong with a relay address, if anything: it must be `HOST:PORT` (an IPv6
/// address in brackets), the port 1–65535. Anything else — a URL scheme, a path, a user
/// name — would be written and checked as fine, then fail every lookup while `run`
/// retries forever.
pub fn relay_problem(relay: &str) -> Option<String> {
    let problem = |what: &str| {
        Some(format!(
            "relay {relay:?} {what}: write HOST:PORT, such as \"relay.example.com:2222\" \
             (an IPv6 address in brackets: \"[2001:db8::1]:2222\")"
        ))
    };
    if relay.trim().is_empty() {
        return problem("is empty");
    }
    if let Some((_, rest)) = relay.split_once("://") {
        let bare = rest.trim_end_matches('/');
        return match relay_problem(bare) {
            None => problem(&format!(
                "has a URL scheme, but the relay is reached over SSH (did you mean {bare:?}?)"
            )),
            Some(_) => problem("has a URL scheme, but the relay is reached over SSH"),
        };
    }
    if let Some(c) = relay
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || matches!(c, '/' | '@' | '?' | '#'))
    {
        let what = match c {
            '/' => "holds a path".to_owned(),
            '@' => "holds a user name (the agent logs in with its token)".to_owned(),
            c if c.is_whitespace() => "holds a space".to_owned(),
            c => format!("holds {c:?}"),
        };
        return problem(&what);
    }
    let (host, port) = match relay.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((ip, port)) if ip.parse::<std::net::Ipv6Addr>().is_ok() => {
                (ip, port.strip_prefix(':').unwrap_or_default())
            }
            Some(_) => return problem("holds something other than an IPv6 address in brackets"),
            None => return problem("opens a `[` it never closes"),
        },
        None => match relay.rsplit_once(':') {
            Some((host, _)) if host.contains(':') => {
                return problem("looks like an IPv6 address without brackets");
            }
            Some(host_port) => host_port,
            None => return problem("has no port"),
        },
    };
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return problem("has no port number after the last `:`");
    }
    if host.is_empty() {
        return problem("has no host before the port");
    }
    match port.parse::<u16>() {
        Ok(1..) => None,
        _ => Some(format!(
            "relay {relay:?}: the port {port} is out of range (1–65535)"
        )),
    }
}

/// The problem with a secret the environment does not hold: in an admin's shell, one the
/// service's environment sets. [`is_unset_variable`] knows it among other problems.
pub fn unset_variable(what: &str, name: &str) -> String {
    format!("{what}: environment variable {name} is not set")
}

/// Why `env(name)` gave no value: unset ([`unset_variable`]), or set to bytes that are not
/// UTF-8 (a Latin-1 value from a unit's `Environment=`), which "not set" would misdirect.
pub fn variable_problem(what: &str, name: &str, error: &std::env::VarError) -> String {
    match error {
        std::env::VarError::NotPresent => unset_variable(what, name),
        std::env::VarError::NotUnicode(_) => {
            format!("{what}: environment variable {name} is set but is not valid UTF-8")
        }
    }
}

/// Whether a load problem is only that an environment variable is not set here
/// ([`unset_variable`], or a payload's `{{env.NAME}}`): something the shell cannot check.
pub fn is_unset_variable(problem: &str) -> bool {
    problem.contains("environment variable ") && problem.ends_with(" is not set")
}

/// SHA-256 of a config file's bytes, as base64: equal digests, same file content.
pub fn file_digest(bytes: &[u8]) -> String {
    use base64::Engine;
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest.as_ref())
}

impl AgentConfig {
    /// Reads, checks the file mode, parses and resolves a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let (file, digest) = ConfigFile::read_with_digest(path)?;
        let base = path.parent().unwrap_or(Path::new("."));
        let config = Self::resolve(file, base, &|name| std::env::var(name))?;
        Ok(Self {
            file_digest: Some(digest),
            ..config
        })
    }

    /// Turns a parsed file into a config; relative paths are taken from `base_dir`.
    pub fn resolve(
        file: ConfigFile,
        base_dir: &Path,
        env: &dyn Fn(&str) -> Result<String, std::env::VarError>,
    ) -> Result<Self, ConfigError> {
        // Collect every problem, so `postern config check` can list them all at once.
        let mut problems = Vec::new();
        if !is_sha256_fingerprint(&file.relay_fingerprint) {
            problems.push(format!(
                "relay_fingerprint {:?} must be the relay's host key fingerprint: `SHA256:` then \
                 43 base64 characters (A-Z a-z 0-9 + /, no `=`), exactly as \
                 `postern-relay fingerprint` prints it on the relay",
                file.relay_fingerprint
            ));
        }
        let relays = file.relay.into_vec();
        if relays.is_empty() {
            problems.push("relay: name at least one host:port".to_owned());
        }
        problems.extend(relays.iter().filter_map(|relay| relay_problem(relay)));
        let proxy = match &file.proxy {
            Some(url) => crate::proxy::Proxy::parse(url)
                .map(Some)
                .map_err(|e| format!("proxy: {e}")),
            None => crate::proxy::Proxy::from_env(env, &relays)
                .map_err(|e| format!("proxy environment: {e}")),
        }
        .unwrap_or_else(|e| {
            problems.push(e);
            None
        });
        let metrics_listen = file.metrics_listen.as_deref().and_then(|text| {
            match text.parse::<std::net::SocketAddr>() {
                Ok(addr) if addr.ip().is_loopback() => Some(addr),
                Ok(_) => {
                    problems.push(format!(
                        "metrics_listen {text:?} must be a loopback address (127.0.0.1:PORT or [::1]:PORT): the agent opens no port to the network"
                    ));
                    None
                }
                Err(e) => {
                    problems.push(format!("metrics_listen {text:?}: {e} (expected 127.0.0.1:PORT)"));
                    None
                }
            }
        });
        let token = one_secret(
            "token",
            file.token.as_deref(),
            file.token_file.as_deref(),
            file.token_env.as_deref(),
            base_dir,
            env,
        )
        .map_err(|e| e.to_string())
        .and_then(|text| {
            SecretToken::parse(SecretKind::AgentToken, &text).map_err(|e| format!("token: {e}"))
        })
        .map_err(|e| problems.push(e))
        .ok();
        let mut connections = BTreeMap::new();
        for (name, conn) in file.connections {
            match resolve_connection(&name, conn, base_dir, env) {
                Ok(connection) => {
                    connections.insert(name, Arc::new(connection));
                }
                Err(list) => problems.extend(
                    list.into_iter()
                        .map(|problem| format!("connections.{name}: {problem}")),
                ),
            }
        }
        let status_socket = status_socket(file.status_socket.as_deref(), base_dir);
        if let Err(e) = fits_a_socket_address(&status_socket) {
            problems.push(e);
        }
        match token {
            Some(token) if problems.is_empty() => Ok(Self {
                relays,
                proxy,
                status_socket,
                metrics_listen,
                relay_fingerprint: file.relay_fingerprint,
                token,
                connections,
                file_digest: None,
            }),
            _ => Err(ConfigError::Problems(problems)),
        }
    }

    pub fn connection(&self, name: &str) -> Option<&Arc<Connection>> {
        self.connections.get(name)
    }
}

/// Every problem of the connection, not only the first: `config check` lists them all
/// at once. A setting that cannot be resolved is left out of the checks that need it.
fn resolve_connection(
    name: &str,
    conn: ConnectionFile,
    base_dir: &Path,
    env: &dyn Fn(&str) -> Result<String, std::env::VarError>,
) -> Result<Connection, Vec<String>> {
    let mut problems = Vec::new();
    let p = &mut problems;
    let written = name;
    let name = noted(p, ConnectionName::parse(name).map_err(|e| e.to_string()));
    let base_uri = noted(p, resolve_base_uri(&conn.base_uri));
    let timeout = noted(p, limits::resolve_timeout(&conn.timeout));
    let auth = match conn.auth {
        AuthFile::None => Some(Auth::None),
        AuthFile::JwtBearer(jwt) => noted(p, jwt_auth::resolve(*jwt, written, base_dir, env))
            .map(|jwt| Auth::JwtBearer(Arc::new(jwt))),
    };
    let rate_limit = noted(
        p,
        conn.rate_limit.map(limits::resolve_rate_limit).transpose(),
    );
    let max_wait = noted(p, limits::resolve_max_wait(conn.max_wait.as_deref()));
    let test = noted(
        p,
        conn.test
            .map(|test| limits::resolve_test(test, base_uri.as_ref()))
            .transpose(),
    );
    let tls = noted(p, tls::resolve(conn.tls, base_dir));
    let limits = noted(
        p,
        limits::resolve_call_limits(
            conn.max_concurrent_calls,
            conn.max_request_body,
            conn.max_response_body,
            conn.max_header_bytes,
        ),
    );
    match (
        name, base_uri, timeout, auth, rate_limit, max_wait, test, tls, limits,
    ) {
        (
            Some(name),
            Some(base_uri),
            Some(timeout),
            Some(auth),
            Some(rate_limit),
            Some(max_wait),
            Some(test),
            Some(tls),
            Some(limits),
        ) if problems.is_empty() => {
            warn_if_never_expires(&name, &auth);
            Ok(Connection {
                name,
                base_uri,
                timeout,
                auth,
                rate_limit,
                max_wait,
                test: test.unwrap_or_default(),
                tls,
                limits,
            })
        }
        _ => Err(problems),
    }
}

/// A direct bearer JWT without `exp` is a credential that never expires, sent to the
/// internal server (and its logs) on every call. Warned, not refused, so that a config
/// running so today still starts after an upgrade; an exchange's assertion without one
/// is refused ([`jwt_auth::resolve`]), as identity providers refuse it anyway.
fn warn_if_never_expires(name: &ConnectionName, auth: &Auth) {
    if let Auth::JwtBearer(jwt) = auth
        && jwt.exchange.is_none()
        && !jwt.signer.sets_claim("exp")
    {
        tracing::warn!(
            connection = %name,
            "connections.{name}: its JWT has no exp claim, so each one is a bearer credential that never expires, sent on every call: set auth.lifetime (such as \"5m\") or payload.exp"
        );
    }
}

/// A URL (`key`: `base_uri`, a token URL) written without its scheme (`127.0.0.1:8080/api`)
/// is said to need one, as `relay_problem` says what was meant: the url crate's own words
/// (`relative URL without a base`) do not, and `host:8080` would even parse, as the
/// scheme `host`.
pub(crate) fn missing_scheme(key: &str, text: &str) -> Option<String> {
    let lower = text.trim().to_ascii_lowercase();
    if text.contains("://") || lower.starts_with("http:") || lower.starts_with("https:") {
        return None;
    }
    let shown = shown(text.trim());
    Some(format!(
        "{key} {shown:?} has no scheme: write it as a URL (did you mean \"http://{shown}\" or \"https://{shown}\"?)"
    ))
}

fn resolve_base_uri(text: &str) -> Result<Url, String> {
    if let Some(problem) = missing_scheme("base_uri", text) {
        return Err(problem);
    }
    let base_uri = Url::parse(text).map_err(|e| format!("base_uri {:?}: {e}", shown(text)))?;
    if !matches!(base_uri.scheme(), "http" | "https") || base_uri.host_str().is_none() {
        return Err(format!(
            "base_uri {:?} must be an http:// or https:// URL with a host",
            shown(text)
        ));
    }
    refuse_user_info(
        "base_uri",
        &base_uri,
        "the internal server's credentials come from the connection's auth table",
    )?;
    if base_uri.query().is_some() || base_uri.fragment().is_some() {
        return Err(format!(
            "base_uri {:?} may not hold a query or fragment",
            shown(text)
        ));
    }
    Ok(base_uri)
}

/// One problem, or a setting's several.
trait Problems {
    fn into_list(self) -> Vec<String>;
}

impl Problems for String {
    fn into_list(self) -> Vec<String> {
        vec![self]
    }
}

impl Problems for Vec<String> {
    fn into_list(self) -> Vec<String> {
        self
    }
}

/// The value, or `None` with its problems added to `problems`: resolving goes on past
/// a problem, so every one is found in one run.
fn noted<T, E: Problems>(problems: &mut Vec<String>, result: Result<T, E>) -> Option<T> {
    result.map_err(|e| problems.extend(e.into_list())).ok()
}

/// What `postern connection show` prints in place of a secret (in `cli/edit.rs`), so its
/// tables can be pasted back; pasted back as it is, it would be sent as the secret.
pub const SECRET_MASK: &str = "***";

/// The keys whose values `connection show` masks, wherever they are in a connection.
pub const MASKED_KEYS: &[&str] = &[
    "secret",
    "private_key",
    "token",
    "client_secret",
    "password",
];

/// The problem with `place` holding [`SECRET_MASK`].
pub(crate) fn mask_problem(place: &str) -> String {
    format!(
        "{place} is {SECRET_MASK:?}, the mask `postern connection show` prints in place of a \
         secret, not a secret: put the real value back"
    )
}

/// Exactly one of inline / file / environment variable; never [`SECRET_MASK`].
pub(crate) fn one_secret(
    what: &str,
    inline: Option<&str>,
    file: Option<&Path>,
    env_name: Option<&str>,
    base_dir: &Path,
    env: &dyn Fn(&str) -> Result<String, std::env::VarError>,
) -> Result<String, ConfigError> {
    let text = match (inline, file, env_name) {
        (Some(v), None, None) => v.to_owned(),
        (None, Some(f), None) => {
            let path = base_dir.join(f);
            check_private(&path)?;
            let bytes = std::fs::read(&path).map_err(|error| ConfigError::Read {
                path: path.clone(),
                error,
            })?;
            match String::from_utf8(bytes) {
                Ok(text) => text.trim().to_owned(),
                Err(_) => return Err(invalid(not_text(what, &path))),
            }
        }
        (None, None, Some(name)) => {
            env(name).map_err(|e| invalid(variable_problem(what, name, &e)))?
        }
        (None, None, None) => {
            return Err(invalid(format!(
                "{what}: set one of {what}, {what}_file or {what}_env"
            )));
        }
        _ => {
            return Err(invalid(format!(
                "{what}: set only one of {what}, {what}_file or {what}_env"
            )));
        }
    };
    if text.trim() == SECRET_MASK {
        let place = match (file, env_name) {
            (Some(f), _) => format!("{what}_file {}", base_dir.join(f).display()),
            (_, Some(name)) => format!("{what}_env {name}"),
            _ => what.to_owned(),
        };
        return Err(invalid(mask_problem(&place)));
    }
    Ok(text)
}

/// The problem with a secret file that is not UTF-8 text, with what to do instead: an HMAC
/// secret of random bytes, say, or a DER key, which the file's name would not hint at.
fn not_text(what: &str, path: &Path) -> String {
    let path = path.display();
    let hint = match what {
        "auth.secret" => format!(
            "for a secret of raw bytes, write it base64-encoded (`base64 -w0 {path}`) to the \
             secret file (mode 0600) and set secret_encoding = \"base64\""
        ),
        "auth.private_key" => format!(
            "a PEM key is expected; a DER key converts with `openssl pkey -inform DER -in {path} -out key.pem`"
        ),
        _ => "it must hold the value as text".to_owned(),
    };
    format!("{what}_file {path} is not UTF-8 text: {hint}")
}

/// Replaces `path` with `text` atomically (temp file beside it, then rename), mode 0600 (it
/// holds secrets; a crash mid-write must not leave half a file),
/// and with the old file's owner and group: run as root (`sudo postern …`), the new
/// file must stay readable by the service user that owned the old one. A new file
/// written by root goes to its folder's owner: `sudo postern init` into the .deb's
/// /etc/postern (the service user's) must give a config the service can read.
pub fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    write_private_bytes(path, text.as_bytes(), None)
}

/// [`write_private`] of `bytes`, with `owner` (uid, gid) when given instead of the old
/// file's. The owner is set on the temp file before the rename, never by path afterwards:
/// a path in a folder someone else owns can be a symlink by then.
pub fn write_private_bytes(
    path: &Path,
    bytes: &[u8],
    owner: Option<(u32, u32)>,
) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
    let folder = folder_of(path);
    let _one_at_a_time = lock_folder(folder)?;
    // The entry replaced, not what it may point at: a symlink planted there does not lend
    // its target's owner.
    let old = match std::fs::symlink_metadata(path) {
        Ok(meta) => Some((meta.uid(), meta.gid())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && current_uid() == Some(0) => {
            std::fs::metadata(folder).ok().map(|m| (m.uid(), m.gid()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    let owner = owner.or(old);
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.postern-tmp"));
    let _ = std::fs::remove_file(&tmp);
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    let written = (|| {
        out.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        if let Some((uid, gid)) = owner {
            let mine = out.metadata()?;
            if (mine.uid(), mine.gid()) != (uid, gid) {
                std::os::unix::fs::fchown(&out, Some(uid), Some(gid))?;
            }
        }
        out.write_all(bytes)?;
        out.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// The folder `path` is in (`.` for a bare file name).
pub fn folder_of(path: &Path) -> &Path {
    path.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// How long a write waits for another to finish before it gives up.
const WRITE_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

thread_local! {
    /// Folders whose lock this thread holds, by device and inode: an edit holds its
    /// folder's from its read to its write, and the write inside must not wait for it.
    static HELD: std::cell::RefCell<Vec<(u64, u64)>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A folder's write lock, held until dropped; see [`lock_folder`]. Not `Send`: it is
/// noted as held by the thread that took it.
pub struct FolderLock {
    /// The locked folder, open, and its device and inode; `None` when not locked here.
    held: Option<(std::fs::File, (u64, u64))>,
    _this_thread: std::marker::PhantomData<*const ()>,
}

impl Drop for FolderLock {
    fn drop(&mut self) {
        if let Some((_, key)) = &self.held {
            HELD.with_borrow_mut(|held| held.retain(|k| k != key));
        }
    }
}

/// Writers at once (two admins, a tool running tasks side by side) would take each
/// other's temp file and rename a half-written one into place, and edits at once would
/// each write what they read plus their own change, undoing the other's: they take turns
/// on an advisory lock on the folder. One this thread holds already is not taken again.
/// A folder that cannot be opened, or locked at all (some network file systems), is
/// written to unlocked, as before.
pub fn lock_folder(folder: &Path) -> std::io::Result<FolderLock> {
    use std::os::unix::fs::MetadataExt;
    let unlocked = FolderLock {
        held: None,
        _this_thread: std::marker::PhantomData,
    };
    let Ok(file) = std::fs::File::open(folder) else {
        return Ok(unlocked);
    };
    let key = match file.metadata() {
        Ok(meta) => (meta.dev(), meta.ino()),
        Err(_) => return Ok(unlocked),
    };
    if HELD.with_borrow(|held| held.contains(&key)) {
        return Ok(unlocked);
    }
    let waited_from = std::time::Instant::now();
    loop {
        match file.try_lock() {
            Ok(()) => {
                HELD.with_borrow_mut(|held| held.push(key));
                return Ok(FolderLock {
                    held: Some((file, key)),
                    _this_thread: std::marker::PhantomData,
                });
            }
            Err(std::fs::TryLockError::WouldBlock) => {}
            Err(std::fs::TryLockError::Error(_)) => return Ok(unlocked),
        }
        // Anyone who can read the folder can hold its lock: wait, but not for ever.
        if waited_from.elapsed() >= WRITE_LOCK_WAIT {
            return Err(std::io::Error::other(format!(
                "another write in {} still holds its lock after {WRITE_LOCK_WAIT:?} (another postern command?); try again",
                folder.display()
            )));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Refuses files that others can read: they hold tokens and keys.
pub fn check_private(path: &Path) -> Result<(), ConfigError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|error| ConfigError::Read {
        path: path.to_owned(),
        error,
    })?;
    // Before the mode: `chmod 600` on a folder (a path that stopped one short) would lock
    // every key in it.
    if meta.is_dir() {
        return Err(ConfigError::Read {
            path: path.to_owned(),
            error: std::io::Error::new(
                std::io::ErrorKind::IsADirectory,
                "it is a folder; name the file in it",
            ),
        });
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(ConfigError::Permissions {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

/// The status socket: as configured (relative to the config's folder), else
/// `/run/postern/agent.sock` for root, else in `$XDG_RUNTIME_DIR` or `/tmp/postern-<uid>/`.
pub fn status_socket(configured: Option<&Path>, base_dir: &Path) -> PathBuf {
    use std::os::unix::fs::MetadataExt;
    if let Some(path) = configured {
        return base_dir.join(path);
    }
    default_socket(
        current_uid().unwrap_or(0),
        std::env::var_os("XDG_RUNTIME_DIR"),
        || std::fs::metadata(SERVICE_RUN_DIR).ok().map(|m| m.uid()),
    )
}

/// Longest path a Unix socket can be bound at (`sun_path` holds 108 bytes with its NUL).
const MAX_SOCKET_PATH: usize = 107;

/// A status socket past [`MAX_SOCKET_PATH`] passed every check and then could not be
/// bound: the agent ran on with a warning, and `status` and `reload` never reached it.
fn fits_a_socket_address(path: &Path) -> Result<(), String> {
    let len = path.as_os_str().len();
    if len <= MAX_SOCKET_PATH {
        return Ok(());
    }
    Err(format!(
        "status_socket {}: {len} bytes, longer than a Unix socket's path may be \
         ({MAX_SOCKET_PATH}); set status_socket to a shorter path",
        path.display()
    ))
}

/// The unit's RuntimeDirectory, where the service's socket is.
pub(crate) const SERVICE_RUN_DIR: &str = "/run/postern";

/// Without `XDG_RUNTIME_DIR` (which `sudo -u postern` drops), the service user's own
/// commands look where its unit puts the socket: in /run/postern when that is theirs.
fn default_socket(
    uid: u32,
    xdg: Option<std::ffi::OsString>,
    run_owner: impl FnOnce() -> Option<u32>,
) -> PathBuf {
    let service = Path::new(SERVICE_RUN_DIR).join("agent.sock");
    match xdg {
        _ if uid == 0 => service,
        Some(dir) => PathBuf::from(dir).join("postern/agent.sock"),
        None if run_owner() == Some(uid) => service,
        None => PathBuf::from(format!("/tmp/postern-{uid}/agent.sock")),
    }
}

/// The default config path: `/etc/postern/agent.toml` for root (the system
/// service), else the user's config folder (e.g. `~/.config/postern/agent.toml`).
pub fn default_path() -> PathBuf {
    let system = PathBuf::from("/etc/postern/agent.toml");
    if is_root() {
        return system;
    }
    directories::ProjectDirs::from("", "", "postern")
        .map(|d| d.config_dir().join("agent.toml"))
        .unwrap_or(system)
}

fn is_root() -> bool {
    std::env::var("USER").is_ok_and(|u| u == "root") || current_uid() == Some(0)
}

pub use postern_process::current_uid;

#[cfg(test)]
mod tests;
