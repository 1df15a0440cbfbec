//! Property: for any two snapshots `a` and `b` produced by one Loader (files written for
//! `a`, reloaded, rewritten for `b`, reloaded), applying `diff(a, b)` to `a`'s tables gives
//! exactly `b`'s tables.

mod common;

use std::collections::BTreeMap;
use std::fmt::Write as _;

use proptest::prelude::*;
use svcplane_config::ParseOptions;
use svcplane_config::{Change, Snapshot, diff, diff::apply};

const NAMESPACES: [&str; 2] = ["default", "shop"];
const NAMES: [&str; 5] = ["api", "web", "db", "dns", "cache"];
const FILES: usize = 3;

#[derive(Clone, Debug)]
enum Kind {
    ClusterIp,
    NodePort,
    Headless,
    ExternalName,
}

#[derive(Clone, Debug)]
struct PortSpec {
    port: u16,
    udp: bool,
    node_port: u16,
    named_target: bool,
}

#[derive(Clone, Debug)]
struct ServiceSpec {
    file: usize,
    ns: usize,
    name: usize,
    kind: Kind,
    cluster_ip: u8,
    dual_stack: bool,
    ports: Vec<PortSpec>,
    selector: bool,
    local: bool,
    /// Makes the object invalid (port 0), so its last good version is kept.
    broken: bool,
}

#[derive(Clone, Debug)]
struct EndpointSpec {
    host: u8,
    /// 0: ready, 1: not ready, 2: serving + terminating, 3: nil conditions.
    state: u8,
    node: Option<u8>,
}

#[derive(Clone, Debug)]
struct SliceSpec {
    file: usize,
    ns: usize,
    service: usize,
    suffix: u8,
    v6: bool,
    ports: Vec<(u16, bool)>,
    endpoints: Vec<EndpointSpec>,
}

#[derive(Clone, Debug)]
struct PodSpec {
    file: usize,
    ns: usize,
    app: usize,
    host: u8,
    ready: bool,
}

#[derive(Clone, Debug)]
enum Obj {
    Service(ServiceSpec),
    Slice(SliceSpec),
    Pod(PodSpec),
}

impl Obj {
    fn file(&self) -> usize {
        match self {
            Obj::Service(s) => s.file,
            Obj::Slice(s) => s.file,
            Obj::Pod(p) => p.file,
        }
    }

    fn render(&self, out: &mut String) {
        match self {
            Obj::Service(s) => render_service(s, out),
            Obj::Slice(s) => render_slice(s, out),
            Obj::Pod(p) => render_pod(p, out),
        }
    }
}

// === strategies ===

/// Ports of one Service: numbers and node ports distinct inside the Service (clashes
/// between Services still happen), protocols and target kinds random.
fn port_specs() -> impl Strategy<Value = Vec<PortSpec>> {
    const PORTS: [u16; 4] = [53, 80, 443, 8080];
    (
        0usize..4,
        0u16..4,
        prop::collection::vec((any::<bool>(), any::<bool>()), 1..4),
    )
        .prop_map(|(base, np_base, ports)| {
            ports
                .into_iter()
                .enumerate()
                .map(|(i, (udp, named_target))| PortSpec {
                    port: PORTS[(base + i) % PORTS.len()],
                    udp,
                    node_port: 30000 + (np_base + i as u16) % 4,
                    named_target,
                })
                .collect()
        })
}

fn service_spec() -> impl Strategy<Value = ServiceSpec> {
    let kind = prop_oneof![
        4 => Just(Kind::ClusterIp),
        2 => Just(Kind::NodePort),
        1 => Just(Kind::Headless),
        1 => Just(Kind::ExternalName),
    ];
    (
        (0..FILES, 0..NAMESPACES.len(), 0..NAMES.len(), kind),
        (1u8..6, any::<bool>(), port_specs()),
        (any::<bool>(), any::<bool>(), prop::bool::weighted(0.1)),
    )
        .prop_map(
            |(
                (file, ns, name, kind),
                (cluster_ip, dual_stack, ports),
                (selector, local, broken),
            )| {
                ServiceSpec {
                    file,
                    ns,
                    name,
                    kind,
                    cluster_ip,
                    dual_stack,
                    ports,
                    selector,
                    local,
                    broken,
                }
            },
        )
}

