//! `postern connection list` shows each connection, its base URI and auth type (never a
//! secret); `postern connection test NAME` runs its test request and reports each step.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};

use super::out;
use crate::call::CallContext;
use crate::config::AgentConfig;
use crate::connection_test;

pub(crate) fn list(config: &AgentConfig, json: bool) -> Result<ExitCode> {
    if json {
        let rows: Vec<serde_json::Value> = config
            .connections
            .values()
            .map(|c| {
                serde_json::json!({
                    "name": c.name.to_string(),
                    "base_uri": c.base_uri.as_str(),
                    "auth": c.auth.describe(),
                })
            })
            .collect();
        let text = serde_json::to_string_pretty(&rows)?;
        out::stdout(|out| writeln!(out, "{text}"))?;
        return Ok(ExitCode::SUCCESS);
    }
    let width = config
        .connections
        .keys()
        .map(String::len)
        .max()
        .unwrap_or(4)
        .max(4);
    let uri_width = config
        .connections
        .values()
        .map(|c| c.base_uri.as_str().len())
        .max()
        .unwrap_or(8)
        .max(8);
    out::stdout(|out| {
        writeln!(out, "{:<width$}  {:<uri_width$}  AUTH", "NAME", "BASE URI")?;
        for c in config.connections.values() {
            writeln!(
                out,
                "{:<width$}  {:<uri_width$}  {}",
                c.name.to_string(),
                c.base_uri.as_str(),
                c.auth.describe()
            )?;
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
