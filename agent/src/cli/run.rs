//! `postern run`: the daemon in the foreground; SIGINT/SIGTERM cancel the tunnel, which
//! drains in-flight calls before it returns (a second one, at once); SIGHUP reloads.

use std::path::PathBuf;

use anyhow::{Context, Result};
use postern_process::StopSignals;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::tunnel::TunnelState;

pub(crate) fn run_daemon(path: PathBuf) -> Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    // Before the config is loaded (key files, maybe slow): a SIGHUP sent meanwhile, say by
    // `systemctl reload` right after `start`, must not end the daemon.
    let hangup = {
        let _in_runtime = runtime.enter();
        crate::daemon::listen_for_hangup()
    };
    let config = super::load(&path)?;
    let ran = runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        let hurry = CancellationToken::new();
        let (signals, hurried) = (shutdown.clone(), hurry.clone());
        let mut stops = StopSignals::listen("the agent");
        tokio::spawn(async move {
            stops.next().await;
            tracing::info!("shutdown requested; draining (a second signal stops at once)");
            postern_process::service_manager::stopping(
                "stopping: calls under way finish (up to 30 s), then the session ends",
            );
            signals.cancel();
            stops.next().await;
            hurried.cancel();
        });
        let (state, _watch) = watch::channel(TunnelState::default());
        let daemon = crate::daemon::run_with_hangup(config, Some(path), hangup, shutdown, state);
        tokio::select! {
            ran = daemon => ran.map(|()| false),
            // As the relay does: whoever sends it wants the agent gone now, not after the
            // calls' 30 s; dropping the daemon drops the session and the calls with it.
            () = hurry.cancelled() => {
                tracing::warn!("second signal: stopping at once; the calls still under way are cut off");
                Ok(true)
            }
        }
    });
    // Not a plain drop, which waits for every blocking task: a name lookup left running
    // by a connect given up on (a dead resolver takes 5 s a try) would hold the exit
    // past the unit's TimeoutStopSec once the drain has had its 30 s. Hurried, no wait.
    match ran {
        Ok(true) => runtime.shutdown_background(),
        _ => runtime.shutdown_timeout(BLOCKING_TASKS_AT_EXIT),
    }
    ran.map(|_| ()).map_err(Into::into)
}

/// How long the exit waits for blocking tasks (name lookups, file reads) still running.
const BLOCKING_TASKS_AT_EXIT: std::time::Duration = std::time::Duration::from_secs(2);
