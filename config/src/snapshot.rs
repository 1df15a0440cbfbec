//! The immutable, versioned Snapshot and the one place that resolves endpoints and decides
//! which of them carry traffic.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use serde::Serialize;

use crate::error::{ConfigError, Warning};
use crate::model::{
    Backend, Conditions, Endpoint, EndpointPort, EndpointSource, Frontend, Origin, Protocol,
    ServiceDef, ServiceKey, ServiceType, SessionAffinity, TargetPort, TrafficPolicy,
};
use crate::parse::{EndpointsDef, Object, PodDef, SliceDef};

/// A Service with its resolved endpoints.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Service {
    #[serde(flatten)]
    pub def: Arc<ServiceDef>,
    pub endpoint_source: EndpointSource,
    pub endpoints: Arc<[Endpoint]>,
}

/// Identity of one Service port: the unit of incremental data-plane updates.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ServicePortKey {
    pub service: ServiceKey,
    pub port: u16,
    pub protocol: Protocol,
}

impl std::fmt::Display for ServicePortKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}/{}", self.service, self.port, self.protocol)
    }
}

/// One endpoint of a Service port, with the facts endpoint selection needs.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct PortEndpoint {
    pub backend: Backend,
    pub conditions: Conditions,
    pub node_name: Option<Arc<str>>,
    pub zone: Option<Arc<str>>,
}

/// Everything a data plane needs to program one Service port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PortView {
    pub key: ServicePortKey,
    pub name: Option<Arc<str>>,
    #[serde(rename = "type")]
    pub type_: ServiceType,
    pub node_port: Option<u16>,
    pub cluster_ips: Vec<IpAddr>,
    pub external_ips: Vec<IpAddr>,
    pub load_balancer_ips: Vec<IpAddr>,
    pub session_affinity: SessionAffinity,
    pub external_traffic_policy: TrafficPolicy,
    pub internal_traffic_policy: TrafficPolicy,
    pub endpoints: Vec<PortEndpoint>,
}

/// Which traffic policy applies: ClusterIP traffic is internal; NodePort, LoadBalancer and
/// externalIP traffic is external.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrafficScope {
    Internal,
    External,
}

/// Address family of a frontend; a frontend only routes to endpoints of its family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IpFamily {
    V4,
    V6,
}

impl IpFamily {
    pub fn of(ip: IpAddr) -> Self {
        if ip.is_ipv4() {
            IpFamily::V4
        } else {
            IpFamily::V6
        }
    }
}

impl PortView {
    /// The endpoints that carry new connections for a frontend of this port, per
    /// kube-proxy's rules: a Local policy (for `scope`) keeps only endpoints on `node`; of
    /// those, the ready ones; if none is ready, the serving + terminating ones.
    /// Both data planes call this; neither re-implements it.
    pub fn routable_endpoints(
        &self,
        node: Option<&str>,
        scope: TrafficScope,
        family: IpFamily,
    ) -> Vec<&PortEndpoint> {
        let policy = match scope {
            TrafficScope::Internal => self.internal_traffic_policy,
            TrafficScope::External => self.external_traffic_policy,
        };
        let candidates = self.endpoints.iter().filter(|e| {
            IpFamily::of(e.backend.0.ip()) == family
                && (policy == TrafficPolicy::Cluster
                    || (node.is_some() && e.node_name.as_deref() == node))
        });
        let ready: Vec<&PortEndpoint> = candidates.clone().filter(|e| e.conditions.ready).collect();
        if !ready.is_empty() {
            return ready;
        }
        candidates
            .filter(|e| e.conditions.serving && e.conditions.terminating)
            .collect()
    }

