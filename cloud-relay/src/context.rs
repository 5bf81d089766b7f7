//! What every part of a running relay shares: the store and its cached lookups, the live
//! sessions, the login throttle, the config, and the task tracker that shutdown drains.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use postern_protocol::control::EndReason;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth_throttle::AuthThrottle;
use crate::config::RelayConfig;
use crate::keyed_slots::KeyedSlots;
use crate::lookups::Lookups;
use crate::metrics::Metrics;
use crate::registry::{LiveSession, Registry};
use crate::store::Store;

/// One agent's connections at once: its session, a newer one replacing it while its calls
/// finish, and one or two more a reconnect over a dying link may leave. Past it a token
/// would buy a connection, a task and ~50 KiB per login for the 10 s each may take to say
/// hello, from as many addresses as its holder has.
pub const MAX_CONNECTIONS_PER_AGENT: usize = 8;

pub struct RelayContext {
    pub config: RelayConfig,
    pub store: Arc<dyn Store>,
    /// API keys and agents as the store last said; see `store_write`.
    pub lookups: Lookups,
    pub registry: Registry,
    pub throttle: AuthThrottle,
    /// Connections per agent, logged in or still saying hello.
    pub agent_connections: KeyedSlots<String>,
    pub metrics: Metrics,
    pub tasks: TaskTracker,
    pub shutdown: CancellationToken,
    /// Set as shutdown cuts off the calls still under way (past the grace, or a second
    /// signal): their end is the relay's doing, not their callers'.
    pub cutting_off: AtomicBool,
    /// Cancelled as the shutdown's grace ends: calls still waiting for their answer's head
    /// answer their callers 502 then, where the connection's close gave them no answer.
    pub cut_off_calls: CancellationToken,
    /// `call_timeout` as each call tells the agent (`x-postern-call-timeout`), made once.
    pub call_timeout_header: http::HeaderValue,
    /// Lines about requests still sending a revoked API key: an integration nobody
    /// updated would otherwise log one per request.
    pub revoked_key_lines: std::sync::Mutex<postern_logs::LogBudget>,
    /// Lines about keys that name no key: a staging key sent to production, found by its id.
    pub unknown_key_lines: std::sync::Mutex<postern_logs::LogBudget>,
    /// Lines about keys that are malformed, on a budget of their own: a spray of junk must
    /// not crowd out the lines about well-formed keys that someone configured.
    pub malformed_key_lines: std::sync::Mutex<postern_logs::LogBudget>,
    next_session_id: AtomicU64,
}

impl RelayContext {
    pub fn new(config: RelayConfig, store: Arc<dyn Store>, shutdown: CancellationToken) -> Self {
        let call_timeout_ms = u64::try_from(config.call_timeout.as_millis()).unwrap_or(u64::MAX);
        let metrics = Metrics::new(config.tls_cert.is_some());
        Self {
            call_timeout_header: http::HeaderValue::from(call_timeout_ms),
            config,
            store,
            lookups: Lookups::default(),
            registry: Registry::default(),
            throttle: AuthThrottle::default(),
            agent_connections: KeyedSlots::new(MAX_CONNECTIONS_PER_AGENT),
            metrics,
            tasks: TaskTracker::new(),
            shutdown,
            cutting_off: AtomicBool::new(false),
            cut_off_calls: CancellationToken::new(),
            revoked_key_lines: std::sync::Mutex::new(postern_logs::LogBudget::per_minute(
                10,
                "about revoked API keys",
            )),
            unknown_key_lines: std::sync::Mutex::new(postern_logs::LogBudget::per_minute(
                10,
                "about unknown API keys",
            )),
            malformed_key_lines: std::sync::Mutex::new(postern_logs::LogBudget::per_minute(
                10,
                "about malformed API keys",
            )),
            next_session_id: AtomicU64::new(1),
        }
    }

    pub fn is_cutting_off(&self) -> bool {
        self.cutting_off.load(Ordering::SeqCst)
    }

    pub fn next_session_id(&self) -> u64 {
        self.next_session_id.fetch_add(1, Ordering::Relaxed)
    }

    /// A store call that changes what it holds: the cached lookups are dropped after it,
    /// on the store's thread, so a request given up on (`api_timeout`, a caller gone)
    /// cannot leave a revoked key cached. And before it: between the commit and the clear
    /// after, another thread may read the change (a key list without the key) and its
    /// caller use the key at once, which must not be found cached then. Cleared before,
    /// it is put back only by a lookup that read the store before the commit: one as
    /// early as the write itself.
    pub async fn store_write<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&dyn Store) -> Result<T, crate::store::StoreError> + Send + 'static,
    ) -> Result<T, crate::store::StoreError> {
        let ctx = self.clone();
        self.store_call(move |store| {
            ctx.lookups.clear();
            let result = f(store);
            ctx.lookups.clear();
            result
        })
        .await
    }

    /// Ends `live` for `reason` (revoked, token rotated): out of the registry at once, so
    /// no call finds it once this returns; the agent is told why and disconnected on a
    /// task of its own, as one that does not read its control channel holds that up a
    /// moment, and neither an API answer nor the other sessions' checks must wait for it.
    pub fn end_session(&self, live: Arc<LiveSession>, reason: EndReason) {
        self.registry.unlist(&live, reason);
        self.tasks
            .spawn(async move { live.disconnect(reason).await });
    }

    /// Runs `work` to its end even if the request that started it is given up on: what a
    /// store write implies (dropping a revoked agent's session) must follow the write.
    pub async fn to_completion<T: Send + 'static>(
        &self,
        work: impl Future<Output = Result<T, crate::store::StoreError>> + Send + 'static,
    ) -> Result<T, crate::store::StoreError> {
        match self.tasks.spawn(work).await {
            Ok(result) => result,
            Err(join) => Err(crate::store::StoreError::Task(join.to_string())),
        }
    }

    /// Runs a store call off the async worker threads (reads; writes go through `store_write`).
    pub async fn store_call<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&dyn Store) -> Result<T, crate::store::StoreError> + Send + 'static,
    ) -> Result<T, crate::store::StoreError> {
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || f(store.as_ref())).await {
            Ok(result) => result,
            Err(join) => Err(crate::store::StoreError::Task(join.to_string())),
        }
    }
}
