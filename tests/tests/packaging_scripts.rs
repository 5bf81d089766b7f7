//! The packaging scripts run for real, as subprocesses. The Debian maintainer scripts and
//! `install.sh` (without `--root`) run in a private mount namespace (`unshare -rm`): root
//! there, with `/etc`, `/var/lib` and `/usr/local` replaced by folders of the test and
//! `/run` by an empty tmpfs, so nothing on this machine changes; `systemctl`,
//! `deb-systemd-helper`, `deb-systemd-invoke` and `useradd` are shims that record their
//! calls. So does the agent's own `postern service install|uninstall`, with `getent`,
//! `chown` and `runuser` shims too. `build-deb.sh` runs as packaging.rs runs it, from
//! another folder. Also the settings that only matter under the unit or a container
//! runtime: the agent example's `status_socket` and the relay container's stop timeout.

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use postern_tests::harness::output_text;
use postern_tests::temp::TempDir;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn mode(path: &Path) -> Result<u32> {
    Ok(std::fs::metadata(path)
        .with_context(|| path.display().to_string())?
        .permissions()
        .mode()
        & 0o7777)
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| path.display().to_string())
}

/// Every shim: records its name and arguments, then fails (exit 1, saying so on stderr, or
/// saying `$FAILS_SAYING` with its `\n`s) when its call matches the shell pattern `$FAILS`; `systemctl is-active --quiet UNIT`
/// answers as if exactly the units in `$ACTIVE_UNITS` ran, `getent passwd USER` as if
/// exactly the users in `$KNOWN_USERS` existed.
const SHIM: &str = r#"#!/bin/sh
name=$(basename "$0")
echo "$name $*" >> "$SHIM_LOG"
case "$name $*" in
$FAILS)
    printf '%b\n' "${FAILS_SAYING:-$name (shim): failing as the test asks}" >&2
    exit 1
    ;;
esac
if [ "$name" = systemctl ] && [ "$1" = is-active ]; then
    for unit in $ACTIVE_UNITS; do
        [ "$unit" = "$3" ] && exit 0
    done
    exit 3
fi
if [ "$name" = getent ] && [ "$1" = passwd ]; then
    for user in $KNOWN_USERS; do
        [ "$user" = "$2" ] && echo "$user:x:0:0::/var/lib/$user:/usr/sbin/nologin" && exit 0
    done
    exit 2
fi
exit 0
"#;

/// The shims of every sandbox; [`Sandbox::with_shims`] adds more.
const SHIMMED: [&str; 4] = [
    "systemctl",
    "deb-systemd-helper",
    "deb-systemd-invoke",
    "useradd",
];

/// Run by `unshare -rm sh -c SETUP sandbox DIR SYSTEMD PROGRAM ARGS…`: the sandbox's folders
/// over the system's, `/run/systemd/system` when systemd is to seem running, then PROGRAM.
const SETUP: &str = r#"set -e
dir=$1 systemd=$2
shift 2
mount -t tmpfs tmpfs /run
if [ "$systemd" = 1 ]; then mkdir -p /run/systemd/system; fi
mount --bind "$dir/var-lib" /var/lib
mount --bind "$dir/usr-local" /usr/local
mount --bind "$dir/etc" /etc
exec "$@"
"#;

/// A private mount namespace in which the test is root and the scripts' system folders
/// are its own. The service users exist there (uid 0: the only one the namespace maps).
struct Sandbox {
    dir: TempDir,
    systemd: bool,
}

impl Sandbox {
    /// `None`, after saying why, where this machine cannot make one.
    fn new(tag: &str, systemd: bool) -> Result<Option<Self>> {
        Self::with_shims(tag, systemd, &[])
    }

    /// A sandbox in which `extra` programs are shims too.
    fn with_shims(tag: &str, systemd: bool, extra: &[&str]) -> Result<Option<Self>> {
        let probe = Command::new("unshare")
            .args(["-rm", "sh", "-c", "mount -t tmpfs tmpfs /run"])
            .output();
        match probe {
            Ok(out) if out.status.success() => {}
            Ok(out) => {
                println!(
                    "SKIPPED: no private mount namespace (unshare -rm): {}",
                    output_text(&out)
                );
                return Ok(None);
            }
            Err(e) => {
                println!("SKIPPED: unshare cannot run: {e}");
                return Ok(None);
            }
        }
        let dir = TempDir::new(tag)?;
        for covered in ["/etc", "/run", "/var/lib", "/usr/local"] {
            if dir.path().starts_with(covered) {
                println!(
                    "SKIPPED: the temp folder {} is under {covered}, which the sandbox covers",
                    dir.path().display()
                );
                return Ok(None);
            }
        }
        for sub in ["etc", "var-lib", "usr-local", "shims"] {
            std::fs::create_dir(dir.path().join(sub))?;
            set_mode(&dir.path().join(sub), 0o755)?;
        }
        let etc = dir.path().join("etc");
        std::fs::write(
            etc.join("passwd"),
            "root:x:0:0:root:/root:/bin/sh\n\
             postern:x:0:0:postern agent:/var/lib/postern:/usr/sbin/nologin\n\
             postern-relay:x:0:0:postern relay:/var/lib/postern-relay:/usr/sbin/nologin\n",
        )?;
        std::fs::write(
            etc.join("group"),
            "root:x:0:\npostern:x:0:\npostern-relay:x:0:\n",
        )?;
        std::fs::write(etc.join("nsswitch.conf"), "passwd: files\ngroup: files\n")?;
        for shim in SHIMMED.iter().chain(extra) {
            let path = dir.path().join("shims").join(shim);
            std::fs::write(&path, SHIM)?;
            set_mode(&path, 0o755)?;
        }
        std::fs::write(dir.path().join("calls"), "")?;
        Ok(Some(Self { dir, systemd }))
    }

    /// Where the sandbox's `/etc/<path>` is seen from outside it.
    fn etc(&self, path: &str) -> PathBuf {
        self.dir.path().join("etc").join(path)
    }

    fn var_lib(&self, path: &str) -> PathBuf {
        self.dir.path().join("var-lib").join(path)
    }

    fn usr_local(&self, path: &str) -> PathBuf {
        self.dir.path().join("usr-local").join(path)
    }

    /// The shims' calls since the last [`Sandbox::forget_calls`], one a line.
    fn calls(&self) -> Result<Vec<String>> {
        Ok(std::fs::read_to_string(self.dir.path().join("calls"))?
            .lines()
            .map(str::to_owned)
            .collect())
    }

    fn forget_calls(&self) -> Result<()> {
        Ok(std::fs::write(self.dir.path().join("calls"), "")?)
    }

    /// `program args…` in the sandbox, with `active_units` running as far as systemctl says.
    fn run<S: AsRef<OsStr>>(
        &self,
        active_units: &str,
        program: &str,
        args: &[S],
    ) -> Result<Output> {
        self.command(active_units, program, args)
            .output()
            .with_context(|| format!("running {program} in the sandbox"))
    }

