//! RFC 7523 end to end: the real relay and agent, a token endpoint that verifies each
//! assertion with jsonwebtoken, and the API it guards; caching, refresh, retry and errors.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use jsonwebtoken::{Algorithm, DecodingKey};
use postern_tests::harness::{
    AgentProcess, Api, Bins, RelayProcess, agent_config, create_agent, create_api_key,
};
use postern_tests::relay_support::ONLINE_WITHIN;
use postern_tests::temp::TempDir;
use postern_tests::token_endpoint::{EndpointConfig, ExpiresIn, Fault, TokenEndpoint};
use serde_json::Value;

const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

fn bins() -> Bins {
    postern_tests::bins!()
}

/// A relay and one agent `edge` whose config holds `connections`.
struct World {
    _dir: TempDir,
    _relay: RelayProcess,
    agent: AgentProcess,
    api: Api,
}

impl World {
    /// `files` are written (0600) beside the config before the agent starts.
    async fn start(dir: TempDir, connections: &str) -> Result<Self> {
        let bins = bins();
        let state = dir.path().join("relay");
        let relay = RelayProcess::start(&bins, &state, "127.0.0.1:0", "127.0.0.1:0")?;
        let (_id, token) = create_agent(&bins, &state, "edge")?;
        let api_key = create_api_key(&bins, &state, "platform")?;
        let config = dir.write_private(
            "agent.toml",
            &agent_config(relay.ssh, &relay.fingerprint, &token, connections),
        )?;
        let agent = AgentProcess::start(&bins, &config)?;
        let api = Api::new(relay.api_base(), api_key);
        api.wait_online("edge", true, ONLINE_WITHIN).await?;
        Ok(Self {
            _dir: dir,
            _relay: relay,
            agent,
            api,
        })
    }

    async fn post(&self, connection: &str, path: &str, body: &str) -> Result<reqwest::Response> {
        Ok(self
            .api
            .http
            .post(format!(
                "{}/v1/agents/edge/connections/{connection}/http{path}",
                self.api.base
            ))
            .bearer_auth(&self.api.key)
            .body(body.to_owned())
            .send()
            .await?)
    }
}

/// An RSA 2048 key made by the openssl CLI: (PKCS#8 private PEM, public PEM).
fn openssl_rsa(dir: &TempDir) -> Result<(String, String)> {
    postern_tests::pki::rsa_forms(dir.path())?;
    Ok((
        std::fs::read_to_string(dir.path().join("rsa.pem"))?,
        std::fs::read_to_string(dir.path().join("rsa-pub.pem"))?,
    ))
}

fn endpoint_config(
    public_pem: &str,
    algorithm: Algorithm,
    expires_in: ExpiresIn,
) -> Result<EndpointConfig> {
    let key = match algorithm {
        Algorithm::ES256 => DecodingKey::from_ec_pem(public_pem.as_bytes())?,
        _ => DecodingKey::from_rsa_pem(public_pem.as_bytes())?,
    };
    Ok(EndpointConfig {
        key,
        algorithm,
        audience: "https://idp.test/token".to_owned(),
        issuer: "postern-edge".to_owned(),
        grant_type: JWT_BEARER.to_owned(),
        expires_in,
        delay: Duration::ZERO,
        reissue: false,
    })
}

/// Connection `name` signing ES256 assertions for `endpoint` (one-hour tokens, then as
/// `configure` sets it), behind a relay and an agent.
async fn es256_world(
    tag: &str,
    name: &str,
    configure: impl FnOnce(&mut EndpointConfig),
) -> Result<(TokenEndpoint, World)> {
    let dir = TempDir::new(tag)?;
    let (private, public) = postern_tests::pki::ec256(dir.path())?;
    dir.write_private("ec.pem", &private)?;
    let mut config = endpoint_config(&public, Algorithm::ES256, ExpiresIn::Number(3600))?;
    configure(&mut config);
    let endpoint = TokenEndpoint::start(config).await?;
    let world = World::start(dir, &endpoint.connection(name, "ES256", "ec.pem", "", "")).await?;
    Ok((endpoint, world))
}

async fn json_of(response: reqwest::Response) -> Result<(u16, Value)> {
    let status = response.status().as_u16();
    let text = response.text().await?;
    let value = serde_json::from_str(&text).with_context(|| format!("not JSON: {text}"))?;
    Ok((status, value))
}

