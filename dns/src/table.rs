//! The DnsTable: every answer of the cluster zone, encoded once per snapshot.
//!
//! For each (name, type) the table holds a complete response message (built with
//! hickory-proto for a lower-case question, id 0). A query costs a hash lookup, a copy and a
//! patch of the id, flags and question bytes (which keeps the client's letter case: answer
//! owner names point at the question). Names that exist without the asked type answer NODATA,
//! names under a zone that do not exist NXDOMAIN; both carry the zone's SOA.
//!
//! Records follow the Kubernetes DNS-Based Service Discovery specification 1.1.0.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;

use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, NS, PTR, SOA, SRV, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinEncodable, BinEncoder, NameEncoding};
use std::sync::Arc;

use crate::gate::DnsSource;
use svcplane_config::{Endpoint, Protocol, Service, ServiceKey, ServiceType, Snapshot};

/// What the table is built with.
#[derive(Clone, Debug)]
pub struct DnsConfig {
    /// The cluster domain, e.g. `cluster.local`.
    pub zone: Name,
    /// TTL of every record, and the SOA minimum (negative TTL).
    pub ttl: u32,
    /// Addresses published for `ns.dns.<zone>` (the server's own, when it has specific ones).
    pub ns_addrs: Vec<IpAddr>,
}

impl DnsConfig {
    pub fn new(zone: &str, ttl: u32) -> Result<Self, String> {
        let mut zone = Name::from_ascii(zone)
            .map_err(|e| format!("cluster domain {zone:?} is not a DNS name: {e}"))?
            .to_lowercase();
        zone.set_fqdn(true);
        if zone.is_root() {
            return Err("the cluster domain must not be the root".into());
        }
        Ok(Self {
            zone,
            ttl,
            ns_addrs: Vec::new(),
        })
    }
}

/// Index of the zones the table is authoritative for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ZoneKind {
    Cluster,
    ReverseV4,
    ReverseV6,
}

/// A zone apex and the encoded tail of its SOA record (type, class, ttl, rdata), which a
/// negative answer appends after an owner-name pointer to the zone inside the question.
#[derive(Debug)]
pub struct Zone {
    pub kind: ZoneKind,
    /// Lower-case wire form of the apex, e.g. `\x07cluster\x05local\x00`.
    pub wire: Vec<u8>,
    pub soa_tail: Vec<u8>,
}

/// Answers of one name.
#[derive(Debug, Default)]
pub struct NameEntry {
    pub zone: usize,
    /// (query type, complete response template).
    pub answers: Answers,
    /// ExternalName: the CNAME answer for every type without its own entry.
    pub cname: Option<Template>,
}

impl NameEntry {
    pub fn answer(&self, qtype: u16) -> Option<&[u8]> {
        if qtype == u16::from(RecordType::ANY) {
            return self
                .answers
                .first()
                .map(|(_, t)| &**t)
                .or(self.cname.as_deref());
        }
        self.answers
            .iter()
            .find(|(t, _)| *t == qtype)
            .map(|(_, t)| &**t)
            .or(self.cname.as_deref())
    }
}

/// Everything DNS answers for one snapshot. Immutable; swapped whole.
#[derive(Debug)]
pub struct DnsTable {
    pub version: u64,
    pub zones: Vec<Zone>,
    /// Key: lower-case wire-format name.
    pub names: HashMap<Box<[u8]>, NameEntry>,
}

