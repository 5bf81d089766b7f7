//! `postern status` and `reload` on a config file that does not exist say so, not that a
//! running agent keeps its last good config.

use anyhow::Result;
use postern_tests::harness::{Bins, agent_cli, assert_exit, output_text, stderr};
use postern_tests::temp::TempDir;

fn bins() -> Bins {
    postern_tests::bins!()
}

#[test]
fn status_on_a_missing_config_says_it_does_not_exist() -> Result<()> {
    let dir = TempDir::new("review-status-missing")?;
    let missing = dir.path().join("missing.toml");
    for command in [&["status"][..], &["reload"][..]] {
        let out = agent_cli(&bins(), &missing, command)?;
        assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
        let said = stderr(&out);
        assert!(
            said.contains(&format!("{} does not exist", missing.display()))
                && said.contains("postern init")
                && !said.contains("last good config"),
            "{command:?}: {said}"
        );
    }
    // A file that is there but broken still may have a running agent behind it.
    let broken = dir.write_private("broken.toml", "relay = \n")?;
    let out = agent_cli(&bins(), &broken, &["status"])?;
    assert_exit(&out, 1, "last good config");
    Ok(())
}
