//! What the real `postern` and `postern-relay` binaries print: output into a pipe the
//! reader has closed (`| head -1`), fingerprint and load errors, the no-agent hint, the
//! wrong-fingerprint log line, and the relay's list and suggestion texts and its refusal
//! of a folder without a store.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use postern_tests::harness::{
    AgentProcess, Bins, Tunnel, agent_cli, agent_command, agent_config, create_agent,
    offline_agent_config, offline_init, relay_cli, relay_cli_output, stderr, unknown_token,
};
use postern_tests::temp::TempDir;

fn bins() -> Bins {
    postern_tests::bins!()
}

/// Shaped like `postern-relay fingerprint` output, but no relay's.
const OTHER_FINGERPRINT: &str = "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

/// Runs the command with stdout a pipe whose read end is closed before it writes
/// (`| head -1` that has already read its line), several times since it is a race;
/// fails if it panics or does not exit 0.
fn into_closed_pipe(program: &Path, args: &[&str]) -> Result<()> {
    for _ in 0..5 {
        let mut child = Command::new(program)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {args:?}"))?;
        drop(child.stdout.take());
        let out = child.wait_with_output()?;
        let said = stderr(&out);
        if said.contains("panicked") || out.status.code() != Some(0) {
            bail!(
                "{} {args:?} into a closed pipe: {:?}\n{said}",
                program.display(),
                out.status
            );
        }
    }
    Ok(())
}

#[test]
fn agent_commands_into_a_closed_pipe_do_not_panic() -> Result<()> {
    let dir = TempDir::new("cliout-pipe")?;
    // More than a pipe holds (64 KiB), so a write fails even when it wins the race.
    let connections: String = (0..3000)
        .map(|i| format!("[connections.c{i}]\nbase_uri = \"http://127.0.0.1:9000/api/{i}\"\n"))
        .collect();
    let config = dir.write_private(
        "agent.toml",
        &offline_agent_config("127.0.0.1:1", &connections),
    )?;
    let config = config.to_string_lossy();
    let agent = bins().agent;
    let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4IiwiZXhwIjoxNzAwMDAwMDAwfQ.c2ln";
    for (args, config) in [
        (vec!["connection", "list"], &config),
        (vec!["connection", "list", "--json"], &config),
        (vec!["connection", "show", "c7"], &config),
        (vec!["config", "check"], &config),
        (vec!["man"], &config),
        (vec!["completions", "bash"], &config),
        (vec!["jwt", "decode", jwt], &config),
        (vec!["service", "unit"], &config),
    ] {
        let mut with_config = args.clone();
        with_config.extend(["--config", config]);
        into_closed_pipe(&agent, &with_config)?;
    }
    Ok(())
}

#[test]
fn a_malformed_fingerprint_is_refused_at_init_and_check() -> Result<()> {
    let dir = TempDir::new("cliout-fp")?;
    let path = dir.path().join("agent.toml");
    let init = |fingerprint: &str| {
        agent_command(
            &bins(),
            &path,
            &[
                "init",
                "--relay",
                "relay.example.com:2222",
                "--fingerprint",
                fingerprint,
            ],
        )
        .env("POSTERN_TOKEN", unknown_token())
        .output()
    };
    for bad in [
        "SHA256:nope",
        "SHA256:",
        "sha256:x",
        "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
    ] {
        let out = init(bad)?;
        let said = stderr(&out);
        assert!(!out.status.success(), "{bad} was taken");
        assert!(!path.exists(), "{bad}: the config was written");
        assert!(
            said.contains("43 base64 characters") && said.contains("`postern-relay fingerprint`"),
            "{bad}: {said}"
        );
    }

    let out = init(OTHER_FINGERPRINT)?;
    assert!(out.status.success(), "{}", stderr(&out));
    let written = std::fs::read_to_string(&path)?;
    assert!(
        written.contains("/usr/share/doc/postern/"),
        "the header names the installed example: {written}"
    );
    let out = agent_cli(&bins(), &path, &["config", "check"])?;
    assert!(out.status.success(), "{}", stderr(&out));

    let typo = written.replace(OTHER_FINGERPRINT, "SHA256:nope");
    let bad = dir.write_private("typo.toml", &typo)?;
    let out = agent_cli(&bins(), &bad, &["config", "check"])?;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("`postern-relay fingerprint`"),
        "{}",
        stderr(&out)
    );
    Ok(())
}

