//! Snapshot → services-map content, and the ordered map operations that move the maps from
//! one content to the next without a lookup ever seeing a half-written frontend.
//!
//! The content is a [`FrontendSet`]: per frontend, its id (round-robin counter), affinity
//! timeout and endpoints in slot order. [`diff`] turns two contents into [`MapOp`]s;
//! [`Syncer`] keeps the content per Service port so that a snapshot costs work only for the
//! ports it changed, and applies the operations through the [`MapOps`] seam.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use svcplane_config::{
    Change, Frontend, IpFamily, PortView, Protocol, ServicePortKey, SessionAffinity, Snapshot,
    TrafficScope,
};

use crate::abi::{self, MAX_FRONTENDS, SvcKey, SvcValue};

/// Endpoints of one frontend, in slot order (slot 1 first).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FrontendState {
    /// Index of the frontend's round-robin counter.
    pub id: u32,
    /// ClientIP affinity timeout in seconds; 0: no affinity.
    pub affinity_timeout: u32,
    pub endpoints: Vec<SocketAddr>,
}

/// What the services map holds (or should hold).
pub type FrontendSet = BTreeMap<Frontend, FrontendState>;

/// One write to the services map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MapOp {
    /// Slot `slot` (≥ 1) of `frontend` := `backend`.
    PutEndpoint {
        frontend: Frontend,
        slot: u16,
        backend: SocketAddr,
    },
    /// Slot 0 of `frontend`: makes slots 1..=count visible.
    PutFrontend {
        frontend: Frontend,
        count: u16,
        id: u32,
        affinity_timeout: u32,
    },
    /// Removes slot `slot` (0: the frontend itself).
    Delete { frontend: Frontend, slot: u16 },
}

/// Where map operations go: the pinned BPF maps, or a fake in tests.
pub trait MapOps {
    type Error: std::error::Error + Send + Sync + 'static;

    fn apply(&mut self, op: &MapOp) -> Result<(), Self::Error>;
}

/// The most endpoints one frontend gets (slots are `u16`).
pub const MAX_SLOTS: usize = u16::MAX as usize;

// === diff ===

/// Operations that turn `prev` into `next`, frontend by frontend: deleted frontends first,
/// then changed and added ones. See [`diff_one`] for the order within a frontend.
pub fn diff(prev: &FrontendSet, next: &FrontendSet) -> Vec<MapOp> {
    let mut out = Vec::new();
    for (fe, state) in prev {
        if !next.contains_key(fe) {
            diff_one(*fe, Some(state), None, &mut out);
        }
    }
    for (fe, state) in next {
        diff_one(*fe, prev.get(fe), Some(state), &mut out);
    }
    out
}

/// Operations for one frontend, ordered so that at every step slots 1..=count of the
/// visible slot 0 exist:
/// - add: endpoint slots, then slot 0 (count last);
/// - grow: new and changed slots, then slot 0;
/// - shrink: changed slots below the new count, then slot 0, then the extra slots;
/// - delete: slot 0, then the slots.
///
/// Overwriting a visible slot in place is safe: a reader sees the old or the new endpoint.
pub fn diff_one(
    fe: Frontend,
    prev: Option<&FrontendState>,
    next: Option<&FrontendState>,
    out: &mut Vec<MapOp>,
) {
    let empty = FrontendState::default();
    let old = prev.map_or(&[][..], |p| {
        &p.endpoints[..p.endpoints.len().min(MAX_SLOTS)]
    });
    let new = next.map_or(&[][..], |n| {
        &n.endpoints[..n.endpoints.len().min(MAX_SLOTS)]
    });
    for (i, b) in new.iter().enumerate() {
        if old.get(i) != Some(b) || prev.is_none() {
            out.push(MapOp::PutEndpoint {
                frontend: fe,
                slot: slot(i + 1),
                backend: *b,
            });
        }
    }
    match next {
        Some(n) => {
            let p = prev.unwrap_or(&empty);
            if prev.is_none()
                || p.id != n.id
                || p.affinity_timeout != n.affinity_timeout
                || old.len() != new.len()
            {
                out.push(MapOp::PutFrontend {
                    frontend: fe,
                    count: slot(new.len()),
                    id: n.id,
                    affinity_timeout: n.affinity_timeout,
                });
            }
        }
        None if prev.is_some() => out.push(MapOp::Delete {
            frontend: fe,
            slot: 0,
        }),
        None => {}
    }
    for i in new.len()..old.len() {
        out.push(MapOp::Delete {
            frontend: fe,
            slot: slot(i + 1),
        });
    }
}

