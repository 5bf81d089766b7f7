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

/// No token on stdin is "no access token given", as for `init`, not a malformed token.
#[test]
fn token_set_with_nothing_on_stdin_says_no_token_was_given() -> Result<()> {
    let dir = TempDir::new("cli-edit-token")?;
    let config = dir.write_private("agent.toml", &offline_agent_config("127.0.0.1:1", ""))?;
    let before = std::fs::read_to_string(&config)?;
    let empty = dir.write_private("empty", "\n")?;
    let from_file = ["token", "set", "--token-file", &empty.to_string_lossy()];
    for args in [&["token", "set"][..], &from_file[..]] {
        let out = agent_cli(&bins(), &config, args)?;
        assert_eq!(
            out.status.code(),
            Some(1),
            "{args:?}: {}",
            output_text(&out)
        );
        assert!(
            stderr(&out).contains("no access token given: pass --token-file FILE"),
            "{args:?}: {}",
            stderr(&out)
        );
        assert_eq!(std::fs::read_to_string(&config)?, before);
    }
    Ok(())
}

#[test]
fn init_with_a_port_out_of_range_says_so() -> Result<()> {
    let dir = TempDir::new("cli-edit-init")?;
    let config = dir.path().join("agent.toml");
    for relay in [
        "127.0.0.1:99999",
        "relay.example.com:0",
        "[::1]:123456789012345678901",
    ] {
        let out = postern_tests::harness::agent_command(
            &bins(),
            &config,
            &[
                "init",
                "--relay",
                relay,
                "--fingerprint",
                "SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU",
            ],
        )
        .env("POSTERN_TOKEN", postern_tests::harness::unknown_token())
        .output()?;
        assert_eq!(out.status.code(), Some(1), "{relay}: {}", output_text(&out));
        assert!(
            stderr(&out).contains("is out of range (1–65535)"),
            "{relay}: {}",
            stderr(&out)
        );
        assert!(!config.exists(), "{relay}: nothing written");
    }
    Ok(())
}
