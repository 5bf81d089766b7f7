//! The benchmark (`src/bin/bench/`) with tiny sizes and one-second runs, so it cannot rot:
//! every scenario runs against the real relay, agent, sshd and wrk and prints its table.

use std::process::Command;
use std::sync::{Mutex, MutexGuard, PoisonError};

/// One benchmark at a time: the bench gives sshd and `ssh -R` ports picked free and let
/// go, which the other run's processes could take first (and each run is meant to have
/// the machine to itself).
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> MutexGuard<'static, ()> {
    // A test that failed holding it must not fail the other.
    ONE_AT_A_TIME.lock().unwrap_or_else(PoisonError::into_inner)
}

#[test]
fn the_benchmark_runs_every_scenario() {
    let _alone = one_at_a_time();
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
        "| small calls, 32 conns, HS256 bearer + jti | req/s |",
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

#[test]
fn an_interrupted_benchmark_leaves_nothing_behind() {
    use std::time::{Duration, Instant};
    let _alone = one_at_a_time();
    let tools_present = ["wrk", "/usr/sbin/sshd", "ssh", "ssh-keygen"]
        .into_iter()
        .all(|tool| {
            Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()
                .is_ok_and(|o| o.status.success())
        });
    if !tools_present {
        println!("SKIPPED interrupted benchmark: wrk or OpenSSH missing (.ci/run installs them)");
        return;
    }
    let mut bench = Command::new(env!("CARGO_BIN_EXE_bench"))
        .args(["--only", "small", "--seconds", "30", "--repeats", "1"])
        .arg("--relay-bin")
        .arg(env!("CARGO_BIN_EXE_e2e-postern-relay"))
        .arg("--agent-bin")
        .arg(env!("CARGO_BIN_EXE_e2e-postern"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("the benchmark starts");
    // Relay, agent, sshd, ssh and a wrk under way: the moment a user would press Ctrl-C.
    let deadline = Instant::now() + Duration::from_secs(60);
    let children = loop {
        let children = postern_tests::harness::children_of(bench.id());
        if children.iter().any(|(_, cmd)| cmd.starts_with("wrk ")) && children.len() >= 5 {
            break children;
        }
        assert!(Instant::now() < deadline, "no wrk run began: {children:?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let dir = children
        .iter()
        .find_map(|(_, cmd)| {
            let config = cmd
                .split_whitespace()
                .skip_while(|a| *a != "--config")
                .nth(1)?;
            Some(std::path::Path::new(config).parent()?.to_owned())
        })
        .expect("the relay's config path");
    assert!(dir.exists(), "{dir:?}");
    let sent = Command::new("kill")
        .args(["-INT", &bench.id().to_string()])
        .status()
        .expect("kill");
    assert!(sent.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = bench.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = bench.kill();
            panic!("the benchmark did not stop within 20 s of SIGINT");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(130), "{status:?}");
    // Killed children are reaped by init once the bench has gone; give it a moment.
    let deadline = Instant::now() + Duration::from_secs(10);
    let alive = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                s.rsplit_once(')')
                    .map(|(_, rest)| rest.trim().starts_with('Z'))
            })
            .is_some_and(|zombie| !zombie)
    };
    while children.iter().any(|(pid, _)| alive(*pid)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let left: Vec<_> = children.iter().filter(|(pid, _)| alive(*pid)).collect();
    assert!(
        left.is_empty(),
        "still running after the bench stopped: {left:?}"
    );
    assert!(!dir.exists(), "{dir:?} was left behind");
}
