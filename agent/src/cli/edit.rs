//! Editing the config from the CLI: `connection add|remove|show`.
//! Edits keep the file's comments and layout (toml_edit), are validated whole before
//! they are written, and are written atomically with mode 0600 and the file's owner kept.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use toml_edit::{DocumentMut, Item, Table, TableLike, value};

use super::destination::{Destination, written};
use super::edit_table;
use super::out;
use crate::config::{AgentConfig, ConfigError, ConfigFile, FolderLock};

/// What `connection add` was asked for.
#[derive(Debug, clap::Args)]
pub(crate) struct NewConnection {
    /// The connection's name, as calls through the relay name it.
    pub name: String,
    /// The internal API's base, e.g. https://erp.internal/api; call paths go after it.
    /// With --replace, the replaced connection's unless given.
    #[arg(long, required_unless_present = "replace")]
    pub base_uri: Option<String>,
    /// How long to wait for the internal server's answer (default 30s).
    #[arg(long)]
    pub timeout: Option<String>,
    /// `none` (the default) or `jwt_bearer`; with --replace, the replaced connection's
    /// unless given.
    #[arg(long, value_parser = ["none", "jwt_bearer"])]
    pub auth: Option<String>,
    /// jwt_bearer: HS256/384/512, RS256/384/512, PS256/384/512, ES256, ES384 or EdDSA.
    #[arg(long)]
    pub algorithm: Option<String>,
    /// jwt_bearer: the private key PEM file (relative to the config's folder).
    #[arg(long)]
    pub private_key_file: Option<String>,
    /// jwt_bearer: the variable holding the private key PEM (in the service's environment).
    #[arg(long)]
    pub private_key_env: Option<String>,
    /// jwt_bearer: the file holding an encrypted private key's passphrase (relative to the
    /// config's folder).
    #[arg(long)]
    pub private_key_passphrase_file: Option<String>,
    /// jwt_bearer: the variable holding an encrypted private key's passphrase.
    #[arg(long)]
    pub private_key_passphrase_env: Option<String>,
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
    /// jwt_bearer: adds iat and exp = now + this (e.g. 5m, at most a day, whole seconds)
    /// where the payload sets neither; the config's auth.lifetime.
    #[arg(long)]
    pub lifetime: Option<String>,
    /// Overwrite a connection of that name: the options given replace its settings, the
    /// others it has stay (those that no longer apply are dropped, and named).
    #[arg(long)]
    pub replace: bool,
}

