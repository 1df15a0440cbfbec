//! ClusterIP and nodePort allocation: deterministic, stable, durable, explicit values never
//! handed out, clear errors when a range is full or the state file is damaged.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers panic with context, like the tests that call them"
)]

mod common;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;

use svcplane_config::{AllocOptions, Loader, ParseOptions, ServiceKey, Snapshot};

fn svc(name: &str, extra: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: apps}}\n\
         spec:\n{extra}  ports: [{{name: http, port: 80}}]\n"
    )
}

fn nodeport(name: &str) -> String {
    svc(name, "  type: NodePort\n")
}

fn loader(dir: &Path, state: Option<&Path>, cidr: Option<&str>) -> Loader {
    let alloc = AllocOptions {
        service_cidrs: cidr.map(|c| vec![c.parse().unwrap()]).unwrap_or_default(),
        state_file: state.map(|s| s.join("allocations.v1")),
        ..AllocOptions::default()
    };
    Loader::with_allocation(vec![dir.to_owned()], ParseOptions::default(), alloc).unwrap()
}

fn load(l: &mut Loader) -> std::sync::Arc<Snapshot> {
    l.reload().unwrap();
    l.snapshot().clone()
}

fn ips(s: &Snapshot) -> BTreeMap<String, Vec<IpAddr>> {
    s.services()
        .iter()
        .map(|(k, v)| (k.name.to_string(), v.def.cluster_ips.clone()))
        .collect()
}

fn node_ports(s: &Snapshot, name: &str) -> Vec<Option<u16>> {
    s.service(&ServiceKey::new("apps", name))
        .map(|v| v.def.ports.iter().map(|p| p.node_port).collect())
        .unwrap_or_default()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn services_without_addresses_get_them_in_key_order_whatever_the_files() {
    let a = tempfile::tempdir().unwrap();
    std::fs::write(
        a.path().join("1.yaml"),
        svc("zeta", "") + "---\n" + &svc("alpha", ""),
    )
    .unwrap();
    std::fs::write(
        a.path().join("2.yaml"),
        svc("mid", "  clusterIP: 10.96.0.2\n"),
    )
    .unwrap();
    let b = tempfile::tempdir().unwrap();
    std::fs::write(
        b.path().join("x.yaml"),
        svc("mid", "  clusterIP: 10.96.0.2\n"),
    )
    .unwrap();
    std::fs::write(b.path().join("a.yaml"), svc("alpha", "")).unwrap();
    std::fs::write(b.path().join("b.yaml"), svc("zeta", "")).unwrap();
    let sa = load(&mut loader(a.path(), None, None));
    let sb = load(&mut loader(b.path(), None, None));
    assert_eq!(ips(&sa), ips(&sb));
    // .1 is kept for default/kubernetes, .2 is stated by `mid`: allocation starts at .3.
    assert_eq!(ips(&sa)["alpha"], vec![ip("10.96.0.3")]);
    assert_eq!(ips(&sa)["zeta"], vec![ip("10.96.0.4")]);
    assert_eq!(ips(&sa)["mid"], vec![ip("10.96.0.2")]);
    assert!(
        sa.diagnostics.errors.is_empty(),
        "{:?}",
        sa.diagnostics.errors
    );
}

#[test]
fn default_kubernetes_gets_the_first_address() {
    let d = tempfile::tempdir().unwrap();
    let k = "apiVersion: v1\nkind: Service\nmetadata: {name: kubernetes, namespace: default}\n\
             spec:\n  ports: [{name: https, port: 443}]\n";
    std::fs::write(d.path().join("a.yaml"), svc("aaa", "")).unwrap();
    std::fs::write(d.path().join("k.yaml"), k).unwrap();
    let s = load(&mut loader(d.path(), None, None));
    let kube = s
        .service(&ServiceKey::new("default", "kubernetes"))
        .unwrap();
    assert_eq!(kube.def.cluster_ips, vec![ip("10.96.0.1")]);
    assert_eq!(ips(&s)["aaa"], vec![ip("10.96.0.2")]);
}

#[test]
fn allocations_survive_unrelated_changes_and_are_released() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("b.yaml"), svc("bbb", "")).unwrap();
    let mut l = loader(d.path(), None, None);
    let first = ips(&load(&mut l))["bbb"].clone();
    // A Service that sorts first arrives, another leaves: bbb keeps its address.
    std::fs::write(d.path().join("a.yaml"), svc("aaa", "")).unwrap();
    let s = load(&mut l);
    assert_eq!(ips(&s)["bbb"], first);
    assert_ne!(ips(&s)["aaa"], first);
    std::fs::remove_file(d.path().join("a.yaml")).unwrap();
    std::fs::write(d.path().join("c.yaml"), svc("ccc", "")).unwrap();
    let s = load(&mut l);
    assert_eq!(ips(&s)["bbb"], first);
    assert_eq!(ips(&s)["ccc"].len(), 1);
}

