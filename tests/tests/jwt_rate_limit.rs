//! Per-connection rate limits end to end: the token bucket's burst and queue, `max_wait`
//! (and the relay's `call_timeout`) turning into 429 `rate_limited`, and an upstream's
//! `Retry-After` or used-up rate-limit window (on a 429 or a 403, not on a 200) pausing the
//! connection.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use postern_tests::harness::{
    AgentProcess, Api, Bins, RelayProcess, agent_cli, agent_config, agent_metrics, create_agent,
    create_api_key, status_json, stdout,
};
use postern_tests::internal_server::serve_until_cancelled;
use postern_tests::relay_support::ONLINE_WITHIN;
use postern_tests::temp::TempDir;

fn bins() -> Bins {
    postern_tests::bins!()
}

/// An upstream that answers 200, except:
/// - the first call to `/api/limited/{secs}` and `/api/secondary/{secs}`: 429 and 403
///   with `Retry-After: {secs}`;
/// - the first call to `/api/reset/{secs}`, `/api/forbidden/{secs}` and `/api/spent/{secs}`:
///   429, 403 and 200, each saying its window is used up until {secs} from now;
/// - `/api/denied`: a plain 403;
/// - `/api/calls-left/{status}`: {status}, its window with calls left.
///
/// It records when each call arrived.
#[derive(Clone, Default)]
struct Upstream {
    limited_once: Arc<Mutex<HashSet<String>>>,
    arrivals: Arc<Mutex<Vec<(String, Instant)>>>,
}

async fn upstream(State(state): State<Upstream>, request: Request) -> Response {
    let path = request.uri().path().to_owned();
    if let Ok(mut a) = state.arrivals.lock() {
        a.push((path.clone(), Instant::now()));
    }
    let used_up = [
        ("/api/reset/", StatusCode::TOO_MANY_REQUESTS),
        ("/api/forbidden/", StatusCode::FORBIDDEN),
        ("/api/spent/", StatusCode::OK),
    ];
    for (prefix, status) in used_up {
        if let Some(secs) = path.strip_prefix(prefix)
            && let Ok(secs) = secs.parse::<u64>()
            && first_time(&state, &path)
        {
            // GitHub's way: no Retry-After, the Unix time the limit resets at.
            return (status, window(0, secs), "window used up").into_response();
        }
    }
    if path == "/api/denied" {
        return (StatusCode::FORBIDDEN, "not yours").into_response();
    }
    if let Some(status) = path.strip_prefix("/api/calls-left/")
        && let Ok(status) = status.parse::<StatusCode>()
    {
        return (status, window(5, 30), "calls left").into_response();
    }
    // A 429 with Retry-After; a 403 with it, as GitHub's secondary limit answers.
    let asked = [
        ("/api/limited/", StatusCode::TOO_MANY_REQUESTS),
        ("/api/secondary/", StatusCode::FORBIDDEN),
    ];
    for (prefix, status) in asked {
        if let Some(secs) = path.strip_prefix(prefix)
            && first_time(&state, &path)
        {
            return (status, [("retry-after", secs.to_owned())], "slow down").into_response();
        }
    }
    (StatusCode::OK, "ok").into_response()
}