/// The outcome of a lookup of a lower-case wire name.
#[derive(Debug)]
pub enum Lookup<'a> {
    /// A complete response template.
    Answer(&'a [u8]),
    /// The name exists without that type: NOERROR, empty answer, SOA of `zone`.
    NoData(&'a Zone),
    /// The name does not exist in `zone`.
    NxDomain(&'a Zone),
    /// Not in any zone of the table.
    Outside,
}

impl DnsTable {
    pub fn lookup(&self, name: &[u8], qtype: u16) -> Lookup<'_> {
        if let Some(e) = self.names.get(name) {
            return match e.answer(qtype) {
                Some(t) => Lookup::Answer(t),
                None => Lookup::NoData(&self.zones[e.zone]),
            };
        }
        match self.zone_of(name) {
            Some(z) => Lookup::NxDomain(z),
            None => Lookup::Outside,
        }
    }

    /// The zone whose apex is a suffix of `name` (on label boundaries).
    pub fn zone_of(&self, name: &[u8]) -> Option<&Zone> {
        self.zones.iter().find(|z| is_subdomain(name, &z.wire))
    }

    /// Builds every answer of `snap`.
    pub fn build(snap: &Snapshot, cfg: &DnsConfig) -> DnsTable {
        TableBuilder::new(cfg.clone()).build(snap)
    }
}

/// True when `name` equals `zone` or lies under it; both lower-case wire names.
pub fn is_subdomain(name: &[u8], zone: &[u8]) -> bool {
    if name.len() < zone.len() || !name.ends_with(zone) {
        return false;
    }
    // The suffix must start on a label boundary: walk the labels of `name`.
    let start = name.len() - zone.len();
    let mut i = 0;
    while i < start {
        i += 1 + usize::from(name[i]);
    }
    i == start
}

fn wire(name: &Name) -> Vec<u8> {
    let mut out = Vec::with_capacity(name.len() + 2);
    let mut enc = BinEncoder::new(&mut out);
    enc.set_name_encoding(NameEncoding::Uncompressed);
    // Emitting a valid name into a Vec cannot fail.
    let _ = name.emit(&mut enc);
    out
}

fn join(label: &str, parent: &Name) -> Option<Name> {
    Name::from_ascii(label).ok()?.append_domain(parent).ok()
}

/// Answer records of one (name, type) and the additional records that go with them.
type RecordSet = (Vec<Record>, Vec<Record>);

/// Collects records per name and type, then encodes them.
struct Builder<'c> {
    cfg: &'c DnsConfig,
    svc_zone: Name,
    /// Lower-case wire name -> (name, type -> records + additional records). Keyed by
    /// bytes: hashing them is far cheaper than ordering `Name`s label by label.
    records: HashMap<Vec<u8>, (Name, BTreeMap<RecordType, RecordSet>)>,
    cnames: HashMap<Vec<u8>, (Name, Name)>,
    /// Names that exist though they hold no records (empty non-terminals are added later).
    exists: HashSet<Vec<u8>>,
}

impl<'c> Builder<'c> {
    fn new(cfg: &'c DnsConfig) -> Self {
        let svc_zone = join("svc", &cfg.zone).unwrap_or_else(|| cfg.zone.clone());
        Self {
            cfg,
            svc_zone,
            records: HashMap::new(),
            cnames: HashMap::new(),
            exists: HashSet::new(),
        }
    }

    fn slot(&mut self, name: &Name, t: RecordType) -> &mut RecordSet {
        self.records
            .entry(wire(name))
            .or_insert_with(|| (name.clone(), BTreeMap::new()))
            .1
            .entry(t)
            .or_default()
    }

    fn add(&mut self, name: &Name, rdata: RData) {
        let rec = Record::from_rdata(name.clone(), self.cfg.ttl, rdata);
        self.slot(name, rec.record_type()).0.push(rec);
    }

    fn add_address(&mut self, name: &Name, ip: IpAddr) {
        match ip {
            IpAddr::V4(v4) => self.add(name, RData::A(A(v4))),
            IpAddr::V6(v6) => self.add(name, RData::AAAA(AAAA(v6))),
        }
    }

    fn soa(&self, apex: &Name) -> Record {
        let mname = join("ns.dns", &self.cfg.zone).unwrap_or_else(|| self.cfg.zone.clone());
        let rname = join("hostmaster", &self.cfg.zone).unwrap_or_else(|| self.cfg.zone.clone());
        let ttl = self.cfg.ttl;
        // Serial: constant; nothing transfers this zone.
        Record::from_rdata(
            apex.clone(),
            ttl,
            RData::SOA(SOA::new(mname, rname, 1, 7200, 1800, 86400, ttl)),
        )
    }

