//! A tunnel that drops while a call is under way answers that call 503 `agent_offline`
//! (retry), as for an agent offline, whether its session was the agent's current one or
//! one a newer session had replaced and that was finishing its calls.

use std::time::Duration;

use anyhow::{Context, Result};
use postern_tests::relay_support::{
    HandDriven, RelayWorld, next_channel, read_request_head, say_hello, ssh_login_as,
};

/// A session that took `token` as an agent serving `orders`; its channels come to the test.
async fn agent_session(
    w: &RelayWorld,
    token: &str,
) -> Result<(
    russh::client::Handle<HandDriven>,
    impl tokio::io::AsyncWrite + use<>,
    postern_tests::relay_support::OpenedChannels,
)> {
    let (opened_tx, opened) = tokio::sync::mpsc::unbounded_channel();
    let handler = HandDriven {
        late_confirm: Some((Duration::ZERO, opened_tx)),
    };
    let (ssh, accepted) = ssh_login_as(w.relay.ssh, token, handler).await?;
    anyhow::ensure!(accepted, "the token was refused");
    ssh.tcpip_forward(postern_protocol::version::FORWARD_ADDRESS, 0)
        .await?;
    let (welcome, control) = say_hello(ssh.channel_open_session().await?, &["orders"]).await?;
    anyhow::ensure!(
        matches!(
            welcome,
            postern_protocol::control::RelayMessage::Welcome { .. }
        ),
        "{welcome:?}"
    );
    Ok((ssh, control, opened))
}

/// Starts a call to `agent`, and returns it once its request reached the agent.
async fn call_under_way(
    w: &RelayWorld,
    agent: &str,
    opened: &mut postern_tests::relay_support::OpenedChannels,
) -> Result<(
    tokio::task::JoinHandle<Result<(u16, String)>>,
    russh::Channel<russh::client::Msg>,
)> {
    let api = w.admin.clone();
    let url = format!("{}/v1/agents/{agent}/connections/orders/http/x", api.base);
    let caller = tokio::spawn(async move {
        let answer = api.http.get(url).bearer_auth(&api.key).send().await?;
        let status = answer.status().as_u16();
        let body: serde_json::Value = answer.json().await?;
        Ok((
            status,
            body["error"]["code"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        ))
    });
    let mut channel = next_channel(opened).await?;
    read_request_head(&mut channel).await?;
    Ok((caller, channel))
}

async fn answer_of(
    caller: tokio::task::JoinHandle<Result<(u16, String)>>,
) -> Result<(u16, String)> {
    tokio::time::timeout(Duration::from_secs(10), caller)
        .await
        .context("no answer within 10 s")??
}

#[tokio::test(flavor = "multi_thread")]
async fn the_current_session_dropping_mid_call_is_503() -> Result<()> {
    let w = RelayWorld::start(postern_tests::bins!()).await?;
    // A few rounds: the channel's end and the session's race each time.
    for round in 0..3 {
        let agent = format!("gone{round}");
        let token = w.create_agent(&agent).await?;
        let (ssh, control, mut opened) = agent_session(&w, &token).await?;
        let (caller, channel) = call_under_way(&w, &agent, &mut opened).await?;
        // The agent's process is gone: its connection ends with no goodbye.
        drop((ssh, control, opened, channel));
        assert_eq!(
            answer_of(caller).await?,
            (503, "agent_offline".to_owned()),
            "round {round}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replaced_session_dropping_mid_call_is_503() -> Result<()> {
    let w = RelayWorld::start(postern_tests::bins!()).await?;
    let token = w.create_agent("rolled").await?;
    let (old, old_control, mut old_opened) = agent_session(&w, &token).await?;
    let (caller, channel) = call_under_way(&w, "rolled", &mut old_opened).await?;
    // A newer process takes over; the older one keeps its call under way.
    let (_new, _new_control, _new_opened) = agent_session(&w, &token).await?;
    w.relay
        .logs
        .wait_for("newer session replaces older one", Duration::from_secs(5))?;
    drop((old, old_control, old_opened, channel));
    assert_eq!(answer_of(caller).await?, (503, "agent_offline".to_owned()));
    Ok(())
}