    /// ClusterIP, externalIP and LoadBalancer frontends with the scope each one uses.
    /// NodePorts are not listed: they depend on the node's addresses.
    pub fn frontends(&self) -> impl Iterator<Item = (Frontend, TrafficScope)> + '_ {
        let (port, protocol) = (self.key.port, self.key.protocol);
        let internal = self
            .cluster_ips
            .iter()
            .map(|&ip| (ip, TrafficScope::Internal));
        let external = self
            .external_ips
            .iter()
            .chain(&self.load_balancer_ips)
            .map(|&ip| (ip, TrafficScope::External));
        internal
            .chain(external)
            .map(move |(ip, scope)| (Frontend { ip, port, protocol }, scope))
    }
}

/// Errors and warnings of the load that produced a snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Diagnostics {
    pub files: usize,
    pub errors: Vec<ConfigError>,
    pub warnings: Vec<Warning>,
}

/// One immutable, versioned view of every manifest. Consumers derive their tables from it
/// and never mutate it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Snapshot {
    pub version: u64,
    #[serde(serialize_with = "values_in_order")]
    services: BTreeMap<ServiceKey, Arc<Service>>,
    #[serde(skip)]
    ports: BTreeMap<ServicePortKey, Arc<PortView>>,
    #[serde(skip)]
    frontends: HashMap<Frontend, ServicePortKey>,
    #[serde(skip)]
    node_ports: HashMap<(u16, Protocol), ServicePortKey>,
    pub diagnostics: Arc<Diagnostics>,
}

/// Serializes a map as the list of its values (JSON maps need string keys; every value
/// carries its own key).
fn values_in_order<S: serde::Serializer, K, V: Serialize>(
    map: &BTreeMap<K, V>,
    ser: S,
) -> Result<S::Ok, S::Error> {
    ser.collect_seq(map.values())
}

impl Snapshot {
    pub fn services(&self) -> &BTreeMap<ServiceKey, Arc<Service>> {
        &self.services
    }

    pub fn service(&self, key: &ServiceKey) -> Option<&Arc<Service>> {
        self.services.get(key)
    }

    /// Every routable Service port (not headless, not ExternalName).
    pub fn ports(&self) -> &BTreeMap<ServicePortKey, Arc<PortView>> {
        &self.ports
    }

    pub fn port(&self, key: &ServicePortKey) -> Option<&Arc<PortView>> {
        self.ports.get(key)
    }

    /// The Service port a ClusterIP / externalIP / LoadBalancer frontend belongs to.
    pub fn by_frontend(&self, f: &Frontend) -> Option<&Arc<PortView>> {
        self.frontends.get(f).and_then(|k| self.ports.get(k))
    }

    /// The Service port that owns a nodePort.
    pub fn by_node_port(&self, port: u16, protocol: Protocol) -> Option<&Arc<PortView>> {
        self.node_ports
            .get(&(port, protocol))
            .and_then(|k| self.ports.get(k))
    }

    pub fn endpoint_count(&self) -> usize {
        self.services.values().map(|s| s.endpoints.len()).sum()
    }
}

// === build ===

