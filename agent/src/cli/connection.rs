//! `postern connection list` shows each connection, its base URI and auth type (never a
//! secret); `postern connection test NAME` runs its test request and reports each step.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};

use super::out;
use crate::call::CallContext;
use crate::config::{ConfigFile, shown};
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

/// Runs in the running agent when its config is this file as it is now, so the test
/// gets what calls get: the service's environment (`secret_env`), its keys as loaded, its
/// network. Otherwise (no agent, or the file edited since its last reload) it runs here.
pub(crate) fn test(path: &Path, name: &str, json: bool) -> Result<ExitCode> {
    let (file, digest) = ConfigFile::read_with_digest(path)?;
    let report = match super::status::test_in_agent(path, &file, &digest, name)? {
        Some(report) => report,
        None => test_here(path, file, name)?,
    };
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

/// Runs the test here, on the config with only this connection ([`super::load_one`]).
fn test_here(path: &Path, file: ConfigFile, name: &str) -> Result<connection_test::TestReport> {
    let config = super::load_one(path, file, name)?;
    let conn = config
        .connection(name)
        .with_context(|| format!("no connection named {name:?} in the config"))?;
    let ctx = CallContext::new(Arc::clone(conn)).context("building the HTTP client")?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    Ok(runtime.block_on(connection_test::run(&ctx, connection_test::Audience::Local)))
}
