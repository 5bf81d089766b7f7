//! Editing the config from the CLI: `connection add|remove|show` and `token set`.
//! Edits keep the file's comments and layout (toml_edit), are validated whole before
//! they are written, and are written atomically with mode 0600 and the file's owner kept.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use postern_protocol::{SecretKind, SecretToken};
use toml_edit::{DocumentMut, InlineTable, Item, Table, TableLike, value};

use super::out;
use super::pinned_folder::PinnedFolder;
use crate::config::{AgentConfig, ConfigError, ConfigFile};

/// What `connection add` was asked for.
#[derive(Debug, clap::Args)]
pub(crate) struct NewConnection {
    /// The connection's name, as calls through the relay name it.
    pub name: String,
    /// The internal API's base, e.g. https://erp.internal/api; call paths go after it.
    #[arg(long)]
    pub base_uri: String,
    /// How long to wait for the internal server's answer (default 30s).
    #[arg(long)]
    pub timeout: Option<String>,
    /// `none` or `jwt_bearer`.
    #[arg(long, default_value = "none", value_parser = ["none", "jwt_bearer"])]
    pub auth: String,
    /// jwt_bearer: HS256/384/512, RS256/384/512, PS256/384/512, ES256, ES384 or EdDSA.
    #[arg(long)]
    pub algorithm: Option<String>,
    /// jwt_bearer: the private key PEM file (relative to the config's folder).
    #[arg(long)]
    pub private_key_file: Option<String>,
    /// jwt_bearer: the variable holding the private key PEM (in the service's environment).
    #[arg(long)]
    pub private_key_env: Option<String>,
    /// jwt_bearer, HS*: the file holding the shared secret (relative to the config's folder).
    #[arg(long)]
    pub secret_file: Option<String>,
    /// jwt_bearer, HS*: the variable holding the shared secret (in the service's environment).
    #[arg(long)]
    pub secret_env: Option<String>,
    /// jwt_bearer, HS*: how the secret is written: `text` (its UTF-8 bytes, the default) or
    /// `base64` (random bytes; standard or URL-safe alphabet, padding optional).
    #[arg(long, value_parser = ["text", "base64"])]
    pub secret_encoding: Option<String>,
    /// A JWT header, KEY=VALUE (repeatable); always a string (`kid=1` is "1").
    #[arg(long = "header")]
    pub headers: Vec<String>,
    /// A payload claim, KEY=VALUE (repeatable); values may be templates like {{now + 600}}.
    /// An integer written plainly (`exp=1700000000`) is a number, anything else a string;
    /// quote it for a string of digits: sub='"12345"'.
    #[arg(long = "payload")]
    pub payload: Vec<String>,
    /// Overwrite a connection of that name.
    #[arg(long)]
    pub replace: bool,
}

fn load(path: &Path) -> Result<DocumentMut> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.parse::<DocumentMut>()
        .with_context(|| format!("{} is not valid TOML", path.display()))
}

/// Validates the edited document as `run` would load it, then replaces the file. An edit
/// is refused for the problems it brings, not for those the config had before, nor for a
/// secret from an environment variable this shell lacks: the service's environment
/// (`secret_env`) is not an admin's shell. Those are named as not checked.
fn save(path: &Path, doc: &DocumentMut) -> Result<PathBuf> {
    let text = doc.to_string();
    let before = std::fs::read_to_string(path).ok();
    check(path, before.as_deref(), &text)?;
    write_config(path, &text)
}

/// `save`'s validation of `text`, the new content of `path`, which held `before`.
pub(super) fn check(path: &Path, before: Option<&str>, text: &str) -> Result<()> {
    let base = path.parent().unwrap_or(Path::new("."));
    let after = problems(text, base).context("the edited config would not parse")?;
    let (unchecked, after): (Vec<String>, Vec<String>) = after
        .into_iter()
        .partition(|p| crate::config::is_unset_variable(p));
    if !after.is_empty() {
        let before = before
            .and_then(|old| problems(old, base).ok())
            .unwrap_or_default();
        let new: Vec<&str> = after
            .iter()
            .filter(|p| !before.contains(p))
            .map(String::as_str)
            .collect();
        if !new.is_empty() {
            bail!(
                "the edited config is not valid; nothing was written:\n  {}",
                new.join("\n  ")
            );
        }
        eprintln!(
            "note: the config still has problems it had before this edit (run `postern config check` where the service's environment is set):\n  {}",
            after.join("\n  ")
        );
    }
    if !unchecked.is_empty() {
        eprintln!(
            "note: not checked here, as this shell does not set them (the service's environment must; `postern reload` checks them there):\n  {}",
            unchecked.join("\n  ")
        );
    }
    Ok(())
}

