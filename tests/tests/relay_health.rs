//! `postern-relay health` against real relays (plain HTTP and TLS, its certificate file
//! changed under it), a port nobody listens on, one that never answers, and another server.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use postern_tests::harness::{
    Bins, RelayProcess, free_port, output_text, relay_cli_within, signal, stderr, stdout,
};
use postern_tests::internal_server::{InternalServer, Verifier};
use postern_tests::relay_support::tls_relay;
use postern_tests::temp::TempDir;

fn bins() -> Bins {
    postern_tests::bins!()
}

fn health(bins: &Bins, args: &[&str]) -> Result<std::process::Output> {
    let mut all = vec!["health"];
    all.extend_from_slice(args);
    relay_cli_within(bins, &all, Duration::from_secs(20))
}

#[test]
fn a_serving_relay_is_ok_and_a_stopped_one_is_not() -> Result<()> {
    let dir = TempDir::new("relay-health")?;
    let bins = bins();
    let mut relay = RelayProcess::start(
        &bins,
        &dir.path().join("relay"),
        "127.0.0.1:0",
        "127.0.0.1:0",
    )?;
    let api = relay.api.to_string();

    let out = health(&bins, &["--api-listen", &api])?;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), format!("http://{api}/healthz: ok\n"));

    // A config with TLS files, the relay serving plain HTTP: not another config's relay.
    postern_tests::pki::self_signed(dir.path(), "tls")?;
    let config = dir.path().join("tls.toml");
    std::fs::write(
        &config,
        format!("api_listen = \"{api}\"\ntls_cert = \"tls.crt\"\ntls_key = \"tls.key\"\n"),
    )?;
    let out = health(&bins, &["--config", &config.to_string_lossy()])?;
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        stderr(&out).contains(&format!("no TLS with {api}: ")),
        "{}",
        stderr(&out)
    );

    relay.terminate()?;
    let out = health(&bins, &["--api-listen", &api])?;
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        stderr(&out).contains(&format!(
            "nothing listens on {api}: the relay is not running"
        )),
        "{}",
        stderr(&out)
    );
    Ok(())
}

#[test]
fn a_port_that_never_answers_fails_within_the_timeout() -> Result<()> {
    let bins = bins();
    // The kernel completes the handshake from the backlog; nothing ever reads or answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = silent.local_addr()?.to_string();
    let started = Instant::now();
    let out = health(&bins, &["--api-listen", &addr, "--timeout", "1s"])?;
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        stderr(&out).contains(&format!("http://{addr}/healthz did not answer within 1s")),
        "{}",
        stderr(&out)
    );
    assert!(took < Duration::from_secs(5), "took {took:?}");

    let port = free_port()?;
    let out = health(&bins, &["--api-listen", &format!("127.0.0.1:{port}")])?;
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("nothing listens on"),
        "{}",
        stderr(&out)
    );
    Ok(())
}

/// Another HTTP server on the port answers, but not the relay's `ok`.
#[tokio::test(flavor = "multi_thread")]
async fn another_server_on_the_port_is_not_the_relay() -> Result<()> {
    let bins = bins();
    let other = InternalServer::start(Verifier::None, "orders").await?;
    let addr = other.addr.to_string();
    let out =
        tokio::task::spawn_blocking(move || health(&bins, &["--api-listen", &addr])).await??;
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        stderr(&out).contains(&format!(
            "http://{}/healthz answered 200 OK: \"",
            other.addr
        )),
        "{}",
        stderr(&out)
    );
    Ok(())
}

