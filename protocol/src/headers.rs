//! Header names both sides use, and the hop-by-hop headers that never cross a hop.
//! Lower-case, as HTTP/2 and `http::HeaderName` want them.

/// Request id carried from the caller through the relay to the agent and back.
pub const REQUEST_ID: &str = "x-request-id";

/// The relay's `call_timeout` in milliseconds, on each call it sends an agent (any the
/// caller sent is replaced): how long a call may wait for the agent's answer. The agent
/// takes it off, and does not queue a call for its rate limit past what that leaves.
pub const CALL_TIMEOUT: &str = "x-postern-call-timeout";

/// Set by the agent or relay on responses it made itself (not the upstream's),
/// holding the stable error code, so a caller can tell the two apart.
pub const POSTERN_ERROR: &str = "x-postern-error";

/// Set by the relay on a call of a connection's base: `1` for the bare `.../http`, `0` for
/// `.../http/`, which it forwards alike as `/` (any the caller sent is dropped). The agent
/// takes it off: it needs to know which the caller named to point a `Location` back at
/// the call route, and without it (a relay before 2026-12-07) leaves such a `Location` be.
pub const BARE_CALL: &str = "x-postern-bare-call";

/// Header lines the relay reads in the head of an agent's answer: hyper's default, which
/// its channel client keeps. The agent reads no more from an internal server either, and
/// refuses an answer it could not pass on whole (see `ANSWER_HEADER_LINES_ADDED`).
pub const MAX_ANSWER_HEADER_LINES: usize = 100;

/// Lines the agent's side of the tunnel may add to the answer's head on the way: `date`,
/// and `transfer-encoding` for a body without a length.
pub const ANSWER_HEADER_LINES_ADDED: usize = 2;

/// Header lines the relay's API reads in a caller's request head (hyper's default).
pub const MAX_REQUEST_HEADER_LINES: usize = 100;

/// Lines the relay may add to a request's head on its way to the agent: `host`,
/// `x-request-id`, `x-postern-call-timeout`, `x-postern-bare-call`, and `transfer-encoding`
/// for a body without a length. The agent reads that many more, or a caller's head at the
/// relay's limit would get a bare 431 from the agent.
pub const REQUEST_HEADER_LINES_ADDED: usize = 5;

/// The largest request head the relay can be set to read (`max_header_bytes`).
pub const MAX_REQUEST_HEAD_BYTES: usize = 1024 * 1024;

/// Headers that describe one connection only (RFC 9110 §7.6.1), plus the ones
/// each hop sets itself. Never forwarded; nor is any `Proxy-*` header.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
];

/// Whether `name` is one of `names` or starts with `prefix`, ASCII case ignored and `_`
/// taken for `-`: CGI, Rack and WSGI servers (Puma, PHP's) read `X_Forwarded_For` as
/// `X-Forwarded-For`, both `HTTP_X_FORWARDED_FOR` to the application.
fn listed(name: &str, names: &[&str], prefix: &str) -> bool {
    names.iter().any(|h| same_name(h, name))
        || name
            .get(..prefix.len())
            .is_some_and(|p| same_name(p, prefix))
}

fn same_name(a: &str, b: &str) -> bool {
    let fold = |c: u8| match c {
        b'_' => b'-',
        c => c.to_ascii_lowercase(),
    };
    a.len() == b.len() && a.bytes().zip(b.bytes()).all(|(x, y)| fold(x) == fold(y))
}

/// Whether a header must be dropped when a request or response crosses a hop: the
/// list above, and every `Proxy-*` header (each is for the proxy it was sent to).
fn is_hop_by_hop(name: &str) -> bool {
    listed(name, HOP_BY_HOP, "proxy-")
}

/// Drops the hop-by-hop headers and every header the `Connection` header names,
/// as each hop (relay and agent) must before passing a message on.
pub fn strip_hop_by_hop(headers: &mut http::HeaderMap) {
    strip(headers, is_hop_by_hop);
}

/// Removes every header `drop` picks and every header the `Connection` header names,
/// in one pass over the header names.
fn strip(headers: &mut http::HeaderMap, drop: impl Fn(&str) -> bool) {
    let named: Vec<&str> = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let picked: Vec<http::HeaderName> = headers
        .keys()
        .filter(|k| drop(k.as_str()) || named.iter().any(|n| n.eq_ignore_ascii_case(k.as_str())))
        .cloned()
        .collect();
    for name in picked {
        headers.remove(name);
    }
}

/// Request headers some servers and frameworks read as the request's real path, host,
/// client address or method (IIS's `X-Original-URL`, Symfony's `X-Rewrite-URL`, Spring's
/// forwarded-header filter, "local callers only" checks on `X-Forwarded-For`, Akamai's and
/// Cloudflare's `True-Client-IP` and `CF-Connecting-IP`, Rails' `Client-IP`, Envoy's
/// external address). From a caller they would reach past
/// what `base_uri` and the path checks allow; the agent is the client of its internal
/// servers, so it sends none of them. Plus every `X-Forwarded-*`.
const REROUTING: &[&str] = &[
    "forwarded",
    "x-forwarded",
    "x-original-url",
    "x-rewrite-url",
    "x-original-uri",
    "x-original-host",
    "x-host",
    "x-http-host-override",
    "x-real-ip",
    "x-client-ip",
    "client-ip",
    "true-client-ip",
    "x-cluster-client-ip",
    "x-proxyuser-ip",
    "x-originating-ip",
    "x-remote-ip",
    "x-remote-addr",
    "cf-connecting-ip",
    "fastly-client-ip",
    "x-envoy-external-address",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    // WebLogic's client address, read by Java "real client IP" helpers.
    "wl-proxy-client-ip",
    // httpoxy: a CGI server hands it to the application as HTTP_PROXY, which many HTTP
    // clients take as the proxy for the application's own outgoing requests.
    "proxy",
];

