//! `postern reload` and `status` against a real `postern run` that reaches no relay (its
//! status socket answers all the same): which file a reload re-read, and what the CLI
//! says when the file it was given does not lead to the agent.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use postern_tests::harness::{
    AgentProcess, Bins, agent_cli, offline_agent_config, output_text, signal, status_json, stderr,
    stdout, wait_status_answers,
};
use postern_tests::temp::TempDir;

fn bins() -> Bins {
    postern_tests::bins!()
}

/// Starts `postern run --config config` and waits until its status socket answers.
fn run_agent(bins: &Bins, config: &Path) -> Result<AgentProcess> {
    let agent = AgentProcess::start(bins, config)?;
    wait_status_answers(bins, config, &agent)?;
    Ok(agent)
}

/// `reload --config b.toml` where b.toml names a.toml's agent's socket: the agent
/// re-reads a.toml, and the CLI says so rather than "reloaded b.toml".
#[test]
fn reload_names_the_file_the_agent_reread() -> Result<()> {
    let bins = bins();
    let dir = TempDir::new("cli-reload-file")?;
    let rest =
        "status_socket = \"agent.sock\"\n[connections.a]\nbase_uri = \"http://127.0.0.1:9\"\n";
    let a = dir.write_private("a.toml", &offline_agent_config("127.0.0.1:1", rest))?;
    let _agent = run_agent(&bins, &a)?;

    let same = agent_cli(&bins, &a, &["reload"])?;
    assert_eq!(same.status.code(), Some(0), "{}", output_text(&same));
    let first_line = |out: &std::process::Output| stdout(out).lines().next().map(str::to_owned);
    assert_eq!(first_line(&same), Some(format!("reloaded {}", a.display())));
    assert!(!stderr(&same).contains("note:"), "{}", stderr(&same));

    let b = dir.write_private(
        "b.toml",
        &offline_agent_config(
            "127.0.0.1:1",
            &format!("{rest}[connections.b]\nbase_uri = \"http://127.0.0.1:9\"\n"),
        ),
    )?;
    let other = agent_cli(&bins, &b, &["reload"])?;
    assert_eq!(other.status.code(), Some(0), "{}", output_text(&other));
    assert_eq!(
        first_line(&other),
        Some(format!("reloaded {}", a.display()))
    );
    let said = stderr(&other);
    assert!(
        said.contains(&format!(
            "the running agent runs {}, not {}",
            a.display(),
            b.display()
        )) && said.contains("are not in force"),
        "{said}"
    );

    // A symlink to the running file is that file.
    let link = dir.path().join("link.toml");
    std::os::unix::fs::symlink(&a, &link)?;
    let linked = agent_cli(&bins, &link, &["reload"])?;
    assert_eq!(linked.status.code(), Some(0), "{}", output_text(&linked));
    assert!(!stderr(&linked).contains("note:"), "{}", stderr(&linked));
    Ok(())
}

/// After `status_socket` changed in the running agent's file, `reload` and `status` look
/// where the file says now and find nothing: exit 2, naming the agent that runs the file
/// and why it does not answer there. SIGHUP still reaches it, and it refuses the change.
#[test]
fn a_changed_status_socket_is_named_as_the_likely_reason() -> Result<()> {
    let bins = bins();
    let dir = TempDir::new("cli-reload-socket")?;
    let text = |socket: &str| {
        offline_agent_config("127.0.0.1:1", &format!("status_socket = \"{socket}\"\n"))
    };
    let config = dir.write_private("agent.toml", &text("old.sock"))?;
    let agent = run_agent(&bins, &config)?;
    dir.write_private("agent.toml", &text("new.sock"))?;

    for command in ["reload", "status"] {
        let out = agent_cli(&bins, &config, &[command])?;
        let said = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{command}: {said}");
        assert!(
            said.contains("new.sock")
                && said.contains(&format!("runs as pid {}", agent.pid()))
                && said.contains("If you changed status_socket while it runs")
                && said.contains("restart the agent"),
            "{command}: {said}"
        );
    }

    signal(agent.pid(), "HUP")?;
    agent.logs.wait_for(
        "status_socket cannot change while the agent runs",
        Duration::from_secs(10),
    )?;
    let old = dir.write_private("old.toml", &text("old.sock"))?;
    let status = agent_cli(&bins, &old, &["status", "--json"])?;
    assert_eq!(status.status.code(), Some(1), "{}", output_text(&status));
    Ok(())
}

