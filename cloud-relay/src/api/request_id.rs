//! `x-request-id` on every API answer, errors included: the caller's own id
//! when it is sane, else a new one, put back on the request for the handlers.

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use http::{HeaderMap, HeaderValue};
use postern_protocol::headers::REQUEST_ID;

/// Sets the request's id (kept or made) and copies it onto the response.
pub async fn tag(mut request: Request, next: Next) -> Response {
    let id = request_id(request.headers());
    let value = HeaderValue::from_str(&id).ok();
    if let Some(v) = &value {
        request.headers_mut().insert(REQUEST_ID, v.clone());
    }
    let mut response = next.run(request).await;
    if let Some(v) = value {
        response.headers_mut().insert(REQUEST_ID, v);
    }
    response
}

/// The caller's request id if it is sane (1–128 visible ASCII), else a new one.
pub fn request_id(headers: &HeaderMap) -> String {
    headers
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
        .unwrap_or_else(|| {
            // A v4 UUID from the thread's CSPRNG: `Uuid::new_v4` costs a getrandom syscall per call.
            uuid::Builder::from_random_bytes(rand::random())
                .into_uuid()
                .to_string()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_a_sane_id_and_replaces_others() {
        let mut h = HeaderMap::new();
        h.insert(REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&h), "abc-123");
        h.insert(REQUEST_ID, HeaderValue::from_static("has space"));
        assert_ne!(request_id(&h), "has space");
        let long = "x".repeat(129);
        h.insert(REQUEST_ID, HeaderValue::from_str(&long).expect("header"));
        let fresh = request_id(&h);
        let parsed = uuid::Uuid::parse_str(&fresh).expect("a UUID");
        assert_eq!(parsed.get_version_num(), 4, "{fresh}");
        assert_eq!(parsed.get_variant(), uuid::Variant::RFC4122, "{fresh}");
        assert_ne!(request_id(&h), fresh);
    }
}
