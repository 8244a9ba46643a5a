//! The `servente` binary: the command line, the closed set of roles, and the process lifecycle
//! (start, reload on SIGHUP, graceful stop on SIGTERM, fast stop on SIGINT).

mod app;
mod apps_cli;
mod cli;
mod users;

use std::process::ExitCode;

/// mimalloc: a request allocates a few small objects (headers, paths, futures) on one thread
/// and frees them on another; mimalloc's free lists handle that pattern faster than glibc's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    cli::run()
}