/// Request headers that ask the next hop's HTTP client to behave in a way the agent's
/// (reqwest) does not: `Expect: 100-continue` says the client waits for a `100 Continue`
/// before sending the body, and reqwest sends it at once. The expectation is the
/// caller's, answered at its own hop (the relay's server); passed on, it told the
/// internal server of a wait that never happens (RFC 9110 §10.1.1), and one that answers
/// from the head alone (a 401, a 417) then had a body arrive anyway. The relay passes it
/// on, so the agent's own server sees the caller's wish.
const NOT_HONOURED: &[&str] = &["expect"];

/// What [`strip_hop_by_hop`] drops, plus a caller's headers that could reroute the call at
/// the internal server ([`REROUTING`], and every `X-Forwarded-*`) and those the agent's
/// client does not honour ([`NOT_HONOURED`]); the agent does so before a call leaves.
pub fn strip_before_internal_server(headers: &mut http::HeaderMap) {
    strip(headers, |name| {
        is_hop_by_hop(name)
            || listed(name, REROUTING, "x-forwarded-")
            || NOT_HONOURED.iter().any(|h| same_name(h, name))
    });
}

/// A header block's size as sent: `name: value` and CRLF per header, the measure both
/// sides hold `max_header_bytes` to.
pub fn header_bytes(headers: &http::HeaderMap) -> usize {
    headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum()
}

/// A request head's size as HTTP/1.1 sends it: request line (`target` is the path and
/// query), `name: value` lines, blank line. The relay's `max_header_bytes` and a
/// connection's at the agent are held to this one count.
pub fn head_bytes(method: &http::Method, target: &str, headers: &http::HeaderMap) -> usize {
    let line = method.as_str().len() + 1 + target.len() + " HTTP/1.1\r\n".len();
    line + header_bytes(headers) + 2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_hop_by_hop_rerouting_and_unhonoured_headers_and_keeps_the_rest() {
        let mut h = http::HeaderMap::new();
        for name in [
            "X-Original-URL",
            "x-rewrite-url",
            "X-Forwarded-For",
            "x-forwarded-host",
            "X-Forwarded-Prefix",
            "forwarded",
            "X-HTTP-Method-Override",
            "x-real-ip",
            "Client-IP",
            "True-Client-IP",
            "X-Cluster-Client-IP",
            "X-Forwarded",
            "X-Original-Host",
            "X-Host",
            "X-HTTP-Host-Override",
            "X-ProxyUser-Ip",
            "X-Originating-IP",
            "X-Remote-IP",
            "X-Remote-Addr",
            "CF-Connecting-IP",
            "Fastly-Client-IP",
            "X-Envoy-External-Address",
            "WL-Proxy-Client-IP",
            "Proxy",
            // What CGI, Rack and WSGI servers read as the dashed names.
            "X_Forwarded_For",
            "X-Forwarded_Host",
            "x_real_ip",
            "X_Original_URL",
            "Proxy_Authorization",
        ] {
            h.insert(
                http::HeaderName::from_bytes(name.as_bytes()).expect("valid name"),
                http::HeaderValue::from_static("/admin"),
            );
        }
        // The hop-by-hop ones go in the same pass.
        h.insert("connection", http::HeaderValue::from_static("x-secret-hop"));
        h.insert("x-secret-hop", http::HeaderValue::from_static("1"));
        h.insert("host", http::HeaderValue::from_static("relay"));
        h.insert("x-forwardedness", http::HeaderValue::from_static("kept"));
        h.insert("x-hostname", http::HeaderValue::from_static("kept"));
        h.insert("x_request_id", http::HeaderValue::from_static("kept"));
        h.insert("accept", http::HeaderValue::from_static("application/json"));
        h.insert("x-request-id", http::HeaderValue::from_static("r1"));
        h.insert("expect", http::HeaderValue::from_static("100-continue"));
        strip_before_internal_server(&mut h);
        let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left.len(), 5, "{left:?}");
        for kept in [
            "x-forwardedness",
            "x-hostname",
            "accept",
            "x-request-id",
            "x_request_id",
        ] {
            assert!(h.contains_key(kept), "{kept} dropped: {left:?}");
        }
    }

    #[test]
    fn strips_hop_by_hop_and_connection_named_headers() {
        let mut h = http::HeaderMap::new();
        h.insert(
            "connection",
            http::HeaderValue::from_static("close, x-secret-hop"),
        );
        h.insert("x-secret-hop", http::HeaderValue::from_static("1"));
        h.insert(
            "transfer-encoding",
            http::HeaderValue::from_static("chunked"),
        );
        h.insert("host", http::HeaderValue::from_static("relay"));
        h.insert(
            "proxy-authorization",
            http::HeaderValue::from_static("Basic x"),
        );
        h.insert("Proxy-Foo", http::HeaderValue::from_static("1"));
        h.insert("proxyish", http::HeaderValue::from_static("1"));
        h.insert("x-keep", http::HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 2);
        assert!(h.contains_key("x-keep"));
        assert!(h.contains_key("proxyish"));
    }
}