/// Builds a snapshot from every accepted object (in a stable order: files sorted by path,
/// objects in file order). Conflicts between objects are decided in favour of what `prev`
/// already had, so adding a conflicting object never takes a working one down.
pub(crate) fn build(
    version: u64,
    objects: &[&Object],
    prev: Option<&Snapshot>,
    mut diagnostics: Diagnostics,
) -> Snapshot {
    let errors = &mut diagnostics.errors;
    let mut services: Vec<Arc<ServiceDef>> = Vec::new();
    let mut slices: Vec<&Arc<SliceDef>> = Vec::new();
    let mut endpoints: Vec<&Arc<EndpointsDef>> = Vec::new();
    let mut pods: Vec<&Arc<PodDef>> = Vec::new();
    for o in objects {
        match o {
            Object::Service(s) => services.push(s.clone()),
            Object::Slice(s) => slices.push(s),
            Object::Endpoints(e) => endpoints.push(e),
            Object::Pod(p) => pods.push(p),
        }
    }
    let prev_origin = |key: &ServiceKey| {
        prev.and_then(|p| p.services.get(key))
            .map(|s| &s.def.origin)
    };
    let services = dedupe(
        services,
        "Service",
        errors,
        |s| (s.key.clone(), &s.origin),
        |s| prev_origin(&s.key).is_some_and(|o| o.file == s.origin.file),
    );
    let slices = dedupe(
        slices,
        "EndpointSlice",
        errors,
        |s| {
            (
                ServiceKey::new(s.namespace.clone(), s.name.clone()),
                &s.origin,
            )
        },
        |_| false,
    );
    let endpoints = dedupe(
        endpoints,
        "Endpoints",
        errors,
        |e| (e.key.clone(), &e.origin),
        |_| false,
    );
    let pods = dedupe(
        pods,
        "Pod",
        errors,
        |p| {
            (
                ServiceKey::new(p.namespace.clone(), p.name.clone()),
                &p.origin,
            )
        },
        |_| false,
    );

    let services = claim_frontends(services, prev, errors);

    let mut slices_by_service: HashMap<(&str, &str), Vec<&SliceDef>> = HashMap::new();
    for s in slices.values() {
        if let Some(svc) = &s.service {
            slices_by_service
                .entry((&s.namespace, svc))
                .or_default()
                .push(s);
        }
    }
    let mut pods_by_ns: HashMap<&str, Vec<&PodDef>> = HashMap::new();
    for p in pods.values() {
        pods_by_ns.entry(&p.namespace).or_default().push(p);
    }

    let mut snap = Snapshot {
        version,
        ..Snapshot::default()
    };
    for (key, def) in services {
        let (source, eps) =
            if let Some(list) = slices_by_service.get(&(&*key.namespace, &*key.name)) {
                let eps = list
                    .iter()
                    .flat_map(|s| s.endpoints.iter().cloned())
                    .collect();
                (EndpointSource::EndpointSlices, eps)
            } else if let Some(e) = endpoints.get(&key) {
                (EndpointSource::Endpoints, e.endpoints.clone())
            } else if let Some(sel) = &def.selector {
                let matching: Vec<Endpoint> = pods_by_ns
                    .get(&*key.namespace)
                    .map(|ps| pod_endpoints(&def, sel, ps))
                    .unwrap_or_default();
                if matching.is_empty() {
                    (EndpointSource::None, matching)
                } else {
                    (EndpointSource::Pods, matching)
                }
            } else {
                (EndpointSource::None, Vec::new())
            };
        let svc = Arc::new(Service {
            def,
            endpoint_source: source,
            endpoints: eps.into(),
        });
        add_ports(&mut snap, &svc);
        snap.services.insert(key, svc);
    }
    snap.diagnostics = Arc::new(diagnostics);
    snap
}

/// Keeps one object per key. The kept one is the first for which `preferred` holds, else
/// the first; every other one is an error naming both definitions.
fn dedupe<T, K: Ord + std::fmt::Display + Clone>(
    items: Vec<T>,
    kind: &str,
    errors: &mut Vec<ConfigError>,
    key_of: impl Fn(&T) -> (K, &Origin),
    preferred: impl Fn(&T) -> bool,
) -> BTreeMap<K, T> {
    let mut by_key: BTreeMap<K, Vec<T>> = BTreeMap::new();
    for item in items {
        let (k, _) = key_of(&item);
        by_key.entry(k).or_default().push(item);
    }
    let mut out = BTreeMap::new();
    for (k, mut list) in by_key {
        let keep = list.iter().position(&preferred).unwrap_or(0);
        let kept = list.swap_remove(keep);
        for dup in &list {
            let (_, origin) = key_of(dup);
            errors.push(ConfigError {
                file: origin.file.clone(),
                document: Some(origin.document),
                line: Some(origin.line),
                kind: Some(kind.to_owned()),
                object: Some(k.to_string()),
                field: Some("metadata.name".into()),
                reason: format!("{kind} {k} is defined more than once; this definition is ignored"),
                other: Some(key_of(&kept).1.clone()),
            });
        }
        out.insert(k, kept);
    }
    out
}

