//! The agent's operations at their edges: a relay that goes
//! silent mid-setup, reloads that must be refused, a broken config, `token set` with a
//! token file, `connection show` with inline tables, and an early SIGHUP.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use postern_tests::harness::{
    AgentProcess, agent_cli, agent_command, agent_config, is_root, offline_init, output_text,
    signal, unknown_token,
};
use postern_tests::relay_support::{RelayWorld, eventually, send};
use reqwest::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_util::task::AbortOnDropHandle;

/// The agent's bound on the whole session setup (`tunnel::SETUP_TIMEOUT`).
const SETUP_TIMEOUT: Duration = postern_agent::tunnel::SETUP_TIMEOUT;

/// SSH_MSG_NEWKEYS: what follows it from the agent is encrypted.
const NEWKEYS: u8 = 21;

/// A TCP proxy to a real relay that lets the SSH handshake through, then goes silent as
/// soon as the agent sends its first encrypted packet (the start of authentication):
/// the connection stays open, but no answer ever comes and nothing reaches the relay.
struct SilentAfterKex {
    addr: SocketAddr,
    silenced: Arc<AtomicUsize>,
    _accept: AbortOnDropHandle<()>,
}

impl SilentAfterKex {
    async fn start(upstream: SocketAddr) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let silenced = Arc::new(AtomicUsize::new(0));
        let counter = silenced.clone();
        let accept = tokio::spawn(async move {
            // Owned here: dropping the accept task aborts every connection's task.
            let mut connections = JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                connections.spawn(relay_until_encrypted(client, upstream, counter.clone()));
            }
        });
        Ok(Self {
            addr,
            silenced,
            _accept: AbortOnDropHandle::new(accept),
        })
    }

    /// Waits until a connection went silent, bounded by `limit`.
    async fn wait_silenced(&self, limit: Duration) -> Result<()> {
        eventually(
            "an agent reaches authentication through the proxy",
            limit,
            || std::future::ready(self.silenced.load(Ordering::SeqCst) > 0),
        )
        .await
    }
}

async fn relay_until_encrypted(
    client: TcpStream,
    upstream: SocketAddr,
    silenced: Arc<AtomicUsize>,
) {
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let quiet = Arc::new(tokio::sync::Notify::new());
    let quiet_down = quiet.clone();
    let downstream = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            tokio::select! {
                // The agent's socket stays open (held here), so the link looks alive.
                _ = quiet_down.notified() => std::future::pending::<()>().await,
                n = server_read.read(&mut buf) => match n {
                    Ok(0) | Err(_) => std::future::pending::<()>().await,
                    Ok(n) => {
                        if client_write.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                },
            }
        }
    };
    let upstream_side = async move {
        let mut seen = Vec::new();
        let mut buf = vec![0u8; 16 * 1024];
        let mut silent = false;
        loop {
            let n = match client_read.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if silent {
                continue; // whatever the agent sends now is swallowed
            }
            let from = seen.len();
            seen.extend_from_slice(&buf[..n]);
            let upto = match newkeys_end(&seen) {
                Some(end) if end < seen.len() => {
                    // Encrypted bytes: stop answering before the relay could see them.
                    quiet.notify_one();
                    silenced.fetch_add(1, Ordering::SeqCst);
                    silent = true;
                    end.max(from)
                }
                _ => seen.len(),
            };
            if server_write.write_all(&seen[from..upto]).await.is_err() {
                return;
            }
        }
    };
    tokio::join!(downstream, upstream_side);
}

/// Where the agent's plaintext ends: just past its NEWKEYS packet, if it has sent it.
fn newkeys_end(seen: &[u8]) -> Option<usize> {
    let banner_end = seen.iter().position(|b| *b == b'\n')? + 1;
    let mut at = banner_end;
    // Plaintext packets: length (4), padding length (1), message type, …
    while at + 6 <= seen.len() {
        let len = u32::from_be_bytes([seen[at], seen[at + 1], seen[at + 2], seen[at + 3]]) as usize;
        let end = at + 4 + len;
        if end > seen.len() {
            return None;
        }
        if seen[at + 5] == NEWKEYS {
            return Some(end);
        }
        at = end;
    }
    None
}

