//! The FrontendTable: every listening address with the route it balances over, built once
//! per snapshot and swapped whole.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use svcplane_config::{
    IpFamily, PortView, Protocol, ServiceKey, ServicePortKey, SessionAffinity, Snapshot,
    TrafficScope,
};

use crate::endpoint::EndpointState;
use crate::route::{AffinityTable, FrontendKind, Route};

/// A socket the proxy listens on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Listen {
    pub addr: SocketAddr,
    pub protocol: Protocol,
}

impl fmt::Display for Listen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.protocol)
    }
}

/// One frontend: where it listens, what it is, where it sends traffic.
#[derive(Debug, Clone)]
pub struct FrontendEntry {
    pub listen: Listen,
    pub kind: FrontendKind,
    pub route: Arc<Route>,
}

/// Facts about the node the table is built for.
#[derive(Clone, Debug, Default)]
pub struct NodeConfig {
    /// Endpoints whose nodeName equals this are local (traffic policy Local).
    pub node_name: Option<String>,
    /// Addresses NodePorts listen on.
    pub node_ips: Vec<IpAddr>,
    /// The health self-test's frontend and backend: a TCP frontend added to every table.
    pub probe: Option<Probe>,
}

/// The health self-test's route: `frontend` (TCP) balances over the one `backend`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Probe {
    pub frontend: SocketAddr,
    pub backend: SocketAddr,
}

impl Probe {
    /// The route key status and metrics show it under (no Kubernetes name has parentheses,
    /// so no Service can collide with it).
    pub fn key(&self) -> ServicePortKey {
        ServicePortKey {
            service: ServiceKey::new("svcplane", "(self-test)"),
            port: self.frontend.port(),
            protocol: Protocol::Tcp,
        }
    }
}

/// Everything the data path reads, for one snapshot version.
#[derive(Debug, Default)]
pub struct FrontendTable {
    pub version: u64,
    pub routes: HashMap<Listen, Arc<Route>>,
    /// Every frontend, sorted by Service port then address (status, metrics).
    pub frontends: Vec<FrontendEntry>,
    /// Every endpoint of every proxied Service port, routable or not (metrics, status).
    pub ports: BTreeMap<ServicePortKey, Vec<Arc<EndpointState>>>,
}

/// State that outlives a snapshot: per-port affinity memory and per-endpoint counters and
/// ejections, reused by the next build for what it keeps.
#[derive(Debug, Default)]
pub struct Registry {
    ports: HashMap<ServicePortKey, PortSlot>,
    /// The last build had no conflict: each port's frontends depended on that port alone,
    /// so a port whose view is unchanged can keep them.
    clean: bool,
    probe: Option<(SocketAddr, Arc<EndpointState>)>,
    warned_sctp: BTreeSet<ServiceKey>,
}

#[derive(Debug, Default)]
struct PortSlot {
    affinity: Arc<AffinityTable>,
    /// Sorted by address, one per address (binary search: no hashing, one allocation).
    endpoints: Vec<(SocketAddr, Arc<EndpointState>)>,
    /// What the last build made of this port, and from which view.
    built: Option<Built>,
}

/// One port's share of a table: kept whole while the snapshot keeps the port's view (the
/// same `Arc`, so the same contents), which makes a one-Service change cost that Service
/// instead of a rebuild of 10,000 (114-157 ms at 10,000 Services before).
#[derive(Debug)]
struct Built {
    view: Arc<PortView>,
    /// This port's frontends, sorted by address.
    frontends: Vec<FrontendEntry>,
    /// Every endpoint, routable or not (`FrontendTable::ports`).
    endpoints: Vec<Arc<EndpointState>>,
}

impl PortSlot {
    fn get(&self, addr: &SocketAddr) -> Option<&Arc<EndpointState>> {
        self.endpoints
            .binary_search_by(|(a, _)| a.cmp(addr))
            .ok()
            .map(|i| &self.endpoints[i].1)
    }
}

/// Something the build could not serve, to log once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BuildWarning {
    /// SCTP ports are not proxied (once per Service).
    Sctp(ServiceKey),
    /// Two Service ports want the same address and port; the first keeps it.
    Conflict {
        listen: Listen,
        kept: ServicePortKey,
        dropped: ServicePortKey,
    },
}

