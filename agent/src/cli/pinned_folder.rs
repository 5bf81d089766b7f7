//! A folder held open while root writes a file in it for someone else (`token set`), so
//! the folder checked is the folder written to, whatever happens to the path above it.

use std::fs::{File, Metadata};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// Paths through `/proc/self/fd/N` resolve to the folder opened, not to what its name
/// points at now: a service user who owns a folder above it cannot swap in a symlink
/// (to /etc, say) between the owner check and the write.
pub(crate) struct PinnedFolder {
    open: File,
    through: PathBuf,
}

impl PinnedFolder {
    pub(crate) fn open(folder: &Path) -> io::Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        // A folder, and that one: not a FIFO (an open that never returns) nor a symlink
        // swapped in for the folder checked a moment ago.
        let open = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
            .open(folder)?;
        let through = PathBuf::from(format!("/proc/self/fd/{}", open.as_raw_fd()));
        // Without /proc every path through it would read as missing.
        std::fs::metadata(&through).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "cannot reach it through {} ({e}); is /proc mounted?",
                    through.display()
                ),
            )
        })?;
        Ok(Self { open, through })
    }

    /// `name` in this folder.
    pub(crate) fn join(&self, name: &std::ffi::OsStr) -> PathBuf {
        self.through.join(name)
    }

    /// The folder's own metadata (its owner, when the file is not there yet).
    pub(crate) fn metadata(&self) -> io::Result<Metadata> {
        self.open.metadata()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Removes its path, a folder or a file, however the test ends (a `?` included).
    struct Removed(PathBuf);

    impl Drop for Removed {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
            let _ = std::fs::remove_file(&self.0);
        }
    }

    #[test]
    fn a_write_lands_in_the_folder_opened_after_its_path_is_swapped() -> io::Result<()> {
        let base = std::env::temp_dir().join(format!("pinned-folder-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let _removed = Removed(base.clone());
        let (held, elsewhere) = (base.join("held"), base.join("elsewhere"));
        std::fs::create_dir_all(&held)?;
        std::fs::create_dir_all(&elsewhere)?;
        let pinned = PinnedFolder::open(&held)?;
        // What a hostile owner of `base` could do between the check and the write.
        std::fs::rename(&held, base.join("moved"))?;
        std::os::unix::fs::symlink(&elsewhere, &held)?;
        crate::config::write_private(&pinned.join("token".as_ref()), "pst_new\n")?;
        let landed = std::fs::read_to_string(base.join("moved/token"));
        let swapped_in = elsewhere.join("token").exists();
        assert_eq!(landed?, "pst_new\n");
        assert!(!swapped_in, "the write followed the swapped-in symlink");
        Ok(())
    }

    #[test]
    fn a_file_is_not_a_folder() -> io::Result<()> {
        let file = std::env::temp_dir().join(format!("pinned-file-{}", std::process::id()));
        let _removed = Removed(file.clone());
        std::fs::write(&file, "")?;
        let opened = PinnedFolder::open(&file);
        assert!(opened.is_err());
        Ok(())
    }
}
