//! The relay's Prometheus metrics: counters kept in atomics and small maps, and
//! a hand-written text encoder (exposition format 0.0.4), no metrics crate.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (seconds) of the call duration histogram's buckets.
pub const DURATION_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// A counter per label value; label values are fixed words, never user input.
#[derive(Default)]
struct LabeledCounter(Mutex<BTreeMap<&'static str, u64>>);

impl LabeledCounter {
    fn add(&self, label: &'static str) {
        *self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(label)
            .or_default() += 1;
    }

    fn snapshot(&self) -> Vec<(&'static str, u64)> {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.iter().map(|(k, v)| (*k, *v)).collect()
    }
}

struct Histogram {
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            buckets: DURATION_BUCKETS.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }
}

#[derive(Default)]
pub struct Metrics {
    sessions_opened: AtomicU64,
    sessions_closed: LabeledCounter,
    auth_failures: LabeledCounter,
    calls: LabeledCounter,
    call_duration: Histogram,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
}

impl Metrics {
    pub fn session_opened(&self) {
        self.sessions_opened.fetch_add(1, Ordering::Relaxed);
    }

    pub fn session_closed(&self, reason: &str) {
        self.sessions_closed.add(close_reason_label(reason));
    }

    pub fn auth_failed(&self, reason: &'static str) {
        self.auth_failures.add(reason);
    }

    /// One finished call: its status and the time to its response headers.
    pub fn call_finished(&self, status: u16, took: Duration) {
        self.calls.add(match status {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        });
        let seconds = took.as_secs_f64();
        for (bound, bucket) in DURATION_BUCKETS.iter().zip(&self.call_duration.buckets) {
            if seconds <= *bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.call_duration.count.fetch_add(1, Ordering::Relaxed);
        self.call_duration
            .sum_micros
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    /// Body bytes received from callers (and sent on to agents).
    pub fn add_bytes_in(&self, n: usize) {
        self.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Body bytes received from agents (and sent on to callers).
    pub fn add_bytes_out(&self, n: usize) {
        self.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// The text exposition format.
    pub fn render(&self, agents_online: usize) -> String {
        let mut text = String::new();
        let _ = writeln!(
            text,
            "# HELP postern_agents_online Agents with a live session.\n# TYPE postern_agents_online gauge\npostern_agents_online {agents_online}"
        );
        let counters: [(&str, &str, u64); 3] = [
            (
                "postern_sessions_opened_total",
                "Agent sessions authenticated.",
                self.sessions_opened.load(Ordering::Relaxed),
            ),
            (
                "postern_call_request_bytes_total",
                "Request body bytes from callers forwarded to agents.",
                self.bytes_in.load(Ordering::Relaxed),
            ),
            (
                "postern_call_response_bytes_total",
                "Response body bytes from agents forwarded to callers.",
                self.bytes_out.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(
                text,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        }
        let labeled: [(&str, &str, &str, &LabeledCounter); 3] = [
            (
                "postern_sessions_closed_total",
                "Agent sessions ended, by reason.",
                "reason",
                &self.sessions_closed,
            ),
            (
                "postern_auth_failures_total",
                "Refused agent logins, by reason.",
                "reason",
                &self.auth_failures,
            ),
            (
                "postern_calls_total",
                "Calls answered, by HTTP status class.",
                "class",
                &self.calls,
            ),
        ];
        for (name, help, label, counter) in labeled {
            let _ = writeln!(text, "# HELP {name} {help}\n# TYPE {name} counter");
            for (value, count) in counter.snapshot() {
                let _ = writeln!(text, "{name}{{{label}=\"{value}\"}} {count}");
            }
        }
        let name = "postern_call_duration_seconds";
        let _ = writeln!(
            text,
            "# HELP {name} Time from a call's arrival to its response headers.\n# TYPE {name} histogram"
        );
        for (bound, bucket) in DURATION_BUCKETS.iter().zip(&self.call_duration.buckets) {
            let _ = writeln!(
                text,
                "{name}_bucket{{le=\"{bound}\"}} {}",
                bucket.load(Ordering::Relaxed)
            );
        }
        let count = self.call_duration.count.load(Ordering::Relaxed);
        let sum = self.call_duration.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(text, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(text, "{name}_sum {sum}");
        let _ = writeln!(text, "{name}_count {count}");
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
            "postern_call_duration_seconds_bucket{le=\"0.025\"} 0",
            "postern_call_duration_seconds_bucket{le=\"0.05\"} 1",
            "postern_call_duration_seconds_bucket{le=\"5\"} 2",
            "postern_call_duration_seconds_bucket{le=\"+Inf\"} 2",
            "postern_call_duration_seconds_count 2",
            "postern_call_request_bytes_total 10",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
    }
}
