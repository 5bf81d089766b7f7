//! The soak (`src/bin/soak.rs`) for 15 seconds with three agents, so it cannot rot: every
//! call accounted for, agents back after kills and relay restarts, bounds held.

use std::process::Command;

#[test]
fn a_short_soak_passes() {
    let out = Command::new(env!("CARGO_BIN_EXE_soak"))
        // Seed 13 kills an agent, then restarts the relay, within the first ~8 s.
        .args([
            "--seconds",
            "15",
            "--agents",
            "3",
            "--callers",
            "4",
            "--seed",
            "13",
        ])
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
    let value = |name: &str| -> Vec<u64> {
        report
            .lines()
            .find_map(|l| l.strip_prefix(&format!("| {name} | ")))
            .map(|rest| {
                rest.trim_end_matches(" |")
                    .split(" / ")
                    .filter_map(|n| n.trim().parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    };
    let chaos = value("relay restarts / agent kills");
    assert!(
        chaos.len() == 2 && chaos.iter().all(|n| *n >= 1),
        "the relay restarted and an agent was killed: {chaos:?}\n{report}"
    );
    assert!(
        value("answered 200").first().is_some_and(|n| *n > 0),
        "calls were answered: {report}"
    );
}
