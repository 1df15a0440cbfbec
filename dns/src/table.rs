//! The DnsTable: every answer of the cluster zone, encoded once per snapshot.
//!
//! For each (name, type) the table holds a complete response message (built with
//! hickory-proto for a lower-case question, id 0). A query costs a hash lookup, a copy and a
//! patch of the id, flags and question bytes (which keeps the client's letter case: answer
//! owner names point at the question). Names that exist without the asked type answer NODATA,
//! names under a zone that do not exist NXDOMAIN; both carry the zone's SOA.
//!
//! Records follow the Kubernetes DNS-Based Service Discovery specification 1.1.0.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, NS, PTR, SOA, SRV, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinEncodable, BinEncoder, NameEncoding};
use svcplane_config::{Endpoint, Protocol, Service, ServiceType, Snapshot};

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
    pub answers: Vec<(u16, Box<[u8]>)>,
    /// ExternalName: the CNAME answer for every type without its own entry.
    pub cname: Option<Box<[u8]>>,
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
        let mut b = Builder::new(cfg);
        b.apex();
        for svc in snap.services().values() {
            b.service(svc);
        }
        b.finish(snap.version)
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
    /// name -> type -> records (+ additional records for SRV answers).
    records: BTreeMap<Name, BTreeMap<RecordType, RecordSet>>,
    cnames: BTreeMap<Name, Name>,
    /// Names that exist though they hold no records (empty non-terminals are added later).
    exists: BTreeSet<Name>,
}

impl<'c> Builder<'c> {
    fn new(cfg: &'c DnsConfig) -> Self {
        let svc_zone = join("svc", &cfg.zone).unwrap_or_else(|| cfg.zone.clone());
        Self {
            cfg,
            svc_zone,
            records: BTreeMap::new(),
            cnames: BTreeMap::new(),
            exists: BTreeSet::new(),
        }
    }

