//! The immutable, versioned Snapshot and the one place that resolves endpoints and decides
//! which of them carry traffic.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use serde::Serialize;

use crate::error::{ConfigError, Warning};
use crate::model::{
    Backend, Conditions, Endpoint, EndpointPort, EndpointSource, Frontend, IpFamily, Protocol,
    ServiceDef, ServiceKey, ServiceType, SessionAffinity, TargetPort, TrafficPolicy,
};
use crate::parse::{EndpointsDef, PodDef, SliceDef};

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
    pub(crate) services: BTreeMap<ServiceKey, Arc<Service>>,
    #[serde(skip)]
    pub(crate) ports: BTreeMap<ServicePortKey, Arc<PortView>>,
    #[serde(skip)]
    pub(crate) frontends: HashMap<Frontend, ServicePortKey>,
    #[serde(skip)]
    pub(crate) node_ports: HashMap<(u16, Protocol), ServicePortKey>,
    pub diagnostics: Arc<Diagnostics>,
    /// When the reload that produced this snapshot started (file change noticed): data
    /// planes measure network-programming latency from here.
    #[serde(skip)]
    pub changed_at: Option<std::time::Instant>,
    /// The Service ports this snapshot added, changed or removed relative to the snapshot
    /// of version `delta.from_version` (the loader's previous one), so a consumer that has
    /// that one can apply a change at a cost that does not depend on the number of Services.
    #[serde(skip)]
    pub delta: Option<Arc<SnapshotDelta>>,
}

/// See [`Snapshot::delta`]. Lists a superset: a port listed may be unchanged.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapshotDelta {
    pub from_version: u64,
    pub ports: BTreeSet<ServicePortKey>,
}

/// The objects a Service was resolved from (held, so pointer identity stays meaningful)
/// and what was derived from them.
#[derive(Clone, Debug)]
pub(crate) struct Memo {
    pub(crate) def: Arc<ServiceDef>,
    pub(crate) inputs: Inputs,
    pub(crate) service: Arc<Service>,
    pub(crate) ports: Vec<(ServicePortKey, Arc<PortView>)>,
}

#[derive(Clone, Debug)]
pub(crate) enum Inputs {
    Slices(Vec<Arc<SliceDef>>),
    Endpoints(Arc<EndpointsDef>),
    Pods(Vec<Arc<PodDef>>),
    None,
}

impl Inputs {
    /// The same objects (by identity, not value: equal values in new Arcs are rebuilt, which
    /// is correct and cheap).
    pub(crate) fn same(&self, other: &Inputs) -> bool {
        fn all<T>(a: &[Arc<T>], b: &[Arc<T>]) -> bool {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| Arc::ptr_eq(x, y))
        }
        match (self, other) {
            (Inputs::Slices(a), Inputs::Slices(b)) => all(a, b),
            (Inputs::Endpoints(a), Inputs::Endpoints(b)) => Arc::ptr_eq(a, b),
            (Inputs::Pods(a), Inputs::Pods(b)) => all(a, b),
            (Inputs::None, Inputs::None) => true,
            _ => false,
        }
    }
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

// === resolution (driven incrementally by `resolver`) ===

/// Resolves a Service from its inputs: endpoints and one PortView per routable port.
pub(crate) fn resolve(def: Arc<ServiceDef>, inputs: Inputs) -> Memo {
    let (source, eps): (EndpointSource, Vec<Endpoint>) = match &inputs {
        Inputs::Slices(list) => (
            EndpointSource::EndpointSlices,
            list.iter()
                .flat_map(|s| s.endpoints.iter().cloned())
                .collect(),
        ),
        Inputs::Endpoints(e) => (EndpointSource::Endpoints, e.endpoints.clone()),
        Inputs::Pods(pods) => (EndpointSource::Pods, pod_endpoints(&def, pods)),
        Inputs::None => (EndpointSource::None, Vec::new()),
    };
    let service = Arc::new(Service {
        def: Arc::clone(&def),
        endpoint_source: source,
        endpoints: eps.into(),
    });
    let ports = port_views(&service);
    Memo {
        def,
        inputs,
        service,
        ports,
    }
}

/// A selector matches when every one of its labels is on the Pod.
pub(crate) fn selects(selector: &BTreeMap<String, String>, pod: &PodDef) -> bool {
    selector.iter().all(|(k, v)| pod.labels.get(k) == Some(v))
}

/// What one Service claims: address frontends and node ports, with the field that claims it.
pub(crate) fn claims(def: &ServiceDef) -> Vec<(Claim, ClaimField)> {
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
                out.push((Claim::Frontend(f), ClaimField::Addr(field, j, i)));
            }
        }
        if let Some(np) = p.node_port {
            out.push((Claim::NodePort(np, p.protocol), ClaimField::NodePort(i)));
        }
    }
    out
}

/// The field that makes a claim, formatted only for an error.
#[derive(Clone, Copy, Debug)]
pub(crate) enum ClaimField {
    Addr(&'static str, usize, usize),
    NodePort(usize),
}

impl std::fmt::Display for ClaimField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClaimField::Addr(field, j, i) => write!(f, "{field}[{j}] + spec.ports[{i}]"),
            ClaimField::NodePort(i) => write!(f, "spec.ports[{i}].nodePort"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Claim {
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

/// The endpoints controller's job: one endpoint per address of each Pod matching the
/// selector, with named target ports resolved from the Pod's container ports.
fn pod_endpoints(def: &ServiceDef, pods: &[Arc<PodDef>]) -> Vec<Endpoint> {
    let mut out = Vec::new();
    for pod in pods {
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

/// The routable ports of `svc` (none for headless and ExternalName Services).
fn port_views(svc: &Service) -> Vec<(ServicePortKey, Arc<PortView>)> {
    let def = &svc.def;
    if def.headless || def.type_ == ServiceType::ExternalName {
        return Vec::new();
    }
    let mut out = Vec::with_capacity(def.ports.len());
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
        out.push((key, Arc::new(view)));
    }
    out
}
