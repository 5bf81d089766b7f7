//! RFC 7523 token exchange: POSTs the signed JWT to the token endpoint (as `assertion`, or
//! as `client_assertion` per §2.2) and reads `access_token`, `token_type`, `expires_in`.

use std::fmt;
use std::time::Duration;

use http::header::{ACCEPT, CONTENT_TYPE, LOCATION, RETRY_AFTER};
use serde_json::{Map, Value};

use crate::call::client_tls::{ClientError, client_config};
use crate::call::pause_asked::parse_retry_after;
use crate::call::rate_limit::MAX_PAUSE;
use crate::config::tls::Tls;
use crate::config::{BodyEncoding, CLIENT_ASSERTION_TYPE, Exchange};

/// A token endpoint's answer is small; anything larger is not one.
const MAX_RESPONSE_BYTES: usize = 256 * 1024;
/// How much of an unexpected answer goes into the error message.
const SNIPPET_CHARS: usize = 200;
/// The longest `expires_in` taken at its word: a token said to live longer is exchanged
/// again after a day anyway, which costs one request and keeps the clock arithmetic sane.
pub const MAX_LIFETIME: Duration = Duration::from_secs(24 * 60 * 60);

/// An access token from the token endpoint; `Debug` never shows it.
pub struct AccessToken {
    pub access_token: String,
    /// As the endpoint named it; `bearer` in any case is sent as `Bearer`.
    pub token_type: String,
    /// `expires_in`, or the configured default lifetime when the endpoint gave none.
    pub lifetime: Duration,
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessToken")
            .field("access_token", &"[redacted]")
            .field("token_type", &self.token_type)
            .field("lifetime", &self.lifetime)
            .finish()
    }
}

impl AccessToken {
    /// The `Authorization` header value.
    pub fn authorization(&self) -> String {
        let scheme = if self.token_type.is_empty() || self.token_type.eq_ignore_ascii_case("bearer")
        {
            "Bearer"
        } else {
            self.token_type.as_str()
        };
        format!("{scheme} {}", self.access_token)
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ExchangeError {
    #[error("token endpoint {url} {} (HTTP {status}): {error}{}", refused_or_failed(*status, error), description.as_ref().map(|d| format!(": {d}")).unwrap_or_default())]
    Refused {
        url: String,
        status: u16,
        error: String,
        description: Option<String>,
    },
    /// A 429 or an OAuth `slow_down` (RFC 8628 §3.5): the endpoint's own trouble, and it
    /// asks for quiet, for `retry_after` when it says how long.
    #[error("token endpoint {url} failed: throttled (HTTP {status}): {said}{}", retry_after.map(|d| format!("; its Retry-After asks for {} s of quiet", d.as_secs())).unwrap_or_default())]
    Throttled {
        url: String,
        status: u16,
        said: String,
        retry_after: Option<Duration>,
    },
    /// A 3xx: followed, it would send the assertion where the config does not say.
    #[error("token endpoint {url} answered HTTP {status}, a redirect {}: redirects are not followed{}", redirect_target(location.as_deref()), if location.is_some() { "; set token_url to it" } else { "" })]
    Redirected {
        url: String,
        status: u16,
        /// Shown as [`shown_url`] shows `token_url`.
        location: Option<String>,
    },
    #[error("token endpoint {url} answered HTTP {status} without an OAuth error: {snippet}")]
    Status {
        url: String,
        status: u16,
        snippet: String,
    },
    #[error("token endpoint {url} answered without a usable access token: {reason}")]
    BadResponse { url: String, reason: String },
    #[error("cannot reach token endpoint {url}: {detail}")]
    Unreachable { url: String, detail: String },
    #[error("token endpoint {url} did not answer within {timeout:?}")]
    Timeout { url: String, timeout: Duration },
}

impl ExchangeError {
    /// How long a throttling endpoint asked to be left alone, at most [`MAX_PAUSE`] (as an
    /// internal server's pause is); `None` for every other failure.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ExchangeError::Throttled { retry_after, .. } => {
                Some(retry_after.unwrap_or_default().min(MAX_PAUSE))
            }
            _ => None,
        }
    }
}

fn redirect_target(location: Option<&str>) -> String {
    match location {
        Some(location) => format!("to {location}"),
        None => "without a Location".to_owned(),
    }
}

/// What an OAuth error says happened: the endpoint's own trouble (a 5xx, RFC 6749's
/// `server_error` and `temporarily_unavailable`) is not a refusal, which would send the
/// engineer to the key and the claims during the identity provider's outage.
fn refused_or_failed(status: u16, error: &str) -> &'static str {
    if status >= 500 || matches!(error, "server_error" | "temporarily_unavailable") {
        "failed"
    } else {
        "refused the assertion"
    }
}

