//! Editing the config from the CLI: `connection add|remove|show` and `token set`.
//! Edits keep the file's comments and layout (toml_edit), are validated whole before
//! they are written, and are written atomically with mode 0600 (`config::write_private`).

use std::io::{IsTerminal, Read};
use std::path::Path;

use anyhow::{Context, Result, bail};
use postern_protocol::{SecretKind, SecretToken};
use toml_edit::{DocumentMut, InlineTable, Item, Table, value};

use crate::config::{AgentConfig, ConfigFile};

/// What `connection add` was asked for.
#[derive(Debug, clap::Args)]
pub(crate) struct NewConnection {
    pub name: String,
    #[arg(long)]
    pub base_uri: String,
    #[arg(long)]
    pub timeout: Option<String>,
    /// `none` or `jwt_bearer`.
    #[arg(long, default_value = "none")]
    pub auth: String,
    #[arg(long)]
    pub algorithm: Option<String>,
    #[arg(long)]
    pub private_key_file: Option<String>,
    #[arg(long)]
    pub private_key_env: Option<String>,
    #[arg(long)]
    pub secret_file: Option<String>,
    #[arg(long)]
    pub secret_env: Option<String>,
    /// A JWT header, KEY=VALUE (repeatable).
    #[arg(long = "header")]
    pub headers: Vec<String>,
    /// A payload claim, KEY=VALUE (repeatable); values may be templates like {{now + 600}}.
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

/// Validates the edited document as `run` would load it, then replaces the file.
fn save(path: &Path, doc: &DocumentMut) -> Result<()> {
    let text = doc.to_string();
    let file = ConfigFile::parse(&text).context("the edited config would not parse")?;
    let base = path.parent().unwrap_or(Path::new("."));
    AgentConfig::resolve(file, base, &|name| std::env::var(name).ok())
        .context("the edited config is not valid; nothing was written")?;
    crate::config::write_private(path, &text)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
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
    let mut auth = Table::new();
    auth["type"] = value(new.auth.as_str());
    for (key, v) in [
        ("algorithm", &new.algorithm),
        ("private_key_file", &new.private_key_file),
        ("private_key_env", &new.private_key_env),
        ("secret_file", &new.secret_file),
        ("secret_env", &new.secret_env),
    ] {
        if let Some(v) = v {
            auth[key] = value(v.as_str());
        }
    }
    for (key, list) in [
        ("headers", pairs(&new.headers, "header")?),
        ("payload", pairs(&new.payload, "payload")?),
    ] {
        if !list.is_empty() {
            let mut inline = InlineTable::new();
            for (k, v) in list {
                // Numbers stay numbers; everything else (templates included) is a string.
                match v.parse::<i64>() {
                    Ok(n) => inline.insert(&k, n.into()),
                    Err(_) => inline.insert(&k, v.into()),
                };
            }
            auth[key] = value(inline);
        }
    }
    table["auth"] = Item::Table(auth);
    connections[&new.name] = Item::Table(table);
    save(path, &doc)?;
    println!("connection {:?} added to {}", new.name, path.display());
    Ok(())
}

pub(crate) fn remove(path: &Path, name: &str) -> Result<()> {
    let mut doc = load(path)?;
    let removed = doc
        .get_mut("connections")
        .and_then(Item::as_table_mut)
        .and_then(|t| t.remove(name));
    if removed.is_none() {
        bail!("no connection {name:?} in {}", path.display());
    }
    save(path, &doc)?;
    println!("connection {name:?} removed from {}", path.display());
    Ok(())
}

/// Keys whose values are secrets; `show` masks them.
const SECRET_KEYS: &[&str] = &["secret", "private_key", "token"];

pub(crate) fn show(path: &Path, name: &str) -> Result<()> {
    let doc = load(path)?;
    let Some(table) = doc
        .get("connections")
        .and_then(|c| c.get(name))
        .and_then(Item::as_table)
    else {
        bail!("no connection {name:?} in {}", path.display());
    };
    let mut shown = table.clone();
    mask(&mut shown);
    let mut out = DocumentMut::new();
    out[name] = Item::Table(shown);
    print!("{out}");
    Ok(())
}

fn mask(table: &mut Table) {
    for (key, item) in table.iter_mut() {
        if SECRET_KEYS.contains(&key.get()) && item.is_value() {
            *item = value("***");
        } else if let Some(inner) = item.as_table_mut() {
            mask(inner);
        }
    }
}

/// `token set`: from `--token-file`, else stdin (a prompt on a terminal).
pub(crate) fn set_token(path: &Path, token_file: Option<&Path>) -> Result<()> {
    let text = match token_file {
        Some(file) => {
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?
        }
        None if std::io::stdin().is_terminal() => {
            rpassword::prompt_password("New access token (pst_…): ")?
        }
        None => {
            let mut text = String::new();
            std::io::stdin().read_to_string(&mut text)?;
            text
        }
    };
    let token = SecretToken::parse(SecretKind::AgentToken, text.trim())
        .context("the new token is not valid")?;
    let mut doc = load(path)?;
    doc.remove("token_file");
    doc.remove("token_env");
    doc["token"] = value(token.expose());
    save(path, &doc)?;
    println!(
        "token updated in {}; restart the agent to use it",
        path.display()
    );
    Ok(())
}
