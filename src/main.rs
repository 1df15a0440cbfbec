//! The `svcplane` binary: CLI, wiring, signals, admin HTTP. Thin on purpose: manifests,
//! snapshots and endpoint selection live in `svcplane-config`; data planes live in their own
//! crates.
//!
//! Commands in this build: `run` (modes `userspace` and `none`), `check`, `status`,
//! `demo` and `bench`.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser as _;

mod admin;
mod bench;
mod check;
mod cli;
mod demo;
mod logging;
mod run;
mod status;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match cli.command {
        cli::Command::Run(args) => run::main(*args),
        cli::Command::Check(args) => check::main(args),
        cli::Command::Demo(args) => demo::main(args),
        cli::Command::Status(args) => status::main(args),
        cli::Command::Bench(args) => bench::main(args),
    }
}
