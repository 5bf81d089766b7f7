//! The real `postern`'s edits and `init --force` through a symlinked config write the file
//! it points at and leave the link; root writes through another user's link only to a file
//! that user owns.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::{Context, Result};
use postern_tests::harness::{
    Bins, agent_cli, assert_exit, file_mode, is_root, offline_agent_config, offline_init,
    offline_init_command, other_token, output_text, stderr, stdout, unknown_token,
};
use postern_tests::temp::TempDir;

fn bins() -> Bins {
    postern_tests::bins!()
}

fn is_symlink(path: &Path) -> Result<bool> {
    Ok(std::fs::symlink_metadata(path)?.file_type().is_symlink())
}

fn init_force(config: &Path, token: &str) -> Result<std::process::Output> {
    offline_init_command(&bins(), config, "127.0.0.1:7", token, &["--force"])
        .env_remove("ERP_SECRET")
        .output()
        .context("running postern init --force")
}

#[test]
fn edits_through_a_symlink_change_the_file_it_points_at() -> Result<()> {
    let dir = TempDir::new("review-symlink")?;
    std::fs::create_dir(dir.path().join("real"))?;
    let real = dir.write_private("real/agent.toml", &offline_agent_config("127.0.0.1:1", ""))?;
    let link = dir.path().join("link.toml");
    std::os::unix::fs::symlink("real/agent.toml", &link)?;

    let out = agent_cli(
        &bins(),
        &link,
        &["connection", "add", "z", "--base-uri", "http://127.0.0.1:9"],
    )?;
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(is_symlink(&link)?, "the link was replaced by a file");
    let text = std::fs::read_to_string(&real)?;
    assert!(text.contains("[connections.z]"), "{text}");
    assert_eq!(file_mode(&real)?, 0o600);
    assert!(
        stdout(&out).contains(&*real.to_string_lossy()),
        "{}",
        stdout(&out)
    );

    let token_file = dir.write_private("new-token", &format!("{}\n", other_token()))?;
    let out = agent_cli(
        &bins(),
        &link,
        &[
            "token",
            "set",
            "--token-file",
            &token_file.to_string_lossy(),
        ],
    )?;
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(is_symlink(&link)?, "token set replaced the link");
    let text = std::fs::read_to_string(&real)?;
    assert!(
        text.contains(&other_token()) && text.contains("[connections.z]"),
        "{text}"
    );

    let out = agent_cli(&bins(), &link, &["connection", "remove", "z"])?;
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(is_symlink(&link)?);
    assert!(!std::fs::read_to_string(&real)?.contains("[connections.z]"));

    // `init --force` follows it too, and keeps the old file beside the real one.
    let out = init_force(&link, &unknown_token())?;
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(is_symlink(&link)?, "init --force replaced the link");
    assert!(std::fs::read_to_string(&real)?.contains("127.0.0.1:7"));
    assert!(dir.path().join("real/agent.toml.bak").exists());
    assert!(!dir.path().join("link.toml.bak").exists());

    // A link to nothing is not made into a file where the link was, nor followed.
    let dangling = dir.path().join("dangling.toml");
    std::os::unix::fs::symlink("real/missing.toml", &dangling)?;
    let out = offline_init(&bins(), &dangling, "127.0.0.1:1", &unknown_token())?;
    assert_exit(&out, 1, "does not exist");
    assert!(is_symlink(&dangling)? && !dir.path().join("real/missing.toml").exists());
    Ok(())
}

