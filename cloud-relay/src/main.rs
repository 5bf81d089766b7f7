//! `postern-relay`: the whole program lives in the library (`cli::main`),
//! so the tests can run the same binary under another name.

fn main() -> std::process::ExitCode {
    postern_relay::cli::main()
}