    /// SOA, NS, `ns.dns.<zone>` and `dns-version.<zone>` TXT.
    fn apex(&mut self) {
        let zone = self.cfg.zone.clone();
        let soa = self.soa(&zone);
        self.slot(&zone, RecordType::SOA).0.push(soa);
        let ns_name = join("ns.dns", &zone).unwrap_or_else(|| zone.clone());
        self.add(&zone, RData::NS(NS(ns_name.clone())));
        for ip in self.cfg.ns_addrs.clone() {
            self.add_address(&ns_name, ip);
        }
        self.exists.insert(wire(&ns_name));
        if let Some(v) = join("dns-version", &zone) {
            self.add(&v, RData::TXT(TXT::new(vec!["1.1.0".to_owned()])));
        }
        self.exists.insert(wire(&self.svc_zone));
    }

    fn service(&mut self, svc: &Service) {
        let def = &svc.def;
        let Some(base) = join(
            &format!("{}.{}", def.key.name, def.key.namespace),
            &self.svc_zone,
        ) else {
            return;
        };
        if def.type_ == ServiceType::ExternalName {
            if let Some(target) = def.external_name.as_deref().and_then(|t| {
                let mut n = Name::from_ascii(t).ok()?.to_lowercase();
                n.set_fqdn(true);
                Some(n)
            }) {
                self.cnames.insert(wire(&base), (base, target));
            }
            return;
        }
        // Endpoints DNS publishes: ready ones, or all when the Service says so.
        let published: Vec<&Endpoint> = svc
            .endpoints
            .iter()
            .filter(|e| e.conditions.ready || def.publish_not_ready_addresses)
            .collect();
        if def.headless {
            if published.is_empty() {
                // No ready endpoint: the name does not exist (NXDOMAIN).
                return;
            }
            self.headless(svc, &base, &published);
        } else {
            for &ip in &def.cluster_ips {
                self.add_address(&base, ip);
                self.add(&Name::from(ip), RData::PTR(PTR(base.clone())));
            }
            self.exists.insert(wire(&base));
            for p in &def.ports {
                let Some(name) = &p.name else { continue };
                let Some(srv_name) = srv_name(name, p.protocol, &base) else {
                    continue;
                };
                let additional = self.addresses_of(&base);
                self.add_srv(
                    &srv_name,
                    Some(SRV::new(0, 100, p.port, base.clone())),
                    additional,
                );
            }
        }
    }

    fn headless(&mut self, svc: &Service, base: &Name, published: &[&Endpoint]) {
        let def = &svc.def;
        // An endpoint may come twice (in two slices while they are being replaced) and a
        // dual-stack Pod is one hostname with two addresses: every record goes in once.
        let mut seen = BTreeSet::new();
        let mut seen_hosts = HashSet::new();
        let mut seen_srvs = HashSet::new();
        for e in published {
            if seen.insert(e.ip) {
                self.add_address(base, e.ip);
            }
            // An endpoint without a hostname is named after its address, as CoreDNS does.
            let host = e
                .hostname
                .as_deref()
                .map(str::to_owned)
                .unwrap_or_else(|| dashed(e.ip));
            let Some(host_name) = join(&host, base) else {
                continue;
            };
            if !seen_hosts.insert((host.clone(), e.ip)) {
                continue;
            }
            self.add_address(&host_name, e.ip);
            self.add(&Name::from(e.ip), RData::PTR(PTR(host_name.clone())));
            for (i, p) in def.ports.iter().enumerate() {
                let Some(pname) = &p.name else { continue };
                let Some(port) = e.port_for(Some(pname), p.protocol) else {
                    continue;
                };
                let Some(srv) = srv_name(pname, p.protocol, base) else {
                    continue;
                };
                let additional = vec![address_record(&host_name, e.ip, self.cfg.ttl)];
                // One SRV per (port, hostname); each address of the host is additional.
                let record = seen_srvs
                    .insert((i, host.clone(), port))
                    .then(|| SRV::new(0, 100, port, host_name.clone()));
                self.add_srv(&srv, record, additional);
            }
        }
    }

    fn addresses_of(&self, name: &Name) -> Vec<Record> {
        let Some((_, types)) = self.records.get(&wire(name)) else {
            return Vec::new();
        };
        [RecordType::A, RecordType::AAAA]
            .iter()
            .filter_map(|t| types.get(t))
            .flat_map(|(r, _)| r.iter().cloned())
            .collect()
    }

