//! The relay's Prometheus metrics (prometheus-client, OpenMetrics text): sessions,
//! refused logins, calls by status class, broken answers, call durations and body bytes.

use std::time::Duration;

use postern_protocol::ErrorCode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Upper bounds (seconds) of the call duration histogram's buckets.
pub const DURATION_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// The content type of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Label values are fixed words, never user input.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Class {
    class: &'static str,
}

/// A call postern answered with its own error: who answered (`relay`, `agent`) and the
/// code (`other` for one this relay does not know, so an agent cannot grow the series).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    by: &'static str,
    code: &'static str,
}

/// Where an answer that broke off after its head broke, as far as the relay can tell.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BreakCause {
    cause: &'static str,
}

impl BreakCause {
    /// The agent ended the answer early while its session lived on: its internal server's
    /// answer broke off, or the agent cut it (its log says which).
    pub const AGENT: Self = Self { cause: "agent" };
    /// The agent's session ended under the answer.
    pub const TUNNEL_LOST: Self = Self {
        cause: "tunnel_lost",
    };
}

pub struct Metrics {
    registry: Registry,
    agents_online: Gauge,
    sessions_opened: Counter,
    sessions_closed: Family<Reason, Counter>,
    auth_failures: Family<Reason, Counter>,
    api_key_refusals: Family<Reason, Counter>,
    calls: Family<Class, Counter>,
    calls_broken: Family<BreakCause, Counter>,
    call_errors: Family<ErrorLabels, Counter>,
    call_duration: Histogram,
    bytes_in: Counter,
    bytes_out: Counter,
    channels_opened: Counter,
    /// Registered only when the API serves TLS: a 0 would read as expired in 1970.
    tls_expiry: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new(false)
    }
}

impl Metrics {
    /// With `tls`, the API certificate's end is exported too.
    pub fn new(tls: bool) -> Self {
        let m = Self {
            registry: Registry::with_prefix("postern"),
            agents_online: Gauge::default(),
            sessions_opened: Counter::default(),
            sessions_closed: Family::default(),
            auth_failures: Family::default(),
            api_key_refusals: Family::default(),
            calls: Family::default(),
            calls_broken: Family::default(),
            call_errors: Family::default(),
            call_duration: Histogram::new(DURATION_BUCKETS),
            bytes_in: Counter::default(),
            bytes_out: Counter::default(),
            channels_opened: Counter::default(),
            tls_expiry: Gauge::default(),
        };
        let mut registry = m.registry;
        registry.register(
            "agents_online",
            "Agents with a live session",
            m.agents_online.clone(),
        );
        registry.register(
            "sessions_opened",
            "Agent sessions authenticated",
            m.sessions_opened.clone(),
        );
        registry.register(
            "sessions_closed",
            "Agent sessions ended, by reason",
            m.sessions_closed.clone(),
        );
        registry.register(
            "auth_failures",
            "Refused agent logins, by reason",
            m.auth_failures.clone(),
        );
        registry.register(
            "api_key_refusals",
            "API requests refused for their key (401), by reason: missing, malformed, unknown, revoked",
            m.api_key_refusals.clone(),
        );
        registry.register(
            "calls",
            "Calls by the HTTP status class the caller got; abandoned by the caller, or cut off by the relay's shutdown, before an answer",
            m.calls.clone(),
        );
        registry.register(
            "calls_broken",
            "Calls whose answer broke off after its head (counted in calls by that head's status too), by cause: agent, tunnel_lost",
            m.calls_broken.clone(),
        );
        registry.register(
            "call_errors",
            "Calls answered with postern's own error (x-postern-error), by who answered (relay, agent) and code; the rest of a status class is the internal servers' answers",
            m.call_errors.clone(),
        );
        registry.register(
            "call_duration_seconds",
            "Time from a call's arrival to its response headers",
            m.call_duration.clone(),
        );
        registry.register(
            "call_request_bytes",
            "Request body bytes from callers forwarded to agents",
            m.bytes_in.clone(),
        );
        registry.register(
            "call_response_bytes",
            "Response body bytes from agents forwarded to callers",
            m.bytes_out.clone(),
        );
        registry.register(
            "call_channels_opened",
            "SSH channels opened to carry calls (pooled: far fewer than calls under steady load)",
            m.channels_opened.clone(),
        );
        // At 0 from the start, so a rate over them has a beginning.
        for cause in [BreakCause::AGENT, BreakCause::TUNNEL_LOST] {
            let _ = m.calls_broken.get_or_create(&cause);
        }
        if tls {
            registry.register_with_unit(
                "tls_certificate_expiry",
                "When the API's TLS certificate served now expires (Unix time)",
                prometheus_client::registry::Unit::Seconds,
                m.tls_expiry.clone(),
            );
        }
        Self { registry, ..m }
    }

    /// The end of the certificate the API serves now (start, and each reload).
    pub fn tls_certificate_expires(&self, at: std::time::SystemTime) {
        let unix = match at.duration_since(std::time::SystemTime::UNIX_EPOCH) {
            Ok(after) => i64::try_from(after.as_secs()).unwrap_or(i64::MAX),
            Err(before) => -i64::try_from(before.duration().as_secs()).unwrap_or(i64::MAX),
        };
        self.tls_expiry.set(unix);
    }
    pub fn session_opened(&self) {
        self.sessions_opened.inc();
    }

