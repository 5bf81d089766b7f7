//! The relay's CLI under a test name; identical to `postern-relay`.
fn main() -> std::process::ExitCode {
    postern_relay::cli::main()
}
