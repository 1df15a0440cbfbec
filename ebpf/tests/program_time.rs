//! Programming time of the pinned maps (run by hand: `cargo test -p svcplane-ebpf --release
//! --test program_time -- --ignored --nocapture`): cold load of N services × 10 endpoints,
//! then one endpoint change, at 100 and 10,000 services.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod common;

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use common::{Env, wait_programmed};

/// Manifests of `n` Services in files of 200 (the YAML reader takes up to 1,024 documents
/// per file); `changed` moves one endpoint of the first Service.
fn services(n: usize, changed: bool) -> Vec<String> {
    let mut files = Vec::new();
    let mut out = String::new();
    for i in 0..n {
        if i > 0 && i % 200 == 0 {
            files.push(std::mem::take(&mut out));
        }
        let (hi, lo) = (i / 250, i % 250 + 1);
        write!(
            out,
            "---
apiVersion: v1
kind: Service
metadata: {{name: s{i}, namespace: default}}
spec:
  clusterIP: 10.{}.{hi}.{lo}
  ports: [{{port: 80, targetPort: 8080}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: s{i}, namespace: default, labels: {{kubernetes.io/service-name: s{i}}}}}
addressType: IPv4
ports: [{{port: 8080}}]
endpoints:
",
            96 + hi / 250
        )
        .unwrap();
        for e in 1..=10 {
            let e = if changed && i == 0 && e == 10 { 11 } else { e };
            writeln!(out, "- {{addresses: [10.1.{hi}.{}]}}", (lo + e) % 250 + 1).unwrap();
        }
    }
    files.push(out);
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, run by hand"]
async fn programming_time() {
    if !common::require_root() {
        return;
    }
    for n in [100usize, 10_000] {
        let mut env = Env::new();
        for (k, f) in services(n, false).iter().enumerate() {
            std::fs::write(env.manifests.path().join(format!("s{k}.yaml")), f).unwrap();
        }
        let snap = env.loader.reload().unwrap().0.unwrap();
        let v = snap.version;
        env.tx.send_replace(snap);
        let ports = env.tx.borrow().ports().len();
        if ports != n {
            let d = env.tx.borrow().diagnostics.clone();
            println!("{} errors, first: {:?}", d.errors.len(), d.errors.first());
        }
        assert_eq!(ports, n, "every Service loaded");
        let started = Instant::now();
        let dp = env.start().await;
        wait_programmed(&dp, v).await;
        let cold = started.elapsed();
        let mut one = Vec::new();
        for k in 0..5 {
            // Only the first file changes (a fresh name, so no timestamp tick hides it).
            // Loading is outside the measured time: only map programming is measured.
            let first = services(n, k % 2 == 0).swap_remove(0);
            let dir = env.manifests.path();
            let old = if k == 0 {
                "s0.yaml".to_string()
            } else {
                format!("c{}.yaml", k - 1)
            };
            std::fs::remove_file(dir.join(old)).unwrap();
            std::fs::write(dir.join(format!("c{k}.yaml")), first).unwrap();
            let snap = env.loader.reload().unwrap().0.unwrap();
            let v = snap.version;
            let t = Instant::now();
            env.tx.send_replace(snap);
            wait_programmed(&dp, v).await;
            one.push(t.elapsed());
        }
        one.sort();
        let entries = std::process::Command::new("bpftool")
            .args(["map", "show", "pinned"])
            .arg(env.pins.path.join("v1_services"))
            .output()
            .unwrap();
        println!("{}", String::from_utf8_lossy(&entries.stdout).trim());
        println!(
            "services={n} endpoints={} cold_load={:?} one_change_median={:?} min={:?}",
            n * 10,
            cold,
            one[one.len() / 2],
            one[0]
        );
        assert!(one[0] < Duration::from_secs(1));
        dp.stop().await;
    }
}