impl fmt::Display for BuildWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BuildWarning::Sctp(svc) => write!(
                f,
                "Service {svc}: SCTP ports are not proxied by the userspace mode; skipped"
            ),
            BuildWarning::Conflict {
                listen,
                kept,
                dropped,
            } => write!(
                f,
                "{listen} is wanted by {kept} and {dropped}; {dropped} does not get it"
            ),
        }
    }
}

/// Builds the table for `snap`, reusing `reg`'s state for ports and endpoints it keeps.
pub fn build(
    snap: &Snapshot,
    node: &NodeConfig,
    reg: &mut Registry,
) -> (FrontendTable, Vec<BuildWarning>) {
    let mut warnings = Vec::new();
    let mut slots = HashMap::with_capacity(snap.ports().len());
    let mut table = FrontendTable {
        version: snap.version,
        ..FrontendTable::default()
    };
    let mut sctp = BTreeSet::new();
    for (key, view) in snap.ports() {
        if key.protocol == Protocol::Sctp {
            if !reg.warned_sctp.contains(&key.service) {
                warnings.push(BuildWarning::Sctp(key.service.clone()));
            }
            sctp.insert(key.service.clone());
            continue;
        }
        let mut old = reg.ports.remove(key).unwrap_or_default();
        if reg.clean
            && let Some(built) = old.built.take_if(|b| Arc::ptr_eq(&b.view, view))
            && reuse(&mut table, &built)
        {
            table.ports.insert(key.clone(), built.endpoints.clone());
            old.built = Some(built);
            slots.insert(key.clone(), old);
            continue;
        }
        let mut endpoints: Vec<(SocketAddr, Arc<EndpointState>)> = view
            .endpoints
            .iter()
            .map(|e| {
                let state = old
                    .get(&e.backend.0)
                    .cloned()
                    .unwrap_or_else(|| Arc::new(EndpointState::new(e.backend.0)));
                (e.backend.0, state)
            })
            .collect();
        // The same address twice (two slices): one state, with the last one's conditions,
        // as when this was a map filled in order.
        endpoints.sort_by_key(|a| a.0);
        endpoints.dedup_by(|a, b| a.0 == b.0);
        let mut slot = PortSlot {
            endpoints,
            affinity: old.affinity,
            built: None,
        };
        for e in &view.endpoints {
            if let Some(state) = slot.get(&e.backend.0) {
                state.set_conditions(e.conditions);
            }
        }
        let first = table.frontends.len();
        add_port(&mut table, &mut warnings, key, view, &slot, node);
        table.frontends[first..].sort_by_key(|f| f.listen);
        let all: Vec<Arc<EndpointState>> = view
            .endpoints
            .iter()
            .filter_map(|e| slot.get(&e.backend.0).cloned())
            .collect();
        slot.built = Some(Built {
            view: Arc::clone(view),
            frontends: table.frontends[first..].to_vec(),
            endpoints: all.clone(),
        });
        table.ports.insert(key.clone(), all);
        slots.insert(key.clone(), slot);
    }
    reg.ports = slots;
    reg.warned_sctp = sctp;
    if let Some(probe) = node.probe {
        add_probe(&mut table, &mut warnings, reg, probe);
    }
    reg.clean = !warnings
        .iter()
        .any(|w| matches!(w, BuildWarning::Conflict { .. }));
    // Ports come in key order with their frontends sorted by address: sorted already but
    // for the probe's entry (a stable sort of sorted runs is linear).
    table
        .frontends
        .sort_by(|a, b| (&a.route.key, a.listen).cmp(&(&b.route.key, b.listen)));
    (table, warnings)
}

/// Puts a port's frontends from the last build into `table`; false (and nothing put) if
/// one of its addresses is taken by now.
fn reuse(table: &mut FrontendTable, built: &Built) -> bool {
    if built
        .frontends
        .iter()
        .any(|f| table.routes.contains_key(&f.listen))
    {
        return false;
    }
    for f in &built.frontends {
        table.routes.insert(f.listen, Arc::clone(&f.route));
        table.frontends.push(f.clone());
    }
    true
}