/// A rate-limit window as GitHub describes it: calls left, and the Unix time it resets.
fn window(remaining: u32, resets_in_secs: u64) -> [(&'static str, String); 2] {
    let at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        + Duration::from_secs(resets_in_secs);
    [
        ("x-ratelimit-remaining", remaining.to_string()),
        ("x-ratelimit-reset", at.as_secs().to_string()),
    ]
}

fn first_time(state: &Upstream, path: &str) -> bool {
    state
        .limited_once
        .lock()
        .map(|mut seen| seen.insert(path.to_owned()))
        .unwrap_or(false)
}

struct World {
    _dir: TempDir,
    bins: Bins,
    config: std::path::PathBuf,
    _relay: RelayProcess,
    agent: AgentProcess,
    api: Api,
    upstream: Upstream,
    _stop: tokio_util::sync::DropGuard,
}

impl World {
    /// `connections(base_uri)` gives the agent's connection tables.
    async fn start(connections: impl Fn(&str) -> String) -> Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr: SocketAddr = listener.local_addr()?;
        let state = Upstream::default();
        let app = Router::new().fallback(upstream).with_state(state.clone());
        let stop = serve_until_cancelled(listener, app);
        let dir = TempDir::new("jwt-rate")?;
        let bins = bins();
        let relay_state = dir.path().join("relay");
        let relay = RelayProcess::start(&bins, &relay_state, "127.0.0.1:0", "127.0.0.1:0")?;
        let (_id, token) = create_agent(&bins, &relay_state, "edge")?;
        let api_key = create_api_key(&bins, &relay_state, "platform")?;
        let config = dir.write_private(
            "agent.toml",
            &agent_config(
                relay.ssh,
                &relay.fingerprint,
                &token,
                &format!(
                    "metrics_listen = \"127.0.0.1:0\"\n{}",
                    connections(&format!("http://{addr}/api"))
                ),
            ),
        )?;
        let agent = AgentProcess::start(&bins, &config)?;
        let api = Api::new(relay.api_base(), api_key);
        api.wait_online("edge", true, ONLINE_WITHIN).await?;
        Ok(Self {
            _dir: dir,
            bins,
            config,
            _relay: relay,
            agent,
            api,
            upstream: state,
            _stop: stop.drop_guard(),
        })
    }

    /// Calls `path` on `connection` and asserts the agent refused it as paused for the
    /// ~30 s an answer before asked (`rate_limited`, `Retry-After`).
    async fn refused_for_30_s(&self, connection: &str, path: &str) -> Result<reqwest::Response> {
        let r = self.api.call("edge", connection, path).await?;
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()["x-postern-error"], "rate_limited");
        let retry_after: u64 = r.headers()["retry-after"].to_str()?.parse()?;
        assert!((27..=31).contains(&retry_after), "{retry_after}");
        Ok(r)
    }

    /// `postern status`: the pause under way on `connection` as `--json` gives it (`null`
    /// when none), after checking the text says the same.
    async fn pause_shown(&self, connection: &str) -> Result<serde_json::Value> {
        let (bins, config) = (self.bins.clone(), self.config.clone());
        let (json, text) = tokio::task::spawn_blocking(move || -> Result<_> {
            let json = status_json(&bins, &config)?;
            let text = stdout(&agent_cli(&bins, &config, &["status"])?);
            Ok((json, text))
        })
        .await??;
        let paused = json["connections"][connection]["paused"].clone();
        let line = text
            .lines()
            .skip_while(|l| l.split_whitespace().next() != Some(connection))
            .nth(1)
            .filter(|l| l.trim_start().starts_with("paused until"));
        match paused.as_object() {
            Some(p) => {
                let said = format!(
                    "    paused until {}, as the internal server's {} asked ({}): calls wait for its end within max_wait, else get 429 rate_limited",
                    p["until"].as_str().unwrap_or_default(),
                    p["status"],
                    p["header"].as_str().unwrap_or_default()
                );
                assert_eq!(line, Some(said.as_str()), "{text}");
            }
            None => assert_eq!(line, None, "{text}"),
        }
        Ok(paused)
    }

    fn arrivals(&self, prefix: &str) -> Vec<Instant> {
        self.upstream
            .arrivals
            .lock()
            .map(|a| {
                a.iter()
                    .filter(|(p, _)| p.starts_with(prefix))
                    .map(|(_, t)| *t)
                    .collect()
            })
            .unwrap_or_default()
    }
}

fn connection(name: &str, base_uri: &str, extra: &str) -> String {
    format!("\n[connections.{name}]\nbase_uri = \"{base_uri}\"\ntimeout = \"5s\"\n{extra}\n")
}

#[tokio::test(flavor = "multi_thread")]
async fn over_the_burst_with_no_wait_is_rate_limited() -> Result<()> {
    let w = World::start(|base| {
        connection(
            "slow",
            base,
            "rate_limit = { requests = 1, per = \"1m\", burst = 2 }\nmax_wait = \"0s\"",
        )
    })
    .await?;
    for i in 0..2 {
        let r = w.api.call("edge", "slow", &format!("/burst/{i}")).await?;
        assert_eq!(r.status(), 200, "call {i} is within the burst");
    }
    let r = w.api.call("edge", "slow", "/burst/2").await?;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["x-postern-error"], "rate_limited");
    // One call a minute, a burst of 2 spent: the next turn is about a minute away (whole
    // seconds, rounded up), which a caller's client can wait for instead of retrying.
    let retry_after: u64 = r.headers()["retry-after"].to_str()?.parse()?;
    assert!((50..=60).contains(&retry_after), "{retry_after}");
    let body: serde_json::Value = r.json().await?;
    assert_eq!(body["error"]["code"], "rate_limited");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("connection slow: it is over its rate limit; the call would wait")
            && message.ends_with("longer than max_wait (0s)"),
        "{message}"
    );
    assert_eq!(
        w.arrivals("/api/burst").len(),
        2,
        "the refused call never left the agent"
    );
    Ok(())
}

