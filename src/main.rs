//! The `svcplane` binary: CLI, wiring, signals, admin HTTP. Thin on purpose: manifests,
//! snapshots and endpoint selection live in `svcplane-config`; data planes live in their own
//! crates.
//!
//! Commands in this build: `run` (mode `none`: load, validate and watch manifests, serve the
//! admin endpoint) and `check`.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser as _;

mod admin;
mod check;
mod cli;
mod logging;
mod run;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match cli.command {
        cli::Command::Run(args) => run::main(*args),
        cli::Command::Check(args) => check::main(args),
    }
}
