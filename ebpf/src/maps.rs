//! The pinned services map behind [`MapOps`], and the connection counters beside it.

use std::collections::HashMap as StdHashMap;
use std::net::SocketAddr;
use std::path::Path;

use aya::Pod;
use aya::maps::{HashMap, MapData, MapError, PerCpuArray};
use svcplane_config::Frontend;

use crate::abi::{self, SvcBackend, SvcConns, SvcKey, SvcValue};
use crate::sync::{self, FrontendSet, MapOp, MapOps};

/// The services and counter maps of a loaded or adopted data plane.
#[derive(Debug)]
pub struct BpfMaps {
    services: HashMap<MapData, SvcKey, SvcValue>,
    conns: HashMap<MapData, SvcKey, SvcConns>,
}

impl BpfMaps {
    pub(crate) fn new(
        services: HashMap<MapData, SvcKey, SvcValue>,
        conns: HashMap<MapData, SvcKey, SvcConns>,
    ) -> Self {
        BpfMaps { services, conns }
    }

    /// The map's content, and removal of the keys nothing makes visible.
    pub(crate) fn adopt(&mut self) -> Result<FrontendSet, MapError> {
        let mut entries = Vec::new();
        for kv in self.services.iter() {
            entries.push(kv?);
        }
        let (set, orphans) = sync::adopt(entries);
        for k in orphans {
            remove(&mut self.services, &k)?;
        }
        Ok(set)
    }

    /// Removes the counters of slots that `set` (the adopted content) does not give their
    /// counter's endpoint: left by a daemon that stopped between a sync and its deletes.
    pub(crate) fn prune_counters(&mut self, set: &FrontendSet) -> Result<usize, MapError> {
        let mut stale = Vec::new();
        for kv in self.conns.iter() {
            let (k, v) = kv?;
            let held = counted(&k, &v).is_some_and(|(fe, slot, ep)| {
                set.get(&fe)
                    .and_then(|s| s.endpoints.get(usize::from(slot) - 1))
                    == Some(&ep)
            });
            if !held {
                stale.push(k);
            }
        }
        for k in &stale {
            remove(&mut self.conns, k)?;
        }
        Ok(stale.len())
    }
}

/// Connection counts of the eBPF data plane, per frontend and endpoint slot.
#[derive(Clone, Debug, Default)]
pub struct Connections(StdHashMap<(Frontend, u16), (SocketAddr, u64)>);

impl Connections {
    /// New connections (TCP and UDP `connect`, first datagrams of unconnected UDP sockets)
    /// the programs sent to `endpoint` while it held slot `slot` (from 1) of `fe`.
    pub fn get(&self, fe: Frontend, slot: u16, endpoint: SocketAddr) -> u64 {
        match self.0.get(&(fe, slot)) {
            Some((ep, n)) if *ep == endpoint => *n,
            _ => 0,
        }
    }

    /// Counters read (slots that took a connection and still hold their endpoint's count).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The pinned counters under `pin_root` (the daemon's, or another process's for status).
pub fn read_connections(pin_root: &Path) -> Result<Connections, MapError> {
    let data = MapData::from_pin(pin_root.join("v1_conns"))?;
    let map: HashMap<MapData, SvcKey, SvcConns> = HashMap::try_from(aya::maps::Map::HashMap(data))?;
    let mut out = StdHashMap::new();
    for kv in map.iter() {
        let (k, v) = kv?;
        if let Some((fe, slot, ep)) = counted(&k, &v) {
            out.insert((fe, slot), (ep, v.connections));
        }
    }
    Ok(Connections(out))
}

/// Connects and datagrams the programs under `pin_root` refused because their frontend had
/// no endpoint (summed over CPUs).
pub fn read_refused(pin_root: &Path) -> Result<u64, MapError> {
    let data = MapData::from_pin(pin_root.join("v1_refused"))?;
    let map: PerCpuArray<MapData, u64> = PerCpuArray::try_from(aya::maps::Map::PerCpuArray(data))?;
    Ok(map.get(&0, 0)?.iter().sum())
}

/// A counter's frontend, slot (≥ 1) and endpoint; `None` for a key no daemon writes.
fn counted(k: &SvcKey, v: &SvcConns) -> Option<(Frontend, u16, SocketAddr)> {
    let fe = sync::frontend_of_key(k)?;
    if k.slot == 0 || v.backend.slot != k.slot {
        return None;
    }
    Some((fe, k.slot, backend_addr(&v.backend, k.fe.family)?))
}

fn backend_addr(b: &SvcBackend, family: u8) -> Option<SocketAddr> {
    let ip = abi::words_addr(b.addr, family)?;
    Some(SocketAddr::new(ip, abi::host_port(b.port)))
}

/// What the pinned services map under `pin_root` routes, read without changing anything
/// (for `svcplane status`; also from another process while the daemon runs or is down).
pub fn read_frontends(pin_root: &Path) -> Result<FrontendSet, MapError> {
    let data = MapData::from_pin(pin_root.join("v1_services"))?;
    let map: HashMap<MapData, SvcKey, SvcValue> = HashMap::try_from(aya::maps::Map::HashMap(data))?;
    let mut entries = Vec::new();
    for kv in map.iter() {
        entries.push(kv?);
    }
    Ok(sync::adopt(entries).0)
}

fn remove<V: Pod>(map: &mut HashMap<MapData, SvcKey, V>, k: &SvcKey) -> Result<(), MapError> {
    match map.remove(k) {
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        Err(MapError::KeyNotFound) => Ok(()),
        r => r,
    }
}

// === impl BpfMaps ===

impl MapOps for BpfMaps {
    type Error = MapError;

    fn apply(&mut self, op: &MapOp) -> Result<(), MapError> {
        match *op {
            MapOp::PutEndpoint {
                frontend,
                slot,
                backend,
            } => self.services.insert(
                sync::key_of(frontend, slot),
                abi::endpoint_value(backend),
                0,
            ),
            MapOp::PutFrontend {
                frontend,
                count,
                id,
                affinity_timeout,
            } => self.services.insert(
                sync::key_of(frontend, 0),
                SvcValue {
                    count,
                    fe_id: id,
                    affinity_timeout,
                    ..SvcValue::default()
                },
                0,
            ),
            MapOp::Delete { frontend, slot } => {
                let key = sync::key_of(frontend, slot);
                remove(&mut self.services, &key)?;
                if slot == 0 {
                    return Ok(());
                }
                remove(&mut self.conns, &key)
            }
        }
    }
}
