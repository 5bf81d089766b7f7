//! The relay's identity: an Ed25519 SSH host key made on first start and kept
//! in the state folder (0600), and its fingerprint in OpenSSH's `SHA256:…` form.

use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use russh::keys::ssh_key::LineEnding;
use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::{HashAlg, PrivateKey};

pub const HOST_KEY_FILE: &str = "ssh_host_ed25519_key";
/// A key being written; a crash may leave one behind, which nothing reads.
const TEMP_PREFIX: &str = ".ssh_host_ed25519_key.tmp-";

/// Each says its cause in its message and exposes none as its source: ssh-key's errors
/// repeat their own sources in their messages, so a `{:#}` chain would say them again.
#[derive(Debug, thiserror::Error)]
pub enum HostKeyError {
    #[error("cannot create state folder {path}: {error}{}", read_only_hint(.error))]
    StateDir {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error(
        "no host key at {path}: `postern-relay serve` creates it on first start (is the state folder right?)"
    )]
    Missing { path: PathBuf },
    #[error("cannot read host key {path}: {error}{}", not_ours_hint(.path, .error))]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("cannot write host key {path}: {error}{}", read_only_hint(.error))]
    Write {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("cannot encode a new host key for {path}: {error}")]
    Encode {
        path: PathBuf,
        error: russh::keys::ssh_key::Error,
    },
    #[error("host key {path} is not an OpenSSH private key: {error}")]
    Parse {
        path: PathBuf,
        error: russh::keys::ssh_key::Error,
    },
    #[error("host key {path} is readable by other users (mode {mode:o}); run: chmod 600 {path}")]
    Permissions { path: PathBuf, mode: u32 },
    /// ssh-key reads such a key, fingerprint and all, but cannot sign with it: every
    /// agent's handshake would fail while the relay looked well.
    #[error(
        "host key {path} is protected by a passphrase, which the relay cannot type: remove it with `ssh-keygen -p -N '' -f {path}` (the fingerprint stays the same)"
    )]
    Encrypted { path: PathBuf },
}

/// A key file another user owns (made by a `serve` or CLI command run once as root):
/// says whose it is, and the chown that lets the relay's user read it.
fn not_ours_hint(path: &Path, error: &std::io::Error) -> String {
    if error.kind() != std::io::ErrorKind::PermissionDenied {
        return String::new();
    }
    let Some(uid) = postern_process::current_uid() else {
        return String::new();
    };
    let folder = path.parent().unwrap_or(path);
    // The file's owner, or the folder's when the folder itself keeps the relay out (a
    // volume an older image's user made).
    let (what, owner) = match (std::fs::metadata(path), std::fs::metadata(folder)) {
        (Ok(meta), _) => ("it belongs", meta.uid()),
        (Err(_), Ok(meta)) => ("its folder belongs", meta.uid()),
        (Err(_), Err(_)) => return String::new(),
    };
    if owner == uid {
        return String::new();
    }
    format!(
        "; {what} to uid {owner}, and the relay runs as uid {uid} (was a command run once as root?): give the state folder back to the relay's user, e.g. `chown -R postern-relay: {}`",
        folder.display()
    )
}

/// Makes sure the state folder exists, 0700: made so, or narrowed to it when the relay
/// owns a folder made wider beforehand (its files are 0600 either way, but their names and
/// the folder's growth are nobody else's business). One the relay does not own is left
/// as it is, with a warning.
pub fn ensure_state_dir(dir: &Path) -> std::io::Result<()> {
    let meta = match std::fs::metadata(dir) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir);
        }
        Err(e) => return Err(e),
    };
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 == 0 {
        return Ok(());
    }
    // Root running a CLI command must not close a folder others use (`/srv`, or `/tmp`:
    // shared by design, sticky) to them.
    let ours = postern_process::current_uid() == Some(meta.uid());
    if !ours || mode & 0o1000 != 0 {
        tracing::warn!(
            folder = %dir.display(),
            mode = format!("{mode:o}"),
            owner = meta.uid(),
            "state folder is open to other users and is not the relay's own: give the relay a folder of its own (0700)"
        );
        return Ok(());
    }
    let narrowed = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    match narrowed {
        Ok(()) => tracing::info!(
            folder = %dir.display(),
            was = format!("{mode:o}"),
            "state folder narrowed to mode 700"
        ),
        Err(e) => tracing::warn!(
            folder = %dir.display(),
            mode = format!("{mode:o}"),
            error = %e,
            "state folder is open to other users and cannot be narrowed: chmod 700 it"
        ),
    }
    Ok(())
}