/// A client for token endpoints, one per connection with an `exchange` and load of the
/// config (cheap: the system roots it trusts are read once per load and shared). Like the
/// internal servers' clients it uses no proxy and follows no redirects, but it trusts only
/// the system's roots: a connection's `tls` settings (its CA, its client certificate,
/// skipping verification) are for its internal server, not for a token endpoint that may
/// be a third party's.
pub fn token_client() -> Result<reqwest::Client, ClientError> {
    Ok(reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .tls_backend_preconfigured(client_config(&Tls::default())?)
        .build()?)
}

/// Trades `jwt` for an access token at the configured endpoint.
pub async fn exchange(
    http: &reqwest::Client,
    x: &Exchange,
    jwt: &str,
    timeout: Duration,
) -> Result<AccessToken, ExchangeError> {
    let url = shown_url(&x.token_url);
    let fields = request_fields(x, jwt);
    let (content_type, body) = match x.body {
        BodyEncoding::Form => {
            let mut form = url::form_urlencoded::Serializer::new(String::new());
            for (k, v) in &fields {
                form.append_pair(k, v);
            }
            (
                "application/x-www-form-urlencoded",
                form.finish().into_bytes(),
            )
        }
        BodyEncoding::Json => {
            let object: Map<String, Value> = fields
                .into_iter()
                .map(|(k, v)| (k, Value::String(v)))
                .collect();
            (
                "application/json",
                Value::Object(object).to_string().into_bytes(),
            )
        }
    };
    let mut request = http
        .post(x.token_url.clone())
        .header(CONTENT_TYPE, content_type)
        .header(ACCEPT, "application/json")
        .body(body);
    if let Some((id, secret)) = basic_credentials(x) {
        request = request.basic_auth(id, Some(secret));
    }
    let send = async {
        let response = request.send().await?;
        let header = |name| {
            response
                .headers()
                .get(name)
                .and_then(|v: &http::HeaderValue| v.to_str().ok())
        };
        let head = Head {
            status: response.status().as_u16(),
            retry_after: header(RETRY_AFTER).and_then(parse_retry_after),
            location: header(LOCATION).map(|to| {
                x.token_url.join(to).map_or_else(
                    |_| "a Location that is not a URL".to_owned(),
                    |to| shown_url(&to),
                )
            }),
        };
        let bytes = read_limited(response).await?;
        Ok::<_, reqwest::Error>((head, bytes))
    };
    let (head, bytes) = match tokio::time::timeout(timeout, send).await {
        Err(_) => return Err(ExchangeError::Timeout { url, timeout }),
        Ok(Err(e)) if e.is_timeout() => return Err(ExchangeError::Timeout { url, timeout }),
        Ok(Err(e)) => {
            return Err(ExchangeError::Unreachable {
                url,
                // reqwest's text names the URL whole, query and all.
                detail: crate::call::error_chain(&e.without_url()),
            });
        }
        Ok(Ok(answer)) => answer,
    };
    read_answer(&url, &head, &bytes, x.default_lifetime)
}

/// What of the answer's head the errors need.
struct Head {
    status: u16,
    retry_after: Option<Duration>,
    /// Where a redirect points, as [`shown_url`] shows it.
    location: Option<String>,
}

/// The URL as error messages show it: they reach the caller and the log, so neither a
/// password nor a query (which may carry an `api_key=`) is shown.
pub(crate) fn shown_url(url: &url::Url) -> String {
    let mut shown = url.clone();
    // Both fail only for URLs that cannot hold user info at all.
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.set_query(None);
    shown.set_fragment(None);
    match url.query() {
        Some(_) => format!("{shown}?…"),
        None => shown.to_string(),
    }
}

/// The form fields in order: grant type, the JWT, then the configured extras.
fn request_fields(x: &Exchange, jwt: &str) -> Vec<(String, String)> {
    let mut fields = vec![("grant_type".to_owned(), x.grant_type.clone())];
    if x.client_assertion {
        fields.push((
            "client_assertion_type".to_owned(),
            CLIENT_ASSERTION_TYPE.to_owned(),
        ));
        fields.push(("client_assertion".to_owned(), jwt.to_owned()));
    } else {
        fields.push(("assertion".to_owned(), jwt.to_owned()));
    }
    // The config makes sure both are in `params` when they go as Basic.
    let in_header = x.client_auth == crate::config::ClientAuth::Basic;
    fields.extend(
        x.params
            .iter()
            .filter(|(k, _)| !(in_header && CLIENT_CREDENTIALS.contains(&k.as_str())))
            .map(|(k, v)| (k.clone(), v.clone())),
    );
    fields
}

/// The params that name the client: the id, then the secret.
pub(crate) const CLIENT_CREDENTIALS: [&str; 2] = ["client_id", "client_secret"];

