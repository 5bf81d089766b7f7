//! The relay's SIGHUP (`systemctl reload postern-relay`) rereads only the TLS files, and
//! every line it logs says so: edits to relay.toml take a restart. `postern-relay check`,
//! which the unit runs after the SIGHUP, fails on what SIGHUP or `serve` would refuse.

use std::time::Duration;

use anyhow::{Context, Result};
use postern_tests::harness::{Bins, Logs, RelayProcess, signal};
use postern_tests::relay_support::tls_relay;
use postern_tests::temp::TempDir;

fn bins() -> Bins {
    postern_tests::bins!()
}

/// Sends SIGHUP and returns the first line after it that holds `needle`.
fn hangup(relay: &RelayProcess, needle: &str) -> Result<String> {
    let before = relay.logs.lines().len();
    signal(relay.pid(), "HUP")?;
    relay.logs.wait_for(needle, Duration::from_secs(10))?;
    line_after(&relay.logs, before, needle)
}

fn line_after(logs: &Logs, skip: usize, needle: &str) -> Result<String> {
    logs.lines()
        .into_iter()
        .skip(skip)
        .find(|l| l.contains(needle))
        .with_context(|| format!("no {needle:?} after SIGHUP:\n{}", logs.so_far()))
}

/// What an admin who edited relay.toml and ran `systemctl reload` must read.
fn says_what_a_reload_leaves(line: &str) {
    assert!(
        line.contains("other relay.toml settings take a restart"),
        "{line}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn without_tls_sighup_says_it_rereads_only_tls_files() -> Result<()> {
    let dir = TempDir::new("relay-hup")?;
    let relay = RelayProcess::start(
        &bins(),
        &dir.path().join("relay"),
        "127.0.0.1:0",
        "127.0.0.1:0",
    )?;
    let line = hangup(&relay, "SIGHUP: no TLS files configured")?;
    assert!(line.contains("rereads only tls_cert and tls_key"), "{line}");
    says_what_a_reload_leaves(&line);
    let health = reqwest::get(format!("{}/healthz", relay.api_base())).await?;
    assert_eq!(health.status(), 200, "SIGHUP never stops the relay");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn with_tls_each_sighup_outcome_says_settings_take_a_restart() -> Result<()> {
    let dir = TempDir::new("relay-hup-tls")?;
    postern_tests::pki::make_pki(dir.path())?;
    let (cert, key) = (dir.path().join("server.pem"), dir.path().join("server.key"));
    let relay = tls_relay(&bins(), dir.path(), &cert, &key)?;
    let line = hangup(&relay, "tls certificate reloaded")?;
    says_what_a_reload_leaves(&line);

    std::fs::write(&key, "not a key")?;
    let line = hangup(&relay, "tls reload failed")?;
    says_what_a_reload_leaves(&line);
    Ok(())
}

/// `postern-relay check --config`: its exit status and the line that says why.
fn check(config: &std::path::Path) -> Result<(i32, String)> {
    check_with(config, &[], &[])
}

/// [`check`] with more arguments and environment variables.
fn check_with(
    config: &std::path::Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> Result<(i32, String)> {
    let out = std::process::Command::new(&bins().relay)
        .args(["check", "--config"])
        .arg(config)
        .args(args)
        .envs(env.iter().copied())
        .output()?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.code().context("killed by a signal")?, said))
}

#[test]
fn check_fails_on_the_tls_files_a_sighup_would_not_load() -> Result<()> {
    let dir = TempDir::new("relay-check")?;
    postern_tests::pki::make_pki(dir.path())?;
    let config = dir.path().join("relay.toml");
    let with_tls = |cert: &str, key: &str| -> Result<()> {
        let (cert, key) = (dir.path().join(cert), dir.path().join(key));
        std::fs::write(
            &config,
            format!(
                "api_listen = \"0.0.0.0:8443\"\ntls_cert = {:?}\ntls_key = {:?}\n",
                cert.to_string_lossy(),
                key.to_string_lossy()
            ),
        )?;
        Ok(())
    };

    with_tls("server.pem", "server.key")?;
    let (code, said) = check(&config)?;
    assert_eq!(code, 0, "{said}");
    assert!(said.contains("fine; the TLS certificate"), "{said}");

    // Another certificate's key: rustls would not serve with it.
    with_tls("server.pem", "client.key")?;
    let (code, said) = check(&config)?;
    assert_eq!(code, 1, "{said}");
    assert!(said.contains("is not the key of the certificate"), "{said}");

    with_tls("server.pem", "server.key")?;
    std::fs::write(dir.path().join("server.key"), "not a key")?;
    let (code, said) = check(&config)?;
    assert_eq!(code, 1, "{said}");
    assert!(said.contains("cannot read the TLS key"), "{said}");

    // Dates: an expired certificate, or one not valid yet, is what a SIGHUP refuses.
    let pki = postern_tests::pki::dated_self_signed;
    pki(dir.path(), "expired", -10, -1)?;
    pki(dir.path(), "future", 1, 10)?;
    pki(dir.path(), "soon", -1, 3)?;
    with_tls("expired.crt", "expired.key")?;
    let (code, said) = check(&config)?;
    assert_eq!(code, 1, "{said}");
    assert!(said.contains("cannot be served: it expired at"), "{said}");
    with_tls("future.crt", "future.key")?;
    let (code, said) = check(&config)?;
    assert_eq!(code, 1, "{said}");
    assert!(
        said.contains("cannot be served: it is not valid until"),
        "{said}"
    );
    with_tls("soon.crt", "soon.key")?;
    let (code, said) = check(&config)?;
    assert_eq!(code, 0, "{said}");
    assert!(said.contains("go together, valid until"), "{said}");
    assert!(
        said.contains("the TLS certificate expires within 14 days"),
        "{said}"
    );

    // A key rustls cannot use is the key's problem, not a mismatch.
    postern_tests::pki::openssl(
        dir.path(),
        &[
            "req", "-x509", "-newkey", "rsa:1024", "-nodes", "-keyout", "weak.key", "-out",
            "weak.crt", "-days", "1", "-subj", "/CN=weak",
        ],
    )?;
    with_tls("weak.crt", "weak.key")?;
    let (code, said) = check(&config)?;
    assert_eq!(code, 1, "{said}");
    assert!(
        said.contains("cannot read the TLS key") && said.contains("RSA keys of 2048 to 8192 bits"),
        "{said}"
    );

    with_tls("missing.pem", "client.key")?;
    let (code, said) = check(&config)?;
    assert_eq!(code, 1, "{said}");
    assert!(said.contains("cannot read the TLS certificate"), "{said}");

    // What `serve` refuses before it binds: plain HTTP on a public address.
    std::fs::write(&config, "api_listen = \"0.0.0.0:8080\"\n")?;
    let (code, said) = check(&config)?;
    assert_eq!(code, 1, "{said}");
    assert!(said.contains("0.0.0.0:8080"), "{said}");

    std::fs::write(&config, "api_listen = \"127.0.0.1:8080\"\n")?;
    let (code, said) = check(&config)?;
    assert_eq!(code, 0, "{said}");
    assert!(said.contains("fine; no TLS files"), "{said}");
    // The listen addresses `serve` would take over the file's, from its options or from
    // the environment (as the container image sets them), are checked too.
    for (args, env) in [
        (&["--api-listen", "0.0.0.0:8443"][..], &[][..]),
        (&[][..], &[("POSTERN_RELAY_API_LISTEN", "0.0.0.0:8443")][..]),
    ] {
        let (code, said) = check_with(&config, args, env)?;
        assert_eq!(code, 1, "{args:?} {env:?}: {said}");
        assert!(said.contains("0.0.0.0:8443"), "{said}");
    }
    Ok(())
}