use std::os::unix::fs::DirBuilderExt;

/// What to do when the state folder's file system is read-only: under the packaged unit
/// (`ProtectSystem=strict`) that is everything but /var/lib/postern-relay, and chown or a
/// remount would not help. The folder is made first: systemd fails to start a unit whose
/// `ReadWritePaths=` does not exist (226/NAMESPACE) before the relay could say anything.
fn read_only_hint(error: &std::io::Error) -> &'static str {
    if error.kind() == std::io::ErrorKind::ReadOnlyFilesystem {
        concat!(
            "; under the packaged unit only /var/lib/postern-relay may be written: use it, ",
            "or make the folder (`install -d -o postern-relay -g postern-relay -m 0700 ",
            "THE_FOLDER`) and then let the unit write it (`systemctl edit postern-relay`: ",
            "[Service] ReadWritePaths=THE_FOLDER), in that order, as systemd does not start ",
            "a unit whose ReadWritePaths= is missing"
        )
    } else {
        ""
    }
}

/// Loads the host key, creating it (and the state folder) on first start.
pub fn load_or_create(state_dir: &Path) -> Result<PrivateKey, HostKeyError> {
    ensure_state_dir(state_dir).map_err(|error| HostKeyError::StateDir {
        path: state_dir.to_owned(),
        error,
    })?;
    match load(state_dir) {
        Err(HostKeyError::Missing { path }) => create(state_dir, &path, write_key),
        loaded => loaded,
    }
}

/// Loads an existing host key; never creates one, so a mistyped state folder is an
/// error instead of a new identity no agent has pinned.
pub fn load(state_dir: &Path) -> Result<PrivateKey, HostKeyError> {
    let path = state_dir.join(HOST_KEY_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(HostKeyError::Missing { path });
        }
        Err(error) => return Err(HostKeyError::Read { path, error }),
    };
    let mode = std::fs::metadata(&path)
        .map_err(|error| HostKeyError::Read {
            path: path.clone(),
            error,
        })?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(HostKeyError::Permissions {
            path,
            mode: mode & 0o7777,
        });
    }
    let key = PrivateKey::from_openssh(text).map_err(|error| HostKeyError::Parse {
        path: path.clone(),
        error,
    })?;
    if key.is_encrypted() {
        return Err(HostKeyError::Encrypted { path });
    }
    Ok(key)
}

fn write_key(file: &mut std::fs::File, text: &[u8]) -> std::io::Result<()> {
    file.write_all(text)
}

/// Writes the key to a temp file beside it and links it into place only once it is
/// whole and on disk: a crash midway leaves a stray temp file, never a key file that
/// is empty or cut short, which would stop every later start.
fn create(
    state_dir: &Path,
    path: &Path,
    write: impl FnOnce(&mut std::fs::File, &[u8]) -> std::io::Result<()>,
) -> Result<PrivateKey, HostKeyError> {
    let mut seed = [0u8; 32];
    rand::fill(&mut seed);
    let key = PrivateKey::from(Ed25519Keypair::from_seed(&seed));
    let text = key
        .to_openssh(LineEnding::LF)
        .map_err(|error| HostKeyError::Encode {
            path: path.to_owned(),
            error,
        })?;
    let mut nonce = [0u8; 8];
    rand::fill(&mut nonce);
    let temp = state_dir.join(format!(
        "{TEMP_PREFIX}{}-{}",
        std::process::id(),
        u64::from_le_bytes(nonce)
    ));
    let written = write_temp(&temp, text.as_bytes(), write).and_then(|()| {
        // A hard link, not a rename: it never replaces a key another relay starting
        // on the same folder at the same moment has just put there.
        std::fs::hard_link(&temp, path)
    });
    let _ = std::fs::remove_file(&temp);
    match written {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return load(state_dir),
        Err(error) => {
            return Err(HostKeyError::Write {
                path: path.to_owned(),
                error,
            });
        }
    }
    // The new name must reach the disk too, or a crash could forget the key after an
    // agent pinned it.
    std::fs::File::open(state_dir)
        .and_then(|dir| dir.sync_all())
        .map_err(|error| HostKeyError::Write {
            path: path.to_owned(),
            error,
        })?;
    Ok(key)
}

