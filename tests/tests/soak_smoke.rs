//! The soak (`src/bin/soak.rs`) for 15 seconds with three agents, so it cannot rot: every
//! call accounted for, agents back after kills and relay restarts, bounds held.

use std::process::Command;

#[test]
fn a_short_soak_passes() {
    let out = Command::new(env!("CARGO_BIN_EXE_soak"))
        .args(["--seconds", "15", "--agents", "3", "--callers", "4"])
        .arg("--relay-bin")
        .arg(env!("CARGO_BIN_EXE_e2e-postern-relay"))
        .arg("--agent-bin")
        .arg(env!("CARGO_BIN_EXE_e2e-postern"))
        .output()
        .expect("the soak runs");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        report.contains("| every call accounted for, none unexplained | PASS |"),
        "{report}"
    );
    assert!(!report.contains("FAIL"), "{report}");
    let restarts = report
        .lines()
        .find_map(|l| l.strip_prefix("| relay restarts / agent kills | "))
        .unwrap_or_default();
    assert!(
        !restarts.starts_with("0 / 0"),
        "the chaos did nothing: {report}"
    );
}
