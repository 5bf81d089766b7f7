//! The real `postern`'s and `postern-relay`'s exit code for a command line that does not
//! parse: 64 (EX_USAGE), never one a command uses for an outcome (`postern status` exits 2
//! for "no agent").

use std::process::{Command, Output, Stdio};

use anyhow::{Context, Result};
use postern_tests::harness::{Bins, output_text, relay_cli_output};

fn bins() -> Bins {
    postern_tests::bins!()
}

fn postern(args: &[&str], env: &[(&str, &str)]) -> Result<Output> {
    Command::new(bins().agent)
        .args(args)
        .envs(env.iter().copied())
        // No agent runs there: a parsed `status` would exit 2.
        .env("POSTERN_CONFIG", "/nonexistent/postern-usage/agent.toml")
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running postern {args:?}"))
}

#[test]
fn usage_errors_exit_64_and_help_exits_0() -> Result<()> {
    for (args, env) in [
        (&["status", "--jsn"][..], &[][..]),
        (&["reload", "--force"][..], &[][..]),
        (&["status"][..], &[("POSTERN_LOG_FORMAT", "xml")][..]),
        // Not levels: EnvFilter would take them as targets and drop every line.
        (&["status", "--log-level", "warning"][..], &[][..]),
        (&["status"][..], &[("POSTERN_LOG", "inof")][..]),
        (&["no-such-command"][..], &[][..]),
        (&[][..], &[][..]),
        // Parsed, but not going together: said before any file is read, exit 64 too.
        (
            &[
                "connection",
                "add",
                "x",
                "--base-uri",
                "http://h/",
                "--auth",
                "jwt_bearer",
                "--algorithm",
                "RS256",
                "--payload",
                "aud",
            ][..],
            &[][..],
        ),
        (
            &[
                "connection",
                "add",
                "x",
                "--base-uri",
                "http://h/",
                "--auth",
                "jwt_bearer",
            ][..],
            &[][..],
        ),
        (
            &[
                "connection",
                "add",
                "x",
                "--base-uri",
                "http://h/",
                "--algorithm",
                "RS256",
            ][..],
            &[][..],
        ),
    ] {
        let out = postern(args, env)?;
        assert_eq!(
            out.status.code(),
            Some(64),
            "{args:?} {env:?}: {}",
            output_text(&out)
        );
        assert!(!out.stderr.is_empty(), "{args:?}: says why");
    }
    for args in [
        &["--help"][..],
        &["--version"][..],
        &["status", "--help"][..],
        &["help"][..],
    ] {
        let out = postern(args, &[])?;
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?}: {}",
            output_text(&out)
        );
        assert!(!out.stdout.is_empty(), "{args:?} prints on stdout");
    }
    Ok(())
}

#[test]
fn the_relay_cli_exits_64_on_usage_errors_too() -> Result<()> {
    let relay = |args: &[&str]| relay_cli_output(&bins(), args);
    for args in [
        &["agent", "list", "--jsn"][..],
        &["serve", "--no-such"][..],
        &["--log-level", "warning", "agent", "list"][..],
        &[][..],
        &["agent", "rotate", "w1", "--grace", "5x"][..],
        &["agent", "rotate", "w1", "--grace", "48h"][..],
        &["agent", "rotate", "w1", "--grace", "300"][..],
    ] {
        let out = relay(args)?;
        assert_eq!(
            out.status.code(),
            Some(64),
            "{args:?}: {}",
            output_text(&out)
        );
    }
    for args in [&["--help"][..], &["--version"][..]] {
        let out = relay(args)?;
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?}: {}",
            output_text(&out)
        );
    }
    Ok(())
}

/// `RUST_LOG` is read as the ecosystem reads it (a bare target is that target at every
/// level); one that does not parse is said on stderr, not dropped without a word.
#[test]
fn rust_log_is_read_as_usual_and_a_broken_one_is_said() -> Result<()> {
    let out = postern(&["status"], &[("RUST_LOG", "info,russh=loud")])?;
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("warning: RUST_LOG \"info,russh=loud\" is not a log filter"),
        "{said}"
    );
    for fine in ["russh", " info , russh=debug "] {
        let out = postern(&["status"], &[("RUST_LOG", fine)])?;
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(!said.contains("is not a log filter"), "{fine:?}: {said}");
    }
    Ok(())
}
