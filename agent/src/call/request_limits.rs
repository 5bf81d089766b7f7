//! What a call's request must fit before the agent signs, waits for or sends anything:
//! the length of the URL it maps to, and its head against the connection's `max_header_bytes`.

use http::{HeaderMap, Method, StatusCode};
use postern_protocol::ErrorCode;
use url::{Position, Url};

use super::Refusal;

/// The longest URL the agent can send. reqwest turns each into an `http::Uri`, which
/// refuses one over `u16::MAX - 1` bytes (it keeps offsets as `u16`, `u16::MAX` meaning
/// none); such a call failed as a "builder error", which read as an unreachable server
/// (a code that says "resend") although it fails the same way every time.
pub(super) const MAX_URL_BYTES: usize = u16::MAX as usize - 1;

/// 414 `path_rejected` for a URL longer than [`MAX_URL_BYTES`].
pub(super) fn url_fits(url: &Url) -> Result<(), Refusal> {
    let length = url.as_str().len();
    if length <= MAX_URL_BYTES {
        return Ok(());
    }
    Err(Refusal::from((
        ErrorCode::PathRejected,
        format!(
            "the URL this call maps to under the connection's base_uri is {length} bytes long, over the {MAX_URL_BYTES} bytes the agent can send; nothing was sent"
        ),
    ))
    .with_status(StatusCode::URI_TOO_LONG))
}

/// 431 `payload_too_large` (HTTP's status for a head too large, as the relay answers its
/// own `max_header_bytes`) for a head over the connection's `max_header_bytes`.
///
/// The request line counted is the one the internal server will read, with `base_uri`'s
/// path in it, not the call's line as it reached the agent: this limit is the
/// connection's, set for what its internal server takes, and servers read the request
/// line into the same buffer as the headers (nginx's `large_client_header_buffers`); the
/// caller's own line, under `/v1/agents/…`, the relay already held to its limit. The
/// headers are counted as they arrived, as before the line was.
pub(super) fn head_fits(
    method: &Method,
    url: &Url,
    headers: &HeaderMap,
    max_header_bytes: usize,
) -> Result<(), Refusal> {
    let size = head_bytes(method, url, headers);
    if size <= max_header_bytes {
        return Ok(());
    }
    Err(Refusal::from((
        ErrorCode::PayloadTooLarge,
        format!(
            "the request head ({size} bytes: the request line it would be sent with, and its headers) is larger than this connection's max_header_bytes ({max_header_bytes} bytes); nothing was sent"
        ),
    ))
    .with_status(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE))
}

/// A head's size as the relay counts its own, with the line it would be sent with.
fn head_bytes(method: &Method, url: &Url, headers: &HeaderMap) -> usize {
    let target = &url[Position::BeforePath..Position::AfterQuery];
    postern_protocol::headers::head_bytes(method, target, headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url_of_length(length: usize) -> Url {
        let base = "http://internal:9000/api/x?q=";
        let url = format!("{base}{}", "a".repeat(length - base.len()));
        Url::parse(&url).expect("url")
    }

    #[test]
    fn the_longest_url_is_the_longest_http_takes() {
        let longest = url_of_length(MAX_URL_BYTES);
        assert!(url_fits(&longest).is_ok());
        assert!(longest.as_str().parse::<http::Uri>().is_ok());
        let over = url_of_length(MAX_URL_BYTES + 1);
        assert!(over.as_str().parse::<http::Uri>().is_err());
        let refused = url_fits(&over).expect_err("refused");
        assert_eq!(refused.code, ErrorCode::PathRejected);
        assert_eq!(refused.status, Some(StatusCode::URI_TOO_LONG));
        assert!(
            refused.message.contains("65535 bytes"),
            "{}",
            refused.message
        );
        assert!(refused.message.contains("nothing was sent"));
    }

    #[test]
    fn a_head_counts_the_line_the_internal_server_reads() {
        let url = Url::parse("http://internal:9000/api/orders?id=7").expect("url");
        let mut headers = HeaderMap::new();
        headers.insert("x-a", http::HeaderValue::from_static("b"));
        // "GET /api/orders?id=7 HTTP/1.1\r\n", "x-a: b\r\n", "\r\n"
        let size = 31 + 8 + 2;
        assert_eq!(head_bytes(&Method::GET, &url, &headers), size);
        assert!(head_fits(&Method::GET, &url, &headers, size).is_ok());
        let refused = head_fits(&Method::GET, &url, &headers, size - 1).expect_err("refused");
        assert_eq!(refused.code, ErrorCode::PayloadTooLarge);
        assert_eq!(
            refused.status,
            Some(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
        );
        assert!(refused.message.contains("max_header_bytes"));
    }
}