/// A call does not queue longer than leaves the internal server its `timeout` before the
/// relay gives up on the call (its `call_timeout`, 120 s by default): sent after the relay
/// answered 504, it would still be acted on, and the caller's retry would do it again.
#[tokio::test(flavor = "multi_thread")]
async fn no_call_waits_past_what_the_relays_call_timeout_leaves() -> Result<()> {
    let w = World::start(|base| {
        format!(
            "\n[connections.late]\nbase_uri = \"{base}\"\ntimeout = \"100s\"\nrate_limit = {{ requests = 1, per = \"30s\", burst = 1 }}\nmax_wait = \"1m\"\n"
        )
    })
    .await?;
    let r = w.api.call("edge", "late", "/first").await?;
    assert_eq!(r.status(), 200);
    // Its turn is 30 s away, within max_wait; but 120 s - 100 s leaves it 20 s.
    let asked = Instant::now();
    let r = w.api.call("edge", "late", "/second").await?;
    assert_eq!(r.status(), 429, "it waited {:?}", asked.elapsed());
    assert!(asked.elapsed() < Duration::from_secs(5));
    let body: serde_json::Value = r.json().await?;
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("longer than 20s: max_wait is 60s, but the relay gives up on a call after 120s (its call_timeout)"),
        "{message}"
    );
    assert_eq!(w.arrivals("/api/second").len(), 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn calls_over_the_limit_wait_their_turn() -> Result<()> {
    let w = World::start(|base| {
        connection(
            "paced",
            base,
            "rate_limit = { requests = 10, per = \"1s\", burst = 1 }\nmax_wait = \"5s\"",
        )
    })
    .await?;
    let started = Instant::now();
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..6 {
        let api = w.api.clone();
        calls.spawn(async move { api.call("edge", "paced", &format!("/paced/{i}")).await });
    }
    while let Some(r) = calls.join_next().await {
        assert_eq!(r??.status(), 200);
    }
    let elapsed = started.elapsed();
    // One at once, then one per 100 ms: the sixth goes out about 500 ms after the first.
    assert!(elapsed >= Duration::from_millis(450), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(4), "{elapsed:?}");
    let mut arrivals = w.arrivals("/api/paced");
    arrivals.sort();
    assert_eq!(arrivals.len(), 6);
    let spread = arrivals[5].duration_since(arrivals[0]);
    // The sixth leaves the agent 500 ms after the first; the way to the internal server
    // may take the first call up to 100 ms longer (unpaced, all six arrive together).
    assert!(spread >= Duration::from_millis(400), "spread {spread:?}");
    Ok(())
}

/// Callers that hang up while their calls wait their turn (a platform whose HTTP client
/// gives up sooner than `max_wait`) leave their turns to the calls after them: before
/// 2026-12-07 each such turn stayed taken, and with callers that kept giving up the
/// internal server got next to no calls while the limit allowed them.
#[tokio::test(flavor = "multi_thread")]
async fn turns_of_callers_that_hang_up_go_to_the_next_calls() -> Result<()> {
    let w = World::start(|base| {
        connection(
            "queued",
            base,
            "rate_limit = { requests = 2, per = \"1s\", burst = 1 }\nmax_wait = \"10s\"",
        )
    })
    .await?;
    let r = w.api.call("edge", "queued", "/left/first").await?;
    assert_eq!(r.status(), 200);
    let started = Instant::now();
    // Six callers queue (their turns 0.5 to 3 s away) and give up after 300 ms.
    let mut leaving = tokio::task::JoinSet::new();
    for i in 0..6 {
        let request = w
            .api
            .http
            .get(format!(
                "{}/v1/agents/edge/connections/queued/http/left/{i}",
                w.api.base
            ))
            .bearer_auth(&w.api.key)
            .timeout(Duration::from_millis(300));
        leaving.spawn(request.send());
    }
    while let Some(gone) = leaving.join_next().await {
        assert!(
            gone?.is_err_and(|e| e.is_timeout()),
            "a caller got an answer"
        );
    }
    // The next call goes at the first turn they left, not behind all six.
    let r = w.api.call("edge", "queued", "/after").await?;
    assert_eq!(r.status(), 200);
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_millis(1500),
        "it went after {waited:?}"
    );
    assert_eq!(
        w.arrivals("/api/left").len(),
        1,
        "a call whose caller hung up was sent"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_retry_after_pauses_the_connection() -> Result<()> {
    let w = World::start(|base| {
        let mut c = connection("short", base, "max_wait = \"5s\"");
        c.push_str(&connection("long", base, "max_wait = \"2s\""));
        c
    })
    .await?;
    // The upstream's own 429 comes back as it was sent…
    let r = w.api.call("edge", "short", "/limited/1").await?;
    assert_eq!(r.status(), 429);
    assert!(r.headers().get("x-postern-error").is_none());
    assert_eq!(r.headers()["retry-after"], "1");
    let paused_at = Instant::now();
    // …and the next call on that connection waits out the pause.
    let r = w.api.call("edge", "short", "/after").await?;
    assert_eq!(r.status(), 200);
    let waited = paused_at.elapsed();
    assert!(waited >= Duration::from_millis(800), "{waited:?}");
    assert!(waited < Duration::from_secs(4), "{waited:?}");

    // A pause longer than max_wait is refused at once, and only on its own connection.
    let r = w.api.call("edge", "long", "/limited/30").await?;
    assert_eq!(r.status(), 429);
    let refused_at = Instant::now();
    let r = w.api.call("edge", "long", "/x").await?;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["x-postern-error"], "rate_limited");
    assert!(refused_at.elapsed() < Duration::from_secs(2));
    // Said as the internal server's pause (this connection has no rate_limit), with
    // what is left of it.
    let retry_after: u64 = r.headers()["retry-after"].to_str()?.parse()?;
    assert!((27..=30).contains(&retry_after), "{retry_after}");
    let body: serde_json::Value = r.json().await?;
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with(
            "connection long: the internal server asked for a pause (its Retry-After, or the reset of a rate-limit window it said was used up)"
        ),
        "{message}"
    );
    let r = w.api.call("edge", "short", "/x").await?;
    assert_eq!(r.status(), 200, "other connections are not paused");

    // `postern status` shows the pause under way, until when and what asked for it; the
    // other connection's pause is over.
    let paused = w.pause_shown("long").await?;
    assert_eq!(paused["status"], 429, "{paused}");
    assert_eq!(paused["header"], "Retry-After", "{paused}");
    let until = humantime::parse_rfc3339(paused["until"].as_str().unwrap_or_default())?;
    let left = until.duration_since(SystemTime::now())?;
    assert!(
        left > Duration::from_secs(20) && left <= Duration::from_secs(30),
        "{left:?}"
    );
    assert!(w.pause_shown("short").await?.is_null());
    Ok(())
}

