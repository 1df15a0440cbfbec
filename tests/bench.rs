//! `svcplane bench` end to end, in a tiny configuration: a few modes, no filler Services,
//! one run of one second per test. Checks that the three outputs are well formed and hold
//! every requested cell; never asserts on timing. Needs root (CI runs as root).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers panic with context, like the tests that call them"
)]

mod netns;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use netns::{BIN, require_root};

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Network namespaces named like the bench's (`svb<pid>x<n>-...`).
fn bench_netns() -> BTreeSet<String> {
    let ns = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&ns.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with("svb"))
        .map(str::to_string)
        .collect()
}

/// One bench at a time: each waits for a quiet machine before every mode.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    ONE.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Runs `svcplane bench`; returns its output and pid (the prefix of its namespaces).
fn bench(out: &Path, modes: &str, services: &str, extra: &[&str]) -> (std::process::Output, u32) {
    let _one = one_at_a_time();
    let child = Command::new(BIN)
        .args(["bench", "--modes", modes, "--services", services])
        .args(["--duration", "1", "--runs", "1", "--warmup", "0.2"])
        .args(["--bulk-mib", "4", "--rate", "1000", "--connections", "8"])
        .args(["--dns-rate", "2000"])
        // Tests run next to other tests and builds: the load check is not what is tested.
        .args(["--max-load", "1000"])
        .arg("--out")
        .arg(out)
        .args(extra)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run svcplane bench");
    let pid = child.id();
    (
        child.wait_with_output().expect("svcplane bench output"),
        pid,
    )
}

#[test]
fn bench_writes_every_requested_cell() {
    if !require_root() {
        return;
    }
    // This build has the eBPF data plane (tests/ebpf.rs); it is measured like the others.
    let mut modes = vec!["direct", "userspace", "ebpf"];
    for (mode, tool) in [
        ("haproxy", "haproxy"),
        ("iptables", "iptables-restore"),
        ("nftables", "nft"),
    ] {
        if have(tool) {
            modes.push(mode);
        } else {
            eprintln!("{tool} is not installed: bench test without {mode}");
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let (r, pid) = bench(&out, &modes.join(","), "0", &[]);
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(r.status.success(), "svcplane bench failed:\n{stderr}");

    // results.json: machine facts, and a record for every mode x test (x services 0).
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    let machine = &json["machine"];
    assert!(machine["kernel"].as_str().is_some_and(|k| !k.is_empty()));
    assert!(machine["cpu_model"].is_string());
    assert_eq!(machine["load_average"].as_array().map(Vec::len), Some(3));
    let cells: BTreeSet<(String, String, u64)> = json["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["mode"].as_str().unwrap().to_string(),
                r["test"].as_str().unwrap().to_string(),
                r["services"].as_u64().unwrap(),
            )
        })
        .collect();
    for mode in &modes {
        for test in ["conn", "keepalive", "latency", "bulk"] {
            assert!(
                cells.contains(&(mode.to_string(), test.to_string(), 0)),
                "no {mode}/{test} record in results.json"
            );
        }
        let programs = !matches!(*mode, "direct" | "haproxy");
        assert_eq!(
            cells.contains(&(mode.to_string(), "program".to_string(), 0)),
            programs,
            "{mode}: program record"
        );
    }
    for r in json["records"].as_array().unwrap() {
        let figures = r["figures"].as_object().unwrap();
        assert!(!figures.is_empty(), "{r}");
        assert!(
            figures
                .values()
                .all(|v| v.as_f64().is_some_and(f64::is_finite)),
            "{r}"
        );
        let test = r["test"].as_str().unwrap();
        let key = match test {
            "conn" => "conn_per_s",
            "keepalive" => "req_per_s",
            "latency" => "p99_us",
            "bulk" => "gbit_per_s",
            _ => "cold_ms",
        };
        assert!(figures[key].as_f64().unwrap() > 0.0, "{r}");
    }
    // Every mode spreads new connections over the three backends (direct: all to b0).
    for r in json["records"].as_array().unwrap() {
        if r["test"] != "conn" {
            continue;
        }
        let share = |k: usize| r["figures"][format!("share_b{k}")].as_f64().unwrap();
        if r["mode"] == "direct" {
            assert!(share(0) > 0.999, "{r}");
        } else {
            for k in 0..3 {
                assert!((0.2..0.47).contains(&share(k)), "backend {k}: {r}");
            }
        }
    }
    // The eBPF programs' run time per connection, from the kernel's accounting.
    if have("bpftool") {
        let bpf: Vec<f64> = json["records"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["mode"] == "ebpf" && r["test"] == "conn")
            .filter_map(|r| r["figures"]["bpf_ns_per_op"].as_f64())
            .collect();
        assert!(
            !bpf.is_empty() && bpf.iter().all(|ns| *ns > 0.0),
            "bpf_ns_per_op {bpf:?}"
        );
    }
    // Every non-direct conn figure has a ratio to direct.
    let ratios = json["summary"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["figure"] == "conn_per_s" && c["mode"] != "direct")
        .filter(|c| c["ratio_to_direct"].as_f64().is_some())
        .count();
    assert_eq!(ratios, modes.len() - 1);

    // results.md: a header and one row per mode.
    let md = std::fs::read_to_string(out.join("results.md")).unwrap();
    assert!(md.contains("| services | mode | new conn/s |"), "{md}");
    for mode in &modes {
        let row = md
            .lines()
            .find(|l| l.starts_with(&format!("| 0 | {mode} |")))
            .unwrap_or_else(|| panic!("no row for {mode}:\n{md}"));
        assert_eq!(row.matches('|').count(), 16, "{row}");
        if *mode != "direct" {
            assert!(row.contains("x)"), "ratios in {row}");
        }
    }

    // DNS against Knot, when Knot is installed (`--dns auto`).
    if have("knotd") {
        let servers: BTreeSet<&str> = json["dns_records"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["services"] == 0 && r["figures"]["qps"].as_f64().is_some_and(|q| q > 0.0))
            .map(|r| r["server"].as_str().unwrap())
            .collect();
        assert_eq!(servers, BTreeSet::from(["knot", "svcplane"]));
        assert!(
            md.contains("| 0 | svcplane |") && md.contains("| 0 | knot |"),
            "{md}"
        );
    } else {
        eprintln!("knotd is not installed: bench test without DNS");
    }

    // ratios.svg: an SVG document with a bar per non-direct mode's legend entry.
    let svg = std::fs::read_to_string(out.join("ratios.svg")).unwrap();
    assert!(svg.starts_with("<svg"), "{}", &svg[..80.min(svg.len())]);
    assert!(svg.trim_end().ends_with("</svg>"));
    assert_eq!(svg.matches("<svg").count(), svg.matches("</svg>").count());
    for mode in modes.iter().filter(|m| **m != "direct") {
        assert!(
            svg.contains(&format!(">{mode}<")) || svg.contains(mode),
            "{mode} in svg"
        );
    }

    // Nothing left behind: no namespace of the run.
    let leftover: Vec<String> = bench_netns()
        .into_iter()
        .filter(|n| n.starts_with(&format!("svb{pid}x")))
        .collect();
    assert!(leftover.is_empty(), "namespaces left behind: {leftover:?}");
}

