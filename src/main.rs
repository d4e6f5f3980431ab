//! The `invoke-guard` binary: parse the command line and hand over to `cli`.

use clap::Parser;

fn main() -> std::process::ExitCode {
    invoke_guard::cli::main(invoke_guard::cli::Cli::parse())
}
