//! Maps a call's path under its connection's `base_uri` and refuses anything
//! that could leave it: dot segments (raw or encoded), encoded slashes, `@`, controls (raw or encoded).

use url::Url;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum PathError {
    #[error("the path must start with '/'")]
    NotAbsolutePath,
    #[error("the path may not start with '//' (that names another host)")]
    NetworkPath,
    #[error("the path holds a control character, space or backslash")]
    BadCharacter,
    #[error("the path may not hold an absolute URL ('://')")]
    AbsoluteUrl,
    #[error("the path may not hold '@'")]
    AtSign,
    #[error("the path may not hold '.' or '..' segments, in any encoding")]
    DotSegment,
    #[error("the path may not hold encoded '/', '\\' or NUL")]
    EncodedSeparator,
    #[error("the path may not hold encoded control characters (CR, LF, TAB…)")]
    EncodedControl,
    #[error("the path holds a malformed percent-escape")]
    BadEscape,
    #[error("the path may not hold a fragment ('#')")]
    Fragment,
    #[error("the resulting URL would leave the connection's base_uri")]
    Escapes,
}

/// `base` + `path_and_query` (as received: `/v2/orders?since=1`), or a refusal.
pub fn build(base: &Url, path_and_query: &str) -> Result<Url, PathError> {
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_and_query, None),
    };
    check_path(path)?;
    if let Some(q) = query {
        if q.bytes().any(|b| b.is_ascii_control() || b == b' ') {
            return Err(PathError::BadCharacter);
        }
        if q.contains('#') {
            return Err(PathError::Fragment);
        }
    }
    let base_path = base.path().trim_end_matches('/');
    let joined = format!("{base_path}{path}");
    let mut url = base.clone();
    url.set_path(&joined);
    url.set_query(query);
    // Belt and braces: whatever the URL parser made of it must still sit under the base.
    if below_base(&url, base).is_none() {
        return Err(PathError::Escapes);
    }
    Ok(url)
}

/// The part of `target`'s path below the base's (`""` or `/…`), if `target` is under the
/// base: same scheme, host, port and credentials, and a path that is the base's path or
/// below it on a segment boundary (`/api` holds `/api/x`, not `/apix`). Compared part by
/// part: `Url::origin` allocates, and this runs on every call.
pub fn below_base<'t>(target: &'t Url, base: &Url) -> Option<&'t str> {
    let same_origin = target.scheme() == base.scheme()
        && target.host() == base.host()
        && target.port_or_known_default() == base.port_or_known_default()
        && target.username() == base.username()
        && target.password() == base.password();
    if !same_origin {
        return None;
    }
    let base_path = base.path().trim_end_matches('/');
    let rest = target.path().strip_prefix(base_path)?;
    (rest.is_empty() || rest.starts_with('/')).then_some(rest)
}

fn check_path(path: &str) -> Result<(), PathError> {
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolutePath);
    }
    if path.starts_with("//") {
        return Err(PathError::NetworkPath);
    }
    if path.contains('#') {
        return Err(PathError::Fragment);
    }
    if path.contains("://") {
        return Err(PathError::AbsoluteUrl);
    }
    if path
        .bytes()
        .any(|b| b.is_ascii_control() || b == b' ' || b == b'\\' || b >= 0x80)
    {
        return Err(PathError::BadCharacter);
    }
    if path.contains('@') {
        return Err(PathError::AtSign);
    }
    for segment in path.split('/').skip(1) {
        if !segment.contains('%') {
            // Raw controls, backslashes and non-ASCII were refused above; only dots are left to check.
            if is_dot_segment(segment.as_bytes()) {
                return Err(PathError::DotSegment);
            }
            continue;
        }
        let decoded = percent_decode(segment)?;
        if decoded.contains(&b'/') || decoded.contains(&b'\\') || decoded.contains(&0) {
            return Err(PathError::EncodedSeparator);
        }
        // Double encoding (%252e) decodes to an escape: a server that decodes twice would see a dot or slash.
        let lower = String::from_utf8_lossy(&decoded).to_ascii_lowercase();
        if ["%2e", "%2f", "%5c", "%00"]
            .iter()
            .any(|e| lower.contains(e))
        {
            return Err(PathError::EncodedSeparator);
        }
        // A server that decodes the path into a header or a log line would split it.
        if decoded.iter().any(|b| b.is_ascii_control()) {
            return Err(PathError::EncodedControl);
        }
        if is_dot_segment(&decoded) {
            return Err(PathError::DotSegment);
        }
    }
    Ok(())
}