/// What one Service claims: address frontends and node ports, with the field that claims it.
fn claims(def: &ServiceDef) -> Vec<(Claim, String)> {
    let mut out = Vec::new();
    if def.headless || def.type_ == ServiceType::ExternalName {
        return out;
    }
    for (i, p) in def.ports.iter().enumerate() {
        let addrs = [
            ("spec.clusterIPs", &def.cluster_ips),
            ("spec.externalIPs", &def.external_ips),
            ("status.loadBalancer.ingress", &def.load_balancer_ips),
        ];
        for (field, ips) in addrs {
            for (j, &ip) in ips.iter().enumerate() {
                let f = Frontend {
                    ip,
                    port: p.port,
                    protocol: p.protocol,
                };
                out.push((
                    Claim::Frontend(f),
                    format!("{field}[{j}] + spec.ports[{i}]"),
                ));
            }
        }
        if let Some(np) = p.node_port {
            out.push((
                Claim::NodePort(np, p.protocol),
                format!("spec.ports[{i}].nodePort"),
            ));
        }
    }
    out
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Claim {
    Frontend(Frontend),
    NodePort(u16, Protocol),
}

impl std::fmt::Display for Claim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Claim::Frontend(fe) => write!(f, "{fe}"),
            Claim::NodePort(p, proto) => write!(f, "nodePort {p}/{proto}"),
        }
    }
}

/// Rejects Services whose frontends or node ports another Service already holds. Services
/// that `prev` had are placed first, so a newcomer never displaces a running Service; an
/// edit that now conflicts keeps the version `prev` ran when that one still fits.
fn claim_frontends(
    services: BTreeMap<ServiceKey, Arc<ServiceDef>>,
    prev: Option<&Snapshot>,
    errors: &mut Vec<ConfigError>,
) -> BTreeMap<ServiceKey, Arc<ServiceDef>> {
    let prev_def = |key: &ServiceKey| prev.and_then(|p| p.services.get(key)).map(|s| &s.def);
    // A Service `prev` had unchanged goes first, then one `prev` had in another version,
    // then newcomers: neither an edit nor an addition displaces a Service that still works.
    let rank = |key: &ServiceKey, def: &ServiceDef| match prev_def(key) {
        Some(old) if old.same_spec(def) => 0,
        Some(_) => 1,
        None => 2,
    };
    let mut order: Vec<(&ServiceKey, &Arc<ServiceDef>)> = services.iter().collect();
    order.sort_by_key(|(k, d)| rank(k, d));
    let mut owner: HashMap<Claim, &Arc<ServiceDef>> = HashMap::new();
    let mut kept = BTreeMap::new();
    for (key, def) in order {
        let taken = taken_claims(def, &owner);
        let chosen = if taken.is_empty() {
            Some(def)
        } else {
            prev_def(key).filter(|old| taken_claims(old, &owner).is_empty())
        };
        for (claim, field, other) in taken {
            let keeping = if chosen.is_some() {
                "; keeping its last good version"
            } else {
                ""
            };
            errors.push(ConfigError {
                file: def.origin.file.clone(),
                document: Some(def.origin.document),
                line: Some(def.origin.line),
                kind: Some("Service".into()),
                object: Some(key.to_string()),
                field: Some(field),
                reason: format!("{claim} is already used by Service {}{keeping}", other.key),
                other: Some(other.origin.clone()),
            });
        }
        if let Some(chosen) = chosen {
            for (claim, _) in claims(chosen) {
                owner.insert(claim, chosen);
            }
            kept.insert(key.clone(), chosen.clone());
        }
    }
    kept
}