/// A Service, often with an EndpointSlice that serves its ports (in any file).
fn service_with_slice() -> impl Strategy<Value = Vec<Obj>> {
    let slice = (
        0..FILES,
        any::<bool>(),
        0u8..2,
        prop::collection::vec(endpoint_spec(), 1..4),
    );
    (service_spec(), prop::option::weighted(0.7, slice)).prop_map(|(svc, slice)| {
        let mut out = Vec::new();
        if let Some((file, v6, suffix, endpoints)) = slice {
            out.push(Obj::Slice(SliceSpec {
                file,
                ns: svc.ns,
                service: svc.name,
                suffix,
                v6,
                ports: (8000u16..)
                    .zip(&svc.ports)
                    .map(|(port, p)| (port, p.udp))
                    .collect(),
                endpoints,
            }));
        }
        out.insert(0, Obj::Service(svc));
        out
    })
}

fn endpoint_spec() -> impl Strategy<Value = EndpointSpec> {
    (1u8..6, 0u8..4, prop::option::of(0u8..2)).prop_map(|(host, state, node)| EndpointSpec {
        host,
        state,
        node,
    })
}

fn slice_spec() -> impl Strategy<Value = SliceSpec> {
    (
        (
            0..FILES,
            0..NAMESPACES.len(),
            0..NAMES.len(),
            0u8..2,
            any::<bool>(),
        ),
        prop::collection::vec((8000u16..8003, any::<bool>()), 0..3),
        prop::collection::vec(endpoint_spec(), 0..4),
    )
        .prop_map(
            |((file, ns, service, suffix, v6), ports, endpoints)| SliceSpec {
                file,
                ns,
                service,
                suffix,
                v6,
                ports,
                endpoints,
            },
        )
}

fn pod_spec() -> impl Strategy<Value = PodSpec> {
    (
        0..FILES,
        0..NAMESPACES.len(),
        0..NAMES.len(),
        1u8..4,
        any::<bool>(),
    )
        .prop_map(|(file, ns, app, host, ready)| PodSpec {
            file,
            ns,
            app,
            host,
            ready,
        })
}

fn objs() -> impl Strategy<Value = Vec<Obj>> {
    prop_oneof![
        4 => service_with_slice(),
        1 => slice_spec().prop_map(|s| vec![Obj::Slice(s)]),
        1 => pod_spec().prop_map(|p| vec![Obj::Pod(p)]),
    ]
}

/// `a`, and `b` made of the objects of `a` that survive plus some new ones, so the two
/// share unchanged files, changed files, added and removed ones.
fn two_states() -> impl Strategy<Value = (Vec<Obj>, Vec<Obj>)> {
    prop::collection::vec((objs(), any::<bool>()), 0..8).prop_flat_map(|a| {
        let kept: Vec<Obj> = a
            .iter()
            .filter(|(_, keep)| *keep)
            .flat_map(|(o, _)| o.iter().cloned())
            .collect();
        let a: Vec<Obj> = a.into_iter().flat_map(|(o, _)| o).collect();
        prop::collection::vec(objs(), 0..4).prop_map(move |added| {
            let mut b = kept.clone();
            b.extend(added.into_iter().flatten());
            (a.clone(), b)
        })
    })
}

// === rendering ===

