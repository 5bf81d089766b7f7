//! Files the config names that the config's owner, the user the agent runs as, could not
//! read: what an edit or check run as root (`sudo postern …`) would pass and `run` refuse.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::ConfigFile;

/// One line per named file the config's owner could not read, when this process is root
/// and the config is another user's: the file's own mode, and each folder on its way. A
/// file or folder open to a group, or to all, is taken as open: the owner may be in that
/// group (`ssl-cert`), which is not looked up.
pub fn unreadable_by_owner(config: &Path, file: &ConfigFile) -> Vec<String> {
    if postern_process::current_uid() != Some(0) {
        return Vec::new();
    }
    let Ok(owner) = std::fs::metadata(config).map(|m| m.uid()) else {
        return Vec::new();
    };
    if owner == 0 {
        return Vec::new();
    }
    let base = config.parent().unwrap_or(Path::new("."));
    file.named_files(base)
        .into_iter()
        .filter_map(|(place, path)| {
            let why = closed_to(owner, &path)?;
            Some(format!(
                "{place}: {}: {why}, and the agent runs as uid {owner}, the config's owner",
                path.display()
            ))
        })
        .collect()
}

/// Why `uid` could not read `path`, if it could not (a file not there is `run`'s to say).
fn closed_to(uid: u32, path: &Path) -> Option<String> {
    let meta = std::fs::metadata(path).ok()?;
    for folder in path
        .ancestors()
        .skip(1)
        .filter(|f| !f.as_os_str().is_empty())
    {
        let Ok(m) = std::fs::metadata(folder) else {
            continue;
        };
        if !open_to(uid, &m, 0o100, 0o011) {
            return Some(format!(
                "its folder {} is closed to it (uid {}'s, mode {:o})",
                folder.display(),
                m.uid(),
                m.mode() & 0o777
            ));
        }
    }
    if open_to(uid, &meta, 0o400, 0o044) {
        return None;
    }
    Some(if meta.uid() == uid {
        format!(
            "not readable by its owner (mode {:o}): `chmod u+r {}`",
            meta.mode() & 0o777,
            path.display()
        )
    } else {
        format!(
            "readable by uid {} only (mode {:o}): `chown {uid} {}`",
            meta.uid(),
            meta.mode() & 0o777,
            path.display()
        )
    })
}

/// Whether `uid` has `own` (if it owns `m`) or one of `others` (group, other) on it.
fn open_to(uid: u32, m: &std::fs::Metadata, own: u32, others: u32) -> bool {
    if m.uid() == uid {
        m.mode() & own != 0
    } else {
        m.mode() & others != 0
    }
}
