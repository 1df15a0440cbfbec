//! The DnsTable: every answer of the cluster zone, encoded once per snapshot.
//!
//! For each (name, type) the builder encodes a complete response message (with hickory-proto,
//! for a lower-case question, id 0). The table keeps each one without its question section
//! (an [`Answer`]: section counts and the bytes after the question) in a flat name index
//! (`index.rs`) keyed by the lower-case wire name, so that a query costs one hash probe,
//! about one cache line of table outside the caches, and three copies: header, the client's
//! own question (which keeps its letter case: answer owner names point at it), the sections.
//! Names that exist without the asked type answer NODATA, names under a zone that do not
//! exist NXDOMAIN; both carry the zone's SOA.
//!
//! Records follow the Kubernetes DNS-Based Service Discovery specification 1.1.0.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;

use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, NS, PTR, SOA, SRV, TXT};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinEncodable, BinEncoder, NameEncoding};
use std::sync::Arc;

use crate::gate::DnsSource;
use svcplane_config::{Endpoint, Protocol, Service, ServiceKey, ServiceType, Snapshot};

use crate::index::{IndexBuilder, NameIndex};

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

/// Answers of one name while the table is built.
#[derive(Debug, Default)]
struct NameEntry {
    zone: usize,
    /// (query type, complete response template).
    answers: Answers,
    /// ExternalName: the CNAME answer for every type without its own entry.
    cname: Option<Template>,
}

/// Everything DNS answers for one snapshot. Immutable; swapped whole.
#[derive(Debug)]
pub struct DnsTable {
    pub version: u64,
    pub zones: Vec<Zone>,
    /// Every name with its answers (see [`Entry`] for a record's layout).
    names: NameIndex,
}

/// The outcome of a lookup of a lower-case wire name.
#[derive(Debug)]
pub enum Lookup<'a> {
    /// A prebuilt answer.
    Answer(Answer<'a>),
    /// The name exists without that type: NOERROR, empty answer, SOA of `zone`.
    NoData(&'a Zone),
    /// The name does not exist in `zone`.
    NxDomain(&'a Zone),
    /// Not in any zone of the table.
    Outside,
}

/// A prebuilt NOERROR response without its question: the section counts and the bytes after
/// the question. Name pointers in it assume the question starts at offset 12, which holds for
/// any spelling of the name (same length, same labels), so the client's question is copied
/// in as asked.
#[derive(Clone, Copy, Debug)]
pub struct Answer<'a> {
    /// ANCOUNT, NSCOUNT, ARCOUNT (big endian); empty when the builder had no usable
    /// message (hickory-proto failed to encode it).
    counts: &'a [u8],
    sections: &'a [u8],
}

/// One name of the table: a view of its record in the index.
///
/// Record value layout: zone index (1 byte), 1 if the name is an ExternalName's (its CNAME
/// answer comes first), then per answer: query type (u16), length (u16, little endian),
/// ANCOUNT/NSCOUNT/ARCOUNT (6 bytes), the sections after the question.
#[derive(Clone, Copy, Debug)]
pub struct Entry<'a> {
    zone: usize,
    cname: bool,
    /// The answers' bytes, CNAME first.
    answers: &'a [u8],
}

