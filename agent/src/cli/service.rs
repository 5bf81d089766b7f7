//! `postern service unit|install|uninstall`: the agent as a systemd service, from the
//! hardened unit the packages ship, with this binary and config path filled in.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// The unit the .deb ships; `install` writes it with this binary's and config's paths.
const PACKAGED_UNIT: &str = include_str!("../../../packaging/systemd/postern-agent.service");
const PACKAGED_EXEC: &str = "/usr/bin/postern run --config /etc/postern/agent.toml";
const PACKAGED_RELOAD: &str = "/usr/bin/postern reload --config /etc/postern/agent.toml";
const PACKAGED_CONFIG: &str = "/etc/postern/agent.toml";
pub const UNIT_NAME: &str = "postern-agent.service";
const UNIT_DIR: &str = "/etc/systemd/system";
const SERVICE_USER: &str = "postern";

/// The unit for `binary` running `config` (both absolute, no whitespace, quotes or
/// backslashes), each path escaped for the directive that holds it.
pub fn unit(binary: &Path, config: &Path) -> Result<String> {
    let (binary, config) = (unit_path(binary)?, unit_path(config)?);
    let program = escape_specifiers(binary);
    let argument = escape_argument(config);
    let exec = format!("ExecStart={PACKAGED_EXEC}");
    let reload = format!("ExecReload={PACKAGED_RELOAD}");
    // Line by line, each filled once: a config path holding the packaged one
    // (/etc/postern/agent.toml.new) must not be filled in again.
    let mut text = String::with_capacity(PACKAGED_UNIT.len());
    for line in PACKAGED_UNIT.lines() {
        let filled = if line == exec {
            format!("ExecStart={program} run --config {argument}")
        } else if line == reload {
            format!("ExecReload={program} reload --config {argument}")
        } else if line.starts_with('#') {
            line.replace(PACKAGED_CONFIG, config)
        } else {
            line.replace(PACKAGED_CONFIG, &escape_specifiers(config))
        };
        text.push_str(&filled);
        text.push('\n');
    }
    Ok(text)
}

/// `path` as text, if a unit can hold it.
fn unit_path(path: &Path) -> Result<&str> {
    let text = path.to_str().context("paths must be UTF-8")?;
    // systemd splits command lines at whitespace, unquotes quotes, unescapes backslashes,
    // and refuses a program path holding any of them.
    let unsafe_char =
        |c: char| c.is_whitespace() || c.is_control() || matches!(c, '"' | '\'' | '\\');
    if !path.is_absolute() || text.chars().any(unsafe_char) {
        bail!("{text:?}: the unit needs an absolute path without spaces, quotes or backslashes");
    }
    Ok(text)
}

/// A path as any directive reads it: systemd expands `%` specifiers (`%h`, a home
/// folder) everywhere but in comments, and `%%` is a `%`.
fn escape_specifiers(path: &str) -> String {
    path.replace('%', "%%")
}

/// A path as an argument of a command line, where `${NAME}` is also expanded and `$$`
/// is a `$` (the program itself is not expanded, so it takes [`escape_specifiers`]).
fn escape_argument(path: &str) -> String {
    escape_specifiers(path).replace('$', "$$")
}

/// Everything that would keep the installed service from running `config`: paths it
/// cannot see (the config's own files included), a status socket it cannot make.
fn what_the_service_lacks(binary: &Path, config: &Path) -> Vec<String> {
    let base = config.parent().unwrap_or(Path::new("/"));
    // Read as written, once; one that cannot be read is the config check's to report.
    let file = crate::config::ConfigFile::read(config).ok();
    let named = file
        .as_ref()
        .map(|f| f.named_files(base))
        .unwrap_or_default();
    let socket = file.and_then(|f| f.status_socket).map(|s| base.join(s));
    hidden_from_the_service(binary, config, &named)
        .into_iter()
        .chain(socket.as_deref().and_then(socket_unwritable))
        .collect()
}

/// Why the service could not make its status socket at `socket`, if it could not:
/// under ProtectSystem=strict it may write only its RuntimeDirectory and StateDirectory.
fn socket_unwritable(socket: &Path) -> Option<String> {
    let run = crate::config::SERVICE_RUN_DIR;
    let writable = [Path::new(run), Path::new("/var/lib/postern")];
    (!writable.iter().any(|dir| socket.starts_with(dir))).then(|| {
        format!(
            "the service cannot make its status socket {} (ProtectSystem=strict lets it write \
             only {run} and /var/lib/postern); leave status_socket out (it is then \
             {run}/agent.sock) or put it under {run}/",
            socket.display()
        )
    })
}

