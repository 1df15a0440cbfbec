//! The `svcplane` binary: CLI, wiring, signals, admin HTTP. Thin on purpose: manifests,
//! snapshots and endpoint selection live in `svcplane-config`; data planes live in their own
//! crates.
//!
//! Commands in this build: `run` (modes `userspace`, `ebpf` and `none`), `check`, `status`,
//! `demo`, `cleanup` and `bench`.

#![forbid(unsafe_code)]

use std::process::ExitCode;

mod admin;
mod bench;
mod check;
mod cleanup;
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
        cli::Command::Cleanup(args) => cleanup::main(args),
        cli::Command::SelfTestProbe(args) => health::probe_main(args),
        cli::Command::Bench(args) => bench::main(args),
    }
}