fn write_temp(
    temp: &Path,
    text: &[u8],
    write: impl FnOnce(&mut std::fs::File, &[u8]) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(temp)?;
    write(&mut file, text)?;
    file.sync_all()
}

/// The fingerprint exactly as `ssh-keygen -lf` prints it: `SHA256:` + unpadded base64.
pub fn fingerprint(key: &PrivateKey) -> String {
    key.public_key().fingerprint(HashAlg::Sha256).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_only_state_folder_names_the_units_way_out() {
        let error = HostKeyError::StateDir {
            path: "/srv/relay".into(),
            error: std::io::ErrorKind::ReadOnlyFilesystem.into(),
        };
        let said = error.to_string();
        assert!(said.contains("ReadWritePaths=THE_FOLDER"), "{said}");
        assert!(said.contains("install -d -o postern-relay"), "{said}");
        let error = HostKeyError::StateDir {
            path: "/srv/relay".into(),
            error: std::io::ErrorKind::PermissionDenied.into(),
        };
        assert!(!error.to_string().contains("ReadWritePaths"), "{error}");
    }

    /// A key ssh-keygen protected with a passphrase parses, fingerprint and all, but could
    /// sign no handshake: refused at load, saying how to remove the passphrase.
    #[test]
    fn a_passphrase_protected_key_is_refused_with_the_way_out() {
        let dir = fresh_dir("encrypted");
        std::fs::create_dir_all(&dir).expect("mkdir");
        let path = dir.join(HOST_KEY_FILE);
        let made = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "a passphrase", "-f"])
            .arg(&path)
            .status()
            .expect("ssh-keygen (openssh-client) must be installed");
        assert!(made.success());
        let error = load(&dir).expect_err("an encrypted key loaded");
        assert!(matches!(error, HostKeyError::Encrypted { .. }), "{error}");
        assert!(error.to_string().contains("ssh-keygen -p -N ''"), "{error}");
        // Without the passphrase, the same file loads.
        let removed = std::process::Command::new("ssh-keygen")
            .args(["-q", "-p", "-P", "a passphrase", "-N", "", "-f"])
            .arg(&path)
            .status()
            .expect("ssh-keygen -p");
        assert!(removed.success());
        load(&dir).expect("the key without its passphrase");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A key the relay's user cannot read because another user owns it (a command run
    /// once as root) names the owner and the chown; other read errors get no such hint.
    #[test]
    fn a_key_owned_by_another_user_names_the_chown() {
        let me = postern_process::current_uid().expect("uid");
        let dir = fresh_dir("not-ours");
        std::fs::create_dir_all(&dir).expect("mkdir");
        let ours = dir.join("ours");
        std::fs::write(&ours, "x").expect("write");
        // Root can give a file away; anyone else finds one root owns.
        let theirs = if me == 0 {
            let theirs = dir.join("theirs");
            std::fs::write(&theirs, "x").expect("write");
            std::os::unix::fs::chown(&theirs, Some(65534), None).expect("chown");
            theirs
        } else {
            PathBuf::from("/")
        };
        let owner = std::fs::metadata(&theirs).expect("meta").uid();
        let denied = || std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        let read = |path: &Path, error| HostKeyError::Read {
            path: path.to_owned(),
            error,
        };
        let said = read(&theirs, denied()).to_string();
        assert!(
            said.contains(&format!(
                "belongs to uid {owner}, and the relay runs as uid {me}"
            )) && said.contains("chown -R postern-relay:"),
            "{said}"
        );
        assert!(!read(&ours, denied()).to_string().contains("chown"));
        let other = std::io::Error::from(std::io::ErrorKind::InvalidData);
        assert!(!read(&theirs, other).to_string().contains("chown"));
        // A file that cannot be looked at (its folder keeps the relay out): the folder's owner.
        let shut = if me == 0 {
            let shut = dir.join("shut");
            std::fs::create_dir(&shut).expect("mkdir");
            std::os::unix::fs::chown(&shut, Some(65534), None).expect("chown");
            shut
        } else {
            PathBuf::from("/")
        };
        let folder_owner = std::fs::metadata(&shut).expect("meta").uid();
        let said = read(&shut.join("no-such-key"), denied()).to_string();
        assert!(
            said.contains(&format!("its folder belongs to uid {folder_owner}")),
            "{said}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn creates_once_then_loads_the_same_key() {
        let dir = std::env::temp_dir().join(format!("postern-hostkey-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let first = load_or_create(&dir).expect("create");
        let second = load_or_create(&dir).expect("load");
        assert_eq!(fingerprint(&first), fingerprint(&second));
        assert!(fingerprint(&first).starts_with("SHA256:"));
        assert!(!fingerprint(&first).ends_with('='));
        let mode = std::fs::metadata(dir.join(HOST_KEY_FILE))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::set_permissions(
            dir.join(HOST_KEY_FILE),
            std::fs::Permissions::from_mode(0o644),
        )
        .expect("chmod");
        assert!(matches!(
            load_or_create(&dir),
            Err(HostKeyError::Permissions { .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_state_folder_open_to_others_is_narrowed_to_the_owner() {
        let dir = std::env::temp_dir().join(format!("postern-statedir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).expect("mkdir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        ensure_state_dir(&dir).expect("state folder");
        let mode = std::fs::metadata(&dir).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn folders_shared_by_design_or_owned_by_others_are_left_open() {
        let base = std::env::temp_dir().join(format!("postern-shared-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let mode_of = |dir: &Path| std::fs::metadata(dir).expect("meta").permissions().mode();
        // Like /tmp.
        let sticky = base.join("sticky");
        std::fs::create_dir_all(&sticky).expect("mkdir");
        std::fs::set_permissions(&sticky, std::fs::Permissions::from_mode(0o1777)).expect("chmod");
        ensure_state_dir(&sticky).expect("state folder");
        assert_eq!(mode_of(&sticky) & 0o7777, 0o1777);
        // Like /srv when root runs a CLI command on a state_dir pointed at it.
        let theirs = base.join("theirs");
        std::fs::create_dir_all(&theirs).expect("mkdir");
        std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        match std::os::unix::fs::chown(&theirs, Some(65534), None) {
            Ok(()) => {
                ensure_state_dir(&theirs).expect("state folder");
                assert_eq!(mode_of(&theirs) & 0o777, 0o755);
            }
            // Giving a folder away takes root.
            Err(e) => eprintln!("SKIPPED a folder owned by another user: {e}"),
        }
        let _ = std::fs::remove_dir_all(&base);
    }

    fn fresh_dir(tag: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("postern-hostkey-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        ensure_state_dir(&dir).expect("state folder");
        dir
    }

    #[test]
    fn a_crash_while_writing_the_key_does_not_break_the_next_start() {
        let dir = fresh_dir("crash");
        let path = dir.join(HOST_KEY_FILE);
        // The "crash": half the key written, then the write fails.
        let crashed = create(&dir, &path, |file, text| {
            file.write_all(&text[..text.len() / 2])?;
            Err(std::io::Error::other("power cut"))
        });
        assert!(matches!(crashed, Err(HostKeyError::Write { .. })));
        // Leftovers of crashed attempts, empty and cut short.
        std::fs::write(dir.join(format!("{TEMP_PREFIX}1-1")), "").expect("empty temp");
        std::fs::write(
            dir.join(format!("{TEMP_PREFIX}2-2")),
            "-----BEGIN OPENSSH PRIVATE KEY-----\n",
        )
        .expect("partial temp");
        let first = load_or_create(&dir).expect("the next start makes a key");
        let second = load_or_create(&dir).expect("and the one after loads it");
        assert_eq!(fingerprint(&first), fingerprint(&second));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn load_never_creates_a_key() {
        let dir = fresh_dir("load");
        assert!(matches!(load(&dir), Err(HostKeyError::Missing { .. })));
        assert!(!dir.join(HOST_KEY_FILE).exists());
        let made = load_or_create(&dir).expect("create");
        let loaded = load(&dir).expect("load");
        assert_eq!(fingerprint(&made), fingerprint(&loaded));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
