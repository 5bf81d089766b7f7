//! The `Authorization` value for a `jwt_bearer` connection: a fresh JWT per call, a reused
//! JWT (`reuse_for`), or an exchanged access token cached and shared by all calls.

use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::HeaderValue;
use tokio::sync::Mutex;

use super::exchange::{ExchangeError, exchange};
use super::signer::JwtError;
use crate::config::JwtBearer;
use crate::metrics::ExchangeCounters;

/// An exchanged token is refreshed this long before it expires, at most…
const REFRESH_MARGIN_MAX: Duration = Duration::from_secs(60);
/// …and at most this fraction of its lifetime (short-lived tokens stay useful).
const REFRESH_MARGIN_FRACTION: u32 = 10;

#[derive(Debug, Clone, thiserror::Error)]
pub enum BearerError {
    #[error("signing the JWT failed: {0}")]
    Signing(String),
    #[error(transparent)]
    Exchange(#[from] ExchangeError),
    #[error("the token is not a valid header value")]
    BadHeader,
}

impl From<JwtError> for BearerError {
    fn from(e: JwtError) -> Self {
        BearerError::Signing(e.to_string())
    }
}

/// The header to send, and where it came from.
#[derive(Debug, Clone)]
pub struct Bearer {
    pub header: HeaderValue,
    /// Served from the cache (not made for this call): worth retrying once on a 401.
    pub cached: bool,
    /// An access token from the token endpoint, not the JWT itself.
    pub exchanged: bool,
}

/// What `postern status` shows of a connection's token cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheState {
    Empty,
    ValidFor(Duration),
    Refreshing,
}

struct Cached {
    header: HeaderValue,
    refresh_at: Instant,
}

#[derive(Default)]
struct State {
    cached: Option<Cached>,
    /// The last failed attempt: callers that were already waiting share it instead of
    /// each hammering a failing endpoint in turn.
    failure: Option<(Instant, BearerError)>,
}

/// One per connection, shared by all its calls.
pub struct BearerSource {
    auth: Arc<JwtBearer>,
    state: Mutex<State>,
    exchanges: ExchangeCounters,
    /// A fresh-per-call JWT whose payload has no `{{uuid}}` renders the same bytes all
    /// second long: the last one, by the second it was signed in. `None` with a `{{uuid}}`.
    this_second: Option<std::sync::Mutex<Option<(u64, HeaderValue)>>>,
}

impl BearerSource {
    pub fn new(auth: Arc<JwtBearer>, exchanges: ExchangeCounters) -> Self {
        let this_second =
            (!auth.signer.differs_within_a_second()).then(|| std::sync::Mutex::new(None));
        Self {
            auth,
            state: Mutex::new(State::default()),
            exchanges,
            this_second,
        }
    }

    /// The header for the next call. Only one exchange (or reusable signature) runs at a
    /// time: concurrent callers wait for it and share its result.
    pub async fn get(
        &self,
        http: &reqwest::Client,
        timeout: Duration,
    ) -> Result<Bearer, BearerError> {
        if self.auth.exchange.is_none() && self.auth.reuse_for.is_none() {
            // Not `cached`: a token of this second refused would be refused again if re-signed.
            return Ok(Bearer {
                header: self.fresh(unix_now())?,
                cached: false,
                exchanged: false,
            });
        }
        let asked = Instant::now();
        let mut state = self.state.lock().await;
        if let Some(c) = &state.cached
            && Instant::now() < c.refresh_at
        {
            return Ok(Bearer {
                header: c.header.clone(),
                cached: true,
                exchanged: self.auth.exchange.is_some(),
            });
        }
        if let Some((at, err)) = &state.failure
            && *at >= asked
        {
            return Err(err.clone());
        }
        let started = Instant::now();
        let result = self.mint(http, timeout).await;
        if self.auth.exchange.is_some() {
            match &result {
                Ok(_) => self.exchanges.ok.inc(),
                Err(_) => self.exchanges.failed.inc(),
            };
        }
        match result {
            Ok((header, valid_for)) => {
                state.failure = None;
                state.cached = valid_for.map(|d| Cached {
                    header: header.clone(),
                    refresh_at: started + d,
                });
                Ok(Bearer {
                    header,
                    cached: false,
                    exchanged: self.auth.exchange.is_some(),
                })
            }
            Err(e) => {
                state.cached = None;
                state.failure = Some((Instant::now(), e.clone()));
                Err(e)
            }
        }
    }