/// Replaces the config at `path` with `text` (atomically, 0600, its owner kept) and returns
/// the file written.
fn write_config(path: &Path, text: &str) -> Result<PathBuf> {
    let destination = Destination::of(path)?;
    destination.write(text)?;
    Ok(destination.file)
}

/// Where a config's new text goes. A symlink is followed, not replaced: a config linked
/// from where the unit reads it into a folder that is managed or backed up keeps its link,
/// and the real file gets the edit. Run by another user than the link's owner (root, for
/// the service user's link), only a file the link's owner owns is written, as `token set`
/// does for `token_file`: else whoever owns the link could point it at a file of root's
/// and have `sudo postern connection add` rewrite it. A link to nothing is refused.
/// A config file as [`Destination::read_existing`] found it.
pub(super) struct Existing {
    pub(super) bytes: Vec<u8>,
    /// uid, gid.
    pub(super) owner: (u32, u32),
}

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

/// What `run` would refuse in `text`, one line each; an error if it does not parse.
fn problems(text: &str, base: &Path) -> Result<Vec<String>> {
    let file = ConfigFile::parse(text)?;
    Ok(
        match AgentConfig::resolve(file, base, &|name| std::env::var(name).ok()) {
            Ok(_) => Vec::new(),
            Err(ConfigError::Problems(list)) => list,
            Err(e) => vec![e.to_string()],
        },
    )
}

fn pairs(items: &[String], what: &str) -> Result<Vec<(String, String)>> {
    items
        .iter()
        .map(|item| {
            item.split_once('=')
                .map(|(k, v)| (k.trim().to_owned(), v.to_owned()))
                .filter(|(k, _)| !k.is_empty())
                .with_context(|| format!("--{what} {item:?} must be KEY=VALUE"))
        })
        .collect()
}

pub(crate) fn add(path: &Path, new: NewConnection) -> Result<()> {
    let mut doc = load(path)?;
    let connections = doc
        .entry("connections")
        .or_insert(Item::Table(Table::new()))
        .as_table_mut()
        .context("`connections` in the config is not a table")?;
    connections.set_implicit(true);
    if connections.contains_key(&new.name) && !new.replace {
        bail!(
            "connection {:?} exists already; pass --replace to overwrite it",
            new.name
        );
    }
    let mut table = Table::new();
    table["base_uri"] = value(new.base_uri.as_str());
    if let Some(timeout) = &new.timeout {
        table["timeout"] = value(timeout.as_str());
    }
    let jwt_options = [
        ("--algorithm", new.algorithm.is_some()),
        ("--private-key-file", new.private_key_file.is_some()),
        ("--private-key-env", new.private_key_env.is_some()),
        ("--secret-file", new.secret_file.is_some()),
        ("--secret-env", new.secret_env.is_some()),
        ("--secret-encoding", new.secret_encoding.is_some()),
        ("--header", !new.headers.is_empty()),
        ("--payload", !new.payload.is_empty()),
    ];
    let given: Vec<&str> = jwt_options
        .iter()
        .filter(|(_, given)| *given)
        .map(|(flag, _)| *flag)
        .collect();
    if new.auth != "jwt_bearer" && !given.is_empty() {
        bail!(
            "{} need --auth jwt_bearer (the connection's auth is {:?})",
            given.join(", "),
            new.auth
        );
    }
    // Else the config's parser would say it, about a line of a file the user never sees.
    if new.auth == "jwt_bearer" && new.algorithm.is_none() {
        let names: Vec<&str> = crate::jwt::Algorithm::ALL
            .iter()
            .map(|a| a.as_str())
            .collect();
        bail!("--auth jwt_bearer needs --algorithm ({})", names.join(", "));
    }
    let mut auth = Table::new();
    auth["type"] = value(new.auth.as_str());
    for (key, v) in [
        ("algorithm", &new.algorithm),
        ("private_key_file", &new.private_key_file),
        ("private_key_env", &new.private_key_env),
        ("secret_file", &new.secret_file),
        ("secret_env", &new.secret_env),
        ("secret_encoding", &new.secret_encoding),
    ] {
        if let Some(v) = v {
            auth[key] = value(v.as_str());
        }
    }
    for (key, list, typed) in [
        ("headers", pairs(&new.headers, "header")?, false),
        ("payload", pairs(&new.payload, "payload")?, true),
    ] {
        if !list.is_empty() {
            let mut inline = InlineTable::new();
            for (k, v) in list {
                inline.insert(&k, if typed { claim(&v) } else { v.into() });
            }
            auth[key] = value(inline);
        }
    }
    table["auth"] = Item::Table(auth);
    connections[&new.name] = Item::Table(table);
    let file = save(path, &doc)?;
    let file = written(path, &file);
    out::stdout(|out| writeln!(out, "connection {:?} added to {file}", new.name))?;
    Ok(())
}

