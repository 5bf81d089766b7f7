//! The vendored, patched russh under its own unit tests (`vendor/russh`, outside the
//! workspace, its own lock): the patches must not break what upstream's tests hold.
//!
//! It builds russh's test binary in a target folder of its own (`target/vendor-russh`),
//! with the features postern uses, so the first run compiles russh and its dependencies
//! once more (~2–4 minutes on two cores); later runs reuse it.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, ensure};

/// Upstream's 0.65.1 unit tests that build with postern's features (199) and the
/// patches' own (13); fewer passing means tests went missing, not that they passed.
const AT_LEAST: usize = 212;

#[test]
fn upstream_unit_tests_pass_on_the_patched_russh() -> Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(&root)
        .args([
            "test",
            "--manifest-path",
            "vendor/russh/Cargo.toml",
            "--locked",
            "--lib",
            "--no-default-features",
            "--features",
            "aws-lc-rs,rsa",
        ])
        .env("CARGO_TARGET_DIR", root.join("target/vendor-russh"))
        // Full debug info would add most of a gigabyte to CI's disk for nothing.
        .env("CARGO_PROFILE_DEV_DEBUG", "line-tables-only")
        // The outer `cargo test`'s settings are not russh's.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .output()
        .context("running cargo test on vendor/russh")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.success(),
        "russh's tests failed:\n{stdout}\n{stderr}"
    );
    let passed: usize = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("test result: ok. "))
        .filter_map(|l| l.split_whitespace().next()?.parse::<usize>().ok())
        .sum();
    ensure!(
        passed >= AT_LEAST,
        "only {passed} of russh's unit tests ran (expected at least {AT_LEAST}):\n{stdout}"
    );
    Ok(())
}