    /// For `postern status`: how long the cached token stays in use, if any.
    pub fn cache_state(&self) -> CacheState {
        match self.state.try_lock() {
            Err(_) => CacheState::Refreshing,
            Ok(state) => match &state.cached {
                Some(c) if c.refresh_at > Instant::now() => {
                    CacheState::ValidFor(c.refresh_at - Instant::now())
                }
                _ => CacheState::Empty,
            },
        }
    }

    /// Drops the cached token if it is still `header` (the upstream refused it).
    pub async fn invalidate(&self, header: &HeaderValue) {
        let mut state = self.state.lock().await;
        if state.cached.as_ref().is_some_and(|c| c.header == header) {
            state.cached = None;
        }
    }

    /// The header of a JWT signed for `now`: signing it again in the same second would give
    /// the same token (or, for ECDSA and RSA-PSS, an equally valid one), so it is signed once.
    fn fresh(&self, now: u64) -> Result<HeaderValue, BearerError> {
        let Some(last) = &self.this_second else {
            return header(&format!("Bearer {}", self.sign(now)?));
        };
        if let Some((at, header)) = &*last.lock().unwrap_or_else(PoisonError::into_inner)
            && *at == now
        {
            return Ok(header.clone());
        }
        let fresh = header(&format!("Bearer {}", self.sign(now)?))?;
        *last.lock().unwrap_or_else(PoisonError::into_inner) = Some((now, fresh.clone()));
        Ok(fresh)
    }

    fn sign(&self, now: u64) -> Result<String, JwtError> {
        self.auth.signer.sign(now, &|name| std::env::var(name).ok())
    }

    /// A new header, and how long it may be reused (`None`: not at all).
    async fn mint(
        &self,
        http: &reqwest::Client,
        timeout: Duration,
    ) -> Result<(HeaderValue, Option<Duration>), BearerError> {
        let jwt = self.sign(unix_now())?;
        if let Some(x) = &self.auth.exchange {
            let token = exchange(http, x, &jwt, timeout).await?;
            let margin = (token.lifetime / REFRESH_MARGIN_FRACTION).min(REFRESH_MARGIN_MAX);
            let valid = token.lifetime.saturating_sub(margin);
            return Ok((
                header(&token.authorization())?,
                Some(valid).filter(|d| !d.is_zero()),
            ));
        }
        let reuse_for = self.auth.reuse_for.unwrap_or_default();
        let valid = exp_of(&jwt)
            .and_then(|exp| exp.checked_sub(unix_now()))
            .map(Duration::from_secs)
            .and_then(|left| left.checked_sub(reuse_for))
            .filter(|d| !d.is_zero());
        Ok((header(&format!("Bearer {jwt}"))?, valid))
    }
}

fn header(value: &str) -> Result<HeaderValue, BearerError> {
    let mut header = HeaderValue::from_str(value).map_err(|_| BearerError::BadHeader)?;
    header.set_sensitive(true);
    Ok(header)
}

