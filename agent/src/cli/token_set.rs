//! `postern token set`: writes a new access token where the config takes it from, and
//! only where the config's owner could have written it.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use postern_protocol::{SecretKind, SecretToken};
use toml_edit::{Item, value};

use super::destination::{user, written};
use super::edit::{open, save};
use super::out;
use super::pinned_folder::PinnedFolder;

/// `token set`: from `--token-file`, else stdin (a prompt on a terminal).
pub(crate) fn set_token(path: &Path, token_file: Option<&Path>) -> Result<()> {
    let text =
        super::init::read_token(token_file, None, "New access token (pst_…): ", "token set")?;
    let token =
        SecretToken::parse(SecretKind::AgentToken, &text).context("the new token is not valid")?;
    let mut editing = open(path)?;
    let doc = &mut editing.doc;
    let next_step = "run `postern reload` (or `systemctl reload postern-agent`) to use it";
    if let Some(env) = doc.get("token_env").and_then(Item::as_str) {
        bail!(
            "{} takes the token from the environment variable {env}, which postern cannot \
             change: set it where the agent's environment is defined (for the service, the \
             root-only file its drop-in names with EnvironmentFile=; never Environment=, \
             which any local user can read), then restart the agent",
            path.display()
        );
    }
    if let Some(file) = doc.get("token_file").and_then(Item::as_str) {
        // The config names where the token lives: that file changes, the config stays.
        let base = path.parent().unwrap_or(Path::new("."));
        let named = base.join(file);
        let target = token_file_target(&named)?;
        let Some(name) = target.file_name() else {
            bail!("token_file {} names no file", target.display());
        };
        let folder = crate::config::folder_of(&target);
        let pinned =
            PinnedFolder::open(folder).with_context(|| format!("opening {}", folder.display()))?;
        check_token_file_owner(path, &target, &pinned, folder)?;
        crate::config::write_private(&pinned.join(name), &format!("{}\n", token.expose()))
            .with_context(|| format!("writing {}", target.display()))?;
        out::stdout(|out| writeln!(out, "token updated in {}; {next_step}", target.display()))?;
        return Ok(());
    }
    // In place, so a comment after the old value (`# rotated in March`) stays.
    match doc.get_mut("token").and_then(Item::as_value_mut) {
        Some(old) => {
            let decor = old.decor().clone();
            *old = token.expose().into();
            *old.decor_mut() = decor;
        }
        None => doc["token"] = value(token.expose()),
    }
    let file = save(path, &editing, None)?;
    let file = written(path, &file);
    out::stdout(|out| writeln!(out, "token updated in {file}; {next_step}"))?;
    Ok(())
}

/// The file `token_file` names, with symlinks resolved: a link (to a secrets folder, say)
/// keeps pointing where it did. A link to nothing is refused rather than replaced by a
/// file (the token would land beside the config, not where the link leads); a file not
/// made yet is placed in its folder, resolved.
fn token_file_target(named: &Path) -> Result<PathBuf> {
    match std::fs::canonicalize(named) {
        Ok(target) => return Ok(target),
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("token_file {}", named.display()));
        }
        Err(_) => {}
    }
    if let Ok(to) = std::fs::read_link(named) {
        bail!(
            "token_file {} is a symlink to {}, which does not exist; nothing was written. \
             Make the file it points at, or point token_file at the file itself",
            named.display(),
            to.display()
        );
    }
    let Some(name) = named.file_name() else {
        bail!("token_file {} names no file", named.display());
    };
    let folder = std::fs::canonicalize(crate::config::folder_of(named))
        .with_context(|| format!("token_file {}: its folder", named.display()))?;
    Ok(folder.join(name))
}

/// Refuses to replace a token file the config's owner does not own, unless that owner is
/// who runs this. The config (and /etc/postern) belong to the service user, and admins
/// run `sudo postern token set`: a compromised service account could otherwise point
/// `token_file`, or a symlink, at /etc/sudoers and have root replace it. A file not made
/// yet is judged by the folder it would be made in. `target` (in `folder`) is for the
/// message; what is judged is what is written, through `pinned`.
fn check_token_file_owner(
    config: &Path,
    target: &Path,
    pinned: &PinnedFolder,
    folder: &Path,
) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let config_owner = std::fs::metadata(config)
        .with_context(|| format!("reading {}", config.display()))?
        .uid();
    if crate::config::current_uid() == Some(config_owner) {
        return Ok(());
    }
    let name = target.file_name().unwrap_or_default();
    let (judged, what) = match std::fs::metadata(pinned.join(name)) {
        Ok(meta) => (meta, format!("{} belongs to", target.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let meta = pinned
                .metadata()
                .with_context(|| format!("reading {}", folder.display()))?;
            (
                meta,
                format!(
                    "{} does not exist, and its folder {} belongs to",
                    target.display(),
                    folder.display()
                ),
            )
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", target.display())),
    };
    if judged.uid() == config_owner {
        return Ok(());
    }
    let config_owner = user(config_owner);
    bail!(
        "refusing to write the token: {what} {}, but {} belongs to {config_owner}, who \
         chooses token_file there; nothing was written. Point token_file at a file \
         {config_owner} owns, or replace the token file yourself",
        user(judged.uid()),
        config.display()
    )
}
