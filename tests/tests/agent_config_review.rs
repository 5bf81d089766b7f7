//! Agent config behaviour a README-driven review found wrong: a reload under a relative
//! `--config`, relay addresses with a scheme, a pasted-back `***` mask, load errors that
//! said their cause twice, `config check` listing every payload problem, `reuse_for` not
//! shorter than `lifetime`, and a raw-byte HMAC `secret_file`.

use std::io::Read;
use std::path::Path;
use std::process::{Output, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use postern_tests::harness::{
    AgentProcess, Bins, agent_command, offline_agent_config, offline_init, output_text, signal,
    stderr, unknown_token, wait_status_answers,
};
use postern_tests::pki::KillOnDrop;
use postern_tests::temp::TempDir;

fn bins() -> Bins {
    postern_tests::bins!()
}

/// How long a command these tests expect to end (a refused `run` included) may take.
const RUN_LIMIT: Duration = Duration::from_secs(10);

/// `postern ARGS --config CONFIG`: its exit code and stdout+stderr. One still running after
/// [`RUN_LIMIT`] is killed and is an error: a `run` a refusal no longer stops would serve
/// on, and hang the test.
fn run(config: &Path, args: &[&str]) -> Result<(Option<i32>, String)> {
    let mut child = KillOnDrop(
        agent_command(&bins(), config, args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("running postern {args:?}"))?,
    );
    let (out, err) = (drain(child.0.stdout.take()), drain(child.0.stderr.take()));
    let deadline = Instant::now() + RUN_LIMIT;
    let status = loop {
        if let Some(status) = child.0.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            drop(child);
            let said = [out, err]
                .map(|pipe| pipe.join().unwrap_or_default())
                .concat();
            let said = String::from_utf8_lossy(&said);
            bail!("postern {args:?} still running after {RUN_LIMIT:?}; it said:\n{said}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    };
    Ok((output.status.code(), output_text(&output)))
}

/// Reads `pipe` to its end on a thread, so a chatty child never blocks on a full pipe.
fn drain(pipe: Option<impl Read + Send + 'static>) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut bytes);
        }
        bytes
    })
}

/// `cd DIR; postern run --config a2/agent.toml` with `status_socket = "a2.sock"`: the
/// socket is the same file on a reload (`postern reload` with the same relative path, and
/// SIGHUP), so neither is refused as a changed `status_socket`.
#[test]
fn a_relative_config_and_socket_reload() -> Result<()> {
    let bins = bins();
    let dir = TempDir::new("cfgreview-relsock")?;
    std::fs::create_dir(dir.path().join("a2"))?;
    let text = |connection: &str| {
        offline_agent_config(
            "127.0.0.1:1",
            &format!(
                "status_socket = \"a2.sock\"\n[connections.{connection}]\nbase_uri = \"http://127.0.0.1:9\"\n"
            ),
        )
    };
    let absolute = dir.write_private("a2/agent.toml", &text("a"))?;
    let relative = Path::new("a2/agent.toml");
    let mut command = agent_command(&bins, relative, &["run"]);
    command.current_dir(dir.path());
    let agent = AgentProcess::spawn(command)?;
    wait_status_answers(&bins, &absolute, &agent)?;

    dir.write_private("a2/agent.toml", &text("b"))?;
    let out = agent_command(&bins, relative, &["reload"])
        .current_dir(dir.path())
        .output()?;
    let said = output_text(&out);
    assert_eq!(out.status.code(), Some(0), "{said}");
    assert!(said.contains("connections added: b"), "{said}");

    dir.write_private("a2/agent.toml", &text("c"))?;
    signal(agent.pid(), "HUP")?;
    agent
        .logs
        .wait_for("connections added: c", Duration::from_secs(10))?;
    assert!(
        !agent.logs.contains("status_socket cannot change"),
        "{}",
        agent.logs.text()
    );
    Ok(())
}

