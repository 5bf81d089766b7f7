//! The `openssl` command for unit tests: keys and certificates made by another
//! implementation than the one under test.

use std::path::Path;
use std::process::Command;

/// Runs `openssl ARGS` in `dir` (made if missing): its stdout, or a panic with its stderr.
pub fn openssl(dir: &Path, args: &[&str]) -> Vec<u8> {
    std::fs::create_dir_all(dir).expect("a folder for openssl's files");
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}
