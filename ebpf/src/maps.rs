//! The pinned services map behind [`MapOps`].

use std::path::Path;

use aya::maps::{HashMap, MapData, MapError};

use crate::abi::{self, SvcKey, SvcValue};
use crate::sync::{self, FrontendSet, MapOp, MapOps};

/// The services map of a loaded or adopted data plane.
#[derive(Debug)]
pub struct BpfMaps {
    services: HashMap<MapData, SvcKey, SvcValue>,
}

impl BpfMaps {
    pub(crate) fn new(services: HashMap<MapData, SvcKey, SvcValue>) -> Self {
        BpfMaps { services }
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

fn remove(map: &mut HashMap<MapData, SvcKey, SvcValue>, k: &SvcKey) -> Result<(), MapError> {
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
                remove(&mut self.services, &sync::key_of(frontend, slot))
            }
        }
    }
}
