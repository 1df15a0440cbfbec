//! `svcplane run --mode ebpf` end to end: the daemon in a "node" namespace attaches to a
//! child cgroup the test creates; clients are processes in that cgroup and namespace (the
//! python client of `ebpf/tests/client.py`), backends are namespaces on veth pairs (see
//! `tests/netns/mod.rs`). `local 10.96.0.0/12` is routed to `lo` in the node namespace, so
//! a connection the programs did not rewrite is refused there and never leaves. Needs root.
//!
//! The data plane's own behaviour (UDP, IPv6, NodePorts, ordering of map writes) is tested
//! in `ebpf/tests/`; this file tests what the binary adds: the flags, the health self-test
//! through the programs, routing across a crash and a restart, and `svcplane cleanup`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers panic with context, like the tests that call them"
)]

mod netns;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use netns::{BIN, Topology, write_manifest};

static SEQ: AtomicUsize = AtomicUsize::new(0);

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// A child cgroup of the cgroup2 root, removed on drop.
struct Cgroup(PathBuf);

impl Cgroup {
    fn new() -> Cgroup {
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let root = info
            .lines()
            .find_map(|l| {
                let (pre, post) = l.split_once(" - ")?;
                (post.split_whitespace().next()? == "cgroup2")
                    .then(|| PathBuf::from(pre.split_whitespace().nth(4).unwrap()))
            })
            .expect("a cgroup2 mount");
        let dir = root.join(unique("svcplane-bin-test"));
        std::fs::create_dir(&dir).unwrap();
        Cgroup(dir)
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::fs::remove_dir(&self.0).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A pin root on bpffs, removed on drop (also when the test fails).
struct Pins(PathBuf);

impl Drop for Pins {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn web(t: &Topology, backends: usize) -> String {
    let eps: String = t.backends[..backends]
        .iter()
        .map(|b| format!("- {{addresses: [\"{}\"]}}\n", b.v4))
        .collect();
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: default}}\n\
         spec:\n  clusterIP: 10.96.0.10\n  ports: [{{name: http, port: 80, targetPort: 8080}}]\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: web-1, namespace: default, labels: {{kubernetes.io/service-name: web}}}}\n\
         addressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints:\n{eps}"
    )
}

