//! `postern connection list` shows each connection, its base URI and auth type (never a
//! secret); `postern connection test NAME` runs its test request and reports each step.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};

use super::out;
use crate::call::CallContext;
use crate::config::{AgentConfig, ConfigFile, shown};
use crate::connection_test;

/// Lists from the file as written, so it needs no secret: a key the service's environment
/// holds (`secret_env`) is not there in an admin's shell.
pub(crate) fn list(path: &Path, json: bool) -> Result<ExitCode> {
    let file = ConfigFile::read(path)?;
    let rows: Vec<(&String, String, String)> = file
        .connections
        .iter()
        .map(|(name, c)| (name, shown(&c.base_uri), c.auth.describe()))
        .collect();
    if json {
        let rows: Vec<serde_json::Value> = rows
            .iter()
            .map(|(name, base_uri, auth)| {
                serde_json::json!({ "name": name, "base_uri": base_uri, "auth": auth })
            })
            .collect();
        let text = serde_json::to_string_pretty(&rows)?;
        out::stdout(|out| writeln!(out, "{text}"))?;
        return Ok(ExitCode::SUCCESS);
    }
    let width = rows.iter().map(|r| r.0.len()).max().unwrap_or(4).max(4);
    let uri_width = rows.iter().map(|r| r.1.len()).max().unwrap_or(8).max(8);
    out::stdout(|out| {
        writeln!(out, "{:<width$}  {:<uri_width$}  AUTH", "NAME", "BASE URI")?;
        for (name, base_uri, auth) in &rows {
            writeln!(out, "{name:<width$}  {base_uri:<uri_width$}  {auth}")?;
        }
        Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn test(config: &AgentConfig, name: &str, json: bool) -> Result<ExitCode> {
    let conn = config
        .connection(name)
        .with_context(|| format!("no connection named {name:?} in the config"))?;
    let ctx = CallContext::new(Arc::clone(conn)).context("building the HTTP client")?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let report = runtime.block_on(connection_test::run(&ctx));
    let text = if json {
        serde_json::to_string_pretty(&report)?
    } else {
        report.to_string()
    };
    out::stdout(|out| writeln!(out, "{text}"))?;
    Ok(if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
