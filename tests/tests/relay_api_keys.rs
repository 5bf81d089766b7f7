//! API keys with scopes, end to end against the real relay binary: `admin`
//! manages agents and keys, `call` only reads agents and runs calls.

use std::time::Duration;

use anyhow::Result;
use postern_tests::harness::{Bins, relay_cli};
use postern_tests::relay_support::{Answer, RelayWorld, send};
use reqwest::Method;

fn bins() -> Bins {
    postern_tests::bins!()
}

fn cli_key(w: &RelayWorld, args: &[&str]) -> Result<serde_json::Value> {
    let dir = w.state_dir();
    let mut all = args.to_vec();
    let dir = dir.to_string_lossy();
    all.extend(["--state-dir", &dir, "--json"]);
    Ok(serde_json::from_str(&relay_cli(&w.bins, &all)?)?)
}

/// Asserts that the relay's line with `line` names where the refused request came from
/// and the request id its caller got back in `answer`, to find the sender by.
fn said_with_its_origin(w: &RelayWorld, line: &str, answer: &Answer) {
    let id = answer
        .headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let text = w.relay.logs.text();
    let said = text.lines().find(|l| l.contains(line)).unwrap_or_default();
    assert!(
        !id.is_empty()
            && said.contains("peer=127.0.0.1:")
            && said.contains(&format!("request_id={id}")),
        "{said}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_call_key_reads_and_calls_but_cannot_manage() -> Result<()> {
    let w = RelayWorld::start(bins()).await?;
    let created = cli_key(&w, &["apikey", "create", "runner", "--scope", "call"])?;
    assert_eq!(created["scope"], "call");
    let key = created["key"].as_str().unwrap_or_default().to_owned();
    assert!(key.starts_with("psk_"));
    let caller = w.api(&key);

    let token = w.create_agent("warehouse-1").await?;
    let _agent = w.start_agent(&token)?;
    caller
        .wait_online("warehouse-1", true, Duration::from_secs(15))
        .await?;

    // Allowed: list, show, call.
    let list = send(&caller, Method::GET, "/v1/agents", None).await?;
    assert_eq!(list.status, 200, "{}", list.json);
    // The scheme's case is the caller's (RFC 9110): `BEARER` works as well.
    let shouted = caller
        .http
        .get(format!("{}/v1/agents", caller.base))
        .header("authorization", format!("BEARER {key}"))
        .send()
        .await?;
    assert_eq!(shouted.status(), 200);
    assert_eq!(list.json["agents"][0]["name"], "warehouse-1");
    let call = caller.call("warehouse-1", "orders", "/hello").await?;
    assert_eq!(call.status(), 200);
    let body: serde_json::Value = call.json().await?;
    assert_eq!(body["path"], "/api/hello");

    // Refused with 403 forbidden: every management route.
    let refused = [
        (
            Method::POST,
            "/v1/agents",
            Some(serde_json::json!({"name": "intruder"})),
        ),
        (Method::DELETE, "/v1/agents/warehouse-1", None),
        (Method::POST, "/v1/agents/warehouse-1/token", None),
        (Method::GET, "/v1/apikeys", None),
        (
            Method::POST,
            "/v1/apikeys",
            Some(serde_json::json!({"name": "more", "scope": "admin"})),
        ),
        (Method::DELETE, "/v1/apikeys/admin", None),
    ];
    for (method, path, body) in refused {
        let answer = send(&caller, method.clone(), path, body).await?;
        assert_eq!(answer.status, 403, "{method} {path}: {}", answer.json);
        assert_eq!(answer.code(), "forbidden", "{method} {path}");
        assert_eq!(answer.headers["x-postern-error"], "forbidden");
    }
    // Nothing changed: the agent is still there and online, no agent was added.
    let list = send(&w.admin, Method::GET, "/v1/agents", None).await?;
    let agents = list.json["agents"].as_array().cloned().unwrap_or_default();
    assert_eq!(agents.len(), 1);
    assert_eq!(agents[0]["online"], true);
    let call = caller.call("warehouse-1", "orders", "/again").await?;
    assert_eq!(call.status(), 200, "the agent's token was not rotated");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_are_managed_through_the_api_and_never_shown_again() -> Result<()> {
    let w = RelayWorld::start(bins()).await?;
    let made = send(
        &w.admin,
        Method::POST,
        "/v1/apikeys",
        Some(serde_json::json!({"name": "platform-calls", "scope": "call"})),
    )
    .await?;
    assert_eq!(made.status, 201, "{}", made.json);
    let key = made.json["key"].as_str().unwrap_or_default().to_owned();
    assert!(key.starts_with("psk_"));
    assert_eq!(made.json["scope"], "call");
    // The default scope is admin.
    let admin2 = send(
        &w.admin,
        Method::POST,
        "/v1/apikeys",
        Some(serde_json::json!({"name": "ops"})),
    )
    .await?;
    assert_eq!(admin2.json["scope"], "admin");
    let taken = send(
        &w.admin,
        Method::POST,
        "/v1/apikeys",
        Some(serde_json::json!({"name": "ops"})),
    )
    .await?;
    assert_eq!(taken.status, 409, "{}", taken.json);
    assert_eq!(taken.code(), "api_key_exists");
    assert!(
        taken.json["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("revoke it and make it again")),
        "{}",
        taken.json
    );
    let bad_scope = send(
        &w.admin,
        Method::POST,
        "/v1/apikeys",
        Some(serde_json::json!({"name": "x", "scope": "root"})),
    )
    .await?;
    assert_eq!(bad_scope.code(), "bad_request");

    let list = send(&w.admin, Method::GET, "/v1/apikeys", None).await?;
    assert_eq!(list.status, 200);
    let text = list.json.to_string();
    assert!(!text.contains("psk_"), "a listing never shows keys: {text}");
    let names: Vec<(String, String)> = list.json["api_keys"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|k| {
            (
                k["name"].as_str().unwrap_or_default().to_owned(),
                k["scope"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        names,
        [
            ("admin", "admin"),
            ("platform-calls", "call"),
            ("ops", "admin")
        ]
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
    );

    let caller = w.api(&key);
    assert_eq!(
        send(&caller, Method::GET, "/v1/agents", None).await?.status,
        200
    );
    let revoked = send(&w.admin, Method::DELETE, "/v1/apikeys/platform-calls", None).await?;
    assert_eq!(revoked.status, 204);
    let after = send(&caller, Method::GET, "/v1/agents", None).await?;
    assert_eq!(after.status, 401);
    assert_eq!(after.code(), "unauthorized");
    // Said to be revoked, by name, to its sender and in the log, a few lines a minute:
    // before 2026-12-07 only a counter showed that an integration still sent it.
    assert_eq!(
        after.message(),
        "API key \"platform-calls\" was revoked: ask the relay's admin for another"
    );
    let line = "API request refused: its key was revoked key=platform-calls";
    w.relay.logs.wait_for(line, Duration::from_secs(5))?;
    said_with_its_origin(&w, line, &after);
    for _ in 0..20 {
        assert_eq!(
            send(&caller, Method::GET, "/v1/agents", None).await?.status,
            401
        );
    }
    let logged = w.relay.logs.text().matches(line).count();
    assert_eq!(logged, 10, "{logged} lines for 21 requests in a minute");
    let again = send(&w.admin, Method::DELETE, "/v1/apikeys/platform-calls", None).await?;
    assert_eq!(again.status, 404);
    // Its own code: a key gone already is not a wrong URL.
    assert_eq!(again.code(), "api_key_not_found");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_creates_lists_and_revokes_keys_while_the_relay_runs() -> Result<()> {
    let w = RelayWorld::start(bins()).await?;
    // The backbone's command, without --scope, still makes an admin key.
    let default = cli_key(&w, &["apikey", "create", "legacy"])?;
    assert_eq!(default["scope"], "admin");
    let legacy = w.api(default["key"].as_str().unwrap_or_default());
    let made = send(
        &legacy,
        Method::POST,
        "/v1/agents",
        Some(serde_json::json!({"name": "w1"})),
    )
    .await?;
    assert_eq!(made.status, 201, "an admin key manages agents");

    let caller_key = cli_key(&w, &["apikey", "create", "runner", "--scope", "call"])?;
    let listed = cli_key(&w, &["apikey", "list"])?;
    let text = listed.to_string();
    assert!(!text.contains("psk_"), "list never shows keys: {text}");
    assert!(text.contains("\"runner\"") && text.contains("\"call\""));
    let human = relay_cli(
        &w.bins,
        &[
            "apikey",
            "list",
            "--state-dir",
            &w.state_dir().to_string_lossy(),
        ],
    )?;
    assert!(human.contains("runner") && !human.contains("psk_"));

    let caller = w.api(caller_key["key"].as_str().unwrap_or_default());
    assert_eq!(
        send(&caller, Method::GET, "/v1/agents", None).await?.status,
        200
    );
    cli_key(&w, &["apikey", "revoke", "runner"])?;
    // The relay notices another process's change within its one-second store poll.
    let revoked = std::time::Instant::now();
    loop {
        let status = send(&caller, Method::GET, "/v1/agents", None).await?.status;
        if status == 401 {
            break;
        }
        assert_eq!(status, 200);
        assert!(
            revoked.elapsed() < std::time::Duration::from_secs(3),
            "a key revoked by the CLI still works in the running relay after 3 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let bad = relay_cli(
        &w.bins,
        &[
            "apikey",
            "create",
            "x",
            "--scope",
            "root",
            "--state-dir",
            &w.state_dir().to_string_lossy(),
        ],
    );
    assert!(bad.is_err(), "an unknown scope is refused");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_that_name_no_caller_are_logged_by_their_id_a_few_lines_a_minute() -> Result<()> {
    let w = RelayWorld::start(bins()).await?;
    // An agent's token pasted where the key goes: said with its reason.
    let token = postern_tests::harness::unknown_token();
    let misplaced = send(&w.api(&token), Method::GET, "/v1/agents", None).await?;
    assert_eq!(misplaced.status, 401);
    let malformed = "API request refused: API key must start with \"psk_\", and this is an access token (pst_…)";
    w.relay.logs.wait_for(malformed, Duration::from_secs(5))?;
    said_with_its_origin(&w, malformed, &misplaced);
    // A key from another relay (staging's, say): well formed, unknown here, said by its id.
    let elsewhere = postern_protocol::SecretToken::generate(
        postern_protocol::SecretKind::ApiKey,
        &std::array::from_fn(|i| (i * 37 + 11) as u8),
    );
    let unknown = w.api(elsewhere.expose());
    for _ in 0..15 {
        let refused = send(&unknown, Method::GET, "/v1/agents", None).await?;
        assert_eq!(refused.status, 401);
        assert_eq!(refused.message(), "unknown API key");
    }
    // Ten a minute, on a budget of their own: the misplaced token's line took none of it.
    let line = format!("API request refused: no such key {elsewhere:?}");
    let waited = std::time::Instant::now();
    while w.relay.logs.text().matches(&line).count() < 10 {
        anyhow::ensure!(
            waited.elapsed() < Duration::from_secs(10),
            "fewer than 10 lines for 15 unknown keys: {}",
            w.relay.logs.text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Time for an eleventh to show, were it written.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let text = w.relay.logs.text();
    assert_eq!(text.matches(&line).count(), 10, "{text}");
    for said in text.lines().filter(|l| l.contains(&line)) {
        assert!(
            said.contains("peer=127.0.0.1:") && said.contains("request_id="),
            "{said}"
        );
    }
    // The id is the key's first 16 characters; nothing after them is ever logged.
    let (id, secret) = elsewhere.expose().split_at(16);
    assert!(line.contains(id), "{line}");
    assert!(
        !text.contains(secret) && !text.contains(&token[16..]),
        "never the secret: {text}"
    );
    Ok(())
}
