//! The allocator tuning `postern run` and `postern-relay serve` run with, however they
//! are started: the process re-executes itself once with it set, before any thread starts.
//!
//! glibc hands freed memory back to the kernel once 128 KiB lie free at the top of a
//! heap, and maps buffers from 128 KiB up one by one, so 1 GiB streams faulted 30–90k
//! pages a second in again. With up to 16 MiB per heap kept mapped and buffers below
//! 4 MiB taken from the heap: faults < 1k/s, downloads ~+10%, peak RSS +10 MiB, idle
//! agents' memory unchanged (BENCHMARKS.md, item 14). glibc reads the setting only at
//! start-up, and setting it in-process (`mallopt`) would take unsafe FFI, hence the exec.

use std::ffi::OsString;

/// The environment variable glibc reads its tunables from.
pub const TUNABLES_VAR: &str = "GLIBC_TUNABLES";
/// What the long-running commands run with.
pub const ALLOCATOR_TUNING: &str =
    "glibc.malloc.trim_threshold=16777216:glibc.malloc.mmap_threshold=4194304";

/// What [`tune_allocator`] did, for the log once logging is up.
#[derive(Debug)]
pub enum Tuning {
    /// `GLIBC_TUNABLES` was set already: ours after the exec, or the operator's own
    /// choice (any value, even empty, opts out), which is kept as it is.
    AlreadySet(OsString),
    /// Not a glibc build: nothing to tune.
    NotGlibc,
    /// The exec failed (no `/proc`?): running untuned.
    ExecFailed(std::io::Error),
}

/// Re-executes this program with [`ALLOCATOR_TUNING`] unless `GLIBC_TUNABLES` is set
/// already; returns only if it did not. Call it first thing, while the process has one
/// thread and nothing to lose: the same PID, arguments, descriptors and environment go on.
pub fn tune_allocator() -> Tuning {
    if let Some(value) = std::env::var_os(TUNABLES_VAR) {
        return Tuning::AlreadySet(value);
    }
    reexec()
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn reexec() -> Tuning {
    use std::os::unix::process::CommandExt;
    let mut args = std::env::args_os();
    let mut command = std::process::Command::new("/proc/self/exe");
    if let Some(name) = args.next() {
        command.arg0(name);
    }
    Tuning::ExecFailed(
        command
            .args(args)
            .env(TUNABLES_VAR, ALLOCATOR_TUNING)
            .exec(),
    )
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn reexec() -> Tuning {
    Tuning::NotGlibc
}

impl Tuning {
    /// Says in the log, once logging is up, when the process runs without the tuning.
    pub fn log(&self) {
        match self {
            Tuning::AlreadySet(value) if value != ALLOCATOR_TUNING => tracing::info!(
                "{TUNABLES_VAR} is set to {value:?}: kept as it is, without the allocator tuning ({ALLOCATOR_TUNING})"
            ),
            Tuning::ExecFailed(e) => tracing::warn!(
                "could not re-execute with {TUNABLES_VAR}={ALLOCATOR_TUNING} ({e}); running without the allocator tuning"
            ),
            Tuning::AlreadySet(_) | Tuning::NotGlibc => {}
        }
    }
}
