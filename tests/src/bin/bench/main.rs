//! The benchmark: postern beside an OpenSSH reverse tunnel (`ssh -N -R`) and direct loopback,
//! on one machine in one run, printed as one table. `tests/bench/run` is the entry.

mod interrupt;
mod many_agents;
mod openssh;
mod postern;
mod procs;
mod recovery;
mod signing;
mod small_calls;
mod streams;
mod table;
mod upstream;
mod wrk;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::{Parser, ValueEnum};
use postern_tests::harness::{Bins, RelayProcess};
use postern_tests::keys::RsaTestKey;
use postern_tests::relay_support::relay_command;
use postern_tests::temp::TempDir;
use postern_tests::token_endpoint::{EndpointConfig, ExpiresIn, TokenEndpoint};
use tokio_util::sync::CancellationToken;

use crate::openssh::Sshd;
use crate::postern::Postern;
use crate::procs::Kill;

#[derive(Parser, Clone)]
#[command(about = "postern beside ssh -R and direct loopback, one table")]
pub struct Args {
    /// Scenarios to run, in this order (default: all; streams first, so their memory
    /// peaks are not those left by 256 connections of small calls).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "streams,small,signing,recovery,agents"
    )]
    only: Vec<Scenario>,
    /// Seconds per wrk run.
    #[arg(long, default_value_t = 15)]
    seconds: u64,
    /// Runs per figure; the median is reported.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Concurrent connections per wrk run, one run set per value.
    #[arg(long, value_delimiter = ',', default_values_t = [32u64, 256])]
    connections: Vec<u64>,
    /// Stream size in MiB.
    #[arg(long, default_value_t = 1024)]
    stream_mib: u64,
    /// Idle agent counts for the many-agents scenario.
    #[arg(long, value_delimiter = ',', default_values_t = [1000u64, 10000])]
    agents: Vec<u64>,
    /// `ssh -R` clients for sshd's memory per client.
    #[arg(long, default_value_t = 50)]
    ssh_clients: usize,
    /// Relay restarts in the recovery scenario.
    #[arg(long, default_value_t = 20)]
    restarts: usize,
    /// Seconds of signing per algorithm.
    #[arg(long, default_value_t = 2)]
    sign_seconds: u64,
    /// The relay binary (default: e2e-postern-relay beside this program).
    #[arg(long)]
    relay_bin: Option<PathBuf>,
    /// The agent binary (default: e2e-postern beside this program).
    #[arg(long)]
    agent_bin: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    Small,
    Streams,
    Signing,
    Recovery,
    Agents,
}

/// What every scenario runs against, started once.
pub struct World {
    pub bins: Bins,
    pub dir: TempDir,
    pub fast: SocketAddr,
    pub rsa: RsaTestKey,
    pub exchange: TokenEndpoint,
    pub postern: Postern,
    pub sshd: Sshd,
    /// The loopback port `ssh -R` forwards to the internal server.
    pub ssh_port: u16,
    _tunnel: Kill,
    shutdown: CancellationToken,
}

impl World {
    async fn start(args: &Args) -> Result<Self> {
        let bins = Bins::beside_this_program(args.relay_bin.clone(), args.agent_bin.clone())?;
        let dir = TempDir::new("bench")?;
        interrupt::remove_on_interrupt(dir.path());
        let shutdown = CancellationToken::new();
        let fast = upstream::fast_server(shutdown.clone()).await?;
        let rsa = postern_tests::keys::rsa_2048()?;
        let rsa_pem = dir.write_private("rsa.pem", &rsa.private_pem)?;
        let exchange = TokenEndpoint::start(EndpointConfig {
            key: jsonwebtoken::DecodingKey::from_rsa_der(&rsa.public_der),
            algorithm: jsonwebtoken::Algorithm::RS256,
            audience: "https://idp.test/token".into(),
            issuer: "postern-edge".into(),
            grant_type: "urn:ietf:params:oauth:grant-type:jwt-bearer".into(),
            expires_in: ExpiresIn::Number(3600),
            delay: Duration::ZERO,
            reissue: false,
        })
        .await?;
        let postern = postern::start_postern(&bins, dir.path(), fast, &exchange, &rsa_pem).await?;
        let sshd = openssh::start_sshd(dir.path())?;
        let ssh_port = procs::free_port()?;
        let tunnel = openssh::ssh_reverse(&sshd, ssh_port, fast.port())?;
        Ok(Self {
            bins,
            dir,
            fast,
            rsa,
            exchange,
            postern,
            sshd,
            ssh_port,
            _tunnel: tunnel,
            shutdown,
        })
    }

    /// The relay again, on the ports and state of the first one.
    pub fn start_relay(&self) -> Result<RelayProcess> {
        RelayProcess::spawn(
            relay_command(&self.bins, &self.postern.relay_toml),
            &self.postern.state,
        )
    }
}

impl Drop for World {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn bench(args: Args) -> Result<()> {
    let mut w = World::start(&args).await?;
    let mut rows = table::Table::new();
    for scenario in &args.only {
        match scenario {
            Scenario::Small => small_calls::run(&w, &args, &mut rows)?,
            Scenario::Streams => streams::run(&w, &args, &mut rows).await?,
            Scenario::Signing => signing::run(&w, &args, &mut rows)?,
            Scenario::Recovery => recovery::run(&mut w, &args, &mut rows).await?,
            Scenario::Agents => many_agents::run(&mut w, &args, &mut rows).await?,
        }
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    if let Err(e) = interrupt::watch() {
        eprintln!("bench: cannot watch for Ctrl-C: {e}");
        return std::process::ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("bench: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(bench(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            interrupt::wait_if_interrupted();
            eprintln!("bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
