//! The real `postern`'s config edits refused for what the command line lacks, said in
//! the command line's terms, with the file left as it was.

use std::process::Output;

use anyhow::Result;
use postern_tests::harness::{Bins, agent_cli, offline_agent_config, output_text};
use postern_tests::temp::TempDir;

fn bins() -> Bins {
    postern_tests::bins!()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn jwt_bearer_without_an_algorithm_names_the_option() -> Result<()> {
    let dir = TempDir::new("cli-edit-alg")?;
    let config = dir.write_private("agent.toml", &offline_agent_config("127.0.0.1:1", ""))?;
    let before = std::fs::read_to_string(&config)?;
    let out = agent_cli(
        &bins(),
        &config,
        &[
            "connection",
            "add",
            "erp",
            "--base-uri",
            "http://127.0.0.1:9",
            "--auth",
            "jwt_bearer",
            "--secret-env",
            "ERP_SECRET",
        ],
    )?;
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    assert!(
        stderr(&out).contains("--auth jwt_bearer needs --algorithm (HS256, ")
            && !stderr(&out).contains("line"),
        "{}",
        stderr(&out)
    );
    assert_eq!(std::fs::read_to_string(&config)?, before);

    // An auth type that does not exist is a usage error, with the ones that do.
    let out = agent_cli(
        &bins(),
        &config,
        &[
            "connection",
            "add",
            "erp",
            "--base-uri",
            "http://h",
            "--auth",
            "jwt",
        ],
    )?;
    assert_eq!(out.status.code(), Some(64), "{}", output_text(&out));
    assert!(stderr(&out).contains("jwt_bearer"), "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(&config)?, before);
    Ok(())
}
