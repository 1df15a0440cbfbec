//! The `svcplane` binary: CLI, wiring, signals, admin HTTP. Thin on purpose: manifests,
//! snapshots and endpoint selection live in `svcplane-config`; data planes live in their own
//! crates.
//!
//! Commands in this build: `run` (modes `userspace` and `none`), `check`, `status` and
//! `demo`.

#![forbid(unsafe_code)]

use std::process::ExitCode;

mod admin;
mod check;
mod cli;
mod config_file;
mod demo;
mod health;
mod logging;
mod run;
mod status;
mod sync;

fn main() -> ExitCode {
    let cli = config_file::parse();
    match cli.command {
        cli::Command::Run(args) => run::main(*args),
        cli::Command::Check(args) => check::main(args),
        cli::Command::Demo(args) => demo::main(args),
        cli::Command::Status(args) => status::main(args),
    }
}
