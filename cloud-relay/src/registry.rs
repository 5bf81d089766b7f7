//! The live agent sessions: at most one per agent takes calls, the newest (a reconnecting
//! agent is never locked out by its stale session); one it replaced finishes its calls.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use postern_protocol::ConnectionName;
use postern_protocol::control::{EndReason, RelayMessage, encode_line};
use russh::server::Msg;
use russh::{ChannelStream, Disconnect};
use tokio::io::{AsyncWriteExt, WriteHalf};
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::channel_pool::ChannelPool;

/// The write side of an agent's control channel, shared by the welcome and the notices.
pub type ControlWriter = Arc<tokio::sync::Mutex<WriteHalf<ChannelStream<Msg>>>>;

/// How long an `ending` notice may take to write before the session is ended anyway.
const NOTICE_TIMEOUT: Duration = Duration::from_secs(1);
/// How often a replaced session's calls under way are counted.
const RETIRING_CHECK: Duration = Duration::from_millis(50);

/// One authenticated, announced agent session.
pub struct LiveSession {
    pub session_id: u64,
    pub agent_id: String,
    pub agent_name: String,
    pub remote_addr: SocketAddr,
    pub since: SystemTime,
    pub agent_version: String,
    pub protocol_version: u32,
    /// What the agent serves: from its hello, replaced by each `inventory` after a reload.
    connections: Mutex<Vec<ConnectionName>>,
    /// The token version the agent logged in with (see `AgentRecord::accepts_session`).
    pub token_version: i64,
    /// Calls under way through this session.
    in_flight: Arc<AtomicU64>,
    /// Calls under way to this agent, through a replaced session still finishing its own
    /// too: what `max_calls_per_agent` bounds ([`Registry::calls_of`]).
    agent_calls: Arc<AtomicU64>,
    /// Why the relay ended this session, read when the connection task finishes.
    pub closing_reason: ClosingReason,
    handle: russh::server::Handle,
    /// The write side of the agent's control channel, for the `ending` notice.
    control: ControlWriter,
    /// HTTP/1.1 over pooled SSH channels to this agent, one pool per connection name.
    pub channels: Arc<ChannelPool>,
}

impl LiveSession {
    /// Whether the SSH session has ended, or ends within `limit`.
    pub async fn ended_within(&self, limit: Duration) -> bool {
        tokio::time::timeout(limit, self.handle.closed())
            .await
            .is_ok()
    }

    #[allow(clippy::too_many_arguments)]
    pub fn new(
        session_id: u64,
        agent_id: String,
        agent_name: String,
        remote_addr: SocketAddr,
        agent_version: String,
        protocol_version: u32,
        connections: Vec<ConnectionName>,
        token_version: i64,
        closing_reason: ClosingReason,
        handle: russh::server::Handle,
        control: ControlWriter,
        channels: Arc<ChannelPool>,
        agent_calls: Arc<AtomicU64>,
    ) -> Self {
        Self {
            session_id,
            agent_id,
            agent_name,
            remote_addr,
            since: SystemTime::now(),
            agent_version,
            protocol_version,
            connections: Mutex::new(connections),
            token_version,
            in_flight: Arc::new(AtomicU64::new(0)),
            agent_calls,
            closing_reason,
            handle,
            control,
            channels,
        }
    }

    /// Counts a call as under way until the returned guard is dropped; `None`
    /// when `limit` calls to the agent are under way already.
    pub fn try_call_started(&self, limit: u64) -> Option<InFlightGuard> {
        // SeqCst, as is the draining flag: see `call_slot`.
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let before = self.agent_calls.fetch_add(1, Ordering::Relaxed);
        let guard = InFlightGuard([self.in_flight.clone(), self.agent_calls.clone()]);
        (before < limit).then_some(guard)
    }

    /// Calls under way through this session.
    pub fn calls_in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Calls under way to the agent, a replaced session's included.
    pub fn agent_calls_in_flight(&self) -> u64 {
        self.agent_calls.load(Ordering::Relaxed)
    }