/// `.` or `..`, also with path parameters (`..;x`): Tomcat, Jetty and Spring drop
/// everything from the `;` and then resolve the dots.
fn is_dot_segment(segment: &[u8]) -> bool {
    let name = segment.split(|&b| b == b';').next().unwrap_or_default();
    name == b"." || name == b".."
}

fn percent_decode(segment: &str) -> Result<Vec<u8>, PathError> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or(PathError::BadEscape)?;
            let text = std::str::from_utf8(hex).map_err(|_| PathError::BadEscape)?;
            out.push(u8::from_str_radix(text, 16).map_err(|_| PathError::BadEscape)?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Url {
        Url::parse("http://127.0.0.1:9000/api").expect("url")
    }

    #[test]
    fn joins_under_the_base_and_keeps_the_query() {
        let url = build(&base(), "/v2/orders?since=2024-01-01&x=%20").expect("ok");
        assert_eq!(
            url.as_str(),
            "http://127.0.0.1:9000/api/v2/orders?since=2024-01-01&x=%20"
        );
        let url = build(&Url::parse("https://h/api/").expect("url"), "/").expect("ok");
        assert_eq!(url.as_str(), "https://h/api/");
        let url = build(&Url::parse("https://h").expect("url"), "/a%20b/c").expect("ok");
        assert_eq!(url.as_str(), "https://h/a%20b/c");
        // Path parameters and dots inside a name are ordinary.
        for path in [
            "/v2;v=1/orders",
            "/a/...;x",
            "/..a;/b",
            "/;/x",
            "/a.;b/c",
            "/%2e%2ex;/y",
        ] {
            assert!(build(&base(), path).is_ok(), "{path:?}");
        }
    }

    #[test]
    fn refuses_every_escape() {
        let cases = [
            ("/../etc/passwd", PathError::DotSegment),
            ("/v2/..", PathError::DotSegment),
            ("/./x", PathError::DotSegment),
            ("/%2e%2e/x", PathError::DotSegment),
            ("/%2E%2e/x", PathError::DotSegment),
            ("/.%2e/x", PathError::DotSegment),
            ("/a%2fb", PathError::EncodedSeparator),
            ("/a%2F..%2Fb", PathError::EncodedSeparator),
            ("/a%5cb", PathError::EncodedSeparator),
            ("/a%00b", PathError::EncodedSeparator),
            ("/%252e%252e/x", PathError::EncodedSeparator),
            ("//evil.example/x", PathError::NetworkPath),
            ("http://evil.example/x", PathError::NotAbsolutePath),
            ("evil", PathError::NotAbsolutePath),
            ("/a\\..\\b", PathError::BadCharacter),
            ("/a\r\nHost: x", PathError::BadCharacter),
            ("/a\0", PathError::BadCharacter),
            ("/user@evil.example", PathError::AtSign),
            ("/http://evil.example/x", PathError::AbsoluteUrl),
            ("/a#frag", PathError::Fragment),
            ("/a%zz", PathError::BadEscape),
            ("/a%2", PathError::BadEscape),
            ("/x?a=1\r\nb", PathError::BadCharacter),
            ("/a%0d%0aX-Injected:%20yes", PathError::EncodedControl),
            ("/a%0Ab", PathError::EncodedControl),
            ("/a%09b", PathError::EncodedControl),
            ("/a%7fb", PathError::EncodedControl),
            ("/..;/admin", PathError::DotSegment),
            ("/api/..;jsessionid=x/admin", PathError::DotSegment),
            ("/.;/x", PathError::DotSegment),
            ("/%2e%2e;/admin", PathError::DotSegment),
            ("/.%2e;x=1/admin", PathError::DotSegment),
            ("/..%3b/admin", PathError::DotSegment),
            ("/v2/..;", PathError::DotSegment),
        ];
        for (path, expected) in cases {
            assert_eq!(build(&base(), path), Err(expected.clone()), "{path:?}");
        }
    }

    /// What README says is not kept "as sent": the URL parser percent-encodes what a URL
    /// may not hold raw, and the base path itself cannot be named without its slash.
    #[test]
    fn what_the_url_parser_encodes_and_the_base_without_its_slash() {
        let url = build(&base(), "/a{b}\"c`<d>e^|f?q='x'&n=\u{e9}&s=\"<>{}").expect("ok");
        assert_eq!(
            url.as_str(),
            "http://127.0.0.1:9000/api/a%7Bb%7D%22c%60%3Cd%3Ee^|f?q=%27x%27&n=%C3%A9&s=%22%3C%3E{}"
        );
        // `…/http` and `…/http/` both come as `/`.
        assert_eq!(
            build(&base(), "/").expect("ok").as_str(),
            "http://127.0.0.1:9000/api/"
        );
    }
}
