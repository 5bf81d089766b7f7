//! Relative paths in the relay's config file (`state_dir`, `tls_cert`, `tls_key`) are the
//! file's folder's, as in the agent's: the relay started in another folder (systemd starts
//! it in /) and the CLI run from elsewhere find the same host key, store and certificate. A TLS key
//! every user can read is warned about.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use postern_tests::harness::{output_text, relay_cli_command};
use postern_tests::pki::{KillOnDrop, self_signed};
use postern_tests::relay_support::relay_command;
use postern_tests::temp::TempDir;

#[test]
fn relative_paths_are_the_config_files_folders() -> Result<()> {
    let bins = postern_tests::bins!();
    let dir = TempDir::new("relay-config-paths")?;
    let conf = dir.path().join("conf");
    let tls = conf.join("tls");
    std::fs::create_dir_all(&tls)?;
    self_signed(&tls, "live")?;
    // Readable by all: the relay starts, and says so.
    std::fs::set_permissions(
        tls.join("live.key"),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )?;
    let config = conf.join("relay.toml");
    std::fs::write(
        &config,
        "state_dir = \"state\"\nssh_listen = \"127.0.0.1:0\"\napi_listen = \"127.0.0.1:0\"\n\
         tls_cert = \"tls/live.crt\"\ntls_key = \"tls/live.key\"\n",
    )?;

    let log = dir.path().join("serve.log");
    let relay = KillOnDrop(
        relay_command(&bins, &config)
            // Not the config's folder (systemd starts it in /; a folder of the test's own
            // here, so a regression leaves no /state behind).
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()?,
    );
    let started = Instant::now();
    let said = loop {
        let said = std::fs::read_to_string(&log)?;
        if said.contains("relay listening") {
            break said;
        }
        if started.elapsed() > Duration::from_secs(15) {
            bail!("the relay started in another folder did not listen: {said}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    drop(relay);
    let served = said
        .split("fingerprint=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .context("no fingerprint in the serve log")?;
    assert!(conf.join("state/relay.db").exists(), "{said}");
    assert!(
        said.contains("the TLS key is readable by every user"),
        "{said}"
    );

    // From another folder, the CLI reads the same state.
    let out = relay_cli_command(
        &bins,
        &["fingerprint", "--config", &config.to_string_lossy()],
    )
    .current_dir(&tls)
    .output()?;
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), served);
    Ok(())
}