/// The `exp` claim of a compact JWT we signed ourselves.
fn exp_of(jwt: &str) -> Option<u64> {
    let payload = jwt.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    claims.get("exp")?.as_u64()
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwt::key::test_keys::keys;
    use crate::jwt::{Algorithm, JwtSigner, KeyMaterial, PayloadTemplate};
    use std::collections::BTreeMap;

    fn source(exp_in: u64, reuse_for: Option<Duration>) -> BearerSource {
        source_with(
            Algorithm::HS256,
            KeyMaterial::Secret(vec![7; 32]),
            serde_json::json!({
                "iat": "{{now}}",
                "exp": format!("{{{{now + {exp_in}}}}}"),
                "jti": "{{uuid}}",
            }),
            reuse_for,
        )
    }

    fn source_with(
        algorithm: Algorithm,
        key: KeyMaterial,
        payload: serde_json::Value,
        reuse_for: Option<Duration>,
    ) -> BearerSource {
        let serde_json::Value::Object(payload) = payload else {
            panic!("object")
        };
        let signer = JwtSigner::new(
            algorithm,
            key,
            &BTreeMap::new(),
            PayloadTemplate::parse(&payload).expect("payload"),
        )
        .expect("signer");
        BearerSource::new(
            Arc::new(JwtBearer {
                signer,
                reuse_for,
                exchange: None,
            }),
            ExchangeCounters::default(),
        )
    }

    #[test]
    fn without_a_uuid_a_jwt_is_signed_once_per_second() {
        // ES256 signatures are randomized: the same header twice means it was signed once.
        let s = source_with(
            Algorithm::ES256,
            KeyMaterial::PrivateKeyPem(keys().ec256_pkcs8.clone()),
            serde_json::json!({"iat": "{{now}}", "exp": "{{now + 300}}"}),
            None,
        );
        let a = s.fresh(1_700_000_000).expect("signs");
        let b = s.fresh(1_700_000_000).expect("same second");
        let c = s.fresh(1_700_000_001).expect("next second");
        assert_eq!(a, b);
        assert_ne!(b, c);
        assert!(a.is_sensitive() && c.is_sensitive());
        let jwt = |h: &HeaderValue| {
            h.to_str()
                .expect("ascii")
                .trim_start_matches("Bearer ")
                .to_owned()
        };
        assert_eq!(exp_of(&jwt(&a)), Some(1_700_000_300));
        assert_eq!(exp_of(&jwt(&c)), Some(1_700_000_301));
        // What `this_second` holds is the second it was signed for, not the latest asked:
        // an earlier second (a clock stepped back) is signed for that second.
        let back = s.fresh(1_700_000_000).expect("signs");
        assert_eq!(exp_of(&jwt(&back)), Some(1_700_000_300));
    }

    #[tokio::test]
    async fn reuse_for_keeps_one_jwt_until_that_long_before_exp() {
        let http = reqwest::Client::new();
        let s = source(600, Some(Duration::from_secs(30)));
        let first = s.get(&http, Duration::from_secs(1)).await.expect("signs");
        let second = s.get(&http, Duration::from_secs(1)).await.expect("reuses");
        assert!(!first.cached && second.cached && !second.exchanged);
        assert_eq!(first.header, second.header);
        assert!(first.header.is_sensitive());
        // Dropping the token (as after a 401) makes the next call sign a new one.
        s.invalidate(&first.header).await;
        let third = s.get(&http, Duration::from_secs(1)).await.expect("signs");
        assert!(!third.cached);
        assert_ne!(third.header, first.header);
    }

    #[tokio::test]
    async fn a_jwt_too_close_to_exp_is_never_reused() {
        let http = reqwest::Client::new();
        let s = source(20, Some(Duration::from_secs(30)));
        let a = s.get(&http, Duration::from_secs(1)).await.expect("signs");
        let b = s.get(&http, Duration::from_secs(1)).await.expect("signs");
        assert!(!a.cached && !b.cached);
        assert_ne!(a.header, b.header);
    }

    #[tokio::test]
    async fn without_reuse_every_call_gets_a_fresh_jwt() {
        let http = reqwest::Client::new();
        let s = source(600, None);
        let a = s.get(&http, Duration::from_secs(1)).await.expect("signs");
        let b = s.get(&http, Duration::from_secs(1)).await.expect("signs");
        assert!(!a.cached && !b.cached);
        assert_ne!(a.header, b.header, "a fresh jti each time");
        let claims = exp_of(
            a.header
                .to_str()
                .expect("ascii")
                .trim_start_matches("Bearer "),
        );
        assert!(claims.is_some_and(|exp| exp >= unix_now() + 599));
    }
}
