//! Operating guarantees of `svcplane run --mode userspace`, in network namespaces (see
//! `tests/netns/mod.rs`): DNS answers a new name only once it routes, and `/healthz`
//! follows the data plane's ability to forward. Needs root (CI runs as root).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers panic with context, like the tests that call them"
)]

mod netns;

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RData, RecordType};
use netns::{Outcome, Topology, request, wait_until, write_manifest};

const NODE: &str = "10.200.0.1";
const DNS_PORT: u16 = 5353;

/// A ClusterIP Service `name` at `vip`:80 over every backend's :8080.
fn service(t: &Topology, name: &str, vip: &str) -> String {
    let eps: String = t
        .backends
        .iter()
        .map(|b| format!("- {{addresses: [\"{}\"]}}\n", b.v4))
        .collect();
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\n\
         spec:\n  clusterIP: {vip}\n  ports: [{{name: http, port: 80, targetPort: 8080}}]\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: {name}-1, namespace: default, labels: {{kubernetes.io/service-name: {name}}}}}\n\
         addressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints:\n{eps}"
    )
}

/// One A query over UDP; the first address answered, if any. Runs in the calling thread's
/// namespace.
fn resolve(server: SocketAddr, name: &str, id: u16) -> Option<IpAddr> {
    let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
    sock.send_to(&m.to_vec().unwrap(), server).unwrap();
    let mut buf = [0u8; 1500];
    let (n, _) = sock.recv_from(&mut buf).ok()?;
    let reply = Message::from_vec(&buf[..n]).ok()?;
    assert_eq!(reply.metadata.id, id);
    reply.answers.iter().find_map(|r| match &r.data {
        RData::A(a) => Some(IpAddr::V4(a.0)),
        _ => None,
    })
}

/// DNS never sends a client to a VIP that does not route yet: while traffic flows to one
/// Service, new Services appear one by one; a client resolves each new name in a tight
/// loop and connects the moment it resolves. Every connection must be served.
#[test]
fn a_name_that_resolves_always_connects() {
    if !netns::require_root() {
        return;
    }
    let t = Topology::new(3);
    let dir = tempfile::tempdir().unwrap();
    write_manifest(
        dir.path(),
        "steady.yaml",
        &service(&t, "steady", "10.96.0.10"),
    );
    let dns = format!("{NODE}:{DNS_PORT}");
    let d = t.daemon(dir.path(), &["--dns-listen", &dns]);
    let dns: SocketAddr = dns.parse().unwrap();
    let steady: SocketAddr = "10.96.0.10:80".parse().unwrap();
    wait_until("the steady Service to serve", || {
        matches!(t.client.run(move || request(steady)), Outcome::Served(_))
    });

    // Load on the steady Service for the whole test.
    let stop = Arc::new(AtomicBool::new(false));
    let (served, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load = {
        let (stop, served, failed) = (stop.clone(), served.clone(), failed.clone());
        t.client.spawn(move || {
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match request(steady) {
                    Outcome::Served(_) => served.fetch_add(1, Ordering::Relaxed),
                    other => {
                        failures.push(other);
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
            failures
        })
    };

    const NEW: u8 = 30;
    for k in 1..=NEW {
        let name = format!("new{k}");
        let fqdn = format!("{name}.default.svc.cluster.local.");
        let vip = format!("10.96.1.{k}");
        // The resolver starts before the Service exists and connects as soon as it resolves.
        let client = t.client.spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(20);
            let mut id = 0u16;
            loop {
                id = id.wrapping_add(1);
                if let Some(ip) = resolve(dns, &fqdn, id) {
                    return (ip, request(SocketAddr::new(ip, 80)));
                }
                assert!(Instant::now() < deadline, "{fqdn} never resolved");
            }
        });
        write_manifest(
            dir.path(),
            &format!("{name}.yaml"),
            &service(&t, &name, &vip),
        );
        let (ip, outcome) = client.join().unwrap();
        assert_eq!(ip.to_string(), vip);
        assert!(
            matches!(outcome, Outcome::Served(_)),
            "{name} resolved to {ip} before it routed: {outcome:?}"
        );
    }
    stop.store(true, Ordering::Relaxed);
    let failures = load.join().unwrap();
    assert!(failures.is_empty(), "steady Service failures: {failures:?}");
    assert!(served.load(Ordering::Relaxed) > 0);
    assert_eq!(failed.load(Ordering::Relaxed), 0);

    // The lag is exposed, one observation per programmed snapshot at least.
    let metrics = d.get(&t.node, "/metrics");
    let count = metrics
        .lines()
        .find_map(|l| l.strip_prefix("svcplane_dns_programming_lag_seconds_count "))
        .unwrap_or_else(|| panic!("no lag histogram in {metrics}"));
    assert!(
        count.trim().parse::<u64>().unwrap() >= u64::from(NEW),
        "{count}"
    );
    assert!(d.terminate().success());
}

/// `/healthz` is 200 only while a connection through the data plane to the probe frontend
/// works: taking `lo` down in the node namespace breaks forwarding (the probe frontend and
/// its backend are on loopback); bringing it up restores it. `/readyz` says ready.
#[test]
fn healthz_follows_the_self_test_through_the_data_plane() {
    if !netns::require_root() {
        return;
    }
    let t = Topology::new(1);
    let dir = tempfile::tempdir().unwrap();
    write_manifest(dir.path(), "web.yaml", &service(&t, "web", "10.96.0.10"));
    // Admin on the node's veth address: reachable from the client while `lo` is down.
    let d = t.daemon(dir.path(), &["--admin-listen", &format!("{NODE}:0")]);
    let get = |path: &str| -> (u16, String) {
        let raw = d.get(&t.client, path);
        let code = raw
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = raw.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
        (code, body)
    };
    let wait_for = |path: &str, want: u16| -> String {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let (code, body) = get(path);
            if code == want {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "{path} != {want}: last {code} {body}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let body = wait_for("/readyz", 200);
    assert!(body.starts_with("ready: snapshot version"), "{body}");
    let body = wait_for("/healthz", 200);
    assert!(body.starts_with("ok: snapshot version"), "{body}");
    assert!(
        body.contains("self-test through the userspace data plane (127.127.0.1:"),
        "{body}"
    );

    netns::ip(&["-n", &t.node.name, "link", "set", "lo", "down"]);
    let body = wait_for("/healthz", 503);
    assert!(body.starts_with("unhealthy:"), "{body}");
    assert!(
        body.contains("SELF-TEST FAILING through the userspace data plane"),
        "{body}"
    );

    netns::ip(&["-n", &t.node.name, "link", "set", "lo", "up"]);
    let body = wait_for("/healthz", 200);
    assert!(body.contains("passed"), "{body}");
    let logs = d.log_text();
    assert!(logs.contains("self-test failed"), "{logs}");
    assert!(logs.contains("self-test passes again"), "{logs}");
    assert!(d.terminate().success());
}
