//! The userspace data plane end to end: `svcplane run --mode userspace` in a "node" network
//! namespace, real backends in their own namespaces on veth pairs, and a client namespace
//! that reaches ClusterIPs, node addresses, LoadBalancer IPs and externalIPs through the
//! node. See `tests/netns/mod.rs` for the topology. Needs root (CI runs as root).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers panic with context, like the tests that call them"
)]

mod netns;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use netns::{Outcome, Topology, request, wait_until, write_manifest};

const VIP: &str = "10.96.0.10";
const VIP6: &str = "fd00:96::10";
const LB: &str = "198.51.100.10";
const EXTERNAL: &str = "192.0.2.10";
const NODE: &str = "10.200.0.1";

/// One endpoint line of an EndpointSlice.
fn ep(ip: &str, extra: &str) -> String {
    format!("- {{addresses: [\"{ip}\"], nodeName: node-a{extra}}}\n")
}

/// The `web` Service (LoadBalancer, dual-stack, externalIP, TCP 80 and UDP 53) with the
/// given IPv4 endpoint lines (and every IPv6 backend).
fn web(endpoints: &str, v6: &[&str], affinity: bool) -> String {
    let affinity = if affinity {
        "  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}\n"
    } else {
        ""
    };
    let v6: String = v6.iter().map(|ip| ep(ip, "")).collect();
    format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: web, namespace: default}}
spec:
  type: LoadBalancer
  clusterIP: {VIP}
  clusterIPs: [{VIP}, "{VIP6}"]
  ipFamilies: [IPv4, IPv6]
  ipFamilyPolicy: RequireDualStack
  externalIPs: [{EXTERNAL}]
{affinity}  ports:
  - {{name: http, port: 80, targetPort: 8080, nodePort: 30080}}
  - {{name: dns, port: 53, targetPort: 5353, protocol: UDP, nodePort: 30053}}
status:
  loadBalancer:
    ingress: [{{ip: {LB}}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: web-v4, namespace: default, labels: {{kubernetes.io/service-name: web}}}}
addressType: IPv4
ports: [{{name: http, port: 8080}}, {{name: dns, port: 5353, protocol: UDP}}]
endpoints:
{endpoints}---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: web-v6, namespace: default, labels: {{kubernetes.io/service-name: web}}}}
addressType: IPv6
ports: [{{name: http, port: 8080}}]
endpoints:
{v6}"#
    )
}

fn all_v4(t: &Topology) -> String {
    t.backends
        .iter()
        .map(|b| ep(&b.v4.to_string(), ""))
        .collect()
}

fn addr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

/// `n` sequential requests from the client namespace; counts per outcome.
fn requests(t: &Topology, to: SocketAddr, n: usize) -> BTreeMap<String, usize> {
    t.client.run(move || {
        let mut counts = BTreeMap::new();
        for _ in 0..n {
            let key = match request(to) {
                Outcome::Served(name) => name,
                other => format!("{other:?}"),
            };
            *counts.entry(key).or_insert(0) += 1;
        }
        counts
    })
}

fn counts(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

/// Waits until a frontend answers from the client namespace.
fn wait_served(t: &Topology, to: SocketAddr) {
    wait_until(&format!("{to} to serve"), || {
        matches!(t.client.run(move || request(to)), Outcome::Served(_))
    });
}

/// A ClusterIP Service `name` on `vip`:8000 with one endpoint `ip`:8080 (Endpoints API).
fn one_port_service(name: &str, vip: &str, ip: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: default}}
spec:
  clusterIP: {vip}
  ports: [{{port: 8000, targetPort: 8080}}]
---
apiVersion: v1
kind: Endpoints
metadata: {{name: {name}, namespace: default}}
subsets: [{{addresses: [{{ip: "{ip}"}}], ports: [{{port: 8080}}]}}]
"#
    )
}

