//! The `Authorization` value for a `jwt_bearer` connection: a fresh JWT per call, a reused
//! JWT (`reuse_for`), or an exchanged access token cached and shared by all calls.

use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::HeaderValue;
use tokio::sync::Mutex;
use tracing::Instrument;

use super::exchange::{ExchangeError, MAX_LIFETIME, exchange, token_client};
use super::signer::JwtError;
use crate::call::client_tls::ClientError;
use crate::config::JwtBearer;
use crate::metrics::ExchangeCounters;

/// An exchanged token is refreshed this long before it expires, at most…
const REFRESH_MARGIN_MAX: Duration = Duration::from_secs(60);
/// …and at most this fraction of its lifetime (short-lived tokens stay useful).
const REFRESH_MARGIN_FRACTION: u32 = 10;
/// After a failed early refresh the still-valid token keeps serving calls, and the next
/// attempt waits this long; without a valid token the calls meanwhile get the failure. A
/// token endpoint that is down, or refuses at once (a rotated key, a skewed clock), sees
/// one request a second, not one per call.
const REFRESH_RETRY: Duration = Duration::from_secs(1);
/// After a token made for the refused call (or for its retry) was refused too, this long
/// goes by before a refusal drops the cached token again: such 401s are about the request
/// (a path the account may not read, an API that says 401 for 403), and each would
/// otherwise cost an exchange.
const REFUSALS_IGNORED_FOR: Duration = Duration::from_secs(10);
/// At most one line a minute per connection about tokens made for a call and refused.
const REFUSAL_SAID_EVERY: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, thiserror::Error)]
pub enum BearerError {
    #[error("signing the JWT failed: {0}")]
    Signing(String),
    #[error(transparent)]
    Exchange(#[from] ExchangeError),
    #[error("the token is not a valid header value")]
    BadHeader,
    /// A failure handed to the calls after it for [`REFRESH_RETRY`], or for as long as a
    /// throttling token endpoint asked.
    #[error(
        "{error} (the last try, {ago_ms} ms ago; the next is made {} s after it)",
        hold_secs(error)
    )]
    Held {
        error: Box<BearerError>,
        ago_ms: u128,
        /// Until the next try.
        left: Duration,
    },
}

impl BearerError {
    /// The failure itself, whether it is this call's or one kept from a call before.
    pub fn cause(&self) -> &BearerError {
        match self {
            BearerError::Held { error, .. } => error.cause(),
            other => other,
        }
    }

    /// How long callers may leave the connection alone: only for a token endpoint that
    /// throttles, the time left until the agent asks it again (a caller's `Retry-After`).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            BearerError::Exchange(e) => e.retry_after().map(|_| hold(self)),
            BearerError::Held { error, left, .. } => error.retry_after().map(|_| *left),
            _ => None,
        }
    }
}

/// How long a failure is kept for the calls after it, instead of trying again:
/// [`REFRESH_RETRY`], or what a throttling endpoint asked for when that is longer.
fn hold(e: &BearerError) -> Duration {
    match e.cause() {
        BearerError::Exchange(x) => x
            .retry_after()
            .map_or(REFRESH_RETRY, |wait| wait.max(REFRESH_RETRY)),
        _ => REFRESH_RETRY,
    }
}

/// [`hold`] in whole seconds, rounded up, for the message.
fn hold_secs(e: &BearerError) -> u64 {
    let hold = hold(e);
    hold.as_secs() + u64::from(hold.subsec_nanos() > 0)
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
    /// [`JwtBearer::signed_per_call`]: nothing is kept to be empty.
    PerCall,
    Empty,
    ValidFor(Duration),
    Refreshing,
}

struct Cached {
    header: HeaderValue,
    /// From here on the next call tries to replace it.
    refresh_at: Instant,
    /// From here on it is never sent.
    expires_at: Instant,
    /// The same on the wall clock: `Instant` stands still while the host sleeps or its VM
    /// is paused, and the token's expiry does not.
    expires_wall: SystemTime,
}

/// How long a new header may be reused, counted from when it was asked for.
#[derive(Debug, Clone, Copy)]
struct Reuse {
    refresh_after: Duration,
    expires_after: Duration,
}

impl Cached {
    /// `None` when the reuse would reach past what `Instant` can count.
    fn new(header: HeaderValue, started: Instant, reuse: Reuse) -> Option<Self> {
        let expires_after = reuse.expires_after.min(MAX_LIFETIME);
        Some(Self {
            header,
            refresh_at: started.checked_add(reuse.refresh_after.min(MAX_LIFETIME))?,
            expires_at: started.checked_add(expires_after)?,
            expires_wall: SystemTime::now()
                .checked_sub(started.elapsed())?
                .checked_add(expires_after)?,
        })
    }
}

impl State {
    /// The cached header, unless the wall clock says it has expired (then it is dropped).
    fn current(&mut self) -> Option<&mut Cached> {
        if self
            .cached
            .as_ref()
            .is_some_and(|c| SystemTime::now() >= c.expires_wall)
        {
            self.cached = None;
        }
        self.cached.as_mut()
    }
}