/// An API that says when its limit resets (`X-RateLimit-Reset`, a Unix time) but sends no
/// `Retry-After` pauses the connection until then, as GitHub's does: the calls after it
/// are not sent into the limit.
#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_rate_limit_reset_pauses_the_connection_too() -> Result<()> {
    let w = World::start(|base| {
        let mut c = connection("waits", base, "max_wait = \"10s\"");
        c.push_str(&connection("hurries", base, "max_wait = \"1s\""));
        c
    })
    .await?;
    let r = w.api.call("edge", "hurries", "/reset/30").await?;
    assert_eq!(r.status(), 429);
    assert!(
        r.headers().get("x-postern-error").is_none(),
        "passed on as it came"
    );
    let r = w.api.call("edge", "hurries", "/x").await?;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["x-postern-error"], "rate_limited");
    let retry_after: u64 = r.headers()["retry-after"].to_str()?.parse()?;
    assert!((27..=31).contains(&retry_after), "{retry_after}");
    assert!(w.arrivals("/api/x").is_empty(), "sent into the limit");

    // A reset 2 s ahead (whole seconds: 1–2 s): the next call waits for it, then goes.
    let r = w.api.call("edge", "waits", "/reset/2").await?;
    assert_eq!(r.status(), 429);
    let paused_at = Instant::now();
    let r = w.api.call("edge", "waits", "/after").await?;
    assert_eq!(r.status(), 200);
    let waited = paused_at.elapsed();
    assert!(waited >= Duration::from_millis(700), "{waited:?}");
    assert!(waited < Duration::from_secs(5), "{waited:?}");
    Ok(())
}