    /// The connection the agent serves under `connection`, if it serves one.
    pub fn serving(&self, connection: &str) -> Option<ConnectionName> {
        self.lock_connections()
            .iter()
            .find(|c| c.as_str() == connection)
            .cloned()
    }

    pub fn connections(&self) -> Vec<String> {
        self.lock_connections()
            .iter()
            .map(|c| c.to_string())
            .collect()
    }

    /// Whether they changed.
    pub fn set_connections(&self, connections: Vec<ConnectionName>) -> bool {
        let mut current = self.lock_connections();
        let changed = *current != connections;
        *current = connections;
        changed
    }

    fn lock_connections(&self) -> std::sync::MutexGuard<'_, Vec<ConnectionName>> {
        self.connections.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Tells the agent why on its control channel, then ends the SSH session.
    pub async fn disconnect(&self, reason: EndReason) {
        let text = reason.describe();
        self.closing_reason.set(text);
        let notice = encode_line(&RelayMessage::Ending {
            reason,
            message: text.to_owned(),
        });
        // Best effort: an agent that does not read its control channel still gets the disconnect.
        let _ = tokio::time::timeout(NOTICE_TIMEOUT, async {
            let mut control = self.control.lock().await;
            control.write_all(&notice).await?;
            control.flush().await
        })
        .await;
        let _ = self
            .handle
            .disconnect(Disconnect::ByApplication, text.to_owned(), String::new())
            .await;
    }
}

/// Decrements the session's and the agent's in-flight counts when the call (body
/// included) ends.
pub struct InFlightGuard([Arc<AtomicU64>; 2]);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        for count in &self.0 {
            count.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Shared between a connection task and its session: the first reason set wins.
#[derive(Clone, Default)]
pub struct ClosingReason(Arc<Mutex<Option<String>>>);

impl ClosingReason {
    pub fn set(&self, reason: &str) {
        let mut slot = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some(reason.to_owned());
        }
    }