#[test]
fn a_removed_service_releases_its_address() {
    let d = tempfile::tempdir().unwrap();
    for n in ["s1", "s2", "s3", "s4", "s5", "s6"] {
        std::fs::write(d.path().join(format!("{n}.yaml")), svc(n, "")).unwrap();
    }
    let mut l = loader(d.path(), None, Some("10.50.0.0/29"));
    let s = load(&mut l);
    assert!(!ips(&s).contains_key("s6"), "the range holds five");
    assert_eq!(s.diagnostics.errors.len(), 1);
    std::fs::remove_file(d.path().join("s2.yaml")).unwrap();
    let s = load(&mut l);
    assert_eq!(ips(&s)["s6"], vec![ip("10.50.0.3")], "s2's address");
    assert!(
        s.diagnostics.errors.is_empty(),
        "{:?}",
        s.diagnostics.errors
    );
}

#[test]
fn allocations_persist_across_restarts_in_the_state_file() {
    let d = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("z.yaml"), svc("zzz", "")).unwrap();
    std::fs::write(d.path().join("n.yaml"), nodeport("web")).unwrap();
    let before = {
        let mut l = loader(d.path(), Some(state.path()), None);
        load(&mut l)
    };
    assert!(state.path().join("allocations.v1").exists());
    // After a restart a new Service that sorts first must not take zzz's address.
    std::fs::write(d.path().join("a.yaml"), svc("aaa", "")).unwrap();
    let mut l = loader(d.path(), Some(state.path()), None);
    let after = load(&mut l);
    assert_eq!(ips(&after)["zzz"], ips(&before)["zzz"]);
    assert_eq!(ips(&after)["web"], ips(&before)["web"]);
    assert_eq!(node_ports(&after, "web"), node_ports(&before, "web"));
    assert_ne!(ips(&after)["aaa"], ips(&before)["zzz"]);
}

#[test]
fn node_ports_are_allocated_from_the_range_never_reusing_explicit_ones() {
    let d = tempfile::tempdir().unwrap();
    let explicit = "apiVersion: v1\nkind: Service\nmetadata: {name: fixed, namespace: apps}\n\
                    spec:\n  type: NodePort\n  ports: [{name: http, port: 80, nodePort: 30000}]\n";
    std::fs::write(d.path().join("z.yaml"), explicit).unwrap();
    std::fs::write(d.path().join("a.yaml"), nodeport("auto")).unwrap();
    let s = load(&mut loader(d.path(), None, None));
    assert_eq!(node_ports(&s, "fixed"), vec![Some(30000)]);
    assert_eq!(node_ports(&s, "auto"), vec![Some(30001)]);
    assert!(
        s.by_node_port(30001, svcplane_config::Protocol::Tcp)
            .is_some()
    );
}

