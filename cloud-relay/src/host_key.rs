//! The relay's identity: an Ed25519 SSH host key made on first start and kept
//! in the state folder (0600), and its fingerprint in OpenSSH's `SHA256:…` form.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use russh::keys::ssh_key::LineEnding;
use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::{HashAlg, PrivateKey};

pub const HOST_KEY_FILE: &str = "ssh_host_ed25519_key";

#[derive(Debug, thiserror::Error)]
pub enum HostKeyError {
    #[error("cannot create state folder {path}: {source}")]
    StateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read host key {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write host key {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("host key {path} is not an OpenSSH private key: {source}")]
    Parse {
        path: PathBuf,
        source: russh::keys::ssh_key::Error,
    },
    #[error("host key {path} is readable by other users (mode {mode:o}); run: chmod 600 {path}")]
    Permissions { path: PathBuf, mode: u32 },
}

/// Makes sure the state folder exists (0700 when created).
pub fn ensure_state_dir(dir: &Path) -> Result<(), HostKeyError> {
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| HostKeyError::StateDir {
                path: dir.to_owned(),
                source,
            })?;
    }
    Ok(())
}

use std::os::unix::fs::DirBuilderExt;

/// Loads the host key, creating it (and the state folder) on first start.
pub fn load_or_create(state_dir: &Path) -> Result<PrivateKey, HostKeyError> {
    ensure_state_dir(state_dir)?;
    let path = state_dir.join(HOST_KEY_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let mode = std::fs::metadata(&path)
                .map_err(|source| HostKeyError::Read {
                    path: path.clone(),
                    source,
                })?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                return Err(HostKeyError::Permissions { path, mode });
            }
            PrivateKey::from_openssh(text).map_err(|source| HostKeyError::Parse { path, source })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => create(&path),
        Err(source) => Err(HostKeyError::Read { path, source }),
    }
}

fn create(path: &Path) -> Result<PrivateKey, HostKeyError> {
    let mut seed = [0u8; 32];
    rand::fill(&mut seed);
    let key = PrivateKey::from(Ed25519Keypair::from_seed(&seed));
    let text = key
        .to_openssh(LineEnding::LF)
        .map_err(|source| HostKeyError::Parse {
            path: path.to_owned(),
            source,
        })?;
    let write_err = |source| HostKeyError::Write {
        path: path.to_owned(),
        source,
    };
    // create_new: two relays starting at once on one folder must not both write a key.
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(write_err)?;
    file.write_all(text.as_bytes()).map_err(write_err)?;
    file.sync_all().map_err(write_err)?;
    Ok(key)
}

/// The fingerprint exactly as `ssh-keygen -lf` prints it: `SHA256:` + unpadded base64.
pub fn fingerprint(key: &PrivateKey) -> String {
    key.public_key().fingerprint(HashAlg::Sha256).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