    pub fn get(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// When an agent's last session ended and why (kept in memory only).
#[derive(Clone, Debug)]
pub struct Departure {
    pub at: SystemTime,
    pub reason: String,
    /// The session that ended, so a session noted twice (dropped by the relay, then
    /// its connection task ending) keeps its first reason and time.
    session_id: u64,
}

#[derive(Default)]
pub struct Registry {
    sessions: Mutex<HashMap<String, Arc<LiveSession>>>,
    /// Replaced sessions finishing their calls, by session id ([`Registry::retire`]).
    retiring: Mutex<HashMap<u64, Arc<LiveSession>>>,
    /// Calls under way per agent id, across its sessions; a revoked agent's goes with its
    /// departure ([`Registry::forget_gone`]) once nothing holds it.
    calls: Mutex<HashMap<String, Arc<AtomicU64>>>,
    departures: Mutex<HashMap<String, Departure>>,
}

impl Registry {
    /// The count of `agent_id`'s calls under way, for its sessions to share.
    pub fn calls_of(&self, agent_id: &str) -> Arc<AtomicU64> {
        self.calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(agent_id.to_owned())
            .or_default()
            .clone()
    }

    /// Registers a session; returns the older session of the same agent, if any, which
    /// the caller must [`retire`](Registry::retire). It is among the retiring from here
    /// on, in the same step, so a revoke never finds it in neither place.
    pub fn insert(&self, session: Arc<LiveSession>) -> Option<Arc<LiveSession>> {
        info!(agent = %session.agent_name, session = session.session_id, remote = %session.remote_addr, "agent online");
        // In `sessions_of`'s order.
        let mut retiring = self.lock_retiring();
        let old = self.lock().insert(session.agent_id.clone(), session)?;
        retiring.insert(old.session_id, old.clone());
        Some(old)
    }

    pub fn get(&self, agent_id: &str) -> Option<Arc<LiveSession>> {
        self.lock().get(agent_id).cloned()
    }

    /// How many agents are online.
    pub fn online(&self) -> usize {
        self.lock().len()
    }

    pub fn all(&self) -> Vec<Arc<LiveSession>> {
        self.lock().values().cloned().collect()
    }

    /// The agent's session and the replaced ones still finishing their calls: what a
    /// revoke or rotation ends.
    pub fn sessions_of(&self, agent_id: &str) -> Vec<Arc<LiveSession>> {
        let retiring = self.lock_retiring();
        let older = retiring.values().filter(|s| s.agent_id == agent_id);
        self.get(agent_id)
            .into_iter()
            .chain(older.cloned())
            .collect()
    }

    /// Every session, replaced ones finishing their calls too, to check against the store.
    pub fn all_with_retiring(&self) -> Vec<Arc<LiveSession>> {
        let retiring = self.lock_retiring().values().cloned().collect::<Vec<_>>();
        self.all().into_iter().chain(retiring).collect()
    }

    /// Ends `old`, which a newer session of the same agent replaced in the registry, once
    /// the calls under way through it are answered or `grace` has passed. No new call
    /// reaches it: new calls find the newer session, and its idle channels close now.
    /// Another agent process taking over (a rolling update starts the new one before it
    /// stops the old) so cuts no call; a stale session of a reconnecting agent has none
    /// that could still be answered, and they end with its connection. At `shutdown` it
    /// is left to the relay's own ending of sessions.
    pub async fn retire(
        &self,
        old: Arc<LiveSession>,
        grace: Duration,
        shutdown: &CancellationToken,
    ) {
        old.channels.drain();
        let deadline = tokio::time::Instant::now() + grace;
        // The count has no wakeup of its own; a retirement is rare and short.
        while old.calls_in_flight() > 0 && tokio::time::Instant::now() < deadline {
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(RETIRING_CHECK) => {}
            }
        }
        // Gone already if a revoke or rotation dropped it meanwhile.
        let still_retiring = self.lock_retiring().remove(&old.session_id).is_some();
        if still_retiring && !shutdown.is_cancelled() {
            old.disconnect(EndReason::Replaced).await;
        }
    }

    /// The registry's part of `RelayContext::end_session`: from here on no call finds
    /// `live` (a replaced one, still finishing its calls, included), and why it ended is
    /// noted. The agent is told and disconnected after, by the caller.
    pub fn unlist(&self, live: &LiveSession, reason: EndReason) {
        // A call that found it just before takes no slot on it (`call_slot`).
        live.channels.drain();
        self.lock_retiring().remove(&live.session_id);
        self.end_session(
            &live.agent_id,
            live.session_id,
            reason.describe().to_owned(),
        );
    }

    /// Takes the agent's session `session_id` out of the registry, if it is still the
    /// agent's current one (a replaced session going away must not take the newer one
    /// with it), and notes why it ended, unless it says nothing of the agent's last
    /// departure: a replaced session or a stray connection ending while a newer session
    /// serves, or after a newer one ended (a crash of the new version must not be hidden
    /// behind the old one's "replaced"). Both under the sessions' lock, so nobody sees the
    /// agent offline with the reason of an older departure, or none.
    pub fn end_session(&self, agent_id: &str, session_id: u64, reason: String) {
        let mut sessions = self.lock();
        let current = sessions.get(agent_id).map(|s| s.session_id);
        // The agent's session: its end is the agent's last departure, whatever the ids (a
        // connection accepted earlier may say hello later); with none, unless a newer one's was.
        if current.is_none_or(|id| id == session_id) {
            self.record_departure(agent_id, session_id, reason, current.is_none());
        }
        if current == Some(session_id)
            && let Some(gone) = sessions.remove(agent_id)
        {
            info!(agent = %gone.agent_name, session = session_id, "agent offline");
        }
    }

    /// Notes that session `session_id` of `agent_id` ended, and why, unless that session
    /// was noted already (its first note wins) or, `unless_newer`, a newer one was (ids
    /// only grow).
    fn record_departure(
        &self,
        agent_id: &str,
        session_id: u64,
        reason: String,
        unless_newer: bool,
    ) {
        let mut departures = self.lock_departures();
        if departures.get(agent_id).is_some_and(|d| {
            d.session_id == session_id || (unless_newer && d.session_id > session_id)
        }) {
            return;
        }
        departures.insert(
            agent_id.to_owned(),
            Departure {
                at: SystemTime::now(),
                reason,
                session_id,
            },
        );
    }

    pub fn departure(&self, agent_id: &str) -> Option<Departure> {
        self.lock_departures().get(agent_id).cloned()
    }

    /// Forgets what is kept of agents that a store listing taken at `listed_at` no longer
    /// has (revoked ones), which nobody can ask about: departures noted before it, and
    /// call counters no session holds, so a relay that makes and revokes many agents
    /// does not grow a counter for each for ever.
    pub fn forget_gone(&self, listed_at: SystemTime, exists: impl Fn(&str) -> bool) {
        self.lock_departures()
            .retain(|id, d| d.at >= listed_at || exists(id));
        self.calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|id, count| exists(id) || Arc::strong_count(count) > 1);
    }