/// The VIP routes the daemon keeps in the node's `local` table (both families, protocol
/// 0x73), and what of them shows as an address of `lo` (nothing, since VIPs are routes).
fn vip_routes(t: &Topology) -> String {
    let mut out = String::new();
    for family in ["-4", "-6"] {
        let args = [
            family, "-o", "route", "show", "table", "local", "proto", "115",
        ];
        out += &netns::ip_out(&t.node.name, &args);
    }
    out
}

fn lo_addrs(t: &Topology) -> String {
    netns::ip_out(&t.node.name, &["-o", "addr", "show", "dev", "lo"])
}

#[test]
fn every_frontend_balances_round_robin_and_vips_are_removed_on_exit() {
    if !netns::require_root() {
        return;
    }
    let t = Topology::new(3);
    let dir = tempfile::tempdir().unwrap();
    let v6: Vec<String> = t.backends.iter().map(|b| b.v6.to_string()).collect();
    let v6: Vec<&str> = v6.iter().map(String::as_str).collect();
    write_manifest(dir.path(), "web.yaml", &web(&all_v4(&t), &v6, false));
    let d = t.daemon(dir.path(), &["--node-name", "node-a"]);
    wait_served(&t, addr(VIP, 80));

    // Exact round-robin: 3 endpoints x 10 sequential connections each, on every frontend.
    let exact = counts(&[("b0", 10), ("b1", 10), ("b2", 10)]);
    for (what, to) in [
        ("ClusterIP", addr(VIP, 80)),
        ("IPv6 ClusterIP", addr(VIP6, 80)),
        ("NodePort on the node address", addr(NODE, 30080)),
        ("LoadBalancer IP", addr(LB, 80)),
        ("externalIP", addr(EXTERNAL, 80)),
    ] {
        assert_eq!(requests(&t, to, 30), exact, "{what} {to}");
    }
    // NodePort on 127.0.0.1, from the node itself.
    let local = t.node.run(|| {
        let mut c = BTreeMap::new();
        for _ in 0..6 {
            let Outcome::Served(n) = request(addr("127.0.0.1", 30080)) else {
                panic!("127.0.0.1:30080 did not serve")
            };
            *c.entry(n).or_insert(0) += 1;
        }
        c
    });
    assert_eq!(local, counts(&[("b0", 2), ("b1", 2), ("b2", 2)]));

    // UDP: one flow per client socket, round-robin across flows, replies from the VIP (a
    // connected socket accepts datagrams from the VIP only).
    let udp = t.client.run(|| {
        let mut c = BTreeMap::new();
        for i in 0..6 {
            let s = UdpSocket::bind("0.0.0.0:0").unwrap();
            s.connect(addr(VIP, 53)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut names = Vec::new();
            for j in 0..3 {
                let msg = format!("q{i}-{j}");
                s.send(msg.as_bytes()).unwrap();
                let mut buf = [0u8; 512];
                let n = s.recv(&mut buf).expect("UDP reply from the VIP");
                let reply = String::from_utf8_lossy(&buf[..n]).into_owned();
                let (name, echo) = reply.split_once(':').unwrap();
                assert_eq!(echo, msg);
                names.push(name.to_string());
            }
            names.dedup();
            assert_eq!(names.len(), 1, "a flow stays on one endpoint: {names:?}");
            *c.entry(names.remove(0)).or_insert(0) += 1;
        }
        c
    });
    assert_eq!(udp, counts(&[("b0", 2), ("b1", 2), ("b2", 2)]));

    // The VIPs are local routes through lo (not addresses), and metrics count the traffic
    // per endpoint.
    let routes = vip_routes(&t);
    let lo = lo_addrs(&t);
    for vip in [VIP, LB, EXTERNAL, VIP6] {
        assert!(
            routes.contains(&format!("local {vip} dev lo")),
            "{vip} not routed: {routes}"
        );
        assert!(!lo.contains(vip), "{vip} an address of lo: {lo}");
    }
    let metrics = d.get(&t.node, "/metrics");
    assert!(
        metrics.contains(&format!(
            "svcplane_proxy_connections_total{{service=\"default/web\",port=\"80\",protocol=\"TCP\",endpoint=\"{}:8080\"}}",
            t.backends[0].v4
        )),
        "{metrics}"
    );
    assert!(metrics.contains("kubeproxy_sync_proxy_rules_duration_seconds_count"));

    // `svcplane status`: every frontend with its endpoints and totals, as JSON and a table.
    let json: serde_json::Value = serde_json::from_str(&d.status(&["-o", "json"])).unwrap();
    assert_eq!(json["mode"], "userspace");
    let fronts = json["frontends"].as_array().unwrap();
    let lb = fronts
        .iter()
        .find(|f| f["frontend"] == format!("{LB}:80").as_str())
        .unwrap();
    assert_eq!(lb["kind"], "LoadBalancer");
    assert_eq!(lb["service"], "default/web");
    let total: u64 = lb["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["routed"] == true)
        .map(|e| e["connections"].as_u64().unwrap())
        .sum();
    // Every TCP v4 frontend shares the port's endpoint counters: 4 x 30 + 6, plus the one
    // request that found the proxy ready.
    assert_eq!(total, 4 * 30 + 6 + 1, "{lb}");
    let table = d.status(&[]);
    assert!(table.contains(&format!("TCP   {VIP}:80")), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.contains(&format!("-> {}:8080", t.backends[0].v4)) && l.contains("ready")),
        "{table}"
    );
    assert!(metrics.contains("kubeproxy_network_programming_duration_seconds_count"));

    // SIGTERM: exit 0 and leave no VIP behind.
    assert!(d.terminate().success());
    let routes = vip_routes(&t);
    for vip in [VIP, LB, EXTERNAL, VIP6] {
        assert!(!routes.contains(vip), "{vip} left routed: {routes}");
    }
}

#[test]
fn endpoint_conditions_and_session_affinity() {
    if !netns::require_root() {
        return;
    }
    let t = Topology::new(3);
    let dir = tempfile::tempdir().unwrap();
    let (b0, b1, b2) = (
        t.backends[0].v4.to_string(),
        t.backends[1].v4.to_string(),
        t.backends[2].v4.to_string(),
    );
    // b1 is not ready: never used.
    let eps = format!(
        "{}{}{}",
        ep(&b0, ""),
        ep(&b1, ", conditions: {ready: false}"),
        ep(&b2, "")
    );
    write_manifest(dir.path(), "web.yaml", &web(&eps, &[], false));
    let _d = t.daemon(dir.path(), &[]);
    wait_served(&t, addr(VIP, 80));
    assert_eq!(
        requests(&t, addr(VIP, 80), 20),
        counts(&[("b0", 10), ("b2", 10)])
    );

    // None ready: serving + terminating ones take the traffic (not the not-serving one).
    let eps = format!(
        "{}{}{}",
        ep(
            &b0,
            ", conditions: {ready: false, serving: true, terminating: true}"
        ),
        ep(
            &b1,
            ", conditions: {ready: false, serving: false, terminating: true}"
        ),
        ep(
            &b2,
            ", conditions: {ready: false, serving: true, terminating: true}"
        ),
    );
    write_manifest(dir.path(), "web.yaml", &web(&eps, &[], false));
    wait_until("the terminating fallback", || {
        let c = requests(&t, addr(VIP, 80), 4);
        c.get("b0") == Some(&2) && c.get("b2") == Some(&2)
    });
    assert_eq!(
        requests(&t, addr(VIP, 80), 20),
        counts(&[("b0", 10), ("b2", 10)])
    );

    // ClientIP affinity: every connection from the client goes to one endpoint.
    write_manifest(dir.path(), "web.yaml", &web(&all_v4(&t), &[], true));
    wait_until("affinity to apply", || {
        requests(&t, addr(VIP, 80), 3).len() == 1
    });
    let c = requests(&t, addr(VIP, 80), 20);
    assert_eq!(c.len(), 1, "{c:?}");
    assert_eq!(c.values().sum::<usize>(), 20);
}

#[test]
fn failures_are_hidden_from_clients_and_empty_services_reset_at_once() {
    if !netns::require_root() {
        return;
    }
    let mut t = Topology::new(3);
    let dir = tempfile::tempdir().unwrap();
    write_manifest(dir.path(), "web.yaml", &web(&all_v4(&t), &[], false));
    let d = t.daemon(dir.path(), &[]);
    wait_served(&t, addr(VIP, 80));

    // A dead endpoint (connection refused) costs no client a failure while others live.
    t.backends[1].kill();
    let c = requests(&t, addr(VIP, 80), 30);
    assert_eq!(
        c.get("b0").copied().unwrap_or(0) + c.get("b2").copied().unwrap_or(0),
        30,
        "{c:?}"
    );
    let metrics = d.get(&t.node, "/metrics");
    let ejected = format!(
        "svcplane_proxy_ejections_total{{service=\"default/web\",port=\"80\",protocol=\"TCP\",endpoint=\"{}:8080\"}} 1",
        t.backends[1].v4
    );
    assert!(metrics.contains(&ejected), "{metrics}");
    let table = d.status(&[]);
    assert!(
        table
            .lines()
            .any(|l| l.contains(&format!("-> {}:8080", t.backends[1].v4)) && l.contains("ejected")),
        "{table}"
    );

    // Every endpoint dead: the client is reset.
    t.backends[0].kill();
    t.backends[2].kill();
    let c = requests(&t, addr(VIP, 80), 2);
    assert_eq!(c, counts(&[("Reset", 2)]), "{c:?}");

    // No endpoint at all: the accepted connection is reset at once, not left hanging.
    write_manifest(
        dir.path(),
        "web.yaml",
        &web("", &[], false).replace("endpoints:\n---", "endpoints: []\n---"),
    );
    wait_until("the empty service", || {
        d.get(&t.node, "/metrics")
            .contains("svcplane_proxy_rejected_total{reason=\"no_endpoint\"}")
            && requests(&t, addr(VIP, 80), 1) == counts(&[("Reset", 1)])
    });
    // (A hanging connection would show as a read timeout, not as a reset.)
    assert_eq!(t.client.run(|| request(addr(VIP, 80))), Outcome::Reset);
}

#[test]
fn live_changes_never_cut_established_connections() {
    if !netns::require_root() {
        return;
    }
    let t = Topology::new(3);
    let dir = tempfile::tempdir().unwrap();
    let ips: Vec<String> = t.backends.iter().map(|b| b.v4.to_string()).collect();
    write_manifest(dir.path(), "web.yaml", &web(&ep(&ips[0], ""), &[], false));
    let _d = t.daemon(dir.path(), &[]);
    wait_served(&t, addr(VIP, 80));

    // An established connection to b0, half-closed by neither side yet.
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let held = t.client.spawn(move || {
        let mut s = TcpStream::connect(addr(VIP, 80)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut name = String::new();
        r.read_line(&mut name).unwrap();
        rx.recv().unwrap(); // until the endpoint has been replaced
        s.write_all(b"still here\n").unwrap();
        s.shutdown(Shutdown::Write).unwrap(); // half-close: the echo must still arrive
        let mut rest = String::new();
        r.read_to_string(&mut rest).unwrap();
        (name, rest)
    });

    // Continuous load while endpoints are replaced one by one: b0 -> b1 -> b2.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let served = Arc::new(AtomicUsize::new(0));
    let (s2, f2, sv2) = (stop.clone(), failures.clone(), served.clone());
    let load = t.client.spawn(move || {
        let mut seen = Vec::new();
        while !s2.load(Ordering::Relaxed) {
            match request(addr(VIP, 80)) {
                Outcome::Served(n) => {
                    sv2.fetch_add(1, Ordering::Relaxed);
                    seen.push(n);
                }
                other => {
                    f2.fetch_add(1, Ordering::Relaxed);
                    seen.push(format!("{other:?}"));
                }
            }
        }
        seen
    });
    let steps = [
        format!("{}{}", ep(&ips[0], ""), ep(&ips[1], "")),
        ep(&ips[1], ""),
        format!("{}{}", ep(&ips[1], ""), ep(&ips[2], "")),
        ep(&ips[2], ""),
    ];
    for (i, eps) in steps.iter().enumerate() {
        write_manifest(dir.path(), "web.yaml", &web(eps, &[], false));
        let before = served.load(Ordering::Relaxed);
        wait_until(&format!("step {i} under load"), || {
            served.load(Ordering::Relaxed) > before + 20
        });
    }
    stop.store(true, Ordering::Relaxed);
    let seen = load.join().unwrap();
    assert_eq!(failures.load(Ordering::Relaxed), 0, "{seen:?}");
    assert_eq!(seen.last().map(String::as_str), Some("b2"));

    // The connection to b0 (no longer an endpoint) still works, both directions.
    tx.send(()).unwrap();
    let (name, rest) = held.join().unwrap();
    assert_eq!(name.trim_end(), "b0");
    assert_eq!(rest, "still here\n");

    // Frontends come and go live: a new Service listens, a removed one stops.
    let extra = one_port_service("extra", "10.96.0.20", &ips[0]);
    write_manifest(dir.path(), "extra.yaml", &extra);
    wait_served(&t, addr("10.96.0.20", 8000));
    assert_eq!(
        requests(&t, addr("10.96.0.20", 8000), 2),
        counts(&[("b0", 2)])
    );
    std::fs::remove_file(dir.path().join("extra.yaml")).unwrap();
    wait_until("the removed frontend to stop", || {
        !matches!(
            t.client.run(|| request(addr("10.96.0.20", 8000))),
            Outcome::Served(_)
        )
    });
    assert!(!vip_routes(&t).contains("10.96.0.20"));
    // The other service is untouched.
    assert_eq!(requests(&t, addr(VIP, 80), 2), counts(&[("b2", 2)]));
}

#[test]
fn sigterm_drains_established_connections_then_removes_vips() {
    if !netns::require_root() {
        return;
    }
    let t = Topology::new(1);
    let dir = tempfile::tempdir().unwrap();
    write_manifest(dir.path(), "web.yaml", &web(&all_v4(&t), &[], false));
    let mut d = t.daemon(dir.path(), &["--drain-timeout", "30"]);
    wait_served(&t, addr(VIP, 80));

    // A long transfer: connected before SIGTERM, most of its bytes sent after it.
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let transfer = t.client.spawn(move || {
        let s = TcpStream::connect(addr(VIP, 80)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut name = String::new();
        r.read_line(&mut name).unwrap();
        ready_tx.send(()).unwrap();
        go_rx.recv().unwrap();
        let data: Vec<u8> = (0..4_000_000u32).map(|i| (i % 253) as u8).collect();
        let mut w = s.try_clone().unwrap();
        let sent = data.clone();
        let writer = std::thread::spawn(move || {
            for chunk in sent.chunks(64 * 1024) {
                w.write_all(chunk).unwrap();
                std::thread::sleep(Duration::from_millis(5));
            }
            w.shutdown(Shutdown::Write).unwrap();
        });
        let mut echoed = Vec::new();
        r.read_to_end(&mut echoed).unwrap();
        writer.join().unwrap();
        (name, echoed == data, echoed.len())
    });
    ready_rx.recv().unwrap();
    d.signal_term();
    go_tx.send(()).unwrap();
    // New connections are no longer accepted while the old one drains...
    wait_until("the listener to close", || {
        t.client.run(|| request(addr(VIP, 80))) != Outcome::Served("b0".into())
    });
    assert!(
        !d.exited(),
        "exited before the established connection finished"
    );
    // ...and the established one runs to its end.
    let (name, intact, len) = transfer.join().unwrap();
    assert_eq!(name.trim_end(), "b0");
    assert!(intact, "echo of {len} bytes differs");
    let status = d.wait();
    assert!(status.success(), "{status}");
    assert!(!vip_routes(&t).contains(VIP));
}

/// A daemon killed with SIGKILL leaves its VIP routes behind; the next one adopts them,
/// removes those no longer wanted, and on SIGTERM its own.
#[test]
fn a_killed_daemons_vip_routes_are_adopted_and_removed_by_the_next() {
    if !netns::require_root() {
        return;
    }
    let t = Topology::new(1);
    let dir = tempfile::tempdir().unwrap();
    write_manifest(dir.path(), "web.yaml", &web(&all_v4(&t), &[], false));
    let mut d = t.daemon(dir.path(), &[]);
    wait_served(&t, addr(VIP, 80));
    d.kill9();
    let left = vip_routes(&t);
    assert!(left.contains(&format!("local {VIP} dev lo")), "{left}");

    // The next daemon serves another Service only.
    std::fs::remove_file(dir.path().join("web.yaml")).unwrap();
    let other = one_port_service("other", "10.96.0.30", &t.backends[0].v4.to_string());
    write_manifest(dir.path(), "other.yaml", &other);
    let d = t.daemon(dir.path(), &[]);
    wait_served(&t, addr("10.96.0.30", 8000));
    wait_until("the dead daemon's VIP routes to go", || {
        let routes = vip_routes(&t);
        ![VIP, LB, EXTERNAL].iter().any(|v| routes.contains(v))
    });
    assert!(d.terminate().success());
    let routes = vip_routes(&t);
    assert!(!routes.contains("10.96.0.30"), "{routes}");
}

#[test]
fn vip_routes_someone_else_removes_are_put_back() {
    if !netns::require_root() {
        return;
    }
    let t = Topology::new(1);
    let dir = tempfile::tempdir().unwrap();
    let svc = one_port_service("web", "10.96.0.30", &t.backends[0].v4.to_string());
    write_manifest(dir.path(), "web.yaml", &svc);
    let d = t.daemon(dir.path(), &["--sync-period", "1"]);
    wait_served(&t, addr("10.96.0.30", 8000));
    // What `ip route flush proto 115` or a network manager does behind the daemon's back.
    netns::ip(&[
        "-n",
        &t.node.name,
        "route",
        "del",
        "local",
        "10.96.0.30/32",
        "dev",
        "lo",
        "table",
        "local",
        "proto",
        "115",
    ]);
    assert!(!vip_routes(&t).contains("10.96.0.30"));
    wait_until("the VIP route to come back", || {
        vip_routes(&t).contains("local 10.96.0.30 dev lo")
    });
    wait_served(&t, addr("10.96.0.30", 8000));
    let logs = d.log_text();
    assert!(
        logs.contains("VIP routes removed outside svcplane were put back"),
        "{logs}"
    );
}

#[test]
fn a_frontend_whose_port_was_taken_listens_once_the_port_is_free() {
    if !netns::require_root() {
        return;
    }
    let t = Topology::new(1);
    // Another program holds port 8000 on every address of the node.
    let blocker = t
        .node
        .run(|| std::net::TcpListener::bind("0.0.0.0:8000").expect("bind the blocker"));
    let dir = tempfile::tempdir().unwrap();
    let svc = one_port_service("web", "10.96.0.30", &t.backends[0].v4.to_string());
    write_manifest(dir.path(), "web.yaml", &svc);
    let d = t.daemon(dir.path(), &["--sync-period", "1"]);
    wait_until("the failed bind to be logged", || {
        d.log_text().contains("cannot listen")
    });
    // No snapshot comes after this: only the periodic retry can open the frontend.
    drop(blocker);
    wait_served(&t, addr("10.96.0.30", 8000));
    let logs = d.log_text();
    assert!(logs.contains("listening now"), "{logs}");
}
