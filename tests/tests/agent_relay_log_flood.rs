//! A relay that floods the agent with what the agent ignores — junk control lines, 60 KB
//! messages out of place or of unknown types, global and channel requests russh answers
//! itself, replies to requests never made — leaves a few log lines, not one per message
//! (README, "Security notes"). Before 2026-12-07 each 2-byte junk line wrote a ~150-byte
//! WARN line, each 60 KB message a 60 KB one, and each ~20-byte SSH message a WARN or
//! ERROR line. The relay is paramiko, with a host key the agent pins.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use postern_tests::harness::{AgentProcess, agent_config, unknown_token};
use postern_tests::temp::TempDir;
use russh::keys::ssh_key::LineEnding;
use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::{HashAlg, PrivateKey};
use tokio::io::{AsyncBufReadExt, BufReader};

/// Welcomes the agent, then sends `n` of each kind of message the agent ignores, and
/// last an `ending` (revoked): the agent acts on that after all the rest.
const RELAY: &str = r#"
import json, logging, socket, sys, time, paramiko
# Its own line per refused open would fill the test's output.
logging.getLogger("paramiko").setLevel(logging.CRITICAL)
from paramiko.message import Message
from paramiko.common import (cMSG_CHANNEL_REQUEST, cMSG_REQUEST_FAILURE,
                             cMSG_REQUEST_SUCCESS)
key = paramiko.Ed25519Key.from_private_key_file(sys.argv[1])
n = int(sys.argv[2])
listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen(1)
listener.settimeout(30)
print(listener.getsockname()[1], flush=True)
conn, _ = listener.accept()

class Relay(paramiko.ServerInterface):
    def get_allowed_auths(self, username): return "password"
    def check_auth_password(self, username, password): return paramiko.AUTH_SUCCESSFUL
    def check_port_forward_request(self, address, port): return 1
    def check_channel_request(self, kind, chanid):
        return paramiko.OPEN_SUCCEEDED if kind == "session" else paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

t = paramiko.Transport(conn)
t.add_server_key(key)
t.start_server(server=Relay())
ctl = t.accept(20)
hello = b""
while b"\n" not in hello:
    hello += ctl.recv(65536)
def line(message): return json.dumps(message).encode() + b"\n"
ctl.sendall(line({"type": "welcome", "protocol_version": 2, "agent_id": "agt_1", "agent_name": "flooded"}))
big_welcome = line({"type": "welcome", "protocol_version": 2, "agent_id": "a", "agent_name": "N" * 60000})
unknown = line({"type": "T" * 60000})
# Each kind first, while the budget lasts; then the flood.
ctl.sendall(b"x\n" * 3 + big_welcome * 3 + unknown * 3)
ctl.sendall(b"x\n" * n + big_welcome * 20 + unknown * 20)
def channel_request(name):
    m = Message(); m.add_byte(cMSG_CHANNEL_REQUEST); m.add_int(ctl.remote_chanid)
    m.add_string(name); m.add_boolean(False); t._send_user_message(m)
for i in range(n):
    t.global_request("x-%d@flood.test" % i, wait=False)
    t.global_request("keepalive@flood.test", wait=False)
    for unasked in (cMSG_REQUEST_FAILURE, cMSG_REQUEST_SUCCESS):
        m = Message(); m.add_byte(unasked); t._send_user_message(m)
    channel_request("x-%d@flood.test" % i)
    channel_request("keepalive@openssh.com")
for i in range(200):
    try:
        t.open_forwarded_tcpip_channel(("127.0.0.1", 1), ("http:nope-%d" % i, 0))
    except paramiko.ChannelException:
        pass
ctl.sendall(line({"type": "ending", "reason": "revoked", "message": "flood done"}))
print("sent", flush=True)
deadline = time.time() + 20
while t.is_active() and time.time() < deadline:
    time.sleep(0.1)
"#;

#[tokio::test(flavor = "multi_thread")]
async fn what_a_relay_floods_the_agent_with_leaves_a_few_lines() -> Result<()> {
    let n = 2000;
    let dir = TempDir::new("agent-relay-flood")?;
    let key = PrivateKey::from(Ed25519Keypair::from_seed(&[5; 32]));
    let fingerprint = key.public_key().fingerprint(HashAlg::Sha256).to_string();
    let key_file = dir.write_private("host_key", &key.to_openssh(LineEnding::LF)?)?;
    let mut relay = tokio::process::Command::new("python3")
        .arg("-c")
        .arg(RELAY)
        .arg(&key_file)
        .arg(n.to_string())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("python3 (with paramiko: .ci/run installs it)")?;
    let mut said = BufReader::new(relay.stdout.take().context("the relay's stdout")?).lines();
    let next = tokio::time::timeout(Duration::from_secs(15), said.next_line());
    let port: u16 = match next.await {
        Ok(Ok(Some(port))) => port.parse().context("the relay's port")?,
        other => {
            bail!("the fake relay did not start (paramiko missing? .ci/run installs it): {other:?}")
        }
    };
    let relay_at = format!("127.0.0.1:{port}").parse()?;
    let config = dir.write_private(
        "agent.toml",
        &agent_config(
            relay_at,
            &fingerprint,
            &unknown_token(),
            "[connections.orders]\nbase_uri = \"http://127.0.0.1:9\"\n",
        ),
    )?;
    let mut agent = AgentProcess::start(&postern_tests::bins!(), &config)?;
    let sent = tokio::time::timeout(Duration::from_secs(60), said.next_line()).await;
    ensure!(
        matches!(&sent, Ok(Ok(Some(l))) if l == "sent"),
        "the fake relay did not finish its flood: {sent:?}\n{}",
        agent.logs.text()
    );
    // The ending came last: once the agent acts on it, everything before is logged.
    agent.logs.wait_for(
        "no longer accepts this agent's token",
        Duration::from_secs(30),
    )?;
    let lines = agent.logs.lines();
    agent.terminate()?;
    let _ = relay.kill().await;

    let shown = |n: usize| lines.iter().rev().take(n).cloned().collect::<Vec<_>>();
    let russh = lines.iter().filter(|l| l.contains("russh")).count();
    ensure!(
        russh == 0,
        "{russh} lines from russh for {n} of each request: {:?}",
        shown(5)
    );
    // 200 opens naming no connection: a few lines, as many as the session's budget for
    // lines about its channels lets through (one each before 2026-12-07).
    let strangers = lines.iter().filter(|l| l.contains("does not have")).count();
    ensure!(
        (1..=10).contains(&strangers),
        "{strangers} lines about opens naming no connection: {:?}",
        shown(15)
    );
    let ignored = lines.iter().filter(|l| l.contains("ignored")).count();
    ensure!(
        ignored == 10,
        "{ignored} lines about ignored control lines, 10 a minute expected: {:?}",
        shown(15)
    );
    ensure!(
        lines.len() < 30,
        "{} lines in all: {:?}",
        lines.len(),
        shown(15)
    );
    let longest = lines.iter().map(String::len).max().unwrap_or(0);
    ensure!(longest < 1000, "a line of {longest} bytes");
    // Each kind is summed up by what it was and its size.
    let has = |needle: &str| lines.iter().any(|l| l.contains(needle));
    ensure!(
        has("malformed control line ignored"),
        "no junk line: {lines:?}"
    );
    ensure!(
        has("unexpected control message ignored") && has("message_type=welcome bytes=600"),
        "no second welcome: {lines:?}"
    );
    ensure!(
        has("cannot read ignored") && has(&format!("message_type={}…", "T".repeat(64))),
        "no unknown type: {lines:?}"
    );
    Ok(())
}