    /// The command [`Sandbox::run`] runs, for more settings of the shims (`FAILS`,
    /// `KNOWN_USERS`).
    fn command<S: AsRef<OsStr>>(&self, active_units: &str, program: &str, args: &[S]) -> Command {
        let path = format!(
            "{}:{}",
            self.dir.path().join("shims").display(),
            std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into())
        );
        let mut command = Command::new("unshare");
        command
            .args(["-rm", "sh", "-c", SETUP, "sandbox"])
            .arg(self.dir.path())
            .arg(if self.systemd { "1" } else { "0" })
            .arg(program)
            .args(args)
            .env("PATH", path)
            .env("SHIM_LOG", self.dir.path().join("calls"))
            .env("ACTIVE_UNITS", active_units)
            .env_remove("FAILS")
            .env_remove("FAILS_SAYING")
            .env_remove("KNOWN_USERS")
            .env_remove("POSTERN_CONFIG");
        command
    }
}

/// The relay's postinst must configure whatever is left of the admin's files: dpkg does not
/// bring back a conffile the admin deleted, and under `set -e` a chown of it would leave the
/// package half-configured.
#[test]
fn maintainer_scripts_configure_without_the_files_the_admin_deleted() -> Result<()> {
    let Some(sandbox) = Sandbox::new("postinst", false)? else {
        return Ok(());
    };
    let relay_postinst = repo().join("packaging/debian/relay/postinst");
    let configure = |postinst: &Path, previous: &str| -> Result<()> {
        let out = sandbox.run(
            "",
            "sh",
            &[
                postinst.as_os_str(),
                "configure".as_ref(),
                previous.as_ref(),
            ],
        )?;
        if !out.status.success() {
            bail!(
                "{} configure {previous:?} failed: {}",
                postinst.display(),
                output_text(&out)
            );
        }
        Ok(())
    };

    // An upgrade after the admin deleted relay.toml: dpkg leaves the folder, not the file.
    let etc = sandbox.etc("postern-relay");
    std::fs::create_dir(&etc)?;
    set_mode(&etc, 0o755)?;
    configure(&relay_postinst, "0.1.0-1")?;
    assert!(
        !etc.join("relay.toml").exists(),
        "a conffile the admin deleted stays deleted"
    );
    assert_eq!(mode(&etc)?, 0o750);
    assert_eq!(mode(&sandbox.var_lib("postern-relay"))?, 0o700);
    // The admin deleted the whole folder.
    std::fs::remove_dir(&etc)?;
    configure(&relay_postinst, "0.1.0-1")?;

    // The first install, relay.toml as dpkg unpacked it: it gets the relay's group and 0640.
    std::fs::create_dir(&etc)?;
    std::fs::write(etc.join("relay.toml"), "# the packaged example\n")?;
    set_mode(&etc.join("relay.toml"), 0o644)?;
    sandbox.forget_calls()?;
    configure(&relay_postinst, "")?;
    assert_eq!(mode(&etc)?, 0o750);
    assert_eq!(mode(&etc.join("relay.toml"))?, 0o640);
    assert_eq!(
        sandbox.calls()?,
        ["deb-systemd-helper enable postern-relay.service"],
        "enabled on the first install; no systemctl where systemd does not run"
    );

    // The agent's postinst makes its folders again (the admin's files in them are not its).
    configure(&repo().join("packaging/debian/agent/postinst"), "0.1.0-1")?;
    assert_eq!(mode(&sandbox.etc("postern"))?, 0o700);
    assert_eq!(mode(&sandbox.var_lib("postern"))?, 0o700);
    Ok(())
}

/// Re-running install.sh over running units restarts them (else the old program keeps
/// running); `--uninstall` says only what it did; `--root` staging leaves systemd alone.
/// A remove stops the unit and leaves it enabled; the install that brings the package
/// back starts it again if it ran before, and leaves it stopped if it did not (an upgrade
/// alike: `try-restart` only).
#[test]
fn a_reinstall_after_a_remove_runs_the_unit_again_if_it_ran() -> Result<()> {
    let Some(sandbox) = Sandbox::new("reinstall", true)? else {
        return Ok(());
    };
    for (package, unit) in [
        ("relay", "postern-relay.service"),
        ("agent", "postern-agent.service"),
    ] {
        let script = |name: &str| repo().join(format!("packaging/debian/{package}/{name}"));
        let run = |active: &str, name: &str, args: &[&str]| -> Result<Vec<String>> {
            sandbox.forget_calls()?;
            let mut all = vec![script(name).into_os_string()];
            all.extend(args.iter().map(std::ffi::OsString::from));
            let out = sandbox.run(active, "sh", &all)?;
            ensure!(
                out.status.success(),
                "{name} {args:?}: {}",
                output_text(&out)
            );
            Ok(sandbox
                .calls()?
                .into_iter()
                .filter(|c| c.starts_with("deb-systemd-invoke"))
                .collect())
        };
        run("", "postinst", &["configure", ""])?;
        for ran in [true, false] {
            let active = if ran { unit } else { "" };
            assert_eq!(
                run(active, "prerm", &["remove"])?,
                [format!("deb-systemd-invoke stop {unit}")]
            );
            let expected = if ran { "start" } else { "try-restart" };
            assert_eq!(
                run("", "postinst", &["configure", "0.1.0-1"])?,
                [format!("deb-systemd-invoke {expected} {unit}")],
                "{package}, running before the remove: {ran}"
            );
        }
        // The mark went with the reinstall: an upgrade later only restarts a running unit.
        assert_eq!(
            run("", "postinst", &["configure", "0.1.0-1"])?,
            [format!("deb-systemd-invoke try-restart {unit}")]
        );
    }
    Ok(())
}

