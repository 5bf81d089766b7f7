//! wrk as the load generator: one run parsed into requests/s, p50, p99 and errors,
//! and the median of repeated runs.

use std::process::Command;

use anyhow::{Context, Result};

use crate::table::median;

#[derive(Clone, Copy)]
pub struct WrkResult {
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub errors: u64,
}

impl WrkResult {
    /// The table's measures, in its order.
    pub fn figures(&self) -> [(&'static str, f64); 4] {
        [
            ("req/s", self.rps),
            ("p50 ms", self.p50_ms),
            ("p99 ms", self.p99_ms),
            ("non-2xx", self.errors as f64),
        ]
    }
}

pub fn wrk(url: &str, connections: u64, seconds: u64, bearer: Option<&str>) -> Result<WrkResult> {
    let mut cmd = Command::new("wrk");
    cmd.args([
        "--latency",
        "-t",
        "2",
        "-c",
        &connections.to_string(),
        "-d",
        &format!("{seconds}s"),
    ]);
    if let Some(key) = bearer {
        cmd.args(["-H", &format!("Authorization: Bearer {key}")]);
    }
    let out = cmd.arg(url).output().context("running wrk")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let number = |prefix: &str| -> Option<String> {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix).map(|r| r.trim().to_owned()))
    };
    let ms = |v: String| -> f64 {
        let (n, unit) = v.split_at(v.find(|c: char| c.is_alphabetic()).unwrap_or(v.len()));
        let n: f64 = n.parse().unwrap_or(f64::NAN);
        match unit {
            "us" => n / 1000.0,
            "s" => n * 1000.0,
            _ => n,
        }
    };
    let rps = number("Requests/sec:")
        .and_then(|v| v.parse().ok())
        .context(text.clone())?;
    let errors = number("Non-2xx or 3xx responses:")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
        + number("Socket errors:").map_or(0, |_| 1);
    Ok(WrkResult {
        rps,
        p50_ms: number("50%").map(ms).unwrap_or(f64::NAN),
        p99_ms: number("99%").map(ms).unwrap_or(f64::NAN),
        errors,
    })
}

/// Median requests/s and p50/p99 of several wrk runs, and their errors summed.
pub fn median_of(runs: &[WrkResult]) -> WrkResult {
    let of = |f: fn(&WrkResult) -> f64| median(runs.iter().map(f).collect());
    WrkResult {
        rps: of(|r| r.rps),
        p50_ms: of(|r| r.p50_ms),
        p99_ms: of(|r| r.p99_ms),
        errors: runs.iter().map(|r| r.errors).sum(),
    }
}
