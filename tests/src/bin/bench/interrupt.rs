//! Ctrl-C, SIGTERM or SIGHUP in the middle of a run: the processes the bench started
//! (relay, agent, sshd, ssh, wrk) are stopped and its files removed, as at a normal end.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};

static DIRS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
/// Set before the children are stopped, so the run's own failure can tell it was this.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Removes `dir` if the run is interrupted (drop guards do it otherwise).
pub fn remove_on_interrupt(dir: &Path) {
    if let Ok(mut dirs) = DIRS.lock() {
        dirs.push(dir.to_owned());
    }
}

/// Watches for the signals from a thread of its own: the scenarios block their thread
/// while wrk runs, so the run's own runtime cannot be relied on to notice.
pub fn watch() -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // Registered before the run starts, so no signal finds the default action first.
    let mut signals = runtime.block_on(async {
        Ok::<_, std::io::Error>([
            signal(SignalKind::interrupt())?,
            signal(SignalKind::terminate())?,
            signal(SignalKind::hangup())?,
        ])
    })?;
    std::thread::Builder::new()
        .name("interrupt".into())
        .spawn(move || {
            runtime.block_on(async {
                let [int, term, hup] = &mut signals;
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                    _ = hup.recv() => {}
                }
            });
            INTERRUPTED.store(true, Ordering::SeqCst);
            eprintln!("bench: interrupted; stopping what it started");
            stop_children();
            if let Ok(dirs) = DIRS.lock() {
                for dir in dirs.iter() {
                    let _ = std::fs::remove_dir_all(dir);
                }
            }
            std::process::exit(130);
        })?;
    Ok(())
}

/// When the run failed because an interrupt stopped its children (wrk killed mid-run),
/// leaves the exit to the interrupt's thread: its cleanup and status 130, not a failure.
pub fn wait_if_interrupted() {
    if INTERRUPTED.load(Ordering::SeqCst) {
        // The thread exits the process once its cleanup is done; this bounds the wait.
        std::thread::sleep(Duration::from_secs(30));
        std::process::exit(130);
    }
}

/// SIGKILL to every process whose parent is the bench; their own children (sshd's
/// per-connection processes) end with the connections.
fn stop_children() {
    let children: Vec<String> = postern_tests::harness::children_of(std::process::id())
        .into_iter()
        .map(|(pid, _)| pid.to_string())
        .collect();
    if !children.is_empty() {
        let _ = std::process::Command::new("kill")
            .arg("-KILL")
            .args(&children)
            .status();
    }
}
