//! The command line every postern program parses first: a usage error exits 64, a code
//! no command uses for an outcome, where clap's own 2 would read as "no agent".

use std::process::ExitCode;

/// The exit code of a command line that does not parse (sysexits' EX_USAGE).
pub const USAGE_ERROR: u8 = 64;

/// A command line that parses but does not go together (`--algorithm` without `--auth
/// jwt_bearer`): checked after clap, it exits [`USAGE_ERROR`] all the same.
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// The exit code for an error a command ended with: [`USAGE_ERROR`] for a [`UsageError`]
/// anywhere in its chain, else 1.
pub fn failure_code(error: &(dyn std::error::Error + 'static)) -> ExitCode {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if e.is::<UsageError>() {
            return ExitCode::from(USAGE_ERROR);
        }
        cause = e.source();
    }
    ExitCode::FAILURE
}

/// The parsed command line, or the exit code once clap has said why not (or printed
/// `--help` or `--version`, which exit 0).
pub fn parse<C: clap::Parser>() -> Result<C, ExitCode> {
    C::try_parse().map_err(|e| {
        let code = if e.use_stderr() { USAGE_ERROR } else { 0 };
        // Nothing more to say if the terminal is gone.
        let _ = e.print();
        ExitCode::from(code)
    })
}
