//! New TCP connections per second to an endpoint directly and through a ClusterIP
//! (run by hand: `cargo test -p svcplane-ebpf --release --test connect_rate -- --ignored
//! --nocapture`). The test process joins the test's cgroup for the measurement (cgroup v2
//! moves whole processes), so run it alone.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod common;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use common::{Env, service, wait_programmed};

/// Connections per round; rounds alternate direct and cluster IP to share the noise.
const N: usize = 2_000;
const ROUNDS: usize = 7;

fn rate(ns: &common::Netns, to: SocketAddr) -> (f64, Duration) {
    ns.spawn(move || {
        let mut lat = Vec::with_capacity(N);
        let started = Instant::now();
        for _ in 0..N {
            let t = Instant::now();
            let s = TcpStream::connect(to).unwrap();
            lat.push(t.elapsed());
            drop(s);
        }
        let secs = started.elapsed().as_secs_f64();
        lat.sort();
        (N as f64 / secs, lat[lat.len() * 99 / 100])
    })
    .join()
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, run by hand"]
async fn connect_rate_direct_vs_cluster_ip() {
    if !common::require_root() {
        return;
    }
    let mut env = Env::new();
    // A listener that accepts and closes, in the namespace.
    let l = env
        .ns
        .spawn(|| TcpListener::bind("127.0.0.2:8080").unwrap())
        .join()
        .unwrap();
    std::thread::spawn(move || {
        for c in l.incoming() {
            drop(c);
        }
    });
    // Client-side TIME_WAIT would exhaust ports over many rounds.
    common::run(
        "nsenter",
        &[
            &format!("--net=/run/netns/{}", env.ns.name),
            "sysctl",
            "-qw",
            "net.ipv4.tcp_tw_reuse=1",
        ],
    );
    let v = env.publish(&service("web", &["10.96.0.10"], &[("127.0.0.2", true)]));
    let dp = env.start().await;
    wait_programmed(&dp, v).await;
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let own = own
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap()
        .to_string();
    let root = common::cgroup2_root();
    std::fs::write(
        env.cgroup.path.join("cgroup.procs"),
        std::process::id().to_string(),
    )
    .unwrap();
    let (mut direct, mut vip) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        direct.push(rate(&env.ns, "127.0.0.2:8080".parse().unwrap()));
        vip.push(rate(&env.ns, "10.96.0.10:80".parse().unwrap()));
    }
    let back = root.join(own.trim_start_matches('/'));
    std::fs::write(back.join("cgroup.procs"), std::process::id().to_string()).unwrap();
    let median = |v: &mut Vec<(f64, Duration)>| {
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
        v[v.len() / 2]
    };
    let (d, c) = (median(&mut direct), median(&mut vip));
    println!(
        "median of {ROUNDS} rounds x {N}: direct {:.0}/s (p99 {:?}); cluster IP {:.0}/s (p99 {:?}); {:.3}x",
        d.0,
        d.1,
        c.0,
        c.1,
        c.0 / d.0
    );
    dp.stop().await;
}