/// Why the service would not see `binary`, `config` or a file the config names, if it
/// would not: the unit's ProtectHome=yes hides home folders, PrivateTmp=yes gives it a
/// /tmp of its own.
fn hidden_from_the_service(
    binary: &Path,
    config: &Path,
    named: &[(String, PathBuf)],
) -> Vec<String> {
    // A config that is a link is read where the link points.
    let target = std::fs::canonicalize(config).ok().filter(|t| t != config);
    let ours = [
        ("the program", binary, "/usr/local/bin/"),
        ("the config", config, "/etc/postern/"),
    ];
    let linked = target
        .as_deref()
        .map(|t| ("the file the config links to", t, "/etc/postern/"));
    let named = named
        .iter()
        .map(|(place, path)| (place.as_str(), path.as_path(), "/etc/postern/"));
    ours.into_iter()
        .chain(linked)
        .chain(named)
        .filter_map(|(what, path, instead)| {
            let why = hidden_why(path)?;
            Some(format!(
                "the service cannot see {what} {} ({why}); put it under {instead}",
                path.display()
            ))
        })
        .collect()
}

/// What keeps the service from seeing `path`, if anything.
fn hidden_why(path: &Path) -> Option<&'static str> {
    const HIDDEN: [(&str, &str); 5] = [
        ("/home/", "ProtectHome=yes hides home folders"),
        ("/root/", "ProtectHome=yes hides home folders"),
        ("/run/user/", "ProtectHome=yes hides home folders"),
        ("/tmp/", "PrivateTmp=yes gives it a /tmp of its own"),
        ("/var/tmp/", "PrivateTmp=yes gives it a /var/tmp of its own"),
    ];
    HIDDEN
        .iter()
        .find(|(prefix, _)| path.starts_with(prefix))
        .map(|(_, why)| *why)
}

/// Not canonicalized: a config that is a link keeps its own folder in the unit, the one
/// the agent (and every command) takes the relative paths in it from.
fn absolute(config: &Path) -> Result<PathBuf> {
    let path =
        std::path::absolute(config).with_context(|| format!("finding {}", config.display()))?;
    std::fs::metadata(&path).with_context(|| format!("finding {}", path.display()))?;
    Ok(path)
}

fn this_binary() -> Result<PathBuf> {
    std::env::current_exe().context("finding this program's path")
}

/// Prints the unit `install` would write, and on stderr what would keep it from starting.
pub(crate) fn print_unit(config: &Path) -> Result<()> {
    // A config not written yet still gets its unit, for the absolute path it will have.
    let config = absolute(config)
        .or_else(|_| std::path::absolute(config))
        .unwrap_or_else(|_| config.to_owned());
    let binary = this_binary()?;
    let text = unit(&binary, &config)?;
    for why in what_the_service_lacks(&binary, &config) {
        eprintln!("warning: {why}");
    }
    super::out::stdout(|out| out.write_all(text.as_bytes()))
}

fn say(text: &str) -> Result<()> {
    super::out::stdout(|out| writeln!(out, "{text}"))
}

fn require_systemd_and_root() -> Result<()> {
    if !Path::new("/run/systemd/system").is_dir() {
        bail!(
            "systemd is not running on this machine (no /run/systemd/system): start `postern run --config FILE` with this system's own service manager instead"
        );
    }
    if crate::config::current_uid() != Some(0) {
        bail!("installing a system service needs root: sudo postern service …");
    }
    Ok(())
}

/// Runs a command, printing it first, and hands back what it did.
fn run_output(program: &str, args: &[&str]) -> Result<std::process::Output> {
    say(&format!("+ {program} {}", args.join(" ")))?;
    Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))
}

