//! The benchmark (`src/bin/bench/`) with tiny sizes and one-second runs, so it cannot rot:
//! every scenario runs against the real relay, agent, sshd and wrk and prints its table.

use std::process::Command;

#[test]
fn the_benchmark_runs_every_scenario() {
    let missing: Vec<&str> = ["wrk", "/usr/sbin/sshd", "ssh", "ssh-keygen", "openssl"]
        .into_iter()
        .filter(|tool| {
            !Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .collect();
    if !missing.is_empty() {
        println!("SKIPPED benchmark smoke run: {missing:?} missing (.ci/run installs them)");
        return;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_bench"))
        .args([
            "--seconds",
            "1",
            "--repeats",
            "1",
            "--stream-mib",
            "8",
            "--agents",
            "20",
        ])
        .args([
            "--ssh-clients",
            "2",
            "--restarts",
            "2",
            "--sign-seconds",
            "1",
        ])
        .arg("--relay-bin")
        .arg(env!("CARGO_BIN_EXE_e2e-postern-relay"))
        .arg("--agent-bin")
        .arg(env!("CARGO_BIN_EXE_e2e-postern"))
        .output()
        .expect("the benchmark runs");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{table}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for row in [
        "| small calls, 32 conns, auth none | req/s |",
        "| small calls, 256 conns, RS256 + RFC 7523 (cached) | p99 ms |",
        "| small calls, 32 conns, auth none | relay CPU µs/call |",
        "| small calls, 32 conns, HS256 bearer | agent CPU µs/call |",
        "| stream 8 MiB download | MB/s |",
        "| stream 8 MiB download | agent peak RSS MiB |",
        "| stream 8 MiB upload | relay peak RSS MiB |",
        "| signing EdDSA | JWTs/s/core |",
        "| recovery over 2 relay restarts | max ms |",
        "| 20 idle agents | relay KiB/agent |",
        "| 2 ssh -R clients | sshd KiB/client (PSS) |",
    ] {
        assert!(table.contains(row), "no {row:?} in\n{table}");
    }
    // Failed calls would make the figures meaningless.
    for line in table.lines().filter(|l| l.contains("| non-2xx |")) {
        assert!(line.contains("| non-2xx | 0.00 |"), "{line}");
    }
    // A process that did the work cannot have spent no CPU on it (nor NaN).
    for line in table.lines().filter(|l| l.contains(" CPU µs/call |")) {
        let value = line.split('|').nth(3).map(str::trim).unwrap_or("");
        let us: f64 = value.parse().unwrap_or(f64::NAN);
        assert!(us > 0.0 && us.is_finite(), "{line}");
    }
    assert!(
        table.contains("| small calls, 32 conns, RS256 + RFC 7523 | token exchanges | 1.00 |"),
        "one exchange for the whole run: {table}"
    );
}
