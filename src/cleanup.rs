//! `svcplane cleanup`: removes what `run --mode ebpf` left pinned (maps, programs, links);
//! removing a link's pin detaches its program from the cgroup.

use std::process::ExitCode;

use crate::cli::CleanupArgs;

pub(crate) fn main(args: CleanupArgs) -> ExitCode {
    match svcplane_ebpf::cleanup(&args.bpf_pin_root) {
        Ok(()) => {
            println!(
                "removed {} and everything pinned under it",
                args.bpf_pin_root.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: cleanup {}: {e}", args.bpf_pin_root.display());
            ExitCode::FAILURE
        }
    }
}