#[test]
fn load_errors_name_the_file_once() -> Result<()> {
    let dir = TempDir::new("cliout-once")?;
    let syntax = dir.write_private("syntax.toml", "relay = \n")?;
    let loose = dir.write_private(
        "loose.toml",
        &format!(
            "relay = \"r:1\"\nrelay_fingerprint = \"{OTHER_FINGERPRINT}\"\ntoken = \"{}\"\n",
            unknown_token()
        ),
    )?;
    std::fs::set_permissions(&loose, std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
    let missing = dir.path().join("missing.toml");
    let problems = dir.write_private(
        "problems.toml",
        "relay = \"nohost\"\nrelay_fingerprint = \"x\"\ntoken = \"pst_short\"\n",
    )?;
    // The mode error names the file a second time in the `chmod 600 FILE` it suggests.
    for (path, what, times) in [
        (&syntax, "TOML parse error", 1),
        (&loose, "chmod 600", 2),
        (&missing, "does not exist", 1),
        (&problems, "relay_fingerprint", 1),
    ] {
        let name = path.to_string_lossy();
        // `connection list` reads the file as written: bad values are `config check`'s.
        let list = &["connection", "list"][..];
        let commands = if what == "relay_fingerprint" {
            vec![&["config", "check"][..]]
        } else {
            vec![&["config", "check"][..], list]
        };
        for command in commands {
            let out = agent_cli(&bins(), path, command)?;
            let said = stderr(&out);
            assert!(!out.status.success());
            assert!(said.contains(what), "{command:?} {name}: {said}");
            assert_eq!(
                said.matches(&*name).count(),
                times,
                "{command:?} {name}: {said}"
            );
        }
    }
    Ok(())
}

#[test]
fn no_agent_points_to_the_log_and_status_socket() -> Result<()> {
    let dir = TempDir::new("cliout-nosock")?;
    let config = dir.write_private(
        "agent.toml",
        &offline_agent_config("127.0.0.1:1", "status_socket = \"agent.sock\"\n"),
    )?;
    for command in ["status", "reload"] {
        let out = agent_cli(&bins(), &config, &[command])?;
        let said = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{command}: {said}");
        assert!(
            said.contains("no agent answers")
                && said.contains("its log says why")
                && said.contains("`status_socket`"),
            "{command}: {said}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn status_relay_output_and_the_wrong_fingerprint_line() -> Result<()> {
    let dir = TempDir::new("cliout-tunnel")?;
    let bins = bins();
    let t = Tunnel::start(
        &bins,
        &dir,
        "[connections.o]\nbase_uri = \"http://127.0.0.1:9/\"\n",
    )
    .await?;
    let config = t.config.to_string_lossy();
    let state = t.relay.state_dir.to_string_lossy().into_owned();

    for args in [
        vec!["status", "--json", "--config", &config],
        vec!["status", "--config", &config],
        vec!["reload", "--config", &config],
    ] {
        into_closed_pipe(&bins.agent, &args)?;
    }
    relay_cli(
        &bins,
        &[
            "apikey",
            "create",
            "a-rather-long-key-name",
            "--scope",
            "call",
            "--state-dir",
            &state,
        ],
    )?;
    for args in [
        vec!["agent", "list", "--state-dir", &state],
        vec!["agent", "list", "--json", "--state-dir", &state],
        vec!["apikey", "list", "--state-dir", &state],
        vec!["apikey", "list", "--json", "--state-dir", &state],
        vec!["fingerprint", "--state-dir", &state],
        vec!["completions", "bash"],
        vec!["man"],
    ] {
        into_closed_pipe(&bins.relay, &args)?;
    }

    // Every CREATED value starts in the header's column.
    let listed = relay_cli(&bins, &["apikey", "list", "--state-dir", &state])?;
    let column = listed.find("CREATED").context("no CREATED header")?;
    for line in listed.lines().skip(1) {
        let at = line.find(" 20").map(|i| i + 1);
        assert_eq!(at, Some(column), "misaligned:\n{listed}");
    }
    let revoked = relay_cli(
        &bins,
        &[
            "apikey",
            "revoke",
            "a-rather-long-key-name",
            "--state-dir",
            &state,
        ],
    )?;
    assert!(revoked.contains("within a second"), "{revoked}");
    let created = relay_cli(&bins, &["agent", "create", "a3", "--state-dir", &state])?;
    // The agent's machine has no relay state: the fingerprint is printed, not a command;
    // the line pastes as it is but for the host, and has no token to leak into history.
    let suggested = format!(
        "\n  postern init --relay RELAY_HOST:2222 --fingerprint {}\n",
        t.relay.fingerprint
    );
    assert!(created.contains(&suggested), "{created}");
    assert!(
        !created.contains('<') && !created.contains("$("),
        "{created}"
    );
    // A store without its host key beside it (restored alone): the agent is made, its
    // token shown, and stderr says why the command carries no fingerprint.
    let key = std::path::Path::new(&state).join("ssh_host_ed25519_key");
    let aside = dir.path().join("host-key-aside");
    std::fs::rename(&key, &aside)?;
    let keyless = postern_tests::harness::relay_cli_output(
        &bins,
        &["agent", "create", "a4", "--state-dir", &state],
    );
    std::fs::rename(&aside, &key)?;
    let keyless = keyless?;
    let (out, err) = (
        String::from_utf8_lossy(&keyless.stdout),
        String::from_utf8_lossy(&keyless.stderr),
    );
    assert!(keyless.status.success(), "{out}{err}");
    assert!(
        out.contains("--fingerprint FINGERPRINT") && out.contains("pst_"),
        "{out}"
    );
    assert!(
        err.contains("warning: the relay's fingerprint is not known here (no host key at")
            && err.contains("`postern-relay fingerprint` on the relay prints it"),
        "{err}"
    );

    // The agent refuses the relay: that is what its log must say.
    let (_, token) = create_agent(&bins, &t.relay.state_dir, "a2")?;
    let wrong = dir.write_private(
        "wrong.toml",
        &agent_config(t.relay.ssh, OTHER_FINGERPRINT, &token, "")
            .replace("agent.sock", "wrong.sock"),
    )?;
    let agent = AgentProcess::start(&bins, &wrong)?;
    agent.logs.wait_for(
        "the relay's host key does not match relay_fingerprint; not sending the token; retrying slowly",
        Duration::from_secs(15),
    )?;
    let logs = agent.logs.text();
    assert!(
        logs.contains("does not match the pinned fingerprint"),
        "{logs}"
    );
    assert!(!logs.contains("relay refused this agent"), "{logs}");
    Ok(())
}

/// The management commands work on the store `serve` made: a mistyped folder gets an
/// error naming it, and no store of its own.
#[test]
fn relay_management_commands_refuse_a_folder_without_a_store() -> Result<()> {
    let bins = bins();
    let dir = TempDir::new("no-store")?;
    let typo = dir.path().join("postern-rleay");
    let state = typo.display().to_string();
    for args in [
        vec!["agent", "create", "a1", "--state-dir", &state],
        vec!["agent", "list", "--state-dir", &state],
        vec!["apikey", "create", "k", "--state-dir", &state],
    ] {
        let out = relay_cli_output(&bins, &args)?;
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(
            stderr(&out).contains(&format!("no relay store at {state}/relay.db")),
            "{args:?}: {}",
            stderr(&out)
        );
        assert!(!typo.exists(), "{args:?} made {state}");
    }
    Ok(())
}

/// `connection test` runs in the agent only when that is sure to test this file: an agent
/// too old to say which config it runs, or something else on the socket, sends it to the
/// shell, with the reason on stderr.
#[test]
fn connection_test_falls_back_to_the_shell_and_says_why() -> Result<()> {
    use std::io::{BufRead, BufReader, Write};

    let dir = TempDir::new("conntest-fallback")?;
    let config = dir.write_private(
        "agent.toml",
        &offline_agent_config(
            "127.0.0.1:1",
            "status_socket = \"agent.sock\"\n[connections.dead]\nbase_uri = \"http://127.0.0.1:9\"\ntimeout = \"2s\"\n",
        ),
    )?;
    let old_agent = r#"{"agent_version":"0.0.9","relays":[],"connected":true,"connected_since":null,"agent_name":null,"last_error":null,"reconnects":0,"connections":{}}"#;
    // An agent that runs a copy with the same bytes in another folder, whose relative
    // paths are taken from there: its test would not be of this file.
    let copy = dir.path().join("elsewhere").join("agent.toml");
    let digest = postern_agent::config::file_digest(&std::fs::read(&config)?);
    let runs_a_copy = serde_json::json!({
        "agent_version": "0.1.0", "relays": [], "connected": true, "connected_since": null,
        "agent_name": null, "last_error": null, "reconnects": 0, "connections": {},
        "config_digest": digest, "config_file": copy,
    })
    .to_string();
    let not_this = format!("runs {}, not this file", copy.display());
    for (answer, why) in [
        (old_agent, "is older than this postern"),
        ("hello", "is not a postern agent"),
        (runs_a_copy.as_str(), not_this.as_str()),
    ] {
        let answer = answer.to_owned();
        let listener = std::os::unix::net::UnixListener::bind(dir.path().join("agent.sock"))?;
        let daemon = std::thread::spawn(move || -> Result<String> {
            let (stream, _) = listener.accept()?;
            let mut line = String::new();
            BufReader::new(&stream).read_line(&mut line)?;
            (&stream).write_all(answer.as_bytes())?;
            Ok(line)
        });
        let out = agent_cli(&bins(), &config, &["connection", "test", "dead"])?;
        let asked = daemon
            .join()
            .map_err(|_| anyhow::anyhow!("the fake daemon panicked"))??;
        std::fs::remove_file(dir.path().join("agent.sock"))?;
        assert_eq!(asked, "status\n", "only the status was asked");
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        assert!(stderr(&out).contains(why), "{}", stderr(&out));
        assert!(
            String::from_utf8_lossy(&out.stdout)
                .contains("FAIL  tcp    cannot connect to 127.0.0.1:9"),
            "tested from the shell: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    Ok(())
}

/// Edits and tests from an admin's shell that lacks the service's environment: a
/// connection keyed by `secret_env` is added with a note; testing another connection is
/// not stopped by it; JWT options without `--auth jwt_bearer` are refused saying so;
/// `show` prints what can be pasted back; `init` with no token says how to give one.
#[test]
fn edits_from_a_shell_without_the_services_environment() -> Result<()> {
    let bins = bins();
    let dir = TempDir::new("edits-env")?;
    let config = dir.write_private(
        "agent.toml",
        &offline_agent_config(
            "127.0.0.1:1",
            "[connections.dead]\nbase_uri = \"http://127.0.0.1:9\"\ntimeout = \"2s\"\n",
        ),
    )?;
    let add = agent_cli(
        &bins,
        &config,
        &[
            "connection",
            "add",
            "billing",
            "--base-uri",
            "http://127.0.0.1:9/b",
            "--auth",
            "jwt_bearer",
            "--algorithm",
            "HS256",
            "--secret-env",
            "POSTERN_TEST_UNSET_SECRET",
            "--payload",
            "aud=billing",
        ],
    )?;
    assert!(add.status.success(), "{}", stderr(&add));
    assert!(
        stderr(&add).contains("not checked here")
            && stderr(&add).contains("POSTERN_TEST_UNSET_SECRET is not set"),
        "{}",
        stderr(&add)
    );
    assert!(
        std::fs::read_to_string(&config)?.contains("secret_env = \"POSTERN_TEST_UNSET_SECRET\"")
    );

    // `dead` needs no secret: billing's, missing here, does not stop its test.
    let test = agent_cli(&bins, &config, &["connection", "test", "dead"])?;
    assert_eq!(test.status.code(), Some(1), "{}", stderr(&test));
    assert!(
        String::from_utf8_lossy(&test.stdout)
            .contains("FAIL  tcp    cannot connect to 127.0.0.1:9"),
        "{}{}",
        String::from_utf8_lossy(&test.stdout),
        stderr(&test)
    );

    let before = std::fs::read_to_string(&config)?;
    let add = agent_cli(
        &bins,
        &config,
        &[
            "connection",
            "add",
            "bt",
            "--base-uri",
            "http://h",
            "--algorithm",
            "RS256",
            "--payload",
            "sub=x",
        ],
    )?;
    assert_eq!(add.status.code(), Some(64), "a usage error");
    assert!(
        stderr(&add).contains("--algorithm, --payload need --auth jwt_bearer"),
        "{}",
        stderr(&add)
    );
    assert_eq!(std::fs::read_to_string(&config)?, before);

    let show = agent_cli(&bins, &config, &["connection", "show", "billing"])?;
    let shown = String::from_utf8_lossy(&show.stdout);
    assert!(shown.starts_with("[connections.billing]\n"), "{shown}");
    assert!(shown.contains("[connections.billing.auth]\n"), "{shown}");

    let init = offline_init(&bins, &dir.path().join("new.toml"), "127.0.0.1:2222", "")?;
    assert_eq!(init.status.code(), Some(1));
    assert!(
        stderr(&init).contains("no access token given"),
        "{}",
        stderr(&init)
    );
    Ok(())
}
