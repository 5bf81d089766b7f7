//! Writing to stdout. `postern status | head -1` closes the pipe before everything is
//! written; `println!` would panic there, so output goes through [`stdout`].

use std::io::{self, Write};

use anyhow::{Context, Result};

/// Runs `write` on a locked stdout and flushes it. A reader that went away (BrokenPipe)
/// is not an error: it has read all it wanted, so the command still succeeds.
pub(crate) fn stdout(write: impl FnOnce(&mut dyn Write) -> io::Result<()>) -> Result<()> {
    let mut out = io::stdout().lock();
    quiet_broken_pipe(write(&mut out).and_then(|()| out.flush())).context("writing to stdout")
}

fn quiet_broken_pipe(result: io::Result<()>) -> io::Result<()> {
    match result {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broken_pipe_is_success_and_other_errors_stay() {
        assert!(quiet_broken_pipe(Err(io::ErrorKind::BrokenPipe.into())).is_ok());
        assert!(quiet_broken_pipe(Err(io::ErrorKind::PermissionDenied.into())).is_err());
    }
}