#[test]
fn install_sh_restarts_running_units_and_uninstall_says_only_what_it_did() -> Result<()> {
    let Some(sandbox) = Sandbox::new("install-sh-systemd", true)? else {
        return Ok(());
    };
    let bins = sandbox.dir.path().join("bin");
    postern_tests::bins!().stage(&bins)?;
    let script = repo().join("packaging/install.sh");
    let install = |active: &str, extra: &[&OsStr]| -> Result<String> {
        let mut args = vec![script.as_os_str(), "--bin-dir".as_ref(), bins.as_os_str()];
        args.extend_from_slice(extra);
        let out = sandbox.run(active, "sh", &args)?;
        if !out.status.success() {
            bail!("install.sh {extra:?} failed: {}", output_text(&out));
        }
        Ok(output_text(&out))
    };
    let both = "postern-agent.service postern-relay.service";

    // Staged with --root: not a word to systemctl, even with both units running.
    let stage = sandbox.dir.path().join("stage");
    let said = install(both, &["--root".as_ref(), stage.as_os_str()])?;
    assert!(stage.join("usr/local/bin/postern").exists());
    assert_eq!(sandbox.calls()?, Vec::<String>::new(), "{said}");
    assert!(
        !said.contains("next:") && !said.contains("restarted"),
        "{said}"
    );

    // First install: nothing runs yet, so each unit waits to be configured and enabled.
    let said = install("", &[])?;
    assert!(sandbox.usr_local("bin/postern").exists());
    assert!(sandbox.etc("systemd/system/postern-relay.service").exists());
    let calls = sandbox.calls()?;
    assert!(
        calls.contains(&"systemctl daemon-reload".into()),
        "{calls:?}"
    );
    assert!(
        !calls.iter().any(|c| c.contains("restart")),
        "nothing ran, nothing restarts: {calls:?}"
    );
    for unit in ["postern-agent", "postern-relay"] {
        assert!(
            said.contains(&format!("systemctl enable --now {unit}\n")),
            "{said}"
        );
    }

    // The upgrade over a running agent (the relay stopped): after daemon-reload the agent
    // restarts with the new program; the relay is neither started nor enabled.
    sandbox.forget_calls()?;
    let said = install("postern-agent.service", &[])?;
    let calls = sandbox.calls()?;
    let at = |call: &str| calls.iter().position(|c| c == call);
    let reload = at("systemctl daemon-reload").context("no daemon-reload")?;
    let restart = at("systemctl try-restart postern-agent.service")
        .with_context(|| format!("the running agent is not restarted: {calls:?}"))?;
    assert!(reload < restart, "{calls:?}");
    assert!(
        !calls.iter().any(|c| c.contains("postern-relay.service")
            && ["start", "restart", "enable"]
                .iter()
                .any(|verb| c.starts_with(&format!("systemctl {verb} ")))),
        "the stopped relay stays stopped: {calls:?}"
    );
    assert!(said.contains("restarted postern-agent.service"), "{said}");

    // A unit that runs another config (`postern service install --config …`) is the
    // admin's: an upgrade keeps it rather than start a config that is not there.
    let unit = sandbox.etc("systemd/system/postern-agent.service");
    // Writes `text` as the unit, upgrades, and checks the unit is kept; returns what was said.
    let kept_through_an_upgrade = |text: &str| -> Result<String> {
        std::fs::write(&unit, text)?;
        let said = install("postern-agent.service", &[])?;
        assert_eq!(std::fs::read_to_string(&unit)?, text, "{said}");
        Ok(said)
    };
    let custom = std::fs::read_to_string(&unit)?.replace(
        "--config /etc/postern/agent.toml",
        "--config /opt/site/agent.toml",
    );
    let said = kept_through_an_upgrade(&custom)?;
    assert!(
        said.contains("run --config /opt/site/agent.toml"),
        "says which unit it kept: {said}"
    );

    // So is one edited otherwise (an `Environment=` for a proxy), running the same command:
    // before, only `ExecStart=` was compared, and the upgrade dropped the proxy silently.
    let packaged = sandbox.usr_local("share/doc/postern/postern-agent.service");
    let edited = std::fs::read_to_string(&packaged)?.replace(
        "[Service]\n",
        "[Service]\nEnvironment=HTTPS_PROXY=http://proxy.example:3128\n",
    );
    let said = kept_through_an_upgrade(&edited)?;
    assert!(said.contains("changed after it was installed"), "{said}");

    // A unit nobody touched since an older version installed it gets this version's.
    let older = format!("{edited}# an older version's unit\n");
    std::fs::write(&unit, &older)?;
    std::fs::write(&packaged, &older)?;
    let said = install("postern-agent.service", &[])?;
    let now = std::fs::read_to_string(&unit)?;
    assert!(
        !now.contains("older") && !now.contains("HTTPS_PROXY"),
        "{said}\n{now}"
    );

    // Man pages and completions are readable whatever root's umask (made anew: a file
    // there already would keep its mode through `>`).
    let pages = [
        "share/man/man1/postern.1",
        "share/bash-completion/completions/postern",
        "share/zsh/site-functions/_postern",
        "share/fish/vendor_completions.d/postern-relay.fish",
    ];
    for page in pages {
        std::fs::remove_file(sandbox.usr_local(page))?;
    }
    let strict = sandbox.run(
        "",
        "sh",
        &[
            "-c".as_ref(),
            "umask 077; exec sh \"$0\" \"$@\"".as_ref(),
            script.as_os_str(),
            "--bin-dir".as_ref(),
            bins.as_os_str(),
        ],
    )?;
    assert!(strict.status.success(), "{}", output_text(&strict));
    for page in pages {
        assert_eq!(mode(&sandbox.usr_local(page))?, 0o644, "{page}");
    }

    // Arguments that say something else than what would happen are refused.
    for args in [&["--purge"][..], &["--bin-dir"][..]] {
        let out = sandbox.run(
            "",
            "sh",
            &[
                &[script.as_os_str()][..],
                &args.iter().map(OsStr::new).collect::<Vec<_>>(),
            ]
            .concat(),
        )?;
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            output_text(&out)
        );
        assert!(output_text(&out).contains("usage:"), "{args:?}");
    }

    // Uninstall: the units stop and go; no advice to configure or enable them.
    sandbox.forget_calls()?;
    let said = install(both, &["--uninstall".as_ref()])?;
    assert!(!sandbox.usr_local("bin/postern").exists());
    assert!(
        said.contains("removed postern\n") && said.contains("removed postern-relay\n"),
        "{said}"
    );
    assert!(
        !said.contains("next:") && !said.contains("enable"),
        "uninstall says only what it did: {said}"
    );
    let calls = sandbox.calls()?;
    for call in [
        "systemctl disable --now postern-agent.service",
        "systemctl disable --now postern-relay.service",
        "systemctl daemon-reload",
    ] {
        assert!(calls.contains(&call.into()), "{call}: {calls:?}");
    }
    assert!(!calls.iter().any(|c| c.contains("restart")), "{calls:?}");

    // An agent installed here beside a relay the .deb installed (in /usr/bin), staged
    // under --root so that /usr/bin is the test's: uninstalling, even with --purge,
    // leaves the relay and its state alone.
    let beside = sandbox.dir.path().join("beside-deb");
    std::fs::create_dir_all(beside.join("usr/bin"))?;
    std::fs::write(beside.join("usr/bin/postern-relay"), "the .deb's relay")?;
    std::fs::create_dir_all(beside.join("var/lib/postern-relay"))?;
    std::fs::write(
        beside.join("var/lib/postern-relay/relay.db"),
        "the registry",
    )?;
    let agent_only = sandbox.dir.path().join("agent-only");
    std::fs::create_dir(&agent_only)?;
    std::fs::copy(bins.join("postern"), agent_only.join("postern"))?;
    set_mode(&agent_only.join("postern"), 0o755)?;
    let staged = |extra: &[&OsStr]| -> Result<String> {
        let mut args = vec![
            script.as_os_str(),
            "--bin-dir".as_ref(),
            agent_only.as_os_str(),
            "--root".as_ref(),
            beside.as_os_str(),
        ];
        args.extend_from_slice(extra);
        let out = sandbox.run("", "sh", &args)?;
        anyhow::ensure!(out.status.success(), "{}", output_text(&out));
        Ok(output_text(&out))
    };
    staged(&[])?;
    assert!(beside.join("usr/local/bin/postern").exists());
    let said = staged(&["--uninstall".as_ref(), "--purge".as_ref()])?;
    assert!(
        said.contains("removed postern\n")
            && said.contains("postern-relay is installed in /usr/bin, not by this script"),
        "{said}"
    );
    assert!(!said.contains("removed postern-relay"), "{said}");
    assert!(
        beside.join("var/lib/postern-relay/relay.db").exists(),
        "{said}"
    );
    assert!(beside.join("usr/bin/postern-relay").exists(), "{said}");
    assert!(!beside.join("var/lib/postern").exists(), "{said}");
    assert!(!beside.join("usr/local/bin/postern").exists(), "{said}");
    Ok(())
}

