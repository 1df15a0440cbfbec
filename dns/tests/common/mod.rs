//! Helpers shared by the dns crate's tests: a table built from manifests written into a temp
//! dir (through the config crate's Loader, as the daemon does), and queries run through
//! `wire::respond` and decoded with hickory-proto.

#![allow(
    dead_code,
    unreachable_pub,
    reason = "each test binary uses a different subset of the helpers"
)]

use std::path::Path;
use std::sync::Arc;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use svcplane_config::{Loader, ParseOptions, Snapshot};
use svcplane_dns::wire::{self, Outcome, Policy, Transport};
use svcplane_dns::{DnsConfig, DnsTable};

pub const FIXTURE: &str = include_str!("../fixtures/cluster.yaml");
pub const ZONE: &str = "cluster.local.";

/// Loads `files` (name, YAML) as the daemon would and returns the snapshot.
pub fn snapshot(files: &[(&str, &str)]) -> Arc<Snapshot> {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).expect("write manifest");
    }
    load(dir.path())
}

pub fn load(dir: &Path) -> Arc<Snapshot> {
    let mut loader = Loader::new(dir, ParseOptions::default());
    let (snap, _) = loader.reload().expect("load manifests");
    let snap = snap.unwrap_or_else(|| loader.snapshot().clone());
    assert!(
        snap.diagnostics.errors.is_empty(),
        "fixture errors: {:?}",
        snap.diagnostics.errors
    );
    snap
}

pub fn table_of(files: &[(&str, &str)]) -> DnsTable {
    let cfg = DnsConfig::new("cluster.local", 5).expect("zone");
    DnsTable::build(&snapshot(files), &cfg)
}

/// The table of `fixtures/cluster.yaml`.
pub fn fixture() -> DnsTable {
    table_of(&[("cluster.yaml", FIXTURE)])
}

pub fn name(s: &str) -> Name {
    Name::from_ascii(s).expect("name")
}

/// A query as a stub resolver sends it: RD set, optionally an OPT record.
pub fn query(id: u16, qname: &str, qtype: RecordType, edns: Option<u16>) -> Vec<u8> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(name(qname), qtype));
    if let Some(size) = edns {
        let mut e = Edns::new();
        e.set_max_payload(size);
        m.set_edns(e);
    }
    m.to_vec().expect("encode query")
}

/// How to send a query through `wire::respond`.
#[derive(Clone, Copy, Debug)]
pub struct Ask {
    pub transport: Transport,
    pub forward: bool,
    pub edns: Option<u16>,
}

impl Default for Ask {
    fn default() -> Self {
        Ask {
            transport: Transport::Udp,
            forward: false,
            edns: None,
        }
    }
}

/// Runs raw bytes through `wire::respond`.
pub fn respond_raw(
    table: Option<&DnsTable>,
    req: &[u8],
    transport: Transport,
    forward: bool,
) -> (Outcome, Vec<u8>) {
    let mut out = Vec::new();
    let mut key = Vec::new();
    let outcome = wire::respond(
        table,
        req,
        transport,
        Policy { forward },
        &mut out,
        &mut key,
    );
    (outcome, out)
}

/// Sends a query for `qname`/`qtype` and decodes the reply (panics unless there is one).
pub fn ask_with(table: Option<&DnsTable>, qname: &str, qtype: RecordType, how: Ask) -> Message {
    let req = query(0x4242, qname, qtype, how.edns);
    let (outcome, out) = respond_raw(table, &req, how.transport, how.forward);
    assert!(
        matches!(outcome, Outcome::Reply(_)),
        "{qname} {qtype}: {outcome:?}"
    );
    let m = Message::from_vec(&out).expect("decode reply");
    assert_eq!(m.metadata.id, 0x4242);
    m
}

pub fn ask(table: &DnsTable, qname: &str, qtype: RecordType) -> Message {
    ask_with(Some(table), qname, qtype, Ask::default())
}

/// The rdata of every answer record of `rtype`, as text, sorted.
pub fn answers_of(m: &Message, rtype: RecordType) -> Vec<String> {
    let mut v: Vec<String> = m
        .answers
        .iter()
        .filter(|r| r.record_type() == rtype)
        .map(|r| r.data.to_string())
        .collect();
    v.sort();
    v
}

/// The single SOA record of the authority section (negative answers).
pub fn authority_soa(m: &Message) -> &Record {
    let soas: Vec<&Record> = m
        .authorities
        .iter()
        .filter(|r| matches!(r.data, RData::SOA(_)))
        .collect();
    assert_eq!(soas.len(), 1, "authority: {:?}", m.authorities);
    soas[0]
}
