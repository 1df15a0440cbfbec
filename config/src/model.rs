//! The typed model every consumer reads: keys, addresses, services, ports, endpoints.
//!
//! Values here are parsed once, at the manifest boundary (`parse`), and never re-parsed
//! downstream. Strings that repeat across many objects (namespaces, node names) are `Arc<str>`
//! so snapshot rebuilds clone pointers, not bytes.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use serde::Serialize;

// === names ===

/// A Service's identity: namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ServiceKey {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
}

impl ServiceKey {
    pub fn new(namespace: impl Into<Arc<str>>, name: impl Into<Arc<str>>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Transport protocol of a port, as Kubernetes spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Protocol {
    type Err = String;

    /// Kubernetes protocol names are case-sensitive: `TCP`, `UDP`, `SCTP`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "TCP" => Ok(Protocol::Tcp),
            "UDP" => Ok(Protocol::Udp),
            "SCTP" => Ok(Protocol::Sctp),
            other => Err(format!(
                "unsupported protocol {other:?}: must be one of TCP, UDP, SCTP"
            )),
        }
    }
}

/// An address a client sends to: (ip, port, protocol). ClusterIPs, externalIPs and
/// LoadBalancer ingress IPs are frontends; NodePorts become frontends once the data plane
/// knows the node's addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Frontend {
    pub ip: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
}

impl fmt::Display for Frontend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}",
            SocketAddr::new(self.ip, self.port),
            self.protocol
        )
    }
}

/// An endpoint address traffic is sent to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Backend(pub SocketAddr);

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// An inclusive port range, e.g. the NodePort range `30000-32767`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub const DEFAULT_NODE_PORTS: PortRange = PortRange {
        first: 30000,
        last: 32767,
    };

    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }
}

impl Default for PortRange {
    fn default() -> Self {
        Self::DEFAULT_NODE_PORTS
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

impl FromStr for PortRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (lo, hi) = s
            .split_once('-')
            .ok_or_else(|| format!("port range {s:?} must look like LO-HI, e.g. 30000-32767"))?;
        let parse = |v: &str| -> Result<u16, String> {
            match v.trim().parse::<u16>() {
                Ok(p) if p > 0 => Ok(p),
                _ => Err(format!("port range {s:?}: {v:?} is not a port in 1-65535")),
            }
        };
        let (first, last) = (parse(lo)?, parse(hi)?);
        if first > last {
            return Err(format!("port range {s:?}: {first} is above {last}"));
        }
        Ok(PortRange { first, last })
    }
}

// === services ===

/// Address family. A frontend only routes to endpoints of its family; a Service asks for
/// ClusterIPs of its families.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
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

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum ServiceType {
    ClusterIP,
    NodePort,
    LoadBalancer,
    ExternalName,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize)]
pub enum TrafficPolicy {
    #[default]
    Cluster,
    Local,
}

/// Session affinity of a Service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize)]
#[serde(tag = "type")]
pub enum SessionAffinity {
    #[default]
    None,
    ClientIP {
        timeout_seconds: u32,
    },
}

impl SessionAffinity {
    /// Kubernetes' default `sessionAffinityConfig.clientIP.timeoutSeconds` (3 hours).
    pub const DEFAULT_TIMEOUT_SECONDS: u32 = 10800;
}

/// Where a Service port sends traffic on an endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum TargetPort {
    Number(u16),
    /// A container port name, resolved per endpoint.
    Name(Arc<str>),
}

impl fmt::Display for TargetPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetPort::Number(n) => n.fmt(f),
            TargetPort::Name(n) => n.fmt(f),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ServicePort {
    /// `None` for an unnamed port (only allowed when the Service has one port).
    pub name: Option<Arc<str>>,
    pub protocol: Protocol,
    pub port: u16,
    pub target_port: TargetPort,
    pub node_port: Option<u16>,
    pub app_protocol: Option<Arc<str>>,
}

/// Where an object was defined: file, document index (0-based, counting every `---`
/// document including empty ones) and line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Origin {
    pub file: Arc<Path>,
    pub document: usize,
    pub line: usize,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{} (document {})",
            self.file.display(),
            self.line,
            self.document
        )
    }
}

