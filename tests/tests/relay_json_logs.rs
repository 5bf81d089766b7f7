//! `--log-format json` lines have one `message` each, the event's: a field named
//! `message` would be a second key, and jq (keeping the last) would miss the line.

use std::collections::HashSet;
use std::fmt;

use anyhow::Result;
use postern_protocol::control::RelayMessage;
use postern_tests::harness::Bins;
use postern_tests::relay_support::{RelayWorld, say_hello, ssh_login};
use serde::de::{Deserializer, MapAccess, SeqAccess, Visitor};

fn bins() -> Bins {
    postern_tests::bins!()
}

/// Any JSON value, refused if an object anywhere in it has a key twice.
struct NoDuplicateKeys;

impl<'de> serde::Deserialize<'de> for NoDuplicateKeys {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NoDuplicateKeys)
    }
}

impl<'de> Visitor<'de> for NoDuplicateKeys {
    type Value = NoDuplicateKeys;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("JSON")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_str<E>(self, _: &str) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_unit<E>(self) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self, A::Error> {
        while seq.next_element::<NoDuplicateKeys>()?.is_some() {}
        Ok(self)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self, A::Error> {
        let mut keys = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !keys.insert(key.clone()) {
                return Err(serde::de::Error::custom(format!("duplicate key {key:?}")));
            }
            map.next_value::<NoDuplicateKeys>()?;
        }
        Ok(self)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_json_line_has_one_message_the_events() -> Result<()> {
    let w = RelayWorld::start_configured(bins(), "", &["--log-format", "json"]).await?;
    let unknown = w
        .admin
        .http
        .get(format!(
            "{}/v1/agents/x/connections/orders/http/y",
            w.admin.base
        ))
        .bearer_auth(&w.admin.key)
        .header("x-request-id", "dup-1")
        .send()
        .await?;
    assert_eq!(unknown.status(), 404);

    // A hello the relay refuses, with its reason.
    let token = w.create_agent("site").await?;
    let (ssh, accepted) = ssh_login(w.relay.ssh, &token).await?;
    assert!(accepted);
    ssh.tcpip_forward(postern_protocol::version::FORWARD_ADDRESS, 0)
        .await?;
    let (answer, _control) = say_hello(ssh.channel_open_session().await?, &["not a name!"]).await?;
    assert!(matches!(answer, RelayMessage::Refused { .. }), "{answer:?}");

    w.relay
        .logs
        .wait_for("hello refused", std::time::Duration::from_secs(5))?;
    let lines = w.relay.logs.lines();
    let mut seen = Vec::new();
    for line in &lines {
        if let Err(e) = serde_json::from_str::<NoDuplicateKeys>(line) {
            panic!("{e}: {line}");
        }
        let json: serde_json::Value = serde_json::from_str(line)?;
        let message = json["message"].as_str().unwrap_or_default();
        if line.contains("dup-1") || message == "hello refused" {
            seen.push(message.to_owned());
            assert!(
                json["detail"].as_str().is_some_and(|d| !d.is_empty()),
                "{line}"
            );
        }
    }
    assert_eq!(seen, ["call failed", "hello refused"], "{lines:#?}");
    Ok(())
}
