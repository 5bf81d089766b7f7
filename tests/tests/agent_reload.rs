//! Reloading a running agent: `postern reload` and SIGHUP swap connections in without
//! dropping the tunnel or a call under way, refuse a bad config, and reconnect on a new token.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use postern_agent::backoff::CAP;
use postern_tests::harness::{
    AgentProcess, Bins, agent_cli, agent_command, agent_config, output_text, reconnect_delays,
    signal, status_json,
};
use postern_tests::relay_support::{RelayWorld, sample, scrape, send};
use reqwest::Method;

struct World {
    w: RelayWorld,
    token: String,
}

async fn world() -> Result<World> {
    let w = RelayWorld::start(postern_tests::bins!()).await?;
    let token = w.create_agent("a1").await?;
    Ok(World { w, token })
}

impl World {
    /// Writes the agent's config with these connection names, all on the internal server.
    fn write_config(&self, token: &str, connections: &[&str]) -> Result<PathBuf> {
        let w = &self.w;
        let mut text = agent_config(w.relay.ssh, &w.relay.fingerprint, token, "");
        for name in connections {
            text.push_str(&format!(
                "[connections.{name}]\nbase_uri = \"{}\"\n",
                w.internal.base_uri()
            ));
        }
        Ok(w.dir.write_private("agent.toml", &text)?)
    }

    /// Names the relay `localhost:PORT` in `config`, where it was `127.0.0.1:PORT`: the
    /// same relay, but new session settings (a reload then reconnects).
    fn move_relay_to_localhost(&self, config: &Path) -> Result<()> {
        let w = &self.w;
        let text = std::fs::read_to_string(config)?.replace(
            &format!("relay = \"{}\"", w.relay.ssh),
            &format!("relay = \"localhost:{}\"", w.relay.ssh.port()),
        );
        w.dir.write_private("agent.toml", &text)?;
        Ok(())
    }