fn render_service(s: &ServiceSpec, out: &mut String) {
    let ns = NAMESPACES[s.ns];
    let name = NAMES[s.name];
    let _ = write!(
        out,
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n"
    );
    match s.kind {
        Kind::ExternalName => {
            let _ = writeln!(
                out,
                "  type: ExternalName\n  externalName: {name}.example.com"
            );
        }
        Kind::Headless => out.push_str("  clusterIP: None\n"),
        Kind::ClusterIp | Kind::NodePort => {
            let ip = s.cluster_ip;
            if s.dual_stack {
                let _ = writeln!(out, "  clusterIPs: [10.96.0.{ip}, 'fd00::{ip}']");
            } else {
                let _ = writeln!(out, "  clusterIP: 10.96.0.{ip}");
            }
            if matches!(s.kind, Kind::NodePort) {
                out.push_str("  type: NodePort\n");
            }
        }
    }
    if s.selector {
        let _ = writeln!(out, "  selector:\n    app: {name}");
    }
    if s.local {
        out.push_str("  internalTrafficPolicy: Local\n  externalTrafficPolicy: Local\n");
    }
    out.push_str("  ports:\n");
    for (i, p) in s.ports.iter().enumerate() {
        let port = if s.broken { 0 } else { p.port };
        let proto = if p.udp { "UDP" } else { "TCP" };
        let _ = writeln!(
            out,
            "  - name: p{i}\n    port: {port}\n    protocol: {proto}"
        );
        if p.named_target {
            let _ = writeln!(out, "    targetPort: p{i}");
        }
        if matches!(s.kind, Kind::NodePort) {
            let _ = writeln!(out, "    nodePort: {}", p.node_port);
        }
    }
}

fn render_slice(s: &SliceSpec, out: &mut String) {
    let ns = NAMESPACES[s.ns];
    let svc = NAMES[s.service];
    let family = if s.v6 { "IPv6" } else { "IPv4" };
    let _ = write!(
        out,
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {svc}-{}\n  \
         namespace: {ns}\n  labels:\n    kubernetes.io/service-name: {svc}\naddressType: {family}\n",
        s.suffix
    );
    out.push_str("ports:\n");
    for (i, (port, udp)) in s.ports.iter().enumerate() {
        let proto = if *udp { "UDP" } else { "TCP" };
        let _ = writeln!(out, "- name: p{i}\n  port: {port}\n  protocol: {proto}");
    }
    out.push_str(if s.endpoints.is_empty() {
        "endpoints: []\n"
    } else {
        "endpoints:\n"
    });
    for e in &s.endpoints {
        let addr = if s.v6 {
            format!("'fd00:1::{}'", e.host)
        } else {
            format!("10.1.0.{}", e.host)
        };
        let _ = writeln!(out, "- addresses: [{addr}]");
        match e.state {
            0 => out.push_str("  conditions: {ready: true}\n"),
            1 => out.push_str("  conditions: {ready: false}\n"),
            2 => out.push_str("  conditions: {ready: false, serving: true, terminating: true}\n"),
            _ => {}
        }
        if let Some(n) = e.node {
            let _ = writeln!(out, "  nodeName: node-{n}");
        }
    }
}

fn render_pod(p: &PodSpec, out: &mut String) {
    let ns = NAMESPACES[p.ns];
    let app = NAMES[p.app];
    let ready = if p.ready { "True" } else { "False" };
    let _ = write!(
        out,
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {app}-{}\n  namespace: {ns}\n  labels:\n    \
         app: {app}\nspec:\n  containers:\n  - name: main\n    image: app\n    ports:\n    - name: p0\n      \
         containerPort: 9000\nstatus:\n  podIP: 10.2.0.{}\n  conditions:\n  - type: Ready\n    \
         status: \"{ready}\"\n",
        p.host, p.host
    );
}

/// The text of every file `objs` fill.
fn files(objs: &[Obj]) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    for o in objs {
        let text = out.entry(format!("f{}.yaml", o.file())).or_default();
        if !text.is_empty() {
            text.push_str("---\n");
        }
        o.render(text);
    }
    out
}

