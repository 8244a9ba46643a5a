//! The `servente` binary: the command line, the closed set of roles, and the process lifecycle
//! (start, reload on SIGHUP, graceful stop on SIGTERM, fast stop on SIGINT).

mod app;
mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    cli::run()
}
