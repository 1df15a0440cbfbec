//! ClusterIP and nodePort allocation, the API server's job for manifests that state none.
//!
//! Rules users can rely on:
//! - addresses and ports written in any manifest are never handed out to another Service;
//! - `default/kubernetes` gets the first address of the range; others are handed out in
//!   order from the second, so a given set of manifests always gets the same values,
//!   whatever the file order (Services are allocated in key order on a cold load);
//! - an allocation stays with its Service while the Service exists (across reloads and, with
//!   a state file, across restarts) and is released when it goes away;
//! - a full range is an error for the Services that did not fit, not for the others.
//!
//! The state file is written atomically (write, fsync, rename, fsync the directory); a state
//! file that cannot be read or parsed is an error, never silently reset.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::model::{IpFamily, PortRange, Protocol, ServiceDef, ServiceKey, ServiceType};

/// An address range such as `10.96.0.0/12`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    pub fn family(&self) -> IpFamily {
        IpFamily::of(self.addr)
    }

    fn bits(&self) -> u32 {
        if self.addr.is_ipv4() { 32 } else { 128 }
    }

    fn base(&self) -> u128 {
        let host = self.bits() - u32::from(self.prefix);
        let v = ip_to_u128(self.addr);
        if host >= 128 { 0 } else { (v >> host) << host }
    }

    /// Number of addresses in the range.
    fn size(&self) -> u128 {
        let host = self.bits() - u32::from(self.prefix);
        if host >= 128 {
            u128::MAX
        } else {
            1u128 << host
        }
    }

    /// The `i`-th address of the range.
    fn nth(&self, i: u128) -> IpAddr {
        u128_to_ip(self.base() + i, self.addr.is_ipv4())
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.addr.is_ipv4()
            && ip_to_u128(ip).wrapping_sub(self.base()) < self.size()
    }
}

fn ip_to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v) => u128::from(u32::from(v)),
        IpAddr::V6(v) => u128::from(v),
    }
}

fn u128_to_ip(v: u128, v4: bool) -> IpAddr {
    if v4 {
        IpAddr::V4(Ipv4Addr::from(u32::try_from(v).unwrap_or(u32::MAX)))
    } else {
        IpAddr::V6(Ipv6Addr::from(v))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (ip, prefix) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not a CIDR: expected ADDRESS/PREFIX"))?;
        let addr: IpAddr = ip
            .parse()
            .map_err(|_| format!("{s:?}: {ip:?} is not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| *p <= max)
            .ok_or_else(|| format!("{s:?}: prefix must be 0-{max}"))?;
        // Room for the network address, the kubernetes Service and one more.
        if u32::from(max) - u32::from(prefix) < 2 {
            return Err(format!(
                "{s:?}: the range is too small (at least /{} )",
                max - 2
            ));
        }
        Ok(Cidr { addr, prefix })
    }
}

/// The default IPv4 Service range, as kubeadm sets it.
pub const DEFAULT_SERVICE_CIDR: &str = "10.96.0.0/12";
/// The IPv6 range used when a Service asks for IPv6 and no IPv6 range is configured.
pub const DEFAULT_SERVICE_CIDR_V6: &str = "fd00:10:96::/108";

/// What the allocator hands out from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllocOptions {
    pub service_cidrs: Vec<Cidr>,
    pub node_port_range: PortRange,
    /// Where allocations persist; `None` keeps them in memory (e.g. `svcplane check`).
    pub state_file: Option<PathBuf>,
}

impl Default for AllocOptions {
    fn default() -> Self {
        Self {
            service_cidrs: Vec::new(),
            node_port_range: PortRange::DEFAULT_NODE_PORTS,
            state_file: None,
        }
    }
}

impl AllocOptions {
    /// The configured range of a family, or its default.
    fn cidr(&self, f: IpFamily) -> Option<Cidr> {
        self.service_cidrs
            .iter()
            .find(|c| c.family() == f)
            .copied()
            .or_else(|| {
                let d = match f {
                    IpFamily::V4 => DEFAULT_SERVICE_CIDR,
                    IpFamily::V6 => DEFAULT_SERVICE_CIDR_V6,
                };
                d.parse().ok()
            })
    }
}

/// Failures of the state file.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(
        "allocation state file {path}: {reason}; fix or move it away (it is never reset silently)"
    )]
    Corrupt { path: PathBuf, reason: String },
    #[error("cannot write allocation state file {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// One Service's allocations.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    #[serde(rename = "clusterIPs", default, skip_serializing_if = "Vec::is_empty")]
    pub cluster_ips: Vec<IpAddr>,
    /// `"<port>/<PROTOCOL>"` -> nodePort.
    #[serde(
        rename = "nodePorts",
        default,
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub node_ports: BTreeMap<String, u16>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct StateFile {
    version: u32,
    /// `"namespace/name"` -> allocation.
    services: BTreeMap<String, Allocation>,
}

