//! `postern init --force` keeps the old config as `<file>.bak` and carries its connections
//! over into the new one.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::{Context, Result};
use postern_tests::harness::{
    Bins, agent_command, file_mode, is_root, offline_agent_config, offline_init_command,
    other_token, output_text, stderr, stdout, unknown_token,
};
use postern_tests::temp::TempDir;

fn bins() -> Bins {
    postern_tests::bins!()
}

fn init_force(config: &Path, token: &str) -> Result<std::process::Output> {
    offline_init_command(&bins(), config, "127.0.0.1:7", token, &["--force"])
        .env_remove("ERP_SECRET")
        .output()
        .context("running postern init --force")
}

#[test]
fn init_force_keeps_the_old_file_and_carries_its_connections_over() -> Result<()> {
    let dir = TempDir::new("review-init-force")?;
    let connections = "\n# The ERP, signed with a secret from the unit's environment.\n\
         [connections.erp]\nbase_uri = \"http://127.0.0.1:9/erp\"\n\
         [connections.erp.auth]\ntype = \"jwt_bearer\"\nalgorithm = \"HS256\"\n\
         secret_env = \"ERP_SECRET\"\npayload = { iss = \"postern\" }\n\n\
         [connections.orders]\nbase_uri = \"http://127.0.0.1:9/orders\"\n";
    let old = offline_agent_config(
        "127.0.0.1:1",
        &format!("proxy = \"http://p:3128\"\n{connections}"),
    );
    let config = dir.write_private("agent.toml", &old)?;
    if is_root() {
        std::os::unix::fs::chown(&config, Some(4343), Some(4343))?;
    }

    let out = init_force(&config, &other_token())?;
    assert!(out.status.success(), "{}", output_text(&out));
    let said = stdout(&out);
    let backup = dir.path().join("agent.toml.bak");
    assert!(
        said.contains(&format!("kept as {}", backup.display()))
            && said.contains("erp, orders")
            && said.contains("copy back"),
        "{said}"
    );
    assert_eq!(std::fs::read_to_string(&backup)?, old);
    assert_eq!(file_mode(&backup)?, 0o600);
    let new = std::fs::read_to_string(&config)?;
    assert!(
        new.contains("127.0.0.1:7")
            && new.contains(&other_token())
            && new.contains(connections)
            && !new.contains("proxy"),
        "{new}"
    );
    if is_root() {
        assert_eq!(std::fs::metadata(&backup)?.uid(), 4343);
        assert_eq!(std::fs::metadata(&config)?.uid(), 4343);
    }
    // The new file loads as `run` would (with the secret the service would have).
    let out = agent_command(&bins(), &config, &["config", "check"])
        .env("ERP_SECRET", "a-secret-long-enough-for-hs256-signing")
        .output()?;
    assert!(out.status.success(), "{}", output_text(&out));

    // A file that is not TOML is kept all the same, and said to be copied back by hand;
    // beside the first backup, which a second `--force` does not replace.
    std::fs::write(&config, "relay = \n[connections.x\n")?;
    let out = init_force(&config, &unknown_token())?;
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(
        stdout(&out).contains("not valid TOML") && stdout(&out).contains("by hand"),
        "{}",
        stdout(&out)
    );
    assert_eq!(std::fs::read_to_string(&backup)?, old);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("agent.toml.bak.1"))?,
        "relay = \n[connections.x\n"
    );

    // Nor is one that is not UTF-8 text: kept byte for byte.
    let garbage = [0xff_u8, 0xfe, b'\n', 0x00, 0x80];
    std::fs::write(&config, garbage)?;
    let out = init_force(&config, &unknown_token())?;
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(stdout(&out).contains("not UTF-8"), "{}", stdout(&out));
    assert_eq!(std::fs::read(dir.path().join("agent.toml.bak.2"))?, garbage);

    // A connection that would not load is left in the backup and named, with why: carried
    // over, `run` would refuse the new file (before 2026-12-07 it was, with exit 0).
    std::fs::write(
        &config,
        offline_agent_config(
            "127.0.0.1:1",
            "[connections.broken]\nbase_uri = \"ftp://nowhere\"\n",
        ),
    )?;
    let out = init_force(&config, &other_token())?;
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(
        stdout(&out).contains("broken not carried over: left in the backup"),
        "{}",
        stdout(&out)
    );
    assert!(!std::fs::read_to_string(&config)?.contains("ftp://nowhere"));
    std::fs::write(&config, offline_agent_config("127.0.0.1:1", ""))?;

    // A config without connections has none to carry over.
    let out = init_force(&config, &other_token())?;
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(
        stdout(&out).contains("it had no connections"),
        "{}",
        stdout(&out)
    );
    Ok(())
}

