//! Agents and API keys at rest. The relay talks to a [`Store`]; SQLite is the
//! default, and a PostgreSQL one can sit behind the same trait for several relays.

pub mod sqlite;

use postern_protocol::SecretToken;

pub use sqlite::SqliteStore;

/// One agent as stored. The token itself is never stored, only its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentRecord {
    pub id: String,
    pub name: String,
    /// RFC 3339, UTC.
    pub created_at: String,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("an agent named {0:?} exists already")]
    AgentExists(String),
    #[error("an API key named {0:?} exists already")]
    ApiKeyExists(String),
    #[error("no agent with id or name {0:?}")]
    AgentNotFound(String),
    #[error(
        "invalid name {0:?}: use 1–64 letters, digits, '_' or '-', starting with a letter or digit"
    )]
    BadName(String),
    #[error("cannot create the store folder {path}: {source}")]
    Folder {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("store task failed: {0}")]
    Task(String),
    #[error("store error: {0}")]
    Sqlite(#[from] rusqlite::Error),
}

/// What the relay needs from storage. Methods are synchronous and short; callers
/// on the async side keep them off hot loops.
pub trait Store: Send + Sync + 'static {
    /// Adds an agent holding `token` (stored as a hash).
    fn create_agent(&self, name: &str, token: &SecretToken) -> Result<AgentRecord, StoreError>;
    /// An active agent by id, else by name.
    fn find_agent(&self, id_or_name: &str) -> Result<Option<AgentRecord>, StoreError>;
    /// All active agents, oldest first.
    fn list_agents(&self) -> Result<Vec<AgentRecord>, StoreError>;
    /// Revokes an agent: its token stops working. Returns the revoked record.
    fn revoke_agent(&self, id_or_name: &str) -> Result<AgentRecord, StoreError>;
    /// The active agent this token belongs to, compared in constant time.
    fn agent_for_token(&self, token: &SecretToken) -> Result<Option<AgentRecord>, StoreError>;
    /// Adds an API key (stored as a hash).
    fn create_api_key(&self, name: &str, key: &SecretToken) -> Result<(), StoreError>;
    /// The name of the active API key `key`, compared in constant time.
    fn api_key_name(&self, key: &SecretToken) -> Result<Option<String>, StoreError>;
    /// Changes whenever another process changed the store; cheap to poll.
    fn change_marker(&self) -> Result<i64, StoreError>;
}

/// Agent and key names share the rules of connection names.
pub(crate) fn check_name(name: &str) -> Result<(), StoreError> {
    postern_protocol::ConnectionName::parse(name)
        .map(|_| ())
        .map_err(|_| StoreError::BadName(name.chars().take(80).collect()))
}
