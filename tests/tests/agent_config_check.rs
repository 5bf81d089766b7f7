//! `postern config check` (and `reload`, which parses the config to find the agent) on
//! configs the real binary must refuse: without quoting secrets, and naming every problem.

use std::path::Path;

use anyhow::Result;
use postern_tests::harness::{Bins, agent_cli, offline_agent_config, output_text, unknown_token};
use postern_tests::temp::TempDir;

fn bins() -> Bins {
    postern_tests::bins!()
}

/// `postern ARGS --config CONFIG`: its exit code and stdout+stderr.
fn run(config: &Path, args: &[&str]) -> Result<(Option<i32>, String)> {
    let out = agent_cli(&bins(), config, args)?;
    Ok((out.status.code(), output_text(&out)))
}

#[test]
fn toml_errors_give_line_and_column_and_never_the_token() -> Result<()> {
    let dir = TempDir::new("cfgcheck-leak")?;
    let token = unknown_token();
    let fingerprint = "SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU";
    let head = format!("relay = \"127.0.0.1:1\"\nrelay_fingerprint = \"{fingerprint}\"\n");
    // The token's body: what must not show, even without its `pst_` prefix.
    let body = &token[4..];
    for (name, text, secret, position) in [
        (
            "unterminated.toml",
            format!("{head}token = \"{token}\n"),
            body,
            format!("line 3, column {}", 10 + token.len()),
        ),
        (
            "wrong-type.toml",
            format!("{head}token = 12345\n"),
            "12345",
            "line 3, column 9".to_owned(),
        ),
        (
            "secret.toml",
            format!(
                "{head}token = \"{token}\"\n[connections.c]\nbase_uri = \"http://h\"\n\
                 auth = {{ type = \"jwt_bearer\", algorithm = \"HS256\", secret = \"s3cr3t-hmac-key\n"
            ),
            "s3cr3t-hmac-key",
            "line 6, column".to_owned(),
        ),
    ] {
        let config = dir.write_private(name, &text)?;
        for args in [&["config", "check"][..], &["reload"]] {
            let (code, said) = run(&config, args)?;
            assert_eq!(code, Some(1), "{args:?} {name}: {said}");
            assert!(
                said.contains("TOML parse error") && said.contains(&position),
                "{args:?} {name}: {said}"
            );
            assert!(!said.contains(secret), "{args:?} {name} shows it: {said}");
        }
    }
    Ok(())
}

#[test]
fn a_wrong_type_says_what_was_expected_without_the_value() -> Result<()> {
    let dir = TempDir::new("cfgcheck-type")?;
    let config = dir.write_private(
        "agent.toml",
        &offline_agent_config(
            "127.0.0.1:1",
            "[connections.c]\nbase_uri = \"http://h\"\nmax_concurrent_calls = \"pst_notanumber\"\n",
        ),
    )?;
    let (code, said) = run(&config, &["config", "check"])?;
    assert_eq!(code, Some(1), "{said}");
    assert!(
        said.contains("line 6, column 24: invalid type: string, expected u32"),
        "{said}"
    );
    assert!(!said.contains("notanumber"), "{said}");
    Ok(())
}