/// Run by root on a config in a folder the service user owns, `init --force` does not let
/// that user aim the backup at another file: a `.bak` planted as a symlink to a file of
/// root's is neither written through nor given away, and the backup goes beside it.
#[test]
fn a_planted_backup_link_is_not_followed() -> Result<()> {
    use std::os::unix::fs::chown;
    if !is_root() {
        println!("SKIPPED planted backup link test: needs root");
        return Ok(());
    }
    let dir = TempDir::new("review-init-bak-link")?;
    let victim = dir.write_private("victim", "root's own\n")?;
    let folder = dir.path().join("etc-postern");
    std::fs::create_dir(&folder)?;
    chown(&folder, Some(4343), Some(4343))?;
    let config = folder.join("agent.toml");
    std::fs::write(&config, offline_agent_config("127.0.0.1:1", ""))?;
    chown(&config, Some(4343), Some(4343))?;
    std::os::unix::fs::symlink(&victim, folder.join("agent.toml.bak"))?;

    let out = init_force(&config, &other_token())?;
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(std::fs::read_to_string(&victim)?, "root's own\n");
    assert_eq!(
        std::fs::metadata(&victim)?.uid(),
        0,
        "root's file was given away"
    );
    let backup = folder.join("agent.toml.bak.1");
    assert_eq!(std::fs::metadata(&backup)?.uid(), 4343);
    assert!(
        stdout(&out).contains(&backup.display().to_string()),
        "{}",
        stdout(&out)
    );
    Ok(())
}

/// Of the old file's connections, those that would not load (a key file gone) stay in the
/// backup, named with why, and the new config loads; one whose secret only the service's
/// environment sets is carried. The settings not carried over are the old file's own, by
/// name: before 2026-12-07 a broken connection was carried (exit 0, then `run` refused the
/// file), and the list of settings was a fixed `token_file, proxy, status_socket, …`.
#[test]
fn init_force_leaves_connections_that_would_not_load_in_the_backup() -> Result<()> {
    let dir = TempDir::new("review-init-force-broken")?;
    let (key, _) = postern_tests::pki::ec256(dir.path())?;
    dir.write_private("ec.pem", &key)?;
    let connections = "status_socket = \"agent.sock\"\nmetrics_listen = \"127.0.0.1:34151\"\n\
        [connections.erp]\nbase_uri = \"http://127.0.0.1:9/erp\"\n\
        auth = { type = \"jwt_bearer\", algorithm = \"ES256\", private_key_file = \"ec.pem\", lifetime = \"5m\" }\n\
        [connections.gone]\nbase_uri = \"http://127.0.0.1:9/gone\"\n\
        auth = { type = \"jwt_bearer\", algorithm = \"ES256\", private_key_file = \"keys/missing.pem\", lifetime = \"5m\" }\n\
        [connections.envy]\nbase_uri = \"http://127.0.0.1:9/envy\"\n\
        auth = { type = \"jwt_bearer\", algorithm = \"HS256\", secret_env = \"ERP_SECRET\", lifetime = \"5m\" }\n";
    let old = offline_agent_config("127.0.0.1:1", connections);
    let config = dir.write_private("agent.toml", &old)?;
    let out = init_force(&config, &other_token())?;
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    let said = stdout(&out);
    assert!(
        said.contains("its connections erp, envy are in the new one; gone not carried over: left in the backup, as it would not load")
            && said.contains("connections.gone: ")
            && said.contains("missing.pem")
            && said.contains("its other settings (status_socket, metrics_listen) are not carried over")
            && !said.contains("token_file")
            && !said.contains("proxy"),
        "{said}"
    );
    assert!(stderr(&out).contains("ERP_SECRET"), "{}", stderr(&out));
    let new = std::fs::read_to_string(&config)?;
    assert!(
        new.contains("[connections.erp]")
            && new.contains("[connections.envy]")
            && !new.contains("gone"),
        "{new}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("agent.toml.bak"))?,
        old
    );
    let out = agent_command(&bins(), &config, &["config", "check"])
        .env("ERP_SECRET", "a-secret-long-enough-for-hs256-signing")
        .output()?;
    assert!(out.status.success(), "{}", output_text(&out));
    Ok(())
}
