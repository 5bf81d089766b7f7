//! HTTPS on the API with rustls: certificates made by `openssl req -x509` at
//! test time, checked by `curl --cacert`, swapped on SIGHUP with agents still
//! connected; and plain HTTP refused off loopback.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use postern_tests::harness::{AgentProcess, Bins, agent_config, create_api_key, signal};
use postern_tests::internal_server::{InternalServer, Verifier};
use postern_tests::relay_support::{ONLINE_WITHIN, eventually, relay_command, tls_relay};
use postern_tests::temp::TempDir;

fn bins() -> Bins {
    postern_tests::bins!()
}

/// `curl --cacert CA URL` with the bearer key; returns (success, stdout).
fn curl(ca: &Path, url: &str, key: &str) -> Result<(bool, String)> {
    let out = Command::new("curl")
        .args([
            "--silent",
            "--show-error",
            "--fail",
            "--max-time",
            "10",
            "--cacert",
        ])
        .arg(ca)
        .args(["-H", &format!("Authorization: Bearer {key}"), url])
        .output()
        .context("running curl")?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    ))
}

#[tokio::test(flavor = "multi_thread")]
async fn https_with_a_reloadable_certificate_and_agents_untouched() -> Result<()> {
    let dir = TempDir::new("relay-tls")?;
    let bins = bins();
    postern_tests::pki::self_signed(dir.path(), "first")?;
    postern_tests::pki::self_signed(dir.path(), "second")?;
    let cert = dir.path().join("live.crt");
    let key = dir.path().join("live.key");
    std::fs::copy(dir.path().join("first.crt"), &cert)?;
    std::fs::copy(dir.path().join("first.key"), &key)?;
    let relay = tls_relay(&bins, dir.path(), &cert, &key)?;
    let admin_key = create_api_key(&bins, &dir.path().join("relay"), "admin")?;
    let https = format!("https://{}", relay.api);
    let first_ca = dir.path().join("first.crt");
    let second_ca = dir.path().join("second.crt");

    let (ok, body) = curl(&first_ca, &format!("{https}/healthz"), &admin_key)?;
    assert!(ok && body.trim() == "ok", "{body}");
    let (ok, _) = curl(&second_ca, &format!("{https}/healthz"), &admin_key)?;
    assert!(!ok, "curl must not trust a certificate it was not given");
    // Plain HTTP on the TLS port gets no answer.
    let plain = reqwest::Client::new()
        .get(format!("{}/healthz", relay.api_base()))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(plain.is_err() || plain.is_ok_and(|r| r.status() != 200));

    // An agent connects and is listed over HTTPS.
    let internal = InternalServer::start(Verifier::None, "orders").await?;
    let (ok, created) = {
        let out = Command::new("curl")
            .args(["--silent", "--fail", "--cacert"])
            .arg(&first_ca)
            .args([
                "-H",
                &format!("Authorization: Bearer {admin_key}"),
                "-H",
                "content-type: application/json",
                "-d",
                r#"{"name":"warehouse-1"}"#,
                &format!("{https}/v1/agents"),
            ])
            .output()?;
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    assert!(ok, "{created}");
    let token = serde_json::from_str::<serde_json::Value>(&created)?["token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let connections = format!(
        "\n[connections.orders]\nbase_uri = \"{}\"\n",
        internal.base_uri()
    );
    let config = dir.write_private(
        "agent.toml",
        &agent_config(relay.ssh, &relay.fingerprint, &token, &connections),
    )?;
    let _agent = AgentProcess::start(&bins, &config)?;
    let agent_url = format!("{https}/v1/agents/warehouse-1");
    let online = |ca: &Path| -> Result<Option<String>> {
        let (ok, body) = curl(ca, &agent_url, &admin_key)?;
        if !ok {
            return Ok(None);
        }
        let v: serde_json::Value = serde_json::from_str(&body)?;
        Ok((v["online"] == true).then(|| v["connected_since"].to_string()))
    };
    let first_ca2 = first_ca.clone();
    let mut since = None;
    for _ in 0..300 {
        since = online(&first_ca2)?;
        if since.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let since = since.context("agent online over https")?;

    // New certificate and key in place, then SIGHUP.
    std::fs::copy(dir.path().join("second.crt"), &cert)?;
    std::fs::copy(dir.path().join("second.key"), &key)?;
    signal(relay.pid(), "HUP")?;
    let url = format!("{https}/healthz");
    let (ca, key_for) = (second_ca.clone(), admin_key.clone());
    eventually("the new certificate is served", ONLINE_WITHIN, || {
        let (ca, url, k) = (ca.clone(), url.clone(), key_for.clone());
        async move { curl(&ca, &url, &k).is_ok_and(|(ok, _)| ok) }
    })
    .await?;
    let (ok, _) = curl(&first_ca, &url, &admin_key)?;
    assert!(!ok, "the old certificate is no longer served");
    assert!(relay.logs.text().contains("tls certificate reloaded"));
    // The agent's session was not touched.
    assert_eq!(online(&second_ca)?.as_deref(), Some(since.as_str()));
    let (ok, answer) = curl(
        &second_ca,
        &format!("{https}/v1/agents/warehouse-1/connections/orders/http/after-reload"),
        &admin_key,
    )?;
    assert!(ok, "{answer}");

    // A broken key file on reload keeps the working certificate.
    std::fs::write(&key, "not a key")?;
    signal(relay.pid(), "HUP")?;
    eventually("the failed reload is logged", ONLINE_WITHIN, || {
        let logs = relay.logs.clone();
        async move { logs.so_far().contains("tls reload failed") }
    })
    .await?;
    let (ok, _) = curl(&second_ca, &url, &admin_key)?;
    assert!(ok, "still serving after a failed reload");
    Ok(())
}

#[test]
fn plain_http_off_loopback_is_refused_before_binding() -> Result<()> {
    let dir = TempDir::new("relay-plain")?;
    let config = dir.path().join("relay.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = {:?}\nssh_listen = \"127.0.0.1:0\"\napi_listen = \"0.0.0.0:0\"\n",
            dir.path().join("relay").to_string_lossy()
        ),
    )?;
    let out = postern_tests::harness::output_within(
        &mut relay_command(&bins(), &config),
        Duration::from_secs(15),
    )?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("allow_plain_http"), "{stderr}");
    assert!(!stderr.contains("relay listening"));
    Ok(())
}