impl DnsTable {
    pub fn lookup(&self, name: &[u8], qtype: u16) -> Lookup<'_> {
        if let Some(e) = self.get(name) {
            return match (e.answer(qtype), self.zones.get(e.zone)) {
                (Some(a), _) => Lookup::Answer(a),
                (None, Some(z)) => Lookup::NoData(z),
                (None, None) => Lookup::Outside,
            };
        }
        match self.zone_of(name) {
            Some(z) => Lookup::NxDomain(z),
            None => Lookup::Outside,
        }
    }

    /// The entry of a lower-case wire name.
    pub fn get(&self, name: &[u8]) -> Option<Entry<'_>> {
        Entry::decode(self.names.get(name)?)
    }

    /// Where the index lookup of `name` (lower-case wire form) starts; see [`DnsTable::touch`].
    pub fn first_slot_of(&self, name: &[u8]) -> usize {
        self.names.first_slot_of(name)
    }

    /// Reads the table lines that the lookups starting at `starts` read first, so that a
    /// batch of queries waits for its cache misses together (see `NameIndex::touch`).
    pub fn touch(&self, starts: &[usize]) {
        self.names.touch(starts);
    }

    /// Every name of the table (lower-case wire form) with its entry, in no useful order.
    pub fn entries(&self) -> impl Iterator<Item = (Vec<u8>, Entry<'_>)> + '_ {
        self.names
            .iter()
            .filter_map(|(n, v)| Some((n, Entry::decode(v)?)))
    }

    /// Number of names.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Bytes of the name index and its arena (templates of the answers included).
    pub fn index_bytes(&self) -> usize {
        self.names.heap_bytes()
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

// === impl Entry ===

impl<'a> Entry<'a> {
    fn decode(value: &'a [u8]) -> Option<Self> {
        let (&zone, rest) = value.split_first()?;
        let (&cname, answers) = rest.split_first()?;
        Some(Self {
            zone: usize::from(zone),
            cname: cname != 0,
            answers,
        })
    }

    /// Index into [`DnsTable::zones`].
    pub fn zone(&self) -> usize {
        self.zone
    }

    /// Every (type, answer) stored, the CNAME fallback first.
    fn all(&self) -> impl Iterator<Item = (u16, Answer<'a>)> + use<'a> {
        let mut rest = self.answers;
        std::iter::from_fn(move || {
            let head = rest.get(..4)?;
            let qtype = u16::from_le_bytes([head[0], head[1]]);
            let len = usize::from(u16::from_le_bytes([head[2], head[3]]));
            let body = rest.get(4..4 + len)?;
            rest = &rest[4 + len..];
            let (counts, sections) = body.split_at(body.len().min(6));
            Some((qtype, Answer { counts, sections }))
        })
    }

    /// The answers of the types the name has, in table order.
    pub fn answers(&self) -> impl Iterator<Item = (u16, Answer<'a>)> + use<'a> {
        self.all().skip(usize::from(self.cname))
    }

    /// ExternalName: the CNAME answer for every type without its own answer.
    pub fn cname(&self) -> Option<Answer<'a>> {
        self.cname
            .then(|| self.all().next().map(|(_, a)| a))
            .flatten()
    }

    /// The answer to `qtype`: its own, the first one for ANY, else the CNAME if any.
    pub fn answer(&self, qtype: u16) -> Option<Answer<'a>> {
        let own = if qtype == u16::from(RecordType::ANY) {
            self.answers().next()
        } else {
            self.answers().find(|(t, _)| *t == qtype)
        };
        own.map(|(_, a)| a).or_else(|| self.cname())
    }

    /// Appends the record value of `e` (layout above) for the lower-case wire `name`.
    fn encode(name: &[u8], e: &NameEntry, out: &mut Vec<u8>) {
        out.push(u8::try_from(e.zone).unwrap_or(u8::MAX));
        out.push(u8::from(e.cname.is_some()));
        let cname = e.cname.iter().map(|t| (u16::from(RecordType::CNAME), t));
        // The template's question: the name (never compressed: nothing precedes it),
        // type and class.
        let qend = 12 + name.len() + 4;
        for (qtype, t) in cname.chain(e.answers.iter().map(|(q, t)| (*q, t))) {
            out.extend_from_slice(&qtype.to_le_bytes());
            let body = t
                .get(6..12)
                .zip(t.get(qend..))
                .filter(|(c, s)| u16::try_from(c.len() + s.len()).is_ok());
            match body {
                Some((counts, sections)) => {
                    let len = (counts.len() + sections.len()) as u16;
                    out.extend_from_slice(&len.to_le_bytes());
                    out.extend_from_slice(counts);
                    out.extend_from_slice(sections);
                }
                // No usable message: stored empty, answered SERVFAIL.
                None => out.extend_from_slice(&[0, 0]),
            }
        }
    }
}

// === impl Answer ===

impl Answer<'_> {
    /// False when the builder had no usable message for it (hickory-proto failed to encode
    /// it; it truncates oversized ones instead, so this is not expected).
    pub fn is_available(&self) -> bool {
        self.counts.len() == 6
    }

    /// Appends the response to `question` (the request's name, type and class, as asked):
    /// id 0, QR and AA set, the rest of the flags for the caller. Nothing when unavailable.
    pub fn write(&self, question: &[u8], out: &mut Vec<u8>) {
        if !self.is_available() {
            return;
        }
        out.extend_from_slice(&[0, 0, 0x84, 0, 0, 1]);
        out.extend_from_slice(self.counts);
        out.extend_from_slice(question);
        out.extend_from_slice(self.sections);
    }

    /// The complete response to the lower-case wire `name` and `qtype` (class IN), as the
    /// table was built; empty when unavailable.
    pub fn to_message(&self, name: &[u8], qtype: u16) -> Vec<u8> {
        let mut question = name.to_vec();
        question.extend_from_slice(&qtype.to_be_bytes());
        question.extend_from_slice(&u16::from(DNSClass::IN).to_be_bytes());
        let mut out = Vec::new();
        self.write(&question, &mut out);
        out
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
type Answers = Vec<(u16, Template)>;

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
        let (zones, names) = self.build_names(count, services);
        DnsTable {
            version,
            names: index(&zones, &names),
            zones,
        }
    }

    /// The zones and every name with its answers.
    fn build_names<'a>(
        &mut self,
        count: usize,
        services: impl Iterator<Item = (&'a ServiceKey, &'a Arc<Service>)>,
    ) -> (Vec<Zone>, HashMap<Box<[u8]>, NameEntry>) {
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
        (zones, names)
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

/// Lays the names out for the query path, the most asked first: names with addresses (what
/// clients ask for most), other names of the cluster zone with answers (SRV, TXT, apex,
/// CNAME), reverse names, then names that only exist (NODATA for every type). Names added
/// earlier sit closer to their hash's slot, and records too large for a slot lie in the
/// overflow arena in this order, the often-asked ones on fewer pages.
fn index(zones: &[Zone], names: &HashMap<Box<[u8]>, NameEntry>) -> NameIndex {
    let rank = |e: &NameEntry| {
        let address = |t: u16| t == u16::from(RecordType::A) || t == u16::from(RecordType::AAAA);
        let answers = !e.answers.is_empty() || e.cname.is_some();
        if e.answers.iter().any(|(t, _)| address(*t)) {
            0
        } else if answers && e.zone == 0 {
            1
        } else if answers {
            2
        } else {
            3
        }
    };
    let mut order: Vec<(&Box<[u8]>, &NameEntry)> = names.iter().collect();
    order.sort_by_key(|(_, e)| rank(e));
    // Names are stored without their zone's apex.
    let mut index = IndexBuilder::new(zones.iter().map(|z| z.wire.clone()).collect());
    for (w, e) in order {
        if let Err(error) = index.push_with(w, |out| Entry::encode(w, e, out)) {
            tracing::warn!(%error, name = ?String::from_utf8_lossy(w), "dns name left out");
        }
    }
    index.finish()
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
type Template = Arc<[u8]>;

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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

    use super::*;

    const FIXTURE: &str = include_str!("../tests/fixtures/cluster.yaml");
    const EXTERNAL: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: alias, namespace: demo}\n\
        spec: {type: ExternalName, externalName: web.demo.svc.cluster.local}\n";

    fn snapshot() -> Arc<Snapshot> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cluster.yaml"), FIXTURE).unwrap();
        std::fs::write(dir.path().join("alias.yaml"), EXTERNAL).unwrap();
        let mut loader = svcplane_config::Loader::new(dir.path(), Default::default());
        loader.reload().unwrap();
        loader.snapshot().clone()
    }

    /// What the build-time map answers (the rule the index must keep).
    fn model_answer(e: &NameEntry, qtype: u16) -> Option<&Template> {
        let own = if qtype == u16::from(RecordType::ANY) {
            e.answers.first()
        } else {
            e.answers.iter().find(|(t, _)| *t == qtype)
        };
        own.map(|(_, t)| t).or(e.cname.as_ref())
    }

    #[test]
    fn the_index_answers_what_the_builder_built() {
        let cfg = DnsConfig::new("cluster.local", 5).unwrap();
        let snap = snapshot();
        let (zones, names) = TableBuilder::new(cfg.clone())
            .build_names(snap.services().len(), snap.services().iter());
        let table = TableBuilder::new(cfg).build(&snap);
        assert_eq!(zones.len(), table.zones.len());
        assert_eq!(table.len(), names.len());
        assert!(
            names.values().any(|e| e.cname.is_some()),
            "fixture lacks a CNAME"
        );
        let qtypes = [1, 2, 5, 6, 12, 16, 28, 33, 255, 999];
        for (w, e) in &names {
            let got = table.get(w).expect("every name is indexed");
            assert_eq!(got.zone(), e.zone);
            // Stored answers, byte for byte (the question rebuilt from the name).
            let stored: Vec<(u16, Vec<u8>)> = got
                .answers()
                .map(|(t, a)| (t, a.to_message(w, t)))
                .collect();
            let built: Vec<(u16, Vec<u8>)> = e
                .answers
                .iter()
                .map(|(t, tpl)| (*t, tpl.to_vec()))
                .collect();
            assert_eq!(stored, built, "{w:?}");
            let cname = u16::from(RecordType::CNAME);
            assert_eq!(
                got.cname().map(|a| a.to_message(w, cname)),
                e.cname.as_ref().map(|t| t.to_vec())
            );
            for q in qtypes {
                match (table.lookup(w, q), model_answer(e, q)) {
                    (Lookup::Answer(a), Some(tpl)) => {
                        // Same sections; the question is the one asked.
                        let mut want = tpl.to_vec();
                        let qt = 12 + w.len();
                        want[qt..qt + 2].copy_from_slice(&q.to_be_bytes());
                        assert_eq!(a.to_message(w, q), want, "{w:?} {q}");
                    }
                    (Lookup::NoData(z), None) => assert!(std::ptr::eq(z, &table.zones[e.zone])),
                    (l, m) => panic!("{w:?} {q}: index {l:?}, builder {m:?}"),
                }
            }
        }
    }

    #[test]
    fn names_not_in_the_table_are_nxdomain_in_a_zone_and_outside_elsewhere() {
        let cfg = DnsConfig::new("cluster.local", 5).unwrap();
        let table = TableBuilder::new(cfg).build(&snapshot());
        let name = |s: &str| wire(&Name::from_ascii(s).unwrap());
        let nx = name("nope.demo.svc.cluster.local.");
        assert!(matches!(table.lookup(&nx, 1), Lookup::NxDomain(z) if z.kind == ZoneKind::Cluster));
        assert!(table.get(&nx).is_none());
        let ptr = name("9.9.9.10.in-addr.arpa.");
        assert!(
            matches!(table.lookup(&ptr, 12), Lookup::NxDomain(z) if z.kind == ZoneKind::ReverseV4)
        );
        assert!(matches!(
            table.lookup(&name("example.com."), 1),
            Lookup::Outside
        ));
        // Lookups take the lower-case form: other spellings are the caller's to fold.
        assert!(matches!(
            table.lookup(&name("web.demo.svc.cluster.local."), 1),
            Lookup::Answer(_)
        ));
        assert!(!matches!(
            table.lookup(&name("WEB.demo.svc.cluster.local."), 1),
            Lookup::Answer(_)
        ));
    }

    #[test]
    fn an_empty_snapshot_has_only_the_apex_names() {
        let cfg = DnsConfig::new("cluster.local", 5).unwrap();
        let table = TableBuilder::new(cfg).build(&Snapshot::default());
        let names: BTreeSet<Vec<u8>> = table.entries().map(|(n, _)| n).collect();
        assert_eq!(names.len(), table.len());
        assert!(names.contains(&wire(&Name::from_ascii("cluster.local.").unwrap())));
        assert!(!table.is_empty());
    }

    #[test]
    fn an_answer_that_could_not_be_encoded_is_servfail() {
        use crate::wire::{self, Outcome, Policy, Transport};
        let cfg = DnsConfig::new("cluster.local", 5).unwrap();
        let (zones, mut names) = TableBuilder::new(cfg).build_names(0, std::iter::empty());
        let w = wire(&Name::from_ascii("x.cluster.local.").unwrap());
        let entry = NameEntry {
            zone: 0,
            answers: vec![(1, Arc::from(Vec::new())), (16, Arc::from(vec![0; 8]))],
            cname: None,
        };
        names.insert(w.clone().into_boxed_slice(), entry);
        let table = DnsTable {
            version: 1,
            names: index(&zones, &names),
            zones,
        };
        for qtype in [1u16, 16] {
            let Lookup::Answer(a) = table.lookup(&w, qtype) else {
                panic!("{qtype}: no answer");
            };
            assert!(!a.is_available());
            let mut req = vec![0x12, 0x34, 0x01, 0, 0, 1, 0, 0, 0, 0, 0, 0];
            req.extend_from_slice(&w);
            req.extend_from_slice(&qtype.to_be_bytes());
            req.extend_from_slice(&[0, 1]);
            let (mut out, mut key) = (Vec::new(), Vec::new());
            let policy = Policy { forward: false };
            let outcome = wire::respond(
                Some(&table),
                &req,
                Transport::Udp,
                policy,
                &mut out,
                &mut key,
            );
            assert_eq!(
                outcome,
                Outcome::Reply(hickory_proto::op::ResponseCode::ServFail)
            );
            let m = Message::from_vec(&out).unwrap();
            assert_eq!(m.metadata.id, 0x1234);
            assert!(m.answers.is_empty());
        }
    }
}
