//! The SQLite store: one file in the state folder, WAL mode, so `postern-relay
//! agent …` commands can change it while `serve` runs and every change is durable.

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use postern_protocol::SecretToken;
use postern_protocol::api::ApiKeyScope;
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};
use subtle::ConstantTimeEq;

use super::{
    AGENT_ID_PREFIX, AgentLogin, AgentRecord, ApiKeyRecord, FormerLogin, FormerWhy, Login,
    Rotation, Store, StoreError, check_agent_name, check_name, is_agent_id,
};
use crate::secrets::new_id;

pub const DB_FILE: &str = "relay.db";

/// How long a store call waits for another process's lock before it fails as busy.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS agents (
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    token_lookup TEXT NOT NULL,
    token_hash   BLOB NOT NULL,
    revoked_at   TEXT,
    token_version     INTEGER NOT NULL DEFAULT 1,
    old_token_lookup  TEXT,
    old_token_hash    BLOB,
    old_token_until   INTEGER,
    token_used        INTEGER NOT NULL DEFAULT 1
);
CREATE UNIQUE INDEX IF NOT EXISTS agents_active_name ON agents(name) WHERE revoked_at IS NULL;
CREATE INDEX IF NOT EXISTS agents_token_lookup ON agents(token_lookup);
CREATE TABLE IF NOT EXISTS api_keys (
    name        TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    key_lookup  TEXT NOT NULL,
    key_hash    BLOB NOT NULL,
    revoked_at  TEXT,
    scope       TEXT NOT NULL DEFAULT 'admin'
);
CREATE UNIQUE INDEX IF NOT EXISTS api_keys_active_name ON api_keys(name) WHERE revoked_at IS NULL;
CREATE INDEX IF NOT EXISTS api_keys_lookup ON api_keys(key_lookup);
";

/// Tokens rotations replaced before the last one: kept only to be known as former. Made
/// apart from [`SCHEMA`], where the store can be written: a store made before it that
/// the relay can only read (or a backup of one restored under it) still serves calls.
const RETIRED_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS retired_tokens (
    agent_id     TEXT NOT NULL,
    token_lookup TEXT NOT NULL,
    token_hash   BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS retired_tokens_lookup ON retired_tokens(token_lookup);
";

/// Columns added after the first release: `(table, column, definition)`. A
/// database made before them gets them with their defaults, so it keeps working
/// (old API keys are `admin`, old agents are on token version 1).
const ADDED_COLUMNS: &[(&str, &str, &str)] = &[
    ("api_keys", "scope", "TEXT NOT NULL DEFAULT 'admin'"),
    ("agents", "token_version", "INTEGER NOT NULL DEFAULT 1"),
    ("agents", "old_token_lookup", "TEXT"),
    ("agents", "old_token_hash", "BLOB"),
    ("agents", "old_token_until", "INTEGER"),
    // Whether an agent has logged in with the current token. Rows from before it (and
    // rows an older relay writes) count as used: a rotation then ends the old token as
    // it always did, and never takes the current one for a lost answer's.
    ("agents", "token_used", "INTEGER NOT NULL DEFAULT 1"),
];

const POST_MIGRATION: &str = "
CREATE INDEX IF NOT EXISTS agents_old_token_lookup ON agents(old_token_lookup);
";

/// The schema this relay writes, kept in `PRAGMA user_version`. Stores made before it was
/// kept say 0 and are brought up to it by the steps above. A store that says more was
/// written by a newer relay, whose columns this one would ignore (before scopes existed,
/// every API key was admin), so it is refused rather than misread.
pub const SCHEMA_VERSION: i64 = 1;

const AGENT_COLUMNS: &str = "id, name, created_at, token_version, old_token_until";

/// Brings the schema up to date. An up-to-date store (every start but the first after an
/// upgrade, and a read-only one) is only read. Another process may upgrade it at the same
/// moment (a CLI command as `serve` starts): then this one's read, upgraded to a write,
/// is refused as busy at once (its snapshot is stale), and it tries again holding the
/// write lock from the start — it waits for the other, then finds the columns there.
fn migrate(conn: &mut Connection, read_only: bool) -> Result<(), StoreError> {
    match migrate_with(conn, TransactionBehavior::Deferred, read_only) {
        Err(e) if e.is_busy() => migrate_with(conn, TransactionBehavior::Immediate, read_only),
        done => done,
    }
}

fn migrate_with(
    conn: &mut Connection,
    behavior: TransactionBehavior,
    read_only: bool,
) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(behavior)?;
    let found: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::TooNew {
            found,
            known: SCHEMA_VERSION,
        });
    }
    tx.execute_batch(SCHEMA)?;
    if !read_only {
        tx.execute_batch(RETIRED_SCHEMA)?;
    }
    for (table, column, definition) in ADDED_COLUMNS {
        let present: bool = tx.query_row(
            &format!("SELECT COUNT(*) > 0 FROM pragma_table_info('{table}') WHERE name = ?1"),
            params![column],
            |r| r.get(0),
        )?;
        if !present {
            tx.execute_batch(&format!(
                "ALTER TABLE {table} ADD COLUMN {column} {definition}"
            ))?;
        }
    }
    tx.execute_batch(POST_MIGRATION)?;
    if !read_only && found < SCHEMA_VERSION {
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    }
    tx.commit()?;
    Ok(())
}

pub struct SqliteStore {
    /// For lookups only: WAL lets it read while a write waits for another process's lock
    /// (up to [`BUSY_TIMEOUT`], holding `conn`), so logins, API key checks and the
    /// revocation watch do not queue behind it. Declared first, so dropped first: the
    /// last connection to close checkpoints the WAL and removes it, which a read-only
    /// one cannot.
    reader: Mutex<Connection>,
    conn: Mutex<Connection>,
    read_only: bool,
}