    fn lock_departures(&self) -> std::sync::MutexGuard<'_, HashMap<String, Departure>> {
        self.departures.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_retiring(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<LiveSession>>> {
        self.retiring.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<LiveSession>>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_noted_twice_keeps_its_first_reason_and_time() {
        let registry = Registry::default();
        registry.end_session("a1", 7, "revoked".into());
        let first = registry.departure("a1").expect("noted");
        std::thread::sleep(std::time::Duration::from_millis(5));
        registry.end_session("a1", 7, "the agent closed the connection".into());
        let again = registry.departure("a1").expect("still noted");
        assert_eq!(again.reason, "revoked");
        assert_eq!(again.at, first.at);

        // A later session of the same agent is a departure of its own.
        registry.end_session("a1", 8, "connection lost: reset".into());
        let later = registry.departure("a1").expect("noted");
        assert_eq!(later.reason, "connection lost: reset");

        // The older session, replaced by 8 and finishing its calls, ends after 8 did:
        // 8's end is the agent's last departure.
        registry.end_session("a1", 7, "replaced by a newer session".into());
        let last = registry.departure("a1").expect("noted");
        assert_eq!(last.reason, "connection lost: reset");
        assert_eq!(last.at, later.at);
    }

    #[test]
    fn what_is_kept_of_agents_gone_from_the_store_is_forgotten() {
        let registry = Registry::default();
        registry.end_session("kept", 1, "the agent closed the connection".into());
        registry.end_session("revoked", 2, "revoked".into());
        let listed_at = SystemTime::now();
        // Noted after the listing: an agent the listing may not have seen yet.
        registry.end_session("new", 3, "the agent closed the connection".into());
        // A counter a session still holds stays; one nobody holds goes with its agent.
        let held = registry.calls_of("revoked-busy");
        held.fetch_add(1, Ordering::Relaxed);
        registry.calls_of("revoked");
        registry.calls_of("kept");
        registry.forget_gone(listed_at, |id| id == "kept");
        assert!(registry.departure("kept").is_some());
        assert!(registry.departure("revoked").is_none());
        assert!(registry.departure("new").is_some());
        let counted: Vec<String> = {
            let mut ids: Vec<String> = registry
                .calls
                .lock()
                .expect("calls")
                .keys()
                .cloned()
                .collect();
            ids.sort();
            ids
        };
        assert_eq!(counted, ["kept", "revoked-busy"]);
        // The same counter again for the session that holds it.
        assert_eq!(registry.calls_of("revoked-busy").load(Ordering::Relaxed), 1);
    }
}