/// Makes the directory hold exactly `want`, touching only files whose text changes.
fn sync(dir: &common::Dir, have: &BTreeMap<String, String>, want: &BTreeMap<String, String>) {
    for name in have.keys() {
        if !want.contains_key(name) {
            dir.remove(name);
        }
    }
    for (name, text) in want {
        if have.get(name) != Some(text) {
            dir.write(name, text);
        }
    }
}

// === the property ===

fn check_changes<K, V>(a: &BTreeMap<K, V>, b: &BTreeMap<K, V>, changes: &[Change<K, V>])
where
    K: Ord + Clone + std::fmt::Debug,
    V: PartialEq + Clone + std::fmt::Debug,
{
    let mut applied = a.clone();
    apply(&mut applied, changes);
    assert_eq!(&applied, b, "apply(a, diff(a, b)) != b");
    for pair in changes.windows(2) {
        assert!(
            pair[0].key() < pair[1].key(),
            "changes are in key order, once per key"
        );
    }
    for c in changes {
        match c {
            Change::Added(k, _) => assert!(!a.contains_key(k), "Added {k:?} was already there"),
            Change::Removed(k) => {
                assert!(a.contains_key(k) && !b.contains_key(k), "Removed {k:?}");
            }
            Change::Changed(k, v) => {
                assert!(
                    a.get(k).is_some_and(|old| old != v),
                    "Changed {k:?} is unchanged"
                );
            }
        }
    }
}

fn check_diff(a: &Snapshot, b: &Snapshot) {
    let d = diff(a, b);
    assert_eq!((d.from_version, d.to_version), (a.version, b.version));
    check_changes(a.services(), b.services(), &d.services);
    check_changes(a.ports(), b.ports(), &d.ports);
    assert_eq!(
        d.is_empty(),
        a.services() == b.services() && a.ports() == b.ports()
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn applying_the_diff_of_two_loads_gives_the_second((a_objs, b_objs) in two_states()) {
        let mut dir = common::Dir::new();
        let a_files = files(&a_objs);
        sync(&dir, &BTreeMap::new(), &a_files);
        let a = dir.reload();
        let b_files = files(&b_objs);
        sync(&dir, &a_files, &b_files);
        let b = dir.reload();

        check_diff(&a, &b);
        check_diff(&b, &a);
        prop_assert!(diff(&a, &a).is_empty());
        prop_assert!(diff(&b, &b).is_empty());

        // The incremental build (reusing what `a` resolved) equals a cold load of `b`.
        // Only without errors: duplicates, conflicts and rejected edits are decided in
        // favour of history (what `a` ran), which a cold load does not have.
        let mut cold = svcplane_config::Loader::new(dir.path(""), ParseOptions::default());
        cold.reload().unwrap();
        let fresh = cold.snapshot();
        if fresh.diagnostics.errors.is_empty() {
            prop_assert_eq!(b.services(), fresh.services());
            prop_assert_eq!(b.ports(), fresh.ports());
        }
    }
}

/// The empty snapshot a Loader starts with diffs like any other.
#[test]
fn the_first_load_is_all_additions() {
    let objs = vec![Obj::Service(ServiceSpec {
        file: 0,
        ns: 0,
        name: 1,
        kind: Kind::NodePort,
        cluster_ip: 3,
        dual_stack: true,
        ports: vec![PortSpec {
            port: 80,
            udp: false,
            node_port: 30001,
            named_target: true,
        }],
        selector: true,
        local: false,
        broken: false,
    })];
    let mut dir = common::Dir::new();
    let empty = dir.loader.snapshot().clone();
    sync(&dir, &BTreeMap::new(), &files(&objs));
    let snap = dir.reload();
    assert!(
        snap.diagnostics.errors.is_empty(),
        "{:#?}",
        snap.diagnostics.errors
    );
    let d = diff(&empty, &snap);
    assert_eq!(d.services.len(), 1);
    assert_eq!(d.ports.len(), 1);
    assert!(matches!(d.ports[0], Change::Added(..)));
    check_diff(&empty, &snap);
}