/// The self-test frontend: first served, so a Service cannot take its address.
fn add_probe(
    table: &mut FrontendTable,
    warnings: &mut Vec<BuildWarning>,
    reg: &mut Registry,
    probe: Probe,
) {
    let state = match &reg.probe {
        Some((addr, state)) if *addr == probe.backend => Arc::clone(state),
        _ => Arc::new(EndpointState::new(probe.backend)),
    };
    reg.probe = Some((probe.backend, Arc::clone(&state)));
    let key = probe.key();
    let listen = Listen {
        addr: probe.frontend,
        protocol: Protocol::Tcp,
    };
    let route = Arc::new(Route::new(key.clone(), vec![Arc::clone(&state)], None));
    if let Some(taken) = table.routes.insert(listen, Arc::clone(&route)) {
        warnings.push(BuildWarning::Conflict {
            listen,
            kept: key.clone(),
            dropped: taken.key.clone(),
        });
        table.frontends.retain(|f| f.listen != listen);
    }
    table.frontends.push(FrontendEntry {
        listen,
        kind: FrontendKind::SelfTest,
        route,
    });
    table.ports.insert(key, vec![state]);
}

fn add_port(
    table: &mut FrontendTable,
    warnings: &mut Vec<BuildWarning>,
    key: &ServicePortKey,
    view: &PortView,
    slot: &PortSlot,
    node: &NodeConfig,
) {
    let affinity = match view.session_affinity {
        SessionAffinity::None => None,
        SessionAffinity::ClientIP { timeout_seconds } => Some((
            Duration::from_secs(u64::from(timeout_seconds)),
            Arc::clone(&slot.affinity),
        )),
    };
    // One route per (scope, family): the frontends that share it share its rotation.
    let mut routes: Vec<((bool, IpFamily), Arc<Route>)> = Vec::with_capacity(2);
    let mut route = |scope: TrafficScope, family: IpFamily| {
        let id = (scope == TrafficScope::Internal, family);
        if let Some((_, r)) = routes.iter().find(|(k, _)| *k == id) {
            return Arc::clone(r);
        }
        let eps = view
            .routable_endpoints(node.node_name.as_deref(), scope, family)
            .into_iter()
            .filter_map(|e| slot.get(&e.backend.0).cloned())
            .collect();
        let r = Arc::new(Route::new(key.clone(), eps, affinity.clone()));
        routes.push((id, Arc::clone(&r)));
        r
    };
    let (port, protocol) = (key.port, key.protocol);
    let mut wanted: Vec<(IpAddr, u16, FrontendKind, TrafficScope)> = Vec::new();
    for &ip in &view.cluster_ips {
        wanted.push((ip, port, FrontendKind::ClusterIp, TrafficScope::Internal));
    }
    for &ip in &view.external_ips {
        wanted.push((ip, port, FrontendKind::ExternalIp, TrafficScope::External));
    }
    for &ip in &view.load_balancer_ips {
        wanted.push((ip, port, FrontendKind::LoadBalancer, TrafficScope::External));
    }
    if let Some(np) = view.node_port {
        // A node address serves the NodePort when the Service has that family.
        let has = |f: IpFamily| view.cluster_ips.iter().any(|&ip| IpFamily::of(ip) == f);
        for &ip in &node.node_ips {
            if has(IpFamily::of(ip)) {
                wanted.push((ip, np, FrontendKind::NodePort, TrafficScope::External));
            }
        }
    }
    for (ip, port, kind, scope) in wanted {
        let listen = Listen {
            addr: SocketAddr::new(ip, port),
            protocol,
        };
        if let Some(existing) = table.routes.get(&listen) {
            if existing.key != *key {
                warnings.push(BuildWarning::Conflict {
                    listen,
                    kept: existing.key.clone(),
                    dropped: key.clone(),
                });
            }
            continue;
        }
        let r = route(scope, IpFamily::of(ip));
        table.routes.insert(listen, Arc::clone(&r));
        table.frontends.push(FrontendEntry {
            listen,
            kind,
            route: r,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;
    use svcplane_config::{Loader, ParseOptions};

    fn snapshot(yaml: &str) -> Arc<Snapshot> {
        let dir = tempfile_dir();
        std::fs::write(dir.join("m.yaml"), yaml).unwrap();
        let mut loader = Loader::new(dir.clone(), ParseOptions::default());
        let (snap, _) = loader.reload().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        snap.unwrap()
    }

    fn tempfile_dir() -> std::path::PathBuf {
        use std::sync::atomic::AtomicUsize;
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "svcplane-proxy-table-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    const WEB: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.10
  clusterIPs: [10.96.0.10, "fd00::10"]
  ipFamilies: [IPv4, IPv6]
  externalIPs: [192.0.2.7]
  externalTrafficPolicy: Local
  sessionAffinity: ClientIP
  ports:
  - {name: http, port: 80, targetPort: 8080, nodePort: 30080}
  - {name: dns, port: 53, targetPort: 53, protocol: UDP}
  - {name: sig, port: 9, targetPort: 9, protocol: SCTP}
status:
  loadBalancer:
    ingress: [{ip: 198.51.100.1}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: default, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080}, {name: dns, port: 53, protocol: UDP}, {name: sig, port: 9, protocol: SCTP}]
endpoints:
- {addresses: [10.0.1.1], nodeName: node-a}
- {addresses: [10.0.1.2], nodeName: node-b}
- {addresses: [10.0.1.3], nodeName: node-a, conditions: {ready: false}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-2, namespace: default, labels: {kubernetes.io/service-name: web}}
addressType: IPv6
ports: [{name: http, port: 8080}]
endpoints:
- {addresses: ["fd00:1::1"], nodeName: node-b}
"#;

    fn node() -> NodeConfig {
        NodeConfig {
            node_name: Some("node-a".into()),
            node_ips: vec!["127.0.0.1".parse().unwrap(), "203.0.113.5".parse().unwrap()],
            probe: None,
        }
    }

    /// The self-test frontend is in every table, keeps its endpoint's state across builds,
    /// and takes its address from a Service that wants it.
    #[test]
    fn the_probe_frontend_is_always_there_and_wins_its_address() {
        let probe = Probe {
            frontend: "10.96.0.10:80".parse().unwrap(),
            backend: "127.0.0.1:40000".parse().unwrap(),
        };
        let node = NodeConfig {
            probe: Some(probe),
            ..node()
        };
        let mut reg = Registry::default();
        let (t, warnings) = build(&snapshot(WEB), &node, &mut reg);
        let l = listen("10.96.0.10:80", Protocol::Tcp);
        let route = &t.routes[&l];
        assert_eq!(route.key, probe.key());
        assert_eq!(addrs(route), vec!["127.0.0.1:40000"]);
        let fronts: Vec<_> = t.frontends.iter().filter(|f| f.listen == l).collect();
        assert_eq!(fronts.len(), 1);
        assert_eq!(fronts[0].kind, FrontendKind::SelfTest);
        assert!(
            warnings
                .iter()
                .any(|w| matches!(w, BuildWarning::Conflict { listen, .. } if *listen == l)),
            "{warnings:?}"
        );
        route.endpoints[0]
            .stats
            .connections
            .fetch_add(1, Ordering::Relaxed);
        let (t2, _) = build(&Snapshot::default(), &node, &mut reg);
        assert_eq!(t2.frontends.len(), 1);
        let again = &t2.routes[&l].endpoints[0];
        assert_eq!(again.stats.connections.load(Ordering::Relaxed), 1);
    }

    fn addrs(r: &Route) -> Vec<String> {
        r.endpoints.iter().map(|e| e.addr.to_string()).collect()
    }

    fn listen(s: &str, p: Protocol) -> Listen {
        Listen {
            addr: s.parse().unwrap(),
            protocol: p,
        }
    }

    #[test]
    fn every_frontend_kind_with_its_endpoints() {
        let snap = snapshot(WEB);
        let mut reg = Registry::default();
        let (t, warnings) = build(&snap, &node(), &mut reg);
        let got: Vec<(String, &str, Vec<String>)> = t
            .frontends
            .iter()
            .map(|f| (f.listen.to_string(), f.kind.as_str(), addrs(&f.route)))
            .collect();
        let v4_local = vec!["10.0.1.1:8080".to_string()];
        let v4_all = vec!["10.0.1.1:8080".to_string(), "10.0.1.2:8080".to_string()];
        let expect: Vec<(String, &str, Vec<String>)> = vec![
            (
                "10.96.0.10:53/UDP".into(),
                "ClusterIP",
                vec!["10.0.1.1:53".into(), "10.0.1.2:53".into()],
            ),
            (
                "192.0.2.7:53/UDP".into(),
                "ExternalIP",
                vec!["10.0.1.1:53".into()],
            ),
            (
                "198.51.100.1:53/UDP".into(),
                "LoadBalancer",
                vec!["10.0.1.1:53".into()],
            ),
            ("10.96.0.10:80/TCP".into(), "ClusterIP", v4_all),
            ("127.0.0.1:30080/TCP".into(), "NodePort", v4_local.clone()),
            ("192.0.2.7:80/TCP".into(), "ExternalIP", v4_local.clone()),
            (
                "198.51.100.1:80/TCP".into(),
                "LoadBalancer",
                v4_local.clone(),
            ),
            ("203.0.113.5:30080/TCP".into(), "NodePort", v4_local),
            (
                "[fd00::10]:80/TCP".into(),
                "ClusterIP",
                vec!["[fd00:1::1]:8080".into()],
            ),
            // The UDP port of a LoadBalancer gets a nodePort allocated, as from the API
            // server; no IPv6 endpoint serves it.
            (
                "127.0.0.1:30000/UDP".into(),
                "NodePort",
                vec!["10.0.1.1:53".into()],
            ),
            (
                "203.0.113.5:30000/UDP".into(),
                "NodePort",
                vec!["10.0.1.1:53".into()],
            ),
            ("[fd00::10]:53/UDP".into(), "ClusterIP", vec![]),
        ];
        let mut got_sorted = got.clone();
        got_sorted.sort();
        let mut expect_sorted = expect.clone();
        expect_sorted.sort();
        assert_eq!(got_sorted, expect_sorted);
        assert_eq!(
            warnings,
            [BuildWarning::Sctp(ServiceKey::new("default", "web"))]
        );
        // Frontends of the same (scope, family) share one route (one rotation).
        let np = &t.routes[&listen("127.0.0.1:30080", Protocol::Tcp)];
        let np2 = &t.routes[&listen("203.0.113.5:30080", Protocol::Tcp)];
        assert!(Arc::ptr_eq(np, np2));
        // The not-ready endpoint is known (metrics, status) but not routed to.
        let key = &t.frontends[0].route.key;
        assert!(t.ports.values().any(|eps| eps.len() == 3), "{key}");
        // SCTP is warned about once, not on every build.
        let (_, warnings) = build(&snap, &node(), &mut reg);
        assert!(warnings.is_empty(), "{warnings:?}");
    }

    #[test]
    fn endpoint_state_survives_rebuilds_that_keep_the_endpoint() {
        let snap = snapshot(WEB);
        let mut reg = Registry::default();
        let (t1, _) = build(&snap, &node(), &mut reg);
        let r1 = &t1.routes[&listen("10.96.0.10:80", Protocol::Tcp)];
        r1.endpoints[0].connect_failed(5);
        let smaller = WEB.replace("- {addresses: [10.0.1.2], nodeName: node-b}\n", "");
        let (t2, _) = build(&snapshot(&smaller), &node(), &mut reg);
        let r2 = &t2.routes[&listen("10.96.0.10:80", Protocol::Tcp)];
        assert_eq!(addrs(r2), ["10.0.1.1:8080"]);
        assert!(Arc::ptr_eq(&r1.endpoints[0], &r2.endpoints[0]));
        assert!(r2.endpoints[0].is_ejected(6));
    }

    /// The table as (address, port key, endpoint addresses) rows, in frontend order.
    fn rows(t: &FrontendTable) -> Vec<(Listen, String, Vec<String>)> {
        t.frontends
            .iter()
            .map(|f| {
                (
                    f.listen,
                    f.route.key.to_string(),
                    addrs(&t.routes[&f.listen]),
                )
            })
            .collect()
    }

    /// A change to one Service rebuilds that Service's frontends only (same `Route` for the
    /// others, rotation and all), and the table equals a full rebuild's.
    #[test]
    fn unchanged_ports_keep_their_frontends_and_the_table_matches_a_full_build() {
        const OTHER: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: api, namespace: default}
spec:
  clusterIP: 10.96.0.20
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: api-1, namespace: default, labels: {kubernetes.io/service-name: api}}
addressType: IPv4
ports: [{port: 8080}]
endpoints:
- {addresses: [10.0.2.1]}
"#;
        let dir = tempfile_dir();
        std::fs::write(dir.join("web.yaml"), WEB).unwrap();
        std::fs::write(dir.join("api.yaml"), OTHER).unwrap();
        let mut loader = Loader::new(dir.clone(), ParseOptions::default());
        let s1 = loader.reload().unwrap().0.unwrap();
        let mut reg = Registry::default();
        let (t1, _) = build(&s1, &node(), &mut reg);
        // One endpoint of api changes; web is untouched.
        let changed = OTHER.replace("10.0.2.1", "10.0.2.9");
        std::fs::write(dir.join("api.yaml"), changed).unwrap();
        let s2 = loader.reload().unwrap().0.unwrap();
        let (t2, w2) = build(&s2, &node(), &mut reg);
        std::fs::remove_dir_all(&dir).unwrap();
        let web = listen("10.96.0.10:80", Protocol::Tcp);
        let api = listen("10.96.0.20:80", Protocol::Tcp);
        assert!(Arc::ptr_eq(&t1.routes[&web], &t2.routes[&web]), "web kept");
        assert!(
            !Arc::ptr_eq(&t1.routes[&api], &t2.routes[&api]),
            "api rebuilt"
        );
        assert_eq!(addrs(&t2.routes[&api]), ["10.0.2.9:8080"]);
        let (full, wf) = build(&s2, &node(), &mut Registry::default());
        assert_eq!(rows(&t2), rows(&full));
        // (SCTP is warned about once per registry, so only conflicts compare.)
        let conflicts = |w: Vec<BuildWarning>| -> Vec<BuildWarning> {
            w.into_iter()
                .filter(|w| matches!(w, BuildWarning::Conflict { .. }))
                .collect()
        };
        assert_eq!(conflicts(w2), conflicts(wf));
        let ports = |t: &FrontendTable| -> Vec<(String, usize)> {
            t.ports
                .iter()
                .map(|(k, v)| (k.to_string(), v.len()))
                .collect()
        };
        assert_eq!(ports(&t2), ports(&full));
    }

    #[test]
    fn terminating_endpoints_are_used_only_when_none_is_ready() {
        let yaml = WEB
            .replace(
                "- {addresses: [10.0.1.1], nodeName: node-a}",
                "- {addresses: [10.0.1.1], nodeName: node-a, conditions: {ready: false, serving: true, terminating: true}}",
            )
            .replace(
                "- {addresses: [10.0.1.2], nodeName: node-b}",
                "- {addresses: [10.0.1.2], nodeName: node-b, conditions: {ready: false, serving: true, terminating: true}}",
            );
        let (t, _) = build(&snapshot(&yaml), &node(), &mut Registry::default());
        let r = &t.routes[&listen("10.96.0.10:80", Protocol::Tcp)];
        assert_eq!(addrs(r), ["10.0.1.1:8080", "10.0.1.2:8080"]);
    }

    #[test]
    fn node_port_conflicting_with_an_external_ip_keeps_the_first() {
        let other = r#"
---
apiVersion: v1
kind: Service
metadata: {name: zz, namespace: default}
spec:
  clusterIP: 10.96.0.11
  externalIPs: [203.0.113.5]
  ports: [{port: 30080, targetPort: 1}]
"#;
        let yaml = format!("{WEB}{other}");
        let (t, warnings) = build(&snapshot(&yaml), &node(), &mut Registry::default());
        let r = &t.routes[&listen("203.0.113.5:30080", Protocol::Tcp)];
        assert_eq!(&*r.key.service.name, "web");
        assert!(
            warnings
                .iter()
                .any(|w| matches!(w, BuildWarning::Conflict { .. })),
            "{warnings:?}"
        );
    }
}
