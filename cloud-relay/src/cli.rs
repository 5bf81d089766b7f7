//! The `postern-relay` command line: `serve`, `fingerprint`, and agent and API
//! key management that works on the state folder, also while `serve` runs.

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use postern_process::StopSignals;
use postern_protocol::api::{AgentCreated, ApiKeyCreated, ApiKeyList, ApiKeyScope};
use postern_protocol::{SecretKind, SecretToken};
use tokio_util::task::AbortOnDropHandle;

use crate::config::RelayConfig;
use crate::secrets::new_token;
use crate::server::Shutdown;
use crate::store::{Rotation, SqliteStore, Store};
use crate::{RelayListeners, host_key};

#[derive(Debug, Parser)]
#[command(
    name = "postern-relay",
    version = postern_protocol::version::LONG_VERSION,
    about = "The postern cloud relay"
)]
pub struct Cli {
    #[command(flatten)]
    logs: postern_logs::LogArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Args)]
struct StateArgs {
    /// The relay's state folder (host key, store).
    #[arg(long, env = "POSTERN_RELAY_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// A relay config file; its `state_dir` is used unless --state-dir is given.
    #[arg(long, env = "POSTERN_RELAY_CONFIG")]
    config: Option<PathBuf>,
}

impl StateArgs {
    fn config(&self) -> Result<RelayConfig> {
        let mut config = load_or_default(self.config.as_deref())?;
        if let Some(dir) = &self.state_dir {
            config.state_dir = dir.clone();
        }
        Ok(config)
    }

    /// The store `serve` made. Only `serve` creates one: a mistyped folder must not get
    /// a store of its own, whose agents and keys the running relay would never know.
    fn store(&self) -> Result<SqliteStore> {
        store_in(&self.config()?.state_dir)
    }
}

/// The config file at `path`, or the defaults without one.
fn load_or_default(path: Option<&std::path::Path>) -> Result<RelayConfig> {
    Ok(match path {
        Some(path) => RelayConfig::load(path)?,
        None => RelayConfig::default(),
    })
}

/// The store `serve` made in `dir` (see [`StateArgs::store`]).
fn store_in(dir: &std::path::Path) -> Result<SqliteStore> {
    let db = dir.join(crate::store::sqlite::DB_FILE);
    match std::fs::metadata(&db) {
        Ok(_) => {}
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            return Err(e).with_context(|| {
                format!(
                    "cannot reach the relay store at {} (run as the user the relay runs as)",
                    db.display()
                )
            });
        }
        Err(_) => anyhow::bail!(
            "no relay store at {}: a typo in the folder, or the relay has not started yet \
                 (`postern-relay serve` makes it). Pass the --state-dir or --config the relay \
                 runs with, as the user it runs as (packages: sudo -u postern-relay …)",
            db.display()
        ),
    }
    // The folder is the relay's: `serve` made and narrowed it; the CLI only opens the file.
    SqliteStore::open(&db).with_context(|| format!("opening the store in {}", dir.display()))
}

/// Listen addresses over the config's, for `serve`, `check` and `health` alike: the
/// container image sets them in its environment, so `check` and `health` there see what
/// `serve` binds.
#[derive(Debug, clap::Args)]
struct ListenArgs {
    /// SSH listen address for agents (default 0.0.0.0:2222).
    #[arg(long, env = "POSTERN_RELAY_SSH_LISTEN")]
    ssh_listen: Option<std::net::SocketAddr>,
    /// HTTP API listen address (default 127.0.0.1:8080).
    #[arg(long, env = "POSTERN_RELAY_API_LISTEN")]
    api_listen: Option<std::net::SocketAddr>,
}

