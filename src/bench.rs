//! `svcplane bench`: the CLI side of the `svcplane-bench` crate.

use std::process::ExitCode;
use std::time::Duration;

use crate::cli::BenchArgs;

pub(crate) fn main(args: BenchArgs) -> ExitCode {
    let svcplane = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("svcplane bench: cannot find this binary to run its daemons: {e}");
            return ExitCode::FAILURE;
        }
    };
    let secs = |s: f64| Duration::from_secs_f64(s.max(0.0));
    let mut modes = args.modes;
    modes.dedup();
    let config = svcplane_bench::BenchConfig {
        modes,
        endpoints: usize::from(args.endpoints),
        services: args.services,
        tests: args.tests,
        duration: secs(args.duration),
        runs: args.runs,
        out: args.out,
        max_load: args.max_load,
        connections: args.connections,
        rate: args.rate,
        bulk_bytes: args.bulk_mib * 1024 * 1024,
        proxy_cpu: args.proxy_cpu,
        load_cpu: args.load_cpu,
        warmup: secs(args.warmup),
        svcplane,
        svcplane_version: env!("CARGO_PKG_VERSION").to_string(),
        dns: args.dns,
        dns_rate: args.dns_rate,
        iptables_backend: args.iptables_backend,
    };
    match svcplane_bench::run(&config) {
        Ok(table) => {
            println!("{table}");
            eprintln!(
                "wrote {0}/results.json, {0}/results.md, {0}/ratios.svg",
                config.out.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("\nsvcplane bench: {e}");
            ExitCode::FAILURE
        }
    }
}