/// Root editing the service user's link writes only a file that user owns: else the
/// service account could point its link at root's files and have `sudo postern` rewrite
/// them.
#[test]
fn root_edits_through_a_link_only_a_file_the_links_owner_owns() -> Result<()> {
    if !is_root() {
        println!("SKIPPED symlink owner test: needs root to own files for other users");
        return Ok(());
    }
    let service_user = 4242;
    let dir = TempDir::new("review-symlink-owner")?;
    let roots = dir.write_private("roots.toml", &offline_agent_config("127.0.0.1:1", ""))?;
    let before = std::fs::read_to_string(&roots)?;
    let link = dir.path().join("link.toml");
    std::os::unix::fs::symlink(&roots, &link)?;
    std::os::unix::fs::lchown(&link, Some(service_user), Some(service_user))?;
    let out = agent_cli(
        &bins(),
        &link,
        &["connection", "add", "z", "--base-uri", "http://127.0.0.1:9"],
    )?;
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    assert!(
        stderr(&out).contains("refusing to write") && stderr(&out).contains("uid 4242"),
        "{}",
        stderr(&out)
    );
    assert_eq!(std::fs::read_to_string(&roots)?, before);

    // The link's owner's own file is edited, and keeps its owner.
    std::os::unix::fs::chown(&roots, Some(service_user), Some(service_user))?;
    let out = agent_cli(
        &bins(),
        &link,
        &["connection", "add", "z", "--base-uri", "http://127.0.0.1:9"],
    )?;
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(is_symlink(&link)?);
    assert!(std::fs::read_to_string(&roots)?.contains("[connections.z]"));
    assert_eq!(std::fs::metadata(&roots)?.uid(), service_user);
    Ok(())
}

/// A `token_file` that is a link to nothing yet (a secrets mount not there) is refused,
/// not replaced by a file beside the config that the agent would then read instead.
#[test]
fn token_set_refuses_a_token_file_linked_to_nothing() -> Result<()> {
    let dir = TempDir::new("cli-token-dangling")?;
    let config = dir.write_private(
        "agent.toml",
        &format!(
            "relay = \"127.0.0.1:1\"\nrelay_fingerprint = \"{}\"\ntoken_file = \"token\"\n",
            postern_tests::harness::OFFLINE_FINGERPRINT
        ),
    )?;
    let link = dir.path().join("token");
    std::os::unix::fs::symlink(dir.path().join("mount/token"), &link)?;
    let new_token = dir.write_private("new-token", &format!("{}\n", other_token()))?;
    let out = agent_cli(
        &bins(),
        &config,
        &["token", "set", "--token-file", &new_token.to_string_lossy()],
    )?;
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    assert!(
        stderr(&out).contains("is a symlink to") && stderr(&out).contains("does not exist"),
        "{}",
        stderr(&out)
    );
    assert!(is_symlink(&link)?, "the link was replaced");
    assert!(!dir.path().join("mount").exists());

    // A token file not made yet (no link) is made where it is named.
    std::fs::remove_file(&link)?;
    let out = agent_cli(
        &bins(),
        &config,
        &["token", "set", "--token-file", &new_token.to_string_lossy()],
    )?;
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    assert_eq!(
        std::fs::read_to_string(&link)?.trim(),
        other_token(),
        "{}",
        output_text(&out)
    );
    Ok(())
}

/// `token set` on an inline token replaces the value alone: a comment after it stays.
#[test]
fn token_set_keeps_the_comment_after_an_inline_token() -> Result<()> {
    let dir = TempDir::new("cli-token-comment")?;
    let text = offline_agent_config("127.0.0.1:1", "").replace(
        &format!("token = \"{}\"", unknown_token()),
        &format!(
            "token = \"{}\"  # rotated in March, OPS-12",
            unknown_token()
        ),
    );
    assert!(text.contains("OPS-12"));
    let config = dir.write_private("agent.toml", &text)?;
    let new_token = dir.write_private("new-token", &format!("{}\n", other_token()))?;
    let out = agent_cli(
        &bins(),
        &config,
        &["token", "set", "--token-file", &new_token.to_string_lossy()],
    )?;
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    let after = std::fs::read_to_string(&config)?;
    assert!(
        after.contains(&format!(
            "token = \"{}\"  # rotated in March, OPS-12",
            other_token()
        )),
        "{after}"
    );
    Ok(())
}