/// Creates the database file 0600 if it is missing, and takes group and other access
/// away from it and its -wal and -shm files (made before this rule, or under a loose umask).
fn private_files(path: &Path) {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let _ = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path);
    for suffix in ["", "-wal", "-shm"] {
        let mut file = path.as_os_str().to_owned();
        file.push(suffix);
        // Not through a link, which whoever writes the folder could point anywhere.
        if std::fs::symlink_metadata(&file).is_ok_and(|m| m.file_type().is_symlink()) {
            continue;
        }
        match std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)) {
            // A read-only disk is said once, as the store opens.
            Err(e)
                if !matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ReadOnlyFilesystem
                ) =>
            {
                let file = Path::new(&file).display().to_string();
                tracing::warn!(%file, error = %e, "cannot make the store file private (0600)");
            }
            _ => {}
        }
    }
}

/// A transaction that reads and then writes. It takes the write lock first: SQLite does not
/// wait (busy timeout) when a read transaction upgrades to a write while the CLI writes.
fn write_transaction(conn: &Connection) -> rusqlite::Result<Transaction<'_>> {
    Transaction::new_unchecked(conn, TransactionBehavior::Immediate)
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE)
}

impl SqliteStore {
    /// Opens (and on first use creates) `relay.db` in `state_dir`.
    pub fn open_in(state_dir: &Path) -> Result<Self, StoreError> {
        crate::host_key::ensure_state_dir(state_dir).map_err(|error| StoreError::Folder {
            path: state_dir.to_owned(),
            error,
        })?;
        Self::open(&state_dir.join(DB_FILE))
    }

    pub fn open(path: &Path) -> Result<Self, StoreError> {
        // SQLite gives the -wal and -shm files the mode of the database file, so the
        // file is 0600 before SQLite first opens it, whatever the umask.
        private_files(path);
        let mut conn = Connection::open(path)?;
        // SQLite falls back to reading a file it cannot write (see `read_only`).
        let read_only = conn.is_readonly(rusqlite::MAIN_DB)?;
        // Another process (the CLI) may hold the write lock for a moment.
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        migrate(&mut conn, read_only)?;
        let reader = Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        reader.busy_timeout(BUSY_TIMEOUT)?;
        Ok(Self {
            reader: Mutex::new(reader),
            conn: Mutex::new(conn),
            read_only,
        })
    }

    /// Whether this process cannot write the store (a restore made as root, a disk mounted
    /// read-only): reads work, every change is refused.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        // A panic while holding the lock leaves SQLite consistent; keep going.
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        f(&conn)
    }

    /// [`Self::with`] for statements that only read.
    fn read<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let conn = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        f(&conn)
    }
}

fn row_to_agent(row: &rusqlite::Row<'_>) -> rusqlite::Result<AgentRecord> {
    Ok(AgentRecord {
        id: row.get(0)?,
        name: row.get(1)?,
        created_at: row.get(2)?,
        token_version: row.get(3)?,
        old_token_until: row.get(4)?,
    })
}

fn row_to_api_key(row: &rusqlite::Row<'_>) -> rusqlite::Result<ApiKeyRecord> {
    let scope: String = row.get(1)?;
    Ok(ApiKeyRecord {
        name: row.get(0)?,
        // An unknown scope (written by a newer relay) gets the least power.
        scope: scope.parse().unwrap_or(ApiKeyScope::Call),
        created_at: row.get(2)?,
    })
}

fn find_active(conn: &Connection, id_or_name: &str) -> Result<Option<AgentRecord>, StoreError> {
    // Every call looks its agent up: cached statements skip SQL parsing (it dominated
    // the relay's profile under load).
    let by = |column: &str| {
        conn.prepare_cached(&format!(
            "SELECT {AGENT_COLUMNS} FROM agents WHERE {column} = ?1 AND revoked_at IS NULL"
        ))?
        .query_row(params![id_or_name], row_to_agent)
        .optional()
    };
    // Text shaped like an id is an id only: were it also tried as a name, a name that
    // once matched one agent's id could pick another agent once the first is revoked.
    if is_agent_id(id_or_name) {
        return Ok(by("id")?);
    }
    Ok(match by("id")? {
        Some(agent) => Some(agent),
        None => by("name")?,
    })
}

/// The retired tokens that share `token`'s lookup id, with their agents and hashes; none
/// where the table is not there (see [`RETIRED_SCHEMA`]), which only costs an old token its
/// "former" standing. An agent's row is deleted only to undo a create whose token was never
/// shown, before any rotation could retire one: the join loses no retired token.
fn retired(
    conn: &Connection,
    token: &SecretToken,
) -> Result<Vec<(FormerLogin, Vec<u8>)>, StoreError> {
    let read = || -> rusqlite::Result<Vec<(FormerLogin, Vec<u8>)>> {
        let mut statement = conn.prepare_cached(
            "SELECT a.id, a.name, a.revoked_at IS NOT NULL, r.token_hash
               FROM retired_tokens r JOIN agents a ON a.id = r.agent_id
              WHERE r.token_lookup = ?1",
        )?;
        let rows = statement.query_map(params![token.lookup_id()], former_row)?;
        rows.collect()
    };
    // Preparing fails so, or running a statement cached before the table went (a
    // `.restore` of an older backup under the running relay).
    match read() {
        Err(rusqlite::Error::SqliteFailure(_, Some(message)))
            if message.starts_with("no such table") =>
        {
            Ok(Vec::new())
        }
        read => Ok(read?),
    }
}

