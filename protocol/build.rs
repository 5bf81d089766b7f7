//! Records the git commit this build comes from, for `postern --version` and
//! `postern-relay --version`; `POSTERN_GIT_COMMIT` overrides it (builds without .git).

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (out.status.success() && !text.is_empty()).then_some(text)
}

fn main() {
    println!("cargo:rerun-if-env-changed=POSTERN_GIT_COMMIT");
    let commit = std::env::var("POSTERN_GIT_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rerun-if-changed=build.rs");
    // Release builds follow HEAD (a checkout, a commit); dev builds keep the commit of their
    // first build, since following HEAD would rebuild the whole workspace on every commit.
    let release = std::env::var("PROFILE").is_ok_and(|p| p == "release");
    if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]).filter(|_| release) {
        println!("cargo:rerun-if-changed={dir}/HEAD");
        if let Some(reference) = git(&["symbolic-ref", "-q", "HEAD"]) {
            let common =
                git(&["rev-parse", "--path-format=absolute", "--git-common-dir"]).unwrap_or(dir);
            println!("cargo:rerun-if-changed={common}/{reference}");
            println!("cargo:rerun-if-changed={common}/packed-refs");
        }
    }
    println!("cargo:rustc-env=POSTERN_GIT_COMMIT={commit}");
}
