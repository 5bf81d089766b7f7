//! The `postern` command line: `init` writes the config, `run` runs the daemon until
//! SIGINT/SIGTERM (`reload` or SIGHUP re-read it); the rest help set connections up.

mod connection;
mod destination;
mod edit;
mod edit_table;
mod init;
mod jwt;
mod out;
mod pinned_folder;
mod remove_comments;
mod run;
mod service;
mod status;
mod token_set;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use crate::config::{self, AgentConfig, ConfigError};

#[derive(Debug, Parser)]
#[command(
    name = "postern",
    version = postern_protocol::version::LONG_VERSION,
    about = "The postern agent: a reverse tunnel for JWT-signed calls to internal servers"
)]
pub struct Cli {
    /// Config file (default: ~/.config/postern/agent.toml, or /etc/postern/agent.toml as root).
    #[arg(long, global = true, env = "POSTERN_CONFIG")]
    config: Option<PathBuf>,
    #[command(flatten)]
    logs: postern_logs::LogArgs,
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
    /// Sign or inspect JWTs.
    Jwt {
        #[command(subcommand)]
        command: JwtCommand,
    },
    /// List, test, add, remove or show connections.
    Connection {
        #[command(subcommand)]
        command: ConnectionCommand,
    },
    /// Replace the access token in the config.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Ask the running agent how it is (exit 0 connected, 1 not connected or the config
    /// does not parse, 2 no agent).
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Make the running agent re-read its config without dropping the tunnel (like SIGHUP);
    /// a config that fails validation is refused and the old one stays in force.
    Reload,
    /// Install or remove the agent as a systemd service.
    Service {
        #[command(subcommand)]
        command: ServiceCommand,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff).
    Man,
    /// Check the config file.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Debug, Subcommand)]
enum ServiceCommand {
    /// Print the systemd unit `install` would write for this binary and --config.
    Unit,
    /// Write /etc/systemd/system/postern-agent.service, create the `postern` user if
    /// missing, hand it the config, check it can load it, then enable and start the unit.
    Install,
    /// Stop, disable and remove that unit (the config and the user stay).
    Uninstall,
}

#[derive(Debug, Subcommand)]
enum JwtCommand {
    /// Print the JWT the connection would send now (for an exchange: the assertion).
    Sign {
        #[arg(long)]
        connection: String,
    },
    /// Print a token's header and claims, like a local jwt.io.
    Decode {
        /// The compact JWT, or `-` to read it from stdin.
        token: String,
        /// Check the signature with this public key PEM (or, for HS*, a file holding the secret).
        #[arg(long, value_name = "KEYFILE")]
        verify_with: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Store a new token (from --token-file, else stdin or a prompt; never an argument).
    Set {
        #[arg(long)]
        token_file: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Validate the config offline: TOML, relays, token, keys against their
    /// algorithms, templates, URIs, file modes. Lists every problem; exit 0 if none.
    Check,
}

#[derive(Debug, Subcommand)]
enum ConnectionCommand {
    /// Show each connection's name, base URI and auth type (never secrets).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Send the connection's test request and report each step; exit 0 if it passed. Runs
    /// in the running agent (its environment and network) when its config is this file as
    /// it is now, else from this shell.
    Test {
        name: String,
        /// The report as JSON, as the relay's test route answers it.
        #[arg(long)]
        json: bool,
    },
    /// Add a connection (the edited config is validated before it is written).
    Add(Box<edit::NewConnection>),
    /// Remove a connection.
    Remove { name: String },
    /// Print a connection's settings with secrets masked.
    Show { name: String },
}

pub fn main() -> ExitCode {
    let cli: Cli = match postern_process::parse() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    let tuning = matches!(cli.command, Command::Run).then(postern_process::tune_allocator);
    let _flush_logs_on_exit = cli.logs.init();
    if let Some(tuning) = tuning {
        tuning.log();
    }
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            postern_process::failure_code(e.as_ref())
        }
    }
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
            init::init(&path, &relay, &fingerprint, token_file.as_deref(), force)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Run => {
            run::run_daemon(path)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Jwt {
            command: JwtCommand::Decode { token, verify_with },
        } => jwt::decode(&token, verify_with.as_deref()),
        Command::Jwt {
            command: JwtCommand::Sign { connection },
        } => {
            let (file, _) = config::ConfigFile::read_with_digest(&path)?;
            jwt::sign(&load_one(&path, file, &connection)?, &connection)
        }
        Command::Status { json } => status::status(&path, json),
        Command::Reload => status::reload(&path),
        Command::Service { command } => {
            match command {
                ServiceCommand::Unit => service::print_unit(&path)?,
                ServiceCommand::Install => service::install(&path)?,
                ServiceCommand::Uninstall => service::uninstall()?,
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Completions { shell } => {
            use clap::CommandFactory;
            // Into memory first: clap_complete panics when a write fails.
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "postern", &mut script);
            out::stdout(|out| out.write_all(&script))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Man => {
            use clap::CommandFactory;
            out::stdout(|out| clap_mangen::Man::new(Cli::command()).render(out))
                .context("writing the man page")?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Config {
            command: ConfigCommand::Check,
        } => {
            let config = load(&path)?;
            // Root reads what the agent's user may not: checked as that user would load it.
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            let unreadable = crate::config::ConfigFile::parse(&text)
                .map(|file| crate::config::unreadable_by_owner(&path, &file))
                .unwrap_or_default();
            if !unreadable.is_empty() {
                anyhow::bail!(
                    "loading {}: the agent could not read what it names:\n  {}",
                    path.display(),
                    unreadable.join("\n  ")
                );
            }
            // What `run` builds from the config (its HTTP clients: TLS identities, roots),
            // so a check passes only for a config `run` would start with.
            crate::call_table::CallTable::new(Default::default())
                .build(&config.connections)
                .with_context(|| format!("loading {}", path.display()))?;
            let connections = match config.connections.len() {
                0 => "no connections yet".to_owned(),
                n => format!(
                    "{n} connection(s): {}",
                    config
                        .connections
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            };
            out::stdout(|out| {
                writeln!(
                    out,
                    "{}: ok — relays {}, {connections}",
                    path.display(),
                    config.relays.join(", "),
                )
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Connection {
            command: ConnectionCommand::List { json },
        } => connection::list(&path, json),
        Command::Connection {
            command: ConnectionCommand::Test { name, json },
        } => connection::test(&path, &name, json),
        Command::Connection {
            command: ConnectionCommand::Add(new),
        } => edit::add(&path, *new).map(|()| ExitCode::SUCCESS),
        Command::Connection {
            command: ConnectionCommand::Remove { name },
        } => edit::remove(&path, &name).map(|()| ExitCode::SUCCESS),
        Command::Connection {
            command: ConnectionCommand::Show { name },
        } => edit::show(&path, &name).map(|()| ExitCode::SUCCESS),
        Command::Token {
            command: TokenCommand::Set { token_file },
        } => token_set::set_token(&path, token_file.as_deref()).map(|()| ExitCode::SUCCESS),
    }
}

/// The config `file` (read from `path`) with only connection `name` and the settings all
/// share: another connection's secret, set only in the service's environment, must not
/// stop a command about this one, nor its warnings be said again.
pub(crate) fn load_one(
    path: &std::path::Path,
    mut file: config::ConfigFile,
    name: &str,
) -> Result<AgentConfig> {
    file.connections.retain(|n, _| n == name);
    let base = path.parent().unwrap_or(std::path::Path::new("."));
    AgentConfig::resolve(file, base, &|var| std::env::var(var))
        .with_context(|| format!("loading {}", path.display()))
}

/// Loads the config; the error names the file once.
pub(crate) fn load(path: &std::path::Path) -> Result<AgentConfig> {
    AgentConfig::load(path).map_err(|e| match e {
        ConfigError::Read { .. }
        | ConfigError::ConfigPath(_)
        | ConfigError::Parse { .. }
        | ConfigError::Permissions { .. } => anyhow::Error::new(e),
        ConfigError::Invalid(_) | ConfigError::Problems(_) => {
            anyhow::Error::new(e).context(format!("loading {}", path.display()))
        }
    })
}

#[cfg(test)]
mod tests {
    use std::error::Error;

    /// As `main` prints it.
    fn printed<E: Error + Send + Sync + 'static>(e: E) -> String {
        assert!(
            e.source().is_none(),
            "{e} exposes its cause as a source too"
        );
        format!("{:#}", anyhow::Error::new(e))
    }

    /// `main` prints `{e:#}`, the message and then each source: the agent's error types
    /// that put their cause in the message must not expose it as a source as well.
    #[test]
    fn errors_that_say_their_cause_say_it_once() {
        let io = || std::io::Error::from(std::io::ErrorKind::AddrInUse);
        let json = || serde_json::from_str::<serde_json::Value>("{").expect_err("not JSON");
        let said = [
            printed(crate::daemon::DaemonError::Metrics {
                addr: ([127, 0, 0, 1], 9464).into(),
                error: io(),
            }),
            printed(crate::proxy::ProxyError::Connect {
                proxy: "http://proxy:3128".into(),
                error: io(),
            }),
            printed(crate::config::ConfigError::Read {
                path: "/nope.toml".into(),
                error: io(),
            }),
        ];
        for text in said {
            assert_eq!(text.matches("address in use").count(), 1, "{text}");
        }
        printed(crate::jwt::JwtError::from(json()));
        printed(crate::jwt::JwtError::from(
            crate::jwt::key::KeyError::MalformedPem {
                reason: "no base64".into(),
            },
        ));
        printed(postern_protocol::control::ControlError::from(json()));
    }
}