/// install.sh and a program a package put in /usr/bin: not installed over (its unit here
/// would shadow the package's, and `--uninstall --purge` would then delete the package's
/// relay state), and an install by an older version over it is undone without touching
/// the package's unit name, config or state. Binaries already in /usr/local/bin install.
#[test]
fn install_sh_leaves_a_packaged_program_alone_and_installs_binaries_in_place() -> Result<()> {
    let Some(sandbox) = Sandbox::new("install-sh-beside-deb", false)? else {
        return Ok(());
    };
    let bins = sandbox.dir.path().join("bin");
    postern_tests::bins!().stage(&bins)?;
    let script = repo().join("packaging/install.sh");
    let install = |args: &[&OsStr]| -> Result<String> {
        let out = sandbox.run("", "sh", &[&[script.as_os_str()][..], args].concat())?;
        anyhow::ensure!(out.status.success(), "{args:?}: {}", output_text(&out));
        Ok(output_text(&out))
    };

    // Downloaded straight into /usr/local/bin: before, `install` refused to copy each onto
    // itself and nothing was set up.
    std::fs::create_dir_all(sandbox.usr_local("bin"))?;
    for program in ["postern", "postern-relay"] {
        std::fs::copy(
            bins.join(program),
            sandbox.usr_local(&format!("bin/{program}")),
        )?;
    }
    let said = install(&["--bin-dir".as_ref(), "/usr/local/bin".as_ref()])?;
    assert!(
        said.contains("installed postern (postern-agent.service)"),
        "{said}"
    );
    assert!(
        sandbox.etc("systemd/system/postern-relay.service").exists(),
        "{said}"
    );
    assert_eq!(mode(&sandbox.usr_local("bin/postern"))?, 0o755);

    // The relay from the .deb (staged under --root, so that /usr/bin is the test's).
    let root = sandbox.dir.path().join("deb-root");
    std::fs::create_dir_all(root.join("usr/bin"))?;
    std::fs::write(root.join("usr/bin/postern-relay"), "the .deb's relay")?;
    std::fs::create_dir_all(root.join("var/lib/postern-relay"))?;
    std::fs::write(root.join("var/lib/postern-relay/relay.db"), "the registry")?;
    let staged = |extra: &[&OsStr]| {
        install(
            &[
                &[
                    "--bin-dir".as_ref(),
                    bins.as_os_str(),
                    "--root".as_ref(),
                    root.as_os_str(),
                ][..],
                extra,
            ]
            .concat(),
        )
    };
    let said = staged(&[])?;
    assert!(
        said.contains("postern-relay is installed in /usr/bin (the .deb?): not installed over it"),
        "{said}"
    );
    assert!(root.join("usr/local/bin/postern").exists(), "{said}");
    assert!(!root.join("usr/local/bin/postern-relay").exists(), "{said}");
    assert!(
        !root
            .join("etc/systemd/system/postern-relay.service")
            .exists(),
        "{said}"
    );

    // As a version before 2026-12-07 left it: its relay and unit over the package's.
    std::fs::copy(
        bins.join("postern-relay"),
        root.join("usr/local/bin/postern-relay"),
    )?;
    std::fs::write(
        root.join("etc/systemd/system/postern-relay.service"),
        "[Service]\n",
    )?;
    let said = staged(&["--uninstall".as_ref(), "--purge".as_ref()])?;
    assert!(
        said.contains("removed this script's postern-relay"),
        "{said}"
    );
    assert!(!root.join("usr/local/bin/postern-relay").exists(), "{said}");
    assert!(
        !root
            .join("etc/systemd/system/postern-relay.service")
            .exists(),
        "{said}"
    );
    assert!(root.join("usr/bin/postern-relay").exists(), "{said}");
    assert!(
        root.join("var/lib/postern-relay/relay.db").exists(),
        "{said}"
    );
    Ok(())
}

/// The sandbox's `postern`, as the service tests run it: the sandbox's own /usr/local (the
/// command refuses a program under /tmp, where the test's folder may be).
const POSTERN: &str = "/usr/local/bin/postern";
const AGENT_UNIT: &str = "postern-agent.service";
const AGENT_UNIT_PATH: &str = "/etc/systemd/system/postern-agent.service";
/// `postern service install` for the packaged config, as an admin runs it.
const SERVICE_INSTALL: [&str; 4] = ["service", "install", "--config", "/etc/postern/agent.toml"];

/// A sandbox for the real `postern service install|uninstall`: systemd seems to run (or not,
/// per `systemd`), the program is at [`POSTERN`], `/etc/postern/agent.toml` (0600) is in a
/// folder of `folder_mode` owned by root there (the test's uid), and `getent`, `chown` and
/// `runuser` are shims too, for what needs the machine's root.
fn service_sandbox(tag: &str, systemd: bool, folder_mode: u32) -> Result<Option<Sandbox>> {
    let Some(sandbox) = Sandbox::with_shims(tag, systemd, &["getent", "chown", "runuser"])? else {
        return Ok(None);
    };
    let bin = sandbox.usr_local("bin");
    std::fs::create_dir(&bin)?;
    set_mode(&bin, 0o755)?;
    std::fs::copy(env!("CARGO_BIN_EXE_e2e-postern"), bin.join("postern"))?;
    set_mode(&bin.join("postern"), 0o755)?;
    std::fs::create_dir_all(sandbox.etc("systemd/system"))?;
    let folder = sandbox.etc("postern");
    std::fs::create_dir(&folder)?;
    set_mode(&folder, folder_mode)?;
    // Never loaded: the config check is the runuser shim's.
    std::fs::write(folder.join("agent.toml"), "# the agent's config\n")?;
    set_mode(&folder.join("agent.toml"), 0o600)?;
    Ok(Some(sandbox))
}

/// `postern args…` in the sandbox with `active_units` running and the shims' `env`.
fn postern(
    sandbox: &Sandbox,
    active_units: &str,
    env: &[(&str, &str)],
    args: &[&str],
) -> Result<Output> {
    let mut command = sandbox.command(active_units, POSTERN, args);
    command.envs(env.iter().copied());
    command.output().context("running postern in the sandbox")
}