/// A config for agent `a1` on the world's relay, with `relay_line` naming the relays.
fn config_with_relays(w: &RelayWorld, token: &str, relay_line: &str) -> Result<PathBuf> {
    let text = agent_config(w.relay.ssh, &w.relay.fingerprint, token, "").replacen(
        &format!("relay = \"{}\"", w.relay.ssh),
        relay_line,
        1,
    );
    let text = format!(
        "{text}[connections.orders]\nbase_uri = \"{}\"\n",
        w.internal.base_uri()
    );
    Ok(w.dir.write_private("agent.toml", &text)?)
}

/// A config for agent `a1` on the world's relay that reads `token` from the file
/// `token` beside it, with connection `orders`.
fn token_file_config(w: &RelayWorld, token: &str) -> String {
    agent_config(w.relay.ssh, &w.relay.fingerprint, token, "")
        .replace(&format!("token = \"{token}\""), "token_file = \"token\"")
        + &format!(
            "[connections.orders]\nbase_uri = \"{}\"\n",
            w.internal.base_uri()
        )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_relay_silent_during_authentication_is_given_up_and_the_next_one_tried() -> Result<()> {
    let w = RelayWorld::start(postern_tests::bins!()).await?;
    let token = w.create_agent("a1").await?;
    let silent = SilentAfterKex::start(w.relay.ssh).await?;
    let config = config_with_relays(
        &w,
        &token,
        &format!("relay = [\"{}\", \"{}\"]", silent.addr, w.relay.ssh),
    )?;
    let agent = AgentProcess::start(&w.bins, &config)?;
    silent.wait_silenced(Duration::from_secs(15)).await?;
    let started = Instant::now();
    w.admin
        .wait_online("a1", true, SETUP_TIMEOUT + Duration::from_secs(15))
        .await?;
    assert!(
        started.elapsed() >= SETUP_TIMEOUT - Duration::from_secs(2),
        "online through the second relay after {:?}: the first cannot have answered",
        started.elapsed()
    );
    let logs = agent.logs.text();
    assert!(
        logs.contains("went silent while waiting for the answer to authentication"),
        "{logs}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_stops_an_agent_stuck_in_authentication() -> Result<()> {
    let w = RelayWorld::start(postern_tests::bins!()).await?;
    let token = w.create_agent("a1").await?;
    let silent = SilentAfterKex::start(w.relay.ssh).await?;
    let config = config_with_relays(&w, &token, &format!("relay = \"{}\"", silent.addr))?;
    let mut agent = AgentProcess::start(&w.bins, &config)?;
    silent.wait_silenced(Duration::from_secs(15)).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    signal(agent.pid(), "TERM")?;
    let mut status = None;
    let stopped = eventually("the agent exits", Duration::from_secs(5), || {
        status = agent.try_exit();
        std::future::ready(status.is_some())
    })
    .await;
    assert!(
        stopped.is_ok(),
        "the agent ignored SIGTERM while waiting for authentication; logs:\n{}",
        agent.logs.text()
    );
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    Ok(())
}

/// `(uid, gid, mode)` of a file.
fn owner_mode(path: &Path) -> Result<(u32, u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path)?;
    Ok((meta.uid(), meta.gid(), meta.mode() & 0o7777))
}

/// The `nobody` ids: a user other than the one running the tests.
const NOBODY: u32 = 65534;

#[tokio::test(flavor = "multi_thread")]
async fn connection_show_masks_secrets_in_inline_tables() -> Result<()> {
    let w = RelayWorld::start(postern_tests::bins!()).await?;
    let token = w.create_agent("a1").await?;
    let secrets = [
        "inline-hmac-secret-value-0123456789",
        "exchange-client-secret-value",
        "whole-inline-connection-secret",
    ];
    let connections = format!(
        "[connections.erp]\nbase_uri = \"http://127.0.0.1:9/x\"\n\
         auth = {{ type = \"jwt_bearer\", algorithm = \"HS256\", secret = \"{}\" }}\n\
         [connections.ex]\nbase_uri = \"http://127.0.0.1:9/x\"\n\
         [connections.ex.auth]\ntype = \"jwt_bearer\"\nalgorithm = \"HS256\"\nsecret = \"{}\"\n\
         exchange = {{ token_url = \"http://127.0.0.1:9/token\", params = {{ client_secret = \"{}\" }} }}\n",
        secrets[0], secrets[0], secrets[1]
    );
    let config = w.dir.write_private(
        "show.toml",
        &agent_config(w.relay.ssh, &w.relay.fingerprint, &token, &connections),
    )?;
    for name in ["erp", "ex"] {
        let out = agent_cli(&w.bins, &config, &["connection", "show", name])?;
        let text = output_text(&out);
        assert!(out.status.success(), "{text}");
        assert!(text.contains("***") && text.contains("base_uri"), "{text}");
        for secret in &secrets {
            assert!(
                !text.contains(secret),
                "show {name} printed a secret:\n{text}"
            );
        }
    }
    // A whole connection written as an inline table.
    let inline = w.dir.write_private(
        "show-inline.toml",
        &agent_config(
            w.relay.ssh,
            &w.relay.fingerprint,
            &token,
            &format!(
                "[connections]\ninl = {{ base_uri = \"http://127.0.0.1:9/x\", auth = {{ type = \"jwt_bearer\", algorithm = \"HS256\", secret = \"{}\" }} }}\n",
                secrets[2]
            ),
        ),
    )?;
    let out = agent_cli(&w.bins, &inline, &["connection", "show", "inl"])?;
    let text = output_text(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("***") && !text.contains(secrets[2]), "{text}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn token_set_writes_the_token_file_the_config_names() -> Result<()> {
    let w = RelayWorld::start(postern_tests::bins!()).await?;
    let token = w.create_agent("a1").await?;
    let token_file = w.dir.write_private("token", &format!("{token}\n"))?;
    let text = token_file_config(&w, &token);
    let config = w.dir.write_private("agent.toml", &text)?;
    if is_root() {
        // As with `sudo postern token set` on the service user's files.
        std::os::unix::fs::chown(&token_file, Some(NOBODY), Some(NOBODY))?;
    }
    let before = owner_mode(&token_file)?;
    let agent = AgentProcess::start(&w.bins, &config)?;
    w.admin
        .wait_online("a1", true, Duration::from_secs(15))
        .await?;

    // Rotated without grace: the session ends and the old token is refused.
    let rotated = send(&w.admin, Method::POST, "/v1/agents/a1/token", None).await?;
    assert_eq!(rotated.status, 200, "{}", rotated.json);
    let new_token = rotated.json["token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    agent.logs.wait_for(
        "no longer accepts this agent's token",
        Duration::from_secs(10),
    )?;
    let new_file = w.dir.write_private("new-token", &new_token)?;
    let out = agent_cli(
        &w.bins,
        &config,
        &[
            "token",
            "set",
            "--token-file",
            &new_file.display().to_string(),
        ],
    )?;
    let said = output_text(&out);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("postern reload"), "{said}");
    assert!(!said.contains("restart"), "{said}");
    assert_eq!(
        std::fs::read_to_string(&config)?,
        text,
        "the config still takes the token from its file"
    );
    assert_eq!(std::fs::read_to_string(&token_file)?.trim(), new_token);
    assert_eq!(
        owner_mode(&token_file)?,
        (before.0, before.1, 0o600),
        "the token file keeps its owner and stays private"
    );

    let out = agent_cli(&w.bins, &config, &["reload"])?;
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    w.admin
        .wait_online("a1", true, Duration::from_secs(5))
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn token_set_refuses_an_environment_token_and_keeps_the_config_owner() -> Result<()> {
    let w = RelayWorld::start(postern_tests::bins!()).await?;
    let token = w.create_agent("a1").await?;
    let new_file = w.dir.write_private("new-token", &token)?;
    let set = |config: &Path| {
        agent_cli(
            &w.bins,
            config,
            &[
                "token",
                "set",
                "--token-file",
                &new_file.display().to_string(),
            ],
        )
    };

    let from_env = agent_config(w.relay.ssh, &w.relay.fingerprint, &token, "").replace(
        &format!("token = \"{token}\""),
        "token_env = \"POSTERN_TEST_TOKEN\"",
    );
    let config = w.dir.write_private("env.toml", &from_env)?;
    let out = set(&config)?;
    let said = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("POSTERN_TEST_TOKEN"), "{said}");
    assert_eq!(std::fs::read_to_string(&config)?, from_env, "untouched");

    // An inline token is replaced in the config, which keeps its owner (when run as root).
    let config = w.dir.write_private(
        "inline.toml",
        &agent_config(w.relay.ssh, &w.relay.fingerprint, "pst_old", ""),
    )?;
    if is_root() {
        std::os::unix::fs::chown(&config, Some(NOBODY), Some(NOBODY))?;
    }
    let before = owner_mode(&config)?;
    let out = set(&config)?;
    let said = output_text(&out);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("postern reload"), "{said}");
    assert!(std::fs::read_to_string(&config)?.contains(&token));
    assert_eq!(owner_mode(&config)?, (before.0, before.1, 0o600));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn reload_refuses_a_new_metrics_listen_and_a_config_that_does_not_parse() -> Result<()> {
    let w = RelayWorld::start(postern_tests::bins!()).await?;
    let token = w.create_agent("a1").await?;
    let write = |metrics: &str| -> Result<PathBuf> {
        let connections = format!(
            "{metrics}[connections.orders]\nbase_uri = \"{}\"\n",
            w.internal.base_uri()
        );
        Ok(w.dir.write_private(
            "agent.toml",
            &agent_config(w.relay.ssh, &w.relay.fingerprint, &token, &connections),
        )?)
    };
    let config = write("metrics_listen = \"127.0.0.1:0\"\n")?;
    let _agent = AgentProcess::start(&w.bins, &config)?;
    w.admin
        .wait_online("a1", true, Duration::from_secs(15))
        .await?;

    for metrics in ["metrics_listen = \"127.0.0.1:9\"\n", ""] {
        write(metrics)?;
        let out = agent_cli(&w.bins, &config, &["reload"])?;
        let said = output_text(&out);
        assert_eq!(out.status.code(), Some(1), "{metrics:?}: {said}");
        assert!(
            said.contains("metrics_listen cannot change"),
            "{metrics:?}: {said}"
        );
    }

    // A config that does not parse: its error, exit 1 — not "no agent".
    std::fs::write(&config, "relay = [unclosed\n")?;
    for command in ["reload", "status"] {
        let out = agent_cli(&w.bins, &config, &[command])?;
        let said = output_text(&out);
        assert_eq!(out.status.code(), Some(1), "{command}: {said}");
        assert!(said.contains("is not a valid config"), "{command}: {said}");
        assert!(!said.contains("no agent answers"), "{command}: {said}");
    }
    assert!(
        w.admin.agent("a1").await?.online,
        "the running agent carries on"
    );
    Ok(())
}

/// Linux's O_NONBLOCK: opening a FIFO for writing then fails at once unless a reader has it open.
const O_NONBLOCK: i32 = 0o4000;

/// Opens the FIFO for writing once a reader waits on it, bounded by `limit`.
async fn fifo_writer(fifo: &Path, limit: Duration) -> Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut opened = None;
    let _ = eventually("a reader opens the FIFO", limit, || {
        opened = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(O_NONBLOCK)
            .open(fifo)
            .ok();
        std::future::ready(opened.is_some())
    })
    .await;
    opened.ok_or_else(|| anyhow::anyhow!("nobody read {} within {limit:?}", fifo.display()))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sighup_while_the_agent_starts_reloads_once_it_is_ready() -> Result<()> {
    let w = RelayWorld::start(postern_tests::bins!()).await?;
    let token = w.create_agent("a1").await?;
    // The token comes from a FIFO: loading the config waits there until the test writes
    // it, so the SIGHUP lands while the agent is starting, whatever the machine's speed.
    let fifo = w.dir.path().join("token");
    let made = Command::new("mkfifo")
        .args(["-m", "600"])
        .arg(&fifo)
        .status()?;
    assert!(made.success(), "mkfifo");
    let text = token_file_config(&w, &token);
    let config = w.dir.write_private("agent.toml", &text)?;
    let mut agent = AgentProcess::start(&w.bins, &config)?;

    // Once the agent reads the FIFO it is past the re-exec, loading its config; it waits
    // there while the writer stays open and silent.
    let mut writer = fifo_writer(&fifo, Duration::from_secs(15)).await?;
    signal(agent.pid(), "HUP")?;
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        agent.try_exit().is_none(),
        "an early SIGHUP ended the agent; logs:\n{}",
        agent.logs.text()
    );
    {
        use std::io::Write;
        writer.write_all(token.as_bytes())?;
    }
    drop(writer);
    w.admin
        .wait_online("a1", true, Duration::from_secs(15))
        .await?;
    // The SIGHUP is not lost: the config is reloaded (the token read again) once ready.
    {
        use std::io::Write;
        fifo_writer(&fifo, Duration::from_secs(10))
            .await?
            .write_all(token.as_bytes())?;
    }
    agent
        .logs
        .wait_for("config reloaded", Duration::from_secs(10))?;
    assert!(agent.try_exit().is_none());
    Ok(())
}

