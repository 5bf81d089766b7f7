//! The agent's optional Prometheus metrics (`metrics_listen`, loopback only): calls by
//! connection and status, answers broken off, pauses internal servers asked for, call
//! durations, token exchanges, tunnel state, reconnects and config reloads.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Method, Request, Response, StatusCode, header::CONTENT_TYPE};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::warn;

use crate::tunnel::TunnelState;

/// Upper bounds (seconds) of the call duration histogram's buckets.
pub const DURATION_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    connection: String,
    status: u16,
    /// postern's error code when the answer is postern's own (`rate_limited`,
    /// `token_exchange_failed`…), `none` when it is the internal server's, `abandoned`
    /// for a call the relay gave up on: a 429 or 502 alone does not say whose it was.
    postern_error: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConnectionLabel {
    connection: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ExchangeLabels {
    connection: String,
    outcome: &'static str,
}

/// The token exchange counters of one connection (shared with the registry).
#[derive(Clone, Default)]
pub struct ExchangeCounters {
    pub ok: Counter,
    pub failed: Counter,
}

pub struct AgentMetrics {
    registry: Registry,
    connected: Gauge,
    reconnects: Counter,
    calls: Family<CallLabels, Counter>,
    answers_broken: Family<ConnectionLabel, Counter>,
    upstream_pauses: Family<ConnectionLabel, Counter>,
    call_duration: Family<ConnectionLabel, Histogram, fn() -> Histogram>,
    token_exchanges: Family<ExchangeLabels, Counter>,
    config_reloads: Family<OutcomeLabel, Counter>,
    config_last_reload_ok: Gauge,
    /// One render at a time: the reconnect counter catches up with the tunnel's count there.
    rendering: Mutex<()>,
}

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

impl Default for AgentMetrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("postern_agent");
        let connected = Gauge::default();
        let reconnects = Counter::default();
        let calls = Family::<CallLabels, Counter>::default();
        let answers_broken = Family::<ConnectionLabel, Counter>::default();
        let upstream_pauses = Family::<ConnectionLabel, Counter>::default();
        let call_duration =
            Family::<ConnectionLabel, Histogram, fn() -> Histogram>::new_with_constructor(
                duration_histogram,
            );
        let token_exchanges = Family::<ExchangeLabels, Counter>::default();
        let config_reloads = Family::<OutcomeLabel, Counter>::default();
        // Both outcomes from the start, so a rate or an alert has a series before the first.
        for outcome in ["ok", "refused"] {
            let _ = config_reloads.get_or_create(&OutcomeLabel { outcome });
        }
        let config_last_reload_ok = Gauge::default();
        config_last_reload_ok.set(1);
        registry.register(
            "connected",
            "1 while the tunnel to the relay is up",
            connected.clone(),
        );
        registry.register(
            "reconnects",
            "Sessions with the relay established (welcomed) after the first one; failed attempts do not count",
            reconnects.clone(),
        );
        registry.register(
            "calls",
            "Calls by connection and the HTTP status the caller got",
            calls.clone(),
        );
        registry.register(
            "answers_broken",
            "Calls whose answer broke off after its head, by connection: counted in calls by the head's status too, and failed (not served) in postern status",
            answers_broken.clone(),
        );
        registry.register(
            "upstream_pauses",
            "Pauses the internal servers asked for (a 429, or a 403 that says its limit is used up), by connection: each holds the connection's calls (postern status shows the one under way)",
            upstream_pauses.clone(),
        );
        registry.register(
            "call_duration_seconds",
            "Call duration until the answer's headers, by connection",
            call_duration.clone(),
        );
        registry.register(
            "token_exchanges",
            "RFC 7523 token exchanges by connection and outcome (ok, failed)",
            token_exchanges.clone(),
        );
        registry.register(
            "config_reloads",
            "Config reloads (SIGHUP or postern reload) by outcome (ok, refused)",
            config_reloads.clone(),
        );
        registry.register(
            "config_last_reload_ok",
            "0 while the last reload was refused (the file on disk is not in force, and a restart would refuse it too); 1 before any and after one that applied",
            config_last_reload_ok.clone(),
        );
        Self {
            registry,
            connected,
            reconnects,
            calls,
            answers_broken,
            upstream_pauses,
            call_duration,
            token_exchanges,
            config_reloads,
            config_last_reload_ok,
            rendering: Mutex::new(()),
        }
    }
}