/// Runs a command, printing it first; fails with its output if it fails.
fn run(program: &str, args: &[&str]) -> Result<()> {
    let out = run_output(program, args)?;
    if !out.status.success() {
        bail!(
            "{program} {} failed: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

pub(crate) fn install(config: &Path) -> Result<()> {
    require_systemd_and_root()?;
    let unit_path = Path::new(UNIT_DIR).join(UNIT_NAME);
    refuse_a_linked_unit(&unit_path)?;
    let config = absolute(config)?;
    let binary = this_binary()?;
    let unit = unit(&binary, &config)?;
    let lacks = what_the_service_lacks(&binary, &config);
    if !lacks.is_empty() {
        bail!("{}", lacks.join("\n"));
    }
    let config_text = config.display().to_string();
    if Command::new("getent")
        .args(["passwd", SERVICE_USER])
        .output()
        .map_or(true, |o| !o.status.success())
    {
        run(
            "useradd",
            &[
                "--system",
                "--user-group",
                "--home-dir",
                "/var/lib/postern",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                SERVICE_USER,
            ],
        )?;
    }
    // The config, and its folder when that is a private one (as `sudo postern init` makes
    // /etc/postern), become the service user's, as the .deb makes them; given back if the
    // service user still cannot load the config.
    let named = crate::config::ConfigFile::read(&config)
        .map(|f| f.named_files(config.parent().unwrap_or(Path::new("/"))))
        .unwrap_or_default();
    let handed = hand_over(&config, &named)?;
    let binary_text = binary.display().to_string();
    let unchecked = match check_as_service_user(&binary_text, &config_text) {
        Ok(unchecked) => unchecked,
        Err(e) => {
            for (path, uid, gid) in handed.iter().rev() {
                let _ = std::os::unix::fs::chown(path, Some(*uid), Some(*gid));
            }
            return Err(e);
        }
    };
    if !unchecked.is_empty() {
        say(&format!(
            "note: not checked here, as sudo does not pass them on; the unit's environment \
             must set them (EnvironmentFile= in a drop-in: `systemctl edit {UNIT_NAME}`):\n  {}",
            unchecked.join("\n  ")
        ))?;
    }
    write_unit(&unit_path, &unit).with_context(|| format!("writing {}", unit_path.display()))?;
    say(&format!("wrote {}", unit_path.display()))?;
    run("systemctl", &["daemon-reload"])?;
    run("systemctl", &["enable", UNIT_NAME])?;
    // A restart, not a start: an agent already running (an install again, with another
    // config or binary) must pick the new unit up.
    run("systemctl", &["restart", UNIT_NAME])?;
    // The unit is Type=notify: an agent that cannot load its config or bind its sockets
    // fails the restart above; one that exits after it said it was ready is caught here.
    std::thread::sleep(std::time::Duration::from_secs(2));
    let active = Command::new("systemctl")
        .args(["is-active", "--quiet", UNIT_NAME])
        .status()
        .is_ok_and(|s| s.success());
    if !active {
        bail!(
            "{UNIT_NAME} did not stay up; `systemctl status {UNIT_NAME}` and `journalctl -u {UNIT_NAME}` say why"
        );
    }
    say(&format!(
        "postern-agent is running; `sudo postern status --config {config_text}` shows how it is"
    ))
}

/// `postern config check` as the service user: the files the config names must be its to
/// read. The variables the unit's environment sets are not set in the installer's shell:
/// a config whose only problems are those passes, and they come back to be named.
fn check_as_service_user(binary: &str, config: &str) -> Result<Vec<String>> {
    let args = [
        "-u",
        SERVICE_USER,
        "--",
        binary,
        "config",
        "check",
        "--config",
        config,
    ];
    let out = run_output("runuser", &args)?;
    if out.status.success() {
        return Ok(Vec::new());
    }
    let said = String::from_utf8_lossy(&out.stderr);
    if let Some(unset) = only_unset_variables(&said) {
        return Ok(unset);
    }
    bail!(
        "the service user ({SERVICE_USER}) cannot load the config; give it the files the \
         config names (chown {SERVICE_USER} …) and mend what else `runuser {}` said:\n{}{said}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
    )
}

/// The problems a failed `config check` listed, if every one is a variable not set here.
fn only_unset_variables(said: &str) -> Option<Vec<String>> {
    let listed: Vec<String> = said
        .lines()
        .filter_map(|l| l.strip_prefix("  - "))
        .map(str::to_owned)
        .collect();
    // One problem comes on the error's own line.
    let problems = if listed.is_empty() {
        vec![said.trim().to_owned()]
    } else {
        listed
    };
    problems
        .iter()
        .all(|p| crate::config::is_unset_variable(p))
        .then_some(problems)
}

/// Gives `config`, and its folder if it is root's alone, to the service user; returns
/// each path changed with its owner before, to give it back. Such a folder is handed over
/// only if it holds nothing but the config (its backups too) and the files it names:
/// whatever else is in it would become the service user's to replace or delete.
fn hand_over(config: &Path, named: &[(String, PathBuf)]) -> Result<Vec<(PathBuf, u32, u32)>> {
    use std::os::unix::fs::MetadataExt;
    let mut paths = vec![config.to_owned()];
    if let Some(folder) = config.parent() {
        let meta = std::fs::metadata(folder)?;
        if roots_alone(meta.mode(), meta.uid()) {
            let entries = std::fs::read_dir(folder)
                .with_context(|| format!("reading {}", folder.display()))?
                .map(|e| e.map(|e| e.file_name()))
                .collect::<std::io::Result<Vec<_>>>()?;
            let others = strangers(config, named, &entries);
            if !others.is_empty() {
                bail!(
                    "{} is root's alone, and the service user ({SERVICE_USER}) could read the \
                     config only if it were handed the folder; but it holds more than the \
                     config and the files it names ({}), which would become {SERVICE_USER}'s \
                     too. Put the config in a folder of its own \
                     (sudo postern init --config /etc/postern/agent.toml)",
                    folder.display(),
                    others.join(", ")
                );
            }
            paths.push(folder.to_owned());
        }
    }
    let owner = format!("{SERVICE_USER}:{SERVICE_USER}");
    let mut handed = Vec::new();
    for path in paths {
        let meta = std::fs::metadata(&path)?;
        run("chown", &[&owner, &path.display().to_string()])?;
        handed.push((path, meta.uid(), meta.gid()));
    }
    Ok(handed)
}

/// The entries of the config's folder that are neither the config, nor one of its
/// backups (`agent.toml.…`), nor on the way to it (a link's target) or to a file it names
/// (`keys/…`).
fn strangers(
    config: &Path,
    named: &[(String, PathBuf)],
    entries: &[std::ffi::OsString],
) -> Vec<String> {
    let folder = config.parent().unwrap_or(Path::new("/"));
    let folders = [Some(folder.to_owned()), std::fs::canonicalize(folder).ok()];
    let own = config.file_name().map(|n| n.to_string_lossy().into_owned());
    let theirs: Vec<PathBuf> = [config.to_owned()]
        .into_iter()
        .chain(std::fs::canonicalize(config))
        .chain(named.iter().map(|(_, path)| path.clone()))
        .collect();
    let mut others: Vec<String> = entries
        .iter()
        .map(|e| e.to_string_lossy().into_owned())
        .filter(|name| {
            let is_config = own
                .as_deref()
                .is_some_and(|own| name.starts_with(&format!("{own}.")));
            let on_the_way = folders.iter().flatten().any(|folder| {
                let entry = folder.join(name);
                theirs.iter().any(|path| path.starts_with(&entry))
            });
            !is_config && !on_the_way
        })
        .collect();
    others.sort();
    others
}

/// A folder only root may use (owned by root, no group or other bits), as `sudo postern
/// init` makes /etc/postern: handing it over takes nothing from anyone else.
fn roots_alone(mode: u32, uid: u32) -> bool {
    uid == 0 && mode & 0o077 == 0
}

/// A unit path that is a link is refused before anything changes: written through, a
/// masked unit (a link to /dev/null) swallowed the unit and `enable` then failed, and one
/// `systemctl link`ed from elsewhere (a package's file, say) was overwritten.
fn refuse_a_linked_unit(path: &Path) -> Result<()> {
    let Ok(to) = std::fs::read_link(path) else {
        return Ok(());
    };
    bail!(
        "{} is a symlink to {}: the unit is masked (`systemctl unmask {UNIT_NAME}`) or linked \
         from elsewhere (`systemctl disable {UNIT_NAME}` removes the link); nothing was changed",
        path.display(),
        to.display()
    )
}

/// The unit, whole or not at all (a temporary file renamed over it), readable by all as
/// systemd's units are.
fn write_unit(path: &Path, unit: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let temp = path.with_extension("service.postern-new");
    let _ = std::fs::remove_file(&temp);
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(&temp)
        .and_then(|mut file| {
            file.write_all(unit.as_bytes())?;
            file.sync_all()
        })
        .and_then(|()| std::fs::rename(&temp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    written
}

pub(crate) fn uninstall() -> Result<()> {
    require_systemd_and_root()?;
    let path = Path::new(UNIT_DIR).join(UNIT_NAME);
    if !path.exists() {
        bail!(
            "{} is not there: nothing to uninstall (a unit from the .deb is removed with `apt remove postern`)",
            path.display()
        );
    }
    // Stopping drains the calls under way; a unit that is not loaded is not an error here.
    let _ = run("systemctl", &["disable", "--now", UNIT_NAME]);
    std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
    say(&format!("removed {}", path.display()))?;
    run("systemctl", &["daemon-reload"])?;
    say(&format!(
        "the config, its files and the user {SERVICE_USER} stay where they are"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unit_runs_this_binary_on_this_config() {
        let text = unit(
            Path::new("/opt/postern/bin/postern"),
            Path::new("/etc/postern/site.toml"),
        )
        .expect("unit");
        assert!(text.contains(
            "\nExecStart=/opt/postern/bin/postern run --config /etc/postern/site.toml\n"
        ));
        assert!(text.contains("\nConditionPathExists=/etc/postern/site.toml\n"));
        assert!(!text.contains("/usr/bin/postern"));
        // `systemctl reload` fails when the agent refuses the config, as `kill -HUP` never did.
        assert!(text.contains(
            "\nExecReload=/opt/postern/bin/postern reload --config /etc/postern/site.toml\n"
        ));
        assert_eq!(text.matches("\nExecReload=").count(), 1, "{text}");
        assert!(text.contains("\nProtectSystem=strict\n") && text.contains("\nUser=postern\n"));
    }

    #[test]
    fn only_a_folder_that_is_roots_alone_is_handed_over() {
        assert!(roots_alone(0o40700, 0));
        for (mode, uid) in [
            (0o40700, 998),
            (0o40710, 0),
            (0o40750, 0),
            (0o40701, 0),
            (0o40755, 0),
        ] {
            assert!(!roots_alone(mode, uid), "{mode:o} uid {uid}");
        }
    }

    #[test]
    fn a_folder_with_others_files_is_not_handed_over() {
        let config = Path::new("/etc/postern/agent.toml");
        let named = vec![
            (
                "token_file".to_owned(),
                PathBuf::from("/etc/postern/agent.token"),
            ),
            (
                "private_key_file".to_owned(),
                PathBuf::from("/etc/postern/keys/api.pem"),
            ),
        ];
        let entries = |names: &[&str]| -> Vec<std::ffi::OsString> {
            names.iter().map(|n| (*n).into()).collect()
        };
        let ours = entries(&["agent.toml", "agent.toml.bak.1", "agent.token", "keys"]);
        assert!(strangers(config, &named, &ours).is_empty());
        let shared = entries(&["agent.toml", "db-password", "agent.token", "another.toml"]);
        assert_eq!(
            strangers(config, &named, &shared),
            vec!["another.toml", "db-password"]
        );
    }

    #[test]
    fn paths_a_unit_cannot_hold_are_refused() {
        let bin = Path::new("/usr/bin/postern");
        for config in [
            "relative.toml",
            "/etc/with space.toml",
            "/etc/q\"uote.toml",
            "/etc/it's.toml",
            "/etc/back\\slash.toml",
            "/etc/tab\t.toml",
        ] {
            assert!(unit(bin, Path::new(config)).is_err(), "{config}");
        }
        let why = unit(Path::new("/opt/a\\b/postern"), Path::new("/etc/a.toml"))
            .expect_err("a backslash in the program");
        assert!(why.to_string().contains("backslashes"), "{why}");
    }

    #[test]
    fn percent_and_dollar_in_paths_reach_systemd_as_written() {
        let text = unit(
            Path::new("/opt/50%hot/$HOME/postern"),
            Path::new("/etc/postern/%h$USER${X}.toml"),
        )
        .expect("unit");
        for line in [
            // The program is not expanded for `$`; its argument is.
            "ExecStart=/opt/50%%hot/$HOME/postern run --config /etc/postern/%%h$$USER$${X}.toml",
            "ExecReload=/opt/50%%hot/$HOME/postern reload --config /etc/postern/%%h$$USER$${X}.toml",
            "ConditionPathExists=/etc/postern/%%h$USER${X}.toml",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line}:\n{text}");
        }
        // Comments are not expanded: the path reads as it is.
        assert!(
            text.contains("init --config /etc/postern/%h$USER${X}.toml"),
            "{text}"
        );
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(
                !line.replace("%%", "").contains('%'),
                "a specifier in {line}"
            );
        }
    }

    #[test]
    fn a_config_path_holding_the_packaged_one_is_filled_in_once() {
        let text = unit(
            Path::new("/usr/local/bin/postern"),
            Path::new("/etc/postern/agent.toml.new"),
        )
        .expect("unit");
        assert!(!text.contains(".new.new"), "{text}");
        assert!(text.contains("\nConditionPathExists=/etc/postern/agent.toml.new\n"));
        assert!(text.contains("run --config /etc/postern/agent.toml.new\n"));
    }

    /// systemd's own reading of the unit, where `systemd-analyze` is installed: the program
    /// and the config are found at paths holding `%h` and `$`.
    #[test]
    fn systemd_analyze_finds_the_escaped_paths() {
        let analyze = Path::new("/usr/bin/systemd-analyze");
        if !analyze.exists() {
            println!("SKIPPED systemd unit check: systemd-analyze missing");
            return;
        }
        let dir = std::env::temp_dir().join(format!("postern-unit-%h$HOME-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp folder");
        let (program, config) = (dir.join("postern"), dir.join("%i.toml"));
        std::fs::copy("/bin/true", &program).expect("a program");
        std::fs::write(&config, "").expect("a config");
        let text = unit(&program, &config).expect("unit");
        let file = dir.join("postern-agent.service");
        std::fs::write(&file, &text).expect("unit file");
        let verify = Command::new(analyze)
            .arg("verify")
            .arg(&file)
            .output()
            .expect("systemd-analyze verify");
        let condition = text
            .lines()
            .find(|l| l.starts_with("ConditionPathExists="))
            .expect("a condition");
        let checked = Command::new(analyze)
            .args(["condition", condition])
            .output()
            .expect("systemd-analyze condition");
        let _ = std::fs::remove_dir_all(&dir);
        let stderr = String::from_utf8_lossy(&verify.stderr);
        assert!(!stderr.contains("not executable"), "{stderr}");
        assert!(
            checked.status.success(),
            "{}",
            String::from_utf8_lossy(&checked.stdout)
        );
    }

    #[test]
    fn every_path_the_service_cannot_see_is_named_at_once() {
        let why = hidden_from_the_service(
            Path::new("/tmp/b/postern"),
            Path::new("/home/a/agent.toml"),
            &[("token_file".to_owned(), PathBuf::from("/var/tmp/token"))],
        )
        .join("\n");
        assert_eq!(why.lines().count(), 3, "{why}");
        for needle in [
            "the program /tmp/b/postern",
            "the config /home/a",
            "token_file /var/tmp/token",
        ] {
            assert!(why.contains(needle), "{needle}: {why}");
        }
    }

    #[test]
    fn paths_the_service_cannot_see_are_named_with_why() {
        let (bin, config) = (
            Path::new("/usr/bin/postern"),
            Path::new("/etc/postern/a.toml"),
        );
        assert!(hidden_from_the_service(bin, config, &[]).is_empty());
        let key = |path: &str| {
            vec![(
                "connections.erp.auth.private_key_file".to_owned(),
                PathBuf::from(path),
            )]
        };
        assert!(hidden_from_the_service(bin, config, &key("/etc/postern/erp.pem")).is_empty());
        let why = hidden_from_the_service(bin, config, &key("/home/admin/keys/erp.pem")).join("\n");
        assert!(
            why.contains(
                "connections.erp.auth.private_key_file /home/admin/keys/erp.pem (ProtectHome"
            ),
            "{why}"
        );
        for (binary, config, needle) in [
            (
                "/root/.cargo/bin/postern",
                "/etc/postern/a.toml",
                "the program /root/.cargo/bin/postern (ProtectHome",
            ),
            (
                "/home/admin/.cargo/bin/postern",
                "/etc/postern/a.toml",
                "the program /home/admin",
            ),
            (
                "/usr/bin/postern",
                "/home/a/agent.toml",
                "the config /home/a/agent.toml (ProtectHome",
            ),
            (
                "/usr/bin/postern",
                "/run/user/1000/agent.toml",
                "ProtectHome",
            ),
            (
                "/usr/bin/postern",
                "/tmp/agent.toml",
                "the config /tmp/agent.toml (PrivateTmp",
            ),
            (
                "/tmp/build/postern",
                "/etc/postern/a.toml",
                "the program /tmp/build/postern (PrivateTmp",
            ),
            ("/usr/bin/postern", "/var/tmp/x/agent.toml", "PrivateTmp"),
        ] {
            let why = hidden_from_the_service(Path::new(binary), Path::new(config), &[]).join("\n");
            assert!(why.contains(needle), "{binary} {config}: {why:?}");
        }
    }
}