impl NewConnection {
    /// The private key's options, each with whether it was given.
    fn key_options(&self) -> [(&'static str, bool); 4] {
        [
            ("--private-key-file", self.private_key_file.is_some()),
            ("--private-key-env", self.private_key_env.is_some()),
            (
                "--private-key-passphrase-file",
                self.private_key_passphrase_file.is_some(),
            ),
            (
                "--private-key-passphrase-env",
                self.private_key_passphrase_env.is_some(),
            ),
        ]
    }

    /// The shared secret's options, each with whether it was given.
    fn secret_options(&self) -> [(&'static str, bool); 3] {
        [
            ("--secret-file", self.secret_file.is_some()),
            ("--secret-env", self.secret_env.is_some()),
            ("--secret-encoding", self.secret_encoding.is_some()),
        ]
    }
}

fn load(path: &Path) -> Result<DocumentMut> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse(path, &text)
}

fn parse(path: &Path, text: &str) -> Result<DocumentMut> {
    // Not toml_edit's own message: it quotes the line, which may be `token = "pst_…"`.
    text.parse::<DocumentMut>().map_err(|e| {
        anyhow::anyhow!(
            "{} is not valid TOML: {}",
            path.display(),
            crate::config::ParseError::of_edit(&e, text)
        )
    })
}

/// A config read to be edited. Its folder's write lock is held from the read to the write
/// (or the edit's end), so edits at once take turns: each would otherwise write what it
/// read plus its own change, undoing the other's.
pub(super) struct Editing {
    pub(super) doc: DocumentMut,
    /// The file as read, for the check to tell the edit's problems from those it had.
    before: String,
    destination: Destination,
    _turn: FolderLock,
}

/// Reads the config through the file its destination pinned (the one judged, with its
/// owner checked again on the opened file), not by its path again: as root, a path
/// re-read could meanwhile lead elsewhere (a link swapped in by the folder's owner), and
/// that file's contents would be written back into this one.
pub(super) fn open(path: &Path) -> Result<Editing> {
    let destination = Destination::of(path)?;
    let turn = destination.lock()?;
    let Some(existing) = destination.read_existing()? else {
        bail!("reading {}: no such file", path.display());
    };
    let before = String::from_utf8(existing.bytes)
        .with_context(|| format!("{} is not UTF-8 text", path.display()))?;
    Ok(Editing {
        doc: parse(path, &before)?,
        before,
        destination,
        _turn: turn,
    })
}

/// Validates the edited document as `run` would load it, then replaces the file (see
/// [`Destination`]) and returns the file written. An edit is refused for the problems it
/// brings, not for those the config had before, nor for a secret from an environment
/// variable this shell lacks: the service's environment (`secret_env`) is not an admin's
/// shell. Those are named as not checked. Warnings (a short secret, no `exp`) are said of
/// the connection the edit `touched` only, and only when the edit is taken: the others'
/// were said when they were written, and `run`, reloads and `config check` say them all.
pub(super) fn save(path: &Path, editing: &Editing, touched: Option<&str>) -> Result<PathBuf> {
    let text = editing.doc.to_string();
    if let Err(refused) = silently(|| check(path, &editing.before, &text)) {
        // A file that did not load before the edit either: the edit did not break it, and
        // the error (its line) is the file's, not the edited text's. (An edit that mends it,
        // such as removing the broken connection, is not refused.)
        if let (Err(_), Err(as_it_is)) =
            (ConfigFile::parse(&text), ConfigFile::parse(&editing.before))
        {
            let why = format!(
                "{} does not load as it is, so no edit can be checked; fix it first (`postern config check` says where); nothing was written",
                path.display()
            );
            return Err(anyhow::Error::new(as_it_is)).context(why);
        }
        return Err(refused);
    }
    // Only now: a refused edit's error is all it says.
    if let Some(name) = touched {
        let _ = problems(&only_connection(&editing.doc, name).to_string(), path);
    }
    editing.destination.write(&text)?;
    Ok(editing.destination.file.clone())
}

/// `save`'s validation of `text`, the new content of `path`, which held `before`.
pub(super) fn check(path: &Path, before: &str, text: &str) -> Result<()> {
    let after = problems(text, path).context("the edited config would not parse")?;
    let (unchecked, after): (Vec<String>, Vec<String>) = after
        .into_iter()
        .partition(|p| crate::config::is_unset_variable(p));
    if !after.is_empty() {
        let before = problems(before, path).unwrap_or_default();
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

/// Runs `f` with tracing's events dropped: what the config's loading warns of.
fn silently<T>(f: impl FnOnce() -> T) -> T {
    tracing::subscriber::with_default(tracing::subscriber::NoSubscriber::default(), f)
}

/// `doc` with only connection `name` of its `connections` (as `run` would load that one
/// alone, with the settings all share).
pub(super) fn only_connection(doc: &DocumentMut, name: &str) -> DocumentMut {
    let mut one = doc.clone();
    if let Some(table) = one.get_mut("connections").and_then(Item::as_table_like_mut) {
        let others: Vec<String> = table
            .iter()
            .map(|(key, _)| key.to_owned())
            .filter(|key| key != name)
            .collect();
        for other in others {
            table.remove(&other);
        }
    }
    one
}

/// What `run` would refuse in `text`, the content of `path`, one line each (a file its
/// owner could not read too, when root edits another user's config); an error if it does
/// not parse.
pub(super) fn problems(text: &str, path: &Path) -> Result<Vec<String>> {
    let file = ConfigFile::parse(text)?;
    let mut found = crate::config::unreadable_by_owner(path, &file);
    let base = path.parent().unwrap_or(Path::new("."));
    match AgentConfig::resolve(file, base, &|name| std::env::var(name)) {
        Ok(_) => {}
        Err(ConfigError::Problems(list)) => found.extend(list),
        Err(e) => found.push(e.to_string()),
    }
    Ok(found)
}

/// A command line that does not go together: exits 64, as clap's own refusals do.
fn usage(message: String) -> anyhow::Error {
    postern_process::UsageError(message).into()
}

fn pairs(items: &[String], what: &str) -> Result<Vec<(String, String)>> {
    items
        .iter()
        .map(|item| {
            item.split_once('=')
                .map(|(k, v)| (k.trim().to_owned(), v.to_owned()))
                .filter(|(k, _)| !k.is_empty())
                .ok_or_else(|| usage(format!("--{what} {item:?} must be KEY=VALUE")))
        })
        .collect()
}

/// The key options `algorithm` signs with, said in the command line's words (the config's
/// own check would say `auth.secret: set one of auth.secret, …`, keys `add` has no option
/// for). An algorithm postern does not know is left to that check, which lists them. A
/// key of the replaced connection (`old`) that fits the algorithm is kept, so need not be
/// given again.
fn key_options(new: &NewConnection, algorithm: &str, old: Option<&Table>) -> Result<()> {
    let Ok(parsed) = algorithm.parse::<crate::jwt::Algorithm>() else {
        return Ok(());
    };
    let kept = |keys: &[&str]| edit_table::old_has_any(old, keys);
    let (key, secret) = (new.key_options(), new.secret_options());
    let given = |options: &[(&'static str, bool)]| -> Vec<&'static str> {
        options
            .iter()
            .filter(|(_, g)| *g)
            .map(|(o, _)| *o)
            .collect()
    };
    let (wanted, unwanted, what, needs) = if parsed.is_hmac() {
        (
            new.secret_file.is_some() || new.secret_env.is_some() || kept(&edit_table::SECRET_KEYS),
            given(&key),
            "a shared secret",
            "--secret-file or --secret-env",
        )
    } else {
        (
            new.private_key_file.is_some()
                || new.private_key_env.is_some()
                || kept(&edit_table::PRIVATE_KEYS),
            given(&secret),
            "a private key",
            "--private-key-file or --private-key-env",
        )
    };
    if !unwanted.is_empty() {
        let give = if wanted {
            String::new()
        } else {
            format!(", give {needs}")
        };
        return Err(usage(format!(
            "--algorithm {algorithm} signs with {what}: drop {}{give}",
            unwanted.join(", ")
        )));
    }
    if !wanted {
        return Err(usage(format!(
            "--algorithm {algorithm} signs with {what}: give {needs}"
        )));
    }
    Ok(())
}

/// A relative key or secret file is taken from the config's folder, as the config takes
/// it; one given from the shell's folder (completion) is said to be, before the config's
/// check says it cannot read `folder/folder/key.pem`.
fn files_from_the_config_folder(path: &Path, new: &NewConnection) -> Result<()> {
    let folder = crate::config::folder_of(path);
    for (option, file) in [
        ("--private-key-file", &new.private_key_file),
        (
            "--private-key-passphrase-file",
            &new.private_key_passphrase_file,
        ),
        ("--secret-file", &new.secret_file),
    ] {
        let Some(file) = file.as_deref().map(Path::new) else {
            continue;
        };
        if file.is_relative() && !folder.join(file).exists() && file.exists() {
            return Err(usage(format!(
                "{option} {}: a relative path is taken from the config's folder ({}), where there is no such file; give the file's full path, or its path from that folder",
                file.display(),
                folder.display()
            )));
        }
    }
    Ok(())
}

/// The command line's own mistakes, in its words: `kind` is the auth the connection will
/// have, `old` the connection `--replace` replaces (its auth and key may stay).
fn command_line(new: &NewConnection, kind: &str, old: Option<&Table>) -> Result<()> {
    let jwt_options: Vec<(&str, bool)> = [("--algorithm", new.algorithm.is_some())]
        .into_iter()
        .chain(new.key_options())
        .chain(new.secret_options())
        .chain([
            ("--header", !new.headers.is_empty()),
            ("--payload", !new.payload.is_empty()),
            ("--lifetime", new.lifetime.is_some()),
        ])
        .collect();
    let given: Vec<&str> = jwt_options
        .iter()
        .filter(|(_, given)| *given)
        .map(|(flag, _)| *flag)
        .collect();
    if kind != "jwt_bearer" && !given.is_empty() {
        return Err(usage(format!(
            "{} {} --auth jwt_bearer (the connection's auth is {kind:?})",
            given.join(", "),
            if given.len() == 1 { "needs" } else { "need" },
        )));
    }
    if kind != "jwt_bearer" {
        return Ok(());
    }
    // Else the config's parser would say it, about a line of a file the user never sees.
    let Some(algorithm) = edit_table::algorithm(new, old) else {
        let names: Vec<&str> = crate::jwt::Algorithm::ALL
            .iter()
            .map(|a| a.as_str())
            .collect();
        return Err(usage(format!(
            "--auth jwt_bearer needs --algorithm ({})",
            names.join(", ")
        )));
    };
    key_options(new, &algorithm, old)
}

/// The config's `[connections]` table, made when the file has none.
fn connections_table(doc: &mut DocumentMut) -> Result<&mut Table> {
    // Made here, it needs no `[connections]` line of its own; the file's own one (and the
    // comments above it) stays.
    let made = !doc.contains_key("connections");
    let connections = doc
        .entry("connections")
        .or_insert(Item::Table(Table::new()))
        .as_table_mut()
        .context("`connections` in the config is not a table")?;
    if made {
        connections.set_implicit(true);
    }
    Ok(connections)
}

pub(crate) fn add(path: &Path, new: NewConnection) -> Result<()> {
    // The command line first: a mistake in it is said before any file is read. A
    // `--replace` is judged with the connection it replaces, whose auth and key may stay.
    if !new.replace {
        command_line(&new, new.auth.as_deref().unwrap_or("none"), None)?;
    }
    let headers = pairs(&new.headers, "header")?;
    let payload = pairs(&new.payload, "payload")?;
    files_from_the_config_folder(path, &new)?;
    let mut editing = open(path)?;
    let connections = connections_table(&mut editing.doc)?;
    let old = connections
        .get(&new.name)
        .map(|item| edit_table::old_table(&new.name, item))
        .transpose()?;
    if old.is_some() && !new.replace {
        bail!(
            "connection {:?} exists already; pass --replace to overwrite it",
            new.name
        );
    }
    if old.is_none() && new.base_uri.is_none() {
        bail!(
            "there is no connection {:?} to replace; give --base-uri to add it",
            new.name
        );
    }
    if new.replace {
        let kind = edit_table::auth_kind(&new, old.as_ref());
        command_line(&new, &kind, old.as_ref())?;
    }
    let replaced = old.is_some();
    let (table, changes) = edit_table::build(old, &new, headers, payload)?;
    connections[&new.name] = Item::Table(table);
    let file = save(path, &editing, Some(&new.name))?;
    let file = written(path, &file);
    out::stdout(|out| {
        if !replaced {
            return writeln!(out, "connection {:?} added to {file}", new.name);
        }
        writeln!(out, "connection {:?} replaced in {file}", new.name)?;
        said_changes(out, &changes)
    })?;
    Ok(())
}

/// A `--replace`'s settings kept and dropped, so none changes without a word.
fn said_changes(
    out: &mut dyn std::io::Write,
    changes: &edit_table::Changes,
) -> std::io::Result<()> {
    if !changes.kept.is_empty() {
        writeln!(
            out,
            "kept from before (not set on this command line): {}",
            changes.kept.join(", ")
        )?;
    }
    if !changes.dropped.is_empty() {
        writeln!(out, "dropped:\n  {}", changes.dropped.join("\n  "))?;
    }
    Ok(())
}

/// A payload value as typed on the command line: an integer written as one is a number
/// (`0012` is not: it would lose its zeros), `"…"` a string as it is inside the quotes,
/// anything else (templates included) a string.
pub(super) fn claim(text: &str) -> toml_edit::Value {
    if let Some(quoted) = text.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
        return quoted.into();
    }
    match text.parse::<i64>() {
        Ok(n) if n.to_string() == text => n.into(),
        _ => text.into(),
    }
}

pub(crate) fn remove(path: &Path, name: &str) -> Result<()> {
    let mut editing = open(path)?;
    let removed = editing
        .doc
        .get_mut("connections")
        .and_then(Item::as_table_mut)
        .and_then(|t| t.remove(name));
    let Some(removed) = removed else {
        bail!("no connection {name:?} in {}", path.display());
    };
    super::remove_comments::keep_loose_comments(&mut editing.doc, &removed);
    let file = save(path, &editing, None)?;
    let file = written(path, &file);
    out::stdout(|out| writeln!(out, "connection {name:?} removed from {file}"))?;
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::{claim, mask};
    use toml_edit::DocumentMut;

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