/// A relay given as a URL (or with a path, a user name) is refused by `init` before it
/// writes anything, and by `config check`, saying which form is expected: `run` would
/// otherwise retry a lookup of it forever.
#[test]
fn a_relay_with_a_scheme_is_refused_by_init_and_config_check() -> Result<()> {
    let dir = TempDir::new("cfgreview-relay")?;
    let config = dir.path().join("agent.toml");
    let expected = "write HOST:PORT, such as \"relay.example.com:2222\"";
    let out = offline_init(&bins(), &config, "http://127.0.0.1:22222", &unknown_token())?;
    let said = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains("has a URL scheme") && said.contains("did you mean \"127.0.0.1:22222\"?"),
        "{said}"
    );
    assert!(said.contains(expected), "{said}");
    assert!(!config.exists(), "nothing written");

    for relay in [
        "http://127.0.0.1:22222",
        "relay.example.com:2222/ssh",
        "admin@relay.example.com:2222",
        "relay.example.com :2222",
        ":2222",
    ] {
        let config = dir.write_private("check.toml", &offline_agent_config(relay, ""))?;
        let (code, said) = run(&config, &["config", "check"])?;
        assert_eq!(code, Some(1), "{relay}: {said}");
        assert!(said.contains(expected), "{relay}: {said}");
    }
    let config = dir.write_private("v6.toml", &offline_agent_config("[::1]:2222", ""))?;
    let (code, said) = run(&config, &["config", "check"])?;
    assert_eq!(code, Some(0), "{said}");
    let out = offline_init(
        &bins(),
        &dir.path().join("init-v6.toml"),
        "[::1]:2222",
        &unknown_token(),
    )?;
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    Ok(())
}

/// A table from `connection show` pasted back as it is: its `***` masks are refused by
/// `config check` and `run`, naming the mask, not taken as the secrets.
#[test]
fn a_pasted_back_mask_is_refused() -> Result<()> {
    let dir = TempDir::new("cfgreview-mask")?;
    let config = dir.write_private(
        "agent.toml",
        &offline_agent_config(
            "127.0.0.1:1",
            "status_socket = \"agent.sock\"\n[connections.hr]\nbase_uri = \"http://127.0.0.1:9\"\n\
             [connections.hr.auth]\ntype = \"jwt_bearer\"\nalgorithm = \"HS256\"\nsecret = \"***\"\n",
        ),
    )?;
    let mask = "connections.hr: auth.secret is \"***\", the mask `postern connection show` prints \
                in place of a secret, not a secret";
    for args in [&["config", "check"][..], &["run"]] {
        let (code, said) = run(&config, args)?;
        assert_eq!(code, Some(1), "{args:?}: {said}");
        assert!(said.contains(mask), "{args:?}: {said}");
    }
    Ok(())
}

/// A missing config, or a metrics port taken, names its cause once, not
/// "No such file or directory (os error 2): No such file or directory (os error 2)".
#[test]
fn a_load_error_says_its_cause_once() -> Result<()> {
    let dir = TempDir::new("cfgreview-once")?;
    let missing = dir.path().join("nope.toml");
    for args in [
        &["run"][..],
        &["config", "check"],
        &["connection", "list"],
        &["jwt", "sign", "--connection", "a"],
    ] {
        let (code, said) = run(&missing, args)?;
        assert_eq!(code, Some(1), "{args:?}: {said}");
        assert_eq!(
            said.matches("does not exist: pass the agent's config with --config FILE")
                .count(),
            1,
            "{args:?}: {said}"
        );
    }

    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let config = dir.write_private(
        "agent.toml",
        &offline_agent_config(
            "127.0.0.1:1",
            &format!(
                "status_socket = \"agent.sock\"\nmetrics_listen = \"{}\"\n",
                taken.local_addr()?
            ),
        ),
    )?;
    let (code, said) = run(&config, &["run"])?;
    assert_eq!(code, Some(1), "{said}");
    let error = said
        .lines()
        .find(|line| line.starts_with("error: "))
        .unwrap_or_default();
    assert_eq!(error.matches("in use").count(), 1, "{said}");
    Ok(())
}

