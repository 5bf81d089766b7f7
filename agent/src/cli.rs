//! The `postern` command line: `init` writes the config, `run` runs the
//! daemon in the foreground until SIGINT/SIGTERM, then drains.

use std::io::{IsTerminal, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use postern_protocol::{SecretKind, SecretToken};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::{self, AgentConfig};
use crate::tunnel::{self, TunnelState};

#[derive(Debug, Parser)]
#[command(name = "postern", version, about = "The postern agent: a reverse tunnel for JWT-signed calls to internal servers")]
pub struct Cli {
    /// Config file (default: ~/.config/postern/agent.toml, or /etc/postern/agent.toml as root).
    #[arg(long, global = true, env = "POSTERN_CONFIG")]
    config: Option<PathBuf>,
    /// Log filter, e.g. `info` or `postern_agent=debug` (overrides RUST_LOG).
    #[arg(long, global = true)]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write a config file (0600) that connects to a relay. The token is read
    /// from --token-file, the POSTERN_TOKEN variable, or a prompt: never from an argument.
    Init {
        /// The relay's SSH address, HOST:PORT.
        #[arg(long)]
        relay: String,
        /// The relay's host key fingerprint (`postern-relay fingerprint`).
        #[arg(long)]
        fingerprint: String,
        /// Read the access token from this file.
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// Replace an existing config file.
        #[arg(long)]
        force: bool,
    },
    /// Run the agent in the foreground.
    Run,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_level.as_deref());
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(level: Option<&str>) {
    use tracing_subscriber::EnvFilter;
    let filter = level
        .map(EnvFilter::new)
        .or_else(|| EnvFilter::try_from_default_env().ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

fn run(cli: Cli) -> Result<ExitCode> {
    let path = cli.config.unwrap_or_else(config::default_path);
    match cli.command {
        Command::Init {
            relay,
            fingerprint,
            token_file,
            force,
        } => {
            init(&path, &relay, &fingerprint, token_file.as_deref(), force)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Run => {
            let config = AgentConfig::load(&path).with_context(|| format!("loading {}", path.display()))?;
            run_daemon(config)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn read_token(token_file: Option<&Path>) -> Result<String> {
    if let Some(file) = token_file {
        return Ok(std::fs::read_to_string(file)
            .with_context(|| format!("reading {}", file.display()))?
            .trim()
            .to_owned());
    }
    if let Ok(token) = std::env::var("POSTERN_TOKEN") {
        return Ok(token.trim().to_owned());
    }
    if std::io::stdin().is_terminal() {
        return Ok(rpassword::prompt_password("Access token (pst_…): ")?.trim().to_owned());
    }
    let mut text = String::new();
    std::io::stdin().read_to_string(&mut text)?;
    Ok(text.trim().to_owned())
}

fn init(path: &Path, relay: &str, fingerprint: &str, token_file: Option<&Path>, force: bool) -> Result<()> {
    if path.exists() && !force {
        bail!("{} exists already; pass --force to replace it", path.display());
    }
    let token = SecretToken::parse(SecretKind::AgentToken, &read_token(token_file)?)
        .context("the access token is not valid")?;
    let text = format!(
        "# Written by `postern init`. Add [connections.<name>] tables; see packaging/agent.example.toml.\n\
         relay = {}\nrelay_fingerprint = {}\ntoken = {}\n",
        toml_string(relay),
        toml_string(fingerprint),
        toml_string(token.expose()),
    );
    // Validate before writing, so a bad relay or fingerprint never lands on disk.
    let file = config::ConfigFile::parse(&text)?;
    AgentConfig::resolve(file, Path::new("."), &|_| None)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    }
    let tmp = path.with_extension("toml.tmp");
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    out.write_all(text.as_bytes())?;
    out.sync_all()?;
    std::fs::rename(&tmp, path)?;
    println!("wrote {} (mode 0600)", path.display());
    Ok(())
}

fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

fn run_daemon(config: AgentConfig) -> Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        let signals = shutdown.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutdown requested; draining");
            signals.cancel();
        });
        let (state, _watch) = watch::channel(TunnelState::default());
        tunnel::run(config, shutdown, state).await?;
        Ok(())
    })
}

/// SIGINT or SIGTERM.
pub async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
