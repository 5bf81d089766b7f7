//! `postern init`: writes a validated config (0600) with the token read from a
//! file, `POSTERN_TOKEN` or a prompt, never from an argument; `token set` reads its own here.

use std::io::{IsTerminal, Read};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use postern_protocol::{SecretKind, SecretToken};
use toml_edit::{DocumentMut, Item};

use super::destination::Destination;
use crate::config::{self, AgentConfig};

/// The variable `var`, `None` when unset; one set to bytes that are not UTF-8 is no token,
/// and said so rather than taken as unset (which would ask for the token instead).
fn variable(var: &str) -> Result<Option<String>> {
    match std::env::var(var) {
        Ok(value) => Ok(Some(value)),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => {
            bail!("{var} is set but is not valid UTF-8, so it holds no access token")
        }
    }
}

/// The access token, trimmed: from `file`, else the variable `var` (`init`'s
/// `POSTERN_TOKEN`), else a prompt on a terminal, else stdin; never from an argument.
/// `command` is named in the error when none was given.
pub(super) fn read_token(
    file: Option<&Path>,
    var: Option<&str>,
    prompt: &str,
    command: &str,
) -> Result<String> {
    let given = if let Some(file) = file {
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?
    } else if let Some(token) = var.map(variable).transpose()?.flatten() {
        token
    } else if std::io::stdin().is_terminal() {
        rpassword::prompt_password(prompt)?
    } else {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text)?;
        text
    };
    let given = given.trim();
    if given.is_empty() {
        let other = match var {
            Some(var) => format!("set {var}"),
            None => "give it on stdin".to_owned(),
        };
        bail!(
            "no access token given: pass --token-file FILE, {other}, or run `postern {command}` on a terminal to be asked for it"
        );
    }
    Ok(given.to_owned())
}

pub(crate) fn init(
    path: &Path,
    relay: &str,
    fingerprint: &str,
    token_file: Option<&Path>,
    force: bool,
) -> Result<()> {
    if path.is_dir() {
        return Err(super::destination::a_folder(path));
    }
    if path.exists() && !force {
        bail!(
            "{} exists already; pass --force to replace it",
            path.display()
        );
    }
    // Before asking for the token: a typo in the address should not cost pasting it.
    if let Some(problem) = config::relay_problem(relay) {
        bail!("--{problem}");
    }
    let given = read_token(
        token_file,
        Some("POSTERN_TOKEN"),
        "Access token (pst_…): ",
        "init",
    )?;
    let token = SecretToken::parse(SecretKind::AgentToken, &given)
        .context("the access token is not valid")?;
    let text = format!(
        "# Written by `postern init`. Add [connections.<name>] tables; see agent.example.toml in\n\
         # /usr/share/doc/postern/ (install.sh: /usr/local/share/doc/postern/; source: packaging/).\n\
         relay = {}\nrelay_fingerprint = {}\ntoken = {}\n",
        toml_string(relay),
        toml_string(fingerprint),
        toml_string(token.expose()),
    );
    // Validate before writing, so a bad relay or fingerprint never lands on disk.
    let file = config::ConfigFile::parse(&text)?;
    AgentConfig::resolve(file, Path::new("."), &|_| {
        Err(std::env::VarError::NotPresent)
    })?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    // Where the config goes, then what is there now, read as it is judged.
    let destination = Destination::of(path)?;
    // With an old file: the new text with its connections, and what to say of both.
    let (text, kept) = match destination.read_existing()? {
        None => (text, None),
        Some(old) => {
            let old_text = std::str::from_utf8(&old.bytes).ok();
            let (text, kept) = carry_connections(path, &text, old_text)?;
            let backup = back_up(&destination, &old.bytes, old.owner)?;
            (text, Some((backup, kept)))
        }
    };
    destination.write(&text)?;
    let file = super::destination::written(path, &destination.file);
    let mut said = format!("wrote {file} (mode 0600)\n");
    if let Some((backup, kept)) = kept {
        said.push_str(&format!(
            "the previous config was kept as {} (mode 0600); {kept}\n",
            backup.display()
        ));
    }
    super::out::stdout(|out| out.write_all(said.as_bytes()))
}