/// What `service install --config CONFIG` runs up to the config check: the user made when
/// `getent` does not know it, then `handed` (the config, its folder) given to it.
fn calls_up_to_the_check(config: &str, user_known: bool, handed: &[&str]) -> Vec<String> {
    let mut calls = vec!["getent passwd postern".to_owned()];
    if !user_known {
        calls.push(
            "useradd --system --user-group --home-dir /var/lib/postern --no-create-home \
             --shell /usr/sbin/nologin postern"
                .into(),
        );
    }
    calls.extend(
        handed
            .iter()
            .map(|path| format!("chown postern:postern {path}")),
    );
    calls.push(format!(
        "runuser -u postern -- {POSTERN} config check --config {config}"
    ));
    calls
}

/// What `service install` runs once the unit is written.
const CALLS_AFTER_THE_UNIT: [&str; 4] = [
    "systemctl daemon-reload",
    "systemctl enable postern-agent.service",
    "systemctl restart postern-agent.service",
    "systemctl is-active --quiet postern-agent.service",
];

/// `postern service install` where systemd runs: the `postern` user made when missing, the
/// config (and its folder while that is root's alone) handed to it and checked as it, the
/// packaged unit written with this program and config, then enabled, restarted and found
/// running. Again with the user there and a folder others may use: only the config moves.
#[test]
fn service_install_checks_the_config_as_the_user_then_writes_and_starts_the_unit() -> Result<()> {
    let Some(sandbox) = service_sandbox("service-install", true, 0o700)? else {
        return Ok(());
    };
    // Another name than the packaged unit's, so that filling it in shows.
    let config = "/etc/postern/site.toml";
    std::fs::rename(
        sandbox.etc("postern/agent.toml"),
        sandbox.etc("postern/site.toml"),
    )?;
    let args = ["service", "install", "--config", config];
    let out = postern(&sandbox, AGENT_UNIT, &[], &args)?;
    let said = output_text(&out);
    assert!(out.status.success(), "{said}");

    let packaged = std::fs::read_to_string(repo().join("packaging/systemd/postern-agent.service"))?;
    let expected = packaged
        .replace(
            "ExecStart=/usr/bin/postern run",
            &format!("ExecStart={POSTERN} run"),
        )
        .replace(
            "ExecReload=/usr/bin/postern reload",
            &format!("ExecReload={POSTERN} reload"),
        )
        .replace("/etc/postern/agent.toml", config);
    let written = std::fs::read_to_string(sandbox.etc("systemd/system/postern-agent.service"))?;
    assert_eq!(written, expected);
    for line in [
        "Type=notify",
        "User=postern",
        "ExecStart=/usr/local/bin/postern run --config /etc/postern/site.toml",
        "ExecReload=/usr/local/bin/postern reload --config /etc/postern/site.toml",
        "ConditionPathExists=/etc/postern/site.toml",
    ] {
        assert!(written.lines().any(|l| l == line), "no {line}: {written}");
    }
    assert!(!written.contains("/usr/bin/postern"), "{written}");

    let mut expected_calls = calls_up_to_the_check(config, false, &[config, "/etc/postern"]);
    expected_calls.extend(CALLS_AFTER_THE_UNIT.map(String::from));
    assert_eq!(sandbox.calls()?, expected_calls, "{said}");
    assert!(
        said.contains(&format!("wrote {AGENT_UNIT_PATH}\n")),
        "{said}"
    );
    assert!(said.contains("postern-agent is running"), "{said}");

    // Installed again, the user there, the folder 0750: the group's too, so it stays root's.
    set_mode(&sandbox.etc("postern"), 0o750)?;
    std::fs::write(sandbox.etc("systemd/system/postern-agent.service"), "old")?;
    sandbox.forget_calls()?;
    let out = postern(&sandbox, AGENT_UNIT, &[("KNOWN_USERS", "postern")], &args)?;
    let said = output_text(&out);
    assert!(out.status.success(), "{said}");
    let mut expected_calls = calls_up_to_the_check(config, true, &[config]);
    expected_calls.extend(CALLS_AFTER_THE_UNIT.map(String::from));
    assert_eq!(sandbox.calls()?, expected_calls, "{said}");
    assert_eq!(
        std::fs::read_to_string(sandbox.etc("systemd/system/postern-agent.service"))?,
        expected
    );
    Ok(())
}

/// A masked unit (a link to /dev/null) is refused before anything changes: written
/// through, the unit went into /dev/null and `enable` failed.
#[test]
fn service_install_refuses_a_masked_unit() -> Result<()> {
    let Some(sandbox) = service_sandbox("service-install-masked", true, 0o700)? else {
        return Ok(());
    };
    let unit = sandbox.etc("systemd/system/postern-agent.service");
    std::os::unix::fs::symlink("/dev/null", &unit)?;
    let out = postern(&sandbox, AGENT_UNIT, &[], &SERVICE_INSTALL)?;
    let said = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains(&format!("{AGENT_UNIT_PATH} is a symlink to /dev/null"))
            && said.contains("systemctl unmask postern-agent.service"),
        "{said}"
    );
    assert_eq!(std::fs::read_link(&unit)?, Path::new("/dev/null"));
    assert_eq!(sandbox.calls()?, Vec::<String>::new(), "{said}");
    Ok(())
}

/// The ctime of `path` in nanoseconds.
fn ctime(path: &Path) -> Result<i128> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).with_context(|| path.display().to_string())?;
    Ok(i128::from(meta.ctime()) * 1_000_000_000 + i128::from(meta.ctime_nsec()))
}

/// A config the service user cannot load stops the install before the unit, says so, and
/// gives the config and its folder back to their owners. The `chown` program is a shim and
/// the namespace maps a single uid, so no owner really changes and the uid given back cannot
/// be told from another; what shows that chown(2) gave each path back is what it does to
/// any path: it clears a file's set-user-ID bit and sets the ctime.
#[test]
fn service_install_stops_and_gives_the_owners_back_when_the_user_cannot_load_the_config()
-> Result<()> {
    let Some(sandbox) = service_sandbox("service-install-check", true, 0o700)? else {
        return Ok(());
    };
    let config = sandbox.etc("postern/agent.toml");
    set_mode(&config, 0o4600)?;
    let folder_changed = ctime(&sandbox.etc("postern"))?;
    // Past the kernel's coarse clock, so that a chown later shows in the ctime.
    std::thread::sleep(Duration::from_millis(50));
    let out = postern(
        &sandbox,
        AGENT_UNIT,
        &[("KNOWN_USERS", "postern"), ("FAILS", "runuser *")],
        &SERVICE_INSTALL,
    )?;
    let said = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    for needle in [
        "the service user (postern) cannot load the config; give it the files the config names",
        "`runuser -u postern -- /usr/local/bin/postern config check --config \
         /etc/postern/agent.toml` said:",
        "runuser (shim): failing as the test asks",
    ] {
        assert!(said.contains(needle), "no {needle:?}: {said}");
    }
    assert_eq!(
        sandbox.calls()?,
        calls_up_to_the_check(
            "/etc/postern/agent.toml",
            true,
            &["/etc/postern/agent.toml", "/etc/postern"]
        ),
        "no unit, no systemctl: {said}"
    );
    assert!(!sandbox.etc("systemd/system/postern-agent.service").exists());
    assert_eq!(
        mode(&config)?,
        0o600,
        "chown(2) gave the config back (clearing its set-user-ID bit)"
    );
    assert_ne!(
        ctime(&sandbox.etc("postern"))?,
        folder_changed,
        "chown(2) gave the folder back (setting its ctime)"
    );
    assert_eq!(mode(&sandbox.etc("postern"))?, 0o700);
    Ok(())
}