    /// Adds the SRV record `srv` (if any) and the addresses of its target.
    fn add_srv(&mut self, name: &Name, srv: Option<SRV>, additional: Vec<Record>) {
        let ttl = self.cfg.ttl;
        let slot = self.slot(name, RecordType::SRV);
        if let Some(srv) = srv {
            slot.0
                .push(Record::from_rdata(name.clone(), ttl, RData::SRV(srv)));
        }
        for a in additional {
            if !slot.1.contains(&a) {
                slot.1.push(a);
            }
        }
    }

    /// SRV weights: an equal share of 100 among the records of one name (CoreDNS's rule).
    fn weigh_srv(&mut self) {
        for (_, types) in self.records.values_mut() {
            if let Some((srvs, _)) = types.get_mut(&RecordType::SRV) {
                let weight = u16::try_from(100 / srvs.len().max(1)).unwrap_or(1).max(1);
                for r in srvs.iter_mut() {
                    if let RData::SRV(s) = r.data.clone() {
                        r.data = RData::SRV(SRV::new(0, weight, s.port, s.target.clone()));
                    }
                }
            }
        }
    }

    /// The encoded answers of one Service (everything but PTRs, which several Services may
    /// share, and an ExternalName's CNAME, whose target may be another Service).
    fn fragment(cfg: &DnsConfig, svc: &Service) -> Fragment {
        let mut b = Builder::new(cfg);
        b.service(svc);
        b.into_fragment()
    }

    fn into_fragment(mut self) -> Fragment {
        self.weigh_srv();
        let cluster = wire(&self.cfg.zone);
        let mut f = Fragment {
            exists: self.exists.into_iter().collect(),
            cname: self.cnames.into_iter().next().map(|(w, (n, t))| (w, n, t)),
            ..Fragment::default()
        };
        for (w, (n, types)) in self.records {
            if is_subdomain(&w, &cluster) {
                let answers = types
                    .into_iter()
                    .map(|(t, (answers, additional))| {
                        (u16::from(t), template(&n, t, answers, additional))
                    })
                    .collect();
                f.entries.push((w.into_boxed_slice(), answers));
            } else {
                for r in types.into_values().flat_map(|(a, _)| a) {
                    if let RData::PTR(PTR(target)) = &r.data {
                        let tpl = template(&n, RecordType::PTR, vec![r.clone()], Vec::new());
                        f.ptrs
                            .push((w.clone().into_boxed_slice(), n.clone(), target.clone(), tpl));
                    }
                }
            }
        }
        f
    }
}

/// The answers of one name: (query type, response template).
pub type Answers = Vec<(u16, Template)>;

/// What one Service contributes to the table, kept between builds.
#[derive(Debug, Default)]
struct Fragment {
    /// Names the Service owns (all in the cluster zone), with their encoded answers.
    entries: Vec<(Box<[u8]>, Answers)>,
    /// Names that exist without records.
    exists: Vec<Vec<u8>>,
    /// Reverse names of the Service's addresses: (wire, name, target, the answer when no
    /// other Service shares the address).
    ptrs: Vec<(Box<[u8]>, Name, Name, Template)>,
    /// ExternalName: (wire, name, target).
    cname: Option<(Vec<u8>, Name, Name)>,
}

/// Builds tables snapshot after snapshot, re-encoding only the Services that changed (an
/// unchanged Service is the same `Arc` in the next snapshot) and PTR names whose targets
/// changed.
#[derive(Debug)]
pub struct TableBuilder {
    cfg: DnsConfig,
    zones: Vec<(ZoneKind, Name)>,
    fragments: HashMap<ServiceKey, (Arc<Service>, Arc<Fragment>)>,
}

impl TableBuilder {
    pub fn new(cfg: DnsConfig) -> Self {
        let zones = vec![
            (ZoneKind::Cluster, cfg.zone.clone()),
            (
                ZoneKind::ReverseV4,
                Name::from_ascii("in-addr.arpa.").unwrap_or_default(),
            ),
            (
                ZoneKind::ReverseV6,
                Name::from_ascii("ip6.arpa.").unwrap_or_default(),
            ),
        ];
        Self {
            cfg,
            zones,
            fragments: HashMap::new(),
        }
    }