/// `n` TCP requests to the VIP from a client process in the cgroup and the node namespace:
/// the backend names (or `ERR ...`).
fn requests(cg: &Path, node_ns: &str, n: usize) -> Vec<String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("ebpf/tests/client.py");
    let shell = format!(
        "echo $$ > {} && exec nsenter --net=/run/netns/{node_ns} python3 {} tcp 10.96.0.10 80 {n}",
        cg.join("cgroup.procs").display(),
        script.display()
    );
    let out = Command::new("sh").arg("-c").arg(shell).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.split_whitespace().next().unwrap_or_default().to_string())
        .collect()
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn status_of(raw: &str) -> u16 {
    raw.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[test]
fn ebpf_mode_routes_across_a_crash_and_a_restart_until_cleanup() {
    if !netns::require_root() {
        return;
    }
    let t = Topology::new(3);
    netns::ip(&[
        "-n",
        &t.node.name,
        "route",
        "add",
        "local",
        "10.96.0.0/12",
        "dev",
        "lo",
    ]);
    let cg = Cgroup::new();
    let pins = Pins(PathBuf::from("/sys/fs/bpf").join(unique("svcplane-bin-test")));
    let dir = tempfile::tempdir().unwrap();
    write_manifest(dir.path(), "web.yaml", &web(&t, 3));
    let flags = [
        "--mode",
        "ebpf",
        "--cgroup",
        cg.0.to_str().unwrap(),
        "--bpf-pin-root",
        pins.0.to_str().unwrap(),
    ];
    let mut d = t.daemon(dir.path(), &flags);
    wait_for("/readyz", || status_of(&d.get(&t.node, "/readyz")) == 200);

    // Exact round-robin through the programs.
    let got = requests(&cg.0, &t.node.name, 6);
    let mut sorted = got.clone();
    sorted.sort();
    assert_eq!(sorted, ["b0", "b0", "b1", "b1", "b2", "b2"], "{got:?}");
    assert_eq!(got[..3], got[3..], "a rotation repeats: {got:?}");

    // The self-test connects through the programs, from a process in the cgroup.
    let mut health = String::new();
    wait_for("/healthz 200", || {
        health = d.get(&t.node, "/healthz");
        status_of(&health) == 200
    });
    assert!(
        health.contains("self-test through the ebpf data plane"),
        "{health}"
    );

    // `status` lists what the maps hold: the VIP with its endpoints in slot order and the
    // programs' connection counts (nothing else is counted), and the self-test frontend.
    let table = d.status(&[]);
    assert!(
        table.starts_with("mode ebpf, snapshot version 1\n"),
        "{table}"
    );
    let vip = table
        .lines()
        .position(|l| l.starts_with("TCP   10.96.0.10:80 "))
        .unwrap_or_else(|| panic!("{table}"));
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[vip].contains("ClusterIP") && lines[vip].contains("default/web:80"),
        "{table}"
    );
    for (k, line) in lines[vip + 1..vip + 4].iter().enumerate() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let ep = format!("10.201.{k}.2:8080");
        assert_eq!(
            fields,
            ["->", &ep, "ready", "-", "2", "-", "-", "-"],
            "{table}"
        );
    }
    assert!(table.contains("self-test"), "{table}");
    let json: serde_json::Value = serde_json::from_str(&d.status(&["-o", "json"])).unwrap();
    assert_eq!(json["mode"], "ebpf");

    let metrics = d.get(&t.node, "/metrics");
    assert!(
        metrics.contains("kubeproxy_sync_proxy_rules_duration_seconds_count 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("svcplane_ebpf_frontends 2"),
        "the VIP and the self-test: {metrics}"
    );
    for k in 0..3 {
        let line = format!(
            "svcplane_proxy_connections_total{{service=\"default/web\",port=\"80\",protocol=\"TCP\",endpoint=\"10.201.{k}.2:8080\"}} 2\n"
        );
        assert!(metrics.contains(&line), "{line} in {metrics}");
    }
    assert!(
        metrics.contains("svcplane_proxy_rejected_total{reason=\"no_endpoint\"} 0\n"),
        "{metrics}"
    );

    // A crash leaves the programs pinned: traffic still routes.
    d.kill9();
    let got = requests(&cg.0, &t.node.name, 3);
    assert!(
        got.iter().all(|n| n.starts_with('b')),
        "after SIGKILL: {got:?}"
    );

    // A change made while the daemon is down is picked up by the next one.
    write_manifest(dir.path(), "web.yaml", &web(&t, 2));
    let d = t.daemon(dir.path(), &flags);
    wait_for("/readyz after restart", || {
        status_of(&d.get(&t.node, "/readyz")) == 200
    });
    let got = requests(&cg.0, &t.node.name, 6);
    let mut sorted = got.clone();
    sorted.sort();
    assert_eq!(sorted, ["b0", "b0", "b0", "b1", "b1", "b1"], "{got:?}");
    // The counters live in the pinned maps: the 2 + 1 + 3 connections each of b0 and b1
    // took before, during and after the crash; b2's slot went with its counter.
    let table = d.status(&[]);
    let counts: Vec<(String, String)> = table
        .lines()
        .skip_while(|l| !l.starts_with("TCP   10.96.0.10:80 "))
        .skip(1)
        .take_while(|l| l.starts_with("  -> "))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[1].to_string(), f[4].to_string())
        })
        .collect();
    assert_eq!(
        counts,
        [
            ("10.201.0.2:8080".to_string(), "6".to_string()),
            ("10.201.1.2:8080".to_string(), "6".to_string())
        ],
        "{table}"
    );
    let logs = d.log_text();
    assert!(d.terminate().success(), "{logs}");
    let got = requests(&cg.0, &t.node.name, 2);
    assert!(
        got.iter().all(|n| n.starts_with('b')),
        "after SIGTERM: {got:?}"
    );

    // cleanup removes every pin and detaches the programs: the VIP is plain local again.
    let out = Command::new(BIN)
        .args(["cleanup", "--bpf-pin-root", pins.0.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!pins.0.exists(), "pins left behind");
    let attached = Command::new("bpftool")
        .args(["cgroup", "show"])
        .arg(&cg.0)
        .output()
        .unwrap();
    let attached = String::from_utf8_lossy(&attached.stdout);
    wait_for("programs detached", || {
        let out = Command::new("bpftool")
            .args(["cgroup", "show"])
            .arg(&cg.0)
            .output()
            .unwrap();
        out.stdout.is_empty()
    });
    let got = requests(&cg.0, &t.node.name, 1);
    assert!(
        got[0].starts_with("ERR"),
        "not rewritten any more: {got:?} (was: {attached})"
    );
}

#[test]
fn ebpf_mode_names_what_is_missing() {
    if !netns::require_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args([
            "run",
            "--manifests",
            dir.path().to_str().unwrap(),
            "--mode",
            "ebpf",
        ])
        .args([
            "--cgroup",
            "/proc",
            "--admin-listen",
            "127.0.0.1:0",
            "--dns-listen",
            "127.0.0.1:0",
        ])
        .args(["--bpf-pin-root", "/sys/fs/bpf/svcplane-never-created"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("/proc is not a cgroup2 directory"), "{err}");
    assert!(!Path::new("/sys/fs/bpf/svcplane-never-created").exists());
}
