//! `postern status` and `postern reload`: ask the running daemon over its local
//! socket; the exit code says how it went (0 good, 1 not connected or refused, 2 no daemon).

use std::io::{Read, Write};
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};

use crate::config::{self, ConfigFile};
use crate::status::{ReloadReport, StatusReport};

/// Sends `command` to the daemon's socket and returns its answer; `None` (after saying
/// why on stderr) when no daemon answers.
pub(crate) fn ask(config_path: &Path, command: &str) -> Result<Option<String>> {
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
            return Ok(None);
        }
    };
    writeln!(stream, "{command}").context("sending the request")?;
    let mut text = String::new();
    stream
        .read_to_string(&mut text)
        .context("reading the answer")?;
    Ok(Some(text))
}

pub(crate) fn status(config_path: &Path, json: bool) -> Result<ExitCode> {
    let Some(text) = ask(config_path, crate::status::STATUS)? else {
        return Ok(ExitCode::from(2));
    };
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

/// `postern reload`: exit 0 applied, 1 refused (the old config stays), 2 no daemon.
pub(crate) fn reload(config_path: &Path) -> Result<ExitCode> {
    let Some(text) = ask(config_path, crate::status::RELOAD)? else {
        return Ok(ExitCode::from(2));
    };
    let report: ReloadReport =
        serde_json::from_str(&text).context("the daemon sent no valid answer")?;
    match report.error {
        None if report.ok => {
            println!("reloaded {}", config_path.display());
            for change in &report.changes {
                println!("  {change}");
            }
            Ok(ExitCode::SUCCESS)
        }
        error => {
            eprintln!(
                "reload refused; the running config stays in force: {}",
                error.unwrap_or_default()
            );
            Ok(ExitCode::from(1))
        }
    }
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
