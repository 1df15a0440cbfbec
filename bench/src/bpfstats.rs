//! CPU time spent in the eBPF data plane's programs, from the kernel's own accounting
//! (`kernel.bpf_stats_enabled`: every program run adds its duration to the program's
//! `run_time_ns`). Noise on a shared machine moves connection rates by ±10–30 % between
//! runs; the programs' nanoseconds per connection are what the eBPF mode adds to a direct
//! connection, measured without that noise.

use std::path::{Path, PathBuf};

use crate::sys;

const STATS_SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// Turns the kernel's BPF run-time statistics on while alive; restores the old setting.
#[derive(Debug)]
pub(crate) struct BpfStats {
    cgroup: PathBuf,
    old: String,
}

impl BpfStats {
    /// `None` when bpftool is missing or the statistics cannot be enabled.
    pub(crate) fn enable(cgroup: &Path) -> Option<Self> {
        if !sys::have_tool("bpftool") {
            return None;
        }
        let old = std::fs::read_to_string(STATS_SYSCTL).ok()?;
        std::fs::write(STATS_SYSCTL, "1").ok()?;
        Some(BpfStats {
            cgroup: cgroup.to_path_buf(),
            old: old.trim().to_string(),
        })
    }

    /// (runs, nanoseconds) summed over the programs attached to the cgroup.
    pub(crate) fn totals(&self) -> Option<(u64, u64)> {
        let cg = self.cgroup.to_str()?;
        let attached = sys::run("bpftool", &["-j", "cgroup", "show", cg]).ok()?;
        let attached: serde_json::Value = serde_json::from_str(&attached).ok()?;
        let (mut runs, mut ns) = (0, 0);
        for prog in attached.as_array()? {
            let id = prog.get("id")?.as_u64()?.to_string();
            let shown = sys::run("bpftool", &["-j", "prog", "show", "id", &id]).ok()?;
            let shown: serde_json::Value = serde_json::from_str(&shown).ok()?;
            runs += shown
                .get("run_cnt")
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(0);
            ns += shown
                .get("run_time_ns")
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(0);
        }
        Some((runs, ns))
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write(STATS_SYSCTL, &self.old);
    }
}
