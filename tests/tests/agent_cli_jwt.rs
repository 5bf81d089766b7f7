//! The real `postern jwt decode` on tokens no signer of ours would write: times far past
//! what a date can show, and `--verify-with` given the wrong kind of key.

use std::process::{Command, Output, Stdio};

use anyhow::{Context, Result};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use postern_tests::harness::Bins;

fn bins() -> Bins {
    postern_tests::bins!()
}

fn decode(args: &[&str]) -> Result<Output> {
    Command::new(bins().agent)
        .args(["jwt", "decode"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running postern jwt decode")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn part(json: &str) -> String {
    URL_SAFE_NO_PAD.encode(json)
}

/// Whatever number a token carries as a time, decode shows it and exits 0.
#[test]
fn times_without_a_date_are_shown_as_given() -> Result<()> {
    for (claims, shown) in [
        (
            r#"{"exp":253402300800}"#,
            "exp: 253402300800 (beyond year 9999)",
        ),
        (
            r#"{"exp":18446744073709551615}"#,
            "exp: 18446744073709551615 (beyond year 9999)",
        ),
        (r#"{"exp":1e300}"#, "(beyond year 9999)"),
        (r#"{"nbf":-1}"#, "nbf: -1 (before 1970)"),
        (r#"{"iat":-9223372036854775808}"#, "(before 1970)"),
        (
            r#"{"exp":253402300799}"#,
            "exp: 253402300799 = 9999-12-31T23:59:59Z (in ",
        ),
        (
            r#"{"iat":1700000000.5}"#,
            "iat: 1700000000.5 = 2023-11-14T22:13:20Z (",
        ),
    ] {
        let token = format!("{}.{}.sig", part(r#"{"alg":"HS256"}"#), part(claims));
        let out = decode(&[&token])?;
        assert_eq!(out.status.code(), Some(0), "{claims}: {}", text(&out));
        assert!(text(&out).contains(shown), "{claims}: {}", text(&out));
    }
    Ok(())
}
