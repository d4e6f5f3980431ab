//! The `invoke-guard` binary: parse the command line and hand over to `cli`.
//!
//! The process allocator is mimalloc: on the allow path glibc's malloc/free were ~9 % of the
//! guard's CPU (docs/benchmarks.md, profile of 2026-11-29); the allocator changes no behaviour.

use clap::Parser;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    invoke_guard::cli::main(invoke_guard::cli::Cli::parse())
}
