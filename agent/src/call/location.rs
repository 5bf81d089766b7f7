//! Maps an answer's `Location` or `Content-Location` that points under the connection's
//! `base_uri` back to the relay's call route, as a relative reference (nginx's `proxy_redirect`).

use http::HeaderMap;
use http::header::{CONTENT_LOCATION, HeaderValue, LOCATION};
use url::Url;

use crate::upstream_url::below_base;

/// The call as the caller made it on the relay, seen from the agent.
#[derive(Debug, Clone, Copy)]
pub struct Called<'a> {
    /// The URL the call went to on the internal server: relative values resolve against it.
    pub internal: &'a Url,
    /// The connection's `base_uri`.
    pub base: &'a Url,
    /// The path under the connection as the relay forwarded it, in the caller's encoding
    /// (`/v2/x`; `/` for `.../http/` and for the bare `.../http`).
    pub path: &'a str,
    /// For a call of the base (`path` `/`), whether the caller named the bare `.../http`,
    /// whose base directory is `.../connections/{c}/`, or `.../http/`; `None` where the
    /// relay did not say (before 2026-12-07).
    pub bare: Option<bool>,
}

/// Rewrites every `Location` and `Content-Location` of an answer that [`map`] maps; a
/// value that is not visible ASCII is passed on as it is.
pub fn point_back(headers: &mut HeaderMap, called: Called<'_>) {
    for name in [LOCATION, CONTENT_LOCATION] {
        if !headers.contains_key(&name) {
            continue;
        }
        let values: Vec<HeaderValue> = headers
            .get_all(&name)
            .iter()
            .map(|value| {
                value
                    .to_str()
                    .ok()
                    .and_then(|text| map(text, called))
                    .and_then(|mapped| HeaderValue::from_str(&mapped).ok())
                    .unwrap_or_else(|| value.clone())
            })
            .collect();
        headers.remove(&name);
        for value in values {
            headers.append(&name, value);
        }
    }
}

/// The value to send the caller instead of `value`, or `None` to pass it on as it is:
/// a value that does not parse, and one with a host of its own that is not under the base.
/// A value without a host of its own (`/x`, `../x`) that leaves the base becomes the
/// absolute internal URL it names: resolved by the caller against the relay's URL, it
/// would name one of the relay's routes (another connection's, another agent's).
pub fn map(value: &str, called: Called<'_>) -> Option<String> {
    let target = called.internal.join(value).ok()?;
    let Some(rest) = below_base(&target, called.base) else {
        return (!has_authority(value)).then(|| target.to_string());
    };
    // Both paths from `.../connections/{c}/`: the caller's call, and the route to the target.
    let from = match (called.bare, called.path) {
        (Some(true), _) => "http".to_owned(),
        // No one reference resolves right from both `.../http` and `.../http/`: as before.
        (None, "/") => return None,
        _ => format!("http{}", called.path),
    };
    let to = format!("http{rest}");
    let mut reference = relative_path(&from, &to);
    if let Some(query) = target.query() {
        reference.push('?');
        reference.push_str(query);
    }
    if let Some(fragment) = target.fragment() {
        reference.push('#');
        reference.push_str(fragment);
    }
    Some(reference)
}

