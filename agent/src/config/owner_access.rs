//! Files the config names that the config's owner, the user the agent runs as, could not
//! read: what an edit or check run as root (`sudo postern …`) would pass and `run` refuse.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::ConfigFile;

/// One line per named file only another user can read, when this process is root and
/// the config is another user's. A file readable by a group, or by all, is taken as
/// readable: the owner may be in that group (`ssl-cert`), which is not looked up.
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
            let meta = std::fs::metadata(&path).ok()?;
            let mode = meta.mode() & 0o777;
            let readable = if meta.uid() == owner {
                mode & 0o400 != 0
            } else {
                mode & 0o044 != 0
            };
            (!readable).then(|| {
                format!(
                    "{place}: {} can be read by uid {} only (mode {mode:o}), not by uid {owner}, the config's owner, whom the agent runs as: `chown --reference={} {}`",
                    path.display(),
                    meta.uid(),
                    config.display(),
                    path.display()
                )
            })
        })
        .collect()
}