fn slot(n: usize) -> u16 {
    u16::try_from(n).unwrap_or(u16::MAX)
}

/// Slot order for `wanted` given the current order: an endpoint that stays keeps its slot
/// (so sticky UDP and affinity entries stay valid and few slots are rewritten); new
/// endpoints fill the holes, then the end; the tail moves into holes left below the new
/// count.
pub fn place(prev: &[SocketAddr], wanted: &[SocketAddr]) -> Vec<SocketAddr> {
    let n = wanted.len().min(MAX_SLOTS);
    let wanted = &wanted[..n];
    let want: BTreeSet<&SocketAddr> = wanted.iter().collect();
    let mut out: Vec<Option<SocketAddr>> = vec![None; n];
    let mut placed: BTreeSet<SocketAddr> = BTreeSet::new();
    for (i, b) in prev.iter().enumerate().take(n) {
        if want.contains(b) && placed.insert(*b) {
            out[i] = Some(*b);
        }
    }
    // Endpoints kept but beyond the new count first (they move), then new ones, in the
    // order the snapshot lists them.
    let mut rest = prev
        .iter()
        .skip(n)
        .chain(wanted)
        .filter(|b| want.contains(b))
        .copied()
        .filter(|b| placed.insert(*b));
    for s in &mut out {
        if s.is_none() {
            *s = rest.next();
        }
    }
    out.into_iter().flatten().collect()
}

// === adopting pinned content ===

/// Rebuilds the map content from raw entries: frontends with their slots 1..=count, and the
/// keys nothing makes visible (slots beyond a count, slots of a missing frontend, bad
/// addresses) that the first sync removes.
pub(crate) fn adopt(
    entries: impl IntoIterator<Item = (SvcKey, SvcValue)>,
) -> (FrontendSet, Vec<SvcKey>) {
    let mut fronts: BTreeMap<Frontend, SvcValue> = BTreeMap::new();
    let mut slots: HashMap<(Frontend, u16), SvcValue> = HashMap::new();
    let mut orphans = Vec::new();
    for (k, v) in entries {
        match frontend_of_key(&k) {
            Some(fe) if k.slot == 0 => {
                fronts.insert(fe, v);
            }
            Some(fe) => {
                slots.insert((fe, k.slot), v);
            }
            None => orphans.push(k),
        }
    }
    let mut set = FrontendSet::new();
    for (fe, v) in fronts {
        let mut endpoints = Vec::with_capacity(usize::from(v.count));
        for s in 1..=v.count {
            let ep = slots.remove(&(fe, s)).and_then(|e| {
                let ip = abi::words_addr(e.addr, abi::addr_words(fe.ip).1)?;
                Some(SocketAddr::new(ip, abi::host_port(e.port)))
            });
            match ep {
                Some(ep) => endpoints.push(ep),
                // A visible hole cannot be written by us; keep what precedes it and let
                // the first sync rewrite the frontend.
                None => break,
            }
        }
        set.insert(
            fe,
            FrontendState {
                id: v.fe_id,
                affinity_timeout: v.affinity_timeout,
                endpoints,
            },
        );
    }
    orphans.extend(slots.into_keys().map(|(fe, s)| key_of(fe, s)));
    (set, orphans)
}

pub(crate) fn key_of(fe: Frontend, slot: u16) -> SvcKey {
    let (addr, family) = abi::addr_words(fe.ip);
    SvcKey {
        fe: abi::SvcFrontend {
            addr,
            port: abi::net_port(fe.port),
            proto: match fe.protocol {
                Protocol::Udp => abi::IPPROTO_UDP,
                _ => abi::IPPROTO_TCP,
            },
            family,
        },
        slot,
        pad: 0,
    }
}

pub(crate) fn frontend_of_key(k: &SvcKey) -> Option<Frontend> {
    let protocol = match k.fe.proto {
        abi::IPPROTO_TCP => Protocol::Tcp,
        abi::IPPROTO_UDP => Protocol::Udp,
        _ => return None,
    };
    Some(Frontend {
        ip: abi::words_addr(k.fe.addr, k.fe.family)?,
        port: abi::host_port(k.fe.port),
        protocol,
    })
}

// === the syncer ===

