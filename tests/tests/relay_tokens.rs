//! Token rotation end to end: the old token dies with its live session at once,
//! or keeps working for a grace period; by API and by CLI.

use std::time::Duration;

use anyhow::{Context, Result};
use postern_tests::harness::{Api, Bins, relay_cli, relay_cli_output, stderr};
use postern_tests::relay_support::{
    Answer, ONLINE_WITHIN, OnlineAgent, RelayWorld, eventually, sample, say_hello, scrape, send,
    ssh_login,
};
use reqwest::Method;

fn bins() -> Bins {
    postern_tests::bins!()
}

/// `POST /v1/agents/warehouse-1/token`, with `{"grace": …}` when given.
async fn rotate(api: &Api, grace: Option<&str>) -> Result<Answer> {
    let body = grace.map(|g| serde_json::json!({ "grace": g }));
    send(api, Method::POST, "/v1/agents/warehouse-1/token", body).await
}

#[tokio::test(flavor = "multi_thread")]
async fn rotation_drops_the_old_session_and_the_agent_returns_with_the_new_token() -> Result<()> {
    let w = RelayWorld::start(bins()).await?;
    let OnlineAgent {
        token: old_token,
        process: mut agent,
        ..
    } = w.agent_online("warehouse-1").await?;

    let rotated = rotate(&w.admin, None).await?;
    assert_eq!(rotated.status, 200, "{}", rotated.json);
    let new_token = rotated.json["token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(new_token.starts_with("pst_") && new_token != old_token);
    assert!(rotated.json["old_token_valid_until"].is_null());

    // Dropped at once: offline as soon as the rotation is answered.
    let info = w.admin.agent("warehouse-1").await?;
    assert!(
        !info.online,
        "the live session is dropped with the rotation"
    );
    let api = w.admin.clone();
    eventually("disconnect reason recorded", ONLINE_WITHIN, || {
        let api = api.clone();
        async move {
            api.agent("warehouse-1")
                .await
                .is_ok_and(|i| i.last_disconnect_reason.as_deref() == Some("token rotated"))
        }
    })
    .await?;
    // The relay told the running agent why (`ending`: token_rotated): it stops using the
    // dead token at full speed.
    agent.logs.wait_for(
        "the relay no longer accepts this agent's token",
        ONLINE_WITHIN,
    )?;
    assert!(!w.admin.agent("warehouse-1").await?.online);
    let call = w.admin.call("warehouse-1", "orders", "/x").await?;
    assert_eq!(call.status(), 503, "no session, no calls");

    // Its config gets the new token; the restarted agent is back.
    agent.terminate()?;
    let _agent = w.start_agent(&new_token)?;
    w.admin
        .wait_online("warehouse-1", true, ONLINE_WITHIN)
        .await?;
    let call = w.admin.call("warehouse-1", "orders", "/back").await?;
    assert_eq!(call.status(), 200);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn with_a_grace_period_both_tokens_work_and_the_session_stays() -> Result<()> {
    let w = RelayWorld::start(bins()).await?;
    let OnlineAgent {
        token: old_token,
        process: first,
        info: before,
    } = w.agent_online("warehouse-1").await?;

    let rotated = rotate(&w.admin, Some("5m")).await?;
    assert_eq!(rotated.status, 200, "{}", rotated.json);
    assert!(rotated.json["old_token_valid_until"].is_string());
    let new_token = rotated.json["token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();

    let after = w.admin.agent("warehouse-1").await?;
    assert!(after.online, "the live session is kept during the grace");
    assert_eq!(after.connected_since, before.connected_since);
    let call = w.admin.call("warehouse-1", "orders", "/still").await?;
    assert_eq!(call.status(), 200);

    // The old token still opens new sessions during the grace …
    // (one agent process at a time: two with one identity would replace each other)
    drop(first);
    w.admin
        .wait_online("warehouse-1", false, ONLINE_WITHIN)
        .await?;
    let second = w.start_agent(&old_token)?;
    w.admin
        .wait_online("warehouse-1", true, ONLINE_WITHIN)
        .await?;
    assert_eq!(
        w.admin
            .call("warehouse-1", "orders", "/old")
            .await?
            .status(),
        200
    );
    drop(second);
    w.admin
        .wait_online("warehouse-1", false, ONLINE_WITHIN)
        .await?;
    // … and so does the new one.
    let third = w.start_agent(&new_token)?;
    w.admin
        .wait_online("warehouse-1", true, ONLINE_WITHIN)
        .await?;
    let call = w.admin.call("warehouse-1", "orders", "/new").await?;
    assert_eq!(call.status(), 200);
    assert!(!third.logs.contains("refused the access token"));

    // Bad requests.
    let bad = rotate(&w.admin, Some("soon")).await?;
    assert_eq!(bad.code(), "bad_request");
    let long = rotate(&w.admin, Some("30d")).await?;
    assert_eq!(long.code(), "bad_request");
    let missing = send(&w.admin, Method::POST, "/v1/agents/nobody/token", None).await?;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.code(), "agent_not_found");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_rotates_and_the_running_relay_ends_sessions_on_stale_tokens() -> Result<()> {
    let w = RelayWorld::start(bins()).await?;
    let dir = w.state_dir().to_string_lossy().into_owned();
    let _agent = w.agent_online("warehouse-1").await?;

    // A short grace: the session stays, then is dropped when the grace ends.
    let out = cli_rotate(&w, "2s")?;
    let rotated: serde_json::Value = serde_json::from_str(&out)?;
    let new_token = rotated["token"].as_str().unwrap_or_default().to_owned();
    assert!(new_token.starts_with("pst_"));
    assert!(rotated["old_token_valid_until"].is_string());
    assert!(w.admin.agent("warehouse-1").await?.online);
    w.admin
        .wait_online("warehouse-1", false, Duration::from_secs(15))
        .await?;
    assert_eq!(
        w.admin
            .agent("warehouse-1")
            .await?
            .last_disconnect_reason
            .as_deref(),
        Some("token rotated")
    );
    // The grace's end is kept as the epoch, as a rotation without one is: a clock stepped
    // back before the end it had must not revive the old token.
    let db = w.state_dir().join("relay.db");
    let stored_end = || -> Result<i64> {
        Ok(rusqlite::Connection::open(&db)?.query_row(
            "SELECT old_token_until FROM agents WHERE name = 'warehouse-1'",
            [],
            |r| r.get(0),
        )?)
    };
    eventually(
        "the grace's end kept as the epoch",
        Duration::from_secs(10),
        || {
            let ended = stored_end().is_ok_and(|end| end == 0);
            async move { ended }
        },
    )
    .await?;

    // Without a grace the CLI's rotation drops the new token's session within seconds.
    let _agent2 = w.start_agent(&new_token)?;
    w.admin
        .wait_online("warehouse-1", true, ONLINE_WITHIN)
        .await?;
    let human = relay_cli(
        &w.bins,
        &["agent", "rotate", "warehouse-1", "--state-dir", &dir],
    )?;
    assert!(human.contains("pst_") && human.contains("no longer works"));
    w.admin
        .wait_online("warehouse-1", false, Duration::from_secs(5))
        .await?;
    let bad = relay_cli(
        &w.bins,
        &[
            "agent",
            "rotate",
            "warehouse-1",
            "--grace",
            "forever",
            "--state-dir",
            &dir,
        ],
    );
    assert!(bad.is_err());
    Ok(())
}

/// A grace under a second is not rounded away: the old token and its session outlive
/// the rotation, and the reply says until when.
#[tokio::test(flavor = "multi_thread")]
async fn a_grace_under_a_second_still_keeps_the_session() -> Result<()> {
    let w = RelayWorld::start(bins()).await?;
    let agent = w.agent_online("warehouse-1").await?;
    // The grace stays under a second, as that is the point; so the checks below are
    // measured against the times the rotation and the query were made, rather than
    // assuming each step takes less than the grace.
    let asked = std::time::SystemTime::now();
    let rotated = rotate(&w.admin, Some("500ms")).await?;
    assert_eq!(rotated.status, 200, "{}", rotated.json);
    let until = rotated.json["old_token_valid_until"]
        .as_str()
        .unwrap_or_default();
    let until = humantime::parse_rfc3339(until)?;
    assert!(
        until >= asked + Duration::from_millis(500),
        "old_token_valid_until {until:?} cuts the grace short"
    );
    let online = w.admin.agent("warehouse-1").await?.online;
    let answered = std::time::SystemTime::now();
    // The relay may drop the session from `until` on: offline in an answer that came
    // before then means the grace was not kept.
    assert!(
        online || answered >= until,
        "the session was dropped although its token had a grace"
    );
    // And the old token still logs in, whenever the login is answered before `until`.
    let (_ssh, accepted) = ssh_login(w.relay.ssh, &agent.token).await?;
    let answered = std::time::SystemTime::now();
    assert!(
        accepted || answered >= until,
        "the old token was refused within its grace"
    );

    // The CLI rounds the same way and says the same end: not before the grace is over.
    let asked = std::time::SystemTime::now();
    let out = cli_rotate(&w, "500ms")?;
    let reply: serde_json::Value = serde_json::from_str(&out)?;
    let until =
        humantime::parse_rfc3339(reply["old_token_valid_until"].as_str().unwrap_or_default())?;
    assert!(
        until >= asked + Duration::from_millis(500),
        "the CLI's old_token_valid_until {until:?} cuts the grace short"
    );
    Ok(())
}

/// Agent `warehouse-1` created, logged in with its token (forward asked, control channel
/// open, no hello yet), then its token rotated without grace: the session, the control
/// channel and the rotation's answer.
async fn logged_in_then_rotated(
    w: &RelayWorld,
) -> Result<(
    russh::client::Handle<postern_tests::relay_support::HandDriven>,
    russh::Channel<russh::client::Msg>,
    Answer,
)> {
    let token = w.create_agent("warehouse-1").await?;
    let (ssh, accepted) = ssh_login(w.relay.ssh, &token).await?;
    anyhow::ensure!(accepted, "the token was refused");
    ssh.tcpip_forward(postern_protocol::version::FORWARD_ADDRESS, 0)
        .await?;
    let control = ssh.channel_open_session().await?;
    let rotated = rotate(&w.admin, None).await?;
    anyhow::ensure!(rotated.status == 200, "rotation: {}", rotated.json);
    Ok((ssh, control, rotated))
}

/// A rotation (or revoke) that lands after an agent logged in but before its hello finds
/// no session to drop; the relay reads the agent's record again at the hello and refuses
/// it, so a leaked token cannot keep a session up past a rotation.
#[tokio::test(flavor = "multi_thread")]
async fn a_rotation_between_login_and_hello_refuses_the_hello() -> Result<()> {
    use postern_protocol::control::RelayMessage;

    let w = RelayWorld::start(bins()).await?;
    let (_ssh, control, _rotated) = logged_in_then_rotated(&w).await?;

    let (answer, _control) = say_hello(control, &["orders"]).await?;
    match answer {
        RelayMessage::Refused { code, .. } => assert_eq!(code, "token_rotated"),
        other => panic!("the hello of a rotated token was answered {other:?}"),
    }
    let info = w.admin.agent("warehouse-1").await?;
    assert!(!info.online, "the refused session is not online");
    Ok(())
}

/// The same race while the agent is back with its new token: the leaked token's hello is
/// refused before that session can be found, so it takes no call and does not replace
/// (and so disconnect) the agent's real session.
#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_away_hello_does_not_replace_the_real_session() -> Result<()> {
    use postern_protocol::control::RelayMessage;

    let w = RelayWorld::start(bins()).await?;
    let (_ssh, control, rotated) = logged_in_then_rotated(&w).await?;
    let fresh = rotated.json["token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let agent = w.start_agent(&fresh)?;
    let before = w
        .admin
        .wait_online("warehouse-1", true, Duration::from_secs(15))
        .await?;

    let (answer, _control) = say_hello(control, &["orders"]).await?;
    match answer {
        RelayMessage::Refused { code, .. } => assert_eq!(code, "token_rotated"),
        other => panic!("the hello of a rotated-away token was answered {other:?}"),
    }
    let after = w.admin.agent("warehouse-1").await?;
    assert!(after.online, "the real session was ended");
    assert_eq!(
        after.connected_since, before.connected_since,
        "the real session was replaced"
    );
    assert_eq!(
        w.admin.call("warehouse-1", "orders", "/x").await?.status(),
        200
    );
    assert!(
        !agent.logs.contains("replaced"),
        "the agent was told it was replaced:\n{}",
        agent.logs.text()
    );
    Ok(())
}

/// A revoked agent that keeps retrying with its old token (an agent nobody updated) is
/// refused each time, but never gets its address blocked: other agents behind the same
/// NAT address keep connecting. Its tries are counted as `former_token`.
#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_agent_retrying_never_blocks_its_address() -> Result<()> {
    let w = RelayWorld::start(bins()).await?;
    let old = w.create_agent("retired").await?;
    let revoked = send(&w.admin, Method::DELETE, "/v1/agents/retired", None).await?;
    assert_eq!(revoked.status, 204, "{}", revoked.json);

    // More than the relay's 20 failures that block an address.
    let tries = 25;
    for i in 0..tries {
        let (_ssh, accepted) = ssh_login(w.relay.ssh, &old)
            .await
            .map_err(|e| anyhow::anyhow!("try {i}: refused before the handshake: {e}"))?;
        assert!(!accepted, "try {i}: a revoked token was accepted");
    }
    let samples = scrape(&w.admin).await?;
    assert_eq!(
        sample(
            &samples,
            "postern_auth_failures_total{reason=\"former_token\"}"
        ),
        f64::from(tries)
    );

    let _agent = w.agent_online("neighbour").await?;
    Ok(())
}

/// `postern-relay agent rotate warehouse-1 --grace GRACE --json` on `w`'s store.
fn cli_rotate(w: &RelayWorld, grace: &str) -> Result<String> {
    let dir = w.state_dir().to_string_lossy().into_owned();
    relay_cli(
        &w.bins,
        &[
            "agent",
            "rotate",
            "warehouse-1",
            "--grace",
            grace,
            "--state-dir",
            &dir,
            "--json",
        ],
    )
}

/// A second rotation within the first's grace, whose token no agent used (a retry of a
/// rotation whose answer was lost), replaces that token and keeps the agent's: the agent
/// stays. Once an agent logged in with the current token, a rotation moves it out, and the
/// answer says the earlier grace was cut, as the agent still on the first token loses its
/// session. A blank grace (a template's unset variable) is refused, not read as none.
#[tokio::test(flavor = "multi_thread")]
async fn a_rotation_within_an_earlier_grace_keeps_the_token_in_use_or_says_it_cut_it() -> Result<()>
{
    let w = RelayWorld::start(bins()).await?;
    let _online = w.agent_online("warehouse-1").await?;
    let first = rotate(&w.admin, Some("5m")).await?;
    assert_eq!(first.status, 200, "{}", first.json);
    assert!(first.json["earlier_grace_cut"].is_null(), "{}", first.json);
    assert_eq!(first.json["replaced_unused_token"], false, "{}", first.json);

    for blank in ["", "  "] {
        let refused = rotate(&w.admin, Some(blank)).await?;
        assert_eq!(refused.code(), "bad_request", "{blank:?}: {}", refused.json);
    }
    let dir = w.state_dir().to_string_lossy().into_owned();
    let cli_blank = relay_cli_output(
        &w.bins,
        &[
            "agent",
            "rotate",
            "warehouse-1",
            "--grace",
            "",
            "--state-dir",
            &dir,
        ],
    )?;
    assert_eq!(cli_blank.status.code(), Some(64), "{}", stderr(&cli_blank));
    assert!(stderr(&cli_blank).contains("grace is empty"));
    // Nothing was rotated by those: the agent, on its first token, is still served.
    assert!(w.admin.agent("warehouse-1").await?.online);

    // The retry: before 2026-12-07 it cut the agent off.
    let retried = rotate(&w.admin, Some("5m")).await?;
    assert_eq!(retried.status, 200, "{}", retried.json);
    assert_eq!(
        retried.json["replaced_unused_token"], true,
        "{}",
        retried.json
    );
    assert!(
        retried.json["earlier_grace_cut"].is_null(),
        "{}",
        retried.json
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        w.admin.agent("warehouse-1").await?.online,
        "the agent stays"
    );
    let call = w.admin.call("warehouse-1", "orders", "/still").await?;
    assert_eq!(call.status(), 200);
    let unused = first.json["token"].as_str().unwrap_or_default();
    let (_ssh, accepted) = ssh_login(w.relay.ssh, unused).await?;
    assert!(!accepted, "the replaced token no longer works");

    // An agent logs in with the current token: it is in use now, and the next rotation
    // moves it out and ends the first one, here by the CLI.
    let current = retried.json["token"].as_str().unwrap_or_default();
    let (_ssh, accepted) = ssh_login(w.relay.ssh, current).await?;
    assert!(accepted, "the retried rotation's token works");
    let args = [
        "agent",
        "rotate",
        "warehouse-1",
        "--grace",
        "5m",
        "--state-dir",
        &dir,
    ];
    let third = relay_cli(&w.bins, &args)?;
    let cut = retried.json["old_token_valid_until"]
        .as_str()
        .unwrap_or_default();
    assert!(
        third.contains(&format!(
            "The token an earlier rotation kept working until {cut} stopped working now"
        )),
        "{third}"
    );
    w.admin
        .wait_online("warehouse-1", false, ONLINE_WITHIN)
        .await?;
    // The CLI's own retry replaces the token nobody used, and says so.
    let fourth = relay_cli(&w.bins, &args)?;
    assert!(
        fourth.contains("The token the last rotation made had not been used by any agent"),
        "{fourth}"
    );
    let (_ssh, accepted) = ssh_login(w.relay.ssh, current).await?;
    assert!(accepted, "the token in use keeps its grace");
    Ok(())
}

/// The relay's line for an agent on a former token (rotated away, or its agent revoked)
/// names the agent and says which of the two: behind one NAT address, the peer alone does
/// not tell the admin which agent nobody updated.
#[tokio::test(flavor = "multi_thread")]
async fn a_former_tokens_refusal_names_its_agent() -> Result<()> {
    let w = RelayWorld::start(bins()).await?;
    let created = |name: &'static str| {
        let admin = w.admin.clone();
        async move {
            let body = serde_json::json!({ "name": name });
            let made = send(&admin, Method::POST, "/v1/agents", Some(body)).await?;
            anyhow::ensure!(made.status == 201, "{}", made.json);
            let field = |key: &str| made.json[key].as_str().unwrap_or_default().to_owned();
            anyhow::Ok((field("token"), field("id")))
        }
    };
    let (rotated_token, rotated_id) = created("forgotten").await?;
    let rotation = send(&w.admin, Method::POST, "/v1/agents/forgotten/token", None).await?;
    assert_eq!(rotation.status, 200, "{}", rotation.json);
    let (revoked_token, revoked_id) = created("gone").await?;
    let revoke = send(&w.admin, Method::DELETE, "/v1/agents/gone", None).await?;
    assert_eq!(revoke.status, 204, "{}", revoke.json);

    // Real agents that nobody updated: each tries at once on its start.
    let _forgotten = w.start_agent(&rotated_token)?;
    let _gone = w.start_agent(&revoked_token)?;
    for (name, id, reason) in [
        ("forgotten", &rotated_id, "token replaced by a rotation"),
        ("gone", &revoked_id, "token of a revoked agent"),
    ] {
        // `agent created agent=… id=… by=…` is logged too: the reason tells them apart.
        let named = format!("agent={name} id={id} reason=\"{reason}\"");
        w.relay.logs.wait_for(&named, ONLINE_WITHIN)?;
        let lines = w.relay.logs.lines();
        let line = lines
            .iter()
            .find(|l| l.contains(&named))
            .with_context(|| format!("no line naming {name}:\n{}", lines.join("\n")))?;
        assert!(
            line.contains("agent authentication refused peer=127.0.0.1:"),
            "{line}"
        );
    }
    Ok(())
}