/// A direct JWT without `exp` is warned of in the agent's log, at start and at each
/// reload that loads it (it still runs: configs that ran so must keep running).
#[test]
fn a_jwt_without_exp_is_warned_of_in_the_agents_log() -> Result<()> {
    let bins = bins();
    let dir = TempDir::new("cli-reload-no-exp")?;
    let rest = "status_socket = \"agent.sock\"\n[connections.bare]\nbase_uri = \"http://127.0.0.1:9\"\n\
        auth = { type = \"jwt_bearer\", algorithm = \"HS256\", secret = \"a-secret-of-thirty-two-bytes-ok!\" }\n";
    let config = dir.write_private("agent.toml", &offline_agent_config("127.0.0.1:1", rest))?;
    let agent = run_agent(&bins, &config)?;
    let warning = "connections.bare: its JWT has no exp claim";
    agent.logs.wait_for(warning, Duration::from_secs(10))?;
    let before = agent.logs.text().matches(warning).count();
    let out = agent_cli(&bins, &config, &["reload"])?;
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while agent.logs.text().matches(warning).count() == before {
        assert!(
            std::time::Instant::now() < deadline,
            "no warning at reload: {}",
            agent.logs.text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// `GET /metrics` from the agent on loopback `port`, as text (HTTP/1.0: the agent closes
/// after its answer).
fn agent_metrics(port: u16) -> Result<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: agent\r\n\r\n")?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    Ok(text)
}

/// The value of the series `name` (labels included) in OpenMetrics `text`.
fn series(text: &str, name: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .map(|v| v.trim().to_owned())
}

/// A reload refused (by SIGHUP, whose outcome was only in the journal) shows in `postern
/// status` and `--json` with its time and reason, and the status says the file on disk is
/// not the one in force; a metric counts it. A reload that succeeds clears both.
#[test]
fn a_refused_reload_shows_in_status_until_one_succeeds() -> Result<()> {
    let bins = bins();
    let dir = TempDir::new("cli-reload-refused")?;
    let text = |timeout: &str| {
        offline_agent_config(
            "127.0.0.1:1",
            &format!(
                "status_socket = \"agent.sock\"\nmetrics_listen = \"127.0.0.1:0\"\n\
                 [connections.up]\nbase_uri = \"http://127.0.0.1:9\"\ntimeout = \"{timeout}\"\n"
            ),
        )
    };
    let config = dir.write_private("agent.toml", &text("4s"))?;
    let agent = run_agent(&bins, &config)?;
    let port = agent.metrics_port()?;
    let reloads = |outcome: &str| {
        let name = format!("postern_agent_config_reloads_total{{outcome=\"{outcome}\"}}");
        agent_metrics(port).map(|t| series(&t, &name))
    };
    let last_ok = || agent_metrics(port).map(|t| series(&t, "postern_agent_config_last_reload_ok"));
    let status = status_json(&bins, &config)?;
    assert!(status["last_reload"].is_null(), "{status}");
    assert_eq!(status["config_file_changed"], false, "{status}");
    assert_eq!(reloads("refused")?.as_deref(), Some("0"));
    assert_eq!(last_ok()?.as_deref(), Some("1"));

    // The edit of the finding: valid TOML, refused by validation.
    dir.write_private("agent.toml", &text("0s"))?;
    signal(agent.pid(), "HUP")?;
    agent
        .logs
        .wait_for("config reload refused", Duration::from_secs(10))?;
    let status = status_json(&bins, &config)?;
    let reload = &status["last_reload"];
    assert_eq!(reload["ok"], false, "{status}");
    assert!(
        reload["error"]
            .as_str()
            .is_some_and(|e| e.contains("timeout")),
        "{status}"
    );
    assert!(
        reload["at"].as_str().is_some_and(|at| at.ends_with('Z')),
        "{status}"
    );
    assert_eq!(status["config_file_changed"], true, "{status}");
    let out = agent_cli(&bins, &config, &["status"])?;
    let said = stdout(&out);
    assert!(
        said.contains("last reload  REFUSED at ")
            && said.contains("timeout")
            && said.contains("a reload that succeeds clears this")
            && said.contains("config file  CHANGED since the agent loaded it"),
        "{}",
        output_text(&out)
    );
    assert_eq!(reloads("refused")?.as_deref(), Some("1"));
    assert_eq!(last_ok()?.as_deref(), Some("0"));

    dir.write_private("agent.toml", &text("5s"))?;
    let out = agent_cli(&bins, &config, &["reload"])?;
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    let status = status_json(&bins, &config)?;
    assert_eq!(status["last_reload"]["ok"], true, "{status}");
    assert!(status["last_reload"]["error"].is_null(), "{status}");
    assert_eq!(status["config_file_changed"], false, "{status}");
    let said = stdout(&agent_cli(&bins, &config, &["status"])?);
    assert!(
        !said.contains("REFUSED") && !said.contains("CHANGED"),
        "{said}"
    );
    assert_eq!(reloads("ok")?.as_deref(), Some("1"));
    assert_eq!(reloads("refused")?.as_deref(), Some("1"));
    assert_eq!(last_ok()?.as_deref(), Some("1"));
    Ok(())
}