/// A payload value as typed on the command line: an integer written as one is a number
/// (`0012` is not: it would lose its zeros), `"…"` a string as it is inside the quotes,
/// anything else (templates included) a string.
fn claim(text: &str) -> toml_edit::Value {
    if let Some(quoted) = text.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
        return quoted.into();
    }
    match text.parse::<i64>() {
        Ok(n) if n.to_string() == text => n.into(),
        _ => text.into(),
    }
}

pub(crate) fn remove(path: &Path, name: &str) -> Result<()> {
    let mut doc = load(path)?;
    let removed = doc
        .get_mut("connections")
        .and_then(Item::as_table_mut)
        .and_then(|t| t.remove(name));
    let Some(removed) = removed else {
        bail!("no connection {name:?} in {}", path.display());
    };
    keep_loose_comments(&mut doc, &removed);
    let file = save(path, &doc)?;
    let file = written(path, &file);
    out::stdout(|out| writeln!(out, "connection {name:?} removed from {file}"))?;
    Ok(())
}

/// toml_edit files every comment above a table header with that table, also a block that a
/// blank line sets apart from it, which is about what follows or the whole file (`# managed
/// by ansible`). Only the comment lines right above a removed table's header (or its
/// sub-tables') go with it; such blocks move, in their order, above the next table, or to
/// the end of the file when none follows.
fn keep_loose_comments(doc: &mut DocumentMut, removed: &Item) {
    let mut gone = Vec::new();
    headed_tables(removed, &mut |table| {
        if let Some(at) = table.position() {
            let prefix = table
                .decor()
                .prefix()
                .and_then(|p| p.as_str())
                .unwrap_or("");
            gone.push((at, loose_comments(prefix).to_owned()));
        }
    });
    gone.sort_by_key(|(at, _)| *at);
    let Some(last) = gone.last().map(|(at, _)| *at) else {
        return;
    };
    let blocks: Vec<&str> = gone
        .iter()
        .map(|(_, text)| text.trim_start_matches(['\n', '\r']))
        .filter(|text| !text.is_empty())
        .collect();
    if blocks.is_empty() {
        return;
    }
    // A blank line before each block and after the last, as they stood.
    let kept = format!("\n{}", blocks.join("\n"));
    let mut next: Option<isize> = None;
    for (_, item) in doc.iter() {
        headed_tables(item, &mut |table| {
            if let Some(at) = table.position().filter(|at| *at > last) {
                next = Some(next.map_or(at, |n| n.min(at)));
            }
        });
    }
    let Some(next) = next else {
        let trailing = doc.trailing().as_str().unwrap_or("").to_owned();
        doc.set_trailing(format!("{trailing}{kept}"));
        return;
    };
    for (_, item) in doc.iter_mut() {
        headed_tables_mut(item, &mut |table| {
            if table.position() == Some(next) {
                let prefix = table
                    .decor()
                    .prefix()
                    .and_then(|p| p.as_str())
                    .unwrap_or("\n");
                let prefix = format!("{kept}\n{}", prefix.trim_start_matches(['\n', '\r']));
                table.decor_mut().set_prefix(prefix);
            }
        });
    }
}

/// The part of a table's prefix that is not the comment block right above its header:
/// everything up to the last blank line before it, without its trailing blank lines; empty
/// when that part holds no comment.
fn loose_comments(prefix: &str) -> &str {
    let mut attached_from = prefix.len();
    for line in prefix.split_inclusive('\n').rev() {
        if !line.trim_start().starts_with('#') {
            break;
        }
        attached_from -= line.len();
    }
    let loose = prefix[..attached_from].trim_end_matches([' ', '\t', '\r', '\n']);
    if loose.lines().any(|line| line.trim_start().starts_with('#')) {
        // Keep the line end of its last comment.
        &prefix[..loose.len() + prefix[loose.len()..].find('\n').map_or(0, |n| n + 1)]
    } else {
        ""
    }
}