#[derive(Default)]
struct State {
    cached: Option<Cached>,
    /// The failure handed to the calls after it: those already waiting share it instead
    /// of each hammering a failing endpoint in turn, and those within its [`hold`] get it.
    /// Beside a valid token, only a throttling endpoint's (its wait outlasts the token).
    held: Option<(Instant, BearerError)>,
    /// The last failed attempt, for `postern status`: a refresh that failed while the
    /// token still serves too, so the admin hears of it before calls fail. Cleared by a token.
    last_failure: Option<(Instant, BearerError)>,
    /// The last header minted, for callers that were already waiting when it was: one the
    /// cache cannot keep (an `expires_in` of 0) still serves them all, not one each in turn.
    minted: Option<(Instant, HeaderValue)>,
    /// Until then a refusal keeps the cached token ([`BearerSource::refused_again`]).
    refusals_ignored_until: Option<Instant>,
    /// When a refused token was last said in the log.
    refusal_said: Option<Instant>,
}

/// One per connection, shared by all its calls.
pub struct BearerSource {
    shared: Arc<Shared>,
    /// Held by the one mint (an exchange, or a signature for reuse) at a time, in the task
    /// that runs it.
    minting: Arc<Mutex<()>>,
    /// A fresh-per-call JWT whose payload has no `{{uuid}}` renders the same bytes all
    /// second long: the last one, by the second it was signed in. `None` with a `{{uuid}}`.
    this_second: Option<std::sync::Mutex<Option<(u64, HeaderValue)>>>,
}

/// What a mint needs, shared with the task that runs it.
struct Shared {
    auth: Arc<JwtBearer>,
    /// Held only to read or write, never across an exchange. Shared with the connection's
    /// source before a reload that changed nothing of its tokens' recipe.
    state: Arc<std::sync::Mutex<State>>,
    exchanges: ExchangeCounters,
    /// The token endpoint's client, made with the source when it has an `exchange`: no
    /// other connection needs one.
    token_http: Option<reqwest::Client>,
}

impl BearerSource {
    pub fn new(auth: Arc<JwtBearer>, exchanges: ExchangeCounters) -> Result<Self, ClientError> {
        Self::succeeding(auth, exchanges, None)
    }

    /// The source of a reloaded connection. While everything its tokens are made of is
    /// unchanged (the whole auth table, the key as read now, the token endpoint's
    /// settings: [`JwtBearer::recipe`]) it goes on with the previous source's cached token
    /// or JWT, failure held and exchange under way, so a reload of many agents is no burst
    /// of token requests; anything changed, and it starts afresh.
    pub fn succeeding(
        auth: Arc<JwtBearer>,
        exchanges: ExchangeCounters,
        previous: Option<&BearerSource>,
    ) -> Result<Self, ClientError> {
        let this_second =
            (!auth.signer.differs_within_a_second()).then(|| std::sync::Mutex::new(None));
        let kept = previous.filter(|p| p.shared.auth.recipe == auth.recipe);
        Ok(Self {
            shared: Arc::new(Shared {
                state: kept.map(|p| p.shared.state.clone()).unwrap_or_default(),
                token_http: auth.exchange.as_ref().map(|_| token_client()).transpose()?,
                auth,
                exchanges,
            }),
            minting: kept.map(|p| p.minting.clone()).unwrap_or_default(),
            this_second,
        })
    }

    /// The header for the next call. Only one exchange (or reusable signature) runs at a
    /// time. While the cached token is still valid, only the call refreshing it waits for
    /// that: the others go on with the cached one, so a slow token endpoint holds up no
    /// call it does not have to. Without a valid token, callers wait and share the result.
    pub async fn get(&self, timeout: Duration) -> Result<Bearer, BearerError> {
        let shared = &self.shared;
        if shared.auth.signed_per_call() {
            // Not `cached`: a token of this second refused would be refused again if re-signed.
            return Ok(Bearer {
                header: self.fresh(unix_now()).await?,
                cached: false,
                exchanged: false,
            });
        }
        let asked = Instant::now();
        let still_valid = match shared.lock_state().current() {
            Some(c) if asked < c.refresh_at => return Ok(shared.bearer(c.header.clone(), true)),
            Some(c) if asked < c.expires_at => Some(c.header.clone()),
            _ => None,
        };
        let minting = match still_valid {
            Some(header) => match self.minting.clone().try_lock_owned() {
                Ok(guard) => guard,
                Err(_) => return Ok(shared.bearer(header, true)),
            },
            None => self.minting.clone().lock_owned().await,
        };
        // Another call may have minted, or failed, while this one waited.
        {
            let mut state = shared.lock_state();
            if let Some(c) = state.current()
                && Instant::now() < c.refresh_at
            {
                return Ok(shared.bearer(c.header.clone(), true));
            }
            if let Some((at, err)) = &state.held {
                if *at >= asked {
                    return Err(err.clone());
                }
                let ago = at.elapsed();
                if let Some(left) = hold(err).checked_sub(ago).filter(|l| !l.is_zero()) {
                    return Err(BearerError::Held {
                        error: Box::new(err.clone()),
                        ago_ms: ago.as_millis(),
                        left,
                    });
                }
            }
            if let Some((at, header)) = &state.minted
                && *at >= asked
            {
                return Ok(shared.bearer(header.clone(), true));
            }
        }
        // In a task of its own, run to its end: calls queue behind this one for its result,
        // and an exchange cancelled with a call given up on (its caller gone) would leave
        // them to start over — against a slow endpoint, for ever. The connection's timeout
        // bounds it.
        let shared = shared.clone();
        // In the call's span, so that its lines (a failed refresh) name the connection:
        // several often share one token endpoint.
        let mint = tokio::spawn(
            async move {
                let _minting = minting;
                shared.mint_and_keep(timeout).await
            }
            .in_current_span(),
        );
        mint.await
            .unwrap_or_else(|e| Err(BearerError::Signing(format!("the token task failed: {e}"))))
    }

