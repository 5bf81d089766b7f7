//! `postern run` and `postern-relay serve` re-execute themselves once with mimalloc's
//! setting, however they are started; an operator's own `MIMALLOC_ARENA_EAGER_COMMIT` is kept.

use anyhow::{Context, Result};
use postern_process::{TUNING_VALUE, TUNING_VAR};
use postern_tests::harness::{
    AgentProcess, Api, Bins, RelayProcess, agent_config, command_in, create_agent, create_api_key,
};
use postern_tests::internal_server::{InternalServer, Verifier};
use postern_tests::relay_support::{ONLINE_WITHIN, relay_command};
use postern_tests::temp::TempDir;

fn bins() -> Bins {
    postern_tests::bins!()
}

/// `/proc/PID/environ` and `/proc/PID/cmdline`, split at their NULs.
fn proc_list(pid: u32, what: &str) -> Result<Vec<String>> {
    let path = format!("/proc/{pid}/{what}");
    let raw = std::fs::read(&path).with_context(|| path.clone())?;
    Ok(raw
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect())
}

/// The setting as the process was started with it.
fn tuning(pid: u32) -> Result<Option<String>> {
    let prefix = format!("{TUNING_VAR}=");
    Ok(proc_list(pid, "environ")?
        .into_iter()
        .find_map(|v| v.strip_prefix(&prefix).map(str::to_owned)))
}

#[test]
fn the_setting_is_the_one_measured() {
    assert_eq!(
        (TUNING_VAR, TUNING_VALUE),
        ("MIMALLOC_ARENA_EAGER_COMMIT", "0")
    );
}

fn assert_tuned(pid: u32) -> Result<()> {
    assert_eq!(
        tuning(pid)?.as_deref(),
        Some(TUNING_VALUE),
        "started with {TUNING_VAR}"
    );
    Ok(())
}

/// A relay `serve` with the setting unset (`None`) or set to `value`.
fn relay(bins: &Bins, dir: &TempDir, value: Option<&str>) -> Result<RelayProcess> {
    let state = dir.path().join("relay");
    let config = dir.path().join("relay.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = {:?}\nssh_listen = \"127.0.0.1:0\"\napi_listen = \"127.0.0.1:0\"\n",
            state.to_string_lossy()
        ),
    )?;
    let mut command = relay_command(bins, &config);
    match value {
        None => command.env_remove(TUNING_VAR),
        Some(v) => command.env(TUNING_VAR, v),
    };
    RelayProcess::spawn(command, &state)
}

#[tokio::test(flavor = "multi_thread")]
async fn both_long_running_commands_run_tuned_with_their_own_arguments_and_pid() -> Result<()> {
    let dir = TempDir::new("alloc-tuning")?;
    let bins = bins();
    let relay = relay(&bins, &dir, None)?;
    // The PID the harness spawned is the one serving: the exec kept it, and the arguments.
    assert_tuned(relay.pid())?;
    let cmdline = proc_list(relay.pid(), "cmdline")?;
    assert_eq!(cmdline[0], bins.relay.to_string_lossy(), "argv[0] kept");
    // Its name too, which `ps -C` and `pgrep` go by (the exec had made it `exe`).
    let name = std::fs::read_to_string(format!("/proc/{}/comm", relay.pid()))?;
    let expected: String = bins
        .relay
        .file_name()
        .map(|n| n.to_string_lossy().chars().take(15).collect())
        .unwrap_or_default();
    assert_eq!(name.trim_end(), expected);
    let config = dir.path().join("relay.toml");
    assert_eq!(
        &cmdline[1..],
        ["serve", "--config", &config.to_string_lossy()]
    );
    assert!(!relay.logs.contains(TUNING_VAR), "{}", relay.logs.text());

    let state = dir.path().join("relay");
    let api = Api::new(relay.api_base(), create_api_key(&bins, &state, "admin")?);
    let (_, token) = create_agent(&bins, &state, "a1")?;
    let internal = InternalServer::start(Verifier::None, "o").await?;
    let connections = format!(
        "\n[connections.o]\nbase_uri = \"{}\"\ntimeout = \"5s\"\n",
        internal.base_uri()
    );
    let agent_toml = dir.write_private(
        "agent.toml",
        &agent_config(relay.ssh, &relay.fingerprint, &token, &connections),
    )?;
    let mut command = command_in(None, &bins.agent);
    command
        .args(["run", "--config"])
        .arg(&agent_toml)
        .env_remove(TUNING_VAR);
    let agent = AgentProcess::spawn(command)?;
    api.wait_online("a1", true, ONLINE_WITHIN).await?;
    assert_tuned(agent.pid())?;
    let cmdline = proc_list(agent.pid(), "cmdline")?;
    assert_eq!(
        &cmdline[1..],
        ["run", "--config", &agent_toml.to_string_lossy()]
    );
    let r = api
        .http
        .get(format!(
            "{}/v1/agents/a1/connections/o/http/tuned",
            api.base
        ))
        .bearer_auth(&api.key)
        .send()
        .await?;
    assert_eq!(r.status(), 200, "a call through the re-executed pair");
    Ok(())
}

#[test]
fn an_operators_own_setting_is_kept_and_said() -> Result<()> {
    let bins = bins();
    let dir = TempDir::new("alloc-own")?;
    let relay_own = relay(&bins, &dir, Some("1"))?;
    assert_eq!(tuning(relay_own.pid())?.as_deref(), Some("1"));
    relay_own.logs.wait_for(
        "MIMALLOC_ARENA_EAGER_COMMIT is set to \"1\": kept as it is",
        ONLINE_WITHIN,
    )?;
    Ok(())
}
