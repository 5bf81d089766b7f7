//! Agents and API keys at rest. The relay talks to a [`Store`]; SQLite is the
//! default, and a PostgreSQL one can sit behind the same trait for several relays.

pub mod sqlite;

use postern_protocol::SecretToken;
use postern_protocol::api::ApiKeyScope;

pub use sqlite::{SCHEMA_VERSION, SqliteStore};

/// What every agent id starts with. Agent names may not: the API and CLI take an id or a
/// name in one place, and a name that looked like another agent's id would make a retried
/// revoke (or rotate) hit a different agent.
pub const AGENT_ID_PREFIX: &str = "agt_";

/// A token rotation as it was stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotation {
    pub agent: AgentRecord,
    /// When the token an earlier rotation kept for its grace was to stop working (unix
    /// seconds), had this rotation not stopped it now: one old token is kept, and an agent
    /// not yet moved to the token before this one loses its session.
    pub grace_cut: Option<i64>,
    /// Whether this rotation replaced a current token no agent had logged in with (an
    /// earlier rotation's, within its grace) and left the old token, which agents use,
    /// in its place with this rotation's grace.
    pub replaced_unused: bool,
}

/// One agent as stored. The token itself is never stored, only its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentRecord {
    pub id: String,
    pub name: String,
    /// RFC 3339, UTC.
    pub created_at: String,
    /// Starts at 1 and grows by one per token rotation; a session remembers the
    /// version it logged in with, so the relay can tell a stale one.
    pub token_version: i64,
    /// Unix seconds until which the token before the current one still works
    /// (a rotation with a grace period); `None` when it does not.
    pub old_token_until: Option<i64>,
}

impl AgentRecord {
    /// Whether a session that logged in with `version` may stay up at `now` (unix seconds).
    pub fn accepts_session(&self, version: i64, now: i64) -> bool {
        version == self.token_version
            || (version == self.token_version - 1 && self.old_token_until.is_some_and(|t| t > now))
    }
}

/// An agent that a token belongs to, and which of its tokens it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentLogin {
    pub agent: AgentRecord,
    /// The current `token_version`, or the one before it for a token in its grace period.
    pub token_version: i64,
    /// The current token, not yet recorded as used: see [`Store::mark_token_used`].
    pub first_use: bool,
}

/// What an agent token is to the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Login {
    /// An active agent's current token, or its old one within the grace period.
    Agent(AgentLogin),
    /// One an agent held before: a revoked agent's, or one replaced by a rotation whose
    /// grace is over. An agent nobody updated, not a guess.
    Former(FormerLogin),
    /// Never issued here.
    Unknown,
}

impl Login {
    pub fn agent(self) -> Option<AgentLogin> {
        match self {
            Self::Agent(login) => Some(login),
            Self::Former(_) | Self::Unknown => None,
        }
    }
}

/// Whose a former token was: its holder proved it has the token, so naming the agent in
/// the relay's log tells them nothing, and tells the admin which agent nobody updated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormerLogin {
    pub agent_id: String,
    pub agent_name: String,
    pub why: FormerWhy,
}

/// Why a former token no longer logs in, as the agent stands now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FormerWhy {
    /// The agent is revoked (whichever of its tokens this was).
    Revoked,
    /// The agent lives on with a newer token: a rotation replaced this one.
    Rotated,
}

impl FormerWhy {
    /// The refusal's reason, as the relay logs it.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Revoked => "token of a revoked agent",
            Self::Rotated => "token replaced by a rotation",
        }
    }
}

/// One API key as stored. The key itself is never stored, only its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyRecord {
    pub name: String,
    pub scope: ApiKeyScope,
    /// RFC 3339, UTC.
    pub created_at: String,
}

/// The relay logs these with `%e`, their message alone, so a cause is said in the message
/// and not exposed as the source; only [`StoreError::NotShown`], which just the CLI
/// prints (as a chain), has a source.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "an agent named {0:?} exists already (its token is shown only when it is made: if \
         that answer was lost, give the agent a new one with POST /v1/agents/{0}/token or \
         `postern-relay agent rotate {0}`)"
    )]
    AgentExists(String),
    #[error(
        "an API key named {0:?} exists already (a key is shown only when it is made: if that \
         answer was lost, revoke it and make it again)"
    )]
    ApiKeyExists(String),
    #[error("no API key named {0:?}")]
    ApiKeyNotFound(String),
    #[error("no agent with id or name {0:?}")]
    AgentNotFound(String),
    #[error(
        "invalid name {0:?}: use 1–64 letters, digits, '_' or '-', starting with a letter or digit"
    )]
    BadName(String),
    #[error(
        "invalid agent name {0:?}: names starting with {AGENT_ID_PREFIX:?} are kept for agent ids"
    )]
    ReservedName(String),
    #[error("cannot create the store folder {path}: {error}")]
    Folder {
        path: std::path::PathBuf,
        error: std::io::Error,
    },
    #[error("the new token could not be shown, so the agent keeps its old one")]
    NotShown(#[source] std::io::Error),
    #[error(
        "the store was written by a newer postern-relay (its schema is version {found}; this \
         one knows up to {known}): run that release or a later one, or restore a backup this \
         release wrote"
    )]
    TooNew { found: i64, known: i64 },
    #[error("store task failed: {0}")]
    Task(String),
    #[error("store error: {0}")]
    Sqlite(rusqlite::Error),
}

/// By hand, as `#[from]` would expose SQLite's error as the source as well, and a chain
/// would say it twice: its own source is its text again behind `Error code N: `.
impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Sqlite(e)
    }
}

