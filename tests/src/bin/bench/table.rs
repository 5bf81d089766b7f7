//! The one table the bench prints: a row per scenario and measure with postern, OpenSSH
//! and direct loopback side by side, printed as measured so a late failure keeps the rest.

use std::io::Write;

/// One table row: scenario, measure, postern, OpenSSH, direct.
pub struct Row {
    pub scenario: String,
    pub measure: &'static str,
    pub postern: Option<f64>,
    pub openssh: Option<f64>,
    pub direct: Option<f64>,
}

impl Row {
    /// A figure only postern has.
    pub fn postern(scenario: impl Into<String>, measure: &'static str, value: f64) -> Self {
        Self {
            scenario: scenario.into(),
            measure,
            postern: Some(value),
            openssh: None,
            direct: None,
        }
    }
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

pub struct Table;

impl Table {
    pub fn new() -> Self {
        println!(
            "| scenario | measure | postern | ssh -R | direct | postern/ssh -R | postern/direct |"
        );
        println!("|---|---|---:|---:|---:|---:|---:|");
        Self
    }

    pub fn push(&mut self, r: Row) {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            r.scenario,
            r.measure,
            show(r.postern),
            show(r.openssh),
            show(r.direct),
            ratio(r.postern, r.openssh),
            ratio(r.postern, r.direct)
        );
        let _ = std::io::stdout().flush();
    }
}

fn show(v: Option<f64>) -> String {
    match v {
        None => "—".into(),
        Some(x) if x.is_nan() => "n/a".into(),
        Some(x) if x >= 100.0 => format!("{x:.0}"),
        Some(x) => format!("{x:.2}"),
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 && a.is_finite() && b.is_finite() => format!("{:.2}×", a / b),
        _ => "—".into(),
    }
}
