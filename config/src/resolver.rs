//! Incremental snapshot building.
//!
//! The resolver keeps indexes of every accepted object across reloads. A reload hands it the
//! objects that left and arrived (per changed file); it marks the Services they touch as
//! dirty, re-decides duplicates and frontend claims for those (and for Services rejected
//! earlier, which may fit now), re-resolves only them, and patches its tables. A one-file
//! change therefore costs that file's objects plus one copy of the snapshot's maps, not a
//! rebuild of every Service.
//!
//! Conflicts are decided in favour of history: a Service that runs keeps its frontends
//! against newcomers, and an edit that now conflicts keeps the version that ran.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use crate::alloc::{Allocator, Materialized};
use crate::error::ConfigError;
use crate::model::{Origin, ServiceDef, ServiceKey};
use crate::parse::{EndpointsDef, Object, ParsedFile, PodDef, SliceDef};
use crate::snapshot::{
    Claim, ClaimField, Diagnostics, Inputs, Memo, ServicePortKey, Snapshot, SnapshotDelta, claims,
    resolve, selects,
};

/// The objects of one file before and after a reload (`None`: absent).
#[derive(Debug)]
pub(crate) struct FileChange<'a> {
    pub(crate) old: Option<&'a ParsedFile>,
    pub(crate) new: Option<&'a ParsedFile>,
}

/// Every definition of a key, in (file, document) order; the first is used unless history
/// prefers another.
type Defs<T> = HashMap<ServiceKey, Vec<Arc<T>>>;

#[derive(Debug)]
pub(crate) struct Resolver {
    services: Defs<ServiceDef>,
    slices: Defs<SliceDef>,
    endpoints: Defs<EndpointsDef>,
    pods: Defs<PodDef>,
    /// (namespace, Service name) -> names of the EndpointSlices labelled for it.
    slice_groups: HashMap<ServiceKey, BTreeSet<Arc<str>>>,
    /// namespace -> names of Pods / of defined Services.
    pods_by_ns: HashMap<Arc<str>, BTreeSet<Arc<str>>>,
    services_by_ns: HashMap<Arc<str>, BTreeSet<Arc<str>>>,
    /// Who holds each frontend / nodePort.
    owner: HashMap<Claim, ServiceKey>,
    /// The definition each accepted Service runs (its claims are in `owner`).
    accepted: HashMap<ServiceKey, Arc<ServiceDef>>,
    /// Services refused for conflicts; retried on every update.
    rejected: BTreeSet<ServiceKey>,
    dup_errors: BTreeMap<(&'static str, ServiceKey), Vec<ConfigError>>,
    claim_errors: BTreeMap<ServiceKey, Vec<ConfigError>>,
    memo: HashMap<ServiceKey, Memo>,
    /// ClusterIPs and nodePorts for manifests that state none.
    alloc: Allocator,
    /// (raw definition, the same with allocations) per Service, to keep `Arc` identity.
    materialized: HashMap<ServiceKey, Materialized>,
    alloc_errors: BTreeMap<ServiceKey, ConfigError>,
    /// The tables of the last snapshot, patched in place.
    tables: Snapshot,
}

#[derive(Debug, Default)]
struct Dirty {
    services: BTreeSet<ServiceKey>,
    dups: BTreeSet<(&'static str, ServiceKey)>,
    namespaces: BTreeSet<Arc<str>>,
}

fn ptr(o: &Object) -> usize {
    match o {
        Object::Service(s) => Arc::as_ptr(s) as usize,
        Object::Slice(s) => Arc::as_ptr(s) as usize,
        Object::Endpoints(e) => Arc::as_ptr(e) as usize,
        Object::Pod(p) => Arc::as_ptr(p) as usize,
    }
}

fn origin_order(a: &Origin, b: &Origin) -> std::cmp::Ordering {
    (&a.file, a.document, a.line).cmp(&(&b.file, b.document, b.line))
}

fn insert_def<T>(map: &mut Defs<T>, key: ServiceKey, def: &Arc<T>, origin: impl Fn(&T) -> &Origin) {
    let list = map.entry(key).or_default();
    let at = list.partition_point(|d| origin_order(origin(d), origin(def)).is_le());
    list.insert(at, Arc::clone(def));
}

/// Removes `def` (by identity); true when no definition of the key is left.
fn remove_def<T>(map: &mut Defs<T>, key: &ServiceKey, def: &Arc<T>) -> bool {
    let Some(list) = map.get_mut(key) else {
        return true;
    };
    list.retain(|d| !Arc::ptr_eq(d, def));
    if list.is_empty() {
        map.remove(key);
        true
    } else {
        false
    }
}

fn key(ns: &Arc<str>, name: &Arc<str>) -> ServiceKey {
    ServiceKey {
        namespace: Arc::clone(ns),
        name: Arc::clone(name),
    }
}

impl Resolver {
    pub(crate) fn new(alloc: Allocator) -> Self {
        Resolver {
            services: HashMap::new(),
            slices: HashMap::new(),
            endpoints: HashMap::new(),
            pods: HashMap::new(),
            slice_groups: HashMap::new(),
            pods_by_ns: HashMap::new(),
            services_by_ns: HashMap::new(),
            owner: HashMap::new(),
            accepted: HashMap::new(),
            rejected: BTreeSet::new(),
            dup_errors: BTreeMap::new(),
            claim_errors: BTreeMap::new(),
            memo: HashMap::new(),
            alloc,
            materialized: HashMap::new(),
            alloc_errors: BTreeMap::new(),
            tables: Snapshot::default(),
        }
    }