    #[cfg(test)]
    fn lock_state(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared.lock_state()
    }

    /// For `postern status`: how long the cached token stays valid, if there is one. Its
    /// end, not its refresh point: past that it is still sent while a refresh fails (an
    /// identity provider down), and "none" then would say calls fail while they are served.
    pub fn cache_state(&self) -> CacheState {
        if self.shared.auth.signed_per_call() {
            return CacheState::PerCall;
        }
        if self.minting.try_lock().is_err() {
            return CacheState::Refreshing;
        }
        let now = Instant::now();
        match self.shared.lock_state().current() {
            Some(c) if c.expires_at > now => CacheState::ValidFor(c.expires_at - now),
            _ => CacheState::Empty,
        }
    }

    /// For `postern status`: the last failed try to sign or exchange a token, and when;
    /// kept until a token is had again.
    pub fn last_failure(&self) -> Option<(Instant, BearerError)> {
        self.shared.lock_state().last_failure.clone()
    }

    /// Drops the cached token if it is still `header` (the upstream refused it), unless a
    /// fresh one was refused too a moment ago.
    pub fn invalidate(&self, header: &HeaderValue) {
        let mut state = self.shared.lock_state();
        if state
            .refusals_ignored_until
            .is_some_and(|until| Instant::now() < until)
        {
            return;
        }
        if state.cached.as_ref().is_some_and(|c| c.header == header) {
            state.cached = None;
        }
    }

    /// A token made for a refused call or its retry was refused too (or the retry would
    /// have sent the refused token again): for a while, refusals are taken as the
    /// request's, not the token's ([`REFUSALS_IGNORED_FOR`]). True when such a refusal is
    /// due a line in the log: none was said in the last [`REFUSAL_SAID_EVERY`].
    pub fn refused_again(&self) -> bool {
        let now = Instant::now();
        let mut state = self.shared.lock_state();
        state.refusals_ignored_until = now.checked_add(REFUSALS_IGNORED_FOR);
        let due = state
            .refusal_said
            .is_none_or(|at| now.saturating_duration_since(at) >= REFUSAL_SAID_EVERY);
        if due {
            state.refusal_said = Some(now);
        }
        due
    }

    /// The header of a JWT signed for `now`: signing it again in the same second would give
    /// the same token (or, for ECDSA and RSA-PSS, an equally valid one), so it is signed once.
    async fn fresh(&self, now: u64) -> Result<HeaderValue, BearerError> {
        let Some(last) = &self.this_second else {
            return header(&format!("Bearer {}", self.shared.sign(now).await?));
        };
        if let Some((at, header)) = &*last.lock().unwrap_or_else(PoisonError::into_inner)
            && *at == now
        {
            return Ok(header.clone());
        }
        let fresh = header(&format!("Bearer {}", self.shared.sign(now).await?))?;
        *last.lock().unwrap_or_else(PoisonError::into_inner) = Some((now, fresh.clone()));
        Ok(fresh)
    }
}

impl Shared {
    fn bearer(&self, header: HeaderValue, cached: bool) -> Bearer {
        Bearer {
            header,
            cached,
            exchanged: self.auth.exchange.is_some(),
        }
    }

    fn lock_state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Mints a header and keeps it (or the failure) for the calls after, counted.
    async fn mint_and_keep(&self, timeout: Duration) -> Result<Bearer, BearerError> {
        let started = Instant::now();
        let result = self.mint(timeout).await;
        let mut state = self.lock_state();
        if self.auth.exchange.is_some() {
            match &result {
                Ok(_) => self.exchanges.ok.inc(),
                Err(_) => self.exchanges.failed.inc(),
            };
        }
        match result {
            Ok((header, reuse)) => {
                (state.held, state.last_failure) = (None, None);
                state.minted = Some((Instant::now(), header.clone()));
                state.cached = reuse.and_then(|r| Cached::new(header.clone(), started, r));
                Ok(self.bearer(header, false))
            }
            Err(e) => {
                let now = Instant::now();
                state.last_failure = Some((now, e.clone()));
                if let Some(c) = state.current()
                    && now < c.expires_at
                {
                    // A refresh runs ahead of expiry so that a short outage of the token
                    // endpoint costs nothing: the old token still works.
                    c.refresh_at = now
                        .checked_add(hold(&e))
                        .map_or(c.expires_at, |t| t.min(c.expires_at));
                    tracing::warn!(error = %e, left = ?(c.expires_at - now), "token refresh failed; the current token stays in use until it expires");
                    let bearer = self.bearer(c.header.clone(), true);
                    // A throttling endpoint's wait outlasts the token too: kept, so the
                    // calls after its end are held rather than sent to the endpoint again.
                    if hold(&e) > REFRESH_RETRY {
                        state.held = Some((now, e));
                    }
                    return Ok(bearer);
                }
                state.cached = None;
                state.held = Some((now, e.clone()));
                Err(e)
            }
        }
    }