const STATE_VERSION: u32 = 1;

fn port_key(port: u16, proto: Protocol) -> String {
    format!("{port}/{proto}")
}

/// Allocations of every Service, and who uses each address and port.
#[derive(Debug, Default)]
pub(crate) struct Allocator {
    opts: AllocOptions,
    by_service: BTreeMap<ServiceKey, Allocation>,
    ip_owner: HashMap<IpAddr, ServiceKey>,
    port_owner: HashMap<u16, ServiceKey>,
    /// Addresses and nodePorts some manifest states (with how many manifests state them).
    pub(crate) explicit_ips: HashMap<IpAddr, usize>,
    pub(crate) explicit_ports: HashMap<u16, usize>,
    /// Where the next search for a free address / port starts (allocation is in order).
    ip_cursor: HashMap<IpFamily, u128>,
    port_cursor: u16,
    dirty: bool,
}

impl Allocator {
    /// Reads the state file, if any. A missing file is an empty state; an unreadable or
    /// unparsable one is an error.
    pub(crate) fn new(opts: AllocOptions) -> Result<Self, StateError> {
        let mut a = Allocator {
            opts,
            ..Allocator::default()
        };
        let Some(path) = a.opts.state_file.clone() else {
            return Ok(a);
        };
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(a),
            Err(e) => {
                return Err(StateError::Corrupt {
                    path,
                    reason: format!("cannot read it: {e}"),
                });
            }
        };
        let state: StateFile = serde_json::from_str(&text).map_err(|e| StateError::Corrupt {
            path: path.clone(),
            reason: format!("not a valid state file: {e}"),
        })?;
        if state.version != STATE_VERSION {
            return Err(StateError::Corrupt {
                path,
                reason: format!("unknown version {}", state.version),
            });
        }
        for (k, alloc) in state.services {
            let Some((ns, name)) = k.split_once('/') else {
                return Err(StateError::Corrupt {
                    path,
                    reason: format!("{k:?} is not namespace/name"),
                });
            };
            let key = ServiceKey::new(ns, name);
            for ip in &alloc.cluster_ips {
                a.ip_owner.insert(*ip, key.clone());
            }
            for p in alloc.node_ports.values() {
                a.port_owner.insert(*p, key.clone());
            }
            a.by_service.insert(key, alloc);
        }
        Ok(a)
    }

    /// `raw` with the addresses and nodePorts it lacks filled in, or the reason it cannot
    /// be (range exhausted). Reuses what `key` already holds.
    pub(crate) fn materialize(
        &mut self,
        raw: &ServiceDef,
    ) -> Result<Option<ServiceDef>, (String, String)> {
        let key = &raw.key;
        let held = self.by_service.get(key).cloned().unwrap_or_default();
        let mut next = Allocation::default();
        let mut def = raw.clone();
        let wants_ip = !raw.headless && raw.type_ != ServiceType::ExternalName;
        if wants_ip {
            for fam in &raw.ip_families {
                if raw.cluster_ips.iter().any(|ip| IpFamily::of(*ip) == *fam) {
                    continue;
                }
                let ip =
                    match held.cluster_ips.iter().find(|ip| {
                        IpFamily::of(**ip) == *fam && !self.explicit_ips.contains_key(ip)
                    }) {
                        Some(ip) => *ip,
                        None => self.free_ip(key, *fam).ok_or_else(|| {
                            let range = self
                                .opts
                                .cidr(*fam)
                                .map_or_else(|| format!("{fam:?}"), |c| c.to_string());
                            (
                                "spec.clusterIP".to_owned(),
                                format!("no free address left in the Service range {range}"),
                            )
                        })?,
                    };
                next.cluster_ips.push(ip);
                def.cluster_ips.push(ip);
            }
        }
        if matches!(raw.type_, ServiceType::NodePort | ServiceType::LoadBalancer) {
            for (i, p) in def.ports.iter_mut().enumerate() {
                if p.node_port.is_some() {
                    continue;
                }
                let pk = port_key(p.port, p.protocol);
                let held_port = held
                    .node_ports
                    .get(&pk)
                    .copied()
                    .filter(|np| !self.explicit_ports.contains_key(np));
                let np = match held_port {
                    Some(np) => np,
                    None => self.free_port(key, &next).ok_or_else(|| {
                        (
                            format!("spec.ports[{i}].nodePort"),
                            format!(
                                "no free port left in the node port range {}",
                                self.opts.node_port_range
                            ),
                        )
                    })?,
                };
                next.node_ports.insert(pk, np);
                p.node_port = Some(np);
            }
        }
        self.set(key, next);
        Ok((def != *raw).then_some(def))
    }

    /// Forgets what `key` holds (its Service is gone or failed).
    pub(crate) fn release(&mut self, key: &ServiceKey) {
        self.set(key, Allocation::default());
    }

    fn set(&mut self, key: &ServiceKey, next: Allocation) {
        let old = self.by_service.get(key).cloned().unwrap_or_default();
        if old == next {
            return;
        }
        for ip in &old.cluster_ips {
            if self.ip_owner.get(ip) == Some(key) {
                self.ip_owner.remove(ip);
            }
        }
        for p in old.node_ports.values() {
            if self.port_owner.get(p) == Some(key) {
                self.port_owner.remove(p);
            }
        }
        for ip in &next.cluster_ips {
            self.ip_owner.insert(*ip, key.clone());
        }
        for p in next.node_ports.values() {
            self.port_owner.insert(*p, key.clone());
        }
        if next == Allocation::default() {
            self.by_service.remove(key);
        } else {
            self.by_service.insert(key.clone(), next);
        }
        self.dirty = true;
    }

    fn free_ip(&mut self, key: &ServiceKey, fam: IpFamily) -> Option<IpAddr> {
        let cidr = self.opts.cidr(fam)?;
        let kubernetes = *key.namespace == *"default" && *key.name == *"kubernetes";
        let free = |ip: &IpAddr| {
            !self.explicit_ips.contains_key(ip) && self.ip_owner.get(ip).is_none_or(|o| o == key)
        };
        if kubernetes {
            let first = cidr.nth(1);
            if free(&first) {
                return Some(first);
            }
        }
        // Skip the network address and the first address (reserved for default/kubernetes);
        // start where the last search ended, then wrap around.
        let limit = cidr.size().saturating_sub(1).min(2 + (1 << 20));
        let start = self
            .ip_cursor
            .get(&fam)
            .copied()
            .unwrap_or(2)
            .clamp(2, limit);
        let found = (start..limit)
            .chain(2..start)
            .map(|i| (i, cidr.nth(i)))
            .find(|(_, ip)| free(ip));
        let (i, ip) = found?;
        self.ip_cursor.insert(fam, i + 1);
        Some(ip)
    }

    fn free_port(&mut self, key: &ServiceKey, taking: &Allocation) -> Option<u16> {
        let r = self.opts.node_port_range;
        let start = self.port_cursor.clamp(r.first, r.last);
        let found = (start..=r.last).chain(r.first..start).find(|p| {
            !self.explicit_ports.contains_key(p)
                && self.port_owner.get(p).is_none_or(|o| o == key)
                && !taking.node_ports.values().any(|t| t == p)
        });
        if let Some(p) = found {
            self.port_cursor = p.saturating_add(1);
        }
        found
    }

    /// The Service an allocated address is held by.
    pub(crate) fn ip_holder(&self, ip: &IpAddr) -> Option<&ServiceKey> {
        self.ip_owner.get(ip)
    }

    /// The Service an allocated nodePort is held by.
    pub(crate) fn port_holder(&self, port: u16) -> Option<&ServiceKey> {
        self.port_owner.get(&port)
    }

    /// Writes the state file if anything changed since the last write.
    pub(crate) fn persist(&mut self) -> Result<(), StateError> {
        let Some(path) = self.opts.state_file.clone() else {
            self.dirty = false;
            return Ok(());
        };
        if !self.dirty {
            return Ok(());
        }
        let state = StateFile {
            version: STATE_VERSION,
            services: self
                .by_service
                .iter()
                .map(|(k, a)| (k.to_string(), a.clone()))
                .collect(),
        };
        let text = serde_json::to_vec_pretty(&state).unwrap_or_default();
        write_atomically(&path, &text).map_err(|source| StateError::Write { path, source })?;
        self.dirty = false;
        Ok(())
    }
}

/// write + fsync + rename + fsync of the directory: a crash leaves the old or the new file.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let tmp = path.with_extension("tmp");
    {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    fs::File::open(dir)?.sync_all()
}

/// Shares an allocated definition while its raw definition is the same object.
pub(crate) type Materialized = (Arc<ServiceDef>, Arc<ServiceDef>);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_parse_and_enumerate() {
        let c: Cidr = "10.96.0.0/12".parse().unwrap();
        assert_eq!(c.nth(1), "10.96.0.1".parse::<IpAddr>().unwrap());
        assert!(c.contains("10.111.255.255".parse().unwrap()));
        assert!(!c.contains("10.112.0.0".parse().unwrap()));
        let c6: Cidr = "fd00:10:96::/108".parse().unwrap();
        assert_eq!(c6.nth(2), "fd00:10:96::2".parse::<IpAddr>().unwrap());
        assert!(
            "10.0.0.0/31"
                .parse::<Cidr>()
                .unwrap_err()
                .contains("too small")
        );
        assert!(
            "10.0.0.0"
                .parse::<Cidr>()
                .unwrap_err()
                .contains("ADDRESS/PREFIX")
        );
        assert!("10.0.0.0/40".parse::<Cidr>().is_err());
    }
}