    fn add(&mut self, name: &Name, rdata: RData) {
        let rec = Record::from_rdata(name.clone(), self.cfg.ttl, rdata);
        self.records
            .entry(name.clone())
            .or_default()
            .entry(rec.record_type())
            .or_default()
            .0
            .push(rec);
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
        self.records
            .entry(zone.clone())
            .or_default()
            .entry(RecordType::SOA)
            .or_default()
            .0
            .push(soa);
        let ns_name = join("ns.dns", &zone).unwrap_or_else(|| zone.clone());
        self.add(&zone, RData::NS(NS(ns_name.clone())));
        for ip in self.cfg.ns_addrs.clone() {
            self.add_address(&ns_name, ip);
        }
        self.exists.insert(ns_name);
        if let Some(v) = join("dns-version", &zone) {
            self.add(&v, RData::TXT(TXT::new(vec!["1.1.0".to_owned()])));
        }
        self.exists.insert(self.svc_zone.clone());
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
                self.cnames.insert(base, target);
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
            self.exists.insert(base.clone());
            for p in &def.ports {
                let Some(name) = &p.name else { continue };
                let Some(srv_name) = srv_name(name, p.protocol, &base) else {
                    continue;
                };
                let additional = self.addresses_of(&base);
                self.add_srv(
                    &srv_name,
                    SRV::new(0, 100, p.port, base.clone()),
                    additional,
                );
            }
        }
    }

    fn headless(&mut self, svc: &Service, base: &Name, published: &[&Endpoint]) {
        let def = &svc.def;
        let mut seen = BTreeSet::new();
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
            self.add_address(&host_name, e.ip);
            self.add(&Name::from(e.ip), RData::PTR(PTR(host_name.clone())));
            for p in &def.ports {
                let Some(pname) = &p.name else { continue };
                let Some(port) = e.port_for(Some(pname), p.protocol) else {
                    continue;
                };
                let Some(srv) = srv_name(pname, p.protocol, base) else {
                    continue;
                };
                let additional = vec![address_record(&host_name, e.ip, self.cfg.ttl)];
                self.add_srv(&srv, SRV::new(0, 100, port, host_name.clone()), additional);
            }
        }
    }

    fn addresses_of(&self, name: &Name) -> Vec<Record> {
        let Some(types) = self.records.get(name) else {
            return Vec::new();
        };
        [RecordType::A, RecordType::AAAA]
            .iter()
            .filter_map(|t| types.get(t))
            .flat_map(|(r, _)| r.iter().cloned())
            .collect()
    }

    fn add_srv(&mut self, name: &Name, srv: SRV, additional: Vec<Record>) {
        let rec = Record::from_rdata(name.clone(), self.cfg.ttl, RData::SRV(srv));
        let slot = self
            .records
            .entry(name.clone())
            .or_default()
            .entry(RecordType::SRV)
            .or_default();
        slot.0.push(rec);
        for a in additional {
            if !slot.1.contains(&a) {
                slot.1.push(a);
            }
        }
    }

    fn finish(mut self, version: u64) -> DnsTable {
        // SRV weights: an equal share of 100 among the records of one name (CoreDNS's rule).
        for types in self.records.values_mut() {
            if let Some((srvs, _)) = types.get_mut(&RecordType::SRV) {
                let weight = u16::try_from(100 / srvs.len().max(1)).unwrap_or(1).max(1);
                for r in srvs.iter_mut() {
                    if let RData::SRV(s) = r.data.clone() {
                        r.data = RData::SRV(SRV::new(0, weight, s.port, s.target.clone()));
                    }
                }
            }
        }
        let zones_names = [
            (ZoneKind::Cluster, self.cfg.zone.clone()),
            (
                ZoneKind::ReverseV4,
                Name::from_ascii("in-addr.arpa.").unwrap_or_default(),
            ),
            (
                ZoneKind::ReverseV6,
                Name::from_ascii("ip6.arpa.").unwrap_or_default(),
            ),
        ];
        let zones: Vec<Zone> = zones_names
            .iter()
            .map(|(kind, apex)| {
                let soa = self.soa(apex);
                let full = wire_record(&soa);
                let owner_len = wire(apex).len();
                Zone {
                    kind: *kind,
                    wire: wire(apex),
                    soa_tail: full[owner_len..].to_vec(),
                }
            })
            .collect();
        let zone_index =
            |wire_name: &[u8]| zones.iter().position(|z| is_subdomain(wire_name, &z.wire));
        // Every ancestor of a name inside a zone exists (empty non-terminals: NODATA).
        let mut all: BTreeSet<Name> = self.records.keys().cloned().collect();
        all.extend(self.cnames.keys().cloned());
        all.extend(self.exists.iter().cloned());
        let mut with_parents = BTreeSet::new();
        for n in &all {
            let mut cur = n.clone();
            loop {
                let w = wire(&cur);
                if zone_index(&w).is_none() || !with_parents.insert(cur.clone()) {
                    break;
                }
                if cur.num_labels() == 0 {
                    break;
                }
                cur = cur.base_name();
            }
        }
        let mut names: HashMap<Box<[u8]>, NameEntry> = HashMap::with_capacity(with_parents.len());
        for n in with_parents {
            let w = wire(&n);
            let Some(zone) = zone_index(&w) else { continue };
            let mut entry = NameEntry {
                zone,
                ..NameEntry::default()
            };
            if let Some(target) = self.cnames.get(&n) {
                let cname = Record::from_rdata(
                    n.clone(),
                    self.cfg.ttl,
                    RData::CNAME(CNAME(target.clone())),
                );
                // A target inside the cluster zone is chased here: its addresses follow.
                for t in [RecordType::A, RecordType::AAAA] {
                    let chased: Vec<Record> = self
                        .records
                        .get(target)
                        .and_then(|types| types.get(&t))
                        .map(|(r, _)| r.clone())
                        .unwrap_or_default();
                    if !chased.is_empty() {
                        let mut answers = vec![cname.clone()];
                        answers.extend(chased);
                        entry
                            .answers
                            .push((u16::from(t), template(&n, t, answers, Vec::new())));
                    }
                }
                entry.cname = Some(template(&n, RecordType::CNAME, vec![cname], Vec::new()));
            }
            if let Some(types) = self.records.get(&n) {
                for (t, (answers, additional)) in types {
                    entry.answers.push((
                        u16::from(*t),
                        template(&n, *t, answers.clone(), additional.clone()),
                    ));
                }
            }
            names.insert(w.into_boxed_slice(), entry);
        }
        DnsTable {
            version,
            zones,
            names,
        }
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

/// A complete NOERROR response for a lower-case question `name`/`qtype`, id 0, AA set.
fn template(
    name: &Name,
    qtype: RecordType,
    answers: Vec<Record>,
    additional: Vec<Record>,
) -> Box<[u8]> {
    let mut m = Message::new(0, MessageType::Response, OpCode::Query);
    m.metadata.authoritative = true;
    m.add_query(Query::query(name.clone(), qtype));
    m.add_answers(answers);
    m.add_additionals(additional);
    m.to_vec().unwrap_or_default().into_boxed_slice()
}