impl ListenArgs {
    fn apply(&self, config: &mut RelayConfig) {
        if let Some(a) = self.ssh_listen {
            config.ssh_listen = a;
        }
        if let Some(a) = self.api_listen {
            config.api_listen = a;
        }
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the relay: SSH for agents, HTTP API for callers.
    Serve {
        #[command(flatten)]
        state: StateArgs,
        #[command(flatten)]
        listen: ListenArgs,
    },
    /// Check relay.toml as `serve` would, TLS files included, without starting; exit 1
    /// with the reason when `serve` would refuse it or a SIGHUP would not load the TLS files.
    Check {
        /// The relay config file.
        #[arg(long, env = "POSTERN_RELAY_CONFIG")]
        config: PathBuf,
        #[command(flatten)]
        listen: ListenArgs,
    },
    /// Ask a running relay whether it serves: GET /healthz on its API (through loopback
    /// when it listens on every address); exit 0 when it answers `ok`, else 1 with the
    /// reason. For container HEALTHCHECKs and monitors without curl.
    Health {
        /// The relay config file `serve` runs with: its `api_listen`, and its TLS files
        /// (then HTTPS). Without one, 127.0.0.1:8080 over plain HTTP, `serve`'s default.
        #[arg(long, env = "POSTERN_RELAY_CONFIG")]
        config: Option<PathBuf>,
        #[command(flatten)]
        listen: ListenArgs,
        /// How long the whole check may take.
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Print the host key fingerprint (SHA256:…) for agents to pin (`serve` makes the key).
    Fingerprint {
        #[command(flatten)]
        state: StateArgs,
    },
    /// Manage agents.
    Agent {
        #[command(subcommand)]
        command: AgentCommand,
    },
    /// Manage API keys.
    Apikey {
        #[command(subcommand)]
        command: ApikeyCommand,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff).
    Man,
}

#[derive(Debug, Subcommand)]
enum AgentCommand {
    /// Create an agent and print its access token (shown once).
    Create {
        name: String,
        #[command(flatten)]
        state: StateArgs,
        #[arg(long)]
        json: bool,
    },
    /// List agents.
    List {
        #[command(flatten)]
        state: StateArgs,
        #[arg(long)]
        json: bool,
    },
    /// Revoke an agent: its token stops working and a live session is dropped.
    Revoke {
        /// Agent name or id.
        agent: String,
        #[command(flatten)]
        state: StateArgs,
        #[arg(long)]
        json: bool,
    },
    /// Give an agent a new access token (shown once). The old one stops working
    /// and a running relay drops the live session within a second, unless --grace.
    Rotate {
        /// Agent name or id.
        agent: String,
        /// Keep the old token (and the live session) working this long, e.g. `5m` (max 24h).
        #[arg(long, value_parser = grace_arg)]
        grace: Option<String>,
        #[command(flatten)]
        state: StateArgs,
        #[arg(long)]
        json: bool,
    },
}

/// `--grace` as the API's `grace` is read, refused by clap (a usage error) when it is not.
fn grace_arg(text: &str) -> Result<String, String> {
    crate::api::token::parse_grace(Some(text)).map(|_| text.to_owned())
}

#[derive(Debug, Subcommand)]
enum ApikeyCommand {
    /// Create an API key and print it (shown once).
    Create {
        name: String,
        /// `admin` manages agents and keys and runs calls; `call` runs calls and reads agents.
        #[arg(long, default_value = "admin")]
        scope: ApiKeyScope,
        #[command(flatten)]
        state: StateArgs,
        #[arg(long)]
        json: bool,
    },
    /// List API keys: names and scopes (keys are never shown again).
    List {
        #[command(flatten)]
        state: StateArgs,
        #[arg(long)]
        json: bool,
    },
    /// Revoke an API key: a running relay stops taking it within a second.
    Revoke {
        name: String,
        #[command(flatten)]
        state: StateArgs,
        #[arg(long)]
        json: bool,
    },
}

/// What `main` runs: parse, tune the allocator for `serve`, set up logging, run, map to
/// an exit code.
pub fn main() -> ExitCode {
    let cli: Cli = match postern_process::parse() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    let tuning = matches!(cli.command, Command::Serve { .. }).then(postern_process::tune_allocator);
    let _flush_logs_on_exit = cli.logs.init();
    if let Some(tuning) = tuning {
        tuning.log();
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            postern_process::failure_code(e.as_ref())
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Serve { state, listen } => {
            let mut config = state.config()?;
            listen.apply(&mut config);
            serve(config)
        }
        Command::Check { config, listen } => check(&config, &listen),
        Command::Health {
            config,
            listen,
            timeout,
        } => health(config.as_deref(), &listen, timeout),
        Command::Fingerprint { state } => {
            // Only `serve` creates the identity: a mistyped folder must not print a new one.
            let key = host_key::load(&state.config()?.state_dir)?;
            let fingerprint = host_key::fingerprint(&key);
            to_stdout(|out| writeln!(out, "{fingerprint}"))
        }
        Command::Agent { command } => agent(command),
        Command::Apikey { command } => apikey(command),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            // Into memory first: clap_complete panics when a write fails.
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "postern-relay", &mut script);
            to_stdout(|out| out.write_all(&script))
        }
        Command::Man => {
            use clap::CommandFactory;
            to_stdout(|out| clap_mangen::Man::new(Cli::command()).render(out))
                .context("writing the man page")
        }
    }
}

