//! `postern status`: asks the running daemon over its local socket and prints
//! how it is; the exit code says connected (0), not connected (1), no daemon (2).

use std::io::Read;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};

use crate::config::{self, ConfigFile};
use crate::status::StatusReport;

pub(crate) fn status(config_path: &Path, json: bool) -> Result<ExitCode> {
    // Only the socket path is needed: no secrets are read.
    let configured = std::fs::read_to_string(config_path)
        .ok()
        .and_then(|text| ConfigFile::parse(&text).ok())
        .and_then(|file| file.status_socket);
    let base = config_path.parent().unwrap_or(Path::new("."));
    let socket = config::status_socket(configured.as_deref(), base);
    let mut stream = match std::os::unix::net::UnixStream::connect(&socket) {
        Ok(s) => s,
        Err(e) => {
            eprintln!(
                "no agent answers on {}: {e} (is `postern run` running?)",
                socket.display()
            );
            return Ok(ExitCode::from(2));
        }
    };
    let mut text = String::new();
    stream
        .read_to_string(&mut text)
        .context("reading the status")?;
    let report: StatusReport =
        serde_json::from_str(&text).context("the daemon sent no valid status")?;
    if json {
        println!("{text}");
    } else {
        print_report(&report);
    }
    Ok(if report.connected {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn print_report(r: &StatusReport) {
    let state = match (&r.connected, &r.connected_since) {
        (true, Some(since)) => format!("connected since {since}"),
        (true, None) => "connected".to_owned(),
        (false, _) => "NOT connected".to_owned(),
    };
    println!("postern agent {} — {state}", r.agent_version);
    println!("  relay        {}", r.relays.join(", "));
    if let Some(name) = &r.agent_name {
        println!("  agent name   {name}");
    }
    println!("  reconnects   {}", r.reconnects);
    if let Some(e) = &r.last_error {
        println!("  last error   {e}");
    }
    if !r.connections.is_empty() {
        println!(
            "\n  {:<24} {:>8} {:>8}  TOKEN",
            "CONNECTION", "SERVED", "FAILED"
        );
        for (name, c) in &r.connections {
            println!(
                "  {:<24} {:>8} {:>8}  {}",
                name, c.calls_served, c.calls_failed, c.token_cache
            );
        }
    }
}