/// Whether a reference names a host itself: an absolute URL (`https://…`, or any
/// `scheme:`) or a network-path reference (`//host/…`).
fn has_authority(value: &str) -> bool {
    let value = value.trim_start();
    if value.starts_with("//") {
        return true;
    }
    // RFC 3986 §3.1: a scheme is a letter, then letters, digits, `+`, `-` or `.`, then `:`.
    let scheme = value.split(':').next().unwrap_or_default();
    scheme.len() < value.len()
        && scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

/// A relative-path reference that, resolved against `from`, gives `to` (both relative
/// paths from the same directory, segments kept byte for byte).
fn relative_path(from: &str, to: &str) -> String {
    let mut from_dirs: Vec<&str> = from.split('/').collect();
    from_dirs.pop();
    let to_segments: Vec<&str> = to.split('/').collect();
    // The target's last segment is always written out, so at most all its directories are shared.
    let shared = from_dirs
        .iter()
        .zip(&to_segments[..to_segments.len() - 1])
        .take_while(|(a, b)| a == b)
        .count();
    let ups = from_dirs.len() - shared;
    let down = to_segments[shared..].join("/");
    // Empty, it would name the caller's own URL with its query; starting with `/`, a
    // path-absolute one; with a `:` in its first segment, a scheme: `./` keeps it a path.
    let needs_dot = down.is_empty()
        || down.starts_with('/')
        || down.split('/').next().is_some_and(|s| s.contains(':'));
    if ups == 0 && needs_dot {
        return format!("./{down}");
    }
    format!("{}{down}", "../".repeat(ups))
}

#[cfg(test)]
mod tests {
    use super::*;

    const RELAY: &str = "https://relay.example/prefix/v1/agents/a1/connections/orders/";

    /// Maps `value` for a call of `path` (`None`: the bare `.../http`) on `base`, checks
    /// that the caller, resolving the answer against the URL it called, lands where the
    /// internal server pointed (`route` under `.../connections/orders/`), and returns it.
    fn mapped(base: &str, path: Option<&str>, value: &str, route: &str) -> String {
        let base = Url::parse(base).expect("base");
        let internal =
            crate::upstream_url::build(&base, path.unwrap_or("/")).expect("internal url");
        let called = Called {
            internal: &internal,
            base: &base,
            path: path.unwrap_or("/").split('?').next().unwrap_or_default(),
            bare: Some(path.is_none()),
        };
        let reference = map(value, called).expect("mapped");
        let caller = Url::parse(RELAY)
            .and_then(|r| r.join(&format!("http{}", path.unwrap_or(""))))
            .expect("caller url");
        let landed = caller.join(&reference).expect("resolves");
        assert_eq!(landed.as_str(), format!("{RELAY}{route}"), "{reference:?}");
        reference
    }

    fn kept(base: &str, path: &str, value: &str) -> Option<String> {
        let base = Url::parse(base).expect("base");
        let internal = crate::upstream_url::build(&base, path).expect("internal url");
        map(
            value,
            Called {
                internal: &internal,
                base: &base,
                path,
                bare: (path == "/").then_some(false),
            },
        )
    }

    const BASE: &str = "https://internal/api";

    #[test]
    fn absolute_under_the_base() {
        let r = mapped(
            BASE,
            Some("/v2/x"),
            "https://internal/api/v2/y?q=1",
            "http/v2/y?q=1",
        );
        assert_eq!(r, "y?q=1");
        let r = mapped(BASE, Some("/v2/x"), "https://internal:443/api/w", "http/w");
        assert_eq!(r, "../w");
    }

    #[test]
    fn path_absolute_and_relative_under_the_base() {
        assert_eq!(
            mapped(BASE, Some("/v2/x"), "/api/v3/z", "http/v3/z"),
            "../v3/z"
        );
        assert_eq!(mapped(BASE, Some("/v2/x"), "../w", "http/w"), "../w");
        assert_eq!(mapped(BASE, Some("/v2/x"), "y", "http/v2/y"), "y");
        // The base path itself: the bare route (which the relay forwards as `/api/`).
        assert_eq!(mapped(BASE, Some("/v2/x"), "/api", "http"), "../../http");
    }

    #[test]
    fn climbing_out_of_the_base_names_the_internal_url() {
        assert_eq!(
            kept(BASE, "/v2/x", "../../other"),
            Some("https://internal/other".into())
        );
        assert_eq!(
            kept(BASE, "/v2/x", "/apix/y"),
            Some("https://internal/apix/y".into())
        );
    }

    #[test]
    fn other_hosts_ports_schemes_and_paths_pass_unchanged() {
        for value in [
            "https://elsewhere/api/x",
            "https://internal:8443/api/x",
            "http://internal/api/x",
            "https://internal/apix/y",
            "https://internal/",
            "//elsewhere/api/x",
            "https://user@internal/api/x",
            "mailto:ops@example.com",
        ] {
            assert_eq!(kept(BASE, "/v2/x", value), None, "{value}");
        }
    }

    #[test]
    fn bare_call_and_call_ending_in_a_slash() {
        assert_eq!(mapped(BASE, None, "/api/v2/y", "http/v2/y"), "http/v2/y");
        assert_eq!(mapped(BASE, None, "/api/", "http/"), "http/");
        assert_eq!(mapped(BASE, Some("/"), "/api/v2/y", "http/v2/y"), "v2/y");
        assert_eq!(mapped(BASE, Some("/"), "/api/", "http/"), "./");
        assert_eq!(mapped(BASE, Some("/v2/"), "/api/v2/y", "http/v2/y"), "y");
        assert_eq!(mapped(BASE, Some("/v2/"), "/api/v2/", "http/v2/"), "./");
        assert_eq!(mapped(BASE, Some("/v2/"), "/api/v3/", "http/v3/"), "../v3/");
    }

    /// A relay that does not say which form a call of the base was (before 2026-12-07):
    /// such a call's `Location` under the base is left as it came, as no reference fits
    /// both; other calls' are mapped, as they can be only one form.
    #[test]
    fn a_call_of_the_base_from_a_relay_that_does_not_say_is_left_be() {
        let base = Url::parse(BASE).expect("base");
        let called = |path| Called {
            internal: &base,
            base: &base,
            path,
            bare: None,
        };
        assert_eq!(map("/api/v2/y", called("/")), None);
        assert_eq!(map("/api/v2/y", called("/v2/x")).as_deref(), Some("y"));
    }

    #[test]
    fn percent_encoding_query_and_fragment_are_kept() {
        assert_eq!(
            mapped(
                BASE,
                Some("/caf%C3%A9/x%20y"),
                "https://internal/api/caf%C3%A9/%7Bid%7D?q=a%20b&r#sec%20one",
                "http/caf%C3%A9/%7Bid%7D?q=a%20b&r#sec%20one",
            ),
            "%7Bid%7D?q=a%20b&r#sec%20one"
        );
        // A segment spelled otherwise than the caller did is climbed over, not matched.
        assert_eq!(
            mapped(
                BASE,
                Some("/caf%C3%A9/x"),
                "/api/caf%c3%a9/y",
                "http/caf%c3%a9/y"
            ),
            "../caf%c3%a9/y"
        );
        // Segments that would read as a scheme or a path-absolute reference stay paths.
        assert_eq!(mapped(BASE, Some("/x"), "/api/a:b", "http/a:b"), "./a:b");
        assert_eq!(mapped(BASE, Some("/x"), "/api//b", "http//b"), ".//b");
    }

    #[test]
    fn base_with_and_without_its_slash() {
        for base in ["https://internal/api", "https://internal/api/"] {
            assert_eq!(mapped(base, Some("/v2/x"), "/api/v2/y", "http/v2/y"), "y");
            assert_eq!(
                kept(base, "/v2/x", "/apix"),
                Some("https://internal/apix".into())
            );
        }
        // A base at the host's root holds its every path.
        assert_eq!(
            mapped(
                "http://internal:8080",
                Some("/a/b"),
                "http://internal:8080/c",
                "http/c"
            ),
            "../c"
        );
    }

    #[test]
    fn ipv6_host() {
        let base = "http://[::1]:9000/api";
        assert_eq!(
            mapped(
                base,
                Some("/v2/x"),
                "http://[::1]:9000/api/v2/y",
                "http/v2/y"
            ),
            "y"
        );
        assert_eq!(kept(base, "/v2/x", "http://[::2]:9000/api/v2/y"), None);
    }

    #[test]
    fn an_unparsable_value_is_kept() {
        assert_eq!(kept(BASE, "/v2/x", "http://[bad/x"), None);
        assert_eq!(kept(BASE, "/v2/x", "https://internal:99999/api/x"), None);
    }
}