#[test]
fn https_says_when_the_certificate_served_is_not_the_files_until_a_reload() -> Result<()> {
    let dir = TempDir::new("relay-health-tls")?;
    let bins = bins();
    postern_tests::pki::self_signed(dir.path(), "first")?;
    postern_tests::pki::self_signed(dir.path(), "second")?;
    let cert = dir.path().join("live.crt");
    let key = dir.path().join("live.key");
    std::fs::copy(dir.path().join("first.crt"), &cert)?;
    std::fs::copy(dir.path().join("first.key"), &key)?;
    let relay = tls_relay(&bins, dir.path(), &cert, &key)?;
    let config = dir.path().join("relay.toml");
    let config = config.to_string_lossy();
    let api = relay.api.to_string();
    let args = ["--config", &config, "--api-listen", &api];

    let out = health(&bins, &args)?;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), format!("https://{api}/healthz: ok\n"));

    // Plain HTTP to the TLS port (no config, so health does not know of the TLS files).
    let out = health(&bins, &["--api-listen", &api])?;
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("give health the config that names its TLS files"),
        "{}",
        stderr(&out)
    );

    // A renewed certificate on disk, not reloaded yet: still alive, and said so.
    std::fs::copy(dir.path().join("second.crt"), &cert)?;
    std::fs::copy(dir.path().join("second.key"), &key)?;
    let out = health(&bins, &args)?;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(&format!(
            "https://{api}/healthz: ok; but it serves a certificate other than the one now in {}: reload it",
            cert.display()
        )),
        "{}",
        stdout(&out)
    );

    // An unreadable file: said, not skipped.
    std::fs::write(&cert, "not a certificate")?;
    let out = health(&bins, &args)?;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("is not known: cannot read it: no CERTIFICATE block"),
        "{}",
        stdout(&out)
    );

    std::fs::copy(dir.path().join("second.crt"), &cert)?;
    signal(relay.pid(), "HUP")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = health(&bins, &args)?;
        if stdout(&out) == format!("https://{api}/healthz: ok\n") {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "still after the SIGHUP: {}",
            output_text(&out)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The image's HEALTHCHECK runs this command on the config its CMD serves, and docker
/// waits for it longer than it waits for the relay.
#[test]
fn the_container_checks_its_health_with_the_config_it_serves() -> Result<()> {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let file = std::fs::read_to_string(repo.join("packaging/relay.Containerfile"))?;
    let joined = file.replace("\\\n", " ");
    let line = |prefix: &str| {
        joined
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .with_context(|| format!("no {prefix}line"))
    };
    let argv = |json: &str| -> Result<Vec<String>> { Ok(serde_json::from_str(json.trim())?) };
    let check = line("HEALTHCHECK ")?;
    let (options, command) = check.split_once(" CMD ").context("HEALTHCHECK … CMD")?;
    let command = argv(command)?;
    let entrypoint = argv(line("ENTRYPOINT ")?)?;
    let cmd = argv(line("CMD ")?)?;
    let config_of = |args: &[String]| {
        args.iter()
            .position(|a| a == "--config")
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    assert_eq!(command.first(), entrypoint.first(), "{command:?}");
    assert_eq!(command.get(1).map(String::as_str), Some("health"));
    assert_eq!(
        config_of(&command),
        config_of(&cmd),
        "{command:?} / {cmd:?}"
    );
    assert!(config_of(&cmd).is_some(), "{cmd:?}");

    let docker_timeout = options
        .split_whitespace()
        .find_map(|o| o.strip_prefix("--timeout="))
        .context("HEALTHCHECK --timeout=")?;
    let docker_timeout = humantime::parse_duration(docker_timeout)?;
    let help = stdout(&relay_cli_within(
        &bins(),
        &["health", "--help"],
        Duration::from_secs(20),
    )?);
    let own = help
        .split_once("--timeout <TIMEOUT>")
        .and_then(|(_, rest)| rest.split("[default: ").nth(1))
        .and_then(|rest| rest.split(']').next())
        .context("health --help shows its default timeout")?;
    let own = humantime::parse_duration(own)?;
    assert!(docker_timeout > own, "{docker_timeout:?} against {own:?}");
    Ok(())
}

/// A relay listening on every address (IPv4 and IPv6), as in the container, is asked
/// through its loopback. Every address is only bound inside a network namespace of the
/// test's own.
#[test]
fn a_relay_on_every_address_is_asked_through_loopback() -> Result<()> {
    if let Some(why) = postern_tests::netns::unavailable() {
        eprintln!("SKIPPED every address: {why}");
        return Ok(());
    }
    let topo =
        postern_tests::netns::Topology::create(&format!("w{}", std::process::id() % 10_000))?;
    let dir = TempDir::new("relay-health-any")?;
    let bins = bins();
    for (listen, asked) in [
        ("0.0.0.0:18443", "127.0.0.1:18443"),
        ("[::]:18444", "[::1]:18444"),
    ] {
        let config = dir.path().join("relay.toml");
        std::fs::write(
            &config,
            format!(
                "state_dir = \"relay\"\nssh_listen = \"127.0.0.1:0\"\napi_listen = \"{listen}\"\nallow_plain_http = true\n"
            ),
        )?;
        let config = config.to_string_lossy().into_owned();
        let mut serve = postern_tests::harness::command_in(Some(&topo.cloud), &bins.relay);
        serve.args(["serve", "--config", &config]);
        let relay = RelayProcess::spawn(serve, &dir.path().join("relay"))?;
        let mut health = postern_tests::harness::command_in(Some(&topo.cloud), &bins.relay);
        health.args(["health", "--config", &config]);
        let out = postern_tests::harness::output_within(&mut health, Duration::from_secs(20))?;
        assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
        assert_eq!(stdout(&out), format!("http://{asked}/healthz: ok\n"));
        drop(relay);
    }
    Ok(())
}
