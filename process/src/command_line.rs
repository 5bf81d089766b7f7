//! The command line every postern program parses first: a usage error exits 64, a code
//! no command uses for an outcome, where clap's own 2 would read as "no agent".

use std::process::ExitCode;

/// The exit code of a command line that does not parse (sysexits' EX_USAGE).
pub const USAGE_ERROR: u8 = 64;

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
