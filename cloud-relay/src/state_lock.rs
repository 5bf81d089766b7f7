//! One `serve` per state folder: an exclusive lock on `serve.lock` in it, held while
//! the relay runs, which the system lets go when the process ends however it ends.

use std::fs::File;
use std::path::{Path, PathBuf};

use postern_process::lock_file::{LockFile, try_lock};

pub const LOCK_FILE: &str = "serve.lock";

#[derive(Debug, thiserror::Error)]
pub enum StateLockError {
    /// Two relays on one folder would share its store but not their sessions: an agent
    /// online on one would show offline on the other, and calls would fail at random.
    #[error(
        "another `postern-relay serve` uses the state folder {}: its lock {} is held; stop that relay first, or give this one a state folder of its own",
        .folder.display(), .lock.display()
    )]
    InUse { folder: PathBuf, lock: PathBuf },
    #[error("cannot lock the state folder's {}: {error}", .lock.display())]
    Io {
        lock: PathBuf,
        error: std::io::Error,
    },
}

/// Holds the folder's lock until dropped; none on a folder the relay cannot write where
/// no lock file was left (a read-only store serves calls, so it must start).
#[derive(Debug)]
pub struct StateLock {
    _held: Option<File>,
}

/// Takes the lock on `state_dir` (which must exist), or says who holds it.
pub fn hold(state_dir: &Path) -> Result<StateLock, StateLockError> {
    let lock = state_dir.join(LOCK_FILE);
    match try_lock(&lock) {
        Ok(LockFile::Held(file)) => Ok(StateLock { _held: Some(file) }),
        Ok(LockFile::Busy) => Err(StateLockError::InUse {
            folder: state_dir.to_owned(),
            lock,
        }),
        Ok(LockFile::Unavailable(e)) => {
            tracing::warn!(lock = %lock.display(), error = %e, "cannot make or open the state folder's lock file: nothing stops a second relay from serving from this folder too");
            Ok(StateLock { _held: None })
        }
        Err(error) => Err(StateLockError::Io { lock, error }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_until_the_first_lets_go() {
        let dir = std::env::temp_dir().join(format!("postern-state-lock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let first = hold(&dir).expect("first");
        let second = hold(&dir).expect_err("a second holder");
        assert!(matches!(second, StateLockError::InUse { .. }), "{second}");
        assert!(
            second.to_string().contains("stop that relay first"),
            "{second}"
        );
        drop(first);
        hold(&dir).expect("free again");
        let _ = std::fs::remove_dir_all(dir);
    }
}