/// The claims of `def` that another Service already holds, with the claiming field.
fn taken_claims<'o>(
    def: &ServiceDef,
    owner: &HashMap<Claim, &'o Arc<ServiceDef>>,
) -> Vec<(Claim, String, &'o Arc<ServiceDef>)> {
    claims(def)
        .into_iter()
        .filter_map(|(claim, field)| owner.get(&claim).map(|other| (claim, field, *other)))
        .collect()
}

/// The endpoints controller's job: one endpoint per address of each Pod matching the
/// selector, with named target ports resolved from the Pod's container ports.
fn pod_endpoints(
    def: &ServiceDef,
    selector: &BTreeMap<String, String>,
    pods: &[&PodDef],
) -> Vec<Endpoint> {
    let mut out = Vec::new();
    for pod in pods {
        let matches = selector.iter().all(|(k, v)| pod.labels.get(k) == Some(v));
        if !matches || pod.ips.is_empty() {
            continue;
        }
        let ports: Arc<[EndpointPort]> = def
            .ports
            .iter()
            .filter_map(|sp| {
                let port = match &sp.target_port {
                    TargetPort::Number(n) => *n,
                    TargetPort::Name(name) => {
                        pod.ports
                            .iter()
                            .find(|c| c.protocol == sp.protocol && c.name.as_deref() == Some(name))?
                            .port
                    }
                };
                Some(EndpointPort {
                    name: sp.name.clone(),
                    port,
                    protocol: sp.protocol,
                })
            })
            .collect();
        let hostname = match (&pod.hostname, &pod.subdomain) {
            (Some(h), Some(sub)) if **sub == *def.key.name => Some(h.clone()),
            _ => None,
        };
        // As the EndpointSlice controller does: publishNotReadyAddresses makes every
        // endpoint ready, terminating or not.
        let conditions = Conditions {
            ready: pod.conditions.ready || def.publish_not_ready_addresses,
            ..pod.conditions
        };
        for &ip in &pod.ips {
            out.push(Endpoint {
                ip,
                hostname: hostname.clone(),
                node_name: pod.node_name.clone(),
                zone: None,
                conditions,
                target_ref: Some(crate::model::TargetRef {
                    kind: Some(Arc::from("Pod")),
                    namespace: Some(pod.namespace.clone()),
                    name: Some(pod.name.clone()),
                }),
                ports: ports.clone(),
            });
        }
    }
    out
}

/// Adds the routable ports of `svc` and their frontend indexes.
fn add_ports(snap: &mut Snapshot, svc: &Arc<Service>) {
    let def = &svc.def;
    if def.headless || def.type_ == ServiceType::ExternalName {
        return;
    }
    for sp in &def.ports {
        let key = ServicePortKey {
            service: def.key.clone(),
            port: sp.port,
            protocol: sp.protocol,
        };
        let mut seen: HashSet<SocketAddr> = HashSet::new();
        let endpoints = svc
            .endpoints
            .iter()
            .filter_map(|e| {
                let port = e.port_for(sp.name.as_deref(), sp.protocol)?;
                let addr = SocketAddr::new(e.ip, port);
                seen.insert(addr).then(|| PortEndpoint {
                    backend: Backend(addr),
                    conditions: e.conditions,
                    node_name: e.node_name.clone(),
                    zone: e.zone.clone(),
                })
            })
            .collect();
        let view = PortView {
            key: key.clone(),
            name: sp.name.clone(),
            type_: def.type_,
            node_port: sp.node_port,
            cluster_ips: def.cluster_ips.clone(),
            external_ips: def.external_ips.clone(),
            load_balancer_ips: def.load_balancer_ips.clone(),
            session_affinity: def.session_affinity,
            external_traffic_policy: def.external_traffic_policy,
            internal_traffic_policy: def.internal_traffic_policy,
            endpoints,
        };
        for (f, _) in view.frontends() {
            snap.frontends.insert(f, key.clone());
        }
        if let Some(np) = sp.node_port {
            snap.node_ports.insert((np, sp.protocol), key.clone());
        }
        snap.ports.insert(key, Arc::new(view));
    }
}