fn apikey(command: ApikeyCommand) -> Result<()> {
    match command {
        ApikeyCommand::Create {
            name,
            scope,
            state,
            json,
        } => {
            let key = new_token(SecretKind::ApiKey);
            let store = state.store()?;
            store.create_scoped_api_key(&name, &key, scope)?;
            let shown = if json {
                show_json_once(&ApiKeyCreated {
                    name: name.clone(),
                    key: key.expose().to_owned(),
                    scope,
                })
            } else {
                show_once(|out| {
                    writeln!(
                        out,
                        "API key {name:?} (scope {scope}) created. It is shown only this once:\n\n  {}\n",
                        key.expose()
                    )?;
                    writeln!(out, "Send it as: Authorization: Bearer <key>")
                })
            };
            undo_unless_shown(shown, "API key", || store.delete_api_key(&key))
        }
        ApikeyCommand::List { state, json } => {
            let keys = state.store()?.list_api_keys()?;
            if json {
                print_json(&ApiKeyList {
                    api_keys: keys.into_iter().map(crate::api::apikeys::info).collect(),
                })?;
            } else {
                let rows: Vec<[String; 3]> = keys
                    .into_iter()
                    .map(|k| [k.name, k.scope.to_string(), k.created_at])
                    .collect();
                print_table(["NAME", "SCOPE", "CREATED"], &rows)?;
            }
            Ok(())
        }
        ApikeyCommand::Revoke { name, state, json } => {
            let revoked = state.store()?.revoke_api_key(&name)?;
            if json {
                print_json(&serde_json::json!({"name": revoked.name, "revoked": true}))?;
            } else {
                let name = revoked.name;
                to_stdout(|out| {
                    writeln!(
                        out,
                        "API key {name:?} revoked; a running relay stops taking it within a second."
                    )
                })?;
            }
            Ok(())
        }
    }
}