    pub fn build(&mut self, snap: &Snapshot) -> DnsTable {
        self.build_services(snap.version, snap.services().len(), snap.services().iter())
    }

    /// Builds the answers of what `src` lets DNS answer ([`DnsSource::visible`]); the
    /// table's version is the programmed snapshot's.
    pub fn build_source(&mut self, src: &DnsSource) -> DnsTable {
        let n = src.programmed.services().len();
        self.build_services(src.programmed.version, n, src.visible())
    }

    fn build_services<'a>(
        &mut self,
        version: u64,
        count: usize,
        services: impl Iterator<Item = (&'a ServiceKey, &'a Arc<Service>)>,
    ) -> DnsTable {
        let apex = Builder::new(&self.cfg);
        let zones: Vec<Zone> = self
            .zones
            .iter()
            .map(|(kind, name)| {
                let full = wire_record(&apex.soa(name));
                let w = wire(name);
                Zone {
                    kind: *kind,
                    soa_tail: full[w.len()..].to_vec(),
                    wire: w,
                }
            })
            .collect();
        let zone_index = |w: &[u8]| zones.iter().position(|z| is_subdomain(w, &z.wire));
        let mut names: HashMap<Box<[u8]>, NameEntry> = HashMap::new();
        let ptr_zone = |w: &[u8]| zone_index(w).unwrap_or(0);

        let mut apex = apex;
        apex.apex();
        let apex = apex.into_fragment();
        let mut fragments = HashMap::with_capacity(count);
        // Reverse names several Services contribute to: merged below.
        let mut shared_ptrs: HashMap<Box<[u8]>, (Name, Vec<Name>)> = HashMap::new();
        let mut cnames = Vec::new();
        let mut add = |f: &Fragment, names: &mut HashMap<Box<[u8]>, NameEntry>| {
            for (w, answers) in &f.entries {
                names.insert(
                    w.clone(),
                    NameEntry {
                        zone: 0,
                        answers: answers.clone(),
                        cname: None,
                    },
                );
            }
            for w in &f.exists {
                names.entry(w.as_slice().into()).or_default();
            }
            for (w, n, target, tpl) in &f.ptrs {
                if let Some(shared) = shared_ptrs.get_mut(w) {
                    shared.1.push(target.clone());
                    continue;
                }
                let ptr = u16::from(RecordType::PTR);
                match names.get(w) {
                    Some(first) => {
                        // A second Service at this address: remember both targets.
                        let mut targets: Vec<Name> = first
                            .answers
                            .iter()
                            .filter_map(|(_, t)| Message::from_vec(t).ok())
                            .flat_map(|m| m.answers)
                            .filter_map(|r| match r.data {
                                RData::PTR(PTR(t)) => Some(t),
                                _ => None,
                            })
                            .collect();
                        targets.push(target.clone());
                        shared_ptrs.insert(w.clone(), (n.clone(), targets));
                    }
                    None => {
                        names.insert(
                            w.clone(),
                            NameEntry {
                                zone: ptr_zone(w),
                                answers: vec![(ptr, Arc::clone(tpl))],
                                cname: None,
                            },
                        );
                    }
                }
            }
            if let Some(c) = &f.cname {
                cnames.push(c.clone());
            }
        };
        add(&apex, &mut names);
        for (key, svc) in services {
            let frag = match self.fragments.get(key) {
                Some((old, f)) if Arc::ptr_eq(old, svc) => Arc::clone(f),
                _ => Arc::new(Builder::fragment(&self.cfg, svc)),
            };
            add(&frag, &mut names);
            fragments.insert(key.clone(), (Arc::clone(svc), frag));
        }
        self.fragments = fragments;

        for (w, (n, targets)) in shared_ptrs {
            let answers = targets
                .into_iter()
                .map(|t| Record::from_rdata(n.clone(), self.cfg.ttl, RData::PTR(PTR(t))))
                .collect();
            let tpl = template(&n, RecordType::PTR, answers, Vec::new());
            let zone = ptr_zone(&w);
            names.insert(
                w,
                NameEntry {
                    zone,
                    answers: vec![(u16::from(RecordType::PTR), tpl)],
                    cname: None,
                },
            );
        }

        for (w, n, target) in cnames {
            let entry = self.cname_entry(&n, &target, &names);
            names.insert(w.into_boxed_slice(), entry);
        }

        // Every ancestor of a name inside a zone exists (empty non-terminals: NODATA).
        let keys: Vec<Box<[u8]>> = names.keys().cloned().collect();
        for w in keys {
            let mut at = 1 + usize::from(w.first().copied().unwrap_or(0));
            while at < w.len() {
                let suffix = &w[at..];
                if names.contains_key(suffix) {
                    break;
                }
                let Some(zone) = zone_index(suffix) else {
                    break;
                };
                names.insert(
                    suffix.into(),
                    NameEntry {
                        zone,
                        ..NameEntry::default()
                    },
                );
                at += 1 + usize::from(w[at]);
            }
        }
        DnsTable {
            version,
            zones,
            names,
        }
    }

    /// An ExternalName's entry: the CNAME for every type; for A/AAAA, a target inside the
    /// cluster zone is chased and its addresses follow.
    fn cname_entry(
        &self,
        n: &Name,
        target: &Name,
        names: &HashMap<Box<[u8]>, NameEntry>,
    ) -> NameEntry {
        let ttl = self.cfg.ttl;
        let cname = Record::from_rdata(n.clone(), ttl, RData::CNAME(CNAME(target.clone())));
        let mut entry = NameEntry::default();
        let chase = names.get(wire(target).as_slice());
        for t in [RecordType::A, RecordType::AAAA] {
            let chased: Vec<Record> = chase
                .and_then(|e| e.answers.iter().find(|(q, _)| *q == u16::from(t)))
                .and_then(|(_, tpl)| Message::from_vec(tpl).ok())
                .map(|m| m.answers)
                .unwrap_or_default();
            if !chased.is_empty() {
                let mut answers = vec![cname.clone()];
                answers.extend(chased);
                entry
                    .answers
                    .push((u16::from(t), template(n, t, answers, Vec::new())));
            }
        }
        entry.cname = Some(template(n, RecordType::CNAME, vec![cname], Vec::new()));
        entry
    }
}

