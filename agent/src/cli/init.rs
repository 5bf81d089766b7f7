//! `postern init`: writes a validated config (0600) with the token read from a
//! file, `POSTERN_TOKEN` or a prompt, never from an argument; `token set` reads its own here.

use std::io::{IsTerminal, Read};
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

use anyhow::{Context, Result, bail};
use postern_protocol::{SecretKind, SecretToken};

use crate::config::{self, AgentConfig};

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
    } else if let Some(token) = var.and_then(|var| std::env::var(var).ok()) {
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
    AgentConfig::resolve(file, Path::new("."), &|_| None)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    config::write_private(path, &text).with_context(|| format!("writing {}", path.display()))?;
    super::out::stdout(|out| writeln!(out, "wrote {} (mode 0600)", path.display()))
}

fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}
