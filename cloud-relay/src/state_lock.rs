//! One `serve` per state folder: an exclusive lock on `serve.lock` in it, held while
//! the relay runs, which the system lets go when the process ends however it ends.

use std::fs::{File, OpenOptions, TryLockError};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

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
    let io = |error| StateLockError::Io {
        lock: lock.clone(),
        error,
    };
    // Readable by all (it is empty, in a 0700 folder): one left by a `serve` run as root
    // can still be opened, read-only, and locked by the relay's own user.
    // Never through a link: whoever can write the folder could point one at any file,
    // and a `serve` run as root would open it, and make it readable to all.
    let opened = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&lock);
    let file = match opened {
        Ok(file) => {
            // Whatever the umask (the unit's is 077), a lock file this user owns; one of
            // another user's stays as it is.
            use std::os::unix::fs::{MetadataExt, PermissionsExt};
            let ours = file
                .metadata()
                .map(|m| Some(m.uid()) == postern_process::current_uid());
            if ours.unwrap_or(false) {
                let _ = file.set_permissions(std::fs::Permissions::from_mode(0o644));
            }
            file
        }
        // A read-only folder or disk: a lock file left there still locks (read access is
        // enough); without one, the relay runs unlocked, and says so.
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::ReadOnlyFilesystem | std::io::ErrorKind::PermissionDenied
            ) =>
        {
            match OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&lock)
            {
                Ok(file) => file,
                Err(_) => {
                    tracing::warn!(lock = %lock.display(), error = %e, "cannot make or open the state folder's lock file: nothing stops a second relay from serving from this folder too");
                    return Ok(StateLock { _held: None });
                }
            }
        }
        Err(e) => return Err(io(e)),
    };
    match file.try_lock() {
        Ok(()) => Ok(StateLock { _held: Some(file) }),
        Err(TryLockError::WouldBlock) => Err(StateLockError::InUse {
            folder: state_dir.to_owned(),
            lock,
        }),
        Err(TryLockError::Error(error)) => Err(io(error)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A lock file another user made (a `serve` run once as root) and this one cannot
    /// write still locks: it is opened read-only.
    #[test]
    fn a_lock_file_that_cannot_be_written_still_locks() {
        use std::os::unix::fs::PermissionsExt;
        let dir =
            std::env::temp_dir().join(format!("postern-state-lock-ro-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        drop(hold(&dir).expect("made"));
        let lock = dir.join(LOCK_FILE);
        let mode = std::fs::metadata(&lock).expect("meta").permissions().mode();
        assert_eq!(
            mode & 0o777,
            0o644,
            "readable by the relay's user whoever made it"
        );
        // Not writable by its owner either: a user other than root opens it read-only (root
        // writes whatever the mode says, so as root this checks the mode and the lock only).
        std::fs::set_permissions(&lock, std::fs::Permissions::from_mode(0o444)).expect("chmod");
        let first = hold(&dir).expect("read-only, still locked");
        assert!(matches!(hold(&dir), Err(StateLockError::InUse { .. })));
        drop(first);
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A lock file that is a link is not followed: a `serve` run as root must not open,
    /// nor change the mode of, whatever file the folder's writer pointed it at.
    #[test]
    fn a_linked_lock_file_is_not_followed() {
        use std::os::unix::fs::PermissionsExt;
        let dir =
            std::env::temp_dir().join(format!("postern-state-lock-link-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let target = dir.join("secret");
        std::fs::write(&target, "x").expect("write");
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        std::os::unix::fs::symlink(&target, dir.join(LOCK_FILE)).expect("link");
        let refused = hold(&dir).expect_err("a linked lock file");
        assert!(matches!(refused, StateLockError::Io { .. }), "{refused}");
        let mode = std::fs::metadata(&target)
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the link's target was changed");
        let _ = std::fs::remove_dir_all(dir);
    }

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