/// GitHub refuses a used-up limit with a 403 that says so (`X-RateLimit-Remaining: 0` and
/// the reset; its secondary limit, `Retry-After`): the calls after it are not sent into
/// the limit, where integrations that keep calling get banned. A 403 that does not say
/// so refuses access and pauses nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_403_that_says_its_limit_is_used_up_pauses_the_connection() -> Result<()> {
    let w = World::start(|base| {
        let mut c = connection("refused", base, "max_wait = \"0s\"");
        c.push_str(&connection("secondary", base, "max_wait = \"0s\""));
        c.push_str(&connection("denied", base, "max_wait = \"0s\""));
        c
    })
    .await?;
    let r = w.api.call("edge", "secondary", "/secondary/30").await?;
    assert_eq!(r.status(), 403);
    assert_eq!(r.headers()["retry-after"], "30");
    w.refused_for_30_s("secondary", "/w").await?;
    assert!(w.arrivals("/api/w").is_empty(), "sent into the limit");

    let r = w.api.call("edge", "refused", "/forbidden/30").await?;
    assert_eq!(r.status(), 403);
    assert!(
        r.headers().get("x-postern-error").is_none(),
        "passed on as it came"
    );
    assert_eq!(r.headers()["x-ratelimit-remaining"], "0");
    let r = w.refused_for_30_s("refused", "/x").await?;
    let body: serde_json::Value = r.json().await?;
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("connection refused: the internal server asked for a pause"),
        "{message}"
    );
    assert!(w.arrivals("/api/x").is_empty(), "sent into the limit");
    let paused = w.pause_shown("refused").await?;
    assert_eq!(
        (&paused["status"], &paused["header"]),
        (&403.into(), &"X-RateLimit-Reset".into()),
        "{paused}"
    );
    let paused = w.pause_shown("secondary").await?;
    assert_eq!(
        (&paused["status"], &paused["header"]),
        (&403.into(), &"Retry-After".into()),
        "{paused}"
    );

    // With max_wait 0 s, any pause would refuse the next call at once.
    for path in ["/denied", "/calls-left/403"] {
        let r = w.api.call("edge", "denied", path).await?;
        assert_eq!(r.status(), 403, "{path}");
        let r = w.api.call("edge", "denied", "/y").await?;
        assert_eq!(r.status(), 200, "paused by {path}");
    }
    assert_eq!(w.arrivals("/api/y").len(), 2);
    assert!(
        w.pause_shown("denied").await?.is_null(),
        "a refusal of access"
    );
    let metrics = agent_metrics(w.agent.metrics_port()?).await?;
    for (connection, pauses) in [("secondary", 1), ("refused", 1), ("denied", 0)] {
        let line = format!(
            "postern_agent_upstream_pauses_total{{connection=\"{connection}\"}} {pauses}\n"
        );
        assert!(metrics.contains(&line), "no {line} in:\n{metrics}");
    }
    Ok(())
}

/// An answer that refused nothing pauses nothing, even one that says its window is used
/// up (`X-RateLimit-Remaining: 0` and the reset): APIs keep several windows.
#[tokio::test(flavor = "multi_thread")]
async fn an_answer_that_is_no_refusal_pauses_nothing() -> Result<()> {
    // With max_wait 0 s, any pause would refuse the next call at once.
    let w = World::start(|base| connection("counts", base, "max_wait = \"0s\"")).await?;
    // Its window used up, but the call was served: another window (GitHub's `core`
    // beside its `search`) may still take the next one, which would say if it is refused.
    let r = w.api.call("edge", "counts", "/spent/30").await?;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-ratelimit-remaining"], "0");
    assert_eq!(r.text().await?, "window used up");
    let r = w.api.call("edge", "counts", "/after-spent").await?;
    assert_eq!(r.status(), 200, "paused by an answer that refused nothing");
    let r = w.api.call("edge", "counts", "/calls-left/200").await?;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-ratelimit-remaining"], "5");
    let r = w.api.call("edge", "counts", "/z").await?;
    assert_eq!(r.status(), 200, "paused by a window with calls left");
    Ok(())
}
