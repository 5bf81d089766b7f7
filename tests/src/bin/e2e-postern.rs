//! The agent's CLI under a test name; identical to `postern`.
fn main() -> std::process::ExitCode {
    postern_agent::cli::main()
}
