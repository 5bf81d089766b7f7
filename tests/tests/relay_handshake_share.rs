//! One source address cannot keep agents out: it gets a quarter of the relay's places
//! for handshakes, and connections that never log in count against it like wrong tokens.
//! Needs an address that is not loopback, so it runs in network namespaces (root).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use postern_relay::ssh_server::{AUTH_TIMEOUT, MAX_UNAUTHENTICATED_PER_ADDRESS};
use postern_tests::harness::{Bins, RelayProcess, command_in};
use postern_tests::netns::{self, CLOUD_ADDR, Topology};
use postern_tests::temp::TempDir;

const SSH_PORT: u16 = 2222;

/// Opens argv[3] connections to argv[1]:argv[2] at once and prints, per connection, `ssh`
/// (the relay's identification came), `closed` (closed without one) or `silent`; keeps
/// them open, saying nothing, until its stdin closes.
const SILENT_PEERS: &str = r#"
import socket, sys
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
socks = [socket.create_connection((host, port), timeout=5) for _ in range(n)]
seen = []
for s in socks:
    s.settimeout(3)
    try:
        data = s.recv(64)
        seen.append("ssh" if data.startswith(b"SSH-") else "closed")
    except (ConnectionResetError, BrokenPipeError):
        seen.append("closed")
    except socket.timeout:
        seen.append("silent")
print(" ".join(seen), flush=True)
sys.stdin.read()
"#;

fn peers(topo: &Topology, n: usize) -> Result<(std::process::Child, Vec<String>)> {
    let mut child = command_in(Some(&topo.onprem), Path::new("python3"))
        .args(["-c", SILENT_PEERS])
        .args([CLOUD_ADDR, &SSH_PORT.to_string(), &n.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
    let seen = line.split_whitespace().map(str::to_owned).collect();
    Ok((child, seen))
}

fn count(seen: &[String], what: &str) -> usize {
    seen.iter().filter(|s| *s == what).count()
}

#[test]
fn one_address_gets_a_share_of_the_handshakes_and_silent_ones_get_it_refused() -> Result<()> {
    if let Some(why) = netns::unavailable() {
        eprintln!("SKIPPED handshake share: {why}");
        return Ok(());
    }
    let topo = Topology::create(&format!("h{}", std::process::id() % 10_000))?;
    let dir = TempDir::new("handshake-share")?;
    let bins: Bins = postern_tests::bins!();
    let relay = RelayProcess::start_in(
        Some(&topo.cloud),
        &bins,
        &dir.path().join("relay"),
        // Every address, so the relay's own loopback reaches it too.
        &format!("0.0.0.0:{SSH_PORT}"),
        "127.0.0.1:0",
    )?;

    // Ten more than the share, from the on-prem address: the share gets the handshake.
    let (mut flood, seen) = peers(&topo, MAX_UNAUTHENTICATED_PER_ADDRESS + 10)?;
    assert_eq!(
        count(&seen, "ssh"),
        MAX_UNAUTHENTICATED_PER_ADDRESS,
        "{seen:?}"
    );
    assert_eq!(count(&seen, "closed"), 10, "{seen:?}");

    // The relay's own loopback is not that address: still served.
    let local = command_in(Some(&topo.cloud), Path::new("python3"))
        .args(["-c", SILENT_PEERS])
        .args(["127.0.0.1", &SSH_PORT.to_string(), "1"])
        .stdin(Stdio::null())
        .output()?;
    let local = String::from_utf8_lossy(&local.stdout);
    assert!(local.trim() == "ssh", "a loopback peer: {local}");

    // None of the flood logs in: at the authentication timeout each counts as a failure,
    // and once the flood is gone (no place held) the address is refused before the handshake.
    relay.logs.wait_for(
        "within the authentication timeout; closed",
        AUTH_TIMEOUT + Duration::from_secs(10),
    )?;
    drop(flood.stdin.take());
    let _ = flood.wait();
    let deadline = Instant::now() + Duration::from_secs(10);
    let refused = loop {
        let (mut probe, seen) = peers(&topo, 1)?;
        drop(probe.stdin.take());
        let _ = probe.wait();
        if seen == ["closed"] || Instant::now() > deadline {
            break seen;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(
        refused,
        ["closed"],
        "the flooding address was never refused"
    );
    // Closed for being blocked, not for a share still held.
    relay.logs.wait_for(
        "address refused before the handshake",
        Duration::from_secs(5),
    )?;
    Ok(())
}