impl StoreError {
    /// The storage problem an operator has to fix, when that is what failed.
    pub fn disk_problem(&self) -> Option<&'static str> {
        let StoreError::Sqlite(rusqlite::Error::SqliteFailure(e, _)) = self else {
            return None;
        };
        match e.code {
            rusqlite::ErrorCode::DiskFull => Some("its disk is full"),
            rusqlite::ErrorCode::ReadOnly => {
                Some("its store is read-only (a read-only file system, or file permissions)")
            }
            rusqlite::ErrorCode::SystemIoFailure => Some("the disk reported an I/O error"),
            rusqlite::ErrorCode::CannotOpen => Some("its store file cannot be opened"),
            _ => None,
        }
    }

    /// Whether another process held the store's lock past the busy timeout: nothing is
    /// wrong with the store, and the same request can succeed once the lock is let go.
    pub fn is_busy(&self) -> bool {
        matches!(
            self,
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(e, _))
                if matches!(e.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
        )
    }
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
    /// Gives an agent a new token. With `old_until` (unix seconds) the current token
    /// keeps working until then; without, it stops at once. Within an earlier rotation's
    /// grace, with `old_until`, a current token that no agent has logged in with (not
    /// marked used, and not `current_in_use` by a live session) is replaced instead, and
    /// the old token keeps working until `old_until`. Kept only once `show` has shown the
    /// new token: when it cannot ([`StoreError::NotShown`]) nothing changed and the old
    /// token still works, because a token nobody saw cannot be undone by rotating again.
    fn rotate_token(
        &self,
        id_or_name: &str,
        token: &SecretToken,
        old_until: Option<i64>,
        current_in_use: &dyn Fn(&AgentRecord) -> bool,
        show: &mut dyn FnMut(&Rotation) -> std::io::Result<()>,
    ) -> Result<Rotation, StoreError>;
    /// Records that an agent logged in with `token`, its current one. `false` when the
    /// token no longer works at `now` (a rotation that replaced it, or a revoke, came
    /// between the login and this); one a rotation made the old token in grace still does.
    fn mark_token_used(
        &self,
        agent_id: &str,
        token: &SecretToken,
        now: i64,
    ) -> Result<bool, StoreError>;
    /// Whose this token is (an active agent's, current or old within its grace; a
    /// former one; none), compared in constant time; `now` is unix seconds.
    fn login(&self, token: &SecretToken, now: i64) -> Result<Login, StoreError>;
    /// The active agent this token belongs to, compared in constant time.
    fn agent_for_token(&self, token: &SecretToken) -> Result<Option<AgentRecord>, StoreError> {
        Ok(self.login(token, unix_now())?.agent().map(|l| l.agent))
    }
    /// Adds an API key (stored as a hash) with the given scope.
    fn create_scoped_api_key(
        &self,
        name: &str,
        key: &SecretToken,
        scope: ApiKeyScope,
    ) -> Result<ApiKeyRecord, StoreError>;
    /// Adds an `admin` API key (stored as a hash).
    fn create_api_key(&self, name: &str, key: &SecretToken) -> Result<(), StoreError> {
        self.create_scoped_api_key(name, key, ApiKeyScope::Admin)
            .map(|_| ())
    }
    /// The active API key `key`, compared in constant time.
    fn api_key(&self, key: &SecretToken) -> Result<Option<ApiKeyRecord>, StoreError>;
    /// The name of the revoked API key `key`, if it is one (compared in constant time): a
    /// request still sending it is refused saying so, and logged with the name.
    fn revoked_api_key_name(&self, key: &SecretToken) -> Result<Option<String>, StoreError>;
    /// The name of the active API key `key`, compared in constant time.
    fn api_key_name(&self, key: &SecretToken) -> Result<Option<String>, StoreError> {
        Ok(self.api_key(key)?.map(|k| k.name))
    }
    /// All active API keys, oldest first.
    fn list_api_keys(&self) -> Result<Vec<ApiKeyRecord>, StoreError>;
    /// Revokes an API key by name: it stops working at once.
    fn revoke_api_key(&self, name: &str) -> Result<ApiKeyRecord, StoreError>;
    /// Removes agent `id` without a trace (not even as a former token's owner): for one
    /// just created whose token could not be shown, so that nothing was created.
    fn delete_agent(&self, id: &str) -> Result<(), StoreError>;
    /// Removes the API key `key` without a trace, as [`Store::delete_agent`] does.
    fn delete_api_key(&self, key: &SecretToken) -> Result<(), StoreError>;
    /// Changes whenever another process changed the store; cheap to poll.
    fn change_marker(&self) -> Result<i64, StoreError>;
    /// Ends for good the graces that ran out by `now` (unix seconds): an end left in the
    /// store would let a clock stepped back before it revive the old token. Returns how
    /// many it ended.
    fn end_past_graces(&self, now: i64) -> Result<usize, StoreError>;
}

/// Seconds since the Unix epoch, as the store keeps deadlines.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Agent and key names share the rules of connection names.
pub(crate) fn check_name(name: &str) -> Result<(), StoreError> {
    postern_protocol::ConnectionName::parse(name)
        .map(|_| ())
        .map_err(|_| StoreError::BadName(name.chars().take(80).collect()))
}

/// [`check_name`], and not shaped like an agent id (see [`AGENT_ID_PREFIX`]).
pub(crate) fn check_agent_name(name: &str) -> Result<(), StoreError> {
    check_name(name)?;
    if is_agent_id(name) {
        return Err(StoreError::ReservedName(name.to_owned()));
    }
    Ok(())
}

/// Whether `text` is shaped like an agent id, so that it is looked up as one only.
pub fn is_agent_id(text: &str) -> bool {
    text.starts_with(AGENT_ID_PREFIX)
}
