//! `postern`: the whole program lives in the library (`cli::main`), so the
//! tests can run the same binary under another name.

fn main() -> std::process::ExitCode {
    postern_agent::cli::main()
}
