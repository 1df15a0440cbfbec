//! End-to-end tests of the eBPF data plane: real programs on a child cgroup, clients in a
//! network namespace (see `common`). Need root; skipped otherwise.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod common;

use common::{Backend, Env, require_root, service, wait_programmed};

fn names(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .map(|l| l.split_whitespace().next().unwrap_or("").to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_round_robin_is_exact() {
    if !require_root() {
        return;
    }
    let mut env = Env::new();
    let _b: Vec<Backend> = (1..=3)
        .map(|i| {
            Backend::start(
                &env.ns,
                &format!("b{i}"),
                &format!("127.0.0.{}:8080", i + 1),
            )
        })
        .collect();
    let v = env.publish(&service(
        "web",
        &["10.96.0.10"],
        &[
            ("127.0.0.2", true),
            ("127.0.0.3", true),
            ("127.0.0.4", true),
        ],
    ));
    let dp = env.start().await;
    wait_programmed(&dp, v).await;
    let lines = env.client(&["tcp", "10.96.0.10", "80", "9"]);
    let got = names(&lines);
    assert_eq!(got.len(), 9, "{lines:?}");
    // Exact rotation: every window of 3 holds each backend once, in the same order.
    for w in got.chunks(3) {
        let mut s = w.to_vec();
        s.sort();
        assert_eq!(s, ["b1", "b2", "b3"], "{got:?}");
        assert_eq!(w, &got[..3], "{got:?}");
    }
}

fn three_backends(env: &Env) -> Vec<Backend> {
    (1..=3)
        .map(|i| {
            Backend::start(
                &env.ns,
                &format!("b{i}"),
                &format!("127.0.0.{}:8080", i + 1),
            )
        })
        .chain((1..=3).map(|i| {
            Backend::start(
                &env.ns,
                &format!("b{i}"),
                &format!("127.0.0.{}:5353", i + 1),
            )
        }))
        .collect()
}

const THREE: [(&str, bool); 3] = [
    ("127.0.0.2", true),
    ("127.0.0.3", true),
    ("127.0.0.4", true),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unconnected_udp_sticks_per_socket_and_replies_come_from_the_vip() {
    if !require_root() {
        return;
    }
    let mut env = Env::new();
    let _b = three_backends(&env);
    let v = env.publish(&service("dns", &["10.96.0.10"], &THREE));
    let dp = env.start().await;
    wait_programmed(&dp, v).await;
    let mut firsts = Vec::new();
    for _ in 0..3 {
        let lines = env.client(&["udp-sendto", "10.96.0.10", "53", "5"]);
        assert_eq!(lines.len(), 5, "{lines:?}");
        let first = lines[0].split_whitespace().next().unwrap().to_string();
        for l in &lines {
            // One endpoint per socket; recvfrom shows the frontend.
            assert_eq!(l, &format!("{first} 10.96.0.10 53"), "{lines:?}");
        }
        firsts.push(first);
    }
    firsts.sort();
    assert_eq!(
        firsts,
        ["b1", "b2", "b3"],
        "each new socket takes the next endpoint"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connected_udp_getpeername_and_recvfrom_show_the_vip() {
    if !require_root() {
        return;
    }
    let mut env = Env::new();
    let _b = three_backends(&env);
    let v = env.publish(&service("dns", &["10.96.0.10"], &THREE));
    let dp = env.start().await;
    wait_programmed(&dp, v).await;
    let lines = env.client(&["udp-connect", "10.96.0.10", "53", "3"]);
    assert_eq!(lines[0], "PEER 10.96.0.10 53", "{lines:?}");
    let name = lines[1].split_whitespace().next().unwrap();
    assert!(["b1", "b2", "b3"].contains(&name), "{lines:?}");
    for l in &lines[1..] {
        assert_eq!(l, &format!("{name} 10.96.0.10 53"), "{lines:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_tcp_round_robin_and_udp() {
    if !require_root() {
        return;
    }
    let mut env = Env::new();
    let mut _b = Vec::new();
    for i in 1..=2 {
        env.ns.add_lo(&format!("fd00:1::{i}/128"));
        _b.push(Backend::start(
            &env.ns,
            &format!("b{i}"),
            &format!("[fd00:1::{i}]:8080"),
        ));
        _b.push(Backend::start(
            &env.ns,
            &format!("b{i}"),
            &format!("[fd00:1::{i}]:5353"),
        ));
    }
    let v = env.publish(&service(
        "web6",
        &["fd00:96::10"],
        &[("fd00:1::1", true), ("fd00:1::2", true)],
    ));
    let dp = env.start().await;
    wait_programmed(&dp, v).await;
    let got = names(&env.client(&["tcp", "fd00:96::10", "80", "4"]));
    assert_eq!(got[0..2], got[2..4], "{got:?}");
    assert_ne!(got[0], got[1], "{got:?}");
    let lines = env.client(&["udp-sendto", "fd00:96::10", "53", "3"]);
    for l in &lines {
        assert!(l.ends_with(" fd00:96::10 53"), "{lines:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_port_on_node_address_and_loopback_without_not_ready_endpoints() {
    if !require_root() {
        return;
    }
    let mut env = Env::new();
    env.ns.add_lo("10.0.0.5/32");
    let _b = three_backends(&env);
    let v = env.publish(&service(
        "web",
        &["10.96.0.10"],
        &[
            ("127.0.0.2", true),
            ("127.0.0.3", false),
            ("127.0.0.4", true),
        ],
    ));
    let dp = env.start().await;
    wait_programmed(&dp, v).await;
    for host in ["10.0.0.5", "127.0.0.1", "10.96.0.10"] {
        let port = if host == "10.96.0.10" { "80" } else { "30080" };
        let mut got = names(&env.client(&["tcp", host, port, "6"]));
        got.sort();
        assert_eq!(got, ["b1", "b1", "b1", "b3", "b3", "b3"], "{host}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_replaced_under_load_without_a_failed_connection() {
    if !require_root() {
        return;
    }
    let mut env = Env::new();
    let mut b1 = Some(Backend::start(&env.ns, "b1", "127.0.0.2:8080"));
    let _b2 = Backend::start(&env.ns, "b2", "127.0.0.3:8080");
    let _b3 = Backend::start(&env.ns, "b3", "127.0.0.4:8080");
    let v = env.publish(&service(
        "web",
        &["10.96.0.10"],
        &[("127.0.0.2", true), ("127.0.0.3", true)],
    ));
    let dp = env.start().await;
    wait_programmed(&dp, v).await;
    let stop = env.manifests.path().join("stop-load");
    let stop_s = stop.to_string_lossy().to_string();
    let load = env.client_spawn(&["load", "10.96.0.10", "80", &stop_s]);
    let pause = || tokio::time::sleep(std::time::Duration::from_millis(300));
    pause().await;
    let steps: [&[(&str, bool)]; 4] = [
        &[
            ("127.0.0.2", true),
            ("127.0.0.3", true),
            ("127.0.0.4", true),
        ],
        &[("127.0.0.3", true), ("127.0.0.4", true)],
        &[("127.0.0.4", true)],
        &[("127.0.0.3", true), ("127.0.0.4", true)],
    ];
    for (i, eps) in steps.iter().enumerate() {
        let v = env.publish(&service("web", &["10.96.0.10"], eps));
        wait_programmed(&dp, v).await;
        if i == 1 {
            // b1 is out of the maps: it may go away.
            b1 = None;
        }
        pause().await;
    }
    assert!(b1.is_none());
    std::fs::write(&stop, b"").unwrap();
    let out = load.wait_with_output().unwrap();
    let line = String::from_utf8_lossy(&out.stdout).to_string();
    let ok: usize = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(
        line.starts_with("ok ") && line.contains(" fail 0 "),
        "{line}"
    );
    assert!(ok > 20, "too little load to mean anything: {line}");
}