/// A validated Service, exactly as its manifest says (endpoints are resolved later).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ServiceDef {
    pub key: ServiceKey,
    #[serde(rename = "type")]
    pub type_: ServiceType,
    /// Empty for headless and ExternalName Services; filled by allocation for Services whose
    /// manifest states none.
    pub cluster_ips: Vec<IpAddr>,
    /// The families the Service wants ClusterIPs of, in order (`spec.ipFamilies` with
    /// `spec.ipFamilyPolicy`; the families of explicit `clusterIPs`; else IPv4).
    pub ip_families: Vec<IpFamily>,
    pub headless: bool,
    pub external_name: Option<Arc<str>>,
    pub external_ips: Vec<IpAddr>,
    pub load_balancer_ips: Vec<IpAddr>,
    pub ports: Vec<ServicePort>,
    /// `None` when the Service has no selector (its endpoints are managed by hand).
    pub selector: Option<BTreeMap<String, String>>,
    pub session_affinity: SessionAffinity,
    pub external_traffic_policy: TrafficPolicy,
    pub internal_traffic_policy: TrafficPolicy,
    pub publish_not_ready_addresses: bool,
    pub origin: Origin,
}

impl ServiceDef {
    /// Equal ignoring where the object came from (a move to another file is no change).
    pub fn same_spec(&self, other: &ServiceDef) -> bool {
        let strip = |d: &ServiceDef| ServiceDef {
            origin: Origin {
                file: Arc::from(Path::new("")),
                document: 0,
                line: 0,
            },
            ..d.clone()
        };
        strip(self) == strip(other)
    }
}

// === endpoints ===

/// Endpoint conditions as EndpointSlices define them. A missing `ready` means ready;
/// a missing `serving` means the value of `ready`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Conditions {
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
}

impl Conditions {
    pub const READY: Conditions = Conditions {
        ready: true,
        serving: true,
        terminating: false,
    };
    pub const NOT_READY: Conditions = Conditions {
        ready: false,
        serving: false,
        terminating: false,
    };
}

/// What an endpoint points at (usually a Pod).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct TargetRef {
    pub kind: Option<Arc<str>>,
    pub namespace: Option<Arc<str>>,
    pub name: Option<Arc<str>>,
}

/// One port an endpoint serves, matched to a Service port by (name, protocol).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct EndpointPort {
    pub name: Option<Arc<str>>,
    pub port: u16,
    pub protocol: Protocol,
}

/// One endpoint of a Service with the ports it serves.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Endpoint {
    pub ip: IpAddr,
    pub hostname: Option<Arc<str>>,
    pub node_name: Option<Arc<str>>,
    pub zone: Option<Arc<str>>,
    pub conditions: Conditions,
    pub target_ref: Option<TargetRef>,
    pub ports: Arc<[EndpointPort]>,
}

impl Endpoint {
    /// The port this endpoint serves for a Service port named `name` with `protocol`.
    pub fn port_for(&self, name: Option<&str>, protocol: Protocol) -> Option<u16> {
        self.ports
            .iter()
            .find(|p| p.protocol == protocol && p.name.as_deref() == name)
            .map(|p| p.port)
    }
}

/// Which kind of object a Service's endpoints came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum EndpointSource {
    EndpointSlices,
    Endpoints,
    Pods,
    /// No slices, no Endpoints object, and no selector (or no matching Pod).
    None,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_names_are_case_sensitive() {
        assert_eq!("TCP".parse::<Protocol>(), Ok(Protocol::Tcp));
        assert_eq!("SCTP".parse::<Protocol>(), Ok(Protocol::Sctp));
        let err = "tcp".parse::<Protocol>().unwrap_err();
        assert!(err.contains("TCP, UDP, SCTP"), "{err}");
    }

    #[test]
    fn port_range_parses_and_rejects() {
        assert_eq!(
            "30000-32767".parse::<PortRange>(),
            Ok(PortRange::DEFAULT_NODE_PORTS)
        );
        assert!("5-1".parse::<PortRange>().unwrap_err().contains("above"));
        assert!("0-10".parse::<PortRange>().is_err());
        assert!("100".parse::<PortRange>().unwrap_err().contains("LO-HI"));
    }
}
