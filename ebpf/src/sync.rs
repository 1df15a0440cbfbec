//! Snapshot → services-map content, and the ordered map operations that move the maps from
//! one content to the next without a lookup ever seeing a half-written frontend.
//!
//! The content is a [`FrontendSet`]: per frontend, its id (round-robin counter), affinity
//! timeout and endpoints in slot order. [`diff`] turns two contents into [`MapOp`]s;
//! [`Syncer`] keeps the content per Service port so that a snapshot costs work only for the
//! ports it changed, and applies the operations through the [`MapOps`] seam.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use svcplane_config::{
    Change, Frontend, IpFamily, PortView, Protocol, ServiceKey, ServicePortKey, SessionAffinity,
    Snapshot, TrafficScope,
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
    /// The daemon's health self-test: (frontend, endpoint), a TCP frontend kept in the maps
    /// whatever the snapshots say; it takes its address from a Service port that wants it.
    pub probe: Option<(SocketAddr, SocketAddr)>,
}

/// The owner the self-test frontend is recorded under (no Kubernetes name has parentheses).
fn probe_owner(port: u16) -> ServicePortKey {
    ServicePortKey {
        service: ServiceKey::new("svcplane", "(self-test)"),
        port,
        protocol: Protocol::Tcp,
    }
}

/// What one sync did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    pub ports_changed: usize,
    pub ops: usize,
    pub frontends: usize,
    /// Frontends two Service ports want; the first keeps it.
    pub conflicts: Vec<(Frontend, ServicePortKey)>,
    /// Endpoints that left a UDP frontend (connected UDP sockets may still point there).
    pub removed_udp: Vec<SocketAddr>,
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
    /// Endpoints removed from UDP frontends during the current sync.
    removed_udp: Vec<SocketAddr>,
    /// Frontends a port wanted while another port held them: it gets them when they are
    /// released.
    blocked: HashMap<Frontend, ServicePortKey>,
    /// Frontends released during the current sync while another port waits for them.
    released: Vec<Frontend>,
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
            removed_udp: Vec::new(),
            blocked: HashMap::new(),
            released: Vec::new(),
        }
    }

    /// Every frontend with its owner (a Service port, or the self-test) and endpoints.
    pub fn listing(&self) -> Vec<(Frontend, ServicePortKey, Vec<SocketAddr>)> {
        self.state
            .iter()
            .filter_map(|(fe, st)| {
                let owner = self.owners.get(fe)?;
                Some((*fe, owner.clone(), st.endpoints.clone()))
            })
            .collect()
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
        self.removed_udp.clear();
        self.released.clear();
        let changes: Vec<Change<ServicePortKey, Arc<PortView>>> = match &self.prev {
            // The loader says which ports changed since the snapshot before: the cost
            // follows the change, not the number of Services.
            Some(prev) => match &snap.delta {
                Some(d) if d.from_version == prev.version => delta_ports(prev, snap, &d.ports),
                _ => changed_ports(prev.ports(), snap.ports()),
            },
            None => snap
                .ports()
                .iter()
                .map(|(k, v)| Change::Added(k.clone(), Arc::clone(v)))
                .collect(),
        };
        let full = self.prev.is_none();
        report.ports_changed = changes.len();
        let mut ops = Vec::new();
        self.claim_probe(&mut ops, &mut report);
        self.apply(&mut ops, maps, &mut report)?;
        // Removals first, so a frontend moving between ports is free when claimed.
        let wanted = self.release_unwanted(&changes, &mut ops);
        self.apply(&mut ops, maps, &mut report)?;
        if full {
            self.release_leftovers(&wanted, &mut ops);
            self.apply(&mut ops, maps, &mut report)?;
        }
        for (key, want) in wanted {
            self.claim(key, want, &mut ops, &mut report);
            self.apply(&mut ops, maps, &mut report)?;
        }
        // Frontends released while another port waited for them pass to that port in
        // place (never invisible); those nobody takes are deleted.
        let handover = std::mem::take(&mut self.released);
        let waiting: BTreeSet<ServicePortKey> = handover
            .iter()
            .filter(|fe| !self.owners.contains_key(fe))
            .filter_map(|fe| self.blocked.remove(fe))
            .collect();
        for key in waiting {
            if let Some(view) = snap.port(&key) {
                let want = self.wanted(view);
                self.claim(key, want, &mut ops, &mut report);
            }
        }
        for fe in handover {
            if !self.owners.contains_key(&fe) {
                self.delete(fe, &mut ops);
            }
        }
        self.apply(&mut ops, maps, &mut report)?;
        self.prev = Some(Arc::clone(snap));
        report.frontends = self.state.len();
        let mut removed = std::mem::take(&mut self.removed_udp);
        removed.sort();
        removed.dedup();
        report.removed_udp = removed;
        Ok(report)
    }

    /// The frontends each changed port wants; deletes those its ports no longer want.
    fn release_unwanted(
        &mut self,
        changes: &[Change<ServicePortKey, Arc<PortView>>],
        ops: &mut Vec<MapOp>,
    ) -> Vec<(ServicePortKey, Vec<(Frontend, FrontendState)>)> {
        let mut wanted = Vec::with_capacity(changes.len());
        for c in changes {
            let (key, want) = match c {
                Change::Removed(k) => (k, Vec::new()),
                Change::Added(k, v) | Change::Changed(k, v) => (k, self.wanted(v)),
            };
            let keep: BTreeSet<Frontend> = want.iter().map(|(f, _)| *f).collect();
            for fe in self.ports.remove(key).unwrap_or_default() {
                if !keep.contains(&fe) {
                    self.release(fe, ops);
                }
            }
            wanted.push((key.clone(), want));
        }
        wanted
    }

    /// On a full sync: deletes adopted frontends no port wants.
    fn release_leftovers(
        &mut self,
        wanted: &[(ServicePortKey, Vec<(Frontend, FrontendState)>)],
        ops: &mut Vec<MapOp>,
    ) {
        let claimed: HashSet<Frontend> = wanted
            .iter()
            .flat_map(|(_, w)| w.iter().map(|(f, _)| *f))
            .collect();
        let leftovers: Vec<Frontend> = self
            .state
            .keys()
            .filter(|fe| !self.owners.contains_key(fe) && !claimed.contains(fe))
            .copied()
            .collect();
        for fe in leftovers {
            self.release(fe, ops);
        }
    }

    /// Writes (or rewrites) the frontends a port wants, except those another port owns.
    fn claim(
        &mut self,
        key: ServicePortKey,
        want: Vec<(Frontend, FrontendState)>,
        ops: &mut Vec<MapOp>,
        report: &mut SyncReport,
    ) {
        let mut owned = Vec::with_capacity(want.len());
        for (fe, mut next) in want {
            if self.owners.get(&fe).is_some_and(|owner| *owner != key) {
                report.conflicts.push((fe, key.clone()));
                self.blocked.insert(fe, key.clone());
                continue;
            }
            let prev = self.state.get(&fe);
            next.id = match prev {
                Some(p) => p.id,
                None => self.ids.alloc(),
            };
            next.endpoints = place(prev.map_or(&[][..], |p| &p.endpoints[..]), &next.endpoints);
            if let Some(p) = prev
                && fe.protocol == Protocol::Udp
            {
                let now: HashSet<&SocketAddr> = next.endpoints.iter().collect();
                self.removed_udp
                    .extend(p.endpoints.iter().filter(|e| !now.contains(e)).copied());
            }
            diff_one(fe, prev, Some(&next), ops);
            self.owners.insert(fe, key.clone());
            self.state.insert(fe, next);
            owned.push(fe);
        }
        if !owned.is_empty() {
            self.ports.insert(key, owned);
        }
    }

    /// Drops a port's ownership of a frontend and deletes it, unless another port waits
    /// for it: then it stays visible until that port takes it (end of the sync).
    fn release(&mut self, fe: Frontend, ops: &mut Vec<MapOp>) {
        self.owners.remove(&fe);
        if self.blocked.contains_key(&fe) {
            self.released.push(fe);
        } else {
            self.delete(fe, ops);
        }
    }

    /// Writes the self-test frontend unless it is already there, owned by the self-test.
    fn claim_probe(&mut self, ops: &mut Vec<MapOp>, report: &mut SyncReport) {
        let Some((front, back)) = self.node.probe else {
            return;
        };
        let fe = Frontend {
            ip: front.ip(),
            port: front.port(),
            protocol: Protocol::Tcp,
        };
        let owner = probe_owner(front.port());
        if self.owners.get(&fe) == Some(&owner) {
            return;
        }
        if let Some(other) = self.owners.get(&fe).cloned() {
            if let Some(fes) = self.ports.get_mut(&other) {
                fes.retain(|f| *f != fe);
            }
            report.conflicts.push((fe, other));
        }
        let id = match self.state.get(&fe) {
            Some(p) => p.id,
            None => self.ids.alloc(),
        };
        let next = FrontendState {
            id,
            affinity_timeout: 0,
            endpoints: vec![back],
        };
        diff_one(fe, self.state.get(&fe), Some(&next), ops);
        self.owners.insert(fe, owner);
        self.state.insert(fe, next);
    }

    /// Deletes a frontend from the maps and the bookkeeping.
    fn delete(&mut self, fe: Frontend, ops: &mut Vec<MapOp>) {
        if let Some(prev) = self.state.remove(&fe) {
            diff_one(fe, Some(&prev), None, ops);
            self.ids.free(prev.id);
            if fe.protocol == Protocol::Udp {
                self.removed_udp.extend(prev.endpoints);
            }
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

/// The Service ports that differ between two snapshots. A merge walk like
/// `svcplane_config::diff`, but a shared `Arc<PortView>` (the common case: the config crate
/// reuses what a reload did not touch) is skipped without comparing keys, since the view
/// holds its key; so a change costs a pointer comparison per port plus the changed ones.
/// The changes of `ports` (a superset of what changed) from `prev` to `next`.
fn delta_ports(
    prev: &Snapshot,
    next: &Snapshot,
    ports: &BTreeSet<ServicePortKey>,
) -> Vec<Change<ServicePortKey, Arc<PortView>>> {
    ports
        .iter()
        .filter_map(|k| match (prev.port(k), next.port(k)) {
            (Some(a), Some(b)) if Arc::ptr_eq(a, b) || a == b => None,
            (Some(_), Some(b)) => Some(Change::Changed(k.clone(), Arc::clone(b))),
            (None, Some(b)) => Some(Change::Added(k.clone(), Arc::clone(b))),
            (Some(_), None) => Some(Change::Removed(k.clone())),
            (None, None) => None,
        })
        .collect()
}

fn changed_ports(
    a: &BTreeMap<ServicePortKey, Arc<PortView>>,
    b: &BTreeMap<ServicePortKey, Arc<PortView>>,
) -> Vec<Change<ServicePortKey, Arc<PortView>>> {
    let mut out = Vec::new();
    let mut ia = a.iter().peekable();
    let mut ib = b.iter().peekable();
    loop {
        let (ka, va, kb, vb) = match (ia.peek(), ib.peek()) {
            (None, None) => break,
            (Some((ka, _)), None) => {
                out.push(Change::Removed((*ka).clone()));
                ia.next();
                continue;
            }
            (None, Some((kb, vb))) => {
                out.push(Change::Added((*kb).clone(), Arc::clone(vb)));
                ib.next();
                continue;
            }
            (Some((ka, va)), Some((kb, vb))) => (*ka, *va, *kb, *vb),
        };
        if Arc::ptr_eq(va, vb) {
            ia.next();
            ib.next();
            continue;
        }
        match ka.cmp(kb) {
            std::cmp::Ordering::Less => {
                out.push(Change::Removed(ka.clone()));
                ia.next();
            }
            std::cmp::Ordering::Greater => {
                out.push(Change::Added(kb.clone(), Arc::clone(vb)));
                ib.next();
            }
            std::cmp::Ordering::Equal => {
                if va != vb {
                    out.push(Change::Changed(kb.clone(), Arc::clone(vb)));
                }
                ia.next();
                ib.next();
            }
        }
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;
    use svcplane_config::{Loader, ParseOptions};

    /// A services map in memory that checks, after every operation, what a BPF lookup
    /// could see.
    #[derive(Debug, Default)]
    struct FakeMaps {
        entries: BTreeMap<(Frontend, u16), Entry>,
        /// Frontends that must stay visible at every step (they exist before and after).
        keep: BTreeSet<Frontend>,
        /// Endpoints each frontend may show (its old and new ones).
        allowed: HashMap<Frontend, BTreeSet<SocketAddr>>,
        steps: usize,
        /// Fail (without applying) the operation with this step number.
        fail_at: Option<usize>,
    }

    #[derive(Clone, Debug, PartialEq, Eq)]
    enum Entry {
        Front { count: u16, id: u32, timeout: u32 },
        Endpoint(SocketAddr),
    }

    #[derive(Debug, thiserror::Error)]
    #[error("fake map failure")]
    struct FakeError;

    impl FakeMaps {
        fn from_set(set: &FrontendSet) -> Self {
            let mut m = FakeMaps::default();
            for op in diff(&FrontendSet::new(), set) {
                m.put(&op);
            }
            m
        }

        /// Expect a move from the current content to `next`.
        fn expect(&mut self, prev: &FrontendSet, next: &FrontendSet) {
            self.keep = prev
                .keys()
                .filter(|f| next.contains_key(f))
                .copied()
                .collect();
            self.allowed.clear();
            for set in [prev, next] {
                for (fe, s) in set {
                    self.allowed
                        .entry(*fe)
                        .or_default()
                        .extend(s.endpoints.iter().copied());
                }
            }
        }

        fn put(&mut self, op: &MapOp) {
            match *op {
                MapOp::PutEndpoint {
                    frontend,
                    slot,
                    backend,
                } => {
                    assert!(slot >= 1, "{op:?}");
                    self.entries
                        .insert((frontend, slot), Entry::Endpoint(backend));
                }
                MapOp::PutFrontend {
                    frontend,
                    count,
                    id,
                    affinity_timeout,
                } => {
                    self.entries.insert(
                        (frontend, 0),
                        Entry::Front {
                            count,
                            id,
                            timeout: affinity_timeout,
                        },
                    );
                }
                MapOp::Delete { frontend, slot } => {
                    self.entries.remove(&(frontend, slot));
                }
            }
        }

        /// What a lookup may see: every visible frontend's slots 1..=count exist and hold
        /// one of its old or new endpoints; a frontend that stays is always visible.
        fn check(&self, after: &MapOp) {
            for ((fe, slot), e) in &self.entries {
                let Entry::Front { count, .. } = e else {
                    continue;
                };
                assert_eq!(*slot, 0);
                for s in 1..=*count {
                    match self.entries.get(&(*fe, s)) {
                        Some(Entry::Endpoint(b)) => {
                            if let Some(allowed) = self.allowed.get(fe) {
                                assert!(allowed.contains(b), "{fe} slot {s} = {b} after {after:?}");
                            }
                        }
                        other => panic!("{fe} count {count}, slot {s} = {other:?} after {after:?}"),
                    }
                }
            }
            for fe in &self.keep {
                assert!(
                    self.entries.contains_key(&(*fe, 0)),
                    "{fe} invisible after {after:?}"
                );
            }
        }

        /// The content as a FrontendSet; panics on keys nothing makes visible.
        fn content(&self) -> FrontendSet {
            let mut out = FrontendSet::new();
            let mut used = 0;
            for ((fe, _), e) in &self.entries {
                if let Entry::Front { count, id, timeout } = e {
                    let endpoints = (1..=*count)
                        .map(|s| match &self.entries[&(*fe, s)] {
                            Entry::Endpoint(b) => *b,
                            Entry::Front { .. } => unreachable!(),
                        })
                        .collect();
                    used += 1 + usize::from(*count);
                    out.insert(
                        *fe,
                        FrontendState {
                            id: *id,
                            affinity_timeout: *timeout,
                            endpoints,
                        },
                    );
                }
            }
            assert_eq!(used, self.entries.len(), "stray slots: {:?}", self.entries);
            out
        }
    }

    impl MapOps for FakeMaps {
        type Error = FakeError;

        fn apply(&mut self, op: &MapOp) -> Result<(), FakeError> {
            if self.fail_at == Some(self.steps) {
                return Err(FakeError);
            }
            self.put(op);
            self.steps += 1;
            self.check(op);
            Ok(())
        }
    }

    impl FakeMaps {
        /// What `BpfMaps::adopt` does: the raw entries through `adopt`, orphans removed.
        fn adopt(&mut self) -> FrontendSet {
            let entries: Vec<(SvcKey, SvcValue)> = self
                .entries
                .iter()
                .map(|((fe, slot), e)| {
                    let v = match e {
                        Entry::Front { count, id, timeout } => SvcValue {
                            count: *count,
                            fe_id: *id,
                            affinity_timeout: *timeout,
                            ..SvcValue::default()
                        },
                        Entry::Endpoint(b) => abi::endpoint_value(*b),
                    };
                    (key_of(*fe, *slot), v)
                })
                .collect();
            let (set, orphans) = adopt(entries);
            for k in orphans {
                let fe = frontend_of_key(&k).unwrap();
                self.entries.remove(&(fe, k.slot));
            }
            set
        }
    }

    // === diff over random contents ===

    fn fe(n: u8) -> Frontend {
        Frontend {
            ip: IpAddr::from([10, 96, 0, n]),
            port: 80,
            protocol: if n.is_multiple_of(2) {
                Protocol::Tcp
            } else {
                Protocol::Udp
            },
        }
    }

    fn ep(n: u8) -> SocketAddr {
        SocketAddr::new(IpAddr::from([10, 0, 0, n]), 8080)
    }

    fn state() -> impl Strategy<Value = FrontendState> {
        (
            0u32..3,
            prop::sample::select(vec![0u32, 10800]),
            prop::collection::vec(0u8..8, 0..7),
        )
            .prop_map(|(id, t, eps)| FrontendState {
                id,
                affinity_timeout: t,
                endpoints: eps.into_iter().map(ep).collect(),
            })
    }

    fn set() -> impl Strategy<Value = FrontendSet> {
        prop::collection::btree_map((0u8..5).prop_map(fe), state(), 0..5)
    }

    proptest! {
        #[test]
        fn every_step_of_a_diff_shows_whole_frontends(prev in set(), next in set()) {
            let mut maps = FakeMaps::from_set(&prev);
            maps.expect(&prev, &next);
            for op in diff(&prev, &next) {
                maps.apply(&op).unwrap();
            }
            prop_assert_eq!(maps.content(), next);
        }

        #[test]
        fn placement_keeps_slots_of_kept_endpoints(
            prev in prop::collection::vec(0u8..10, 0..8),
            wanted in prop::collection::btree_set(0u8..10, 0..8),
        ) {
            let mut seen = BTreeSet::new();
            let prev: Vec<SocketAddr> = prev.into_iter().map(ep).filter(|e| seen.insert(*e)).collect();
            let wanted: Vec<SocketAddr> = wanted.into_iter().map(ep).collect();
            let placed = place(&prev, &wanted);
            let a: BTreeSet<_> = placed.iter().collect();
            let b: BTreeSet<_> = wanted.iter().collect();
            prop_assert_eq!(placed.len(), wanted.len());
            prop_assert_eq!(a, b);
            for (i, e) in prev.iter().enumerate().take(placed.len()) {
                if wanted.contains(e) {
                    prop_assert_eq!(placed[i], *e);
                }
            }
        }
    }

    // === the syncer over random snapshot pairs ===

    /// (Service number, endpoints as (address suffix, ready), ClientIP affinity).
    type Svc = (u8, Vec<(u8, bool)>, bool);

    fn yaml(services: &[Svc]) -> String {
        let mut out = String::new();
        for (i, eps, affinity) in services {
            let aff = if *affinity {
                "\n  sessionAffinity: ClientIP"
            } else {
                ""
            };
            out.push_str(&format!(
                "---
apiVersion: v1
kind: Service
metadata: {{name: s{i}, namespace: default}}
spec:
  type: NodePort
  clusterIP: 10.96.1.{i}{aff}
  ports:
  - {{name: a, port: 80, targetPort: 8080, nodePort: {np}}}
  - {{name: b, port: 53, targetPort: 53, protocol: UDP}}
",
                np = 30000 + u32::from(*i)
            ));
            if eps.is_empty() {
                continue;
            }
            out.push_str(&format!(
                "---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: s{i}, namespace: default, labels: {{kubernetes.io/service-name: s{i}}}}}
addressType: IPv4
ports: [{{name: a, port: 8080}}, {{name: b, port: 53, protocol: UDP}}]
endpoints:
"
            ));
            for (e, ready) in eps {
                out.push_str(&format!(
                    "- {{addresses: [10.0.0.{e}], conditions: {{ready: {ready}}}}}\n"
                ));
            }
        }
        out
    }

    struct Manifests {
        dir: tempfile::TempDir,
        loader: Loader,
        n: usize,
        last: Option<Arc<Snapshot>>,
    }

    impl Manifests {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let loader = Loader::new(dir.path(), ParseOptions::default());
            Manifests {
                dir,
                loader,
                n: 0,
                last: None,
            }
        }

        fn snapshot(&mut self, yaml: &str) -> Arc<Snapshot> {
            for e in std::fs::read_dir(self.dir.path()).unwrap() {
                std::fs::remove_file(e.unwrap().path()).unwrap();
            }
            self.n += 1;
            std::fs::write(self.dir.path().join(format!("m{}.yaml", self.n)), yaml).unwrap();
            // No snapshot when nothing changed (or nothing was ever loaded).
            if let Some(s) = self.loader.reload().unwrap().0 {
                self.last = Some(s);
            }
            self.last.clone().unwrap_or_default()
        }
    }

    fn node() -> NodeInfo {
        NodeInfo {
            node_name: Some("node-a".into()),
            node_ips: vec![IpAddr::from([127, 0, 0, 1])],
            probe: None,
        }
    }

    fn services() -> impl Strategy<Value = Vec<Svc>> {
        prop::collection::btree_map(
            1u8..6,
            (
                prop::collection::btree_map(1u8..8, any::<bool>(), 0..5),
                any::<bool>(),
            ),
            0..5,
        )
        .prop_map(|m| {
            m.into_iter()
                .map(|(i, (eps, aff))| (i, eps.into_iter().collect(), aff))
                .collect()
        })
    }

    /// What a syncer writes for `snap` into empty maps.
    fn from_scratch(snap: &Arc<Snapshot>) -> FrontendSet {
        let mut maps = FakeMaps::default();
        let mut s = Syncer::new(node(), FrontendSet::new());
        s.sync(snap, &mut maps).unwrap();
        maps.content()
    }

    fn endpoints_only(set: &FrontendSet) -> BTreeMap<Frontend, (u32, BTreeSet<SocketAddr>)> {
        set.iter()
            .map(|(f, s)| {
                (
                    *f,
                    (s.affinity_timeout, s.endpoints.iter().copied().collect()),
                )
            })
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn incremental_sync_matches_a_fresh_one_and_never_shows_half_frontends(
            a in services(),
            b in services(),
        ) {
            let mut m = Manifests::new();
            let snap_a = m.snapshot(&yaml(&a));
            let snap_b = m.snapshot(&yaml(&b));
            let mut maps = FakeMaps::default();
            let mut s = Syncer::new(node(), FrontendSet::new());
            s.sync(&snap_a, &mut maps).unwrap();
            let before = maps.content();
            let want = from_scratch(&snap_b);
            maps.expect(&before, &want);
            s.sync(&snap_b, &mut maps).unwrap();
            let got = maps.content();
            prop_assert_eq!(&got, s.state());
            prop_assert_eq!(endpoints_only(&got), endpoints_only(&want));
            // Adoption: a new syncer over the same content reconciles to b with nothing to do.
            let mut again = Syncer::new(node(), got.clone());
            let steps = maps.steps;
            again.sync(&snap_b, &mut maps).unwrap();
            prop_assert_eq!(maps.steps, steps);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        /// A map write fails in the middle of a sync: what is left is consistent at every
        /// step, and a syncer rebuilt from the maps' content finishes the job.
        #[test]
        fn a_failed_sync_is_finished_from_the_adopted_content(
            a in services(),
            b in services(),
            fail_at in 0usize..40,
        ) {
            let mut m = Manifests::new();
            let snap_a = m.snapshot(&yaml(&a));
            let snap_b = m.snapshot(&yaml(&b));
            let mut maps = FakeMaps::default();
            let mut s = Syncer::new(node(), FrontendSet::new());
            s.sync(&snap_a, &mut maps).unwrap();
            let before = maps.content();
            let want = from_scratch(&snap_b);
            maps.expect(&before, &want);
            maps.fail_at = Some(maps.steps + fail_at);
            if s.sync(&snap_b, &mut maps).is_err() {
                maps.fail_at = None;
                let current = maps.adopt();
                // Frontends in both a and b stayed visible through the failure (checked by
                // the fake); the retry keeps them visible too.
                let mut again = Syncer::new(node(), current);
                again.sync(&snap_b, &mut maps).unwrap();
            }
            prop_assert_eq!(endpoints_only(&maps.content()), endpoints_only(&want));
        }
    }

    #[test]
    fn one_endpoint_change_costs_the_same_at_any_size() {
        let mut costs = Vec::new();
        for n in [10u8, 200] {
            let mut m = Manifests::new();
            let all: Vec<Svc> = (1..=n)
                .map(|i| (i, vec![(1, true), (2, true)], false))
                .collect();
            let snap = m.snapshot(&yaml(&all));
            let mut maps = FakeMaps::default();
            let mut s = Syncer::new(node(), FrontendSet::new());
            s.sync(&snap, &mut maps).unwrap();
            let mut changed = all.clone();
            changed[0].1 = vec![(1, true), (3, true)];
            let snap2 = m.snapshot(&yaml(&changed));
            let report = s.sync(&snap2, &mut maps).unwrap();
            costs.push((report.ports_changed, report.ops));
        }
        // Two ports of one Service; one slot rewritten on each of its 4 frontends
        // (ClusterIP and 127.0.0.1:nodePort, TCP and UDP).
        assert_eq!(costs[0], costs[1]);
        assert_eq!(costs[0], (2, 4));
    }

    #[test]
    fn a_frontend_two_ports_want_stays_with_the_first_then_passes_on() {
        let web = yaml(&[(1, vec![(1, true)], false)]);
        // An externalIP + port equal to node address 127.0.0.1 × web's nodePort 30001.
        let other = "---
apiVersion: v1
kind: Service
metadata: {name: zz, namespace: default}
spec:
  clusterIP: 10.96.2.1
  externalIPs: [127.0.0.1]
  ports: [{port: 30001, targetPort: 9}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: zz, namespace: default, labels: {kubernetes.io/service-name: zz}}
addressType: IPv4
ports: [{port: 9}]
endpoints:
- {addresses: [10.0.0.9]}
";
        let mut m = Manifests::new();
        let snap = m.snapshot(&format!("{web}{other}"));
        let mut maps = FakeMaps::default();
        let mut s = Syncer::new(node(), FrontendSet::new());
        let report = s.sync(&snap, &mut maps).unwrap();
        let contested = Frontend {
            ip: IpAddr::from([127, 0, 0, 1]),
            port: 30001,
            protocol: Protocol::Tcp,
        };
        assert_eq!(report.conflicts.len(), 1, "{report:?}");
        assert_eq!(report.conflicts[0].0, contested);
        assert_eq!(&*report.conflicts[0].1.service.name, "zz");
        assert_eq!(maps.content()[&contested].endpoints, vec![ep(1)]);
        // web goes away: zz takes the frontend in the same sync.
        let snap = m.snapshot(other);
        let before = maps.content();
        maps.expect(&before, &from_scratch(&snap));
        s.sync(&snap, &mut maps).unwrap();
        let nine = SocketAddr::new(IpAddr::from([10, 0, 0, 9]), 9);
        assert_eq!(maps.content()[&contested].endpoints, vec![nine]);
    }

    #[test]
    fn adoption_keeps_visible_slots_and_reports_orphans() {
        let f = fe(2);
        let mut entries = vec![
            (
                key_of(f, 0),
                SvcValue {
                    count: 1,
                    fe_id: 7,
                    ..SvcValue::default()
                },
            ),
            (key_of(f, 1), abi::endpoint_value(ep(1))),
            (key_of(f, 2), abi::endpoint_value(ep(2))),
        ];
        entries.push((key_of(fe(4), 1), abi::endpoint_value(ep(3))));
        let (set, orphans) = adopt(entries);
        assert_eq!(set[&f].endpoints, vec![ep(1)]);
        assert_eq!(set[&f].id, 7);
        let mut orphans: Vec<(Option<Frontend>, u16)> = orphans
            .iter()
            .map(|k| (frontend_of_key(k), k.slot))
            .collect();
        orphans.sort();
        assert_eq!(orphans, vec![(Some(f), 2), (Some(fe(4)), 1)]);
    }
}
