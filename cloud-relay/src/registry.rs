//! The live agent sessions: at most one per agent, the newest replacing the
//! older at once (a reconnecting agent is never locked out by its stale session).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use axum::body::Body;
use hyper_util::client::legacy::Client;
use russh::Disconnect;
use tracing::info;

use crate::channel_connector::ChannelConnector;

/// One authenticated, announced agent session.
pub struct LiveSession {
    pub session_id: u64,
    pub agent_id: String,
    pub agent_name: String,
    pub remote_addr: SocketAddr,
    pub since: SystemTime,
    pub agent_version: String,
    pub protocol_version: u32,
    pub connections: Vec<String>,
    handle: russh::server::Handle,
    /// HTTP/1.1 over pooled SSH channels to this agent, one pool per connection name.
    pub client: Client<ChannelConnector, Body>,
}

impl LiveSession {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        session_id: u64,
        agent_id: String,
        agent_name: String,
        remote_addr: SocketAddr,
        agent_version: String,
        protocol_version: u32,
        connections: Vec<String>,
        handle: russh::server::Handle,
    ) -> Self {
        let client = Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_idle_timeout(std::time::Duration::from_secs(90))
            .pool_max_idle_per_host(64)
            .build(ChannelConnector::new(handle.clone()));
        Self {
            session_id,
            agent_id,
            agent_name,
            remote_addr,
            since: SystemTime::now(),
            agent_version,
            protocol_version,
            connections,
            handle,
            client,
        }
    }

    pub fn serves(&self, connection: &str) -> bool {
        self.connections.iter().any(|c| c == connection)
    }

    /// Ends the SSH session; the agent sees the reason in its log.
    pub async fn disconnect(&self, reason: &str) {
        let _ = self
            .handle
            .disconnect(Disconnect::ByApplication, reason.to_owned(), String::new())
            .await;
    }
}

#[derive(Default)]
pub struct Registry {
    sessions: Mutex<HashMap<String, Arc<LiveSession>>>,
}

impl Registry {
    /// Registers a session; returns the older session of the same agent, if any,
    /// which the caller must disconnect.
    pub fn insert(&self, session: Arc<LiveSession>) -> Option<Arc<LiveSession>> {
        info!(agent = %session.agent_name, session = session.session_id, remote = %session.remote_addr, "agent online");
        self.lock().insert(session.agent_id.clone(), session)
    }

    /// Removes the agent's session only if it is still `session_id`, so a
    /// replaced session going away does not take the newer one with it.
    pub fn remove_if(&self, agent_id: &str, session_id: u64) -> Option<Arc<LiveSession>> {
        let mut map = self.lock();
        if map
            .get(agent_id)
            .is_some_and(|s| s.session_id == session_id)
        {
            let gone = map.remove(agent_id);
            if let Some(s) = &gone {
                info!(agent = %s.agent_name, session = session_id, "agent offline");
            }
            return gone;
        }
        None
    }

    pub fn remove(&self, agent_id: &str) -> Option<Arc<LiveSession>> {
        self.lock().remove(agent_id)
    }

    pub fn get(&self, agent_id: &str) -> Option<Arc<LiveSession>> {
        self.lock().get(agent_id).cloned()
    }

    pub fn all(&self) -> Vec<Arc<LiveSession>> {
        self.lock().values().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<LiveSession>>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }
}
