//! What every postern program does first: parse its command line, run on its allocator
//! (mimalloc) — `postern run` and `postern-relay serve` re-execute themselves once with
//! its setting — and listen for its signals; and which user it runs as.
//!
//! mimalloc instead of glibc's malloc: a small call costs the relay ~20% and the agent
//! ~10% less CPU (glibc spent it merging and splitting hyper's 8 KiB buffers, one per
//! HTTP message), with streams' throughput and peaks unchanged (BENCHMARKS.md, item 24).
//! mimalloc commits its arenas eagerly where the kernel overcommits, which took the
//! relay's memory per idle agent from ~60 to ~105 KiB; with `arena_eager_commit=0` it
//! stays at ~60. mimalloc reads its options from the environment when the process
//! starts, before `main`, and setting them in-process would take unsafe FFI, hence the
//! exec.

use std::ffi::OsString;

mod command_line;
pub mod lock_file;
pub mod service_manager;
mod signals;
pub use command_line::{USAGE_ERROR, UsageError, failure_code, parse};
pub use signals::{StopSignals, listen_or_warn};

/// The user this process runs as (its effective uid), or `None` without `/proc`: the
/// owner of `/proc/self`, which saves an unsafe `geteuid` call.
pub fn current_uid() -> Option<u32> {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
        .ok()
}

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The environment variable the long-running commands set for mimalloc.
pub const TUNING_VAR: &str = "MIMALLOC_ARENA_EAGER_COMMIT";
/// Its value: commit arena memory as it is used, not all at once.
pub const TUNING_VALUE: &str = "0";

/// What [`tune_allocator`] did, for the log once logging is up.
#[derive(Debug)]
pub enum Tuning {
    /// `MIMALLOC_ARENA_EAGER_COMMIT` was set already: ours after the exec, or the
    /// operator's own choice (any value), which is kept as it is.
    AlreadySet(OsString),
    /// Not Linux: no `/proc/self/exe` to re-execute.
    Unsupported,
    /// The exec failed (no `/proc`?): running with mimalloc's defaults.
    ExecFailed(std::io::Error),
}

/// Re-executes this program with [`TUNING_VAR`]=[`TUNING_VALUE`] unless it is set
/// already; returns only if it did not. Call it first thing, while the process has one
/// thread and nothing to lose: the same PID, arguments, descriptors and environment go on.
pub fn tune_allocator() -> Tuning {
    if let Some(value) = std::env::var_os(TUNING_VAR) {
        keep_name();
        return Tuning::AlreadySet(value);
    }
    reexec()
}

/// After the exec of `/proc/self/exe` the kernel names the process `exe`, which `ps -C`,
/// `pgrep`, `top` and journald's `_COMM` show: it gets its own name back (argv[0]'s,
/// as the kernel keeps at most 15 bytes of it).
#[cfg(target_os = "linux")]
fn keep_name() {
    let Ok(current) = std::fs::read_to_string("/proc/self/comm") else {
        return;
    };
    if current.trim_end() != "exe" {
        return;
    }
    let Some(name) = std::env::args_os()
        .next()
        .and_then(|a| std::path::Path::new(&a).file_name().map(|n| n.to_owned()))
    else {
        return;
    };
    let name = name.as_encoded_bytes();
    let _ = std::fs::write("/proc/self/comm", &name[..name.len().min(15)]);
}

#[cfg(not(target_os = "linux"))]
fn keep_name() {}

#[cfg(target_os = "linux")]
fn reexec() -> Tuning {
    use std::os::unix::process::CommandExt;
    let mut args = std::env::args_os();
    let mut command = std::process::Command::new("/proc/self/exe");
    if let Some(name) = args.next() {
        command.arg0(name);
    }
    Tuning::ExecFailed(command.args(args).env(TUNING_VAR, TUNING_VALUE).exec())
}

#[cfg(not(target_os = "linux"))]
fn reexec() -> Tuning {
    Tuning::Unsupported
}

impl Tuning {
    /// Says in the log, once logging is up, when the process runs without the setting.
    pub fn log(&self) {
        match self {
            Tuning::AlreadySet(value) if value != TUNING_VALUE => tracing::info!(
                "{TUNING_VAR} is set to {value:?}: kept as it is, instead of {TUNING_VALUE}"
            ),
            Tuning::ExecFailed(e) => tracing::warn!(
                "could not re-execute with {TUNING_VAR}={TUNING_VALUE} ({e}); running with mimalloc's defaults, which keep more memory per connection"
            ),
            Tuning::AlreadySet(_) | Tuning::Unsupported => {}
        }
    }
}
