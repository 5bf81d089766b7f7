//! `connection add`'s options written into a connection's table: a new one, or the one
//! `--replace` replaces.
//!
//! `--replace` starts from the old table and overwrites only what the command line sets;
//! the rest stays, with its comments. It used to rebuild the table from the options
//! alone, and so dropped without a word every setting the CLI has no option for: a
//! `rate_limit` (the internal server's protection), a `lifetime` (the JWT's `exp`), an
//! `[auth.exchange]` table (the assertion meant for the identity provider then went to
//! the internal server as a bearer token that never expired). An admin who changes one
//! setting expects the others to stay. What can no longer apply — a key of the other
//! algorithm family, jwt_bearer settings under `--auth none`, a key source the command
//! line gives another one of — is dropped, and each is named with why.

use anyhow::{Context, Result, bail};
use toml_edit::{InlineTable, Item, Table, TableLike, Value};

use super::edit::NewConnection;
use crate::jwt::Algorithm;

/// What a `--replace` did with the replaced table's settings (`rate_limit`,
/// `auth.lifetime`, …), to be said: nothing of it changes in silence.
#[derive(Debug, Default)]
pub(super) struct Changes {
    /// Kept as they were, as the command line did not set them.
    pub kept: Vec<String>,
    /// Removed, each followed by why.
    pub dropped: Vec<String>,
}

/// Key sources of one kind: a connection takes exactly one of each.
pub(super) const SECRET_KEYS: [&str; 3] = ["secret", "secret_file", "secret_env"];
pub(super) const PRIVATE_KEYS: [&str; 3] = ["private_key", "private_key_file", "private_key_env"];
const PASSPHRASE_KEYS: [&str; 2] = ["private_key_passphrase_file", "private_key_passphrase_env"];

/// The replaced connection as a table. One written inline (`connections.erp = { … }`)
/// becomes a `[connections.erp]` table, which a new `[connections.erp.auth]` can go under.
pub(super) fn old_table(name: &str, item: &Item) -> Result<Table> {
    match item {
        Item::Table(table) => Ok(table.clone()),
        Item::Value(Value::InlineTable(inline)) => Ok(inline.clone().into_table()),
        _ => bail!("connections.{name} in the config is not a table"),
    }
}

/// The auth `type` the command line means: `--auth`, else the replaced connection's
/// (a `--replace` that does not name one keeps it), else `none`.
pub(super) fn auth_kind(new: &NewConnection, old: Option<&Table>) -> String {
    new.auth
        .clone()
        .or_else(|| old_str(old, "type"))
        .unwrap_or_else(|| "none".to_owned())
}

/// The algorithm the connection will sign with: `--algorithm`, else the replaced one's.
pub(super) fn algorithm(new: &NewConnection, old: Option<&Table>) -> Option<String> {
    new.algorithm.clone().or_else(|| old_str(old, "algorithm"))
}

/// Whether the replaced connection has one of `keys` in its auth table, kept unless the
/// command line replaces it.
pub(super) fn old_has_any(old: Option<&Table>, keys: &[&str]) -> bool {
    keys.iter().any(|key| old_auth(old, key).is_some())
}

fn old_auth<'a>(old: Option<&'a Table>, key: &str) -> Option<&'a Item> {
    old?.get("auth")?.get(key)
}

fn old_str(old: Option<&Table>, key: &str) -> Option<String> {
    old_auth(old, key)?.as_str().map(str::to_owned)
}

