//! The packages for real: builds both .deb files with cargo-deb, installs them with dpkg
//! into this machine, checks files, users, modes and `systemd-analyze verify`, runs both
//! programs the way their units would (same user, same arguments), then upgrades, removes
//! and purges and shows the config handling the README promises. Also `install.sh --root`.
//!
//! Installing changes the machine, so it runs where CI runs (root, `CI=true`) or when
//! `POSTERN_TEST_INSTALL=1` asks for it; elsewhere it prints why it skipped.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use postern_tests::harness::{AgentProcess, Api, RelayProcess, is_root};
use postern_tests::internal_server::{InternalServer, Verifier};
use postern_tests::temp::TempDir;

const PACKAGES: [&str; 2] = ["postern", "postern-relay"];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Why this machine cannot run the install test, if it cannot.
fn cannot_install() -> Option<String> {
    let asked = std::env::var("CI").is_ok_and(|v| v == "true")
        || std::env::var("POSTERN_TEST_INSTALL").is_ok_and(|v| v == "1");
    if !asked {
        return Some(
            "installs packages into this machine: set POSTERN_TEST_INSTALL=1 (CI does)".into(),
        );
    }
    if !is_root() {
        return Some("needs root".into());
    }
    for tool in ["dpkg", "cargo-deb", "systemd-analyze", "setpriv"] {
        if !Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return Some(format!("{tool} is missing (.ci/run installs it)"));
        }
    }
    None
}

fn run(program: &str, args: &[&str]) -> Result<Output> {
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
    Ok(out)
}

/// Purges both packages when the test ends, however it ends.
struct Purge;

impl Drop for Purge {
    fn drop(&mut self) {
        let _ = Command::new("dpkg").arg("--purge").args(PACKAGES).output();
    }
}

/// `(owner, group, mode)` of a path.
fn owner_mode(path: &str) -> Result<(String, String, u32)> {
    let meta = std::fs::metadata(path).with_context(|| path.to_owned())?;
    let name = |db: &str, id: u32| -> Result<String> {
        let out = run("getent", &[db, &id.to_string()])?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .split(':')
            .next()
            .unwrap_or_default()
            .to_owned())
    };
    Ok((
        name("passwd", meta.uid())?,
        name("group", meta.gid())?,
        meta.permissions().mode() & 0o7777,
    ))
}

/// The unit's `User=`, `Environment=` and `ExecStart=` as a command run as that user.
fn as_the_unit_runs(unit: &str) -> Result<Command> {
    as_the_unit_runs_its(unit, "ExecStart")
}

/// As [`as_the_unit_runs`], for the command in `exec` (`ExecStart`, `ExecReload`).
fn as_the_unit_runs_its(unit: &str, exec: &str) -> Result<Command> {
    let text = std::fs::read_to_string(unit)?;
    let value = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .map(str::to_owned)
    };
    let user = value("User").context("no User=")?;
    let exec = value(exec).with_context(|| format!("no {exec}="))?;
    let mut command = Command::new("setpriv");
    command.args(["--reuid", &user, "--regid", &user, "--init-groups", "--"]);
    command.args(exec.split_whitespace());
    for env in text.lines().filter_map(|l| l.strip_prefix("Environment=")) {
        if let Some((k, v)) = env.split_once('=') {
            command.env(k, v);
        }
    }
    Ok(command)
}

/// A command run as `user` (as `sudo -u user` would).
fn as_user(user: &str, program: &str, args: &[&str]) -> Result<Output> {
    let mut full = vec![
        "--reuid",
        user,
        "--regid",
        user,
        "--init-groups",
        "--",
        program,
    ];
    full.extend_from_slice(args);
    run("setpriv", &full)
}

