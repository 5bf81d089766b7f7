//! A tunnel that drops after a call's request went to the agent answers that call 502
//! `tunnel_error` (the internal server may have acted on it), whether its session was the
//! agent's current one or one a newer session had replaced and that was finishing its
//! calls; one that drops before the request left answers 503 `agent_offline` (retry).

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
        ..Default::default()
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
) -> Result<(Answer, russh::Channel<russh::client::Msg>)> {
    let caller = start_call(w, agent);
    let mut channel = next_channel(opened).await?;
    read_request_head(&mut channel).await?;
    Ok((caller, channel))
}

/// A POST to `agent`'s `orders`, answered with its status, error code and message.
fn start_call(w: &RelayWorld, agent: &str) -> Answer {
    let api = w.admin.clone();
    let url = format!("{}/v1/agents/{agent}/connections/orders/http/x", api.base);
    tokio::spawn(async move {
        let answer = api
            .http
            .post(url)
            .bearer_auth(&api.key)
            .body("{\"order\":42}")
            .send()
            .await?;
        let status = answer.status().as_u16();
        let body: serde_json::Value = answer.json().await?;
        let text = |field: &str| body["error"][field].as_str().unwrap_or_default().to_owned();
        Ok((status, text("code"), text("message")))
    })
}

type Answer = tokio::task::JoinHandle<Result<(u16, String, String)>>;

async fn answer_of(caller: Answer) -> Result<(u16, String, String)> {
    tokio::time::timeout(Duration::from_secs(10), caller)
        .await
        .context("no answer within 10 s")??
}

/// The answer to a call whose request reached the agent before its tunnel dropped.
fn assert_maybe_acted_on((status, code, message): (u16, String, String), round: usize) {
    assert_eq!(
        (status, code.as_str()),
        (502, "tunnel_error"),
        "round {round}: {message}"
    );
    assert!(
        message.contains("may have acted on it"),
        "round {round}: {message}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_current_session_dropping_mid_call_is_502_maybe_acted_on() -> Result<()> {
    let w = RelayWorld::start(postern_tests::bins!()).await?;
    // A few rounds: the channel's end and the session's race each time.
    for round in 0..3 {
        let agent = format!("gone{round}");
        let token = w.create_agent(&agent).await?;
        let (ssh, control, mut opened) = agent_session(&w, &token).await?;
        let (caller, channel) = call_under_way(&w, &agent, &mut opened).await?;
        // The agent's process is gone: its connection ends with no goodbye.
        drop((ssh, control, opened, channel));
        assert_maybe_acted_on(answer_of(caller).await?, round);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replaced_session_dropping_mid_call_is_502_maybe_acted_on() -> Result<()> {
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
    assert_maybe_acted_on(answer_of(caller).await?, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_dropping_before_the_request_left_is_503() -> Result<()> {
    let w = RelayWorld::start(postern_tests::bins!()).await?;
    let token = w.create_agent("slow").await?;
    // The agent takes its time to confirm the call's channel, and is gone before it does.
    let (opened_tx, _opened) = tokio::sync::mpsc::unbounded_channel();
    let handler = HandDriven {
        late_confirm: Some((Duration::from_secs(5), opened_tx)),
        ..Default::default()
    };
    let (ssh, accepted) = ssh_login_as(w.relay.ssh, &token, handler).await?;
    anyhow::ensure!(accepted, "the token was refused");
    ssh.tcpip_forward(postern_protocol::version::FORWARD_ADDRESS, 0)
        .await?;
    let (_welcome, control) = say_hello(ssh.channel_open_session().await?, &["orders"]).await?;
    let caller = start_call(&w, "slow");
    // Whether the relay is waiting on its channel by now or finds the agent gone, nothing
    // was sent.
    tokio::time::sleep(Duration::from_millis(500)).await;
    ssh.disconnect(russh::Disconnect::ByApplication, "gone", "")
        .await?;
    drop((ssh, control));
    let (status, code, message) = answer_of(caller).await?;
    assert_eq!((status, code.as_str()), (503, "agent_offline"), "{message}");
    Ok(())
}
