//! Where the CLI writes a config: the file itself, or the file its symlink points at,
//! judged and held open so that root cannot be led to write or read someone else's file.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::pinned_folder::PinnedFolder;

/// A config file as [`Destination::read_existing`] found it.
pub(super) struct Existing {
    pub(super) bytes: Vec<u8>,
    /// uid, gid.
    pub(super) owner: (u32, u32),
}

/// Where a config's new text goes. A symlink is followed, not replaced: a config linked
/// from where the unit reads it into a folder that is managed or backed up keeps its link,
/// and the real file gets the edit. Run by another user than the link's owner (root, for
/// the service user's link), only a file the link's owner owns is written, as `token set`
/// does for `token_file`: else whoever owns the link could point it at a file of root's
/// and have `sudo postern connection add` rewrite it. A link to nothing is refused.
pub(super) struct Destination {
    /// The file, for messages.
    pub(super) file: PathBuf,
    /// The file as written to: through the pinned folder, if one is held.
    through: PathBuf,
    /// Whose the file must be when it is read (the link's owner, when another user runs
    /// this through their link).
    owner: Option<u32>,
    _pinned: Option<PinnedFolder>,
}

impl Destination {
    pub(super) fn of(path: &Path) -> Result<Self> {
        use std::os::unix::fs::MetadataExt;
        let plain = || Self {
            file: path.to_owned(),
            through: path.to_owned(),
            owner: None,
            _pinned: None,
        };
        let link = match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_symlink() => meta,
            Ok(meta) if meta.is_dir() => return Err(a_folder(path)),
            Ok(_) => return Ok(plain()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(plain()),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let file = std::fs::canonicalize(path).with_context(|| {
            format!(
                "{} is a symlink to a file that does not exist ({}); nothing was written. \
                 Point --config at the file itself",
                path.display(),
                std::fs::read_link(path)
                    .map(|to| to.display().to_string())
                    .unwrap_or_else(|_| "unreadable".to_owned())
            )
        })?;
        let (folder, name) = match (file.parent(), file.file_name()) {
            (Some(folder), Some(name)) => (folder, name),
            _ => bail!(
                "{} links to {}, which is no file",
                path.display(),
                file.display()
            ),
        };
        // Held open from here to the write, whoever runs this: a folder above the file
        // that someone else owns cannot be swapped for a symlink in between.
        let pinned =
            PinnedFolder::open(folder).with_context(|| format!("opening {}", folder.display()))?;
        let through = pinned.join(name);
        let owner = (crate::config::current_uid() != Some(link.uid())).then_some(link.uid());
        if let Some(wanted) = owner {
            let found = std::fs::symlink_metadata(&through)
                .with_context(|| format!("reading {}", file.display()))?
                .uid();
            if found != wanted {
                bail!(
                    "refusing to write {} through the symlink {}: it belongs to {}, but the link \
                     belongs to {}; nothing was written. Pass --config {} to edit that file",
                    file.display(),
                    path.display(),
                    user(found),
                    user(wanted),
                    file.display()
                );
            }
        }
        Ok(Self {
            file,
            through,
            owner,
            _pinned: Some(pinned),
        })
    }

    /// The file's bytes and owner (uid, gid) as it is now, or `None` if there is none. Read
    /// without following a symlink, and judged by what was opened: a file swapped in since
    /// [`Destination::of`] is not read for root into a backup someone else can read.
    pub(super) fn read_existing(&self) -> Result<Option<Existing>> {
        use std::io::Read;
        use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
        let opened = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&self.through);
        let mut file = match opened {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", self.file.display())),
        };
        let meta = file.metadata()?;
        if meta.is_dir() {
            return Err(a_folder(&self.file));
        }
        if !meta.is_file() || self.owner.is_some_and(|owner| owner != meta.uid()) {
            bail!(
                "{} changed while it was being read (it is not the file it was); nothing was written",
                self.file.display()
            );
        }
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .with_context(|| format!("reading {}", self.file.display()))?;
        Ok(Some(Existing {
            bytes,
            owner: (meta.uid(), meta.gid()),
        }))
    }

    /// The write lock of the folder written to, for an edit to hold from its read on.
    pub(super) fn lock(&self) -> Result<crate::config::FolderLock> {
        let folder = crate::config::folder_of(&self.through);
        crate::config::lock_folder(folder)
            .with_context(|| format!("locking {} for the edit", self.file.display()))
    }

    pub(super) fn write(&self, text: &str) -> Result<()> {
        crate::config::write_private(&self.through, text)
            .with_context(|| format!("writing {}", self.file.display()))
    }

    /// The file's name with `suffix` added, in its folder: as written to, and as shown.
    pub(super) fn beside(&self, suffix: &str) -> (PathBuf, PathBuf) {
        let with = |file: &Path| {
            let mut name = file.file_name().unwrap_or_default().to_owned();
            name.push(suffix);
            file.with_file_name(name)
        };
        (with(&self.through), with(&self.file))
    }
}

/// The file an edit went to, for messages: the path given, or where its symlink led.
pub(super) fn written(path: &Path, file: &Path) -> String {
    if path == file {
        path.display().to_string()
    } else {
        format!(
            "{} (the file the symlink {} points at)",
            file.display(),
            path.display()
        )
    }
}

/// `name (uid N)`, or `uid N` for a user /etc/passwd does not name.
pub(super) fn user(uid: u32) -> String {
    let name = std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|text| {
            text.lines().find_map(|line| {
                let mut fields = line.split(':');
                let name = fields.next()?;
                let id: u32 = fields.nth(1)?.parse().ok()?;
                (id == uid).then(|| name.to_owned())
            })
        });
    match name {
        Some(name) => format!("{name} (uid {uid})"),
        None => format!("uid {uid}"),
    }
}

/// `--config` naming a folder (`/etc/postern` for `/etc/postern/agent.toml`), a common slip.
pub(super) fn a_folder(path: &Path) -> anyhow::Error {
    anyhow::anyhow!("{}; nothing was written", crate::config::a_folder(path))
}
