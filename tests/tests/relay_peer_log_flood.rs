//! An authenticated peer repeating what russh answers itself — a channel request of a type
//! nobody knows, a `REQUEST_FAILURE` nobody asked for, a rekey — leaves no log line per
//! message: each cost the peer ~50 bytes and wrote a WARN or ERROR line naming no peer
//! (README, "Security notes"). The peer is paramiko, crafting those packets as a hostile
//! agent would.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use postern_tests::relay_support::RelayWorld;

const FLOOD: &str = r#"
import sys, paramiko
from paramiko.message import Message
from paramiko.common import cMSG_CHANNEL_REQUEST, cMSG_REQUEST_FAILURE
host, port, token, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
t = paramiko.Transport((host, port))
t.start_client(timeout=10)
t.auth_password("postern-agent", token)
assert t.is_authenticated()
t.request_port_forward("postern", 0, handler=lambda *a: None)
for _ in range(n):
    m = Message(); m.add_byte(cMSG_REQUEST_FAILURE); t._send_user_message(m)
chan = t.open_session(timeout=10)
for i in range(n):
    m = Message(); m.add_byte(cMSG_CHANNEL_REQUEST); m.add_int(chan.remote_chanid)
    m.add_string("x-%d@flood" % i); m.add_boolean(False); t._send_user_message(m)
for _ in range(3):
    t.renegotiate_keys()
# A round trip: the relay has read all of the above once it answers.
t.global_request("ping@flood.test", wait=True)
print("sent", flush=True)
t.close()
"#;

#[tokio::test(flavor = "multi_thread")]
async fn repeated_requests_russh_answers_itself_write_no_line_each() -> Result<()> {
    let w = RelayWorld::start(postern_tests::bins!()).await?;
    let token = w.create_agent("flood").await?;
    let n = 500;
    let relay = w.relay.ssh;
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .args([
                "-c",
                FLOOD,
                &relay.ip().to_string(),
                &relay.port().to_string(),
            ])
            .args([token.as_str(), &n.to_string()])
            .output()
    })
    .await?
    .context("python3 (with paramiko: .ci/run installs it)")?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        out.status.success() && said.contains("sent"),
        "the flooding peer failed (paramiko missing? .ci/run installs it): {said}"
    );
    // The peer closed its session (no hello came): its end is logged, after all it read.
    w.relay
        .logs
        .wait_for("agent session ended", Duration::from_secs(15))?;
    let lines = w.relay.logs.lines();
    let russh_lines: Vec<&String> = lines.iter().filter(|l| l.contains("russh")).collect();
    assert!(
        russh_lines.len() < 10,
        "{} lines from russh for {n} requests, e.g. {:?}",
        russh_lines.len(),
        russh_lines.iter().take(3).collect::<Vec<_>>()
    );
    assert!(
        lines.len() < 100,
        "{} lines in all: {:?}",
        lines.len(),
        lines.iter().rev().take(5).collect::<Vec<_>>()
    );
    Ok(())
}
