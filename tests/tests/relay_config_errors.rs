//! The relay's command line says each cause of a failure once: a missing config file's
//! OS error, a config's TOML error block, SQLite's complaint about a store.

use std::process::{Command, Stdio};

use anyhow::Result;
use postern_tests::harness::Bins;
use postern_tests::temp::TempDir;

fn bins() -> Bins {
    postern_tests::bins!()
}

/// The relay run with `args`: its exit code and stderr.
fn relay(args: &[&str]) -> Result<(Option<i32>, String)> {
    let out = Command::new(bins().relay)
        .args(args)
        .stdin(Stdio::null())
        .output()?;
    Ok((
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

#[test]
fn each_cause_is_said_once() -> Result<()> {
    let dir = TempDir::new("relay-causes")?;
    let missing = dir.path().join("nonexist.toml");
    let unknown = dir.write_private("unknown.toml", "bogus_key = 1\n")?;
    let state = dir.path().join("garbage");
    std::fs::create_dir_all(&state)?;
    std::fs::write(state.join("relay.db"), [0x5a_u8; 4096])?;
    let (missing, unknown, state) = (
        missing.to_string_lossy(),
        unknown.to_string_lossy(),
        state.to_string_lossy(),
    );
    for (args, once) in [
        (
            &["serve", "--config", &missing][..],
            &["No such file or directory", &*missing][..],
        ),
        (
            &["serve", "--config", &unknown],
            &["TOML parse error", "unknown field `bogus_key`", &*unknown],
        ),
        (
            &["agent", "list", "--state-dir", &state],
            &["file is not a database"],
        ),
    ] {
        let (code, stderr) = relay(args)?;
        assert_eq!(code, Some(1), "{args:?}: {stderr}");
        for text in once {
            assert_eq!(stderr.matches(text).count(), 1, "{text:?} in {stderr}");
        }
    }
    Ok(())
}