    pub fn session_closed(&self, reason: &str) {
        self.sessions_closed
            .get_or_create(&Reason {
                reason: close_reason_label(reason),
            })
            .inc();
    }

    pub fn auth_failed(&self, reason: &'static str) {
        self.auth_failures.get_or_create(&Reason { reason }).inc();
    }

    /// An API request refused for its key: a spray of guessed keys shows here.
    pub fn api_key_refused(&self, reason: &'static str) {
        self.api_key_refusals
            .get_or_create(&Reason { reason })
            .inc();
    }

    /// One finished call: its status and the time to its response headers.
    pub fn call_finished(&self, status: u16, took: Duration) {
        let class = match status {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        self.calls.get_or_create(&Class { class }).inc();
        self.call_duration.observe(took.as_secs_f64());
    }

    /// One call answered with postern's own error `code` by `by` (`relay` or `agent`):
    /// a 502 or 429 alone does not say whether the tunnel, the agent's side or the
    /// internal server answered.
    pub fn call_error(&self, by: &'static str, code: &str) {
        let code = ErrorCode::ALL
            .into_iter()
            .map(ErrorCode::as_str)
            .find(|known| *known == code)
            .unwrap_or("other");
        self.call_errors
            .get_or_create(&ErrorLabels { by, code })
            .inc();
    }

    /// One call whose caller went away before its answer's head (it hung up while it
    /// waited, or its request body broke off): it got no status, so it has its own class.
    /// Not in the duration histogram, which measures the time to an answer's head.
    pub fn call_abandoned(&self) {
        self.calls
            .get_or_create(&Class { class: "abandoned" })
            .inc();
    }

    /// One call the relay's shutdown cut off before its answer's head: no status either,
    /// and not its caller's doing.
    pub fn call_cut_off(&self) {
        self.calls.get_or_create(&Class { class: "cut_off" }).inc();
    }

    /// One call whose answer broke off after its head had gone to the caller with its
    /// status: counted beside that status, which cannot be taken back.
    pub fn call_broke_off(&self, cause: BreakCause) {
        self.calls_broken.get_or_create(&cause).inc();
    }

    /// Body bytes received from callers (and sent on to agents).
    pub fn add_bytes_in(&self, n: usize) {
        self.bytes_in.inc_by(n as u64);
    }

    /// Body bytes received from agents (and sent on to callers).
    pub fn add_bytes_out(&self, n: usize) {
        self.bytes_out.inc_by(n as u64);
    }

    /// The counter a session's channel pool counts its new channels in.
    pub fn channels_opened(&self) -> Counter {
        self.channels_opened.clone()
    }

    /// The OpenMetrics text ([`CONTENT_TYPE`]).
    pub fn render(&self, agents_online: usize) -> String {
        self.agents_online
            .set(i64::try_from(agents_online).unwrap_or(i64::MAX));
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

/// Free-text reasons (some carry error details) become a few fixed labels.
pub fn close_reason_label(reason: &str) -> &'static str {
    let known: [(&str, &'static str); 7] = [
        ("replaced", "replaced"),
        ("revoked", "revoked"),
        ("rotated", "token_rotated"),
        ("shutting down", "relay_shutdown"),
        ("hello", "hello_refused"),
        ("closed the connection", "agent_closed"),
        ("lost", "connection_lost"),
    ];
    known
        .iter()
        .find(|(needle, _)| reason.contains(needle))
        .map_or("other", |(_, label)| label)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_labels_and_a_cumulative_histogram() {
        let m = Metrics::default();
        m.session_opened();
        m.session_closed("replaced by a newer session of the same agent");
        m.session_closed("connection lost: keepalive timeout");
        m.auth_failed("unknown_token");
        m.call_finished(200, Duration::from_millis(30));
        m.call_finished(503, Duration::from_secs(3));
        m.call_abandoned();
        m.call_broke_off(BreakCause::TUNNEL_LOST);
        m.call_error("agent", "upstream_unreachable");
        m.call_error("agent", "made_up_by_an_agent");
        m.add_bytes_in(10);
        let text = m.render(4);
        for line in [
            "postern_agents_online 4",
            "postern_sessions_opened_total 1",
            "postern_sessions_closed_total{reason=\"replaced\"} 1",
            "postern_sessions_closed_total{reason=\"connection_lost\"} 1",
            "postern_auth_failures_total{reason=\"unknown_token\"} 1",
            "postern_calls_total{class=\"2xx\"} 1",
            "postern_calls_total{class=\"5xx\"} 1",
            "postern_calls_total{class=\"abandoned\"} 1",
            "postern_calls_broken_total{cause=\"tunnel_lost\"} 1",
            "postern_call_errors_total{by=\"agent\",code=\"upstream_unreachable\"} 1",
            "postern_call_errors_total{by=\"agent\",code=\"other\"} 1",
            "postern_call_duration_seconds_bucket{le=\"0.025\"} 0",
            "postern_call_duration_seconds_bucket{le=\"0.05\"} 1",
            "postern_call_duration_seconds_bucket{le=\"5.0\"} 2",
            "postern_call_duration_seconds_bucket{le=\"+Inf\"} 2",
            "postern_call_duration_seconds_count 2",
            "postern_call_request_bytes_total 10",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
    }
}