impl AgentMetrics {
    pub fn call_finished(
        &self,
        connection: &str,
        status: u16,
        postern_error: &'static str,
        elapsed: Duration,
    ) {
        self.calls
            .get_or_create(&CallLabels {
                connection: connection.to_owned(),
                status,
                postern_error,
            })
            .inc();
        self.call_duration
            .get_or_create(&ConnectionLabel {
                connection: connection.to_owned(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// A reload of the config file, applied (`ok`) or refused.
    pub fn config_reloaded(&self, ok: bool) {
        let outcome = if ok { "ok" } else { "refused" };
        self.config_reloads
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
        self.config_last_reload_ok.set(i64::from(ok));
    }

    /// Shows a connection's broken answers and pauses at 0 from its start, so a rate has a
    /// beginning.
    pub fn connection_known(&self, connection: &str) {
        let label = ConnectionLabel {
            connection: connection.to_owned(),
        };
        let _ = self.answers_broken.get_or_create(&label);
        let _ = self.upstream_pauses.get_or_create(&label);
    }

    /// The internal server asked `connection` to pause.
    pub fn upstream_paused(&self, connection: &str) {
        self.upstream_pauses
            .get_or_create(&ConnectionLabel {
                connection: connection.to_owned(),
            })
            .inc();
    }

    /// A call whose answer broke off after its head went out with its status, which
    /// stays counted: this counter says the answer was not whole.
    pub fn answer_broke_off(&self, connection: &str) {
        self.answers_broken
            .get_or_create(&ConnectionLabel {
                connection: connection.to_owned(),
            })
            .inc();
    }

    pub fn exchange_counters(&self, connection: &str) -> ExchangeCounters {
        let counter = |outcome| {
            self.token_exchanges
                .get_or_create(&ExchangeLabels {
                    connection: connection.to_owned(),
                    outcome,
                })
                .clone()
        };
        ExchangeCounters {
            ok: counter("ok"),
            failed: counter("failed"),
        }
    }

    /// The OpenMetrics text, with the tunnel's state as of now.
    pub fn render(&self, state: &TunnelState) -> String {
        let _one_at_a_time = self.rendering.lock().unwrap_or_else(|p| p.into_inner());
        self.connected.set(i64::from(state.connected));
        let counted = self.reconnects.get();
        if state.reconnects > counted {
            self.reconnects.inc_by(state.reconnects - counted);
        }
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

/// Binds `addr`, which config validation has checked is a loopback address.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Scrapers at once; more wait in the listen queue. Any local user can reach the
/// listener: without a bound, held connections could take the agent's descriptors.
const MAX_CONNECTIONS: usize = 32;
/// How long a scraper's connection lasts (kept alive, it scrapes again on a new one after).
const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
/// How long a connection may take to finish its answer once the agent stops: a client
/// that stopped reading (a pipeline of requests, never read) must not hold up the stop.
const GOODBYE_LIMIT: Duration = Duration::from_secs(2);

/// Serves `GET /metrics` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<AgentMetrics>,
    state: watch::Receiver<TunnelState>,
    shutdown: CancellationToken,
) {
    let connections = TaskTracker::new();
    let turns = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (turn, stream) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = async {
                // Never closed: a permit always comes.
                let turn = turns.clone().acquire_owned().await.ok();
                (turn, listener.accept().await)
            } => match accepted {
                (turn, Ok((stream, _))) => (turn, stream),
                (_, Err(e)) => {
                    warn!(error = %e, "metrics accept failed");
                    // Out of descriptors, it fails again at once: not a spin.
                    tokio::time::sleep(crate::status::ACCEPT_RETRY).await;
                    continue;
                }
            },
        };
        let metrics = metrics.clone();
        let state = state.clone();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let _turn = turn;
            let service = service_fn(move |request: Request<Incoming>| {
                let response = answer(&request, &metrics, &state.borrow());
                async move { Ok::<_, std::convert::Infallible>(response) }
            });
            let connection = http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                // Bounded, or clients that never read would keep the turns for good.
                done = tokio::time::timeout(CONNECTION_LIFETIME, connection.as_mut()) => {
                    if done.is_ok() {
                        return;
                    }
                }
                _ = shutdown.cancelled() => {}
            }
            connection.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(GOODBYE_LIMIT, connection).await;
        });
    }
    connections.close();
    connections.wait().await;
}

fn answer(
    request: &Request<Incoming>,
    metrics: &AgentMetrics,
    state: &TunnelState,
) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (request.method(), request.uri().path()) {
        (&Method::GET, "/metrics") => (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.render(state),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "only GET /metrics is served here\n".to_owned(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = content_type.parse() {
        response.headers_mut().insert(CONTENT_TYPE, value);
    }
    response
}