    /// Applies file changes and returns the next snapshot.
    pub(crate) fn update(
        &mut self,
        version: u64,
        changes: &[FileChange<'_>],
        mut diagnostics: Diagnostics,
    ) -> Snapshot {
        let mut dirty = Dirty::default();
        for ch in changes {
            let old = ch.old.map_or(&[][..], |f| &f.objects[..]);
            let new = ch.new.map_or(&[][..], |f| &f.objects[..]);
            let new_ptrs: HashSet<usize> = new.iter().map(ptr).collect();
            let old_ptrs: HashSet<usize> = old.iter().map(ptr).collect();
            for o in old.iter().filter(|o| !new_ptrs.contains(&ptr(o))) {
                self.remove(o, &mut dirty);
            }
            for o in new.iter().filter(|o| !old_ptrs.contains(&ptr(o))) {
                self.add(o, &mut dirty);
            }
        }
        for ns in &dirty.namespaces {
            if let Some(names) = self.services_by_ns.get(ns) {
                dirty.services.extend(names.iter().map(|n| key(ns, n)));
            }
        }
        for (kind, k) in &dirty.dups {
            self.recheck_duplicates(kind, k);
        }
        let candidates = self.claim(&dirty.services);
        let mut touched = BTreeSet::new();
        for k in candidates {
            self.refresh(&k, &mut touched);
        }
        diagnostics
            .errors
            .extend(self.dup_errors.values().flatten().cloned());
        diagnostics
            .errors
            .extend(self.claim_errors.values().flatten().cloned());
        diagnostics
            .errors
            .extend(self.alloc_errors.values().cloned());
        if let Err(e) = self.alloc.persist() {
            diagnostics.errors.push(ConfigError::file(
                &Arc::from(std::path::Path::new("allocation state")),
                None,
                e.to_string(),
            ));
        }
        let mut snap = self.tables.clone();
        snap.version = version;
        snap.diagnostics = Arc::new(diagnostics);
        snap.delta = Some(Arc::new(SnapshotDelta {
            from_version: version.saturating_sub(1),
            ports: touched,
        }));
        snap
    }

    fn add(&mut self, o: &Object, dirty: &mut Dirty) {
        match o {
            Object::Service(s) => {
                self.explicit(s, true, dirty);
                insert_def(&mut self.services, s.key.clone(), s, |d| &d.origin);
                self.services_by_ns
                    .entry(s.key.namespace.clone())
                    .or_default()
                    .insert(s.key.name.clone());
                dirty.services.insert(s.key.clone());
                dirty.dups.insert(("Service", s.key.clone()));
            }
            Object::Slice(s) => {
                let k = key(&s.namespace, &s.name);
                insert_def(&mut self.slices, k.clone(), s, |d| &d.origin);
                if let Some(svc) = &s.service {
                    self.slice_groups
                        .entry(key(&s.namespace, svc))
                        .or_default()
                        .insert(s.name.clone());
                }
                self.slice_touched(&k, dirty);
            }
            Object::Endpoints(e) => {
                insert_def(&mut self.endpoints, e.key.clone(), e, |d| &d.origin);
                dirty.services.insert(e.key.clone());
                dirty.dups.insert(("Endpoints", e.key.clone()));
            }
            Object::Pod(p) => {
                let k = key(&p.namespace, &p.name);
                insert_def(&mut self.pods, k.clone(), p, |d| &d.origin);
                self.pods_by_ns
                    .entry(p.namespace.clone())
                    .or_default()
                    .insert(p.name.clone());
                dirty.namespaces.insert(p.namespace.clone());
                dirty.dups.insert(("Pod", k));
            }
        }
    }

    fn remove(&mut self, o: &Object, dirty: &mut Dirty) {
        match o {
            Object::Service(s) => {
                self.explicit(s, false, dirty);
                if remove_def(&mut self.services, &s.key, s)
                    && let Some(names) = self.services_by_ns.get_mut(&s.key.namespace)
                {
                    names.remove(&s.key.name);
                }
                dirty.services.insert(s.key.clone());
                dirty.dups.insert(("Service", s.key.clone()));
            }
            Object::Slice(s) => {
                let k = key(&s.namespace, &s.name);
                // Mark the groups of every definition (the chosen one may change).
                self.slice_touched(&k, dirty);
                remove_def(&mut self.slices, &k, s);
                if let Some(svc) = &s.service {
                    let still = self
                        .slices
                        .get(&k)
                        .is_some_and(|l| l.iter().any(|d| d.service.as_ref() == Some(svc)));
                    let group = key(&s.namespace, svc);
                    if !still && let Some(g) = self.slice_groups.get_mut(&group) {
                        g.remove(&s.name);
                    }
                    dirty.services.insert(group);
                }
            }
            Object::Endpoints(e) => {
                remove_def(&mut self.endpoints, &e.key, e);
                dirty.services.insert(e.key.clone());
                dirty.dups.insert(("Endpoints", e.key.clone()));
            }
            Object::Pod(p) => {
                let k = key(&p.namespace, &p.name);
                if remove_def(&mut self.pods, &k, p)
                    && let Some(names) = self.pods_by_ns.get_mut(&p.namespace)
                {
                    names.remove(&p.name);
                }
                dirty.namespaces.insert(p.namespace.clone());
                dirty.dups.insert(("Pod", k));
            }
        }
    }

    /// Counts the addresses and nodePorts a manifest states; a Service holding one of them
    /// by allocation must give it up (explicit values win), so it becomes dirty.
    fn explicit(&mut self, def: &ServiceDef, add: bool, dirty: &mut Dirty) {
        for ip in &def.cluster_ips {
            let n = self.alloc.explicit_ips.entry(*ip).or_default();
            *n = if add { *n + 1 } else { n.saturating_sub(1) };
            if *n == 0 {
                self.alloc.explicit_ips.remove(ip);
            }
            if let Some(holder) = self.alloc.ip_holder(ip) {
                dirty.services.insert(holder.clone());
            }
        }
        for np in def.ports.iter().filter_map(|p| p.node_port) {
            let n = self.alloc.explicit_ports.entry(np).or_default();
            *n = if add { *n + 1 } else { n.saturating_sub(1) };
            if *n == 0 {
                self.alloc.explicit_ports.remove(&np);
            }
            if let Some(holder) = self.alloc.port_holder(np) {
                dirty.services.insert(holder.clone());
            }
        }
    }

    /// `raw` with its allocations (the same `Arc` as last time when nothing changed), or
    /// `None` when the range is exhausted (the error is recorded).
    fn materialize(&mut self, k: &ServiceKey, raw: Arc<ServiceDef>) -> Option<Arc<ServiceDef>> {
        self.alloc_errors.remove(k);
        let def = match self.alloc.materialize(&raw) {
            Ok(None) => Arc::clone(&raw),
            Ok(Some(d)) => match self.materialized.get(k) {
                Some((_, m)) if **m == d => Arc::clone(m),
                _ => Arc::new(d),
            },
            Err((field, reason)) => {
                self.alloc.release(k);
                self.materialized.remove(k);
                self.alloc_errors.insert(
                    k.clone(),
                    ConfigError {
                        file: raw.origin.file.clone(),
                        document: Some(raw.origin.document),
                        line: Some(raw.origin.line),
                        kind: Some("Service".into()),
                        object: Some(k.to_string()),
                        field: Some(field),
                        reason,
                        other: None,
                    },
                );
                return None;
            }
        };
        self.materialized.insert(k.clone(), (raw, Arc::clone(&def)));
        Some(def)
    }

    /// A slice definition came or went: its key's duplicates and every group any of its
    /// definitions is labelled for must be looked at again.
    fn slice_touched(&self, k: &ServiceKey, dirty: &mut Dirty) {
        dirty.dups.insert(("EndpointSlice", k.clone()));
        for d in self.slices.get(k).into_iter().flatten() {
            if let Some(svc) = &d.service {
                dirty.services.insert(key(&d.namespace, svc));
            }
        }
    }

    /// The definition of a Service to use: the running one if it is still defined, else
    /// the one from the running one's file, else the first.
    fn chosen_service(&self, k: &ServiceKey) -> Option<Arc<ServiceDef>> {
        let list = self.services.get(k)?;
        let running = self
            .accepted
            .get(k)
            .or_else(|| self.memo.get(k).map(|m| &m.def));
        let pick = running
            .and_then(|r| {
                list.iter()
                    .find(|d| Arc::ptr_eq(d, r))
                    .or_else(|| list.iter().find(|d| d.origin.file == r.origin.file))
            })
            .or_else(|| list.first());
        pick.cloned()
    }

    fn recheck_duplicates(&mut self, kind: &'static str, k: &ServiceKey) {
        let errors = match kind {
            "Service" => {
                let chosen = self.chosen_service(k);
                dup_errors(kind, k, self.services.get(k), chosen.as_ref(), |d| {
                    &d.origin
                })
            }
            "EndpointSlice" => {
                let list = self.slices.get(k);
                dup_errors(kind, k, list, list.and_then(|l| l.first()), |d| &d.origin)
            }
            "Endpoints" => {
                let list = self.endpoints.get(k);
                dup_errors(kind, k, list, list.and_then(|l| l.first()), |d| &d.origin)
            }
            _ => {
                let list = self.pods.get(k);
                dup_errors(kind, k, list, list.and_then(|l| l.first()), |d| &d.origin)
            }
        };
        if errors.is_empty() {
            self.dup_errors.remove(&(kind, k.clone()));
        } else {
            self.dup_errors.insert((kind, k.clone()), errors);
        }
    }

    /// Re-decides frontend and nodePort claims for dirty Services and earlier rejects.
    /// Returns every Service whose tables entry must be refreshed.
    fn claim(&mut self, dirty: &BTreeSet<ServiceKey>) -> Vec<ServiceKey> {
        let mut released: HashMap<ServiceKey, Arc<ServiceDef>> = HashMap::new();
        for k in dirty {
            if let Some(def) = self.accepted.remove(k) {
                for (c, _) in claims(&def) {
                    if self.owner.get(&c) == Some(k) {
                        self.owner.remove(&c);
                    }
                }
                released.insert(k.clone(), def);
            }
        }
        // Earlier rejects (conflicts, full ranges) are retried: they may fit now.
        let mut candidates: Vec<(u8, ServiceKey, Option<Arc<ServiceDef>>)> = dirty
            .iter()
            .chain(self.rejected.iter())
            .chain(self.alloc_errors.keys())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .cloned()
            .collect::<Vec<_>>()
            .into_iter()
            .map(|k| {
                let def = match self.chosen_service(&k) {
                    Some(raw) => self.materialize(&k, raw),
                    None => {
                        self.alloc.release(&k);
                        self.materialized.remove(&k);
                        self.alloc_errors.remove(&k);
                        None
                    }
                };
                // What ran unchanged goes first, then edits of what ran, then newcomers:
                // neither an edit nor an addition displaces a Service that still works.
                let rank = match (released.get(&k), &def) {
                    (Some(old), Some(d)) if Arc::ptr_eq(old, d) || old.same_spec(d) => 0,
                    (Some(_), _) => 1,
                    (None, _) => 2,
                };
                (rank, k, def)
            })
            .collect();
        candidates.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        let mut out = Vec::with_capacity(candidates.len());
        for (_, k, def) in candidates {
            self.claim_errors.remove(&k);
            self.rejected.remove(&k);
            if let Some(def) = def {
                self.claim_one(&k, def, released.get(&k));
            }
            out.push(k);
        }
        out
    }

    fn claim_one(&mut self, k: &ServiceKey, def: Arc<ServiceDef>, old: Option<&Arc<ServiceDef>>) {
        let wanted = claims(&def);
        let taken = self.taken(&wanted);
        if taken.is_empty() {
            self.take(k, &def, &wanted);
            return;
        }
        let fallback = old
            .filter(|o| !Arc::ptr_eq(o, &def))
            .map(|o| (o, claims(o)))
            .filter(|(_, c)| self.taken(c).is_empty());
        let keeping = if fallback.is_some() {
            "; keeping its last good version"
        } else {
            ""
        };
        let errors = taken
            .iter()
            .map(|(claim, field, other)| {
                let other_origin = self.accepted.get(other).map(|d| d.origin.clone());
                ConfigError {
                    file: def.origin.file.clone(),
                    document: Some(def.origin.document),
                    line: Some(def.origin.line),
                    kind: Some("Service".into()),
                    object: Some(k.to_string()),
                    field: Some(field.to_string()),
                    reason: format!("{claim} is already used by Service {other}{keeping}"),
                    other: other_origin,
                }
            })
            .collect();
        self.claim_errors.insert(k.clone(), errors);
        match fallback {
            Some((old, wanted)) => {
                let old = Arc::clone(old);
                self.take(k, &old, &wanted);
            }
            None => {
                self.rejected.insert(k.clone());
            }
        }
    }

    fn taken(&self, wanted: &[(Claim, ClaimField)]) -> Vec<(Claim, ClaimField, ServiceKey)> {
        wanted
            .iter()
            .filter_map(|(c, f)| self.owner.get(c).map(|o| (*c, *f, o.clone())))
            .collect()
    }

    fn take(&mut self, k: &ServiceKey, def: &Arc<ServiceDef>, wanted: &[(Claim, ClaimField)]) {
        for (c, _) in wanted {
            self.owner.insert(*c, k.clone());
        }
        self.accepted.insert(k.clone(), Arc::clone(def));
    }

    /// Re-resolves one Service (or drops it) and patches the tables.
    /// Re-resolves one Service; adds the port keys it had and has to `touched`.
    fn refresh(&mut self, k: &ServiceKey, touched: &mut BTreeSet<ServicePortKey>) {
        let old = self.memo.remove(k);
        if let Some(old) = &old {
            for (pk, view) in &old.ports {
                touched.insert(pk.clone());
                for (f, _) in view.frontends() {
                    if self.tables.frontends.get(&f) == Some(pk) {
                        self.tables.frontends.remove(&f);
                    }
                }
                if let Some(np) = view.node_port
                    && self.tables.node_ports.get(&(np, pk.protocol)) == Some(pk)
                {
                    self.tables.node_ports.remove(&(np, pk.protocol));
                }
                self.tables.ports.remove(pk);
            }
        }
        let Some(def) = self.accepted.get(k).cloned() else {
            self.tables.services.remove(k);
            return;
        };
        let inputs = self.inputs(k, &def);
        let memo = match old {
            Some(m) if Arc::ptr_eq(&m.def, &def) && m.inputs.same(&inputs) => m,
            _ => resolve(def, inputs),
        };
        for (pk, view) in &memo.ports {
            touched.insert(pk.clone());
            for (f, _) in view.frontends() {
                self.tables.frontends.insert(f, pk.clone());
            }
            if let Some(np) = view.node_port {
                self.tables.node_ports.insert((np, pk.protocol), pk.clone());
            }
            self.tables.ports.insert(pk.clone(), Arc::clone(view));
        }
        self.tables
            .services
            .insert(k.clone(), Arc::clone(&memo.service));
        self.memo.insert(k.clone(), memo);
    }

    /// Where a Service's endpoints come from: its EndpointSlices, else its Endpoints
    /// object, else the Pods its selector matches.
    fn inputs(&self, k: &ServiceKey, def: &ServiceDef) -> Inputs {
        let slices: Vec<Arc<SliceDef>> = self
            .slice_groups
            .get(k)
            .into_iter()
            .flatten()
            .filter_map(|name| {
                let d = self.slices.get(&key(&k.namespace, name))?.first()?;
                (d.service.as_deref() == Some(&*k.name)).then(|| Arc::clone(d))
            })
            .collect();
        if !slices.is_empty() {
            return Inputs::Slices(slices);
        }
        if let Some(e) = self.endpoints.get(k).and_then(|l| l.first()) {
            return Inputs::Endpoints(Arc::clone(e));
        }
        let Some(sel) = &def.selector else {
            return Inputs::None;
        };
        let pods: Vec<Arc<PodDef>> = self
            .pods_by_ns
            .get(&k.namespace)
            .into_iter()
            .flatten()
            .filter_map(|name| self.pods.get(&key(&k.namespace, name))?.first())
            .filter(|p| !p.ips.is_empty() && selects(sel, p))
            .cloned()
            .collect();
        if pods.is_empty() {
            Inputs::None
        } else {
            Inputs::Pods(pods)
        }
    }
}

/// One error per definition of `k` other than `chosen`, naming the chosen one.
fn dup_errors<T>(
    kind: &str,
    k: &ServiceKey,
    list: Option<&Vec<Arc<T>>>,
    chosen: Option<&Arc<T>>,
    origin: impl Fn(&T) -> &Origin,
) -> Vec<ConfigError> {
    let (Some(list), Some(chosen)) = (list, chosen) else {
        return Vec::new();
    };
    list.iter()
        .filter(|d| !Arc::ptr_eq(d, chosen))
        .map(|d| {
            let o = origin(d);
            ConfigError {
                file: o.file.clone(),
                document: Some(o.document),
                line: Some(o.line),
                kind: Some(kind.to_owned()),
                object: Some(k.to_string()),
                field: Some("metadata.name".into()),
                reason: format!("{kind} {k} is defined more than once; this definition is ignored"),
                other: Some(origin(chosen).clone()),
            }
        })
        .collect()
}
