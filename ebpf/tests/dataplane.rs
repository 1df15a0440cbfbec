//! End-to-end tests of the eBPF data plane: real programs on a child cgroup, clients in a
//! network namespace (see `common`). Need root; skipped otherwise.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod common;

use std::collections::BTreeSet;

use common::{Backend, Env, require_root, service, wait_programmed};
use svcplane_config::{Frontend, Protocol};

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
    // By default TCP getpeername shows the endpoint (no write on the connect path).
    assert!(lines[0].contains(" 127.0.0."), "{lines:?}");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_counters_follow_the_endpoint_of_each_slot() {
    if !require_root() {
        return;
    }
    let mut env = Env::new();
    let _b: Vec<Backend> = (2..=5)
        .map(|i| Backend::start(&env.ns, &format!("b{i}"), &format!("127.0.0.{i}:8080")))
        .collect();
    let vip = Frontend {
        ip: "10.96.0.10".parse().unwrap(),
        port: 80,
        protocol: Protocol::Tcp,
    };
    let ep = |i: u8| -> std::net::SocketAddr { format!("127.0.0.{i}:8080").parse().unwrap() };
    let v = env.publish(&service("web", &["10.96.0.10"], &THREE));
    let dp = env.start().await;
    wait_programmed(&dp, v).await;
    let listing = dp.listing();
    assert!(
        listing.connections().unwrap().is_empty(),
        "no connection yet"
    );

    assert_eq!(env.client(&["tcp", "10.96.0.10", "80", "6"]).len(), 6);
    let c = listing.connections().unwrap();
    assert_eq!(
        [
            c.get(vip, 1, ep(2)),
            c.get(vip, 2, ep(3)),
            c.get(vip, 3, ep(4))
        ],
        [2, 2, 2]
    );
    assert_eq!(c.len(), 3, "only the VIP's slots were used");

    // 127.0.0.3 is replaced: 127.0.0.5 takes its slot and starts from zero; the others
    // keep their slots and counts.
    let v = env.publish(&service(
        "web",
        &["10.96.0.10"],
        &[
            ("127.0.0.2", true),
            ("127.0.0.5", true),
            ("127.0.0.4", true),
        ],
    ));
    wait_programmed(&dp, v).await;
    assert_eq!(env.client(&["tcp", "10.96.0.10", "80", "3"]).len(), 3);
    let c = listing.connections().unwrap();
    assert_eq!(
        [
            c.get(vip, 1, ep(2)),
            c.get(vip, 2, ep(5)),
            c.get(vip, 3, ep(4))
        ],
        [3, 1, 3]
    );
    assert_eq!(
        c.get(vip, 2, ep(3)),
        0,
        "the replaced endpoint's count is gone"
    );

    // A removed slot takes its counter with it.
    let v = env.publish(&service("web", &["10.96.0.10"], &[("127.0.0.2", true)]));
    wait_programmed(&dp, v).await;
    let c = listing.connections().unwrap();
    assert_eq!(c.len(), 1);
    assert_eq!(c.get(vip, 1, ep(2)), 3);

    // Unconnected UDP counts a socket's first datagram, not every datagram.
    let _u = Backend::start(&env.ns, "u2", "127.0.0.2:5353");
    let lines = env.client(&["udp-sendto", "10.96.0.10", "53", "5"]);
    assert_eq!(lines.len(), 5, "{lines:?}");
    let dns = Frontend {
        port: 53,
        protocol: Protocol::Udp,
        ..vip
    };
    let c = listing.connections().unwrap();
    assert_eq!(c.get(dns, 1, "127.0.0.2:5353".parse().unwrap()), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frontend_without_endpoints_refuses_and_counts_each_refusal() {
    if !require_root() {
        return;
    }
    let mut env = Env::new();
    let v = env.publish(&service("web", &["10.96.0.10"], &[]));
    let dp = env.start().await;
    wait_programmed(&dp, v).await;
    let listing = dp.listing();
    assert_eq!(listing.refused().unwrap(), 0);
    let lines = env.client(&["tcp", "10.96.0.10", "80", "3"]);
    assert_eq!(lines.len(), 3, "{lines:?}");
    for l in &lines {
        assert!(l.contains("Operation not permitted"), "{lines:?}");
    }
    let lines = env.client(&["udp-sendto", "10.96.0.10", "53", "2"]);
    assert!(
        lines.len() == 2 && lines.iter().all(|l| l.contains("Operation not permitted")),
        "{lines:?}"
    );
    assert_eq!(listing.refused().unwrap(), 5);
    assert!(listing.connections().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_drops_counters_of_slots_the_maps_do_not_give_their_endpoint() {
    if !require_root() {
        return;
    }
    let mut env = Env::new();
    let _b = Backend::start(&env.ns, "b2", "127.0.0.2:8080");
    let v = env.publish(&service("web", &["10.96.0.10"], &[("127.0.0.2", true)]));
    let dp = env.start().await;
    wait_programmed(&dp, v).await;
    assert_eq!(env.client(&["tcp", "10.96.0.10", "80", "2"]).len(), 2);
    dp.stop().await;
    // What a daemon killed between deleting a slot and deleting its counter leaves: a
    // counter of slot 7 of the VIP, which has one slot. (svc_key: 10.96.0.10, port 80,
    // TCP, IPv4, slot 7; svc_conns: 5 connections to 127.0.0.9:8080 in slot 7.)
    let hex = |s: &str| s.split_whitespace().map(String::from).collect::<Vec<_>>();
    let mut args = vec!["map".to_string(), "update".into(), "pinned".into()];
    args.push(
        env.pins
            .path
            .join("v1_conns")
            .to_string_lossy()
            .into_owned(),
    );
    args.push("key".into());
    args.extend(hex(
        "0x0a 0x60 0x00 0x0a 0 0 0 0 0 0 0 0 0 0 0 0 0x00 0x50 6 4 7 0 0 0",
    ));
    args.push("value".into());
    args.extend(hex(
        "5 0 0 0 0 0 0 0 0x7f 0 0 9 0 0 0 0 0 0 0 0 0 0 0 0 0x1f 0x90 7 0 0 0 0 0",
    ));
    let out = std::process::Command::new("bpftool")
        .args(&args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let read = || svcplane_ebpf::read_connections(&env.pins.path).unwrap();
    assert_eq!(read().len(), 2, "the planted counter reads as one");

    let dp = env.start().await;
    wait_programmed(&dp, v).await;
    let c = read();
    assert_eq!(c.len(), 1, "the planted counter is gone");
    let vip = Frontend {
        ip: "10.96.0.10".parse().unwrap(),
        port: 80,
        protocol: Protocol::Tcp,
    };
    assert_eq!(c.get(vip, 1, "127.0.0.2:8080".parse().unwrap()), 2, "kept");
    dp.stop().await;
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
    let programmed = svcplane_ebpf::read_frontends(&env.pins.path).unwrap();
    let web6: Vec<_> = programmed
        .iter()
        .filter(|(f, _)| f.ip == "fd00:96::10".parse::<std::net::IpAddr>().unwrap())
        .collect();
    assert_eq!(web6.len(), 2, "TCP and UDP frontends: {programmed:?}");
    assert!(web6.iter().all(|(_, s)| s.endpoints.len() == 2), "{web6:?}");
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
    // (::ffff:10.96.0.10: an IPv4 frontend reached from an IPv6 socket.)
    for host in ["10.0.0.5", "127.0.0.1", "10.96.0.10", "::ffff:10.96.0.10"] {
        let port = if host.ends_with("10.96.0.10") {
            "80"
        } else {
            "30080"
        };
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
        pause().await;
        if i == 1 {
            // b1 has been out of the maps for a while (connections it accepted in the
            // meantime are served): it may go away, as a terminated pod does.
            b1 = None;
        }
    }
    assert!(b1.is_none());
    std::fs::write(&stop, b"").unwrap();
    let line = load.finish();
    let ok: usize = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(
        line.starts_with("ok ") && line.contains(" fail 0 "),
        "{line}"
    );
    assert!(ok > 20, "too little load to mean anything: {line}");
}

fn attached(cgroup: &std::path::Path) -> String {
    let out = std::process::Command::new("bpftool")
        .args(["-j", "cgroup", "show"])
        .arg(cgroup)
        .output()
        .expect("bpftool");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pins_keep_routing_without_the_daemon_and_a_restart_adopts_a_change() {
    if !require_root() {
        return;
    }
    let mut env = Env::new();
    let _b = three_backends(&env);
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
    // The daemon goes away without cleanup: its file descriptors close, the pins stay.
    drop(dp);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    // (The load shares the rotation: only the set of endpoints is exact here.)
    let got: BTreeSet<String> = names(&env.client(&["tcp", "10.96.0.10", "80", "6"]))
        .into_iter()
        .collect();
    let both: BTreeSet<String> = BTreeSet::from(["b1".into(), "b2".into()]);
    assert!(!got.is_empty() && got.is_subset(&both), "{got:?}");
    // A change while it is down, picked up by the next start (which adopts the maps and
    // replaces the links under load).
    let v = env.publish(&service(
        "web",
        &["10.96.0.10"],
        &[("127.0.0.3", true), ("127.0.0.4", true)],
    ));
    let dp = env.start().await;
    wait_programmed(&dp, v).await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    std::fs::write(&stop, b"").unwrap();
    let line = load.finish();
    assert!(line.contains(" fail 0 "), "{line}");
    let mut got = names(&env.client(&["tcp", "10.96.0.10", "80", "4"]));
    got.sort();
    assert_eq!(
        got,
        ["b2", "b2", "b3", "b3"],
        "exact again once the load stopped"
    );
    // One link per program: the restart replaced the old links instead of adding to them.
    let links = attached(&env.cgroup.path);
    assert_eq!(links.matches("\"id\"").count(), 8, "{links}");
    dp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_leaves_nothing_pinned_or_attached() {
    if !require_root() {
        return;
    }
    let mut env = Env::new();
    let _b = three_backends(&env);
    let v = env.publish(&service("web", &["10.96.0.10"], &THREE));
    let dp = env.start().await;
    wait_programmed(&dp, v).await;
    assert_eq!(
        names(&env.client(&["tcp", "10.96.0.10", "80", "1"])).len(),
        1
    );
    dp.stop().await;
    assert!(env.pins.path.join("v1_services").exists());
    svcplane_ebpf::cleanup(&env.pins.path).unwrap();
    assert!(!env.pins.path.exists());
    let left = attached(&env.cgroup.path);
    assert!(left.is_empty() || left == "[]", "{left}");
    // Without the programs the VIP is just a local address of the namespace: refused.
    let lines = env.client(&["tcp", "10.96.0.10", "80", "1"]);
    assert!(lines[0].starts_with("ERR"), "{lines:?}");
    // Cleaning up twice is fine.
    svcplane_ebpf::cleanup(&env.pins.path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unconnected_udp_moves_off_a_removed_endpoint_on_its_next_datagram() {
    if !require_root() {
        return;
    }
    let mut env = Env::new();
    let _b = three_backends(&env);
    let v = env.publish(&service("dns", &["10.96.0.10"], &THREE));
    let dp = env.start().await;
    wait_programmed(&dp, v).await;
    let go = env.manifests.path().join("go");
    let go_s = go.to_string_lossy().to_string();
    let mut client = env.client_spawn(&["udp-sendto-wait", "10.96.0.10", "53", &go_s]);
    let first = client.read_line();
    let name = first.split_whitespace().next().unwrap().to_string();
    // Remove the endpoint this socket uses (it keeps running: only the maps change).
    let idx: usize = name[1..].parse().unwrap();
    let rest: Vec<(&str, bool)> = THREE
        .iter()
        .enumerate()
        .filter(|(i, _)| i + 1 != idx)
        .map(|(_, e)| *e)
        .collect();
    let v = env.publish(&service("dns", &["10.96.0.10"], &rest));
    wait_programmed(&dp, v).await;
    std::fs::write(&go, b"").unwrap();
    let second = client.read_line();
    let moved = second.split_whitespace().next().unwrap();
    assert!(
        moved != name && moved.starts_with('b'),
        "{first} then {second}"
    );
    assert!(second.ends_with(" 10.96.0.10 53"), "{second}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_ip_affinity_keeps_one_endpoint_per_client() {
    if !require_root() {
        return;
    }
    let mut env = Env::new();
    let _b = three_backends(&env);
    let yaml = service("web", &["10.96.0.10"], &THREE).replacen(
        "  type: NodePort\n",
        "  type: NodePort\n  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}\n",
        1,
    );
    let v = env.publish(&yaml);
    let dp = env.start().await;
    wait_programmed(&dp, v).await;
    let got: BTreeSet<String> = names(&env.client(&["tcp", "10.96.0.10", "80", "6"]))
        .into_iter()
        .collect();
    assert_eq!(got.len(), 1, "{got:?}");
    // Unconnected UDP of the same client (network namespace) follows its affinity too.
    let udp: BTreeSet<String> = names(&env.client(&["udp-sendto", "10.96.0.10", "53", "1"]))
        .into_iter()
        .chain(names(&env.client(&["udp-sendto", "10.96.0.10", "53", "1"])))
        .collect();
    assert_eq!(udp.len(), 1, "{udp:?}");
}

/// The kernel runs no sendmsg hook for a connected UDP socket that sends without a
/// destination, so it cannot be re-pointed: when its endpoint is removed the data plane
/// aborts it (`bpf_sock_destroy` from a udp iterator) and the application reconnects.
/// A socket connected to the same endpoint directly (not through a frontend) is left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connected_udp_to_a_removed_endpoint_is_aborted_and_reconnects_elsewhere() {
    if !require_root() {
        return;
    }
    let mut env = Env::new();
    let _b = three_backends(&env);
    let v = env.publish(&service("dns", &["10.96.0.10"], &THREE));
    let dp = env.start().await;
    wait_programmed(&dp, v).await;
    let go = env.manifests.path().join("go");
    let go_s = go.to_string_lossy().to_string();
    let mut client = env.client_spawn(&["udp-connect-wait", "10.96.0.10", "53", &go_s]);
    let first = client.read_line();
    let name = first.split_whitespace().next().unwrap().to_string();
    let idx: usize = name[1..].parse().unwrap();
    let direct_addr = format!("127.0.0.{}", idx + 1);
    let mut direct = env.client_spawn(&["udp-connect-wait", &direct_addr, "5353", &go_s]);
    assert!(direct.read_line().starts_with(&name));
    let rest: Vec<(&str, bool)> = THREE
        .iter()
        .enumerate()
        .filter(|(i, _)| i + 1 != idx)
        .map(|(_, e)| *e)
        .collect();
    let v = env.publish(&service("dns", &["10.96.0.10"], &rest));
    wait_programmed(&dp, v).await;
    std::fs::write(&go, b"").unwrap();
    let second = client.read_line();
    let third = client.read_line();
    assert!(second.starts_with("ERR"), "aborted: {first} then {second}");
    let moved = third.split_whitespace().next().unwrap();
    assert!(
        moved != name && moved.starts_with('b'),
        "reconnected: {third}"
    );
    assert!(third.ends_with(" 10.96.0.10 53"), "{third}");
    // The direct socket still talks to the endpoint.
    let d2 = direct.read_line();
    assert_eq!(d2, format!("{name} {direct_addr} 5353"));
}

/// The "daemon" of `sigkill_keeps_routing_and_a_new_start_picks_up_a_change`: run as a
/// child process of the test binary, killed with SIGKILL by that test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a helper process of another test"]
async fn helper_daemon() {
    let Some(spec) = std::env::var_os("SVCPLANE_EBPF_HELPER") else {
        return;
    };
    let spec = spec.to_string_lossy().to_string();
    let mut parts = spec.split('|');
    let (pins, cgroup, dir) = (
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap(),
    );
    let mut loader = svcplane_config::Loader::new(dir, svcplane_config::ParseOptions::default());
    let snap = loader.reload().unwrap().0.unwrap();
    let v = snap.version;
    let (_tx, rx) = tokio::sync::watch::channel(snap);
    let opts = svcplane_ebpf::EbpfOptions {
        pin_root: pins.into(),
        cgroup: Some(cgroup.into()),
        ..svcplane_ebpf::EbpfOptions::default()
    };
    let dp = svcplane_ebpf::EbpfDataPlane::start(opts, rx).await.unwrap();
    wait_programmed(&dp, v).await;
    println!("READY");
    tokio::time::sleep(std::time::Duration::from_secs(60)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_keeps_routing_and_a_new_start_picks_up_a_change() {
    use std::io::{BufRead, BufReader};
    if !require_root() {
        return;
    }
    let mut env = Env::new();
    let _b = three_backends(&env);
    env.publish(&service(
        "web",
        &["10.96.0.10"],
        &[("127.0.0.2", true), ("127.0.0.3", true)],
    ));
    let spec = format!(
        "{}|{}|{}",
        env.pins.path.display(),
        env.cgroup.path.display(),
        env.manifests.path().display()
    );
    let mut daemon = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["helper_daemon", "--exact", "--ignored", "--nocapture"])
        .env("SVCPLANE_EBPF_HELPER", spec)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(daemon.stdout.take().unwrap());
    let mut line = String::new();
    while !line.starts_with("READY") {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "helper exited");
    }
    daemon.kill().unwrap(); // SIGKILL
    daemon.wait().unwrap();
    let mut got = names(&env.client(&["tcp", "10.96.0.10", "80", "4"]));
    got.sort();
    assert_eq!(got, ["b1", "b1", "b2", "b2"], "routed with the daemon dead");
    // A change made while no daemon runs, picked up by the next start.
    let v = env.publish(&service(
        "web",
        &["10.96.0.10"],
        &[("127.0.0.3", true), ("127.0.0.4", true)],
    ));
    let dp = env.start().await;
    wait_programmed(&dp, v).await;
    let mut got = names(&env.client(&["tcp", "10.96.0.10", "80", "4"]));
    got.sort();
    assert_eq!(got, ["b2", "b2", "b3", "b3"]);
    dp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connected_udp6_to_a_removed_endpoint_is_aborted() {
    if !require_root() {
        return;
    }
    let mut env = Env::new();
    let mut _b = Vec::new();
    let eps = [("fd00:1::1", true), ("fd00:1::2", true)];
    for i in 1..=2 {
        env.ns.add_lo(&format!("fd00:1::{i}/128"));
        _b.push(Backend::start(
            &env.ns,
            &format!("b{i}"),
            &format!("[fd00:1::{i}]:5353"),
        ));
    }
    let v = env.publish(&service("dns6", &["fd00:96::10"], &eps));
    let dp = env.start().await;
    wait_programmed(&dp, v).await;
    let go = env.manifests.path().join("go");
    let go_s = go.to_string_lossy().to_string();
    let mut client = env.client_spawn(&["udp-connect-wait", "fd00:96::10", "53", &go_s]);
    let first = client.read_line();
    let name = first.split_whitespace().next().unwrap().to_string();
    let keep = if name == "b1" { eps[1] } else { eps[0] };
    let v = env.publish(&service("dns6", &["fd00:96::10"], &[keep]));
    wait_programmed(&dp, v).await;
    std::fs::write(&go, b"").unwrap();
    let second = client.read_line();
    let third = client.read_line();
    assert!(second.starts_with("ERR"), "aborted: {first} then {second}");
    assert!(
        !third.starts_with(&name) && third.ends_with(" fd00:96::10 53"),
        "reconnected: {third}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_getpeername_shows_the_vip_when_asked() {
    if !require_root() {
        return;
    }
    let mut env = Env::new();
    let _b = three_backends(&env);
    for i in 1..=2 {
        env.ns.add_lo(&format!("fd00:1::{i}/128"));
    }
    let _b6: Vec<Backend> = (1..=2)
        .map(|i| Backend::start(&env.ns, &format!("v6b{i}"), &format!("[fd00:1::{i}]:8080")))
        .collect();
    let mut yaml = service("web", &["10.96.0.10"], &THREE);
    yaml.push_str("---\n");
    yaml.push_str(
        &service(
            "web6",
            &["fd00:96::10"],
            &[("fd00:1::1", true), ("fd00:1::2", true)],
        )
        .replace("nodePort: 30080", "nodePort: 30081")
        .replace("nodePort: 30053", "nodePort: 30054"),
    );
    let v = env.publish(&yaml);
    let dp = env
        .start_with(svcplane_ebpf::EbpfFeatures {
            tcp_getpeername_vip: true,
        })
        .await;
    wait_programmed(&dp, v).await;
    for l in env.client(&["tcp", "10.96.0.10", "80", "3"]) {
        assert!(l.starts_with('b') && l.ends_with(" 10.96.0.10"), "{l}");
    }
    for l in env.client(&["tcp", "fd00:96::10", "80", "2"]) {
        assert!(l.starts_with("v6b") && l.ends_with(" fd00:96::10"), "{l}");
    }
    // A connection made without the frontend is untouched.
    let direct = env.client(&["tcp", "127.0.0.2", "8080", "1"]);
    assert_eq!(direct, ["b1 127.0.0.2"]);
}
