//! An exclusive lock on a file, held while a program runs: one relay per state folder,
//! one agent per status socket. The system lets it go when the process ends, however.

use std::fs::{File, OpenOptions, TryLockError};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

#[derive(Debug)]
pub enum LockFile {
    /// Ours until dropped.
    Held(File),
    /// Another process holds it.
    Busy,
    /// Neither made nor opened (a read-only folder or disk without one): nothing locks.
    Unavailable(std::io::Error),
}

/// Makes `path` if missing and tries to lock it, without waiting.
pub fn try_lock(path: &Path) -> std::io::Result<LockFile> {
    // Readable by all (it is empty): one left by a run as root can still be opened,
    // read-only, and locked by another user. Never through a link: whoever can write the
    // folder could point one at any file, and a run as root would open it and chmod it.
    let opened = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path);
    let file = match opened {
        Ok(file) => {
            // Whatever the umask (the units' is 077), a lock file this user owns; one of
            // another user's stays as it is.
            use std::os::unix::fs::{MetadataExt, PermissionsExt};
            let ours = file
                .metadata()
                .map(|m| Some(m.uid()) == crate::current_uid());
            if ours.unwrap_or(false) {
                let _ = file.set_permissions(std::fs::Permissions::from_mode(0o644));
            }
            file
        }
        // A read-only folder or disk: a lock file left there still locks (read access
        // is enough).
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::ReadOnlyFilesystem | std::io::ErrorKind::PermissionDenied
            ) =>
        {
            match OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(path)
            {
                Ok(file) => file,
                Err(_) => return Ok(LockFile::Unavailable(e)),
            }
        }
        Err(e) => return Err(e),
    };
    match file.try_lock() {
        Ok(()) => Ok(LockFile::Held(file)),
        Err(TryLockError::WouldBlock) => Ok(LockFile::Busy),
        Err(TryLockError::Error(e)) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn folder(tag: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("postern-lock-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        dir
    }

    #[test]
    fn a_second_holder_is_busy_until_the_first_lets_go() {
        let dir = folder("second");
        let lock = dir.join("x.lock");
        let first = try_lock(&lock).expect("first");
        assert!(matches!(first, LockFile::Held(_)), "{first:?}");
        assert!(matches!(try_lock(&lock), Ok(LockFile::Busy)));
        drop(first);
        assert!(matches!(try_lock(&lock), Ok(LockFile::Held(_))));
        let _ = std::fs::remove_dir_all(dir);
    }

    /// One another user made (a run as root) and this one cannot write still locks: it
    /// is opened read-only.
    #[test]
    fn a_lock_file_that_cannot_be_written_still_locks() {
        let dir = folder("ro");
        let lock = dir.join("x.lock");
        drop(try_lock(&lock).expect("made"));
        let mode = std::fs::metadata(&lock).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o644, "readable by all whoever made it");
        // Not writable by its owner either: a user other than root opens it read-only
        // (root writes whatever the mode says, so as root this checks the mode and the
        // lock only).
        std::fs::set_permissions(&lock, std::fs::Permissions::from_mode(0o444)).expect("chmod");
        let first = try_lock(&lock).expect("read-only");
        assert!(matches!(first, LockFile::Held(_)), "{first:?}");
        assert!(matches!(try_lock(&lock), Ok(LockFile::Busy)));
        drop(first);
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A link is not followed: a run as root must not open, nor change the mode of,
    /// whatever file the folder's writer pointed it at.
    #[test]
    fn a_linked_lock_file_is_not_followed() {
        let dir = folder("link");
        let target = dir.join("secret");
        std::fs::write(&target, "x").expect("write");
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let lock = dir.join("x.lock");
        std::os::unix::fs::symlink(&target, &lock).expect("link");
        let refused = try_lock(&lock).expect_err("a linked lock file");
        assert_eq!(refused.raw_os_error(), Some(libc::ELOOP), "{refused}");
        let mode = std::fs::metadata(&target)
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the link's target was changed");
        let _ = std::fs::remove_dir_all(dir);
    }
}
