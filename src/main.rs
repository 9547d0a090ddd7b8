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
    if matches!(cli.command, cli::Command::Serve { .. }) {
        purge_freed_memory();
    }
    match cli::run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// mimalloc (v3) gives freed pages back to the system only once they have been free for
/// `purge_delay` (1 s by default) and only when it allocates again. So what a start-up load
/// frees stays resident while the daemon waits for requests: 115 MB instead of 66 MB with
/// 20,000 keys (docs/benchmarks.md, "Issue 17"). mimalloc reads the option from the
/// environment before `main`, so the daemon re-executes itself once, same PID and arguments,
/// with `MIMALLOC_PURGE_DELAY=10` (mimalloc v2's default) unless the operator set it.
fn purge_freed_memory() {
    use std::os::unix::process::CommandExt;
    const VAR: &str = "MIMALLOC_PURGE_DELAY";
    if std::env::var_os(VAR).is_some() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let err = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env(VAR, "10")
        .exec();
    // Only reached when the exec failed: serve on, with mimalloc's default.
    eprintln!("warning: could not restart with {VAR}=10 ({err}); freed memory is returned later");
}