fn agent(command: AgentCommand) -> Result<()> {
    match command {
        AgentCommand::Create { name, state, json } => {
            let token = new_token(SecretKind::AgentToken);
            let config = state.config()?;
            let store = store_in(&config.state_dir)?;
            let agent = store.create_agent(&name, &token)?;
            let shown = if json {
                show_json_once(&AgentCreated {
                    id: agent.id.clone(),
                    name: agent.name.clone(),
                    token: token.expose().to_owned(),
                })
            } else {
                // Whoever can open the store can read the key `serve` made beside it.
                // The agent is made all the same: its token is what cannot be had again.
                let fingerprint = match host_key::load(&config.state_dir) {
                    Ok(key) => host_key::fingerprint(&key),
                    Err(e) => {
                        eprintln!(
                            "warning: the relay's fingerprint is not known here ({e}); `postern-relay fingerprint` on the relay prints it"
                        );
                        "FINGERPRINT".to_owned()
                    }
                };
                let port = config.ssh_listen.port();
                show_once(|out| {
                    writeln!(out, "Agent {:?} created (id {}).", agent.name, agent.id)?;
                    writeln!(
                        out,
                        "Its access token is shown only this once:\n\n  {}\n",
                        token.expose()
                    )?;
                    writeln!(
                        out,
                        "On the agent's machine, with RELAY_HOST the name agents reach this relay by \
                         (`postern init` asks for the token):\n\n  postern init --relay RELAY_HOST:{port} --fingerprint {fingerprint}"
                    )
                })
            };
            undo_unless_shown(shown, "agent", || store.delete_agent(&agent.id))
        }
        AgentCommand::List { state, json } => {
            let agents = state.store()?.list_agents()?;
            if json {
                let list: Vec<_> = agents
                    .iter()
                    .map(|a| serde_json::json!({"id": a.id, "name": a.name, "created_at": a.created_at}))
                    .collect();
                print_json(&serde_json::json!({ "agents": list }))?;
            } else {
                let rows: Vec<[String; 3]> = agents
                    .into_iter()
                    .map(|a| [a.id, a.name, a.created_at])
                    .collect();
                print_table(["ID", "NAME", "CREATED"], &rows)?;
            }
            Ok(())
        }
        AgentCommand::Revoke { agent, state, json } => {
            let revoked = state.store()?.revoke_agent(&agent)?;
            if json {
                print_json(
                    &serde_json::json!({"id": revoked.id, "name": revoked.name, "revoked": true}),
                )?;
            } else {
                to_stdout(|out| {
                    writeln!(
                        out,
                        "Agent {:?} ({}) revoked; a running relay drops its session within a second.",
                        revoked.name, revoked.id
                    )
                })?;
            }
            Ok(())
        }
        AgentCommand::Rotate {
            agent,
            grace,
            state,
            json,
        } => {
            let grace =
                crate::api::token::parse_grace(grace.as_deref()).map_err(anyhow::Error::msg)?;
            let token = new_token(SecretKind::AgentToken);
            let until = grace.map(crate::api::token::grace_end);
            let valid_until = until.map(crate::api::token::rfc3339);
            // A token nobody saw would leave the agent locked out: the store keeps the
            // rotation only once it is shown (`… | true`, a full disk).
            let shown = std::cell::Cell::new(false);
            let mut show = |rotation: &Rotation| {
                let written = if json {
                    serde_json::to_string(&crate::api::token::rotated(rotation, &token, until))
                        .map_err(io::Error::other)
                        .and_then(|text| write_stdout(|out| writeln!(out, "{text}")))
                } else {
                    show_rotated(rotation, &token, valid_until.as_deref())
                };
                shown.set(written.is_ok());
                written
            };
            let rotated = state.store().and_then(|store| {
                // A running relay marks a token used as an agent logs in with it.
                Ok(store.rotate_token(&agent, &token, until, &|_| false, &mut show)?)
            });
            match rotated {
                Ok(_) => Ok(()),
                // Shown, then not kept (the store's disk filled up at the commit, say): what
                // was printed says the opposite of what is true.
                Err(e) if shown.get() => Err(e.context(
                    "the token shown above was NOT saved and does not work; the agent keeps its \
                     old token: rotate again",
                )),
                Err(e) => Err(e),
            }
        }
    }
}

/// `agent rotate`'s text answer.
fn show_rotated(
    rotation: &Rotation,
    token: &SecretToken,
    valid_until: Option<&str>,
) -> io::Result<()> {
    let record = &rotation.agent;
    write_stdout(|out| {
        writeln!(
            out,
            "Agent {:?} ({}) has a new access token, shown only this once:\n\n  {}\n",
            record.name,
            record.id,
            token.expose()
        )?;
        if rotation.replaced_unused {
            writeln!(
                out,
                "The token the last rotation made had not been used by any agent: it no longer \
                 works, and the token before it, which the agent uses, is the old token."
            )?;
        }
        if let Some(cut) = rotation.grace_cut {
            writeln!(
                out,
                "The token an earlier rotation kept working until {} stopped working now (one old \
                 token is kept): an agent still on it has lost its session.",
                crate::api::token::rfc3339(cut)
            )?;
        }
        match valid_until {
            Some(t) => writeln!(
                out,
                "The old token keeps working until {t}; put the new one in the agent's config before then."
            ),
            None => writeln!(
                out,
                "The old token no longer works; a running relay drops the agent's session within a second."
            ),
        }
    })
}

fn print_json<T: serde::Serialize>(value: &T) -> Result<()> {
    let text = serde_json::to_string(value)?;
    to_stdout(|out| writeln!(out, "{text}"))
}

/// Runs `write` on a locked stdout and flushes it.
fn write_stdout(write: impl FnOnce(&mut dyn Write) -> io::Result<()>) -> io::Result<()> {
    let mut out = io::stdout().lock();
    write(&mut out).and_then(|()| out.flush())
}

/// [`write_stdout`], where a reader that went away (`postern-relay agent list | head -1`)
/// is not an error: it read all it wanted.
fn to_stdout(write: impl FnOnce(&mut dyn Write) -> io::Result<()>) -> Result<()> {
    match write_stdout(write) {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("writing to stdout"),
    }
}

/// Writes a secret that is shown only this once. Unlike [`to_stdout`], a reader that went
/// away is an error here: `… | true` would otherwise create a secret nobody saw.
fn show_once(write: impl FnOnce(&mut dyn Write) -> io::Result<()>) -> Result<()> {
    write_stdout(write).context("writing to stdout")
}

