//! `postern service unit|install|uninstall`: the agent as a systemd service, from the
//! hardened unit the packages ship, with this binary and config path filled in.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// The unit the .deb ships; `install` writes it with this binary's and config's paths.
const PACKAGED_UNIT: &str = include_str!("../../../packaging/systemd/postern-agent.service");
const PACKAGED_EXEC: &str = "/usr/bin/postern run --config /etc/postern/agent.toml";
const PACKAGED_CONFIG: &str = "/etc/postern/agent.toml";
pub const UNIT_NAME: &str = "postern-agent.service";
const UNIT_DIR: &str = "/etc/systemd/system";
const SERVICE_USER: &str = "postern";

/// The unit for `binary` running `config` (both absolute, no whitespace).
pub fn unit(binary: &Path, config: &Path) -> Result<String> {
    for path in [binary, config] {
        let text = path.to_str().context("paths must be UTF-8")?;
        if !path.is_absolute() || text.chars().any(|c| c.is_whitespace() || c == '"') {
            bail!("{text:?}: the unit needs an absolute path without spaces or quotes");
        }
    }
    // ProtectHome=yes hides these from the service.
    if ["/home/", "/root/", "/run/user/"]
        .iter()
        .any(|hidden| config.starts_with(hidden))
    {
        bail!(
            "{}: the service cannot see home folders (ProtectHome=yes); put the config under /etc/postern/",
            config.display()
        );
    }
    let exec = format!("{} run --config {}", binary.display(), config.display());
    Ok(PACKAGED_UNIT
        .replace(PACKAGED_EXEC, &exec)
        .replace(PACKAGED_CONFIG, &config.display().to_string()))
}

fn absolute(config: &Path) -> Result<PathBuf> {
    std::fs::canonicalize(config).with_context(|| format!("finding {}", config.display()))
}

fn this_binary() -> Result<PathBuf> {
    std::env::current_exe().context("finding this program's path")
}

/// Prints the unit `install` would write.
pub(crate) fn print_unit(config: &Path) -> Result<()> {
    let config = absolute(config).unwrap_or_else(|_| config.to_owned());
    let text = unit(&this_binary()?, &config)?;
    super::out::stdout(|out| out.write_all(text.as_bytes()))
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

/// Runs a command, printing it first; fails with its output if it fails.
fn run(program: &str, args: &[&str]) -> Result<()> {
    println!("+ {program} {}", args.join(" "));
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
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
    let config = absolute(config)?;
    let binary = this_binary()?;
    let unit = unit(&binary, &config)?;
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
    let owner = format!("{SERVICE_USER}:{SERVICE_USER}");
    run("chown", &[&owner, &config_text])?;
    // The service user must be able to load everything the config names (keys, token file).
    let binary_text = binary.display().to_string();
    run(
        "runuser",
        &[
            "-u",
            SERVICE_USER,
            "--",
            &binary_text,
            "config",
            "check",
            "--config",
            &config_text,
        ],
    )
    .context("the service user cannot load the config; give it the files the config names (chown postern)")?;
    let path = Path::new(UNIT_DIR).join(UNIT_NAME);
    std::fs::write(&path, unit).with_context(|| format!("writing {}", path.display()))?;
    println!("wrote {}", path.display());
    run("systemctl", &["daemon-reload"])?;
    run("systemctl", &["enable", "--now", UNIT_NAME])?;
    println!("postern-agent is running; `sudo postern status` shows how it is");
    Ok(())
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
    println!("removed {}", path.display());
    run("systemctl", &["daemon-reload"])?;
    println!("the config, its files and the user {SERVICE_USER} stay where they are");
    Ok(())
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
        assert!(text.contains("\nProtectSystem=strict\n") && text.contains("\nUser=postern\n"));
    }

    #[test]
    fn paths_the_service_could_not_use_are_refused() {
        let bin = Path::new("/usr/bin/postern");
        for config in [
            "relative.toml",
            "/etc/with space.toml",
            "/root/agent.toml",
            "/home/a/agent.toml",
        ] {
            assert!(unit(bin, Path::new(config)).is_err(), "{config}");
        }
    }
}