/// Calls `visit` on `item` and every table under it that has a `[header]` of its own.
fn headed_tables(item: &Item, visit: &mut dyn FnMut(&Table)) {
    let tables: Vec<&Table> = match item {
        Item::Table(table) => vec![table],
        Item::ArrayOfTables(array) => array.iter().collect(),
        _ => return,
    };
    for table in tables {
        if !table.is_implicit() {
            visit(table);
        }
        for (_, inner) in table.iter() {
            headed_tables(inner, visit);
        }
    }
}

fn headed_tables_mut(item: &mut Item, visit: &mut dyn FnMut(&mut Table)) {
    let tables: Vec<&mut Table> = match item {
        Item::Table(table) => vec![table],
        Item::ArrayOfTables(array) => array.iter_mut().collect(),
        _ => return,
    };
    for table in tables {
        if !table.is_implicit() {
            visit(table);
        }
        for (_, inner) in table.iter_mut() {
            headed_tables_mut(inner, visit);
        }
    }
}

pub(crate) fn show(path: &Path, name: &str) -> Result<()> {
    let doc = load(path)?;
    let mut shown = match doc.get("connections").and_then(|c| c.get(name)) {
        Some(Item::Table(table)) => table.clone(),
        // `connections.erp = { … }` is the same connection written inline.
        Some(Item::Value(toml_edit::Value::InlineTable(inline))) => inline.clone().into_table(),
        _ => bail!("no connection {name:?} in {}", path.display()),
    };
    mask(&mut shown);
    // As the config writes it, so it can be pasted back.
    let mut connections = Table::new();
    connections.set_implicit(true);
    connections[name] = Item::Table(shown);
    let mut out = DocumentMut::new();
    out["connections"] = Item::Table(connections);
    let text = out.to_string();
    let text = text.trim_start();
    super::out::stdout(|out| out.write_all(text.as_bytes()))
}

/// Masks secrets in tables, inline tables and arrays of them alike (`auth = { secret =
/// "…" }`, `payload = { x = [{ password = "…" }] }`).
fn mask(table: &mut dyn TableLike) {
    use crate::config::{MASKED_KEYS, SECRET_MASK};
    for (key, item) in table.iter_mut() {
        if MASKED_KEYS.contains(&key.get()) && item.is_value() {
            *item = value(SECRET_MASK);
        } else if let Some(inner) = item.as_table_like_mut() {
            mask(inner);
        } else if let Some(tables) = item.as_array_of_tables_mut() {
            tables.iter_mut().for_each(|t| mask(t));
        } else if let Some(array) = item.as_array_mut() {
            mask_array(array);
        }
    }
}

fn mask_array(array: &mut toml_edit::Array) {
    for element in array.iter_mut() {
        match element {
            toml_edit::Value::InlineTable(inline) => mask(inline),
            toml_edit::Value::Array(inner) => mask_array(inner),
            _ => {}
        }
    }
}