/// `config check` lists every payload and exchange problem of a connection: an unknown
/// template does not hide a time claim that is not a number, nor a bad `token_url` the
/// `params` postern sets itself.
#[test]
fn config_check_lists_every_payload_and_exchange_problem() -> Result<()> {
    let dir = TempDir::new("cfgreview-all")?;
    let config = dir.write_private(
        "agent.toml",
        &offline_agent_config(
            "127.0.0.1:1",
            "[connections.erp]\nbase_uri = \"http://127.0.0.1:9\"\n\
             [connections.erp.auth]\ntype = \"jwt_bearer\"\nalgorithm = \"HS256\"\n\
             secret = \"a-secret-of-thirty-two-bytes-ok!\"\n\
             payload = { sub = \"{{nw}}\", exp = \"x-{{now}}\" }\n\
             [connections.erp.auth.exchange]\ntoken_url = \"ftp://idp\"\n\
             params = { assertion = \"a\", grant_type = \"g\" }\n",
        ),
    )?;
    let (code, said) = run(&config, &["config", "check"])?;
    assert_eq!(code, Some(1), "{said}");
    for problem in [
        "5 problems:",
        "payload.sub: unknown template \"{{nw}}\"",
        "payload.exp must be a number of seconds since 1970",
        "auth.exchange.token_url \"ftp://idp\" must be an http:// or https:// URL",
        "auth.exchange.params.assertion is set by postern",
        "auth.exchange.params.grant_type is set by postern",
    ] {
        assert!(said.contains(problem), "{problem}: {said}");
    }
    Ok(())
}

/// `reuse_for` counts back from `exp`: one not shorter than the lifetime would never let a
/// JWT be reused, and is refused rather than silently signing every call.
#[test]
fn reuse_for_not_shorter_than_the_lifetime_is_refused() -> Result<()> {
    let dir = TempDir::new("cfgreview-reuse")?;
    let config = dir.write_private(
        "agent.toml",
        &offline_agent_config(
            "127.0.0.1:1",
            "[connections.orders]\nbase_uri = \"http://127.0.0.1:9\"\n\
             [connections.orders.auth]\ntype = \"jwt_bearer\"\nalgorithm = \"HS256\"\n\
             secret = \"a-secret-of-thirty-two-bytes-ok!\"\nlifetime = \"1m\"\nreuse_for = \"5m\"\n",
        ),
    )?;
    let (code, said) = run(&config, &["config", "check"])?;
    assert_eq!(code, Some(1), "{said}");
    assert!(
        said.contains(
            "connections.orders: auth.reuse_for \"5m\" must be shorter than the JWT's lifetime \
             (auth.lifetime \"1m\")"
        ),
        "{said}"
    );
    Ok(())
}

/// An HS256 `secret_file` of raw random bytes is refused with what to do, not with
/// "stream did not contain valid UTF-8".
#[test]
fn a_raw_byte_secret_file_points_to_secret_encoding() -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("cfgreview-raw")?;
    let secret = dir.path().join("hmac.bin");
    std::fs::write(&secret, [0x9f, 0x00, 0xff, 0x10, 0xc3, 0x28])?;
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600))?;
    let config = dir.write_private(
        "agent.toml",
        &offline_agent_config(
            "127.0.0.1:1",
            "[connections.billing]\nbase_uri = \"http://127.0.0.1:9\"\n\
             [connections.billing.auth]\ntype = \"jwt_bearer\"\nalgorithm = \"HS256\"\n\
             secret_file = \"hmac.bin\"\n",
        ),
    )?;
    let (code, said) = run(&config, &["config", "check"])?;
    assert_eq!(code, Some(1), "{said}");
    assert!(
        said.contains(&format!(
            "auth.secret_file {} is not UTF-8 text",
            secret.display()
        )) && said.contains("set secret_encoding = \"base64\""),
        "{said}"
    );
    assert!(!said.contains("stream did not contain"), "{said}");
    Ok(())
}