fn srv_name(port: &str, proto: Protocol, base: &Name) -> Option<Name> {
    let proto = match proto {
        Protocol::Tcp => "_tcp",
        Protocol::Udp => "_udp",
        Protocol::Sctp => "_sctp",
    };
    join(&format!("_{}.{proto}", port.to_ascii_lowercase()), base)
}

fn address_record(name: &Name, ip: IpAddr, ttl: u32) -> Record {
    let data = match ip {
        IpAddr::V4(v4) => RData::A(A(v4)),
        IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
    };
    Record::from_rdata(name.clone(), ttl, data)
}

/// `10-244-1-20` / `fd00--1`: CoreDNS's name for an endpoint without a hostname.
pub fn dashed(ip: IpAddr) -> String {
    let s = ip.to_string().replace(['.', ':'], "-");
    if s.ends_with('-') { format!("{s}0") } else { s }
}

fn wire_record(r: &Record) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    let mut enc = BinEncoder::new(&mut out);
    enc.set_name_encoding(NameEncoding::Uncompressed);
    let _ = r.emit(&mut enc);
    out
}

/// A complete response message, shared between tables.
pub type Template = Arc<[u8]>;

/// A complete NOERROR response for a lower-case question `name`/`qtype`, id 0, AA set.
fn template(
    name: &Name,
    qtype: RecordType,
    answers: Vec<Record>,
    additional: Vec<Record>,
) -> Template {
    let mut m = Message::new(0, MessageType::Response, OpCode::Query);
    m.metadata.authoritative = true;
    m.add_query(Query::query(name.clone(), qtype));
    m.add_answers(answers);
    m.add_additionals(additional);
    Arc::from(m.to_vec().unwrap_or_default())
}