/// The connection's table with `new` written into `old` (or a new table), and what became
/// of `old`'s other settings.
pub(super) fn build(
    old: Option<Table>,
    new: &NewConnection,
    headers: Vec<(String, String)>,
    payload: Vec<(String, String)>,
) -> Result<(Table, Changes)> {
    let before = old.as_ref().map(settings_of).unwrap_or_default();
    let kind = auth_kind(new, old.as_ref());
    // A new connection says its auth even when it is `none`, as it always has.
    let written_kind = new
        .auth
        .clone()
        .or_else(|| old.is_none().then(|| "none".to_owned()));
    let mut table = old.unwrap_or_default();
    let mut dropped = Vec::new();
    if let Some(base_uri) = &new.base_uri {
        set(&mut table, "base_uri", base_uri.as_str().into());
    }
    if let Some(timeout) = &new.timeout {
        set(&mut table, "timeout", timeout.as_str().into());
    }
    if written_kind.is_some() || table.contains_key("auth") {
        let auth = table
            .entry("auth")
            .or_insert(Item::Table(Table::new()))
            .as_table_like_mut()
            .context("the connection's `auth` in the config is not a table")?;
        if let Some(kind) = &written_kind {
            set(auth, "type", kind.as_str().into());
        }
        if kind == "jwt_bearer" {
            jwt_bearer(auth, new, headers, payload, &mut dropped);
        } else {
            drop_all_but_type(auth, &kind, &mut dropped);
        }
    }
    let set_here = set_by(new);
    let kept = before
        .into_iter()
        .filter(|key| !set_here.contains(key) && still_in(&table, key))
        .collect();
    Ok((table, Changes { kept, dropped }))
}

/// The table's settings as `config check` names them: `rate_limit`, `auth.exchange`.
fn settings_of(table: &Table) -> Vec<String> {
    let mut found = Vec::new();
    for (key, item) in table.iter() {
        match item.as_table_like().filter(|_| key == "auth") {
            Some(auth) => found.extend(
                auth.iter()
                    .filter(|(key, _)| *key != "type")
                    .map(|(key, _)| format!("auth.{key}")),
            ),
            None => found.push(key.to_owned()),
        }
    }
    found
}

fn still_in(table: &Table, setting: &str) -> bool {
    match setting.split_once('.') {
        Some((outer, inner)) => table.get(outer).and_then(|t| t.get(inner)).is_some(),
        None => table.contains_key(setting),
    }
}

/// The settings the command line writes, in [`settings_of`]'s words.
fn set_by(new: &NewConnection) -> Vec<String> {
    let mut set = Vec::new();
    if new.base_uri.is_some() {
        set.push("base_uri".to_owned());
    }
    if new.timeout.is_some() {
        set.push("timeout".to_owned());
    }
    let auth = auth_options(new)
        .into_iter()
        .filter(|(_, v)| v.is_some())
        .map(|(key, _)| key)
        .chain((!new.headers.is_empty()).then_some("headers"))
        .chain((!new.payload.is_empty()).then_some("payload"));
    set.extend(auth.map(|key| format!("auth.{key}")));
    set
}