/// With `client_auth = "basic"`, the client's id and secret as the Basic user name and
/// password: each form-urlencoded first (RFC 6749 §2.3.1), so a `:` in an id survives.
fn basic_credentials(x: &Exchange) -> Option<(String, String)> {
    if x.client_auth != crate::config::ClientAuth::Basic {
        return None;
    }
    let encoded = |name: &str| {
        let value = x.params.get(name)?;
        Some(url::form_urlencoded::byte_serialize(value.as_bytes()).collect::<String>())
    };
    let [id, secret] = CLIENT_CREDENTIALS;
    Some((encoded(id)?, encoded(secret)?))
}

async fn read_limited(mut response: reqwest::Response) -> Result<Vec<u8>, reqwest::Error> {
    let mut bytes = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = MAX_RESPONSE_BYTES.saturating_sub(bytes.len());
        bytes.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if room <= chunk.len() {
            break;
        }
    }
    Ok(bytes)
}

/// Reads a token response (RFC 6749 §5.1) or an error response (§5.2).
fn read_answer(
    url: &str,
    head: &Head,
    bytes: &[u8],
    default_lifetime: Duration,
) -> Result<AccessToken, ExchangeError> {
    let status = head.status;
    let throttled = |said: String| ExchangeError::Throttled {
        url: url.to_owned(),
        status,
        said,
        retry_after: head.retry_after,
    };
    // A byte order mark is no whitespace to serde_json; some Windows stacks send one.
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let json: Option<Map<String, Value>> = serde_json::from_slice(bytes).ok();
    // An endpoint may echo the assertion in its `error_description` too.
    let text_field = |name: &str| -> Option<String> {
        json.as_ref()?
            .get(name)?
            .as_str()
            .map(|s| redacted_head(s).chars().take(SNIPPET_CHARS * 2).collect())
    };
    // Some providers answer 200 with an error object; the `error` field decides.
    if let Some(error) = text_field("error") {
        if status == 429 || error == "slow_down" {
            let description = text_field("error_description");
            return Err(throttled(match description {
                Some(d) => format!("{error}: {d}"),
                None => error,
            }));
        }
        return Err(ExchangeError::Refused {
            url: url.to_owned(),
            status,
            error,
            description: text_field("error_description"),
        });
    }
    if status == 429 {
        return Err(throttled(snippet(bytes)));
    }
    if (300..400).contains(&status) {
        return Err(ExchangeError::Redirected {
            url: url.to_owned(),
            status,
            location: head.location.clone(),
        });
    }
    if !(200..300).contains(&status) {
        return Err(ExchangeError::Status {
            url: url.to_owned(),
            status,
            snippet: snippet(bytes),
        });
    }
    let bad = |reason: &str| ExchangeError::BadResponse {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let Some(json) = &json else {
        return Err(bad(&format!(
            "the body is not a JSON object: {}",
            snippet(bytes)
        )));
    };
    let access_token = match json.get("access_token") {
        Some(Value::String(t)) if !t.is_empty() => t.clone(),
        Some(Value::String(_)) => return Err(bad("its access_token is empty")),
        _ => return Err(bad("no access_token string in the JSON")),
    };
    if access_token.bytes().any(|b| !(0x21..=0x7e).contains(&b)) {
        return Err(bad(
            "the access_token holds characters a header cannot carry",
        ));
    }
    let token_type = text_field("token_type").unwrap_or_default();
    // It becomes the header's scheme: an HTTP token (RFC 9110 §5.6.2), or the call would fail
    // later as if our own signing had.
    if !token_type.bytes().all(is_tchar) {
        return Err(bad(&format!(
            "token_type {:?} is not a scheme a header can carry",
            token_type.chars().take(SNIPPET_CHARS).collect::<String>()
        )));
    }
    // Sent as `DPoP <token>` without the proof it needs, every call would be refused.
    if token_type.eq_ignore_ascii_case("dpop") {
        return Err(bad(
            "token_type DPoP needs a proof of possession with each request (RFC 9449), which postern does not make: have the provider issue Bearer tokens to this client",
        ));
    }
    // The same for the MAC tokens of the OAuth drafts: each request needs its own MAC.
    if token_type.eq_ignore_ascii_case("mac") {
        return Err(bad(
            "token_type mac needs a MAC computed for each request, which postern does not make: have the provider issue Bearer tokens to this client",
        ));
    }
    // A string is read as a number is ("3600.5" too), as some providers quote it.
    let seconds = |s: f64| {
        (s >= 0.0 && s.is_finite())
            .then(|| Duration::try_from_secs_f64(s.min(MAX_LIFETIME.as_secs_f64())).ok())
            .flatten()
    };
    let lifetime = match json.get("expires_in") {
        None | Some(Value::Null) => default_lifetime,
        Some(Value::Number(n)) => n
            .as_f64()
            .and_then(seconds)
            .ok_or_else(|| bad("expires_in is not a non-negative number"))?,
        Some(Value::String(s)) => s
            .trim()
            .parse::<f64>()
            .ok()
            .and_then(seconds)
            .ok_or_else(|| bad(&format!("expires_in {s:?} is not a number of seconds")))?,
        Some(_) => return Err(bad("expires_in is not a number")),
    }
    .min(MAX_LIFETIME);
    Ok(AccessToken {
        access_token,
        token_type,
        lifetime,
    })
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The start of `text`, as far as [`REDACTED_CHARS`], credentials cut out.
fn redacted_head(text: &str) -> String {
    let head: String = text.chars().take(REDACTED_CHARS).collect();
    without_credentials(&head)
}

/// How much of an odd answer is looked at for credentials (the cuts rescan what is left,
/// so a whole 256 KiB answer took a second of CPU): more than is ever shown of it.
const REDACTED_CHARS: usize = SNIPPET_CHARS * 4;

/// The start of a token endpoint's odd answer, for the error the caller and the log see,
/// [`without_credentials`].
fn snippet(bytes: &[u8]) -> String {
    let whole = String::from_utf8_lossy(bytes);
    let text = redacted_head(&whole);
    let mut s: String = text.chars().take(SNIPPET_CHARS).collect();
    if text.chars().count() > SNIPPET_CHARS || whole.chars().nth(REDACTED_CHARS).is_some() {
        s.push('…');
    }
    if s.trim().is_empty() {
        s = "(empty body)".to_owned();
    }
    s
}

/// Names whose values are credentials, as the ends of names: `access_token`,
/// `client_secret`, `password`.
const SECRET_NAMES: [&str; 3] = ["token", "secret", "password"];

/// `text` with what could be a credential cut out: a JWT (an endpoint that echoes the
/// assertion would hand the caller a signed grant), the value of a `…token=` or
/// `…secret=` pair (a token answered form-encoded instead of as JSON; the request's
/// `client_secret` echoed by a gateway's error page) and of a `"…token": "…"` or
/// `"…secret": "…"` member (a JSON answer that did not parse whole: cut short, trailing
/// bytes, an array).
fn without_credentials(text: &str) -> String {
    let jwt_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '=');
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    // Names in any case (`accessToken`, `Token=`); ASCII lowercasing keeps the offsets.
    let lower_text = text.to_ascii_lowercase();
    loop {
        let lower = &lower_text[text.len() - rest.len()..];
        let jwt = rest.find("eyJ").map(|j| (j, Cut::Jwt));
        let pair = SECRET_NAMES
            .iter()
            .filter_map(|name| lower.find(&format!("{name}=")).map(|i| i + name.len() + 1))
            .min()
            .map(|i| (i, Cut::Pair));
        let member = SECRET_NAMES
            .iter()
            .filter_map(|name| json_member_value(lower, name))
            .min()
            .map(|i| (i, Cut::Member));
        let Some((at, cut)) = [jwt, pair, member]
            .into_iter()
            .flatten()
            .min_by_key(|c| c.0)
        else {
            break;
        };
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        let end = match cut {
            Cut::Jwt => {
                out.push_str("[JWT removed]");
                rest.find(|c| !jwt_char(c))
            }
            Cut::Pair => {
                out.push_str("[removed]");
                rest.find(|c: char| c == '&' || c == '"' || c.is_whitespace())
            }
            Cut::Member => {
                out.push_str("[removed]");
                rest.find('"')
            }
        };
        rest = &rest[end.unwrap_or(rest.len())..];
    }
    out.push_str(rest);
    out
}

#[derive(Clone, Copy)]
enum Cut {
    Jwt,
    Pair,
    Member,
}

/// Where the string value of the first `"…{name}"` member in `text` starts.
fn json_member_value(text: &str, name: &str) -> Option<usize> {
    let end_of_name = format!("{name}\"");
    let mut from = 0;
    while let Some(i) = text[from..].find(&end_of_name) {
        let after = from + i + end_of_name.len();
        let value = text[after..].trim_start();
        if let Some(value) = value.strip_prefix(':').map(str::trim_start)
            && value.starts_with('"')
        {
            return Some(text.len() - value.len() + 1);
        }
        from = after;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::JWT_BEARER_GRANT;

    fn parse_response(
        url: &str,
        status: u16,
        bytes: &[u8],
        default_lifetime: Duration,
    ) -> Result<AccessToken, ExchangeError> {
        let head = Head {
            status,
            retry_after: None,
            location: None,
        };
        read_answer(url, &head, bytes, default_lifetime)
    }

    /// The endpoint's own trouble is said to be a failure, not a refusal of the assertion.
    #[test]
    fn a_server_error_is_not_a_refusal() {
        let said = |status, body: &str| {
            parse_response(URL, status, body.as_bytes(), TEN_MIN)
                .expect_err("an error")
                .to_string()
        };
        for (status, body) in [
            (500, r#"{"error":"server_error"}"#),
            (503, r#"{"error":"temporarily_unavailable"}"#),
            (400, r#"{"error":"temporarily_unavailable"}"#),
            (502, r#"{"error":"invalid_grant"}"#),
        ] {
            let said = said(status, body);
            assert!(
                said.contains(&format!("failed (HTTP {status})")) && !said.contains("refused"),
                "{said}"
            );
        }
        let said = said(
            400,
            r#"{"error":"invalid_grant","error_description":"aud"}"#,
        );
        assert!(
            said.contains("refused the assertion (HTTP 400): invalid_grant: aud"),
            "{said}"
        );
    }

    /// A 429 or `slow_down` is the endpoint's own trouble, throttling: "failed", with how
    /// long it asked for quiet (at most the internal servers' longest pause).
    #[test]
    fn throttling_is_a_failure_that_keeps_its_retry_after() {
        let head = |status, retry_after: Option<u64>| Head {
            status,
            retry_after: retry_after.map(Duration::from_secs),
            location: None,
        };
        let err = read_answer(
            URL,
            &head(429, Some(30)),
            br#"{"error":"slow_down"}"#,
            TEN_MIN,
        )
        .expect_err("429");
        assert_eq!(
            err.to_string(),
            "token endpoint https://idp.example/token failed: throttled (HTTP 429): slow_down; its Retry-After asks for 30 s of quiet"
        );
        assert_eq!(err.retry_after(), Some(Duration::from_secs(30)));
        let body = br#"{"error":"slow_down","error_description":"AADSTS50196"}"#;
        let err = read_answer(URL, &head(400, None), body, TEN_MIN).expect_err("slow_down");
        assert!(
            err.to_string()
                .ends_with("failed: throttled (HTTP 400): slow_down: AADSTS50196"),
            "{err}"
        );
        assert_eq!(err.retry_after(), Some(Duration::ZERO));
        let err = read_answer(URL, &head(429, Some(86_400)), b"<html>busy</html>", TEN_MIN)
            .expect_err("429");
        assert!(
            err.to_string()
                .contains("failed: throttled (HTTP 429): <html>busy</html>"),
            "{err}"
        );
        assert_eq!(err.retry_after(), Some(MAX_PAUSE));
        // A refusal stays one, and keeps no Retry-After.
        let err = read_answer(
            URL,
            &head(400, Some(30)),
            br#"{"error":"invalid_grant"}"#,
            TEN_MIN,
        )
        .expect_err("400");
        assert!(err.to_string().contains("refused the assertion"), "{err}");
        assert_eq!(err.retry_after(), None);
    }

    /// A redirect says where it points (its query hidden, as `token_url`'s is) and that it
    /// is not followed, so the fix (that URL as `token_url`) needs no curl.
    #[tokio::test]
    async fn a_redirect_names_its_location_without_its_query() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            for location in ["/oauth2/v2.0/token?api_key=s3cret", ""] {
                let (mut stream, _) = listener.accept().await.expect("accept");
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                while !String::from_utf8_lossy(&request).contains("assertion=J") {
                    let n = stream.read(&mut buf).await.expect("read");
                    assert!(n > 0, "closed early");
                    request.extend_from_slice(&buf[..n]);
                }
                let location = match location {
                    "" => String::new(),
                    to => format!("location: {to}\r\n"),
                };
                let answer = format!(
                    "HTTP/1.1 302 Found\r\n{location}content-length: 0\r\nconnection: close\r\n\r\n"
                );
                stream.write_all(answer.as_bytes()).await.expect("write");
            }
        });
        let x = Exchange {
            token_url: format!("http://{addr}/token").parse().expect("url"),
            grant_type: JWT_BEARER_GRANT.to_owned(),
            body: BodyEncoding::Form,
            params: std::collections::BTreeMap::new(),
            client_assertion: false,
            client_auth: crate::config::ClientAuth::Body,
            default_lifetime: TEN_MIN,
        };
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client");
        let err = exchange(&http, &x, "J", Duration::from_secs(5))
            .await
            .expect_err("redirected");
        assert_eq!(
            err.to_string(),
            format!(
                "token endpoint http://{addr}/token answered HTTP 302, a redirect to http://{addr}/oauth2/v2.0/token?…: redirects are not followed; set token_url to it"
            )
        );
        let err = exchange(&http, &x, "J", Duration::from_secs(5))
            .await
            .expect_err("redirected");
        assert!(
            err.to_string().ends_with(
                "answered HTTP 302, a redirect without a Location: redirects are not followed"
            ),
            "{err}"
        );
    }

    #[test]
    fn odd_answers_never_carry_a_credential_into_the_error() {
        let assertion = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzdmMifQ.c2lnbmF0dXJl";
        let described = format!(
            r#"{{"error":"invalid_grant","error_description":"invalid assertion {assertion}"}}"#
        );
        let err = parse_response(URL, 400, described.as_bytes(), TEN_MIN).expect_err("400");
        assert!(!err.to_string().contains("eyJ"), "{err}");
        assert!(
            err.to_string().contains("invalid assertion [JWT removed]"),
            "{err}"
        );

        let echoed = format!("bad request: assertion={assertion} rejected");
        let err = parse_response(URL, 400, echoed.as_bytes(), TEN_MIN).expect_err("400");
        assert!(!err.to_string().contains("eyJ"), "{err}");
        assert!(err.to_string().contains("[JWT removed] rejected"), "{err}");

        let form = "access_token=s3cr3t-value&token_type=bearer&expires_in=300";
        let err = parse_response(URL, 200, form.as_bytes(), TEN_MIN).expect_err("form");
        assert!(!err.to_string().contains("s3cr3t"), "{err}");
        assert!(
            err.to_string()
                .contains("access_token=[removed]&token_type=bearer"),
            "{err}"
        );
        // JSON that did not parse whole: a byte order mark before it is skipped (the
        // answer is read), trailing bytes or an array are not, and their token stays out.
        let token = r#"{"access_token":"00D5g!AQ8opaque","token_type":"Bearer"}"#;
        assert_eq!(
            ok(&format!("\u{feff}{token}")).authorization(),
            "Bearer 00D5g!AQ8opaque"
        );
        for odd in [format!("{token} trailing"), format!("[{token}]")] {
            let err = parse_response(URL, 200, odd.as_bytes(), TEN_MIN).expect_err("odd");
            assert!(!err.to_string().contains("00D5g"), "{err}");
            assert!(
                err.to_string().contains(r#""access_token":"[removed]""#),
                "{err}"
            );
        }
        assert_eq!(
            without_credentials(r#"[{"accessToken":"S1"}, "Token=S2&x=1"]"#),
            r#"[{"accessToken":"[removed]"}, "Token=[removed]&x=1"]"#
        );
        // A long answer (only its start is looked at, as only that is shown).
        let long = r#"{"a_token":"x","#.repeat(20_000);
        let shown = snippet(long.as_bytes());
        assert!(
            shown.starts_with(r#"{"a_token":"[removed]","#) && shown.ends_with('…'),
            "{shown}"
        );
        assert_eq!(
            without_credentials(r#"{"id_token" : "x.y", "refresh_token":"r1", "n": "token"}"#),
            r#"{"id_token" : "[removed]", "refresh_token":"[removed]", "n": "token"}"#
        );
        // The request's client secret, echoed by a gateway that did not like it.
        let echoed = "400 bad request: grant_type=x&client_id=app&client_secret=S3cr3t&scope=a";
        let err = parse_response(URL, 400, echoed.as_bytes(), TEN_MIN).expect_err("400");
        assert!(!err.to_string().contains("S3cr3t"), "{err}");
        assert!(
            err.to_string()
                .contains("client_id=app&client_secret=[removed]&scope=a"),
            "{err}"
        );
        assert_eq!(
            without_credentials(r#"{"client_secret": "S1", "Password":"P1", "id": "a"}"#),
            r#"{"client_secret": "[removed]", "Password":"[removed]", "id": "a"}"#
        );
        // The rest of an odd answer stays, to say what answered.
        assert_eq!(
            without_credentials("welcome to the proxy"),
            "welcome to the proxy"
        );
    }

    const URL: &str = "https://idp.example/token";
    const TEN_MIN: Duration = Duration::from_secs(600);

    fn ok(body: &str) -> AccessToken {
        parse_response(URL, 200, body.as_bytes(), TEN_MIN).expect("token response")
    }

    #[test]
    fn expires_in_as_number_string_or_absent() {
        assert_eq!(
            ok(r#"{"access_token":"a","expires_in":3599}"#).lifetime,
            Duration::from_secs(3599)
        );
        assert_eq!(
            ok(r#"{"access_token":"a","expires_in":"120"}"#).lifetime,
            Duration::from_secs(120)
        );
        // A fraction is taken in a string as in a number; before 2026-12-07 it was refused.
        assert_eq!(
            ok(r#"{"access_token":"a","expires_in":" 3600.5"}"#).lifetime,
            Duration::from_millis(3_600_500)
        );
        for odd in ["-5", "inf", "NaN", "1h"] {
            let body = format!(r#"{{"access_token":"a","expires_in":"{odd}"}}"#);
            let err = parse_response(URL, 200, body.as_bytes(), TEN_MIN).expect_err(odd);
            assert!(
                err.to_string().contains("is not a number of seconds"),
                "{err}"
            );
        }
        // Salesforce sends no expires_in.
        let t = ok(r#"{"access_token":"a","token_type":"Bearer","instance_url":"x"}"#);
        assert_eq!(t.lifetime, TEN_MIN);
        assert_eq!(t.authorization(), "Bearer a");
    }

    #[test]
    fn token_type_is_normalised_only_for_bearer() {
        assert_eq!(
            ok(r#"{"access_token":"a","token_type":"bearer"}"#).authorization(),
            "Bearer a"
        );
        assert_eq!(
            ok(r#"{"access_token":"a","token_type":"Custom"}"#).authorization(),
            "Custom a"
        );
        for (kind, said) in [
            ("DPoP", "RFC 9449"),
            ("MAC", "a MAC computed for each request"),
        ] {
            let body = format!(r#"{{"access_token":"a","token_type":"{kind}"}}"#);
            let err =
                parse_response(URL, 200, body.as_bytes(), TEN_MIN).expect_err("no proof to send");
            assert!(err.to_string().contains(said), "{err}");
        }
    }

    #[test]
    fn oauth_errors_carry_error_and_description() {
        let err = parse_response(
            URL,
            400,
            br#"{"error":"invalid_grant","error_description":"audience mismatch"}"#,
            TEN_MIN,
        )
        .expect_err("refused");
        assert_eq!(
            err.to_string(),
            "token endpoint https://idp.example/token refused the assertion (HTTP 400): invalid_grant: audience mismatch"
        );
        let err = parse_response(URL, 200, br#"{"error":"invalid_client"}"#, TEN_MIN)
            .expect_err("refused");
        assert!(
            err.to_string().ends_with("(HTTP 200): invalid_client"),
            "{err}"
        );
    }

    #[test]
    fn odd_answers_are_explained() {
        let err = parse_response(URL, 503, b"<html>down</html>", TEN_MIN).expect_err("status");
        assert!(
            err.to_string()
                .contains("HTTP 503 without an OAuth error: <html>down</html>"),
            "{err}"
        );
        for (body, reason) in [
            ("{}", "no access_token"),
            ("[1]", "not a JSON object"),
            (
                r#"{"access_token":"a","expires_in":"soon"}"#,
                "\"soon\" is not a number",
            ),
            (r#"{"access_token":"a b"}"#, "header cannot carry"),
            (r#"{"access_token":"a","expires_in":-5}"#, "non-negative"),
        ] {
            let err = parse_response(URL, 200, body.as_bytes(), TEN_MIN).expect_err(body);
            assert!(err.to_string().contains(reason), "{body}: {err}");
        }
    }

    #[test]
    fn a_huge_expires_in_is_clamped_to_a_day() {
        for body in [
            r#"{"access_token":"a","expires_in":1e300}"#,
            r#"{"access_token":"a","expires_in":"10000000000000000000"}"#,
            r#"{"access_token":"a","expires_in":"99999999999999999999999"}"#,
            r#"{"access_token":"a","expires_in":18446744073709551615}"#,
            r#"{"access_token":"a","expires_in":31536000}"#,
        ] {
            assert_eq!(ok(body).lifetime, MAX_LIFETIME, "{body}");
        }
        assert_eq!(
            ok(r#"{"access_token":"a","expires_in":86399}"#).lifetime,
            Duration::from_secs(86399)
        );
        for body in [
            r#"{"access_token":"a","expires_in":-1e300}"#,
            r#"{"access_token":"a","expires_in":"-5"}"#,
        ] {
            let err = parse_response(URL, 200, body.as_bytes(), TEN_MIN).expect_err(body);
            assert!(matches!(err, ExchangeError::BadResponse { .. }), "{err}");
        }
    }

    #[test]
    fn a_token_type_no_header_can_carry_is_a_bad_answer() {
        for token_type in [r"Bear\u0001er", "Bear er", r"B\u00e9arer", r"x\r\ny"] {
            let body = format!(r#"{{"access_token":"a","token_type":"{token_type}"}}"#);
            let err = parse_response(URL, 200, body.as_bytes(), TEN_MIN).expect_err(&body);
            assert!(
                err.to_string()
                    .contains("is not a scheme a header can carry"),
                "{body}: {err}"
            );
        }
        assert_eq!(
            ok(r#"{"access_token":"a","token_type":"N_A"}"#).authorization(),
            "N_A a"
        );
    }

    #[test]
    fn error_messages_never_show_the_token_urls_user_info_or_query() {
        let url: url::Url = "https://client:s3cret@idp.example/token"
            .parse()
            .expect("url");
        assert_eq!(shown_url(&url), "https://idp.example/token");
        let url: url::Url = "https://idp.example/oauth2/token?p=B2C_1_x&api_key=s3cret#f"
            .parse()
            .expect("url");
        assert_eq!(shown_url(&url), "https://idp.example/oauth2/token?…");
    }

    #[test]
    fn debug_hides_the_access_token() {
        let t = ok(r#"{"access_token":"s3cr3t-token"}"#);
        assert!(!format!("{t:?}").contains("s3cr3t"));
    }

    #[test]
    fn request_fields_follow_rfc7523() {
        let mut x = Exchange {
            token_url: URL.parse().expect("url"),
            grant_type: JWT_BEARER_GRANT.to_owned(),
            body: BodyEncoding::Form,
            params: [("scope".to_owned(), "read".to_owned())].into(),
            client_assertion: false,
            client_auth: crate::config::ClientAuth::Body,
            default_lifetime: TEN_MIN,
        };
        let f = request_fields(&x, "J");
        assert_eq!(
            f,
            [
                ("grant_type", JWT_BEARER_GRANT),
                ("assertion", "J"),
                ("scope", "read")
            ]
            .map(|(a, b)| (a.to_owned(), b.to_owned()))
        );
        x.client_assertion = true;
        x.grant_type = "client_credentials".to_owned();
        let f = request_fields(&x, "J");
        assert_eq!(
            f,
            [
                ("grant_type", "client_credentials"),
                ("client_assertion_type", CLIENT_ASSERTION_TYPE),
                ("client_assertion", "J"),
                ("scope", "read")
            ]
            .map(|(a, b)| (a.to_owned(), b.to_owned()))
        );
    }

    /// An unreachable token endpoint's error names it without its query, also where
    /// reqwest's own text would repeat the URL whole.
    #[tokio::test]
    async fn an_unreachable_endpoint_is_named_without_its_query() {
        // A port just freed: nothing listens there.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port");
        let x = Exchange {
            token_url: format!("http://{addr}/token?p=B2C_1&api_key=s3cret")
                .parse()
                .expect("url"),
            grant_type: JWT_BEARER_GRANT.to_owned(),
            body: BodyEncoding::Form,
            params: std::collections::BTreeMap::new(),
            client_assertion: false,
            client_auth: crate::config::ClientAuth::Body,
            default_lifetime: TEN_MIN,
        };
        let err = exchange(&reqwest::Client::new(), &x, "J", Duration::from_secs(5))
            .await
            .expect_err("nothing listens");
        let text = err.to_string();
        assert!(text.contains("cannot reach token endpoint"), "{text}");
        assert!(
            !text.contains("s3cret") && !text.contains("B2C_1"),
            "{text}"
        );
    }

    /// With `client_auth = "basic"` the client's id and secret go as HTTP Basic, each
    /// form-urlencoded first, and not in the body; the other params stay in the body.
    #[tokio::test]
    async fn basic_client_auth_sends_the_credentials_in_the_header_only() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accept");
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            // The head and the whole (short) form body.
            while !String::from_utf8_lossy(&request).contains("scope=read") {
                let n = stream.read(&mut buf).await.expect("read");
                assert!(n > 0, "closed early");
                request.extend_from_slice(&buf[..n]);
            }
            let body = r#"{"access_token":"a","expires_in":60}"#;
            let answer = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            stream.write_all(answer.as_bytes()).await.expect("write");
            String::from_utf8_lossy(&request).into_owned()
        });
        let x = Exchange {
            token_url: format!("http://{addr}/token").parse().expect("url"),
            grant_type: JWT_BEARER_GRANT.to_owned(),
            body: BodyEncoding::Form,
            params: [
                ("client_id", "app:1"),
                ("client_secret", "s3cr3t"),
                ("scope", "read"),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .into(),
            client_assertion: false,
            client_auth: crate::config::ClientAuth::Basic,
            default_lifetime: TEN_MIN,
        };
        let token = exchange(&reqwest::Client::new(), &x, "J", Duration::from_secs(5))
            .await
            .expect("exchanged");
        assert_eq!(token.authorization(), "Bearer a");
        let request = seen.await.expect("request");
        // base64("app%3A1:s3cr3t")
        let expected =
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "app%3A1:s3cr3t");
        assert!(
            request.contains(&format!("authorization: Basic {expected}")),
            "{request}"
        );
        assert!(!request.contains("client_secret"), "{request}");
        assert!(!request.contains("client_id"), "{request}");
        assert!(request.contains("assertion=J"), "{request}");
    }
}