    /// Polls a call until it answers `status`, bounded by `limit`; returns how long it took.
    async fn wait_status(
        &self,
        connection: &str,
        status: u16,
        limit: Duration,
    ) -> Result<Duration> {
        let started = Instant::now();
        loop {
            let got = self
                .w
                .admin
                .call("a1", connection, "/x")
                .await?
                .status()
                .as_u16();
            if got == status {
                return Ok(started.elapsed());
            }
            if started.elapsed() > limit {
                bail!("{connection} answered {got}, not {status}, within {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

/// `postern token set` of `token`, from a file, as an admin stores a rotated one.
fn set_token(w: &RelayWorld, config: &Path, token: &str) -> Result<()> {
    let file = w.dir.write_private("new-token", token)?;
    let set = agent_cli(
        &w.bins,
        config,
        &["token", "set", "--token-file", &file.to_string_lossy()],
    )?;
    anyhow::ensure!(set.status.success(), "{}", output_text(&set));
    Ok(())
}

/// Runs `postern reload`; returns its exit code and output.
fn reload(bins: &Bins, config: &Path) -> Result<(Option<i32>, String)> {
    let out = agent_cli(bins, config, &["reload"])?;
    Ok((out.status.code(), output_text(&out)))
}

#[tokio::test(flavor = "multi_thread")]
async fn reload_swaps_connections_without_dropping_the_tunnel_or_a_call() -> Result<()> {
    let world = world().await?;
    let (w, api) = (&world.w, &world.w.admin);
    let config = world.write_config(&world.token, &["o"])?;
    let agent = AgentProcess::start(&w.bins, &config)?;
    let online = api.wait_online("a1", true, Duration::from_secs(15)).await?;
    assert_eq!(online.connections, vec!["o"]);
    assert_eq!(api.call("a1", "o", "/before").await?.status(), 200);
    assert_eq!(api.call("a1", "p", "/x").await?.status(), 404);

    // A call under way (the internal server takes 3 s) while the config changes.
    let caller = api.clone();
    let in_flight = tokio::spawn(async move { caller.call("a1", "o", "/slow").await });
    w.internal.has_seen("/slow").await?;

    world.write_config(&world.token, &["o", "p"])?;
    let (code, text) = reload(&w.bins, &config)?;
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("connections added: p"), "{text}");
    // Slack for a loaded machine: the session is kept either way (checked below).
    let took = world.wait_status("p", 200, Duration::from_secs(10)).await?;
    assert!(
        took < Duration::from_secs(5),
        "the relay learned of p only after {took:?}"
    );
    let slow = in_flight.await??;
    assert_eq!(
        slow.status(),
        200,
        "the call under way finished on the old settings"
    );

    // Same session throughout: the relay never saw the agent go, the agent never reconnected.
    let info = api.agent("a1").await?;
    assert_eq!(
        info.connected_since, online.connected_since,
        "the tunnel was not dropped"
    );
    assert_eq!(info.connections, vec!["o", "p"]);
    let status = status_json(&w.bins, &config)?;
    assert_eq!(status["reconnects"], 0, "{status}");
    assert_eq!(status["connected"], true, "{status}");
    assert_eq!(
        status["connections"]["o"]["calls_served"], 2,
        "counters survive the reload: {status}"
    );

    // A config that fails validation is refused whole, with the reason; p keeps working.
    let mut broken = std::fs::read_to_string(&config)?;
    broken.push_str("[connections.q]\nbase_uri = \"ftp://nowhere\"\n");
    w.dir.write_private("agent.toml", &broken)?;
    let (code, text) = reload(&w.bins, &config)?;
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("refused") && text.contains("connections.q"),
        "the reason names the problem: {text}"
    );
    assert_eq!(api.call("a1", "p", "/still").await?.status(), 200);
    assert_eq!(api.agent("a1").await?.connections, vec!["o", "p"]);

    // SIGHUP does the same as `postern reload`: p goes, o stays, same session.
    world.write_config(&world.token, &["o"])?;
    signal(agent.pid(), "HUP")?;
    world.wait_status("p", 404, Duration::from_secs(5)).await?;
    assert_eq!(api.call("a1", "o", "/after").await?.status(), 200);
    let info = api.agent("a1").await?;
    assert_eq!(info.connected_since, online.connected_since);
    assert_eq!(info.connections, vec!["o"]);
    assert!(agent.logs.contains("config reloaded"));
    assert!(agent.logs.contains("config reload refused"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_token_is_tried_at_once_after_a_reload() -> Result<()> {
    let world = world().await?;
    let (w, api) = (&world.w, &world.w.admin);
    let config = world.write_config(&world.token, &["o"])?;
    let agent = AgentProcess::start(&w.bins, &config)?;
    api.wait_online("a1", true, Duration::from_secs(15)).await?;

    // Rotation without grace ends the session with an `ending` notice (token_rotated): the
    // agent knows its token is dead, backs off to the cap (30 s) and says so.
    let rotating = Instant::now();
    let rotated = send(api, Method::POST, "/v1/agents/a1/token", None).await?;
    assert_eq!(rotated.status, 200, "{}", rotated.json);
    let new_token = rotated.json["token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(new_token.starts_with("pst_"));
    agent.logs.wait_for(
        "no longer accepts this agent's token",
        Duration::from_secs(10),
    )?;

    // A reload that changes only the connections keeps the slow retry: a quick one with
    // the same dead token would only be refused again.
    let waits_before = reconnect_delays(&agent.logs.text()).len();
    world.write_config(&world.token, &["o", "p"])?;
    let (code, text) = reload(&w.bins, &config)?;
    assert_eq!(code, Some(0), "{text}");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        reconnect_delays(&agent.logs.text()).len(),
        waits_before,
        "tried again at once: {}",
        agent.logs.text()
    );

    // The admin stores the new token and reloads: the agent connects at once, not after the cap.
    set_token(w, &config, &new_token)?;
    let started = Instant::now();
    let (code, text) = reload(&w.bins, &config)?;
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("reconnecting"), "{text}");
    api.wait_online("a1", true, Duration::from_secs(10)).await?;
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "online again after {:?}",
        started.elapsed()
    );
    // Exactly not the backoff's doing: after the refusal (later than `rotating`) the
    // agent waits at least CAP/2 before it tries again on its own.
    assert!(
        rotating.elapsed() < CAP / 2,
        "online again only {:?} after the rotation",
        rotating.elapsed()
    );
    assert_eq!(api.call("a1", "o", "/x").await?.status(), 200);

    // A new relay address while connected: the call under way finishes, then the agent
    // reconnects to the new address.
    let before = status_json(&w.bins, &config)?["reconnects"].as_u64();
    let caller = api.clone();
    let in_flight = tokio::spawn(async move { caller.call("a1", "o", "/slow").await });
    w.internal.has_seen("/slow").await?;
    let old = api.agent("a1").await?;
    world.move_relay_to_localhost(&config)?;
    let (code, text) = reload(&w.bins, &config)?;
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("reconnecting"), "{text}");
    assert_eq!(
        in_flight.await??.status(),
        200,
        "drained before reconnecting"
    );
    agent.logs.wait_for(
        "reconnecting with the reloaded settings",
        Duration::from_secs(5),
    )?;
    api.wait_new_session("a1", &old, Duration::from_secs(5))
        .await?;
    assert_eq!(api.call("a1", "o", "/x").await?.status(), 200);
    let status = status_json(&w.bins, &config)?;
    assert_eq!(
        status["relays"][0],
        format!("localhost:{}", w.relay.ssh.port())
    );
    assert_eq!(
        status["reconnects"].as_u64(),
        before.map(|n| n + 1),
        "{status}"
    );
    assert!(
        !agent.logs.contains(&new_token),
        "the token never reaches the log"
    );
    Ok(())
}

/// A token switch by reload (within a rotation's grace) sets the new session up before the
/// old one drains, on the relay that serves (not the list's first, which is down): the
/// relay sends the new calls to the newer session at once, so none is refused, and the
/// old one's call under way is answered, longer than a reconnect's 10 s drain would have
/// let it run. Before, the agent drained first: new calls got 503 until its calls were
/// done or 10 s had passed, and then the slow call was cut.
#[tokio::test(flavor = "multi_thread")]
async fn a_token_switch_by_reload_refuses_no_call() -> Result<()> {
    let world = world().await?;
    let (w, api) = (&world.w, &world.w.admin);
    let config = world.write_config(&world.token, &["o"])?;
    // Two relays, the first down: the new session is tried on the one that serves.
    let text = std::fs::read_to_string(&config)?.replace(
        &format!("relay = \"{}\"", w.relay.ssh),
        &format!("relay = [\"127.0.0.1:1\", \"{}\"]", w.relay.ssh),
    );
    let config = w.dir.write_private("agent.toml", &text)?;
    let agent = AgentProcess::start(&w.bins, &config)?;
    api.wait_online("a1", true, Duration::from_secs(15)).await?;
    let rotated = send(
        api,
        Method::POST,
        "/v1/agents/a1/token",
        Some(serde_json::json!({ "grace": "5m" })),
    )
    .await?;
    assert_eq!(rotated.status, 200, "{}", rotated.json);
    let new_token = rotated.json["token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let caller = api.clone();
    // 16 s at the internal server.
    let in_flight = tokio::spawn(async move { caller.call("a1", "o", "/slowest").await });
    w.internal.has_seen("/slowest").await?;
    let old = api.agent("a1").await?;

    set_token(w, &config, &new_token)?;
    let (code, text) = reload(&w.bins, &config)?;
    assert_eq!(code, Some(0), "{text}");
    // Calls all through the switch, bounded: every one answered by some session.
    let mut refused = Vec::new();
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        let r = api.call("a1", "o", "/x").await?;
        if r.status() != 200 {
            refused.push(r.status().as_u16());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(refused.is_empty(), "refused during the switch: {refused:?}");
    api.wait_new_session("a1", &old, Duration::from_secs(5))
        .await?;
    assert_eq!(
        in_flight.await??.status(),
        200,
        "the old session's call was cut"
    );
    agent.logs.wait_for(
        "the session before the reload finished its calls",
        Duration::from_secs(10),
    )?;
    assert!(!agent.logs.contains(&new_token));
    Ok(())
}

/// An agent with a call to `path` under way on a session it drains, the new one (to the
/// relay under a new address, reloaded) up beside it.
async fn draining_for_new_settings(
    world: &World,
    path: &'static str,
) -> Result<(
    AgentProcess,
    tokio::task::JoinHandle<Result<reqwest::Response>>,
)> {
    let (w, api) = (&world.w, &world.w.admin);
    let config = world.write_config(&world.token, &["o"])?;
    let agent = AgentProcess::start(&w.bins, &config)?;
    api.wait_online("a1", true, Duration::from_secs(15)).await?;
    let caller = api.clone();
    let in_flight = tokio::spawn(async move { caller.call("a1", "o", path).await });
    w.internal.has_seen(path).await?;
    world.move_relay_to_localhost(&config)?;
    let (code, text) = reload(&w.bins, &config)?;
    anyhow::ensure!(code == Some(0), "{text}");
    agent
        .logs
        .wait_for("draining in-flight calls", Duration::from_secs(5))?;
    Ok((agent, in_flight))
}

/// The relay may end the sessions while the agent drains one for new settings: its
/// reason (here, revoked) decides what comes next, not the drain's (which would reconnect
/// at once, then be refused as a stranger).
#[tokio::test(flavor = "multi_thread")]
async fn a_revocation_during_a_reconnects_drain_is_taken_as_one() -> Result<()> {
    let world = world().await?;
    let api = &world.w.admin;
    // A call under way holds the drain open (the internal server takes 3 s).
    let (agent, in_flight) = draining_for_new_settings(&world, "/slow").await?;

    let revoked = send(api, Method::DELETE, "/v1/agents/a1", None).await?;
    assert_eq!(revoked.status, 204, "{}", revoked.json);
    agent.logs.wait_for(
        "the relay no longer accepts this agent's token",
        Duration::from_secs(10),
    )?;
    // The reload brought the same token: the slow retry holds for its settings too
    // (15 s at least), instead of a login at once that the relay refuses.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !agent.logs.contains("relay refused this agent"),
        "{}",
        agent.logs.text()
    );
    // Cut by the revocation, not answered: its request had gone out, so not 503 "retry".
    let cut = in_flight.await??;
    assert_eq!(cut.status(), 502);
    assert_eq!(cut.headers()["x-postern-error"], "tunnel_error");
    Ok(())
}

/// A stop while the agent drains to reconnect with new settings gives the calls under way
/// a stop's grace (30 s), not the reconnect's (10 s), and ends the agent.
#[tokio::test(flavor = "multi_thread")]
async fn a_stop_during_a_reconnects_drain_gets_a_stops_grace() -> Result<()> {
    let world = world().await?;
    // The internal server takes 16 s over this one.
    let (mut agent, in_flight) = draining_for_new_settings(&world, "/slowest").await?;
    postern_tests::harness::signal(agent.pid(), "TERM")?;
    agent
        .logs
        .wait_for("shutdown requested while draining", Duration::from_secs(5))?;
    let answer = tokio::time::timeout(Duration::from_secs(30), in_flight).await???;
    assert_eq!(answer.status(), 200);
    let status = agent.exit_within(Duration::from_secs(10)).await?;
    assert!(status.success(), "{status:?}");
    Ok(())
}

/// The relay keeps channels open between calls; a call after a reload must still use the
/// new settings, not those of the connection when its channel was opened.
#[tokio::test(flavor = "multi_thread")]
async fn the_next_call_after_a_reload_uses_the_new_settings_on_a_pooled_channel() -> Result<()> {
    let world = world().await?;
    let (w, api) = (&world.w, &world.w.admin);
    let with_base = |base: &str| -> Result<PathBuf> {
        let mut text = agent_config(w.relay.ssh, &w.relay.fingerprint, &world.token, "");
        text.push_str(&format!("[connections.o]\nbase_uri = \"{base}\"\n"));
        Ok(w.dir.write_private("agent.toml", &text)?)
    };
    let config = with_base(&w.internal.base_uri())?;
    let _agent = AgentProcess::start(&w.bins, &config)?;
    api.wait_online("a1", true, Duration::from_secs(15)).await?;
    let last_path = || {
        w.internal
            .requests()
            .last()
            .map(|seen| seen.path_and_query.clone())
            .unwrap_or_default()
    };
    for _ in 0..3 {
        assert_eq!(api.call("a1", "o", "/x").await?.status(), 200);
    }
    assert_eq!(last_path(), "/api/x");
    let opened = || async {
        scrape(api)
            .await
            .map(|s| sample(&s, "postern_call_channels_opened_total"))
    };
    let before = opened().await?;
    // A series that is missing reads 0: the call before the reload opened one.
    assert!(
        before >= 1.0,
        "no channel opened before the reload: {before}"
    );

    with_base(&format!("{}/v2", w.internal.base_uri()))?;
    let (code, text) = reload(&w.bins, &config)?;
    assert_eq!(code, Some(0), "{text}");
    for _ in 0..3 {
        assert_eq!(api.call("a1", "o", "/x").await?.status(), 200);
        assert_eq!(last_path(), "/api/v2/x", "a call after the reload");
    }
    assert_eq!(
        opened().await?,
        before,
        "the calls after the reload used pooled channels"
    );
    Ok(())
}

/// `postern connection test` runs in the running agent when the agent's config is the
/// file as it is now: a secret only the service's environment holds (`secret_env`) is
/// there. After an edit the agent has not loaded, it tests the file from the admin's
/// shell and says so; a reload brings the agent back in.
#[tokio::test(flavor = "multi_thread")]
async fn connection_test_runs_in_the_running_agent_with_its_environment() -> Result<()> {
    use postern_tests::internal_server::{InternalServer, Verifier};

    let secret = "a shared secret of at least thirty-two bytes!";
    let erp = InternalServer::start(Verifier::Hs256(secret.as_bytes().to_vec()), "erp").await?;
    let x = world().await?;
    let connections = format!(
        "[connections.erp]\nbase_uri = \"{}\"\ntest = {{ path = \"/health\", expect_status = 200 }}\n\
         [connections.erp.auth]\ntype = \"jwt_bearer\"\nalgorithm = \"HS256\"\n\
         secret_env = \"ERP_JWT_SECRET\"\nlifetime = \"5m\"\npayload = {{ aud = \"erp\" }}\n",
        erp.base_uri()
    );
    let w = &x.w;
    let text = agent_config(w.relay.ssh, &w.relay.fingerprint, &x.token, &connections);
    let config = w.dir.write_private("agent.toml", &text)?;
    let mut command = Command::new(&w.bins.agent);
    command
        .args(["run", "--config"])
        .arg(&config)
        .env("ERP_JWT_SECRET", secret);
    let _agent = AgentProcess::spawn(command)?;
    w.admin
        .wait_online("a1", true, Duration::from_secs(15))
        .await?;

    // The admin's shell has no ERP_JWT_SECRET.
    let test_with = |config: &Path| -> Result<(Option<i32>, String, String)> {
        let out = agent_command(&w.bins, config, &["connection", "test", "erp"])
            .env_remove("ERP_JWT_SECRET")
            .output()?;
        Ok((
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    };
    let test = || test_with(&config);
    let (code, stdout, stderr) = test()?;
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains("ok    http   200 OK, expected 200"),
        "{stdout}"
    );
    assert!(stderr.contains("tested by the running agent"), "{stderr}");
    let seen = erp.requests();
    assert_eq!(seen.len(), 1, "the test reached the server once");
    assert_eq!(seen[0].path_and_query, "/api/health");

    // Edited, not reloaded: the file as it is now is tested here, where the secret is not.
    std::fs::write(&config, format!("{text}# edited\n"))?;
    let (code, stdout, stderr) = test()?;
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert!(
        stderr.contains("edited since the running agent last loaded it"),
        "{stderr}"
    );
    assert!(stderr.contains("ERP_JWT_SECRET"), "{stderr}");
    assert_eq!(erp.requests().len(), 1, "nothing was sent from the shell");

    let (code, out) = reload(&w.bins, &config)?;
    assert_eq!(code, Some(0), "{out}");
    let (code, stdout, stderr) = test()?;
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stderr.contains("tested by the running agent"), "{stderr}");
    assert_eq!(erp.requests().len(), 2);

    // The agent checks the digest where it tests: `test NAME DIGEST` runs only on the
    // config with that digest (the CLI's answer to a reload between its two requests).
    let digest = status_json(&w.bins, &config)?["config_digest"]
        .as_str()
        .context("no config_digest in the status")?
        .to_owned();
    let ask = |line: String| -> Result<serde_json::Value> {
        let mut socket = std::os::unix::net::UnixStream::connect(w.dir.path().join("agent.sock"))?;
        writeln!(socket, "{line}")?;
        let mut answer = String::new();
        socket.read_to_string(&mut answer)?;
        Ok(serde_json::from_str(&answer)?)
    };
    let refused = ask(format!("test erp {}", "0".repeat(64)))?;
    assert_eq!(refused["other_config"], true, "{refused}");
    assert_eq!(erp.requests().len(), 2, "a refused test sends nothing");
    let report = ask(format!("test erp {digest}"))?;
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(erp.requests().len(), 3);

    // Another file whose socket is the running agent's: tested here, and said why.
    let other = w
        .dir
        .write_private("other.toml", &format!("{text}# another\n"))?;
    let (code, stdout, stderr) = test_with(&other)?;
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    let runs = format!(
        "runs {}, not this file",
        std::path::absolute(&config)?.display()
    );
    assert!(stderr.contains(&runs), "{stderr}");
    assert_eq!(erp.requests().len(), 3, "nothing was sent from the shell");

    let out = agent_cli(&w.bins, &config, &["connection", "test", "nope"])?;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("the running agent has no connection named \"nope\""),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// A connection test running in the agent does not hold up the agent's stop: on SIGTERM
/// it ends at once and its caller hears why, instead of the agent waiting out the
/// connection's timeout.
#[tokio::test(flavor = "multi_thread")]
async fn a_connection_test_in_the_agent_ends_when_the_agent_stops() -> Result<()> {
    let x = world().await?;
    let w = &x.w;
    // Takes the connection and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0")?;
    let connections = format!(
        "[connections.silent]\nbase_uri = \"http://{}\"\ntimeout = \"30s\"\n",
        silent.local_addr()?
    );
    let text = agent_config(w.relay.ssh, &w.relay.fingerprint, &x.token, &connections);
    let config = w.dir.write_private("agent.toml", &text)?;
    let mut agent = AgentProcess::start(&w.bins, &config)?;
    w.admin
        .wait_online("a1", true, Duration::from_secs(15))
        .await?;

    let test = agent_command(&w.bins, &config, &["connection", "test", "silent"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    // The request is sent and waits for an answer that never comes: seen arriving here
    // (bounded) rather than assumed after a fixed sleep. Every connection is held open
    // and never answered; the test's TCP step connects and closes one first.
    silent.set_nonblocking(true)?;
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut held = Vec::new();
    'arrived: loop {
        match silent.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(true)?;
                held.push((stream, Vec::new()));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e.into()),
        }
        for (stream, head) in &mut held {
            let mut buf = [0u8; 1024];
            // Nothing yet, or closed (the TCP step's connection): look again later.
            if let Ok(n) = stream.read(&mut buf) {
                head.extend_from_slice(&buf[..n]);
            }
            if head.windows(4).any(|w| w == b"\r\n\r\n") {
                break 'arrived;
            }
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the connection test's request never arrived"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let stopping = Instant::now();
    agent.terminate()?;
    let took = stopping.elapsed();
    let out = test.wait_with_output()?;
    assert!(
        took < Duration::from_secs(10),
        "the agent took {took:?} to stop"
    );
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    assert!(
        output_text(&out).contains("the agent stopped before the test finished"),
        "{}",
        output_text(&out)
    );
    Ok(())
}

/// A reload that lowers `max_concurrent_calls` holds back new calls while the calls
/// under way from before are as many: the limit counts them, not a fresh count of its
/// own beside them (before, the new limit's places were all free, on top of the old).
#[tokio::test(flavor = "multi_thread")]
async fn a_lowered_concurrency_limit_counts_the_calls_under_way() -> Result<()> {
    let world = world().await?;
    let (w, api) = (&world.w, &world.w.admin);
    let config = world.write_config(&world.token, &["o"])?;
    let limited = |max: u32| -> Result<()> {
        let text = std::fs::read_to_string(&config)?;
        let text = match text.find("max_concurrent_calls") {
            Some(at) => format!("{}max_concurrent_calls = {max}\n", &text[..at]),
            None => format!("{text}max_concurrent_calls = {max}\n"),
        };
        w.dir.write_private("agent.toml", &text)?;
        Ok(())
    };
    limited(3)?;
    let _agent = AgentProcess::start(&w.bins, &config)?;
    api.wait_online("a1", true, Duration::from_secs(15)).await?;
    // Two calls under way (the internal server takes 10 s over each).
    let slow: Vec<_> = (0..2)
        .map(|i| {
            let caller = api.clone();
            tokio::spawn(async move { caller.call("a1", "o", &format!("/{i}/slower")).await })
        })
        .collect();
    w.internal.has_seen("/0/slower").await?;
    w.internal.has_seen("/1/slower").await?;

    limited(1)?;
    let (code, text) = reload(&w.bins, &config)?;
    assert_eq!(code, Some(0), "{text}");
    let r = api.call("a1", "o", "/x").await?;
    assert_eq!(r.status(), 429, "two under way, a limit of one");
    assert_eq!(
        postern_tests::relay_support::error_code(&r.json().await?),
        "too_many_calls"
    );
    for call in slow {
        assert_eq!(call.await??.status(), 200, "a call from before the reload");
    }
    assert_eq!(api.call("a1", "o", "/x").await?.status(), 200);
    Ok(())
}