    /// An RSA signature goes to tokio's blocking threads, so the tunnel's I/O and the other
    /// calls never wait behind it on the async workers; one per core at a time, so a burst
    /// of calls queues for a turn instead of growing the blocking pool.
    async fn sign(&self, now: u64) -> Result<String, JwtError> {
        let env = |name: &str| std::env::var(name);
        let algorithm = self.auth.signer.algorithm();
        if !algorithm.is_rsa() {
            return self.auth.signer.sign(now, &env);
        }
        // Never closed: a permit always comes. It goes with the signature, which runs to
        // its end even if this call is given up on.
        let turn = rsa_turns().acquire().await.ok();
        let auth = self.auth.clone();
        tokio::task::spawn_blocking(move || {
            let _turn = turn;
            auth.signer.sign(now, &env)
        })
        .await
        .unwrap_or(Err(JwtError::Signing { algorithm }))
    }

    /// A new header, and how long it may be reused (`None`: not at all).
    async fn mint(&self, timeout: Duration) -> Result<(HeaderValue, Option<Reuse>), BearerError> {
        let jwt = self.sign(unix_now()).await?;
        if let Some(x) = &self.auth.exchange {
            // Made with the source whenever it has an exchange; never sent without one.
            let Some(http) = &self.token_http else {
                return Err(BearerError::Signing(
                    "no client for the token endpoint".to_owned(),
                ));
            };
            let token = exchange(http, x, &jwt, timeout).await?;
            let margin = (token.lifetime / REFRESH_MARGIN_FRACTION).min(REFRESH_MARGIN_MAX);
            let reuse = Reuse {
                refresh_after: token.lifetime.saturating_sub(margin),
                expires_after: token.lifetime,
            };
            return Ok((
                header(&token.authorization())?,
                Some(reuse).filter(|r| !r.refresh_after.is_zero()),
            ));
        }
        let reuse_for = self.auth.reuse_for.unwrap_or_default();
        // To the exact time, not whole seconds: `exp − unix_now()` is up to a second more
        // than what is left, and the reuse would run that much into `reuse_for`'s margin.
        let reuse = exp_of(&jwt)
            .and_then(|exp| {
                let exp = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(exp);
                exp.duration_since(std::time::SystemTime::now()).ok()
            })
            .and_then(|left| {
                Some(Reuse {
                    refresh_after: left.checked_sub(reuse_for)?,
                    expires_after: left,
                })
            })
            .filter(|r| !r.refresh_after.is_zero());
        Ok((header(&format!("Bearer {jwt}"))?, reuse))
    }
}

/// Turns at RSA signing across the agent's connections, one per core.
fn rsa_turns() -> &'static tokio::sync::Semaphore {
    static TURNS: std::sync::OnceLock<tokio::sync::Semaphore> = std::sync::OnceLock::new();
    TURNS.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        tokio::sync::Semaphore::new(cores)
    })
}

fn header(value: &str) -> Result<HeaderValue, BearerError> {
    let mut header = HeaderValue::from_str(value).map_err(|_| BearerError::BadHeader)?;
    header.set_sensitive(true);
    Ok(header)
}