/// [`show_once`] for a JSON answer.
fn show_json_once<T: serde::Serialize>(value: &T) -> Result<()> {
    let text = serde_json::to_string(value)?;
    show_once(|out| writeln!(out, "{text}"))
}

/// Removes (`undo`) what was just created when its once-only secret could not be shown,
/// so that a re-run can create it again.
fn undo_unless_shown(
    shown: Result<()>,
    what: &str,
    undo: impl FnOnce() -> Result<(), crate::store::StoreError>,
) -> Result<()> {
    let Err(e) = shown else {
        return Ok(());
    };
    match undo() {
        Ok(()) => Err(anyhow::anyhow!(
            "the new {what} could not be shown ({e:#}); it was deleted again, nothing was created"
        )),
        Err(undo) => Err(anyhow::anyhow!(
            "the new {what} could not be shown ({e:#}), and deleting it again failed ({undo}): revoke it"
        )),
    }
}

/// Columns padded to their longest value; the last one is not padded.
fn table<const N: usize>(header: [&str; N], rows: &[[String; N]]) -> String {
    let mut widths = header.map(str::len);
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: [&str; N]| {
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == N {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            }
        }
        text.push('\n');
        text
    };
    let mut text = line(header);
    for row in rows {
        text.push_str(&line(row.each_ref().map(String::as_str)));
    }
    text
}

fn print_table<const N: usize>(header: [&str; N], rows: &[[String; N]]) -> Result<()> {
    let text = table(header, rows);
    to_stdout(|out| out.write_all(text.as_bytes()))
}

/// What `serve` checks before it binds, and the TLS files as a SIGHUP reads them (an
/// expired or not yet valid certificate fails, as a SIGHUP refuses it). The
/// relay unit's `ExecReload` runs it after the SIGHUP, so `systemctl reload` fails when
/// the files are broken (the relay keeps its certificate then).
fn check(path: &std::path::Path, listen: &ListenArgs) -> Result<()> {
    let mut config = RelayConfig::load(path)?;
    listen.apply(&mut config);
    config.validate()?;
    let what = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => {
            let validity = crate::tls::TlsReloader::check(cert, key)?;
            let until = validity
                .map(|v| format!(", valid until {}", crate::cert_dates::shown(v.not_after)))
                .unwrap_or_default();
            format!(
                "the TLS certificate {} and key {} load and go together{until}",
                cert.display(),
                key.display()
            )
        }
        _ => format!("no TLS files; plain HTTP on {}", config.api_listen),
    };
    to_stdout(|out| writeln!(out, "{}: fine; {what}", path.display()))
}

fn health(
    path: Option<&std::path::Path>,
    listen: &ListenArgs,
    within: std::time::Duration,
) -> Result<()> {
    let mut config = load_or_default(path)?;
    listen.apply(&mut config);
    let target = crate::health::Target::of(&config);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let healthy = runtime.block_on(crate::health::probe(&target, within))?;
    to_stdout(|out| writeln!(out, "{healthy}"))
}

fn serve(config: RelayConfig) -> Result<()> {
    // Before binding: a relay that must not serve plain HTTP never opens the port.
    config.validate()?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        // First, before the slow part of the start (binding, TLS, the host key, SQLite):
        // until SIGHUP is listened for, a `systemctl reload` would end the relay.
        let hangups = crate::server::listen_for_hangup();
        let stops = StopSignals::listen("the relay");
        let listeners = RelayListeners::bind(&config)
            .await
            .context("cannot listen")?;
        let shutdown = Shutdown::default();
        let _signals = AbortOnDropHandle::new(tokio::spawn(watch_stops(stops, shutdown.clone())));
        crate::server::run_with(config, listeners, shutdown, hangups).await?;
        Ok(())
    })
}

/// The first signal starts the drain; a second one ends it at once.
async fn watch_stops(mut stops: StopSignals, shutdown: Shutdown) {
    stops.next().await;
    tracing::info!("shutdown requested; draining (a second SIGTERM or SIGINT stops at once)");
    postern_process::service_manager::stopping(
        "stopping: calls under way finish within shutdown_grace, then agents are told goodbye",
    );
    shutdown.stop.cancel();
    stops.next().await;
    tracing::info!("second shutdown signal; ending the drain now");
    shutdown.hurry.cancel();
}