/// [`Store::mark_token_used`]'s transaction.
fn mark_used(
    conn: &Connection,
    agent_id: &str,
    lookup: &str,
    hash: &[u8; 32],
    now: i64,
) -> Result<bool, StoreError> {
    let tx = write_transaction(conn)?;
    let current = tx.execute(
        "UPDATE agents SET token_used = 1
         WHERE id = ?1 AND token_lookup = ?2 AND token_hash = ?3 AND revoked_at IS NULL",
        params![agent_id, lookup, hash.as_slice()],
    )? == 1;
    let in_grace = || {
        tx.query_row(
            "SELECT COUNT(*) > 0 FROM agents
             WHERE id = ?1 AND old_token_lookup = ?2 AND old_token_hash = ?3
               AND old_token_until > ?4 AND revoked_at IS NULL",
            params![agent_id, lookup, hash.as_slice(), now],
            |r| r.get::<_, bool>(0),
        )
    };
    let works = current || in_grace()?;
    tx.commit()?;
    Ok(works)
}

/// Compares every candidate (no early exit), so timing says nothing about which matched.
/// `id, name, revoked, hash` as a former token's owner and the hash to compare.
fn former_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<(FormerLogin, Vec<u8>)> {
    let revoked: bool = row.get(2)?;
    Ok((
        FormerLogin {
            agent_id: row.get(0)?,
            agent_name: row.get(1)?,
            why: if revoked {
                FormerWhy::Revoked
            } else {
                FormerWhy::Rotated
            },
        },
        row.get(3)?,
    ))
}

fn pick_by_hash<T>(candidates: Vec<(T, Vec<u8>)>, hash: &[u8; 32]) -> Option<T> {
    let mut found = None;
    for (item, stored) in candidates {
        if bool::from(stored.as_slice().ct_eq(hash.as_slice())) && found.is_none() {
            found = Some(item);
        }
    }
    found
}

impl Store for SqliteStore {
    fn create_agent(&self, name: &str, token: &SecretToken) -> Result<AgentRecord, StoreError> {
        check_agent_name(name)?;
        let record = AgentRecord {
            id: new_id(AGENT_ID_PREFIX),
            name: name.to_owned(),
            created_at: now_rfc3339(),
            token_version: 1,
            old_token_until: None,
        };
        self.with(|conn| {
            conn.execute(
                "INSERT INTO agents (id, name, created_at, token_lookup, token_hash, token_used) VALUES (?1, ?2, ?3, ?4, ?5, 0)",
                params![record.id, record.name, record.created_at, token.lookup_id(), token.hash().as_slice()],
            )
            .map_err(|e| if is_unique_violation(&e) { StoreError::AgentExists(name.to_owned()) } else { e.into() })?;
            Ok(record)
        })
    }

    fn find_agent(&self, id_or_name: &str) -> Result<Option<AgentRecord>, StoreError> {
        self.read(|conn| find_active(conn, id_or_name))
    }

    fn list_agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn.prepare(&format!(
                "SELECT {AGENT_COLUMNS} FROM agents WHERE revoked_at IS NULL ORDER BY created_at, rowid"
            ))?;
            let rows = stmt.query_map([], row_to_agent)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn revoke_agent(&self, id_or_name: &str) -> Result<AgentRecord, StoreError> {
        self.with(|conn| {
            let agent = find_active(conn, id_or_name)?
                .ok_or_else(|| StoreError::AgentNotFound(id_or_name.to_owned()))?;
            conn.execute(
                "UPDATE agents SET revoked_at = ?1 WHERE id = ?2 AND revoked_at IS NULL",
                params![now_rfc3339(), agent.id],
            )?;
            Ok(agent)
        })
    }

    fn rotate_token(
        &self,
        id_or_name: &str,
        token: &SecretToken,
        old_until: Option<i64>,
        current_in_use: &dyn Fn(&AgentRecord) -> bool,
        show: &mut dyn FnMut(&Rotation) -> std::io::Result<()>,
    ) -> Result<Rotation, StoreError> {
        self.with(|conn| {
            let tx = write_transaction(conn)?;
            let agent = find_active(&tx, id_or_name)?
                .ok_or_else(|| StoreError::AgentNotFound(id_or_name.to_owned()))?;
            // Made here too: a backup from before the table, restored under a running relay.
            tx.execute_batch(RETIRED_SCHEMA)?;
            let used: bool = tx.query_row(
                "SELECT token_used FROM agents WHERE id = ?1",
                params![agent.id],
                |r| r.get(0),
            )?;
            let earlier_grace = agent.old_token_until.filter(|&t| t > super::unix_now());
            // A rotation with a grace while an earlier one's runs, whose token no agent has
            // logged in with: most often a retry of a rotation whose answer was lost. That
            // token is replaced and the one agents are on keeps its place, with this grace;
            // moving it out instead would cut the agents the grace was asked for.
            let replace_unused =
                old_until.is_some() && earlier_grace.is_some() && !used && !current_in_use(&agent);
            // Otherwise the current token becomes the old one, valid until the grace ends
            // (without one, never again: kept only so `login` knows it as a former one).
            // A token leaving for good is retired, still known as former: an agent nobody
            // updated through two rotations must not count as guessing and lock its
            // site's address out.
            let leaving = if replace_unused { "token" } else { "old_token" };
            tx.execute(
                &format!(
                    "INSERT INTO retired_tokens (agent_id, token_lookup, token_hash)
                     SELECT id, {leaving}_lookup, {leaving}_hash FROM agents
                     WHERE id = ?1 AND {leaving}_lookup IS NOT NULL AND {leaving}_hash IS NOT NULL"
                ),
                params![agent.id],
            )?;
            // Never again is the epoch, not now: a clock stepped back must not revive a
            // token rotated away because it leaked.
            let until = old_until.unwrap_or(0);
            if replace_unused {
                // The same version: no session has the replaced token's, and the old
                // token's sessions keep theirs, one below it.
                tx.execute(
                    "UPDATE agents SET token_lookup = ?1, token_hash = ?2, old_token_until = ?3
                     WHERE id = ?4 AND revoked_at IS NULL",
                    params![token.lookup_id(), token.hash().as_slice(), until, agent.id],
                )?;
            } else {
                tx.execute(
                    "UPDATE agents SET
                        old_token_lookup = token_lookup,
                        old_token_hash   = token_hash,
                        old_token_until  = ?3,
                        token_lookup = ?1, token_hash = ?2, token_version = token_version + 1,
                        token_used = 0
                     WHERE id = ?4 AND revoked_at IS NULL",
                    params![token.lookup_id(), token.hash().as_slice(), until, agent.id],
                )?;
            }
            let updated = find_active(&tx, &agent.id)?
                .ok_or_else(|| StoreError::AgentNotFound(id_or_name.to_owned()))?;
            let rotation = Rotation {
                agent: updated,
                grace_cut: earlier_grace.filter(|_| !replace_unused),
                replaced_unused: replace_unused,
            };
            // Shown inside the transaction: dropping it rolls the rotation back.
            show(&rotation).map_err(StoreError::NotShown)?;
            tx.commit()?;
            Ok(rotation)
        })
    }