#[tokio::test(flavor = "multi_thread")]
async fn fifty_concurrent_calls_share_one_exchange() -> Result<()> {
    let dir = TempDir::new("jwt-x-herd")?;
    let (private, public) = postern_tests::pki::ec256(dir.path())?;
    dir.write_private("ec.pem", &private)?;
    let mut config = endpoint_config(&public, Algorithm::ES256, ExpiresIn::Number(3600))?;
    // A slow endpoint makes every call arrive while the first exchange is under way.
    config.delay = Duration::from_millis(500);
    let endpoint = TokenEndpoint::start(config).await?;
    // The agent's Prometheus metrics must show the same: one exchange, fifty calls. On
    // port 0, so no other test can take the port first (read back from /proc below).
    let connection = format!(
        "metrics_listen = \"127.0.0.1:0\"\n{}",
        endpoint.connection(
            "erp",
            "ES256",
            "ec.pem",
            "",
            "params = { scope = \"orders.read orders.write\" }",
        )
    );
    let world = World::start(dir, &connection).await?;
    let metrics_port = world.agent.metrics_port()?;
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..50 {
        let api = world.api.clone();
        calls.spawn(async move {
            let response = api
                .http
                .post(format!(
                    "{}/v1/agents/edge/connections/erp/http/orders/{i}",
                    api.base
                ))
                .bearer_auth(&api.key)
                .body(format!("call {i}"))
                .send()
                .await?;
            json_of(response).await
        });
    }
    while let Some(joined) = calls.join_next().await {
        let (status, body) = joined??;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["ok"], true);
    }
    let exchanges = endpoint.exchanges();
    assert_eq!(
        exchanges.len(),
        1,
        "exactly one exchange for 50 concurrent calls"
    );
    let x = &exchanges[0];
    assert_eq!(x.content_type, "application/x-www-form-urlencoded");
    assert_eq!(x.fields["grant_type"], JWT_BEARER);
    assert_eq!(x.fields["scope"], "orders.read orders.write");
    assert!(!x.fields.contains_key("client_assertion"));
    // lifetime = "5m" added iat and exp as integers; the endpoint checked exp already.
    let iat = x.claims["iat"].as_u64().context("iat is an integer")?;
    let exp = x.claims["exp"].as_u64().context("exp is an integer")?;
    assert_eq!(exp - iat, 300);
    let issued = x.issued.clone().context("a token was issued")?;
    let api_calls = endpoint.calls();
    assert_eq!(api_calls.len(), 50);
    assert!(
        api_calls
            .iter()
            .all(|c| c.token.as_deref() == Some(issued.as_str()) && c.status == 200),
        "every call carried the one exchanged token"
    );
    // The access token is a secret: never in the agent's log.
    assert!(!world.agent.logs.contains(&issued));

    let metrics = postern_tests::harness::agent_metrics(metrics_port).await?;
    for line in [
        "postern_agent_token_exchanges_total{connection=\"erp\",outcome=\"ok\"} 1\n",
        "postern_agent_token_exchanges_total{connection=\"erp\",outcome=\"failed\"} 0\n",
        "postern_agent_calls_total{connection=\"erp\",status=\"200\",postern_error=\"none\"} 50\n",
        "postern_agent_call_duration_seconds_count{connection=\"erp\"} 50\n",
        "postern_agent_connected 1\n",
        "postern_agent_reconnects_total 0\n",
    ] {
        assert!(metrics.contains(line), "{line:?} missing from:\n{metrics}");
    }
    assert!(!metrics.contains(&issued), "no token in the metrics");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn client_assertion_as_json_with_a_string_expires_in() -> Result<()> {
    let dir = TempDir::new("jwt-x-ca")?;
    let (private, public) = openssl_rsa(&dir)?;
    dir.write_private("rsa.pem", &private)?;
    // "10", a string: honoured, the token is refreshed 9 s on (the default lifetime, what
    // an agent that ignored it would take, is 10 min).
    let mut config = endpoint_config(&public, Algorithm::PS256, ExpiresIn::Text(10))?;
    config.grant_type = "client_credentials".to_owned();
    let endpoint = TokenEndpoint::start(config).await?;
    let connection = endpoint.connection(
        "graph",
        "PS256",
        "rsa.pem",
        "headers = { kid = \"cert-1\" }",
        "client_assertion = true\nbody = \"json\"\nparams = { client_id = \"app-123\", scope = \"https://graph.test/.default\" }",
    );
    let world = World::start(dir, &connection).await?;
    for i in 0..3 {
        let (status, body) = json_of(world.post("graph", "/me", &format!("n{i}")).await?).await?;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["body"], format!("n{i}"));
    }
    let exchanges = endpoint.exchanges();
    assert_eq!(exchanges.len(), 1, "one token for the three calls");
    let started = Instant::now();
    // Bounded: at most 150 calls over at most 15 s.
    for i in 0..150 {
        let (status, body) = json_of(world.post("graph", "/me", &format!("m{i}")).await?).await?;
        assert_eq!(status, 200, "{body}");
        if endpoint.exchanges().len() >= 2 || started.elapsed() > Duration::from_secs(15) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        endpoint.exchanges().len(),
        2,
        "a string expires_in of 10 s is honoured: refreshed within 15 s"
    );
    let x = &exchanges[0];
    assert_eq!(x.content_type, "application/json");
    assert_eq!(x.fields["grant_type"], "client_credentials");
    assert_eq!(
        x.fields["client_assertion_type"],
        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    );
    assert_eq!(x.fields["client_id"], "app-123");
    assert!(!x.fields.contains_key("assertion"));
    let header = jsonwebtoken::decode_header(&x.fields["client_assertion"])?;
    assert_eq!(header.alg, Algorithm::PS256);
    assert_eq!(header.kid.as_deref(), Some("cert-1"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_ten_second_token_is_refreshed_before_it_expires() -> Result<()> {
    let dir = TempDir::new("jwt-x-refresh")?;
    let (private, public) = postern_tests::pki::ec256(dir.path())?;
    dir.write_private("ec.pem", &private)?;
    // Ten seconds: the agent refreshes a tenth before expiry, so a call that picked the
    // old token just before the refresh has 1 s to reach the API (with 3 s, 300 ms was
    // too little on a loaded machine).
    let endpoint = TokenEndpoint::start(endpoint_config(
        &public,
        Algorithm::ES256,
        ExpiresIn::Number(10),
    )?)
    .await?;
    let world = World::start(dir, &endpoint.connection("erp", "ES256", "ec.pem", "", "")).await?;
    let started = Instant::now();
    let mut refreshed_after = None;
    // Bounded: at most 200 calls over at most 20 s.
    for _ in 0..200 {
        let (status, body) = json_of(world.post("erp", "/tick", "").await?).await?;
        assert_eq!(status, 200, "{body}");
        if endpoint.exchanges().len() >= 2 {
            refreshed_after = Some(started.elapsed());
            break;
        }
        if started.elapsed() > Duration::from_secs(20) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = refreshed_after.context("the token was never refreshed")?;
    // Due 9 s after the first exchange, which began after `started`.
    assert!(
        after >= Duration::from_secs(8),
        "refreshed too early: {after:?}"
    );
    // Generous: under load a call may take a while; "never expired" below is the real check.
    assert!(after < Duration::from_secs(14), "refreshed late: {after:?}");
    let calls = endpoint.calls();
    assert!(calls.len() > 5, "several calls reused the first token");
    assert!(
        calls.iter().all(|c| c.status == 200),
        "the API never saw an expired token: {:?}",
        calls.iter().map(|c| c.status).collect::<Vec<_>>()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_401_drops_the_token_and_retries_once_with_the_same_body() -> Result<()> {
    let dir = TempDir::new("jwt-x-401")?;
    let (private, public) = postern_tests::pki::ec256(dir.path())?;
    dir.write_private("ec.pem", &private)?;
    // No expires_in (as Salesforce answers): the configured default lifetime applies.
    let endpoint = TokenEndpoint::start(endpoint_config(
        &public,
        Algorithm::ES256,
        ExpiresIn::Absent(3600),
    )?)
    .await?;
    let connection = endpoint.connection("crm", "ES256", "ec.pem", "", "default_lifetime = \"1h\"");
    let world = World::start(dir, &connection).await?;
    let (status, _) = json_of(world.post("crm", "/a", "first").await?).await?;
    assert_eq!(status, 200);
    endpoint.revoke_all();
    let (status, body) = json_of(world.post("crm", "/b", "the replayed body").await?).await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["body"], "the replayed body");
    assert_eq!(endpoint.exchanges().len(), 2);
    let calls = endpoint.calls();
    let statuses: Vec<u16> = calls.iter().map(|c| c.status).collect();
    assert_eq!(statuses, [200, 401, 200], "one refusal, one retry");
    assert_eq!(calls[1].body, "the replayed body");
    assert_eq!(calls[2].body, "the replayed body");
    assert_ne!(calls[1].token, calls[2].token);
    // The new token is cached: no further exchange.
    let (status, _) = json_of(world.post("crm", "/c", "").await?).await?;
    assert_eq!(status, 200);
    assert_eq!(endpoint.exchanges().len(), 2);
    // A body over the 64 KiB replay limit streams once: the 401 reaches the caller, but the
    // refused token is dropped, so the next call exchanges again and succeeds.
    endpoint.revoke_all();
    let big = "x".repeat(100 * 1024);
    let response = world.post("crm", "/big", &big).await?;
    assert_eq!(response.status(), 401);
    assert_eq!(endpoint.exchanges().len(), 2);
    let (status, body) = json_of(world.post("crm", "/e", "small").await?).await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(endpoint.exchanges().len(), 3);
    Ok(())
}

/// A path that refuses every token (an API saying 401 where it means 403): the first
/// refusal gets a new token and a retry, refused too; from then on, for 10 s, its
/// refusals go back to the caller as they are, with no exchange each, and the other
/// paths keep the token.
#[tokio::test(flavor = "multi_thread")]
async fn a_path_that_refuses_every_token_does_not_exchange_per_call() -> Result<()> {
    let (endpoint, world) = es256_world("jwt-x-403", "crm", |_| {}).await?;
    let (status, _) = json_of(world.post("crm", "/a", "").await?).await?;
    assert_eq!(status, 200);
    for _ in 0..5 {
        let response = world.post("crm", "/forbidden", "").await?;
        assert_eq!(response.status(), 401);
    }
    assert_eq!(endpoint.exchanges().len(), 2, "one new token, tried once");
    let statuses: Vec<u16> = endpoint.calls().iter().map(|c| c.status).collect();
    assert_eq!(
        statuses,
        [200, 401, 401, 401, 401, 401, 401],
        "one retry only"
    );
    let (status, _) = json_of(world.post("crm", "/b", "").await?).await?;
    assert_eq!(status, 200);
    assert_eq!(endpoint.exchanges().len(), 2);
    Ok(())
}

/// The first call's own token refused (a path refusing every token, reached first, or
/// between larger uploads whose refusals dropped the cached token): no retry, and the
/// token is kept for the calls after, with no exchange for each refusal.
#[tokio::test(flavor = "multi_thread")]
async fn a_token_made_for_a_refused_call_is_kept() -> Result<()> {
    let (endpoint, world) = es256_world("jwt-x-own", "crm", |_| {}).await?;
    for _ in 0..6 {
        let response = world.post("crm", "/forbidden", "").await?;
        assert_eq!(response.status(), 401);
    }
    assert_eq!(endpoint.exchanges().len(), 1, "one token for all six");
    let statuses: Vec<u16> = endpoint.calls().iter().map(|c| c.status).collect();
    assert_eq!(statuses, [401; 6], "no retries");
    let (status, _) = json_of(world.post("crm", "/b", "").await?).await?;
    assert_eq!(status, 200);
    assert_eq!(endpoint.exchanges().len(), 1);
    Ok(())
}

/// A token endpoint that hands back the token it gave before (as some do while it is
/// valid): the retry would send the refused token again, so there is none, and the
/// refusals after it cost no exchange each.
#[tokio::test(flavor = "multi_thread")]
async fn an_endpoint_that_hands_back_the_same_token_is_not_asked_per_refusal() -> Result<()> {
    let (endpoint, world) = es256_world("jwt-x-same", "crm", |c| c.reissue = true).await?;
    let (status, _) = json_of(world.post("crm", "/a", "").await?).await?;
    assert_eq!(status, 200);
    for _ in 0..6 {
        let response = world.post("crm", "/forbidden", "").await?;
        assert_eq!(response.status(), 401);
    }
    assert_eq!(
        endpoint.exchanges().len(),
        2,
        "one exchange for the first refusal, none after"
    );
    let statuses: Vec<u16> = endpoint.calls().iter().map(|c| c.status).collect();
    assert_eq!(statuses, [200, 401, 401, 401, 401, 401, 401], "no retries");
    let (status, _) = json_of(world.post("crm", "/b", "").await?).await?;
    assert_eq!(status, 200);
    assert_eq!(endpoint.exchanges().len(), 2);
    Ok(())
}

/// The internal server refuses the cached token and the token endpoint is down just then:
/// the caller gets the server's own 401 (it says what was wrong), not the exchange's 502.
#[tokio::test(flavor = "multi_thread")]
async fn a_refused_token_with_no_new_one_to_be_had_passes_the_401_on() -> Result<()> {
    let (endpoint, world) = es256_world("jwt-x-401-down", "crm", |_| {}).await?;
    let (status, _) = json_of(world.post("crm", "/a", "").await?).await?;
    assert_eq!(status, 200);
    endpoint.revoke_all();
    endpoint.set_fault(Some(Fault::Answer {
        status: 503,
        content_type: "text/plain",
        body: "maintenance",
    }));
    let response = world.post("crm", "/b", "").await?;
    assert_eq!(response.status(), 401);
    assert!(
        response.headers().get("x-postern-error").is_none(),
        "the internal server's answer, not the agent's"
    );
    world.agent.logs.wait_for(
        "no new token to retry the refused call with",
        Duration::from_secs(5),
    )?;
    Ok(())
}

/// How long the agent hands a failed exchange on to the calls after it.
const REFRESH_RETRY: Duration = Duration::from_secs(1);

#[tokio::test(flavor = "multi_thread")]
async fn oauth_errors_come_back_as_token_exchange_failed() -> Result<()> {
    let (endpoint, world) = es256_world("jwt-x-err", "erp", |c| {
        c.audience = "https://someone-else/token".to_owned();
        c.delay = Duration::from_millis(400);
    })
    .await?;
    let response = world.post("erp", "/x", "").await?;
    assert_eq!(
        response.headers()["x-postern-error"],
        "token_exchange_failed"
    );
    let (status, body) = json_of(response).await?;
    assert_eq!(status, 502);
    assert_eq!(body["error"]["code"], "token_exchange_failed");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(
            "refused the assertion (HTTP 400): invalid_grant: assertion rejected: InvalidAudience"
        ),
        "{message}"
    );
    assert!(
        endpoint.calls().is_empty(),
        "nothing reached the API without a token"
    );
    assert_eq!(endpoint.exchanges().len(), 1);

    // Calls waiting while an exchange fails share its error: no stampede on a failing
    // endpoint. Past the second for which a failure is handed on as it is, so they start
    // one exchange and wait on it (it takes 400 ms).
    tokio::time::sleep(REFRESH_RETRY + Duration::from_millis(200)).await;
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..10 {
        let api = world.api.clone();
        calls.spawn(async move { api.call("edge", "erp", &format!("/y/{i}")).await });
    }
    while let Some(joined) = calls.join_next().await {
        let response = joined??;
        assert_eq!(response.status(), 502);
    }
    let attempts = endpoint.exchanges().len() - 1;
    assert_eq!(
        attempts, 1,
        "10 concurrent failing calls made {attempts} exchanges"
    );
    // Nor do calls one after another: within a second of a failure the next call gets it
    // (saying so) instead of asking again, so a failing endpoint sees about one a second.
    let (before, started) = (endpoint.exchanges().len(), Instant::now());
    let mut held = 0;
    for i in 0..20 {
        let response = world.post("erp", &format!("/z/{i}"), "").await?;
        let (status, body) = json_of(response).await?;
        assert_eq!(status, 502, "{body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("invalid_grant"), "{message}");
        if message.contains("(the last try, ") {
            held += 1;
        }
    }
    let (attempts, took) = (endpoint.exchanges().len() - before, started.elapsed());
    assert!(held >= 10, "{held} of 20 calls got the held failure");
    assert!(
        attempts as u64 <= took.as_secs() + 2,
        "20 calls in {took:?} made {attempts} exchanges"
    );
    // The assertion, like the access token, never reaches the log.
    let assertion = endpoint.exchanges()[0].fields["assertion"].clone();
    assert!(!world.agent.logs.contains(&assertion));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_endpoint_that_is_down_slow_or_talks_garbage_gives_clear_errors_then_recovers()
-> Result<()> {
    let dir = TempDir::new("jwt-x-faults")?;
    let (private, public) = postern_tests::pki::ec256(dir.path())?;
    dir.write_private("ec.pem", &private)?;
    let config = endpoint_config(&public, Algorithm::ES256, ExpiresIn::Number(3600))?;
    let endpoint = TokenEndpoint::start(config.clone()).await?;
    // `timeout = "5s"` bounds the exchange too.
    let world = World::start(dir, &endpoint.connection("erp", "ES256", "ec.pem", "", "")).await?;
    let garbage = |status, content_type, body| {
        Some(Fault::Answer {
            status,
            content_type,
            body,
        })
    };
    // Each fault is asked anew: a failure is handed on to the calls within a second of it.
    let held = REFRESH_RETRY + Duration::from_millis(100);
    for (fault, expected) in [
        (
            garbage(200, "text/plain", "welcome to the proxy"),
            "the body is not a JSON object: welcome to the proxy",
        ),
        (
            garbage(200, "application/json", "{\"token_type\":\"bearer\"}"),
            "no access_token string in the JSON",
        ),
        (
            garbage(200, "application/json", "{\"access_token\":\"\"}"),
            "its access_token is empty",
        ),
        (
            garbage(503, "text/html", "<html>maintenance</html>"),
            "answered HTTP 503 without an OAuth error: <html>maintenance</html>",
        ),
        (
            garbage(200, "application/json", "{\"access_token\":\"a b\"}"),
            "the access_token holds characters a header cannot carry",
        ),
        (
            Some(Fault::Slow(Duration::from_secs(8))),
            "did not answer within 5s",
        ),
    ] {
        endpoint.set_fault(fault);
        tokio::time::sleep(held).await;
        let started = Instant::now();
        let response = world.post("erp", "/x", "").await?;
        let took = started.elapsed();
        let (status, body) = json_of(response).await?;
        assert_eq!(status, 502, "{body}");
        assert_eq!(body["error"]["code"], "token_exchange_failed");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(expected),
            "{expected:?} not in {message:?}"
        );
        assert!(took < Duration::from_secs(7), "answered after {took:?}");
    }
    assert!(
        endpoint.calls().is_empty(),
        "no call went out without a token"
    );

    // Down: nothing listens on its port.
    let addr = endpoint.addr;
    endpoint.stop().await;
    tokio::time::sleep(held).await;
    let (status, body) = json_of(world.post("erp", "/x", "").await?).await?;
    assert_eq!(status, 502, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("cannot reach token endpoint"), "{message}");

    // Back on the same address and sane again: the next call a second later exchanges and
    // goes through; no failure was kept longer.
    let endpoint = TokenEndpoint::start_on(addr, config).await?;
    tokio::time::sleep(held).await;
    let (status, body) = json_of(world.post("erp", "/x", "").await?).await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(endpoint.exchanges().len(), 1);
    assert_eq!(endpoint.calls().len(), 1);
    Ok(())
}

/// A connection test whose cached token the API now refuses (a provider's key rotated)
/// drops it and goes once more with a new one, as a call does, rather than fail on what
/// the next call would mend.
#[tokio::test(flavor = "multi_thread")]
async fn a_connection_test_replaces_a_refused_cached_token() -> Result<()> {
    let (endpoint, world) = es256_world("jwt-x-test-401", "erp", |_| {}).await?;
    let (status, body) = json_of(world.post("erp", "/warm", "").await?).await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(endpoint.exchanges().len(), 1);
    endpoint.revoke_all();
    let (status, report) = json_of(world.api.connection_test("edge", "erp").await?).await?;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["status"], 200, "{report}");
    let http = report["steps"]
        .as_array()
        .and_then(|steps| steps.iter().find(|s| s["name"] == "http"))
        .cloned()
        .unwrap_or_default();
    assert!(
        http["detail"]
            .as_str()
            .is_some_and(|d| d.contains("the cached token was refused, and replaced")),
        "{report}"
    );
    assert_eq!(endpoint.exchanges().len(), 2);
    Ok(())
}