/// `--endpoints 1`: every mode sends to direct's backend; the BPF statistics switch is
/// restored afterwards.
#[test]
fn one_endpoint_sends_every_mode_to_directs_backend() {
    if !require_root() {
        return;
    }
    let stats = "/proc/sys/kernel/bpf_stats_enabled";
    let before = std::fs::read_to_string(stats).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let (r, _) = bench(
        &out,
        "direct,userspace,ebpf",
        "0",
        &["--endpoints", "1", "--tests", "conn", "--dns", "off"],
    );
    assert!(
        r.status.success(),
        "svcplane bench failed:\n{}",
        String::from_utf8_lossy(&r.stderr)
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(json["config"]["endpoints"], 1);
    let records = json["records"].as_array().unwrap();
    assert_eq!(records.len(), 3, "{records:?}");
    for r in records {
        let share = r["figures"]["share_b0"].as_f64().unwrap();
        assert!(share > 0.999, "{r}");
    }
    assert_eq!(std::fs::read_to_string(stats).unwrap(), before);
    // Out of range: refused by the parser.
    let bad = Command::new(BIN)
        .args(["bench", "--endpoints", "4"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--endpoints"));
}

#[test]
fn bench_refuses_what_it_cannot_measure() {
    if !require_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    // A machine busier than --max-load.
    let r = Command::new(BIN)
        .args([
            "bench",
            "--modes",
            "direct",
            "--services",
            "0",
            "--max-load",
            "0",
        ])
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&r.stderr);
    let loaded = std::fs::read_to_string("/proc/loadavg")
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse::<f64>()
        .unwrap()
        > 0.0;
    if loaded {
        assert!(!r.status.success());
        assert!(stderr.contains("load average"), "{stderr}");
    }
    // Unknown modes are refused by the CLI.
    let r = Command::new(BIN)
        .args(["bench", "--modes", "ipvs"])
        .output()
        .unwrap();
    assert!(!r.status.success());
    assert!(String::from_utf8_lossy(&r.stderr).contains("unknown mode"));
    assert!(!out.join("results.json").exists());
}

#[test]
fn ctrl_c_removes_everything() {
    if !require_root() {
        return;
    }
    let _one = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let before = bench_netns();
    let mut child = Command::new(BIN)
        .args([
            "bench",
            "--modes",
            "userspace",
            "--services",
            "0",
            "--runs",
            "1",
        ])
        .args(["--duration", "30", "--dns", "off", "--max-load", "1000"])
        .arg("--out")
        .arg(dir.path().join("out"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let ours = |n: &String| n.starts_with(&format!("svb{pid}x"));
    // Wait until the daemon runs in the run's node namespace.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let node = loop {
        if let Some(node) = bench_netns()
            .difference(&before)
            .find(|n| ours(n) && n.ends_with("-node"))
        {
            let pids = Command::new("ip")
                .args(["netns", "pids", node])
                .output()
                .unwrap();
            if !pids.stdout.is_empty() {
                break node.clone();
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the bench did not start its daemon"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let daemon: Vec<u32> = String::from_utf8_lossy(
        &Command::new("ip")
            .args(["netns", "pids", &node])
            .output()
            .unwrap()
            .stdout,
    )
    .split_whitespace()
    .filter_map(|p| p.parse().ok())
    .collect();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap()),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{status}");
    let left: Vec<String> = bench_netns().into_iter().filter(|n| ours(n)).collect();
    assert!(left.is_empty(), "namespaces left after Ctrl-C: {left:?}");
    for p in daemon {
        let alive = std::fs::read_to_string(format!("/proc/{p}/stat")).is_ok_and(|s| {
            !s.rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
        });
        assert!(!alive, "process {p} of the run still alive after Ctrl-C");
    }
    assert!(!Path::new(&format!("/tmp/svcplane-bench-{pid}")).exists());
}