/// The auth keys written as given, each with its value from the command line.
fn auth_options(new: &NewConnection) -> [(&'static str, Option<&str>); 9] {
    [
        ("algorithm", new.algorithm.as_deref()),
        ("private_key_file", new.private_key_file.as_deref()),
        ("private_key_env", new.private_key_env.as_deref()),
        (
            "private_key_passphrase_file",
            new.private_key_passphrase_file.as_deref(),
        ),
        (
            "private_key_passphrase_env",
            new.private_key_passphrase_env.as_deref(),
        ),
        ("secret_file", new.secret_file.as_deref()),
        ("secret_env", new.secret_env.as_deref()),
        ("secret_encoding", new.secret_encoding.as_deref()),
        ("lifetime", new.lifetime.as_deref()),
    ]
}

/// `key = v`, keeping the comment on the replaced value's line (`timeout = "60s"  # slow`).
fn set(table: &mut dyn TableLike, key: &str, mut v: Value) {
    if let Some(old) = table.get(key).and_then(Item::as_value) {
        *v.decor_mut() = old.decor().clone();
    }
    table.insert(key, Item::Value(v));
}

fn drop_keys(auth: &mut dyn TableLike, keys: &[&str], why: &str, dropped: &mut Vec<String>) {
    for key in keys {
        if auth.remove(key).is_some() {
            dropped.push(format!("auth.{key} ({why})"));
        }
    }
}

fn drop_all_but_type(auth: &mut dyn TableLike, kind: &str, dropped: &mut Vec<String>) {
    let keys: Vec<String> = auth
        .iter()
        .map(|(key, _)| key.to_owned())
        .filter(|key| key != "type")
        .collect();
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    let why = format!("a jwt_bearer setting, and the auth is now {kind:?}");
    drop_keys(auth, &keys, &why, dropped);
}

fn jwt_bearer(
    auth: &mut dyn TableLike,
    new: &NewConnection,
    headers: Vec<(String, String)>,
    payload: Vec<(String, String)>,
    dropped: &mut Vec<String>,
) {
    let given = auth_options(new);
    let given_of = |keys: &[&str]| -> Vec<&'static str> {
        given
            .iter()
            .filter(|(key, v)| keys.contains(key) && v.is_some())
            .map(|(key, _)| *key)
            .collect()
    };
    // A key given replaces the one it is read from now: a connection takes one source.
    for family in [&SECRET_KEYS[..], &PRIVATE_KEYS, &PASSPHRASE_KEYS] {
        if let Some(one) = given_of(family).first().copied() {
            let why = format!("--{} replaces it", one.replace('_', "-"));
            let others: Vec<&str> = family.iter().copied().filter(|k| *k != one).collect();
            drop_keys(auth, &others, &why, dropped);
        }
    }
    let algorithm = new
        .algorithm
        .clone()
        .or_else(|| auth.get("algorithm")?.as_str().map(str::to_owned));
    if let Some(parsed) = algorithm.and_then(|a| a.parse::<Algorithm>().ok()) {
        let (other_family, signs_with): (Vec<&str>, _) = if parsed.is_hmac() {
            (
                [&PRIVATE_KEYS[..], &PASSPHRASE_KEYS].concat(),
                "a shared secret",
            )
        } else {
            (
                [&SECRET_KEYS[..], &["secret_encoding"]].concat(),
                "a private key",
            )
        };
        let why = format!("{} signs with {signs_with}", parsed.as_str());
        drop_keys(auth, &other_family, &why, dropped);
    }
    for (key, v) in given {
        if let Some(v) = v {
            set(auth, key, v.into());
        }
    }
    write_claims(auth, "headers", headers, false, dropped);
    write_claims(auth, "payload", payload, true, dropped);
}

