//! The warnings at each load of the config of what only a system CA root can verify, when
//! the system has none: an https internal server without `ca_file`, an https token endpoint.

use tracing::warn;

use super::client_tls;
use crate::config::{Auth, Connection};
use crate::jwt::exchange::shown_url;

/// Says, once per connection, what of it only a system root can verify while this load of
/// the config found none: its calls will fail, and the agent serves the rest regardless.
pub fn warn_where_missing<'a>(connections: impl Iterator<Item = &'a Connection>) {
    if client_tls::system_has_roots() {
        return;
    }
    for conn in connections {
        let server = conn.base_uri.scheme() == "https" && conn.tls.system_roots_only();
        // The token endpoint's client trusts the system roots alone (`token_client`).
        let endpoint = match &conn.auth {
            Auth::JwtBearer(jwt) => jwt.exchange.as_ref().map(|x| &x.token_url),
            Auth::None => None,
        }
        .filter(|url| url.scheme() == "https");
        let what = match (server, endpoint) {
            (false, None) => continue,
            (true, None) => format!("its internal server {}", shown_url(&conn.base_uri)),
            (false, Some(url)) => format!("its token endpoint {}", shown_url(url)),
            (true, Some(url)) => format!(
                "its internal server {} and its token endpoint {}",
                shown_url(&conn.base_uri),
                shown_url(url)
            ),
        };
        let or_ca_file = if server {
            ", or give the connection a tls.ca_file with its internal server's CA"
        } else {
            ""
        };
        warn!(connection = %conn.name, "no system CA certificates were found (none in the system bundle, or in SSL_CERT_FILE / SSL_CERT_DIR when set), and only they can verify {what}: its calls will fail until you install the ca-certificates package or set SSL_CERT_FILE to a CA bundle, then reload{or_ca_file}");
    }
}
