//! Snapshot diffs at (Service, port) granularity, for data planes that update incrementally.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::model::ServiceKey;
use crate::snapshot::{PortView, Service, ServicePortKey, Snapshot};

/// One change to a keyed table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change<K, V> {
    Added(K, V),
    Changed(K, V),
    Removed(K),
}

impl<K, V> Change<K, V> {
    pub fn key(&self) -> &K {
        match self {
            Change::Added(k, _) | Change::Changed(k, _) | Change::Removed(k) => k,
        }
    }
}

/// What turns one snapshot into another.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapshotDiff {
    pub from_version: u64,
    pub to_version: u64,
    /// Services added, changed (spec or endpoints) or removed, in key order.
    pub services: Vec<Change<ServiceKey, Arc<Service>>>,
    /// Routable Service ports added, changed or removed, in key order.
    pub ports: Vec<Change<ServicePortKey, Arc<PortView>>>,
}

impl SnapshotDiff {
    pub fn is_empty(&self) -> bool {
        self.services.is_empty() && self.ports.is_empty()
    }
}

/// The changes from `prev` to `next`.
pub fn diff(prev: &Snapshot, next: &Snapshot) -> SnapshotDiff {
    SnapshotDiff {
        from_version: prev.version,
        to_version: next.version,
        services: diff_maps(prev.services(), next.services()),
        ports: diff_maps(prev.ports(), next.ports()),
    }
}

/// Merge-walk of two sorted maps; `Arc::ptr_eq` short-circuits unchanged values.
fn diff_maps<K: Ord + Clone, V: PartialEq>(
    a: &BTreeMap<K, Arc<V>>,
    b: &BTreeMap<K, Arc<V>>,
) -> Vec<Change<K, Arc<V>>> {
    let mut out = Vec::new();
    let mut ia = a.iter().peekable();
    let mut ib = b.iter().peekable();
    loop {
        match (ia.peek(), ib.peek()) {
            (None, None) => break,
            (Some((ka, _)), None) => {
                out.push(Change::Removed((*ka).clone()));
                ia.next();
            }
            (None, Some((kb, vb))) => {
                out.push(Change::Added((*kb).clone(), Arc::clone(vb)));
                ib.next();
            }
            (Some((ka, va)), Some((kb, vb))) => match ka.cmp(kb) {
                std::cmp::Ordering::Less => {
                    out.push(Change::Removed((*ka).clone()));
                    ia.next();
                }
                std::cmp::Ordering::Greater => {
                    out.push(Change::Added((*kb).clone(), Arc::clone(vb)));
                    ib.next();
                }
                std::cmp::Ordering::Equal => {
                    if !Arc::ptr_eq(va, vb) && va != vb {
                        out.push(Change::Changed((*kb).clone(), Arc::clone(vb)));
                    }
                    ia.next();
                    ib.next();
                }
            },
        }
    }
    out
}

/// Applies changes to a table (what an incremental consumer does with its own copy).
pub fn apply<K: Ord + Clone, V>(table: &mut BTreeMap<K, V>, changes: &[Change<K, V>])
where
    V: Clone,
{
    for c in changes {
        match c {
            Change::Added(k, v) | Change::Changed(k, v) => {
                table.insert(k.clone(), v.clone());
            }
            Change::Removed(k) => {
                table.remove(k);
            }
        }
    }
}
