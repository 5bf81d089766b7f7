//! The real `postern jwt decode` on tokens no signer of ours would write: times far past
//! what a date can show, and `--verify-with` given the wrong kind of key.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use anyhow::{Context, Result};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use postern_tests::harness::{Bins, output_text};
use postern_tests::pki::{ec256, rsa_forms};
use postern_tests::temp::TempDir;

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
        assert_eq!(
            out.status.code(),
            Some(0),
            "{claims}: {}",
            output_text(&out)
        );
        assert!(
            output_text(&out).contains(shown),
            "{claims}: {}",
            output_text(&out)
        );
    }
    Ok(())
}

/// `--verify-with` names the key the algorithm needs and what the file holds instead
/// (exit 1, on stderr), rather than a library error or a false "INVALID".
#[test]
fn verify_with_the_wrong_kind_of_key_says_what_is_needed() -> Result<()> {
    let dir = TempDir::new("cli-jwt-keys")?;
    let d = dir.path();
    rsa_forms(d)?;
    let (_, ec_public) = ec256(d)?;
    std::fs::write(d.join("ec-pub.pem"), ec_public)?;
    std::fs::write(d.join("not-pem.txt"), "hello\n")?;

    let private = std::fs::read(d.join("rsa.pem"))?;
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
        &serde_json::json!({ "sub": "x" }),
        &jsonwebtoken::EncodingKey::from_rsa_pem(&private)?,
    )?;
    let verify = |file: &str| decode(&[&token, "--verify-with", &path(d, file)]);

    let good = verify("rsa-pub.pem")?;
    assert_eq!(good.status.code(), Some(0), "{}", output_text(&good));
    assert!(
        output_text(&good).contains("signature: valid (RS256"),
        "{}",
        output_text(&good)
    );

    for (file, holds) in [
        ("ec-pub.pem", "holds an EC P-256 public key"),
        (
            "rsa.pem",
            "holds an RSA 2048-bit private key, not a public key",
        ),
        ("rsa1.pem", "holds an RSA private key, not a public key"),
        ("ec.pem", "holds an EC private key, not a public key"),
        ("not-pem.txt", "holds no PEM block"),
    ] {
        let out = verify(file)?;
        let said = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{file}: {}", output_text(&out));
        assert!(
            said.contains("RS256 needs an RSA public key PEM") && said.contains(holds),
            "{file}: {said}"
        );
        assert!(
            !output_text(&out).contains("INVALID"),
            "{file}: {}",
            output_text(&out)
        );
    }
    let out = verify("rsa.pem")?;
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("-pubout"),
        "says how to get the public key: {}",
        output_text(&out)
    );
    Ok(())
}

fn path(dir: &Path, file: &str) -> String {
    dir.join(file).to_string_lossy().into_owned()
}