/// Facts about the node that decide NodePort frontends and Local traffic policies.
#[derive(Clone, Debug, Default)]
pub struct NodeInfo {
    pub node_name: Option<String>,
    /// Addresses NodePorts are served on (127.0.0.1 included if wanted).
    pub node_ips: Vec<IpAddr>,
}

/// What one sync did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    pub ports_changed: usize,
    pub ops: usize,
    pub frontends: usize,
    /// Frontends two Service ports want; the first keeps it.
    pub conflicts: Vec<(Frontend, ServicePortKey)>,
}

/// Keeps the map content per Service port and applies snapshots as diffs.
#[derive(Debug)]
pub struct Syncer {
    node: NodeInfo,
    /// The snapshot the maps were last brought to; `None`: the next sync is a full one.
    prev: Option<Arc<Snapshot>>,
    /// Frontends each Service port owns.
    ports: HashMap<ServicePortKey, Vec<Frontend>>,
    owners: HashMap<Frontend, ServicePortKey>,
    /// What the maps hold.
    state: FrontendSet,
    ids: IdAlloc,
}

impl Syncer {
    /// A syncer for maps that hold `current` (empty, or adopted from pins). The first sync
    /// is a full reconcile: frontends that stay are updated in place, never removed.
    pub fn new(node: NodeInfo, current: FrontendSet) -> Self {
        let mut ids = IdAlloc::default();
        for s in current.values() {
            ids.mark_used(s.id);
        }
        Syncer {
            node,
            prev: None,
            ports: HashMap::new(),
            owners: HashMap::new(),
            state: current,
            ids,
        }
    }

    /// The content the maps hold after the last successful sync.
    pub fn state(&self) -> &FrontendSet {
        &self.state
    }

    /// Brings the maps to `snap`. On error the maps are between two states (each frontend
    /// consistent); the caller rebuilds the syncer from the maps' content.
    pub fn sync<M: MapOps>(
        &mut self,
        snap: &Arc<Snapshot>,
        maps: &mut M,
    ) -> Result<SyncReport, M::Error> {
        let mut report = SyncReport::default();
        let changes: Vec<Change<ServicePortKey, Arc<PortView>>> = match &self.prev {
            Some(prev) => svcplane_config::diff(prev, snap).ports,
            None => snap
                .ports()
                .iter()
                .map(|(k, v)| Change::Added(k.clone(), Arc::clone(v)))
                .collect(),
        };
        let full = self.prev.is_none();
        report.ports_changed = changes.len();
        let mut ops = Vec::new();
        // Removals first, so a frontend moving between ports is free when claimed.
        let mut wanted: Vec<(ServicePortKey, Vec<(Frontend, FrontendState)>)> = Vec::new();
        for c in &changes {
            let (key, want) = match c {
                Change::Removed(k) => (k, Vec::new()),
                Change::Added(k, v) | Change::Changed(k, v) => (k, self.wanted(v)),
            };
            let keep: BTreeSet<Frontend> = want.iter().map(|(f, _)| *f).collect();
            for fe in self.ports.remove(key).unwrap_or_default() {
                if keep.contains(&fe) {
                    continue;
                }
                self.release(fe, &mut ops);
            }
            wanted.push((key.clone(), want));
        }
        self.apply(&mut ops, maps, &mut report)?;
        if full {
            let leftovers: Vec<Frontend> = self
                .state
                .keys()
                .filter(|fe| !self.owners.contains_key(fe))
                .copied()
                .filter(|fe| !wanted.iter().any(|(_, w)| w.iter().any(|(f, _)| f == fe)))
                .collect();
            for fe in leftovers {
                self.release(fe, &mut ops);
            }
            self.apply(&mut ops, maps, &mut report)?;
        }
        for (key, want) in wanted {
            let mut owned = Vec::with_capacity(want.len());
            for (fe, mut next) in want {
                match self.owners.get(&fe) {
                    Some(owner) if *owner != key => {
                        report.conflicts.push((fe, key.clone()));
                        continue;
                    }
                    _ => {}
                }
                let prev = self.state.get(&fe);
                next.id = match prev {
                    Some(p) => p.id,
                    None => self.ids.alloc(),
                };
                next.endpoints = place(prev.map_or(&[][..], |p| &p.endpoints[..]), &next.endpoints);
                diff_one(fe, prev, Some(&next), &mut ops);
                self.owners.insert(fe, key.clone());
                self.state.insert(fe, next);
                owned.push(fe);
            }
            if !owned.is_empty() {
                self.ports.insert(key, owned);
            }
            self.apply(&mut ops, maps, &mut report)?;
        }
        self.prev = Some(Arc::clone(snap));
        report.frontends = self.state.len();
        Ok(report)
    }