/// `/metrics` over HTTPS without checking the certificate (it may be the expired one).
fn tls_expiry_metric(https: &str, key: &str) -> Result<Option<i64>> {
    let out = Command::new("curl")
        .args(["--silent", "--fail", "--insecure", "--max-time", "10"])
        .args(["-H", &format!("Authorization: Bearer {key}")])
        .arg(format!("{https}/metrics"))
        .output()
        .context("running curl")?;
    anyhow::ensure!(out.status.success(), "/metrics over https failed");
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix("postern_tls_certificate_expiry_seconds "))
        .map(str::parse)
        .transpose()?)
}

/// A relay started on an expired certificate serves it (its SSH side must not go down
/// with the API) and says so; SIGHUP takes a good one, then refuses an expired one and
/// keeps the good; `/metrics` follows the certificate served, its end as Python reads it.
#[tokio::test(flavor = "multi_thread")]
async fn an_expired_certificate_is_said_at_start_and_refused_on_reload() -> Result<()> {
    let dir = TempDir::new("relay-tls-dates")?;
    let bins = bins();
    let pki = postern_tests::pki::dated_self_signed;
    pki(dir.path(), "expired", -10, -1)?;
    pki(dir.path(), "good", -1, 30)?;
    let cert = dir.path().join("live.crt");
    let key = dir.path().join("live.key");
    let put = |name: &str| -> Result<()> {
        std::fs::copy(dir.path().join(format!("{name}.crt")), &cert)?;
        std::fs::copy(dir.path().join(format!("{name}.key")), &key)?;
        Ok(())
    };
    put("expired")?;
    let relay = tls_relay(&bins, dir.path(), &cert, &key)?;
    let admin_key = create_api_key(&bins, &dir.path().join("relay"), "admin")?;
    let https = format!("https://{}", relay.api);
    let not_after = postern_tests::pki::not_after_unix;
    assert!(
        relay
            .logs
            .text()
            .contains("callers that check certificates refuse it"),
        "{}",
        relay.logs.text()
    );
    let (ok, _) = curl(
        &dir.path().join("expired.crt"),
        &format!("{https}/healthz"),
        &admin_key,
    )?;
    assert!(!ok, "curl took an expired certificate");
    assert_eq!(
        tls_expiry_metric(&https, &admin_key)?,
        Some(not_after(&dir.path().join("expired.crt"))?)
    );

    put("good")?;
    signal(relay.pid(), "HUP")?;
    let good_ca = dir.path().join("good.crt");
    let url = format!("{https}/healthz");
    eventually("the good certificate is served", ONLINE_WITHIN, || {
        let (ca, url, k) = (good_ca.clone(), url.clone(), admin_key.clone());
        async move { curl(&ca, &url, &k).is_ok_and(|(ok, _)| ok) }
    })
    .await?;
    let good_end = not_after(&good_ca)?;
    assert_eq!(tls_expiry_metric(&https, &admin_key)?, Some(good_end));

    put("expired")?;
    signal(relay.pid(), "HUP")?;
    eventually("the refused reload is logged", ONLINE_WITHIN, || {
        let logs = relay.logs.clone();
        async move { logs.so_far().contains("cannot be served: it expired at") }
    })
    .await?;
    assert!(relay.logs.text().contains("tls reload failed"));
    let (ok, _) = curl(&good_ca, &url, &admin_key)?;
    assert!(ok, "the good certificate is no longer served");
    assert_eq!(tls_expiry_metric(&https, &admin_key)?, Some(good_end));
    Ok(())
}