/// A connection whose secret comes from the service's environment (`secret_env`) does not
/// stop an admin, whose shell lacks that variable, from listing, adding and removing
/// connections; an edit that brings a problem of its own is still refused.
#[tokio::test(flavor = "multi_thread")]
async fn secrets_from_the_services_environment_do_not_block_edits() -> Result<()> {
    let w = RelayWorld::start(postern_tests::bins!()).await?;
    let token = w.create_agent("a1").await?;
    let unset = "POSTERN_TEST_SECRET_ONLY_THE_SERVICE_HAS";
    let connections = format!(
        "[connections.billing]\nbase_uri = \"http://127.0.0.1:9/billing\"\n\
         [connections.billing.auth]\ntype = \"jwt_bearer\"\nalgorithm = \"HS256\"\nsecret_env = \"{unset}\"\n"
    );
    let config = w.dir.write_private(
        "env.toml",
        &agent_config(w.relay.ssh, &w.relay.fingerprint, &token, &connections),
    )?;
    let cli = |args: &[&str]| -> Result<Output> {
        Ok(agent_command(&w.bins, &config, args)
            .env_remove(unset)
            .output()?)
    };

    let added = cli(&[
        "connection",
        "add",
        "web",
        "--base-uri",
        "http://127.0.0.1:9/web",
    ])?;
    assert!(added.status.success(), "{}", output_text(&added));
    assert!(
        output_text(&added).contains(unset),
        "says what it left unchecked"
    );
    let listed = cli(&["connection", "list"])?;
    let text = output_text(&listed);
    assert!(listed.status.success(), "{text}");
    assert!(
        text.contains("billing") && text.contains("jwt_bearer HS256 (direct)"),
        "{text}"
    );
    assert!(
        text.contains("web") && text.contains("http://127.0.0.1:9/web"),
        "{text}"
    );

    // A problem the edit brings is refused, and nothing is written.
    let before = std::fs::read_to_string(&config)?;
    let bad = cli(&[
        "connection",
        "add",
        "bad",
        "--base-uri",
        "ftp://127.0.0.1/x",
    ])?;
    assert!(!bad.status.success(), "{}", output_text(&bad));
    assert!(
        output_text(&bad).contains("connections.bad"),
        "{}",
        output_text(&bad)
    );
    assert_eq!(std::fs::read_to_string(&config)?, before);

    let removed = cli(&["connection", "remove", "web"])?;
    assert!(removed.status.success(), "{}", output_text(&removed));
    assert!(!std::fs::read_to_string(&config)?.contains("connections.web"));
    Ok(())
}

/// Run as root, `init` gives a new config to its folder's owner: `sudo postern init` into
/// the .deb's /etc/postern (the `postern` user's) must leave a config the service can read.
#[test]
fn init_as_root_gives_a_new_config_to_its_folders_owner() -> Result<()> {
    if !is_root() {
        println!("SKIPPED init ownership test: needs root");
        return Ok(());
    }
    let init = |config: &Path| -> Result<(u32, u32, u32)> {
        let out = offline_init(
            &postern_tests::bins!(),
            config,
            "127.0.0.1:2222",
            &unknown_token(),
        )?;
        anyhow::ensure!(out.status.success(), "{}", output_text(&out));
        owner_mode(config)
    };
    let dir = postern_tests::temp::TempDir::new("init-owner")?;
    let folder = dir.path().join("etc-postern");
    std::fs::create_dir(&folder)?;
    std::os::unix::fs::chown(&folder, Some(NOBODY), Some(NOBODY))?;
    assert_eq!(init(&folder.join("agent.toml"))?, (NOBODY, NOBODY, 0o600));
    // A folder root owns keeps root's files root's.
    assert_eq!(init(&dir.path().join("agent.toml"))?, (0, 0, 0o600));
    Ok(())
}
