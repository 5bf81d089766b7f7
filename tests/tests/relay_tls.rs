//! HTTPS on the API with rustls: certificates made by `openssl req -x509` at
//! test time, checked by `curl --cacert`, swapped on SIGHUP with agents still
//! connected; and plain HTTP refused off loopback.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use postern_tests::harness::{AgentProcess, Bins, agent_config, create_api_key, signal};
use postern_tests::internal_server::{InternalServer, Verifier};
use postern_tests::relay_support::{ONLINE_WITHIN, configured_relay, eventually, relay_command};
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
    let relay = configured_relay(
        &bins,
        dir.path(),
        &format!(
            "tls_cert = {:?}\ntls_key = {:?}\n",
            cert.to_string_lossy(),
            key.to_string_lossy()
        ),
        &[],
    )?;
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
