//! The `p11kms` command: the daemon (`serve`), the configuration proof (`check`), the dev
//! set-up, and client commands for people. Parses the arguments and dispatches; the
//! commands are in [`cli`], one module per command family, and the work is in the library.

#![deny(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

mod cli;

/// mimalloc instead of glibc's allocator: per-thread free lists without the arena lock and
/// fastbin consolidation that cost the request path ~14 % of daemon CPU
/// (docs/benchmarks.md, "Allocator").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match cli::run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
