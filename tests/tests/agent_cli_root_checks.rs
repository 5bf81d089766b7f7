//! `sudo postern …` on the service user's config checks what that user could read: a key
//! only root can read is refused by `connection add` and `config check`, as `run` would.

use std::os::unix::fs::MetadataExt;

use anyhow::Result;
use postern_tests::harness::{
    Bins, add_jwt, agent_cli, assert_exit, is_root, offline_agent_config, output_text, stderr,
};
use postern_tests::temp::TempDir;

fn bins() -> Bins {
    postern_tests::bins!()
}

#[test]
fn root_checks_what_the_configs_owner_could_read() -> Result<()> {
    if !is_root() {
        println!("SKIPPED root checks test: needs root to own files for another user");
        return Ok(());
    }
    let service_user = 4242;
    let dir = TempDir::new("root-checks")?;
    // The folder is the service user's, as /etc/postern is.
    std::os::unix::fs::chown(dir.path(), Some(service_user), Some(service_user))?;
    let config = dir.write_private("agent.toml", &offline_agent_config("127.0.0.1:1", ""))?;
    std::os::unix::fs::chown(&config, Some(service_user), Some(service_user))?;
    // As `sudo openssl …` makes it: root's, 0600.
    let (key, _) = postern_tests::pki::ec256(dir.path())?;
    let key_file = dir.write_private("root-key.pem", &key)?;
    let before = std::fs::read_to_string(&config)?;
    let add = |name: &str, key: &str| {
        agent_cli(
            &bins(),
            &config,
            &add_jwt(name, &["--algorithm", "ES256", "--private-key-file", key]),
        )
    };
    let out = add("rk", "root-key.pem")?;
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    let said = stderr(&out);
    assert!(
        said.contains("root-key.pem: readable by uid 0 only (mode 600): `chown 4242 ")
            && said.contains("the agent runs as uid 4242, the config's owner"),
        "{said}"
    );
    assert_eq!(std::fs::read_to_string(&config)?, before, "nothing written");

    // Written by hand instead: `config check` says what `run` would.
    std::fs::write(
        &config,
        format!(
            "{before}\n[connections.rk]\nbase_uri = \"http://127.0.0.1:9\"\n[connections.rk.auth]\ntype = \"jwt_bearer\"\nalgorithm = \"ES256\"\nprivate_key_file = \"root-key.pem\"\npayload = {{ aud = \"x\" }}\n"
        ),
    )?;
    let out = agent_cli(&bins(), &config, &["config", "check"])?;
    assert_exit(&out, 1, "connections.rk.auth.private_key_file");

    // Given to the service user, it passes both.
    std::os::unix::fs::chown(&key_file, Some(service_user), Some(service_user))?;
    let out = agent_cli(&bins(), &config, &["config", "check"])?;
    assert!(out.status.success(), "{}", output_text(&out));
    let out = add("rk2", "root-key.pem")?;
    assert!(out.status.success(), "{}", output_text(&out));

    // A key anyone may read, in a folder closed to the service user (root's 0700).
    let private = dir.path().join("roots-only");
    std::fs::create_dir(&private)?;
    std::fs::set_permissions(
        &private,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )?;
    std::fs::write(private.join("open.pem"), &key)?;
    std::fs::set_permissions(
        private.join("open.pem"),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )?;
    let out = add("rk3", "roots-only/open.pem")?;
    assert_exit(&out, 1, "roots-only is closed to it (uid 0's, mode 700)");
    assert_eq!(std::fs::metadata(&config)?.uid(), service_user);
    Ok(())
}