/// A config whose only problems are variables the unit's environment sets (sudo drops
/// them from the installer's shell) installs, naming them; one more problem stops it.
#[test]
fn service_install_names_the_variables_it_could_not_check_and_goes_on() -> Result<()> {
    let Some(sandbox) = service_sandbox("service-install-env", true, 0o700)? else {
        return Ok(());
    };
    let args = SERVICE_INSTALL;
    // What `config check` says of such a config, one problem and two.
    let one = "error: loading /etc/postern/agent.toml: token: environment variable \
               POSTERN_TOKEN is not set";
    let two = "error: loading /etc/postern/agent.toml: 2 problems:\n  - token: environment \
               variable POSTERN_TOKEN is not set\n  - connections.erp: auth.secret: \
               environment variable ERP_JWT_SECRET is not set";
    for said_by_check in [one, two] {
        sandbox.forget_calls()?;
        let env = [
            ("KNOWN_USERS", "postern"),
            ("FAILS", "runuser *"),
            ("FAILS_SAYING", said_by_check),
        ];
        let out = postern(&sandbox, AGENT_UNIT, &env, &args)?;
        let said = output_text(&out);
        assert!(out.status.success(), "{said}");
        for needle in [
            "note: not checked here, as sudo does not pass them on",
            "EnvironmentFile=",
            "token: environment variable POSTERN_TOKEN is not set",
            "`sudo postern status --config /etc/postern/agent.toml` shows how it is",
        ] {
            assert!(said.contains(needle), "no {needle:?}: {said}");
        }
        assert_eq!(
            said_by_check == two,
            said.contains("ERP_JWT_SECRET"),
            "{said}"
        );
        assert!(sandbox.etc("systemd/system/postern-agent.service").exists());
        assert!(
            sandbox
                .calls()?
                .contains(&CALLS_AFTER_THE_UNIT[2].to_owned())
        );
    }

    // A file it cannot read besides: refused, the unit not written again.
    std::fs::remove_file(sandbox.etc("systemd/system/postern-agent.service"))?;
    let mixed = format!(
        "{two}\n  - connections.erp: auth.secret_file: /etc/postern/erp.secret: Permission denied"
    );
    let env = [
        ("KNOWN_USERS", "postern"),
        ("FAILS", "runuser *"),
        ("FAILS_SAYING", mixed.as_str()),
    ];
    let out = postern(&sandbox, AGENT_UNIT, &env, &args)?;
    let said = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("Permission denied"), "{said}");
    assert!(!sandbox.etc("systemd/system/postern-agent.service").exists());
    Ok(())
}

/// A config that is a link (to a managed folder) is named by the link in the unit: the
/// agent takes the relative paths in it from the link's folder, as every command does.
#[test]
fn service_install_names_a_linked_config_by_its_link() -> Result<()> {
    let Some(sandbox) = service_sandbox("service-install-link", true, 0o700)? else {
        return Ok(());
    };
    let managed = sandbox.etc("postern/managed");
    std::fs::create_dir(&managed)?;
    std::fs::rename(
        sandbox.etc("postern/agent.toml"),
        managed.join("agent.toml"),
    )?;
    std::os::unix::fs::symlink("managed/agent.toml", sandbox.etc("postern/agent.toml"))?;
    let args = SERVICE_INSTALL;
    let out = postern(&sandbox, AGENT_UNIT, &[("KNOWN_USERS", "postern")], &args)?;
    let said = output_text(&out);
    assert!(out.status.success(), "{said}");
    let written = std::fs::read_to_string(sandbox.etc("systemd/system/postern-agent.service"))?;
    for line in [
        "ExecStart=/usr/local/bin/postern run --config /etc/postern/agent.toml",
        "ConditionPathExists=/etc/postern/agent.toml",
    ] {
        assert!(written.lines().any(|l| l == line), "no {line}: {written}");
    }
    assert!(!written.contains("managed"), "{written}");
    Ok(())
}

/// A unit that is not active two seconds after its restart fails the install, and the error
/// says where to look.
#[test]
fn service_install_fails_when_the_unit_does_not_stay_up() -> Result<()> {
    let Some(sandbox) = service_sandbox("service-install-down", true, 0o700)? else {
        return Ok(());
    };
    let out = postern(
        &sandbox,
        "",
        &[("KNOWN_USERS", "postern")],
        &SERVICE_INSTALL,
    )?;
    let said = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains(
            "error: postern-agent.service did not stay up; `systemctl status \
             postern-agent.service` and `journalctl -u postern-agent.service` say why"
        ),
        "{said}"
    );
    assert!(!said.contains("is running"), "{said}");
    let calls = sandbox.calls()?;
    assert_eq!(
        calls[calls.len() - CALLS_AFTER_THE_UNIT.len()..],
        CALLS_AFTER_THE_UNIT,
        "{said}"
    );
    assert!(sandbox.etc("systemd/system/postern-agent.service").exists());
    Ok(())
}

