//! HS* secrets that are random bytes, given as base64: `connection add --secret-encoding`,
//! and `jwt decode --verify-with` a base64 secret file, against tokens signed by the agent
//! and by jsonwebtoken.

use anyhow::{Context, Result};
use base64::Engine;
use postern_tests::harness::{
    Bins, agent_cli, assert_exit, offline_agent_config, output_text, stdout,
};
use postern_tests::temp::TempDir;

fn bins() -> Bins {
    postern_tests::bins!()
}

/// 32 random-looking bytes that are not UTF-8, as an HMAC secret often is.
const RAW_SECRET: [u8; 32] = [
    0xff, 0x00, 0x9a, 0x3c, 0xfe, 0x10, 0x81, 0x7f, 0xc0, 0xde, 0x42, 0x99, 0x00, 0x01, 0xf0, 0x0d,
    0xba, 0xad, 0xbe, 0xef, 0x13, 0x37, 0x5e, 0xc7, 0xe7, 0x0f, 0xaa, 0x55, 0xcc, 0x33, 0x66, 0x99,
];

#[test]
fn hs_secrets_given_as_base64_sign_and_verify() -> Result<()> {
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    let dir = TempDir::new("review-b64")?;
    let config = dir.write_private("agent.toml", &offline_agent_config("127.0.0.1:1", ""))?;
    let secret = dir.write_private("hs.b64", &format!("{}\n", STANDARD.encode(RAW_SECRET)))?;
    let out = agent_cli(
        &bins(),
        &config,
        &[
            "connection",
            "add",
            "hs",
            "--base-uri",
            "http://127.0.0.1:9",
            "--auth",
            "jwt_bearer",
            "--algorithm",
            "HS256",
            "--secret-file",
            "hs.b64",
            "--secret-encoding",
            "base64",
            "--payload",
            "iss=postern",
        ],
    )?;
    assert!(out.status.success(), "{}", output_text(&out));
    let text = std::fs::read_to_string(&config)?;
    assert!(text.contains("secret_encoding = \"base64\""), "{text}");

    // The agent signs with the decoded bytes: an independent verifier agrees.
    let out = agent_cli(&bins(), &config, &["jwt", "sign", "--connection", "hs"])?;
    assert!(out.status.success(), "{}", output_text(&out));
    let signed = stdout(&out).trim().to_owned();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    validation.set_required_spec_claims::<&str>(&[]);
    jsonwebtoken::decode::<serde_json::Value>(
        &signed,
        &jsonwebtoken::DecodingKey::from_secret(&RAW_SECRET),
        &validation,
    )
    .context("the agent's token does not verify with the raw bytes")?;

    // `jwt decode` verifies it with the same file, and one signed elsewhere with the
    // URL-safe, unpadded form.
    let by_jsonwebtoken = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &serde_json::json!({ "iss": "elsewhere" }),
        &jsonwebtoken::EncodingKey::from_secret(&RAW_SECRET),
    )?;
    let url_safe = dir.write_private("hs.b64url", &URL_SAFE_NO_PAD.encode(RAW_SECRET))?;
    for (token, file) in [(&signed, &secret), (&by_jsonwebtoken, &url_safe)] {
        let out = agent_cli(
            &bins(),
            &config,
            &[
                "jwt",
                "decode",
                token,
                "--verify-with",
                &file.to_string_lossy(),
            ],
        )?;
        assert!(out.status.success(), "{}", output_text(&out));
        assert!(
            stdout(&out).contains("signature: valid (HS256")
                && stdout(&out).contains("read as base64"),
            "{}",
            stdout(&out)
        );
    }

    // Another secret fails either way, and says both were tried.
    let wrong = dir.write_private("wrong.b64", &STANDARD.encode([1u8; 32]))?;
    let out = agent_cli(
        &bins(),
        &config,
        &[
            "jwt",
            "decode",
            &signed,
            "--verify-with",
            &wrong.to_string_lossy(),
        ],
    )?;
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    assert!(
        stdout(&out).contains("signature: INVALID")
            && stdout(&out).contains("read as text and as base64"),
        "{}",
        stdout(&out)
    );

    // Only the config's two encodings, and only for jwt_bearer.
    let before = std::fs::read_to_string(&config)?;
    let base = [
        "connection",
        "add",
        "h2",
        "--base-uri",
        "http://127.0.0.1:9",
    ];
    let hex = [&base[..], &["--auth", "jwt_bearer", "--algorithm", "HS256"]].concat();
    let hex = [
        &hex[..],
        &["--secret-file", "hs.b64", "--secret-encoding", "hex"],
    ]
    .concat();
    let out = agent_cli(&bins(), &config, &hex)?;
    assert_eq!(out.status.code(), Some(64), "{}", output_text(&out));
    let none = [&base[..], &["--secret-encoding", "base64"]].concat();
    let out = agent_cli(&bins(), &config, &none)?;
    // A command line that does not go together, like one clap refuses.
    assert_exit(&out, 64, "--secret-encoding needs --auth jwt_bearer");
    assert_eq!(std::fs::read_to_string(&config)?, before);
    Ok(())
}
