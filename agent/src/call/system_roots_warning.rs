//! The warnings at each load of the config of what only a system CA root can verify, when
//! the system has none: an https internal server without `ca_file`, an https token endpoint.

use tracing::warn;
use url::Url;

use super::client_tls;
use crate::config::{Auth, Connection};
use crate::jwt::exchange::shown_url;

/// Connections named one line each; a config of thousands of https connections would
/// otherwise log thousands of lines at every load, so the rest share one line.
const NAMED: usize = 5;

/// Names in the line for the rest, before it says how many more there are.
const LISTED: usize = 10;

const REMEDY: &str = "until you install the ca-certificates package or set SSL_CERT_FILE to a CA bundle, then reload";

/// Says what of each connection only a system root can verify while this load of the
/// config found none (the first [`NAMED`] connections one line each, then one line for
/// the rest): their calls will fail, and the agent serves the rest regardless.
pub fn warn_where_missing<'a>(connections: impl Iterator<Item = &'a Connection>) {
    if client_tls::system_has_roots() {
        return;
    }
    let needing: Vec<Needs> = connections.filter_map(Needs::of).collect();
    for needs in needing.iter().take(NAMED) {
        let or_ca_file = if needs.server {
            ", or give the connection a tls.ca_file with its internal server's CA"
        } else {
            ""
        };
        warn!(connection = %needs.conn.name, "no system CA certificates were found (none in the system bundle, or in SSL_CERT_FILE / SSL_CERT_DIR when set), and only they can verify {}: its calls will fail {REMEDY}{or_ca_file}", needs.what());
    }
    let rest = needing.get(NAMED..).unwrap_or_default();
    if rest.is_empty() {
        return;
    }
    let mut names = rest
        .iter()
        .take(LISTED)
        .map(|n| n.conn.name.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    if rest.len() > LISTED {
        names.push_str(&format!(" and {} others", rest.len() - LISTED));
    }
    warn!(
        connections = rest.len(),
        "no system CA certificates were found, and only they can verify the https internal server (one without tls.ca_file) or token endpoint of {} more connections: {names}; their calls will fail {REMEDY}",
        rest.len()
    );
}

/// A connection with something only a system root can verify.
struct Needs<'a> {
    conn: &'a Connection,
    /// Its internal server: https, without `ca_file` or `insecure_skip_verify`.
    server: bool,
    /// Its https token endpoint, whose client trusts the system roots alone
    /// (`token_client`).
    endpoint: Option<&'a Url>,
}

impl<'a> Needs<'a> {
    fn of(conn: &'a Connection) -> Option<Self> {
        let server = conn.base_uri.scheme() == "https" && conn.tls.system_roots_only();
        let endpoint = match &conn.auth {
            Auth::JwtBearer(jwt) => jwt.exchange.as_ref().map(|x| &x.token_url),
            Auth::None => None,
        }
        .filter(|url| url.scheme() == "https");
        (server || endpoint.is_some()).then_some(Self {
            conn,
            server,
            endpoint,
        })
    }

    fn what(&self) -> String {
        let server = format!("its internal server {}", shown_url(&self.conn.base_uri));
        match (self.server, self.endpoint) {
            (_, None) => server,
            (false, Some(url)) => format!("its token endpoint {}", shown_url(url)),
            (true, Some(url)) => format!("{server} and its token endpoint {}", shown_url(url)),
        }
    }
}
