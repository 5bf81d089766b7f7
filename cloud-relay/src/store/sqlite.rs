//! The SQLite store: one file in the state folder, WAL mode, so `postern-relay
//! agent …` commands can change it while `serve` runs and every change is durable.

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use postern_protocol::SecretToken;
use rusqlite::{Connection, OptionalExtension, params};
use subtle::ConstantTimeEq;

use super::{AgentRecord, Store, StoreError, check_name};
use crate::secrets::new_id;

pub const DB_FILE: &str = "relay.db";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS agents (
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    token_lookup TEXT NOT NULL,
    token_hash   BLOB NOT NULL,
    revoked_at   TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS agents_active_name ON agents(name) WHERE revoked_at IS NULL;
CREATE INDEX IF NOT EXISTS agents_token_lookup ON agents(token_lookup);
CREATE TABLE IF NOT EXISTS api_keys (
    name        TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    key_lookup  TEXT NOT NULL,
    key_hash    BLOB NOT NULL,
    revoked_at  TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS api_keys_active_name ON api_keys(name) WHERE revoked_at IS NULL;
CREATE INDEX IF NOT EXISTS api_keys_lookup ON api_keys(key_lookup);
";

pub struct SqliteStore {
    conn: Mutex<Connection>,
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
        crate::host_key::ensure_state_dir(state_dir).map_err(|e| StoreError::Folder {
            path: state_dir.to_owned(),
            source: std::io::Error::other(e.to_string()),
        })?;
        Self::open(&state_dir.join(DB_FILE))
    }

    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = Connection::open(path)?;
        // Another process (the CLI) may hold the write lock for a moment.
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.execute_batch(SCHEMA)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
        }
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        // A panic while holding the lock leaves SQLite consistent; keep going.
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        f(&conn)
    }
}

fn row_to_agent(row: &rusqlite::Row<'_>) -> rusqlite::Result<AgentRecord> {
    Ok(AgentRecord {
        id: row.get(0)?,
        name: row.get(1)?,
        created_at: row.get(2)?,
    })
}

fn find_active(conn: &Connection, id_or_name: &str) -> Result<Option<AgentRecord>, StoreError> {
    let by = |column: &str| {
        conn.query_row(
            &format!(
                "SELECT id, name, created_at FROM agents WHERE {column} = ?1 AND revoked_at IS NULL"
            ),
            params![id_or_name],
            row_to_agent,
        )
        .optional()
    };
    Ok(match by("id")? {
        Some(agent) => Some(agent),
        None => by("name")?,
    })
}

/// Compares every candidate (no early exit), so timing says nothing about which matched.
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
        check_name(name)?;
        let record = AgentRecord {
            id: new_id("agt_"),
            name: name.to_owned(),
            created_at: now_rfc3339(),
        };
        self.with(|conn| {
            conn.execute(
                "INSERT INTO agents (id, name, created_at, token_lookup, token_hash) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![record.id, record.name, record.created_at, token.lookup_id(), token.hash().as_slice()],
            )
            .map_err(|e| if is_unique_violation(&e) { StoreError::AgentExists(name.to_owned()) } else { e.into() })?;
            Ok(record)
        })
    }

    fn find_agent(&self, id_or_name: &str) -> Result<Option<AgentRecord>, StoreError> {
        self.with(|conn| find_active(conn, id_or_name))
    }

    fn list_agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
        self.with(|conn| {
            let mut stmt = conn.prepare(
                "SELECT id, name, created_at FROM agents WHERE revoked_at IS NULL ORDER BY created_at, rowid",
            )?;
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

    fn agent_for_token(&self, token: &SecretToken) -> Result<Option<AgentRecord>, StoreError> {
        self.with(|conn| {
            let mut stmt = conn.prepare(
                "SELECT id, name, created_at, token_hash FROM agents WHERE token_lookup = ?1 AND revoked_at IS NULL",
            )?;
            let candidates = stmt
                .query_map(params![token.lookup_id()], |row| {
                    Ok((row_to_agent(row)?, row.get::<_, Vec<u8>>(3)?))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(pick_by_hash(candidates, &token.hash()))
        })
    }

    fn create_api_key(&self, name: &str, key: &SecretToken) -> Result<(), StoreError> {
        check_name(name)?;
        self.with(|conn| {
            conn.execute(
                "INSERT INTO api_keys (name, created_at, key_lookup, key_hash) VALUES (?1, ?2, ?3, ?4)",
                params![name, now_rfc3339(), key.lookup_id(), key.hash().as_slice()],
            )
            .map_err(|e| if is_unique_violation(&e) { StoreError::ApiKeyExists(name.to_owned()) } else { e.into() })?;
            Ok(())
        })
    }

    fn api_key_name(&self, key: &SecretToken) -> Result<Option<String>, StoreError> {
        self.with(|conn| {
            let mut stmt = conn.prepare(
                "SELECT name, key_hash FROM api_keys WHERE key_lookup = ?1 AND revoked_at IS NULL",
            )?;
            let candidates = stmt
                .query_map(params![key.lookup_id()], |row| {
                    Ok((row.get::<_, String>(0)?, row.get::<_, Vec<u8>>(1)?))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(pick_by_hash(candidates, &key.hash()))
        })
    }

    fn change_marker(&self) -> Result<i64, StoreError> {
        self.with(|conn| Ok(conn.query_row("PRAGMA data_version", [], |r| r.get(0))?))
    }
}

#[cfg(test)]
mod tests {
    use postern_protocol::SecretKind;

    use super::*;
    use crate::secrets::new_token;

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
}