#[test]
fn an_explicit_address_is_never_handed_out_even_when_it_arrives_later() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("a.yaml"), svc("auto", "")).unwrap();
    let mut l = loader(d.path(), None, None);
    let s = load(&mut l);
    assert_eq!(ips(&s)["auto"], vec![ip("10.96.0.2")]);
    // A manifest now states that address: the explicit one wins, `auto` moves.
    std::fs::write(
        d.path().join("b.yaml"),
        svc("pinned", "  clusterIP: 10.96.0.2\n"),
    )
    .unwrap();
    let s = load(&mut l);
    assert_eq!(ips(&s)["pinned"], vec![ip("10.96.0.2")]);
    assert_ne!(ips(&s)["auto"], vec![ip("10.96.0.2")]);
    assert!(
        s.diagnostics.errors.is_empty(),
        "{:?}",
        s.diagnostics.errors
    );
}

#[test]
fn a_full_range_is_an_error_for_the_services_that_did_not_fit() {
    let d = tempfile::tempdir().unwrap();
    // /29: .0 network, .1 kubernetes, .2-.6 usable (the last address is not used).
    for n in ["s1", "s2", "s3", "s4", "s5", "s6", "s7"] {
        std::fs::write(d.path().join(format!("{n}.yaml")), svc(n, "")).unwrap();
    }
    let s = load(&mut loader(d.path(), None, Some("10.50.0.0/29")));
    let got = ips(&s);
    assert_eq!(got.len(), 5, "{got:?}");
    assert_eq!(got["s1"], vec![ip("10.50.0.2")]);
    let errs: Vec<String> = s.diagnostics.errors.iter().map(|e| e.to_string()).collect();
    assert_eq!(errs.len(), 2, "{errs:?}");
    for (e, name) in errs.iter().zip(["s6", "s7"]) {
        assert!(
            e.contains(&format!("Service apps/{name}"))
                && e.contains("spec.clusterIP")
                && e.contains("no free address left in the Service range 10.50.0.0/29"),
            "{e}"
        );
    }
}

#[test]
fn dual_stack_services_get_one_address_per_family() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(
        d.path().join("a.yaml"),
        svc(
            "dual",
            "  ipFamilyPolicy: PreferDualStack\n  ipFamilies: [IPv6, IPv4]\n",
        ),
    )
    .unwrap();
    std::fs::write(
        d.path().join("b.yaml"),
        svc("six", "  ipFamilies: [IPv6]\n"),
    )
    .unwrap();
    let s = load(&mut loader(d.path(), None, None));
    let got = ips(&s);
    assert_eq!(got["dual"].len(), 2);
    assert!(
        got["dual"][0].is_ipv6() && got["dual"][1].is_ipv4(),
        "{got:?}"
    );
    assert_eq!(got["six"].len(), 1);
    assert!(got["six"][0].is_ipv6());
}

#[test]
fn a_corrupt_or_torn_state_file_is_reported_not_reset() {
    let state = tempfile::tempdir().unwrap();
    let file = state.path().join("allocations.v1");
    for bad in [
        "{\"version\": 1, \"services\": {\"apps/a\": {\"clusterIPs\": [\"10.96",
        "garbage",
    ] {
        std::fs::write(&file, bad).unwrap();
        let alloc = AllocOptions {
            state_file: Some(file.clone()),
            ..AllocOptions::default()
        };
        let err = Loader::with_allocation(
            vec![state.path().to_owned()],
            ParseOptions::default(),
            alloc,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("allocations.v1") && err.contains("never reset silently"),
            "{err}"
        );
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            bad,
            "the file was touched"
        );
    }
}

#[test]
fn headless_and_external_name_services_get_no_address() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("h.yaml"), svc("h", "  clusterIP: None\n")).unwrap();
    std::fs::write(
        d.path().join("e.yaml"),
        "apiVersion: v1\nkind: Service\nmetadata: {name: e, namespace: apps}\n\
         spec: {type: ExternalName, externalName: db.example.com}\n",
    )
    .unwrap();
    let s = load(&mut loader(d.path(), None, None));
    assert!(ips(&s).values().all(Vec::is_empty));
}