/// `text` with the old config's `[connections.*]` that would load in it, and what to say
/// of them. As README promises, one that would not (a key file gone, a base URI `run`
/// refuses: a file edited by hand may hold anything) is left in the backup and named,
/// not allowed to stop `--force`: carried over, it would have made a config that `run`
/// refuses after `init` had said all was well. A secret only the service's environment
/// sets (`secret_env`) is not needed here, as for any edit.
fn carry_connections(path: &Path, text: &str, old: Option<&str>) -> Result<(String, String)> {
    // `None`: an old file that is not UTF-8.
    let Some(old) = old else {
        let said = "it is not UTF-8 text, so none of its connections were carried over: copy \
                    them back from it by hand";
        return Ok((text.to_owned(), said.to_owned()));
    };
    let Ok(old_doc) = old.parse::<DocumentMut>() else {
        let said = "it is not valid TOML, so none of its connections were carried over: copy \
                    them back from it by hand";
        return Ok((text.to_owned(), said.to_owned()));
    };
    let others = other_settings(&old_doc);
    let Some((mut connections, names)) = connections_of(&old_doc) else {
        return Ok((
            text.to_owned(),
            with_others("it had no connections", &others),
        ));
    };
    let mut doc: DocumentMut = text.parse().context("the new config")?;
    let mut carried = Vec::new();
    let mut left = Vec::new();
    let mut unchecked = Vec::new();
    for name in names {
        let (problems, unset) = problems_alone(path, &doc, &connections, &name);
        if problems.is_empty() {
            carried.push(name);
            unchecked.extend(unset);
        } else {
            left.push((name, problems));
        }
    }
    if let Some(table) = connections.as_table_like_mut() {
        for (name, _) in &left {
            table.remove(name);
        }
    }
    if !carried.is_empty() {
        doc["connections"] = connections;
    }
    if !unchecked.is_empty() {
        eprintln!(
            "note: not checked here, as this shell does not set them (the service's environment must; `postern reload` checks them there):\n  {}",
            unchecked.join("\n  ")
        );
    }
    Ok((
        doc.to_string(),
        with_others(&said_of(&carried, &left), &others),
    ))
}

/// What would stop connection `name` of `connections` from loading in the new config
/// `doc`, judged alone, as `run` would load it; and apart, the variables this shell does
/// not set (which the service's environment may).
fn problems_alone(
    path: &Path,
    doc: &DocumentMut,
    connections: &Item,
    name: &str,
) -> (Vec<String>, Vec<String>) {
    let mut with = doc.clone();
    with["connections"] = connections.clone();
    let with = super::edit::only_connection(&with, name);
    match super::edit::problems(&with.to_string(), path) {
        Ok(found) => found
            .into_iter()
            .partition(|p| !config::is_unset_variable(p)),
        Err(e) => (vec![format!("connections.{name}: {e}")], Vec::new()),
    }
}

/// The connections carried over, and those left in the backup with why.
fn said_of(carried: &[String], left: &[(String, Vec<String>)]) -> String {
    let mut said = Vec::new();
    if !carried.is_empty() {
        said.push(format!(
            "its connections {} are in the new one",
            carried.join(", ")
        ));
    }
    if !left.is_empty() {
        let names: Vec<&str> = left.iter().map(|(name, _)| name.as_str()).collect();
        let why: Vec<&str> = left
            .iter()
            .flat_map(|(_, problems)| problems.iter().map(String::as_str))
            .collect();
        said.push(format!(
            "{} not carried over: left in the backup, as {} would not load (fix and copy back what you need):\n  {}",
            names.join(", "),
            if left.len() == 1 { "it" } else { "they" },
            why.join("\n  ")
        ));
    }
    said.join("; ")
}

/// The old file's top-level settings `init` does not carry over: `relay`,
/// `relay_fingerprint` and `token` are the new ones given, `connections` are carried.
fn other_settings(old: &DocumentMut) -> Vec<String> {
    const REPLACED: [&str; 4] = ["relay", "relay_fingerprint", "token", "connections"];
    old.iter()
        .map(|(key, _)| key.to_owned())
        .filter(|key| !REPLACED.contains(&key.as_str()))
        .collect()
}

/// `said`, then the old file's other settings that were not carried over, by name: a
/// `status_socket` left behind, unsaid, sent `postern reload` to another socket.
fn with_others(said: &str, others: &[String]) -> String {
    if others.is_empty() {
        return said.to_owned();
    }
    // After a list of problems, on a line of its own.
    let join = if said.contains('\n') { "\n" } else { "; " };
    format!(
        "{said}{join}its other settings ({}) are not carried over: copy back what you need",
        others.join(", ")
    )
}

/// The `connections` of a config, with their names; `None` when it has none.
fn connections_of(doc: &DocumentMut) -> Option<(Item, Vec<String>)> {
    let connections = doc.get("connections")?;
    let names: Vec<String> = connections
        .as_table_like()?
        .iter()
        .map(|(name, _)| name.to_owned())
        .collect();
    (!names.is_empty()).then(|| (connections.clone(), names))
}

/// Keeps `old`, the config `init --force` replaces, beside the file the config is (through
/// a symlink too) as `<file>.bak`, or `.bak.1`, `.bak.2`… when that is taken, so a second
/// `--force` does not lose the first one's original: mode 0600 and the old file's owner
/// and group (`owner`), as it holds the old token.
fn back_up(destination: &Destination, old: &[u8], owner: (u32, u32)) -> Result<PathBuf> {
    const MOST: usize = 100;
    let free = (0..MOST)
        .map(|n| match n {
            0 => destination.beside(".bak"),
            n => destination.beside(&format!(".bak.{n}")),
        })
        .find(|(through, _)| std::fs::symlink_metadata(through).is_err());
    let Some((backup, shown)) = free else {
        bail!(
            "{MOST} backups of {} are kept already (.bak, .bak.1 …): remove some; nothing was written",
            destination.file.display()
        );
    };
    config::write_private_bytes(&backup, old, Some(owner)).with_context(|| {
        format!(
            "keeping the previous config as {}; nothing was written",
            shown.display()
        )
    })?;
    Ok(shown)
}

fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}