    fn mark_token_used(
        &self,
        agent_id: &str,
        token: &SecretToken,
        now: i64,
    ) -> Result<bool, StoreError> {
        let (lookup, hash) = (token.lookup_id(), token.hash());
        self.with(|conn| {
            // Without its own fsync (~1 ms here, against ~30 µs): every new agent's first
            // login waits for this, and a fleet enrolled at once would queue past the 10 s
            // authentication timeout. WAL keeps the store whole; a power cut may lose the
            // mark, and a retried rotation within the grace then replaces the token.
            conn.pragma_update(None, "synchronous", "NORMAL")?;
            let marked = mark_used(conn, agent_id, lookup, &hash, now);
            conn.pragma_update(None, "synchronous", "FULL")?;
            marked
        })
    }

    fn login(&self, token: &SecretToken, now: i64) -> Result<Login, StoreError> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {AGENT_COLUMNS}, token_hash, 0, token_used FROM agents
                   WHERE token_lookup = ?1 AND revoked_at IS NULL
                 UNION ALL
                 SELECT {AGENT_COLUMNS}, old_token_hash, 1, 1 FROM agents
                   WHERE old_token_lookup = ?1 AND old_token_until > ?2 AND revoked_at IS NULL"
            ))?;
            let candidates = stmt
                .query_map(params![token.lookup_id(), now], |row| {
                    let agent = row_to_agent(row)?;
                    let old: i64 = row.get(6)?;
                    let version = agent.token_version - old;
                    let used: bool = row.get(7)?;
                    Ok((
                        AgentLogin {
                            agent,
                            token_version: version,
                            first_use: !used,
                        },
                        row.get::<_, Vec<u8>>(5)?,
                    ))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            if let Some(login) = pick_by_hash(candidates, &token.hash()) {
                return Ok(Login::Agent(login));
            }
            let mut stmt = conn.prepare_cached(
                "SELECT id, name, revoked_at IS NOT NULL, token_hash FROM agents
                   WHERE token_lookup = ?1 AND revoked_at IS NOT NULL
                 UNION ALL
                 SELECT id, name, revoked_at IS NOT NULL, old_token_hash FROM agents
                   WHERE old_token_lookup = ?1 AND (old_token_until <= ?2 OR revoked_at IS NOT NULL)",
            )?;
            let mut former = stmt
                .query_map(params![token.lookup_id(), now], former_row)?
                .collect::<Result<Vec<_>, _>>()?;
            former.extend(retired(conn, token)?);
            Ok(match pick_by_hash(former, &token.hash()) {
                Some(login) => Login::Former(login),
                None => Login::Unknown,
            })
        })
    }

    fn create_scoped_api_key(
        &self,
        name: &str,
        key: &SecretToken,
        scope: ApiKeyScope,
    ) -> Result<ApiKeyRecord, StoreError> {
        check_name(name)?;
        let record = ApiKeyRecord {
            name: name.to_owned(),
            scope,
            created_at: now_rfc3339(),
        };
        self.with(|conn| {
            conn.execute(
                "INSERT INTO api_keys (name, created_at, key_lookup, key_hash, scope) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![name, record.created_at, key.lookup_id(), key.hash().as_slice(), scope.as_str()],
            )
            .map_err(|e| if is_unique_violation(&e) { StoreError::ApiKeyExists(name.to_owned()) } else { e.into() })?;
            Ok(record)
        })
    }

    fn api_key(&self, key: &SecretToken) -> Result<Option<ApiKeyRecord>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT name, scope, created_at, key_hash FROM api_keys WHERE key_lookup = ?1 AND revoked_at IS NULL",
            )?;
            let candidates = stmt
                .query_map(params![key.lookup_id()], |row| {
                    Ok((row_to_api_key(row)?, row.get::<_, Vec<u8>>(3)?))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(pick_by_hash(candidates, &key.hash()))
        })
    }

    fn revoked_api_key_name(&self, key: &SecretToken) -> Result<Option<String>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT name, key_hash FROM api_keys WHERE key_lookup = ?1 AND revoked_at IS NOT NULL",
            )?;
            let candidates = stmt
                .query_map(params![key.lookup_id()], |row| {
                    Ok((row.get::<_, String>(0)?, row.get::<_, Vec<u8>>(1)?))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(pick_by_hash(candidates, &key.hash()))
        })
    }

    fn list_api_keys(&self) -> Result<Vec<ApiKeyRecord>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn.prepare(
                "SELECT name, scope, created_at FROM api_keys WHERE revoked_at IS NULL ORDER BY created_at, rowid",
            )?;
            let rows = stmt.query_map([], row_to_api_key)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn revoke_api_key(&self, name: &str) -> Result<ApiKeyRecord, StoreError> {
        self.with(|conn| {
            let tx = write_transaction(conn)?;
            let record = tx
                .query_row(
                    "SELECT name, scope, created_at FROM api_keys WHERE name = ?1 AND revoked_at IS NULL",
                    params![name],
                    row_to_api_key,
                )
                .optional()?
                .ok_or_else(|| StoreError::ApiKeyNotFound(name.to_owned()))?;
            tx.execute(
                "UPDATE api_keys SET revoked_at = ?1 WHERE name = ?2 AND revoked_at IS NULL",
                params![now_rfc3339(), name],
            )?;
            tx.commit()?;
            Ok(record)
        })
    }

    fn delete_agent(&self, id: &str) -> Result<(), StoreError> {
        self.with(|conn| {
            conn.execute("DELETE FROM agents WHERE id = ?1", params![id])?;
            Ok(())
        })
    }

    fn delete_api_key(&self, key: &SecretToken) -> Result<(), StoreError> {
        self.with(|conn| {
            conn.execute(
                "DELETE FROM api_keys WHERE key_lookup = ?1 AND key_hash = ?2",
                params![key.lookup_id(), key.hash().as_slice()],
            )?;
            Ok(())
        })
    }

    fn change_marker(&self) -> Result<i64, StoreError> {
        self.read(|conn| Ok(conn.query_row("PRAGMA data_version", [], |r| r.get(0))?))
    }

    fn end_past_graces(&self, now: i64) -> Result<usize, StoreError> {
        self.with(|conn| {
            // The epoch, as a rotation without a grace stores: known as former, never valid.
            Ok(conn.execute(
                "UPDATE agents SET old_token_until = 0
                 WHERE old_token_until > 0 AND old_token_until <= ?1",
                params![now],
            )?)
        })
    }
}