/// Refused before anything is run: a config or a program under /tmp, which the unit's
/// PrivateTmp hides from the service, and any service command where systemd does not run.
#[test]
fn service_install_refuses_what_the_service_cannot_see_before_any_call() -> Result<()> {
    let Some(sandbox) = service_sandbox("service-install-tmp", true, 0o700)? else {
        return Ok(());
    };
    // A /tmp of the sandbox's own, holding a config and a copy of the program; the test's
    // folder (maybe under /tmp: the shims, their log) is bound back where it was.
    const PRIVATE_TMP: &str = r#"set -e
dir=$1
shift
mkdir /run/keep
mount --bind "$dir" /run/keep
mount -t tmpfs tmpfs /tmp
mkdir -p "$dir"
mount --bind /run/keep "$dir"
mkdir /tmp/site
echo '# the agent config' > /tmp/site/agent.toml
cp /usr/local/bin/postern /tmp/site/postern
exec "$@"
"#;
    for (program, config, why) in [
        (
            POSTERN,
            "/tmp/site/agent.toml",
            "the service cannot see the config /tmp/site/agent.toml (PrivateTmp=yes gives it \
             a /tmp of its own); put it under /etc/postern/",
        ),
        (
            "/tmp/site/postern",
            "/etc/postern/agent.toml",
            "the service cannot see the program /tmp/site/postern (PrivateTmp=yes gives it a \
             /tmp of its own); put it under /usr/local/bin/",
        ),
    ] {
        let out = sandbox
            .command(
                AGENT_UNIT,
                "sh",
                &[
                    "-c".as_ref(),
                    PRIVATE_TMP.as_ref(),
                    "private-tmp".as_ref(),
                    sandbox.dir.path().as_os_str(),
                    program.as_ref(),
                    "service".as_ref(),
                    "install".as_ref(),
                    "--config".as_ref(),
                    config.as_ref(),
                ] as &[&OsStr],
            )
            .output()?;
        let said = output_text(&out);
        assert_eq!(out.status.code(), Some(1), "{program} {config}: {said}");
        assert!(said.contains(why), "{program} {config}: {said}");
        assert_eq!(sandbox.calls()?, Vec::<String>::new(), "{said}");
        assert!(!sandbox.etc("systemd/system/postern-agent.service").exists());
    }

    // What the config names counts too: a key under /home, a status socket the unit
    // cannot make (ProtectSystem=strict) — refused before any call.
    for (more, why) in [
        (
            "[connections.erp]\nbase_uri = \"http://h\"\n[connections.erp.auth]\ntype = \"jwt_bearer\"\nalgorithm = \"RS256\"\nprivate_key_file = \"/home/admin/erp.pem\"\n",
            "the service cannot see connections.erp.auth.private_key_file /home/admin/erp.pem (ProtectHome=yes",
        ),
        (
            "status_socket = \"agent.sock\"\n",
            "the service cannot make its status socket /etc/postern/agent.sock (ProtectSystem=strict",
        ),
    ] {
        let config = sandbox.etc("postern/agent.toml");
        std::fs::write(
            &config,
            format!("relay = \"r:2222\"\nrelay_fingerprint = \"SHA256:x\"\ntoken = \"t\"\n{more}"),
        )?;
        let out = postern(&sandbox, AGENT_UNIT, &[], &SERVICE_INSTALL)?;
        let said = output_text(&out);
        assert_eq!(out.status.code(), Some(1), "{said}");
        assert!(said.contains(why), "{said}");
        assert_eq!(sandbox.calls()?, Vec::<String>::new(), "{said}");
    }

    // No systemd running: neither command does anything, even with a unit there.
    let Some(sandbox) = service_sandbox("service-no-systemd", false, 0o700)? else {
        return Ok(());
    };
    std::fs::write(
        sandbox.etc("systemd/system/postern-agent.service"),
        "a unit",
    )?;
    for command in ["install", "uninstall"] {
        let out = postern(
            &sandbox,
            "",
            &[],
            &["service", command, "--config", "/etc/postern/agent.toml"],
        )?;
        let said = output_text(&out);
        assert_eq!(out.status.code(), Some(1), "{command}: {said}");
        assert!(
            said.contains("systemd is not running on this machine (no /run/systemd/system)"),
            "{command}: {said}"
        );
        assert_eq!(sandbox.calls()?, Vec::<String>::new(), "{command}: {said}");
    }
    assert!(sandbox.etc("systemd/system/postern-agent.service").exists());
    Ok(())
}

/// `service uninstall` stops and disables the unit, removes it and reloads systemd, leaving
/// the config; a unit systemd does not know (disable fails) is removed all the same; with
/// no unit there it says there is nothing to uninstall.
#[test]
fn service_uninstall_disables_removes_and_reloads_once() -> Result<()> {
    let Some(sandbox) = service_sandbox("service-uninstall", true, 0o700)? else {
        return Ok(());
    };
    let unit = sandbox.etc("systemd/system/postern-agent.service");
    let uninstall =
        |env: &[(&str, &str)]| postern(&sandbox, AGENT_UNIT, env, &["service", "uninstall"]);
    for fails in ["", "systemctl disable *"] {
        std::fs::write(&unit, "[Unit]\n")?;
        sandbox.forget_calls()?;
        let out = uninstall(&[("FAILS", fails)])?;
        let said = output_text(&out);
        assert!(out.status.success(), "failing {fails:?}: {said}");
        assert_eq!(
            sandbox.calls()?,
            [
                "systemctl disable --now postern-agent.service",
                "systemctl daemon-reload"
            ],
            "failing {fails:?}: {said}"
        );
        assert!(!unit.exists(), "failing {fails:?}: {said}");
        for needle in [
            &format!("removed {AGENT_UNIT_PATH}\n"),
            "the config, its files and the user postern stay where they are",
        ] {
            assert!(said.contains(needle), "failing {fails:?}: {said}");
        }
        assert!(sandbox.etc("postern/agent.toml").exists());
    }

    sandbox.forget_calls()?;
    let out = uninstall(&[])?;
    let said = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains(&format!(
            "{AGENT_UNIT_PATH} is not there: nothing to uninstall"
        )),
        "{said}"
    );
    assert_eq!(sandbox.calls()?, Vec::<String>::new(), "{said}");
    Ok(())
}

/// Removes a path the test may have made outside its temp folder, when the test ends.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A relative `--out` (and `CARGO_TARGET_DIR`) is the caller's folder, not the repository's.
#[test]
fn build_deb_takes_relative_paths_from_the_callers_folder() -> Result<()> {
    if !Command::new("sh")
        .args(["-c", "command -v cargo-deb"])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        println!("SKIPPED: cargo-deb is missing (cargo install cargo-deb --locked)");
        return Ok(());
    }
    let dir = TempDir::new("build-deb-out")?;
    // The binaries under test by their product names, as packaging.rs stages them.
    let release = dir.path().join("stage/release");
    postern_tests::bins!().stage(&release)?;
    let out = format!("debs-{}", std::process::id());
    // Where a relative --out used to land.
    let _stray = RemoveOnDrop(repo().join(&out));
    let built = Command::new("bash")
        .arg(repo().join("packaging/build-deb.sh"))
        .args(["--no-build", "--fast", "--out", &out])
        .current_dir(dir.path())
        .env("CARGO_TARGET_DIR", "stage")
        .output()?;
    assert!(built.status.success(), "{}", output_text(&built));
    assert!(
        !repo().join(&out).exists(),
        "the packages went into the repository"
    );
    let mut debs: Vec<String> = std::fs::read_dir(dir.path().join(&out))
        .with_context(|| format!("no {out} in the caller's folder: {}", output_text(&built)))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".deb"))
        .collect();
    debs.sort();
    assert_eq!(debs.len(), 2, "{debs:?}");
    assert!(debs[0].starts_with("postern-relay_") && debs[1].starts_with("postern_"));
    assert!(
        release.join("postern-assets/postern.1.gz").exists(),
        "man pages and completions come from the caller's CARGO_TARGET_DIR"
    );
    Ok(())
}

/// `KEY=value` lines of a unit or a Containerfile-style text.
fn values<'a>(text: &'a str, key: &str) -> Vec<&'a str> {
    let prefix = format!("{key}=");
    text.lines()
        .filter_map(|l| l.trim().strip_prefix(prefix.as_str()))
        .collect()
}