/// The `exp` claim of a compact JWT we signed ourselves, in whole seconds (a NumericDate
/// may have a fraction: `1.9e9` is as valid as `1900000000`).
fn exp_of(jwt: &str) -> Option<u64> {
    let payload = jwt.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let exp = claims.get("exp")?;
    exp.as_u64().or_else(|| {
        let seconds = exp.as_f64().filter(|s| s.is_finite() && *s >= 0.0)?;
        Some(seconds as u64)
    })
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
    use crate::jwt::recipe::Recipe;
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
        let recipe = Recipe::of(algorithm, &key, &BTreeMap::new(), &payload, reuse_for, None);
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
                recipe,
            }),
            ExchangeCounters::default(),
        )
        .expect("a source")
    }

    #[tokio::test]
    async fn without_a_uuid_a_jwt_is_signed_once_per_second() {
        // ES256 signatures are randomized: the same header twice means it was signed once.
        let s = source_with(
            Algorithm::ES256,
            KeyMaterial::PrivateKeyPem(keys().ec256_pkcs8.clone()),
            serde_json::json!({"iat": "{{now}}", "exp": "{{now + 300}}"}),
            None,
        );
        let a = s.fresh(1_700_000_000).await.expect("signs");
        let b = s.fresh(1_700_000_000).await.expect("same second");
        let c = s.fresh(1_700_000_001).await.expect("next second");
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
        let back = s.fresh(1_700_000_000).await.expect("signs");
        assert_eq!(exp_of(&jwt(&back)), Some(1_700_000_300));
    }

    /// A token endpoint on 127.0.0.1:0 that gives every request the answer of the moment.
    struct Endpoint {
        url: url::Url,
        answer: Arc<std::sync::Mutex<(u16, &'static str)>>,
        requests: Arc<std::sync::atomic::AtomicUsize>,
        /// How long it thinks before each answer.
        delay: Arc<std::sync::Mutex<Duration>>,
        /// Header lines added to each answer, each ending in CRLF.
        extra: Arc<std::sync::Mutex<&'static str>>,
    }

    impl Endpoint {
        async fn start(status: u16, body: &'static str) -> Self {
            use std::sync::atomic::Ordering;
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let url = format!("http://{}/token", listener.local_addr().expect("addr"))
                .parse()
                .expect("url");
            let answer = Arc::new(std::sync::Mutex::new((status, body)));
            let requests = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let delay = Arc::new(std::sync::Mutex::new(Duration::ZERO));
            let extra = Arc::new(std::sync::Mutex::new(""));
            let (now, count, thinking) = (answer.clone(), requests.clone(), delay.clone());
            let lines = extra.clone();
            tokio::spawn(async move {
                while let Ok((mut stream, _)) = listener.accept().await {
                    count.fetch_add(1, Ordering::SeqCst);
                    let (status, body) = *now.lock().expect("answer");
                    let think = *thinking.lock().expect("delay");
                    let extra = *lines.lock().expect("extra");
                    tokio::spawn(async move {
                        tokio::time::sleep(think).await;
                        // The whole request (its head and a small body) before the answer,
                        // so closing never resets a connection with unread bytes.
                        let mut request = Vec::new();
                        let mut buf = [0u8; 4096];
                        for _ in 0..64 {
                            let text = String::from_utf8_lossy(&request);
                            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                                let length = head
                                    .lines()
                                    .find_map(|l| {
                                        l.to_ascii_lowercase()
                                            .strip_prefix("content-length:")
                                            .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                                    })
                                    .unwrap_or(0);
                                if body.len() >= length {
                                    break;
                                }
                            }
                            match stream.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => request.extend_from_slice(&buf[..n]),
                            }
                        }
                        let answer = format!(
                            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n{extra}content-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        );
                        let _ = stream.write_all(answer.as_bytes()).await;
                        let _ = stream.shutdown().await;
                    });
                }
            });
            Self {
                url,
                answer,
                requests,
                delay,
                extra,
            }
        }

        fn headers(&self, lines: &'static str) {
            *self.extra.lock().expect("extra") = lines;
        }

        fn think(&self, delay: Duration) {
            *self.delay.lock().expect("delay") = delay;
        }

        fn answer(&self, status: u16, body: &'static str) {
            *self.answer.lock().expect("answer") = (status, body);
        }

        fn requests(&self) -> usize {
            self.requests.load(std::sync::atomic::Ordering::SeqCst)
        }
    }

    fn exchanging_source(token_url: &url::Url) -> BearerSource {
        BearerSource::new(exchanging_auth(token_url, 7), ExchangeCounters::default())
            .expect("a source")
    }

    /// An HS256 exchange connection's auth, with a secret of 32 `key_byte`s.
    fn exchanging_auth(token_url: &url::Url, key_byte: u8) -> Arc<JwtBearer> {
        let key = || KeyMaterial::Secret(vec![key_byte; 32]);
        let payload = serde_json::Map::new();
        let exchange = crate::config::Exchange {
            token_url: token_url.clone(),
            grant_type: crate::config::JWT_BEARER_GRANT.to_owned(),
            body: crate::config::BodyEncoding::Form,
            params: BTreeMap::new(),
            client_assertion: false,
            client_auth: crate::config::ClientAuth::Body,
            default_lifetime: Duration::from_secs(600),
        };
        let recipe = Recipe::of(
            Algorithm::HS256,
            &key(),
            &BTreeMap::new(),
            &payload,
            None,
            Some(&exchange),
        );
        let signer = JwtSigner::new(
            Algorithm::HS256,
            key(),
            &BTreeMap::new(),
            PayloadTemplate::parse(&payload).expect("payload"),
        )
        .expect("signer");
        Arc::new(JwtBearer {
            signer,
            reuse_for: None,
            exchange: Some(exchange),
            recipe,
        })
    }

    const WAIT: Duration = Duration::from_secs(5);

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn calls_waiting_together_share_a_token_the_cache_cannot_keep() {
        let endpoint = Endpoint::start(200, r#"{"access_token":"now","expires_in":0}"#).await;
        let s = Arc::new(exchanging_source(&endpoint.url));
        // One call holds the minting lock while the others queue behind it.
        let minting = s.minting.lock().await;
        let calls: Vec<_> = (0..20)
            .map(|_| {
                let s = s.clone();
                tokio::spawn(async move { s.get(WAIT).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(200)).await;
        drop(minting);
        for call in calls {
            let b = call.await.expect("joins").expect("a token");
            assert_eq!(b.header, "Bearer now");
        }
        assert_eq!(
            endpoint.requests(),
            1,
            "one exchange for the calls waiting together"
        );
        // Not kept: a call after them exchanges again.
        s.get(WAIT).await.expect("a token");
        assert_eq!(endpoint.requests(), 2);
    }

    /// A caller that gives up during an exchange does not cancel it: the calls after get
    /// its token instead of starting over (against an endpoint slower than its callers'
    /// patience, for ever).
    #[tokio::test]
    async fn an_exchange_outlives_the_call_that_started_it() {
        let endpoint = Endpoint::start(200, r#"{"access_token":"slow","expires_in":600}"#).await;
        endpoint.think(Duration::from_millis(500));
        let s = exchanging_source(&endpoint.url);
        let gave_up = tokio::time::timeout(Duration::from_millis(100), s.get(WAIT)).await;
        assert!(gave_up.is_err(), "the first caller gives up");
        let b = s.get(WAIT).await.expect("the same exchange's token");
        assert_eq!(b.header, "Bearer slow");
        assert_eq!(endpoint.requests(), 1, "one exchange, not one per caller");
        assert_eq!(s.shared.exchanges.ok.get(), 1);
    }

    /// After a suspend (or a paused VM) the monotonic clock says the token has time left;
    /// the wall clock says it expired, and it is not sent.
    #[tokio::test]
    async fn a_token_expired_while_the_host_slept_is_not_sent() {
        let endpoint = Endpoint::start(200, r#"{"access_token":"t","expires_in":600}"#).await;
        let s = exchanging_source(&endpoint.url);
        s.get(WAIT).await.expect("exchanges");
        assert!(s.get(WAIT).await.expect("cached").cached);
        assert_eq!(endpoint.requests(), 1);
        if let Some(c) = &mut s.lock_state().cached {
            c.expires_wall = SystemTime::now() - Duration::from_secs(1);
        }
        let b = s.get(WAIT).await.expect("exchanges again");
        assert!(!b.cached);
        assert_eq!(endpoint.requests(), 2);
    }

    #[tokio::test]
    async fn a_failed_early_refresh_keeps_the_still_valid_token() {
        let endpoint = Endpoint::start(200, r#"{"access_token":"first","expires_in":600}"#).await;
        let s = exchanging_source(&endpoint.url);
        let first = s.get(WAIT).await.expect("exchanges");
        assert_eq!(first.header, "Bearer first");
        // Into the refresh window, and the endpoint goes down for a while.
        if let Some(c) = &mut s.lock_state().cached {
            c.refresh_at = Instant::now();
        }
        endpoint.answer(503, "down");
        for _ in 0..20 {
            let b = s.get(WAIT).await.expect("the old token still serves");
            assert_eq!(b.header, "Bearer first");
            assert!(b.cached && b.exchanged);
        }
        assert_eq!(
            endpoint.requests(),
            2,
            "one failed refresh, not one per call"
        );
        assert_eq!(s.shared.exchanges.failed.get(), 1);
        // `postern status` shows the token in use, until its end: not "none" while it serves.
        let left = match s.cache_state() {
            CacheState::ValidFor(left) => left,
            other => panic!("a token in use shown as {other:?}"),
        };
        assert!(
            left > Duration::from_secs(590) && left <= Duration::from_secs(600),
            "{left:?}"
        );
        tokio::time::sleep(REFRESH_RETRY + Duration::from_millis(100)).await;
        let b = s.get(WAIT).await.expect("still the old token");
        assert_eq!(b.header, "Bearer first");
        assert_eq!(
            endpoint.requests(),
            3,
            "tried again after {REFRESH_RETRY:?}"
        );
        // Past its expiry it is never sent, whatever the endpoint says.
        if let Some(c) = &mut s.lock_state().cached {
            (c.refresh_at, c.expires_at) = (Instant::now(), Instant::now());
        }
        let err = s.get(WAIT).await.expect_err("no valid token left");
        assert!(err.to_string().contains("HTTP 503"), "{err}");
        assert_eq!(endpoint.requests(), 4);
        endpoint.answer(200, r#"{"access_token":"second","expires_in":600}"#);
        tokio::time::sleep(REFRESH_RETRY).await;
        let b = s.get(WAIT).await.expect("recovers");
        assert_eq!(b.header, "Bearer second");
        assert!(!b.cached);
    }

    /// A refresh that fails while the token still serves is reported at once, not only
    /// once the token is gone and calls fail; the refresh that succeeds clears it.
    #[tokio::test]
    async fn a_failed_refresh_is_reported_while_the_token_serves() {
        let endpoint = Endpoint::start(200, r#"{"access_token":"first","expires_in":600}"#).await;
        let s = exchanging_source(&endpoint.url);
        s.get(WAIT).await.expect("exchanges");
        assert!(s.last_failure().is_none());
        if let Some(c) = &mut s.lock_state().cached {
            c.refresh_at = Instant::now();
        }
        endpoint.answer(400, r#"{"error":"invalid_client"}"#);
        let b = s.get(WAIT).await.expect("the old token still serves");
        assert_eq!(b.header, "Bearer first");
        let (_, err) = s.last_failure().expect("reported while the token serves");
        assert!(err.to_string().contains("invalid_client"), "{err}");
        assert!(matches!(s.cache_state(), CacheState::ValidFor(_)));
        endpoint.answer(200, r#"{"access_token":"second","expires_in":600}"#);
        tokio::time::sleep(REFRESH_RETRY).await;
        let b = s.get(WAIT).await.expect("refreshed");
        assert_eq!(b.header, "Bearer second");
        assert!(s.last_failure().is_none(), "cleared by the new token");
    }

    #[tokio::test]
    async fn an_absurd_expires_in_gives_a_token_not_a_panic() {
        for body in [
            r#"{"access_token":"a","expires_in":1e300}"#,
            r#"{"access_token":"a","expires_in":"10000000000000000000"}"#,
        ] {
            let endpoint = Endpoint::start(200, body).await;
            let s = exchanging_source(&endpoint.url);
            let b = s.get(WAIT).await.expect(body);
            assert_eq!(b.header, "Bearer a");
            let again = s.get(WAIT).await.expect("cached");
            assert!(again.cached, "{body}");
            assert!(matches!(s.cache_state(), CacheState::ValidFor(d) if d <= MAX_LIFETIME));
        }
    }

    #[test]
    fn reuse_beyond_what_instant_counts_is_clamped() {
        let now = Instant::now();
        let c = Cached::new(
            HeaderValue::from_static("Bearer a"),
            now,
            Reuse {
                refresh_after: Duration::MAX,
                expires_after: Duration::MAX,
            },
        )
        .expect("a day is countable");
        assert_eq!(c.expires_at - now, MAX_LIFETIME);
    }

    #[tokio::test]
    async fn a_token_type_no_header_can_carry_is_a_token_exchange_failure() {
        let endpoint =
            Endpoint::start(200, r#"{"access_token":"a","token_type":"Bear\u0001er"}"#).await;
        let s = exchanging_source(&endpoint.url);
        let err = s.get(WAIT).await.expect_err("no header");
        assert!(matches!(err, BearerError::Exchange(_)), "{err:?}");
    }

    #[tokio::test]
    async fn reuse_for_keeps_one_jwt_until_that_long_before_exp() {
        let s = source(600, Some(Duration::from_secs(30)));
        let first = s.get(Duration::from_secs(1)).await.expect("signs");
        let second = s.get(Duration::from_secs(1)).await.expect("reuses");
        assert!(!first.cached && second.cached && !second.exchanged);
        assert_eq!(first.header, second.header);
        assert!(first.header.is_sensitive());
        // Dropping the token (as after a 401) makes the next call sign a new one.
        s.invalidate(&first.header);
        let third = s.get(Duration::from_secs(1)).await.expect("signs");
        assert!(!third.cached);
        assert_ne!(third.header, first.header);
    }

    #[tokio::test]
    async fn after_a_fresh_token_was_refused_too_refusals_keep_the_token_a_while() {
        let s = source(600, Some(Duration::from_secs(30)));
        let first = s.get(Duration::from_secs(1)).await.expect("signs");
        s.invalidate(&first.header);
        let fresh = s.get(Duration::from_secs(1)).await.expect("signs");
        assert_ne!(fresh.header, first.header);
        s.refused_again();
        s.invalidate(&fresh.header);
        let kept = s.get(Duration::from_secs(1)).await.expect("cached");
        assert!(kept.cached);
        assert_eq!(
            kept.header, fresh.header,
            "no new token for every refused call"
        );
        // Once the pause is over, a refusal drops the token again.
        s.lock_state().refusals_ignored_until = Some(Instant::now());
        s.invalidate(&fresh.header);
        let renewed = s.get(Duration::from_secs(1)).await.expect("signs");
        assert_ne!(renewed.header, fresh.header);
    }

    /// Without a valid token, a token endpoint that refuses at once sees one request a
    /// second, not one per call; the calls meanwhile get its error, saying so.
    #[tokio::test]
    async fn a_failed_exchange_is_held_for_the_calls_after_it() {
        let endpoint = Endpoint::start(400, r#"{"error":"invalid_grant"}"#).await;
        let s = exchanging_source(&endpoint.url);
        let err = s.get(WAIT).await.expect_err("refused");
        assert!(matches!(err, BearerError::Exchange(_)), "{err:?}");
        for _ in 0..50 {
            let err = s.get(WAIT).await.expect_err("held");
            assert!(matches!(err.cause(), BearerError::Exchange(_)), "{err:?}");
            let text = err.to_string();
            assert!(
                text.contains("invalid_grant") && text.contains("the last try"),
                "{text}"
            );
        }
        assert_eq!(endpoint.requests(), 1, "one request for the held second");
        tokio::time::sleep(REFRESH_RETRY).await;
        s.get(WAIT).await.expect_err("refused again");
        assert_eq!(endpoint.requests(), 2);
        endpoint.answer(200, r#"{"access_token":"ok","expires_in":600}"#);
        tokio::time::sleep(REFRESH_RETRY).await;
        s.get(WAIT).await.expect("recovers");
        assert_eq!(endpoint.requests(), 3);
    }

    /// A token endpoint that throttles is left alone for as long as its `Retry-After`
    /// asks (not asked again every second), and the calls meanwhile are told how long.
    #[tokio::test]
    async fn a_throttled_exchange_is_held_for_its_retry_after() {
        let endpoint = Endpoint::start(429, r#"{"error":"slow_down"}"#).await;
        endpoint.headers("retry-after: 2\r\n");
        let s = exchanging_source(&endpoint.url);
        let err = s.get(WAIT).await.expect_err("throttled");
        assert!(
            err.to_string().contains("failed: throttled (HTTP 429)"),
            "{err}"
        );
        assert_eq!(err.retry_after(), Some(Duration::from_secs(2)));
        tokio::time::sleep(REFRESH_RETRY + Duration::from_millis(200)).await;
        let err = s.get(WAIT).await.expect_err("held");
        assert!(
            err.to_string().contains("the next is made 2 s after it"),
            "{err}"
        );
        let left = err.retry_after().expect("a Retry-After for the caller");
        assert!(
            left > Duration::ZERO && left < Duration::from_millis(900),
            "{left:?}"
        );
        assert_eq!(endpoint.requests(), 1, "asked again before its Retry-After");
        tokio::time::sleep(left + Duration::from_millis(50)).await;
        endpoint.answer(200, r#"{"access_token":"ok","expires_in":600}"#);
        s.get(WAIT).await.expect("asked again, after 2 s");
        assert_eq!(endpoint.requests(), 2);
    }

    /// A refresh the endpoint throttles while the token still serves holds past that
    /// token's end too: the call after it is told to wait, not sent to the endpoint again.
    #[tokio::test]
    async fn a_throttled_refresh_holds_after_the_token_expires() {
        let endpoint = Endpoint::start(200, r#"{"access_token":"ok","expires_in":2}"#).await;
        let s = exchanging_source(&endpoint.url);
        s.get(WAIT).await.expect("a token");
        endpoint.answer(429, r#"{"error":"slow_down"}"#);
        endpoint.headers("retry-after: 30\r\n");
        // Past its refresh point (90% of 2 s), before its end: still served, refresh refused.
        tokio::time::sleep(Duration::from_millis(1850)).await;
        s.get(WAIT).await.expect("the token still serves");
        assert_eq!(endpoint.requests(), 2, "the refresh was asked for");
        assert!(
            s.last_failure().is_some(),
            "status says the refresh failed, the token serving"
        );
        tokio::time::sleep(Duration::from_millis(400)).await;
        let err = s.get(WAIT).await.expect_err("held, the token gone");
        let left = err.retry_after().expect("a Retry-After for the caller");
        assert!(left > Duration::from_secs(27), "{left:?}");
        assert_eq!(endpoint.requests(), 2, "asked again before its Retry-After");
        assert!(s.last_failure().is_some(), "status says why");
    }

    /// A reload that changed nothing a token is made of keeps the cached token; a changed
    /// key (or anything else of the recipe) exchanges afresh.
    #[tokio::test]
    async fn a_reload_keeps_the_token_only_while_its_recipe_is_the_same() {
        let endpoint = Endpoint::start(200, r#"{"access_token":"t1","expires_in":600}"#).await;
        let first = BearerSource::new(
            exchanging_auth(&endpoint.url, 7),
            ExchangeCounters::default(),
        )
        .expect("a source");
        first.get(WAIT).await.expect("exchanges");
        let same = BearerSource::succeeding(
            exchanging_auth(&endpoint.url, 7),
            ExchangeCounters::default(),
            Some(&first),
        )
        .expect("a source");
        let b = same.get(WAIT).await.expect("kept");
        assert!(b.cached && b.header == "Bearer t1", "{b:?}");
        assert_eq!(endpoint.requests(), 1, "a reload with no change exchanged");
        endpoint.answer(200, r#"{"access_token":"t2","expires_in":600}"#);
        let rekeyed = BearerSource::succeeding(
            exchanging_auth(&endpoint.url, 8),
            ExchangeCounters::default(),
            Some(&same),
        )
        .expect("a source");
        let b = rekeyed.get(WAIT).await.expect("exchanges afresh");
        assert!(!b.cached && b.header == "Bearer t2", "{b:?}");
        assert_eq!(endpoint.requests(), 2);
    }

    /// An RSA signature waits for a turn at the blocking threads (all taken here); an
    /// HMAC one is made at once.
    #[tokio::test]
    async fn rsa_signatures_take_turns_off_the_async_workers() {
        let rsa = Arc::new(source_with(
            Algorithm::RS256,
            KeyMaterial::PrivateKeyPem(keys().rsa_pkcs8.clone()),
            serde_json::json!({ "jti": "{{uuid}}" }),
            None,
        ));
        let cores = u32::try_from(rsa_turns().available_permits()).expect("cores");
        let all_turns = rsa_turns().acquire_many(cores).await.expect("turns");
        let waiting = tokio::spawn({
            let rsa = rsa.clone();
            async move { rsa.get(WAIT).await }
        });
        let hmac = source(600, None);
        hmac.get(WAIT).await.expect("at once");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!waiting.is_finished(), "signed without a turn");
        drop(all_turns);
        let signed = waiting.await.expect("joins").expect("signs");
        assert!(
            signed
                .header
                .to_str()
                .expect("ascii")
                .starts_with("Bearer ey")
        );
    }

    /// Reused until `reuse_for` before `exp` to the exact time: counted in whole seconds,
    /// the reuse ran up to a second into the margin.
    #[tokio::test]
    async fn reuse_stops_reuse_for_before_exp_to_the_exact_time() {
        // Late in a second, where whole seconds count most of a second too many.
        let into_second = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .subsec_millis();
        if into_second < 650 {
            tokio::time::sleep(Duration::from_millis(u64::from(650 - into_second))).await;
        }
        let s = source(2, Some(Duration::from_secs(1)));
        let first = s.get(Duration::from_secs(1)).await.expect("signs");
        tokio::time::sleep(Duration::from_millis(600)).await;
        let second = s.get(Duration::from_secs(1)).await.expect("signs");
        assert!(!second.cached, "reused with less than reuse_for left");
        assert_ne!(first.header, second.header);
    }

    #[tokio::test]
    async fn an_exp_written_with_a_fraction_is_reused_too() {
        let exp = (unix_now() + 600) as f64 + 0.5;
        let s = source_with(
            Algorithm::HS256,
            KeyMaterial::Secret(vec![7; 32]),
            serde_json::json!({ "exp": exp, "jti": "{{uuid}}" }),
            Some(Duration::from_secs(30)),
        );
        let first = s.get(Duration::from_secs(1)).await.expect("signs");
        let second = s.get(Duration::from_secs(1)).await.expect("reuses");
        assert!(second.cached);
        assert_eq!(first.header, second.header);
    }

    #[tokio::test]
    async fn a_jwt_too_close_to_exp_is_never_reused() {
        let s = source(20, Some(Duration::from_secs(30)));
        let a = s.get(Duration::from_secs(1)).await.expect("signs");
        let b = s.get(Duration::from_secs(1)).await.expect("signs");
        assert!(!a.cached && !b.cached);
        assert_ne!(a.header, b.header);
    }

    #[tokio::test]
    async fn without_reuse_every_call_gets_a_fresh_jwt() {
        let s = source(600, None);
        let a = s.get(Duration::from_secs(1)).await.expect("signs");
        let b = s.get(Duration::from_secs(1)).await.expect("signs");
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