/// Copies the binaries under test to `stage/release/` by their product names and builds
/// the .deb files from them with packaging/build-deb.sh.
fn build_debs(dir: &TempDir) -> Result<Vec<PathBuf>> {
    let stage = dir.path().join("stage");
    let release = stage.join("release");
    postern_tests::bins!().stage(&release)?;
    let out = dir.path().join("debs");
    let script = repo().join("packaging/build-deb.sh");
    let built = Command::new(&script)
        .args(["--no-build", "--fast", "--out"])
        .arg(&out)
        .env("CARGO_TARGET_DIR", &stage)
        .output()?;
    if !built.status.success() {
        bail!(
            "build-deb.sh failed: {}{}",
            String::from_utf8_lossy(&built.stdout),
            String::from_utf8_lossy(&built.stderr)
        );
    }
    let mut debs: Vec<PathBuf> = std::fs::read_dir(&out)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "deb"))
        .collect();
    debs.sort();
    Ok(debs)
}

fn dpkg_install(debs: &[PathBuf]) -> Result<()> {
    let mut args = vec!["-i".to_owned()];
    args.extend(debs.iter().map(|d| d.display().to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run("dpkg", &args).map(|_| ())
}

#[tokio::test(flavor = "multi_thread")]
async fn debs_install_run_as_their_units_and_purge_cleanly() -> Result<()> {
    if let Some(why) = cannot_install() {
        println!("SKIPPED packaging install test: {why}");
        return Ok(());
    }
    let dir = TempDir::new("packaging")?;
    let debs = build_debs(&dir)?;
    let names: Vec<String> = debs
        .iter()
        .filter_map(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names[0].starts_with("postern-relay_") && names[1].starts_with("postern_"));

    let _ = Command::new("dpkg").arg("--purge").args(PACKAGES).output();
    let _purge = Purge;
    dpkg_install(&debs)?;

    // Files, owners and modes as the README states them.
    for (path, owner, group, mode) in [
        ("/usr/bin/postern", "root", "root", 0o755),
        ("/usr/bin/postern-relay", "root", "root", 0o755),
        (
            "/lib/systemd/system/postern-agent.service",
            "root",
            "root",
            0o644,
        ),
        (
            "/lib/systemd/system/postern-relay.service",
            "root",
            "root",
            0o644,
        ),
        ("/usr/share/man/man1/postern.1.gz", "root", "root", 0o644),
        (
            "/usr/share/man/man1/postern-relay.1.gz",
            "root",
            "root",
            0o644,
        ),
        (
            "/usr/share/bash-completion/completions/postern",
            "root",
            "root",
            0o644,
        ),
        (
            "/usr/share/zsh/vendor-completions/_postern-relay",
            "root",
            "root",
            0o644,
        ),
        (
            "/usr/share/doc/postern/agent.example.toml",
            "root",
            "root",
            0o644,
        ),
        ("/etc/postern", "postern", "postern", 0o700),
        ("/var/lib/postern", "postern", "postern", 0o700),
        ("/etc/postern-relay", "root", "postern-relay", 0o750),
        (
            "/etc/postern-relay/relay.toml",
            "root",
            "postern-relay",
            0o640,
        ),
        (
            "/var/lib/postern-relay",
            "postern-relay",
            "postern-relay",
            0o700,
        ),
    ] {
        let got = owner_mode(path)?;
        assert_eq!(got, (owner.to_owned(), group.to_owned(), mode), "{path}");
    }
    // The first install enables both units (deb-systemd-helper, also without a running systemd).
    for unit in UNITS {
        assert!(enabled(unit), "{unit} is enabled on the first install");
    }
    for user in PACKAGES {
        let entry = String::from_utf8(run("getent", &["passwd", user])?.stdout)?;
        assert!(entry.trim_end().ends_with(":/usr/sbin/nologin"), "{entry}");
    }
    let verify = Command::new("systemd-analyze")
        .args([
            "verify",
            "/lib/systemd/system/postern-agent.service",
            "/lib/systemd/system/postern-relay.service",
        ])
        .output()?;
    assert!(
        verify.status.success() && verify.stderr.is_empty(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&verify.stderr)
    );
    let version = String::from_utf8(run("postern", &["--version"])?.stdout)?;
    assert!(
        version.starts_with("postern 0.") && version.contains("(commit "),
        "{version}"
    );
    let version = String::from_utf8(run("postern-relay", &["--version"])?.stdout)?;
    assert!(
        version.starts_with("postern-relay 0.") && version.contains("(commit "),
        "{version}"
    );

    // The relay as its unit runs it, after the admin points it at loopback ports.
    let relay_toml = std::fs::read_to_string("/etc/postern-relay/relay.toml")?
        .replace(
            "ssh_listen = \"0.0.0.0:2222\"",
            "ssh_listen = \"127.0.0.1:0\"",
        )
        .replace(
            "api_listen = \"127.0.0.1:8080\"",
            "api_listen = \"127.0.0.1:0\"",
        );
    std::fs::write("/etc/postern-relay/relay.toml", &relay_toml)?;
    let mut relay = RelayProcess::spawn(
        as_the_unit_runs("/lib/systemd/system/postern-relay.service")?,
        Path::new("/var/lib/postern-relay"),
    )?;
    // `systemctl reload postern-relay` runs both ExecReload lines in order: the SIGHUP
    // (never held back), then `check` as the service user, which must read relay.toml.
    let unit = std::fs::read_to_string("/lib/systemd/system/postern-relay.service")?;
    let reloads: Vec<&str> = unit
        .lines()
        .filter_map(|l| l.strip_prefix("ExecReload="))
        .collect();
    assert_eq!(reloads.first(), Some(&"/bin/kill -HUP $MAINPID"), "{unit}");
    let check: Vec<&str> = reloads
        .get(1)
        .context("one ExecReload")?
        .split_whitespace()
        .collect();
    let checked = as_user("postern-relay", check[0], &check[1..])?;
    assert!(
        String::from_utf8_lossy(&checked.stdout).contains("/etc/postern-relay/relay.toml: fine"),
        "{}",
        String::from_utf8_lossy(&checked.stdout)
    );
    let host_key = owner_mode("/var/lib/postern-relay/ssh_host_ed25519_key")?;
    assert_eq!(
        host_key,
        ("postern-relay".into(), "postern-relay".into(), 0o600)
    );
    let created = |args: &[&str]| -> Result<serde_json::Value> {
        let mut full = args.to_vec();
        full.extend(["--config", "/etc/postern-relay/relay.toml", "--json"]);
        let out = as_user("postern-relay", "postern-relay", &full)?;
        Ok(serde_json::from_slice(&out.stdout)?)
    };
    let token = created(&["agent", "create", "edge"])?["token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let key = created(&["apikey", "create", "ops"])?["key"]
        .as_str()
        .unwrap_or_default()
        .to_owned();

    // The agent configured as the README says (as the postern user), run as its unit runs it.
    let internal = InternalServer::start(Verifier::None, "").await?;
    std::fs::write("/etc/postern/token", &token)?;
    run("chown", &["postern:postern", "/etc/postern/token"])?;
    std::fs::set_permissions("/etc/postern/token", std::fs::Permissions::from_mode(0o600))?;
    let relay_addr = relay.ssh.to_string();
    as_user(
        "postern",
        "postern",
        &[
            "init",
            "--config",
            "/etc/postern/agent.toml",
            "--relay",
            &relay_addr,
            "--fingerprint",
            &relay.fingerprint,
            "--token-file",
            "/etc/postern/token",
        ],
    )?;
    let base_uri = internal.base_uri();
    as_user(
        "postern",
        "postern",
        &[
            "connection",
            "add",
            "orders",
            "--config",
            "/etc/postern/agent.toml",
            "--base-uri",
            &base_uri,
            "--auth",
            "none",
        ],
    )?;
    // What RuntimeDirectory=postern makes before the unit starts.
    run(
        "install",
        &[
            "-d",
            "-o",
            "postern",
            "-g",
            "postern",
            "-m",
            "0750",
            "/run/postern",
        ],
    )?;
    let mut agent = AgentProcess::spawn(as_the_unit_runs(
        "/lib/systemd/system/postern-agent.service",
    )?)?;
    let api = Api::new(relay.api_base(), key);
    api.wait_online("edge", true, Duration::from_secs(20))
        .await?;
    let answer = api.call("edge", "orders", "/packaged").await?;
    assert_eq!(answer.status(), 200);
    // `sudo postern status` finds the service's socket with no flags but the config.
    let status = Command::new("postern")
        .args(["status", "--config", "/etc/postern/agent.toml"])
        .output()?;
    assert_eq!(
        status.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&status.stdout),
        String::from_utf8_lossy(&status.stderr)
    );
    // `systemctl reload` runs ExecReload: it says whether the agent took the config.
    let reload = || -> Result<Output> {
        Ok(
            as_the_unit_runs_its("/lib/systemd/system/postern-agent.service", "ExecReload")?
                .output()?,
        )
    };
    let reloaded = reload()?;
    assert_eq!(
        reloaded.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&reloaded.stderr)
    );
    assert!(String::from_utf8_lossy(&reloaded.stdout).contains("reloaded /etc/postern/agent.toml"));
    let good = std::fs::read_to_string("/etc/postern/agent.toml")?;
    // metrics_listen cannot change under a running agent: refused, and the reload fails.
    std::fs::write(
        "/etc/postern/agent.toml",
        format!("metrics_listen = \"127.0.0.1:9\"\n{good}"),
    )?;
    let refused = reload()?;
    let why = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{why}");
    assert!(
        why.contains("reload refused") && why.contains("metrics_listen"),
        "{why}"
    );
    std::fs::write("/etc/postern/agent.toml", &good)?;
    // SIGHUP by hand still reloads.
    postern_tests::harness::signal(agent.pid(), "HUP")?;
    agent
        .logs
        .wait_for("SIGHUP: reloading the config", Duration::from_secs(5))?;
    let answer = api.call("edge", "orders", "/after-reloads").await?;
    assert_eq!(answer.status(), 200);
    assert!(agent.terminate()?.success());
    assert!(relay.terminate()?.success());
    let agent_toml = std::fs::read_to_string("/etc/postern/agent.toml")?;

    // The admin disables the agent (what `systemctl disable` does: the link goes).
    std::fs::remove_file(wants_link(UNITS[0]))?;

    // Upgrade (the same packages again): the admin's files are kept as they are, and so
    // is the admin's choice of which units run at boot.
    dpkg_install(&debs)?;
    assert!(
        !enabled(UNITS[0]),
        "an upgrade re-enabled the agent the admin disabled"
    );
    assert!(enabled(UNITS[1]), "an upgrade kept the relay enabled");
    assert_eq!(
        std::fs::read_to_string("/etc/postern/agent.toml")?,
        agent_toml
    );
    assert_eq!(
        std::fs::read_to_string("/etc/postern-relay/relay.toml")?,
        relay_toml
    );

    // Remove: programs gone; config, token and the relay's state (host key, agents) kept.
    run("dpkg", &["--remove", "postern", "postern-relay"])?;
    assert!(
        !Path::new("/usr/bin/postern").exists() && !Path::new("/usr/bin/postern-relay").exists()
    );
    for kept in [
        "/etc/postern/agent.toml",
        "/etc/postern/token",
        "/etc/postern-relay/relay.toml",
        "/var/lib/postern-relay/ssh_host_ed25519_key",
    ] {
        assert!(Path::new(kept).exists(), "remove must keep {kept}");
    }

    // Purge: config and state gone; the system users stay.
    run("dpkg", &["--purge", "postern", "postern-relay"])?;
    for gone in [
        "/etc/postern",
        "/var/lib/postern",
        "/etc/postern-relay",
        "/var/lib/postern-relay",
    ] {
        assert!(!Path::new(gone).exists(), "purge must delete {gone}");
    }
    run("getent", &["passwd", "postern"])?;
    assert!(
        !enabled(UNITS[1]),
        "purge forgets that the relay was enabled"
    );
    Ok(())
}

/// The units the packages install, agent first.
const UNITS: [&str; 2] = ["postern-agent.service", "postern-relay.service"];

/// The link `systemctl enable` makes for a unit `WantedBy=multi-user.target`.
fn wants_link(unit: &str) -> PathBuf {
    Path::new("/etc/systemd/system/multi-user.target.wants").join(unit)
}

fn enabled(unit: &str) -> bool {
    wants_link(unit).symlink_metadata().is_ok()
}

#[test]
fn install_script_stages_everything_and_uninstalls() -> Result<()> {
    let dir = TempDir::new("install-sh")?;
    let bins = dir.path().join("bin");
    postern_tests::bins!().stage(&bins)?;
    let root = dir.path().join("root");
    let script = repo().join("packaging/install.sh");
    let run_script = |extra: &[&str]| -> Result<String> {
        let out = Command::new(&script)
            .arg("--bin-dir")
            .arg(&bins)
            .arg("--root")
            .arg(&root)
            .args(extra)
            .output()?;
        if !out.status.success() {
            bail!(
                "install.sh {extra:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    run_script(&[])?;
    let at = |p: &str| root.join(p.trim_start_matches('/'));
    let mode = |p: &str| -> Result<u32> {
        Ok(std::fs::metadata(at(p))
            .with_context(|| p.to_owned())?
            .permissions()
            .mode()
            & 0o7777)
    };
    for (path, expected) in [
        ("/usr/local/bin/postern", 0o755),
        ("/usr/local/bin/postern-relay", 0o755),
        ("/etc/systemd/system/postern-agent.service", 0o644),
        ("/etc/systemd/system/postern-relay.service", 0o644),
        ("/etc/postern", 0o700),
        ("/var/lib/postern", 0o700),
        ("/etc/postern-relay", 0o750),
        ("/etc/postern-relay/relay.toml", 0o640),
        ("/var/lib/postern-relay", 0o700),
        ("/usr/local/share/man/man1/postern.1", 0o644),
        (
            "/usr/local/share/bash-completion/completions/postern-relay",
            0o644,
        ),
    ] {
        assert_eq!(mode(path)?, expected, "{path}");
    }
    let unit = std::fs::read_to_string(at("/etc/systemd/system/postern-agent.service"))?;
    assert!(
        unit.contains("\nExecStart=/usr/local/bin/postern run --config /etc/postern/agent.toml\n")
    );
    assert!(
        unit.contains(
            "\nExecReload=/usr/local/bin/postern reload --config /etc/postern/agent.toml\n"
        ),
        "{unit}"
    );
    let unit = std::fs::read_to_string(at("/etc/systemd/system/postern-relay.service"))?;
    assert!(
        unit.contains(
            "\nExecReload=/usr/local/bin/postern-relay check --config /etc/postern-relay/relay.toml\n"
        ),
        "{unit}"
    );
    let man = std::fs::read_to_string(at("/usr/local/share/man/man1/postern.1"))?;
    assert!(man.contains(".TH postern 1"), "{man}");

    // The admin's relay.toml survives a reinstall and an uninstall; --purge takes it.
    std::fs::write(
        at("/etc/postern-relay/relay.toml"),
        "state_dir = \"/srv/relay\"\n",
    )?;
    run_script(&[])?;
    assert_eq!(
        std::fs::read_to_string(at("/etc/postern-relay/relay.toml"))?,
        "state_dir = \"/srv/relay\"\n"
    );
    run_script(&["--uninstall"])?;
    assert!(!at("/usr/local/bin/postern").exists());
    assert!(!at("/etc/systemd/system/postern-relay.service").exists());
    assert!(at("/etc/postern-relay/relay.toml").exists());
    run_script(&["--uninstall", "--purge"])?;
    assert!(!at("/etc/postern-relay").exists() && !at("/var/lib/postern").exists());
    Ok(())
}

/// The default soft limit of 1024 descriptors would cap a relay at about a thousand
/// agents (a socket each) and an agent at about a thousand calls under way.
#[test]
fn both_units_raise_the_open_file_limit() -> Result<()> {
    for unit in UNITS {
        let text = std::fs::read_to_string(repo().join("packaging/systemd").join(unit))?;
        let limits: Vec<u64> = text
            .lines()
            .filter_map(|l| l.trim().strip_prefix("LimitNOFILE="))
            .map(str::parse)
            .collect::<Result<_, _>>()?;
        assert_eq!(limits, [65536], "{unit} sets LimitNOFILE=65536 once");
    }
    Ok(())
}

#[test]
fn service_commands_write_the_packaged_unit_or_say_why_not() -> Result<()> {
    let agent = env!("CARGO_BIN_EXE_e2e-postern");
    let dir = TempDir::new("service")?;
    let config = dir.path().join("agent.toml");
    std::fs::write(&config, "")?;
    let unit = Command::new(agent)
        .args(["service", "unit", "--config"])
        .arg(&config)
        .output()?;
    assert!(
        unit.status.success(),
        "{}",
        String::from_utf8_lossy(&unit.stderr)
    );
    let text = String::from_utf8(unit.stdout)?;
    // Every path the service could not see is its own warning line.
    let hides = dir.write_private(
        "hides.toml",
        &postern_tests::harness::offline_agent_config(
            "127.0.0.1:1",
            "token_file = \"/home/nobody/token\"\n",
        ),
    )?;
    let warned = Command::new(agent)
        .args(["service", "unit", "--config"])
        .arg(&hides)
        .output()?;
    let warnings = String::from_utf8_lossy(&warned.stderr);
    let hidden: Vec<&str> = warnings
        .lines()
        .filter(|l| l.contains("the service cannot see"))
        .collect();
    assert!(hidden.len() >= 2, "{warnings}");
    assert!(
        hidden.iter().all(|l| l.starts_with("warning: ")),
        "{warnings}"
    );
    let packaged = std::fs::read_to_string(repo().join("packaging/systemd/postern-agent.service"))?;
    let config_text = std::fs::canonicalize(&config)?.display().to_string();
    assert_eq!(
        text,
        packaged
            .replace("=/usr/bin/postern ", &format!("={agent} "))
            .replace("/etc/postern/agent.toml", &config_text),
        "the installed unit is the packaged one with this binary and config"
    );
    assert!(
        text.contains(&format!(
            "\nExecReload={agent} reload --config {config_text}\n"
        )),
        "{text}"
    );
    if Path::new("/usr/bin/systemd-analyze").exists() {
        let file = dir.path().join("postern-agent.service");
        std::fs::write(&file, &text)?;
        let verify = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&file)
            .output()?;
        let stderr = String::from_utf8_lossy(&verify.stderr);
        // The man page is only there once installed; everything else must be clean.
        assert!(
            stderr
                .lines()
                .all(|l| l.contains("man postern(1)") || l.is_empty()),
            "{stderr}"
        );
    }
    if !Path::new("/run/systemd/system").exists() {
        for args in [&["service", "install"][..], &["service", "uninstall"][..]] {
            let out = Command::new(agent)
                .args(args)
                .arg("--config")
                .arg(&config)
                .output()?;
            assert_eq!(out.status.code(), Some(1), "{args:?}");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                stderr.contains("systemd is not running on this machine"),
                "{stderr}"
            );
        }
    }
    Ok(())
}