    /// Deletes a frontend from the maps and the bookkeeping.
    fn release(&mut self, fe: Frontend, ops: &mut Vec<MapOp>) {
        self.owners.remove(&fe);
        if let Some(prev) = self.state.remove(&fe) {
            diff_one(fe, Some(&prev), None, ops);
            self.ids.free(prev.id);
        }
    }

    fn apply<M: MapOps>(
        &mut self,
        ops: &mut Vec<MapOp>,
        maps: &mut M,
        report: &mut SyncReport,
    ) -> Result<(), M::Error> {
        for op in ops.drain(..) {
            if let Err(e) = maps.apply(&op) {
                self.prev = None;
                return Err(e);
            }
            report.ops += 1;
        }
        Ok(())
    }

    /// The frontends of one Service port with their endpoints, as the userspace proxy's
    /// table lists them (`proxy/src/table.rs`): ClusterIPs (internal policy), externalIPs
    /// and LoadBalancer IPs (external), and every node address of a family the Service has
    /// × nodePort (external). Endpoint selection is `PortView::routable_endpoints`.
    fn wanted(&self, view: &PortView) -> Vec<(Frontend, FrontendState)> {
        let protocol = view.key.protocol;
        if protocol == Protocol::Sctp {
            return Vec::new();
        }
        let affinity_timeout = match view.session_affinity {
            SessionAffinity::None => 0,
            SessionAffinity::ClientIP { timeout_seconds } => timeout_seconds.max(1),
        };
        let mut addrs: Vec<(IpAddr, u16, TrafficScope)> = view
            .frontends()
            .map(|(f, scope)| (f.ip, f.port, scope))
            .collect();
        if let Some(np) = view.node_port {
            let families: BTreeSet<IpFamily> = view
                .cluster_ips
                .iter()
                .map(|&ip| IpFamily::of(ip))
                .collect();
            for &ip in &self.node.node_ips {
                if families.contains(&IpFamily::of(ip)) {
                    addrs.push((ip, np, TrafficScope::External));
                }
            }
        }
        let mut routes: HashMap<(bool, IpFamily), Vec<SocketAddr>> = HashMap::new();
        let mut out: Vec<(Frontend, FrontendState)> = Vec::with_capacity(addrs.len());
        for (ip, port, scope) in addrs {
            let family = IpFamily::of(ip);
            let endpoints = routes
                .entry((scope == TrafficScope::Internal, family))
                .or_insert_with(|| {
                    view.routable_endpoints(self.node.node_name.as_deref(), scope, family)
                        .into_iter()
                        .map(|e| e.backend.0)
                        .collect()
                })
                .clone();
            let fe = Frontend { ip, port, protocol };
            if out.iter().any(|(f, _)| *f == fe) {
                continue;
            }
            out.push((
                fe,
                FrontendState {
                    id: 0,
                    affinity_timeout,
                    endpoints,
                },
            ));
        }
        out
    }
}

/// Frontend ids: the lowest free one, so the round-robin array stays dense.
#[derive(Debug, Default)]
struct IdAlloc {
    next: u32,
    free: BTreeSet<u32>,
    used: BTreeSet<u32>,
}

impl IdAlloc {
    fn mark_used(&mut self, id: u32) {
        self.used.insert(id);
        self.free.remove(&id);
        while self.next <= id && self.next < MAX_FRONTENDS {
            if !self.used.contains(&self.next) {
                self.free.insert(self.next);
            }
            self.next += 1;
        }
    }

    /// Past `MAX_FRONTENDS` ids stop being unique: such frontends share counter
    /// `MAX_FRONTENDS` (out of the array: their round robin always picks slot 1).
    fn alloc(&mut self) -> u32 {
        let id = match self.free.pop_first() {
            Some(id) => id,
            None if self.next < MAX_FRONTENDS => {
                self.next += 1;
                self.next - 1
            }
            None => return MAX_FRONTENDS,
        };
        self.used.insert(id);
        id
    }

    fn free(&mut self, id: u32) {
        if self.used.remove(&id) {
            self.free.insert(id);
        }
    }
}