/// Docker's default stop timeout (10 s) is shorter than the relay's drain: the documented
/// `docker run` gives the unit's TimeoutStopSec.
#[test]
fn container_run_line_waits_for_the_relays_drain() -> Result<()> {
    let file = std::fs::read_to_string(repo().join("packaging/relay.Containerfile"))?;
    let mut run = String::new();
    for line in file
        .lines()
        .skip_while(|l| !l.starts_with("#   docker run "))
    {
        let Some(part) = line.strip_prefix("#   ") else {
            break;
        };
        run.push_str(part.trim().trim_end_matches('\\'));
        run.push(' ');
        if !line.ends_with('\\') {
            break;
        }
    }
    let words: Vec<&str> = run.split_whitespace().collect();
    let timeout = words
        .iter()
        .position(|w| *w == "--stop-timeout")
        .and_then(|i| words.get(i + 1))
        .with_context(|| format!("no --stop-timeout in the documented `{run}`"))?;
    let timeout = Duration::from_secs(timeout.parse()?);

    let unit = std::fs::read_to_string(repo().join("packaging/systemd/postern-relay.service"))?;
    let unit_stop = humantime::parse_duration(values(&unit, "TimeoutStopSec")[0])?;
    assert_eq!(
        timeout, unit_stop,
        "the container waits as long as the unit"
    );
    let example = std::fs::read_to_string(repo().join("packaging/relay.example.toml"))?;
    let grace = example
        .lines()
        .find_map(|l| l.strip_prefix("shutdown_grace = "))
        .context("no shutdown_grace in relay.example.toml")?;
    let grace = humantime::parse_duration(grace.trim_matches('"'))?;
    // The drain, then up to 3 s of goodbyes to the agents.
    assert!(timeout > grace + Duration::from_secs(3), "{timeout:?}");
    Ok(())
}

/// The image's user is a fixed number (what mounted files must be readable by, and what
/// `runAsNonRoot` can check), the one older images' volumes belong to, the one `useradd`
/// makes and README names.
#[test]
fn container_user_is_the_documented_number() -> Result<()> {
    let file = std::fs::read_to_string(repo().join("packaging/relay.Containerfile"))?;
    let user = file
        .lines()
        .find_map(|l| l.strip_prefix("USER "))
        .context("no USER line")?;
    let (uid, gid) = user.split_once(':').context("USER uid:gid")?;
    // What `useradd --system` gave the images before it was fixed: their volumes are 999's.
    assert_eq!((uid, gid), ("999", "999"), "{user}");
    assert!(file.contains(&format!("useradd --system --uid {uid} --gid {gid} ")));
    assert!(file.contains(&format!("groupadd --system --gid {gid} postern-relay")));
    let readme = std::fs::read_to_string(repo().join("README.md"))?;
    assert!(readme.contains(&format!("**uid and gid {uid}**")), "README");
    Ok(())
}

/// Uncommented, the example's `status_socket` must be a place the unit can make a socket:
/// ProtectSystem=strict leaves /etc/postern read-only.
#[test]
fn agent_example_status_socket_works_under_the_unit() -> Result<()> {
    let example = std::fs::read_to_string(repo().join("packaging/agent.example.toml"))?;
    let commented = example
        .lines()
        .find(|l| l.starts_with("# status_socket = "))
        .context("no commented status_socket in agent.example.toml")?;
    let uncommented = commented.trim_start_matches("# ");
    let value = uncommented
        .split_once('=')
        .map(|(_, v)| v.trim().trim_matches('"'))
        .context("status_socket has no value")?;

    // The agent takes it as the config's: the example still loads, and `status` looks there.
    let dir = TempDir::new("status-socket")?;
    let config = dir.write_private("agent.toml", &example.replace(commented, uncommented))?;
    let status = Command::new(env!("CARGO_BIN_EXE_e2e-postern"))
        .args(["status", "--config"])
        .arg(&config)
        .output()?;
    let said = output_text(&status);
    assert_eq!(status.status.code(), Some(2), "no agent runs: {said}");
    let here = dir.path().join(value);
    assert!(said.contains(&here.display().to_string()), "{said}");

    // Under the unit: its config's folder, and the only folders it may write.
    let unit = std::fs::read_to_string(repo().join("packaging/systemd/postern-agent.service"))?;
    assert_eq!(values(&unit, "ProtectSystem"), ["strict"]);
    let exec = values(&unit, "ExecStart")[0];
    let config = exec
        .split_whitespace()
        .skip_while(|w| *w != "--config")
        .nth(1)
        .context("ExecStart has no --config")?;
    let socket = Path::new(config)
        .parent()
        .context("config without a folder")?
        .join(value);
    let mut writable: Vec<PathBuf> = Vec::new();
    for (key, base) in [("RuntimeDirectory", "/run"), ("StateDirectory", "/var/lib")] {
        for names in values(&unit, key) {
            writable.extend(names.split_whitespace().map(|n| Path::new(base).join(n)));
        }
    }
    for paths in values(&unit, "ReadWritePaths") {
        writable.extend(paths.split_whitespace().map(PathBuf::from));
    }
    assert!(
        writable.iter().any(|w| socket.starts_with(w)),
        "under the unit the socket would be {}, outside what it may write: {writable:?}",
        socket.display()
    );
    Ok(())
}

/// A root-only folder that holds more than the config and its files (systemd's
/// credential store, say) is not handed to the service user, who could then replace or
/// delete the rest: `service install` refuses, naming what else is there, before any chown.
#[test]
fn service_install_does_not_hand_over_a_folder_holding_other_files() -> Result<()> {
    let Some(sandbox) = service_sandbox("service-install-shared", true, 0o700)? else {
        return Ok(());
    };
    std::fs::write(sandbox.etc("postern/db-password"), "another service's\n")?;
    let out = postern(&sandbox, AGENT_UNIT, &[], &SERVICE_INSTALL)?;
    let said = output_text(&out);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("db-password") && said.contains("a folder of its own"),
        "{said}"
    );
    let calls = sandbox.calls()?;
    assert!(!calls.iter().any(|c| c.starts_with("chown")), "{calls:?}");
    assert!(
        !sandbox
            .etc(AGENT_UNIT_PATH.trim_start_matches("/etc/"))
            .exists()
    );
    Ok(())
}

/// Without systemd nothing would start what install.sh put in place: it says so, rather
/// than end as if the programs would run.
#[test]
fn install_sh_without_systemd_says_nothing_starts_the_programs() -> Result<()> {
    let Some(sandbox) = Sandbox::new("install-sh-no-systemd", false)? else {
        return Ok(());
    };
    let bins = sandbox.dir.path().join("bin");
    postern_tests::bins!().stage(&bins)?;
    let script = repo().join("packaging/install.sh");
    let out = sandbox.run(
        "",
        "sh",
        &[script.as_os_str(), "--bin-dir".as_ref(), bins.as_os_str()],
    )?;
    let said = output_text(&out);
    assert!(out.status.success(), "{said}");
    assert!(sandbox.usr_local("bin/postern").exists(), "{said}");
    assert!(
        said.contains("systemd does not run here: nothing starts the programs"),
        "{said}"
    );
    // Started from ExecStart= alone, the agent's socket is not where root's `postern
    // status` looks: the unit's environment and runtime folder are said too.
    assert!(
        said.contains("XDG_RUNTIME_DIR=/run and a /run/postern owned by postern"),
        "{said}"
    );
    assert_eq!(sandbox.calls()?, Vec::<String>::new(), "{said}");
    Ok(())
}
