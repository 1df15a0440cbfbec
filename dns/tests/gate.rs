//! What DNS answers while a snapshot is being programmed (`svcplane_dns::gate`): two
//! snapshots of one Loader, as the daemon publishes them, and the table of the view.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests panic with context"
)]

mod common;

use std::sync::Arc;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use svcplane_config::{Loader, ParseOptions, ServiceKey, Snapshot};
use svcplane_dns::table::TableBuilder;
use svcplane_dns::{DnsConfig, DnsSource};

use common::{answers_of, ask};

fn service(name: &str, ip: &str, ports: &[u16]) -> String {
    let ports: Vec<String> = ports
        .iter()
        .map(|p| format!("{{name: p{p}, port: {p}}}"))
        .collect();
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: ns}}\n\
         spec:\n  clusterIP: {ip}\n  ports: [{}]\n",
        ports.join(", ")
    )
}

fn headless(name: &str, ips: &[&str]) -> String {
    let addrs: Vec<String> = ips.iter().map(|ip| format!("{{ip: {ip}}}")).collect();
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: ns}}\n\
         spec:\n  clusterIP: None\n  ports: [{{name: p, port: 80}}]\n---\n\
         apiVersion: v1\nkind: Endpoints\nmetadata: {{name: {name}, namespace: ns}}\n\
         subsets: [{{addresses: [{}], ports: [{{name: p, port: 80}}]}}]\n",
        addrs.join(", ")
    )
}

/// Programmed: `before`; pending: `after`, loaded by one Loader so unchanged Services keep
/// their `Arc`.
fn pair(before: &[(&str, String)], after: &[(&str, String)]) -> (Arc<Snapshot>, Arc<Snapshot>) {
    let dir = tempfile::tempdir().unwrap();
    let mut loader = Loader::new(dir.path(), ParseOptions::default());
    let mut load = |files: &[(&str, String)]| {
        for e in std::fs::read_dir(dir.path()).unwrap() {
            std::fs::remove_file(e.unwrap().path()).unwrap();
        }
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        let (snap, _) = loader.reload().unwrap();
        let snap = snap.unwrap_or_else(|| loader.snapshot().clone());
        assert!(
            snap.diagnostics.errors.is_empty(),
            "{:?}",
            snap.diagnostics.errors
        );
        snap
    };
    let p = load(before);
    let n = load(after);
    assert!(n.version > p.version);
    (p, n)
}

fn key(name: &str) -> ServiceKey {
    ServiceKey::new("ns", name)
}

#[test]
fn each_kind_of_change_is_answered_from_the_side_that_routes() {
    let (p, n) = pair(
        &[
            ("same.yaml", service("same", "10.96.0.1", &[80])),
            ("grows.yaml", service("grows", "10.96.0.2", &[80])),
            ("shrinks.yaml", service("shrinks", "10.96.0.3", &[80, 81])),
            ("moves.yaml", service("moves", "10.96.0.4", &[80])),
            ("gone.yaml", service("gone", "10.96.0.6", &[80])),
            ("pods.yaml", headless("pods", &["10.1.0.1"])),
        ],
        &[
            ("same.yaml", service("same", "10.96.0.1", &[80])),
            ("grows.yaml", service("grows", "10.96.0.2", &[80, 81])),
            ("shrinks.yaml", service("shrinks", "10.96.0.3", &[80])),
            ("moves.yaml", service("moves", "10.96.0.5", &[80])),
            ("new.yaml", service("new", "10.96.0.7", &[80])),
            ("pods.yaml", headless("pods", &["10.1.0.1", "10.1.0.2"])),
        ],
    );
    let src = DnsSource {
        seq: 1,
        programmed: Arc::clone(&p),
        pending: Some(Arc::clone(&n)),
    };
    let from = |name: &str| -> &'static str {
        let Some((_, s)) = src.visible().find(|(k, _)| **k == key(name)) else {
            return "hidden";
        };
        match (p.service(&key(name)), n.service(&key(name))) {
            (_, Some(ns)) if Arc::ptr_eq(s, ns) => "next",
            (Some(ps), _) if Arc::ptr_eq(s, ps) => "programmed",
            _ => "other",
        }
    };
    assert_eq!(from("same"), "next", "unchanged");
    assert_eq!(
        from("grows"),
        "programmed",
        "a new port waits until it routes"
    );
    assert_eq!(from("shrinks"), "next", "a removed port goes at once");
    assert_eq!(
        from("moves"),
        "hidden",
        "a new ClusterIP: neither side routes under both"
    );
    assert_eq!(from("gone"), "hidden", "a removed Service goes at once");
    assert_eq!(from("new"), "hidden", "a new Service waits until it routes");
    assert_eq!(
        from("pods"),
        "next",
        "headless answers are not routed by svcplane"
    );

    // The same seen through the table DNS serves.
    let cfg = DnsConfig::new("cluster.local", 5).unwrap();
    let mut builder = TableBuilder::new(cfg);
    let gated = builder.build_source(&src);
    assert_eq!(gated.version, p.version);
    let a = |t, name: &str| {
        answers_of(
            &ask(t, &format!("{name}.ns.svc.cluster.local."), RecordType::A),
            RecordType::A,
        )
    };
    assert_eq!(a(&gated, "same"), vec!["10.96.0.1"]);
    assert_eq!(a(&gated, "grows"), vec!["10.96.0.2"]);
    let nx = ask(&gated, "new.ns.svc.cluster.local.", RecordType::A);
    assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
    let nx = ask(&gated, "gone.ns.svc.cluster.local.", RecordType::A);
    assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
    let srv = ask(
        &gated,
        "_p81._tcp.grows.ns.svc.cluster.local.",
        RecordType::SRV,
    );
    assert!(
        answers_of(&srv, RecordType::SRV).is_empty(),
        "port 81 is not routed yet"
    );
    let srv = ask(
        &gated,
        "_p81._tcp.shrinks.ns.svc.cluster.local.",
        RecordType::SRV,
    );
    assert!(
        answers_of(&srv, RecordType::SRV).is_empty(),
        "port 81 is being removed"
    );
    let mut pods = a(&gated, "pods");
    pods.sort();
    assert_eq!(pods, vec!["10.1.0.1", "10.1.0.2"]);

    // Once programmed, everything of the new snapshot.
    let settled = builder.build_source(&DnsSource::settled(2, Arc::clone(&n)));
    assert_eq!(settled.version, n.version);
    assert_eq!(a(&settled, "new"), vec!["10.96.0.7"]);
    assert_eq!(a(&settled, "moves"), vec!["10.96.0.5"]);
    let srv = ask(
        &settled,
        "_p81._tcp.grows.ns.svc.cluster.local.",
        RecordType::SRV,
    );
    assert_eq!(answers_of(&srv, RecordType::SRV).len(), 1);
    let nx = ask(&settled, "gone.ns.svc.cluster.local.", RecordType::A);
    assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
}