#[cfg(test)]
mod tests {
    use postern_protocol::SecretKind;

    use super::*;
    use crate::secrets::new_token;

    /// The backbone's schema, as the first released relay wrote it.
    const FIRST_SCHEMA: &str = "
        CREATE TABLE agents (id TEXT PRIMARY KEY, name TEXT NOT NULL, created_at TEXT NOT NULL,
            token_lookup TEXT NOT NULL, token_hash BLOB NOT NULL, revoked_at TEXT);
        CREATE TABLE api_keys (name TEXT NOT NULL, created_at TEXT NOT NULL,
            key_lookup TEXT NOT NULL, key_hash BLOB NOT NULL, revoked_at TEXT);";

    fn temp_store(tag: &str) -> (SqliteStore, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("postern-store-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        (SqliteStore::open_in(&dir).expect("open"), dir)
    }

    #[test]
    fn agents_live_and_die_by_their_token() {
        let (store, dir) = temp_store("agents");
        let token = new_token(SecretKind::AgentToken);
        let agent = store.create_agent("warehouse-1", &token).expect("create");
        assert_eq!(
            store.agent_for_token(&token).expect("q"),
            Some(agent.clone())
        );
        assert_eq!(
            store.find_agent("warehouse-1").expect("q"),
            Some(agent.clone())
        );
        assert_eq!(store.find_agent(&agent.id).expect("q"), Some(agent.clone()));
        assert!(matches!(
            store.create_agent("warehouse-1", &new_token(SecretKind::AgentToken)),
            Err(StoreError::AgentExists(_))
        ));
        let other = new_token(SecretKind::AgentToken);
        assert_eq!(store.agent_for_token(&other).expect("q"), None);
        store.revoke_agent("warehouse-1").expect("revoke");
        assert_eq!(store.agent_for_token(&token).expect("q"), None);
        assert!(store.list_agents().expect("list").is_empty());
        // The name is free again after revocation.
        store
            .create_agent("warehouse-1", &other)
            .expect("re-create");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn id_shaped_text_is_looked_up_as_an_id_only() {
        let (store, dir) = temp_store("id-shaped");
        let site_a = store
            .create_agent("site-a", &new_token(SecretKind::AgentToken))
            .expect("create");
        assert!(matches!(
            store.create_agent(&site_a.id, &new_token(SecretKind::AgentToken)),
            Err(StoreError::ReservedName(_))
        ));
        // A store written before the rule may hold such a name.
        store
            .with(|conn| {
                conn.execute(
                    "INSERT INTO agents (id, name, created_at, token_lookup, token_hash) VALUES ('agt_other', ?1, 'then', 'x', x'00')",
                    params![site_a.id],
                )?;
                Ok(())
            })
            .expect("insert");
        assert_eq!(
            store.revoke_agent(&site_a.id).expect("revoke").id,
            site_a.id
        );
        assert!(matches!(
            store.revoke_agent(&site_a.id),
            Err(StoreError::AgentNotFound(_))
        ));
        assert_eq!(
            store.find_agent("agt_other").expect("find").map(|a| a.name),
            Some(site_a.id)
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn another_connection_sees_changes() {
        let (store, dir) = temp_store("marker");
        let before = store.change_marker().expect("marker");
        let other = SqliteStore::open_in(&dir).expect("second open");
        other
            .create_api_key("ops", &new_token(SecretKind::ApiKey))
            .expect("key");
        assert_ne!(store.change_marker().expect("marker"), before);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn api_keys_only_by_hash() {
        let (store, dir) = temp_store("keys");
        let key = new_token(SecretKind::ApiKey);
        store.create_api_key("platform", &key).expect("create");
        assert_eq!(
            store.api_key_name(&key).expect("q").as_deref(),
            Some("platform")
        );
        assert_eq!(
            store
                .api_key_name(&new_token(SecretKind::ApiKey))
                .expect("q"),
            None
        );
        assert!(matches!(
            store.create_api_key("bad name", &key),
            Err(StoreError::BadName(_))
        ));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_database_from_before_scopes_and_rotation_keeps_working() {
        let dir = std::env::temp_dir().join(format!("postern-store-old-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join(DB_FILE);
        let key = new_token(SecretKind::ApiKey);
        let token = new_token(SecretKind::AgentToken);
        {
            let old = Connection::open(&path).expect("open");
            old.execute_batch(FIRST_SCHEMA).expect("old schema");
            old.execute(
                "INSERT INTO agents VALUES ('agt_1', 'w1', 'then', ?1, ?2, NULL)",
                params![token.lookup_id(), token.hash().as_slice()],
            )
            .expect("old agent");
            old.execute(
                "INSERT INTO api_keys VALUES ('platform', 'then', ?1, ?2, NULL)",
                params![key.lookup_id(), key.hash().as_slice()],
            )
            .expect("old key");
        }
        let store = SqliteStore::open(&path).expect("migrates");
        let found = store
            .api_key(&key)
            .expect("q")
            .expect("old key still works");
        assert_eq!(found.scope, ApiKeyScope::Admin);
        let agent = store
            .agent_for_token(&token)
            .expect("q")
            .expect("old token works");
        assert_eq!(agent.token_version, 1);
        drop(store);
        assert_eq!(user_version(&path), SCHEMA_VERSION);
        // Opening again is a no-op, not a second ALTER.
        SqliteStore::open(&path).expect("reopens");
        let _ = std::fs::remove_dir_all(dir);
    }

    fn user_version(path: &Path) -> i64 {
        let conn = Connection::open(path).expect("open");
        conn.query_row("PRAGMA user_version", [], |r| r.get(0))
            .expect("user_version")
    }

    /// A relay rolled back over a store a newer one wrote would ignore what it does not
    /// know (an API key's scope, to a relay from before scopes: every key admin).
    #[test]
    fn a_store_a_newer_relay_wrote_is_refused_and_left_as_it_is() {
        let (store, dir) = temp_store("too-new");
        let key = new_token(SecretKind::ApiKey);
        store
            .create_scoped_api_key("platform", &key, ApiKeyScope::Call)
            .expect("key");
        drop(store);
        let path = dir.join(DB_FILE);
        assert_eq!(
            user_version(&path),
            SCHEMA_VERSION,
            "a new store says its schema"
        );
        let newer = Connection::open(&path).expect("newer relay");
        newer
            .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .expect("newer schema");
        newer
            .execute_batch("ALTER TABLE api_keys ADD COLUMN agents TEXT")
            .expect("newer column");
        drop(newer);
        let refused = SqliteStore::open(&path).err().expect("refused");
        assert!(
            matches!(refused, StoreError::TooNew { found, known } if found == SCHEMA_VERSION + 1 && known == SCHEMA_VERSION),
            "{refused:?}"
        );
        let text = refused.to_string();
        assert!(text.contains("newer postern-relay"), "{text}");
        assert_eq!(user_version(&path), SCHEMA_VERSION + 1, "not written back");
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A store from before the added columns, opened while another process migrates it
    /// (holding the write lock for a moment): it waits, then finds the columns there.
    #[test]
    fn two_processes_upgrading_one_store_at_once_both_open_it() {
        let dir =
            std::env::temp_dir().join(format!("postern-store-upgrade-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join(DB_FILE);
        let old = Connection::open(&path).expect("old store");
        old.pragma_update(None, "journal_mode", "WAL").expect("wal");
        old.execute_batch(FIRST_SCHEMA).expect("old schema");
        // The other process: the write lock, the upgrade, and a moment before it commits.
        old.execute_batch("BEGIN IMMEDIATE").expect("lock");
        for (table, column, definition) in ADDED_COLUMNS {
            old.execute_batch(&format!(
                "ALTER TABLE {table} ADD COLUMN {column} {definition}"
            ))
            .expect("alter");
        }
        let other = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            old.execute_batch("COMMIT").expect("commit");
        });
        let store = SqliteStore::open(&path).expect("opens while the other migrates");
        other.join().expect("other");
        store
            .create_agent("w1", &new_token(SecretKind::AgentToken))
            .expect("usable");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn rotation_ends_the_old_token_or_keeps_it_for_the_grace() {
        let (store, dir) = temp_store("rotate");
        let first = new_token(SecretKind::AgentToken);
        store.create_agent("w1", &first).expect("create");
        let second = new_token(SecretKind::AgentToken);
        let now = super::super::unix_now();
        let rotated = store
            .rotate_token("w1", &second, Some(now + 300), &|_| false, &mut |_| Ok(()))
            .expect("rotate");
        assert_eq!(rotated.agent.token_version, 2);
        assert_eq!(rotated.grace_cut, None, "no grace was running");
        let old = store
            .login(&first, now)
            .expect("q")
            .agent()
            .expect("old token in grace");
        assert_eq!(old.token_version, 1);
        assert!(old.agent.accepts_session(1, now));
        assert!(!old.agent.accepts_session(1, now + 301));
        assert!(store.login(&first, now + 301).expect("q").agent().is_none());
        assert_eq!(
            store
                .login(&second, now)
                .expect("q")
                .agent()
                .expect("new")
                .token_version,
            2
        );
        // Rotated again within the grace: the token it kept stops now, and the answer says so.
        let third = new_token(SecretKind::AgentToken);
        let again = store
            .rotate_token("w1", &third, None, &|_| false, &mut |_| Ok(()))
            .expect("rotate again");
        assert_eq!(again.grace_cut, Some(now + 300));
        assert!(store.login(&first, now).expect("q").agent().is_none());
        assert!(store.login(&second, now).expect("q").agent().is_none());
        assert_eq!(
            store
                .login(&third, now)
                .expect("q")
                .agent()
                .expect("third")
                .token_version,
            3
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A write waiting for another process's lock holds the store's connection; lookups
    /// (logins, API keys, the revocation watch) go on beside it instead of queueing, here
    /// for as long as the write waits: it succeeds once the lock is let go.
    #[test]
    fn lookups_do_not_wait_behind_a_write_waiting_for_a_lock() {
        let (store, dir) = temp_store("reader");
        let token = new_token(SecretKind::AgentToken);
        store.create_agent("w1", &token).expect("create");
        let store = std::sync::Arc::new(store);
        let other = Connection::open(dir.join(DB_FILE)).expect("other process");
        other.execute_batch("BEGIN IMMEDIATE").expect("lock");
        let (done, wrote) = std::sync::mpsc::channel();
        let writer = {
            let store = store.clone();
            std::thread::spawn(move || {
                let made = store.create_agent("w2", &new_token(SecretKind::AgentToken));
                let _ = done.send(made.map(|a| a.name));
            })
        };
        // The write is under way, holding the connection, well within its busy timeout.
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            store
                .login(&token, super::super::unix_now())
                .expect("login")
                .agent()
                .is_some()
        );
        assert_eq!(
            store
                .find_agent("w1")
                .expect("find")
                .map(|a| a.name)
                .as_deref(),
            Some("w1")
        );
        store.change_marker().expect("marker");
        assert!(
            wrote.try_recv().is_err(),
            "the write ended before the lookups"
        );
        other.execute_batch("COMMIT").expect("unlock");
        let made = wrote.recv().expect("write");
        assert_eq!(made.expect("the write waited for the lock").as_str(), "w2");
        writer.join().expect("writer");
        // The writer closes last, and takes the WAL with it, as with one connection.
        drop((other, store));
        assert!(!dir.join(format!("{DB_FILE}-wal")).exists());
        let _ = std::fs::remove_dir_all(dir);
    }

    /// Once a grace's end is recorded, a clock stepped back before it does not revive the
    /// old token.
    #[test]
    fn an_ended_grace_stays_ended() {
        let (store, dir) = temp_store("grace-end");
        let first = new_token(SecretKind::AgentToken);
        store.create_agent("w1", &first).expect("create");
        let now = super::super::unix_now();
        let second = new_token(SecretKind::AgentToken);
        store
            .rotate_token("w1", &second, Some(now + 300), &|_| false, &mut |_| Ok(()))
            .expect("rotate");
        assert_eq!(store.end_past_graces(now).expect("none over yet"), 0);
        assert!(store.login(&first, now).expect("q").agent().is_some());
        assert_eq!(store.end_past_graces(now + 301).expect("over"), 1);
        assert!(matches!(
            store.login(&first, now).expect("q"),
            Login::Former(_)
        ));
        assert_eq!(store.end_past_graces(now + 302).expect("again"), 0);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn former_tokens_are_known_as_such() {
        let (store, dir) = temp_store("former");
        let now = super::super::unix_now();
        let kind = |token: &SecretToken, at: i64| match store.login(token, at).expect("q") {
            Login::Agent(login) => format!("agent v{}", login.token_version),
            Login::Former(f) => format!("former {} {:?}", f.agent_name, f.why),
            Login::Unknown => "unknown".to_owned(),
        };
        let first = new_token(SecretKind::AgentToken);
        store.create_agent("w1", &first).expect("create");
        assert_eq!(kind(&first, now), "agent v1", "current");
        let second = new_token(SecretKind::AgentToken);
        store
            .rotate_token("w1", &second, None, &|_| false, &mut |_| Ok(()))
            .expect("rotate");
        assert_eq!(kind(&first, now), "former w1 Rotated", "rotated away");
        // A clock stepped back (NTP after a drift) does not revive it.
        assert_eq!(
            kind(&first, now - 3600),
            "former w1 Rotated",
            "an hour earlier"
        );
        let third = new_token(SecretKind::AgentToken);
        store
            .rotate_token("w1", &third, Some(now + 300), &|_| false, &mut |_| Ok(()))
            .expect("rotate with grace");
        assert_eq!(kind(&second, now), "agent v2", "in its grace");
        assert_eq!(kind(&second, now + 301), "former w1 Rotated", "grace over");
        // Two rotations back, and more: still known, so an agent nobody updated does not
        // count as guessing.
        assert_eq!(kind(&first, now), "former w1 Rotated", "two rotations back");
        let fourth = new_token(SecretKind::AgentToken);
        store
            .rotate_token("w1", &fourth, None, &|_| false, &mut |_| Ok(()))
            .expect("rotate again");
        for (token, what) in [(&first, "first"), (&second, "second"), (&third, "third")] {
            assert_eq!(
                kind(token, now),
                "former w1 Rotated",
                "{what}, after three rotations"
            );
        }
        assert_eq!(kind(&fourth, now), "agent v4");
        let fifth = new_token(SecretKind::AgentToken);
        store
            .rotate_token("w1", &fifth, Some(now + 300), &|_| false, &mut |_| Ok(()))
            .expect("rotate with grace");
        assert_eq!(kind(&fourth, now), "agent v4", "in its grace");
        store.revoke_agent("w1").expect("revoke");
        assert_eq!(kind(&fifth, now), "former w1 Revoked", "revoked");
        assert_eq!(kind(&fourth, now), "former w1 Revoked", "revoked in grace");
        assert_eq!(
            kind(&third, now),
            "former w1 Revoked",
            "retired, then revoked"
        );
        let never = new_token(SecretKind::AgentToken);
        assert_eq!(kind(&never, now), "unknown", "never issued");
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A rotation with a grace, within an earlier one's, whose token no agent has logged
    /// in with (a retry of a rotation whose answer was lost) replaces that unused token
    /// and keeps the one agents are on; a used one is moved out as before.
    #[test]
    fn a_rotation_within_a_grace_keeps_the_token_in_use() {
        let (store, dir) = temp_store("unused");
        let now = super::super::unix_now();
        let kind = |token: &SecretToken| match store.login(token, now).expect("q") {
            Login::Agent(login) => format!("agent v{}", login.token_version),
            Login::Former(_) => "former".to_owned(),
            Login::Unknown => "unknown".to_owned(),
        };
        let rotate = |token: &SecretToken, until: Option<i64>, live: bool| {
            store
                .rotate_token("w1", token, until, &|_| live, &mut |_| Ok(()))
                .expect("rotate")
        };
        let tokens: Vec<SecretToken> = (0..7).map(|_| new_token(SecretKind::AgentToken)).collect();
        let id = store.create_agent("w1", &tokens[0]).expect("create").id;
        let first_use = |token: &SecretToken| match store.login(token, now).expect("q") {
            Login::Agent(login) => login.first_use,
            other => panic!("{other:?}"),
        };
        assert!(first_use(&tokens[0]), "a new agent's token is unused");
        assert!(store.mark_token_used(&id, &tokens[0], now).expect("mark"));
        assert!(!first_use(&tokens[0]));

        let rotation = rotate(&tokens[1], Some(now + 300), false);
        assert!(!rotation.replaced_unused && rotation.grace_cut.is_none());
        // The retry: the token agents are on stays, with the new grace.
        let rotation = rotate(&tokens[2], Some(now + 600), false);
        assert!(rotation.replaced_unused, "{rotation:?}");
        assert_eq!(rotation.grace_cut, None);
        assert_eq!(rotation.agent.old_token_until, Some(now + 600));
        assert_eq!(kind(&tokens[0]), "agent v1", "still in use, in grace");
        assert_eq!(kind(&tokens[1]), "former", "replaced unused");
        assert_eq!(kind(&tokens[2]), "agent v2");
        assert!(
            !store.mark_token_used(&id, &tokens[1], now).expect("mark"),
            "a login with the replaced token, marked after the rotation, is refused"
        );

        // A live session on the current token is a use, before its mark.
        let rotation = rotate(&tokens[3], Some(now + 300), true);
        assert!(!rotation.replaced_unused);
        assert_eq!(rotation.grace_cut, Some(now + 600));
        assert_eq!(kind(&tokens[0]), "former", "moved out");
        assert_eq!(kind(&tokens[2]), "agent v2", "in its grace");

        // Marked at its login: moved out as before. A mark for the token a rotation made
        // the old one still says it works.
        assert!(store.mark_token_used(&id, &tokens[3], now).expect("mark"));
        let rotation = rotate(&tokens[4], Some(now + 300), false);
        assert!(!rotation.replaced_unused);
        assert_eq!(kind(&tokens[3]), "agent v3");
        assert_eq!(kind(&tokens[2]), "former");
        assert!(
            store
                .mark_token_used(&id, &tokens[3], now)
                .expect("mark old")
        );
        assert!(
            first_use(&tokens[4]),
            "marking the old token left the current unused"
        );

        // Without a grace every earlier token ends, used or not.
        let rotation = rotate(&tokens[5], None, false);
        assert!(!rotation.replaced_unused);
        for (token, what) in [(&tokens[3], "third"), (&tokens[4], "fourth")] {
            assert_eq!(kind(token), "former", "{what}");
        }
        assert_eq!(kind(&tokens[5]), "agent v5");
        // Nor is a rotation outside a grace a replacement of an unused token.
        let rotation = rotate(&tokens[6], Some(now + 300), false);
        assert!(!rotation.replaced_unused);
        assert_eq!(kind(&tokens[5]), "agent v5", "in its grace");
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A backup from before the retired-tokens table, restored under a running relay: a
    /// login with an unknown token is still unknown (not a store failure, which skips the
    /// login throttle), and a rotation makes the table again.
    #[test]
    fn a_store_without_the_retired_table_still_logs_in_and_rotates() {
        let (store, dir) = temp_store("no-retired");
        let first = new_token(SecretKind::AgentToken);
        store.create_agent("w1", &first).expect("create");
        let stranger = new_token(SecretKind::AgentToken);
        // Once before, so the statement is cached as a running relay's would be.
        assert!(matches!(store.login(&stranger, 0), Ok(Login::Unknown)));
        store
            .with(|c| Ok(c.execute_batch("DROP TABLE retired_tokens")?))
            .expect("drop");
        let login = store.login(&stranger, 0);
        assert!(matches!(login, Ok(Login::Unknown)), "{login:?}");
        for _ in 0..2 {
            store
                .rotate_token(
                    "w1",
                    &new_token(SecretKind::AgentToken),
                    None,
                    &|_| false,
                    &mut |_| Ok(()),
                )
                .expect("rotate");
        }
        assert!(
            matches!(store.login(&first, 0), Ok(Login::Former(_))),
            "retired again"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn api_keys_have_scopes_and_can_be_revoked() {
        let (store, dir) = temp_store("scopes");
        let key = new_token(SecretKind::ApiKey);
        store
            .create_scoped_api_key("runner", &key, ApiKeyScope::Call)
            .expect("create");
        store
            .create_api_key("ops", &new_token(SecretKind::ApiKey))
            .expect("admin");
        let listed = store.list_api_keys().expect("list");
        assert_eq!(
            listed
                .iter()
                .map(|k| (k.name.as_str(), k.scope))
                .collect::<Vec<_>>(),
            vec![("runner", ApiKeyScope::Call), ("ops", ApiKeyScope::Admin)]
        );
        store.revoke_api_key("runner").expect("revoke");
        assert!(store.api_key(&key).expect("q").is_none());
        assert!(matches!(
            store.revoke_api_key("runner"),
            Err(StoreError::ApiKeyNotFound(_))
        ));
        let _ = std::fs::remove_dir_all(dir);
    }
}