/// `token set`: from `--token-file`, else stdin (a prompt on a terminal).
pub(crate) fn set_token(path: &Path, token_file: Option<&Path>) -> Result<()> {
    let text =
        super::init::read_token(token_file, None, "New access token (pst_…): ", "token set")?;
    let token =
        SecretToken::parse(SecretKind::AgentToken, &text).context("the new token is not valid")?;
    let mut doc = load(path)?;
    let next_step = "run `postern reload` (or `systemctl reload postern-agent`) to use it";
    if let Some(env) = doc.get("token_env").and_then(Item::as_str) {
        bail!(
            "{} takes the token from the environment variable {env}, which postern cannot \
             change: set it where the agent's environment is defined (e.g. the unit's \
             Environment= or a drop-in), then restart the agent",
            path.display()
        );
    }
    if let Some(file) = doc.get("token_file").and_then(Item::as_str) {
        // The config names where the token lives: that file changes, the config stays.
        let base = path.parent().unwrap_or(Path::new("."));
        let named = base.join(file);
        // A symlink (to a secrets folder, say) keeps pointing where it did.
        let target = std::fs::canonicalize(&named).unwrap_or(named);
        let (folder, name) = match (target.parent(), target.file_name()) {
            (Some(folder), Some(name)) => (folder, name),
            _ => bail!("token_file {} names no file", target.display()),
        };
        let folder = if folder.as_os_str().is_empty() {
            Path::new(".")
        } else {
            folder
        };
        let pinned =
            PinnedFolder::open(folder).with_context(|| format!("opening {}", folder.display()))?;
        check_token_file_owner(path, &target, &pinned, folder)?;
        crate::config::write_private(&pinned.join(name), &format!("{}\n", token.expose()))
            .with_context(|| format!("writing {}", target.display()))?;
        out::stdout(|out| writeln!(out, "token updated in {}; {next_step}", target.display()))?;
        return Ok(());
    }
    doc["token"] = value(token.expose());
    let file = save(path, &doc)?;
    let file = written(path, &file);
    out::stdout(|out| writeln!(out, "token updated in {file}; {next_step}"))?;
    Ok(())
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

/// `name (uid N)`, or `uid N` for a user /etc/passwd does not name.
fn user(uid: u32) -> String {
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

#[cfg(test)]
mod tests {
    use super::{claim, keep_loose_comments, mask};
    use toml_edit::{DocumentMut, Item};

    #[test]
    fn secrets_in_arrays_are_masked_too() {
        let mut doc: DocumentMut =
            "payload = { x = [{ password = \"p1\" }, [{ token = \"t1\" }]] }\n\
             [[extra]]\nsecret = \"s1\"\n"
                .parse()
                .expect("test TOML");
        mask(doc.as_table_mut());
        let shown = doc.to_string();
        for secret in ["p1", "t1", "s1"] {
            assert!(!shown.contains(secret), "{secret} shown: {shown}");
        }
        assert_eq!(shown.matches("\"***\"").count(), 3, "{shown}");
    }

    /// `text` with connection `name` removed as `connection remove` removes it.
    fn removed(text: &str, name: &str) -> String {
        let mut doc: DocumentMut = text.parse().expect("test TOML");
        let gone = doc
            .get_mut("connections")
            .and_then(Item::as_table_mut)
            .and_then(|t| t.remove(name))
            .expect("the connection");
        keep_loose_comments(&mut doc, &gone);
        doc.to_string()
    }

    #[test]
    fn a_comment_set_apart_by_a_blank_line_outlives_the_table_below_it() {
        let text = "relay = \"r:1\"\n\n# Connections: one per internal API.\n\n# orders' API\n[connections.orders]\nbase_uri = \"http://o\"\n\n# stock's API\n[connections.stock]\nbase_uri = \"http://s\"\n";
        assert_eq!(
            removed(text, "orders"),
            "relay = \"r:1\"\n\n# Connections: one per internal API.\n\n# stock's API\n[connections.stock]\nbase_uri = \"http://s\"\n"
        );
        // The last table's goes to the end of the file; its sub-table's too, in order.
        let text = "relay = \"r:1\"\n[connections.a]\nbase_uri = \"http://a\"\n\n# keep 1\n\n# a's\n[connections.b]\nbase_uri = \"http://b\"\n\n# keep 2\n\n[connections.b.auth]\ntype = \"none\"\n";
        assert_eq!(
            removed(text, "b"),
            "relay = \"r:1\"\n[connections.a]\nbase_uri = \"http://a\"\n\n# keep 1\n\n# keep 2\n"
        );
    }

    #[test]
    fn only_comment_lines_right_above_the_header_go_with_it() {
        let text = "relay = \"r:1\"\n\n# orders' API\n# (two lines)\n[connections.orders]\nbase_uri = \"http://o\"\n\n[connections.stock]\nbase_uri = \"http://s\"\n";
        assert_eq!(
            removed(text, "orders"),
            "relay = \"r:1\"\n\n[connections.stock]\nbase_uri = \"http://s\"\n"
        );
    }

    #[test]
    fn payload_values_keep_the_type_they_were_written_with() {
        assert_eq!(claim("1700000000").as_integer(), Some(1_700_000_000));
        assert_eq!(claim("-5").as_integer(), Some(-5));
        for (text, string) in [
            ("0012", "0012"),
            ("+5", "+5"),
            ("\"12345\"", "12345"),
            ("\"\"", ""),
            ("\"", "\""),
            ("{{now + 600}}", "{{now + 600}}"),
            ("erp", "erp"),
        ] {
            assert_eq!(claim(text).as_str(), Some(string), "{text}");
        }
    }
}
