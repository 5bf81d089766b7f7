//! `postern reload` and `status` against a real `postern run` that reaches no relay (its
//! status socket answers all the same): which file a reload re-read, and what the CLI
//! says when the file it was given does not lead to the agent.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use postern_tests::harness::{
    AgentProcess, Bins, agent_cli, offline_agent_config, output_text, signal, stderr, stdout,
    wait_status_answers,
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