/// `--header`s or `--payload`s given are the whole table (there is no other way to take a
/// claim out): the old ones left out are named.
fn write_claims(
    auth: &mut dyn TableLike,
    key: &str,
    list: Vec<(String, String)>,
    typed: bool,
    dropped: &mut Vec<String>,
) {
    if list.is_empty() {
        return;
    }
    let option = if typed { "--payload" } else { "--header" };
    let old: Vec<String> = auth
        .get(key)
        .and_then(Item::as_table_like)
        .map(|t| t.iter().map(|(name, _)| name.to_owned()).collect())
        .unwrap_or_default();
    for name in old
        .iter()
        .filter(|name| !list.iter().any(|(k, _)| k == *name))
    {
        dropped.push(format!(
            "auth.{key}.{name} (not among the {option}s given, which replace auth.{key} whole)"
        ));
    }
    let mut inline = InlineTable::new();
    for (k, v) in list {
        inline.insert(
            &k,
            if typed {
                super::edit::claim(&v)
            } else {
                v.into()
            },
        );
    }
    set(auth, key, Value::InlineTable(inline));
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        new: NewConnection,
    }

    fn new(args: &[&str]) -> NewConnection {
        let args = ["add"].iter().chain(args);
        match Cli::try_parse_from(args) {
            Ok(cli) => cli.new,
            Err(e) => panic!("{e}"),
        }
    }

    fn old(text: &str) -> Table {
        let doc: toml_edit::DocumentMut = text.parse().expect("test TOML");
        let item = doc.get("c").expect("a [c] table");
        old_table("c", item).expect("a table")
    }

    /// The table as the file would hold it, its sub-tables too.
    fn as_file(table: Table) -> String {
        let mut doc = toml_edit::DocumentMut::new();
        doc["c"] = Item::Table(table);
        doc.to_string()
    }

    const EXCHANGE: &str = "[c]\nbase_uri = \"http://old\"\nrate_limit = { requests = 2 }\n\
        # the ERP's key\n[c.auth]\ntype = \"jwt_bearer\"\nalgorithm = \"ES256\"\n\
        private_key_file = \"k.pem\"\nlifetime = \"5m\"  # the IdP takes 10m at most\n\
        payload = { iss = \"p\", jti = \"{{uuid}}\" }\n\
        # exchange settings, added by hand\n[c.auth.exchange]\ntoken_url = \"http://idp/t\"\n";

    #[test]
    fn a_replace_keeps_what_the_command_line_does_not_set() {
        let new = new(&["c", "--base-uri", "http://new", "--payload", "iss=q"]);
        let (table, changes) = build(
            Some(old(EXCHANGE)),
            &new,
            vec![],
            vec![("iss".into(), "q".into())],
        )
        .expect("built");
        let text = as_file(table);
        for kept in [
            "base_uri = \"http://new\"",
            "rate_limit = { requests = 2 }",
            "# the ERP's key",
            "type = \"jwt_bearer\"",
            "lifetime = \"5m\"  # the IdP takes 10m at most",
            "# exchange settings, added by hand",
            "token_url = \"http://idp/t\"",
        ] {
            assert!(text.contains(kept), "{kept}: {text}");
        }
        assert_eq!(
            changes.kept,
            [
                "rate_limit",
                "auth.algorithm",
                "auth.private_key_file",
                "auth.lifetime",
                "auth.exchange"
            ]
        );
        assert_eq!(changes.dropped.len(), 1, "{:?}", changes.dropped);
        assert!(changes.dropped[0].starts_with("auth.payload.jti (not among the --payloads given"));
    }

    #[test]
    fn a_replace_drops_only_what_no_longer_applies_and_names_it() {
        let none = new(&["c", "--base-uri", "http://new", "--auth", "none"]);
        let (table, changes) = build(Some(old(EXCHANGE)), &none, vec![], vec![]).expect("built");
        let text = as_file(table);
        assert!(
            !text.contains("exchange") && !text.contains("lifetime"),
            "{text}"
        );
        assert!(text.contains("rate_limit"), "{text}");
        assert!(
            changes.dropped.contains(
                &"auth.exchange (a jwt_bearer setting, and the auth is now \"none\")".to_owned()
            ),
            "{:?}",
            changes.dropped
        );
        assert_eq!(changes.kept, ["rate_limit"]);

        // Another family's algorithm takes the old key away; a new key source the old one.
        let hs = new(&[
            "c",
            "--base-uri",
            "http://new",
            "--algorithm",
            "HS256",
            "--secret-env",
            "S",
        ]);
        let (table, changes) = build(Some(old(EXCHANGE)), &hs, vec![], vec![]).expect("built");
        let shown = as_file(table);
        assert!(!shown.contains("k.pem"), "{shown}");
        assert_eq!(
            changes.dropped,
            ["auth.private_key_file (HS256 signs with a shared secret)"]
        );
        let env = new(&["c", "--base-uri", "http://new", "--private-key-env", "K"]);
        let (table, changes) = build(Some(old(EXCHANGE)), &env, vec![], vec![]).expect("built");
        let shown = as_file(table);
        assert!(shown.contains("private_key_env = \"K\""), "{shown}");
        assert_eq!(
            changes.dropped,
            ["auth.private_key_file (--private-key-env replaces it)"]
        );
    }
}
