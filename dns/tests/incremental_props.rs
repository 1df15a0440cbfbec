//! Property test of `TableBuilder` (complementing the fixed sequence in `incremental.rs`):
//! whatever random sequence of changes it sees, its table answers exactly as a table built
//! from scratch.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests panic with context"
)]

mod common;

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::Path;

use hickory_proto::op::Message;
use hickory_proto::rr::RecordType;
use proptest::prelude::*;
use svcplane_dns::table::{Lookup, TableBuilder};
use svcplane_dns::{DnsConfig, DnsTable};

const SERVICES: usize = 5;

/// What one Service file holds at one step.
#[derive(Clone, Debug)]
enum Variant {
    Absent,
    /// ClusterIP `10.96.<i>.<last>`, with a named port or an unnamed one.
    ClusterIp {
        last: u8,
        named: bool,
    },
    /// Headless with endpoints from a small shared pool (so PTRs are shared between
    /// Services): (pool index, has a hostname, ready).
    Headless(Vec<(u8, bool, bool)>),
    /// ExternalName to Service `s<j>` of the pool, or outside the cluster.
    External(Option<usize>),
}

fn variant() -> impl Strategy<Value = Variant> {
    prop_oneof![
        Just(Variant::Absent),
        (1u8..4, any::<bool>()).prop_map(|(last, named)| Variant::ClusterIp { last, named }),
        proptest::collection::vec((0u8..4, any::<bool>(), any::<bool>()), 0..4)
            .prop_map(Variant::Headless),
        proptest::option::of(0..SERVICES).prop_map(Variant::External),
    ]
}

fn manifest(i: usize, v: &Variant) -> Option<String> {
    let meta = format!("apiVersion: v1\nkind: Service\nmetadata: {{name: s{i}, namespace: p}}\n");
    let text = match v {
        Variant::Absent => return None,
        Variant::ClusterIp { last, named } => {
            let port = if *named {
                "{name: http, port: 80}"
            } else {
                "{port: 80}"
            };
            format!("{meta}spec:\n  clusterIP: 10.96.{i}.{last}\n  ports: [{port}]\n")
        }
        Variant::Headless(eps) => {
            let mut y = format!(
                "{meta}spec:\n  clusterIP: None\n  ports: [{{name: http, port: 80}}]\n---\n\
                 apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  \
                 name: s{i}-x\n  namespace: p\n  labels: {{kubernetes.io/service-name: s{i}}}\n\
                 addressType: IPv4\nports: [{{name: http, port: 8080, protocol: TCP}}]\n\
                 endpoints:\n"
            );
            let mut seen = BTreeSet::new();
            for &(ip, host, ready) in eps {
                if !seen.insert(ip) {
                    continue;
                }
                writeln!(
                    y,
                    "- addresses: [\"10.244.0.{}\"]\n  conditions: {{ready: {ready}}}",
                    ip + 1
                )
                .unwrap();
                if host {
                    writeln!(y, "  hostname: h{ip}").unwrap();
                }
            }
            if seen.is_empty() {
                y.push_str("[]\n");
                y = y.replace("endpoints:\n[]", "endpoints: []");
            }
            y
        }
        Variant::External(target) => {
            let target = target.map_or("ext.example.com".to_owned(), |j| {
                format!("s{j}.p.svc.cluster.local")
            });
            format!("{meta}spec:\n  type: ExternalName\n  externalName: {target}\n")
        }
    };
    Some(text)
}

fn write_state(dir: &Path, state: &[Variant]) {
    for (i, v) in state.iter().enumerate() {
        let path = dir.join(format!("s{i}.yaml"));
        match manifest(i, v) {
            Some(text) => {
                // Unchanged content stays untouched: the loader keeps its Arc.
                if std::fs::read_to_string(&path).ok().as_deref() != Some(&text) {
                    std::fs::write(&path, text).unwrap();
                }
            }
            None => {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
}

/// A lookup result in a form that compares equal when the answers mean the same.
fn canonical(name: &[u8], qtype: u16, l: Lookup<'_>) -> String {
    match l {
        Lookup::Answer(a) => {
            let m = Message::from_vec(&a.to_message(name, qtype)).expect("template decodes");
            let section = |rs: &[hickory_proto::rr::Record]| {
                let mut v: Vec<String> = rs
                    .iter()
                    .map(|r| {
                        format!("{} {} {} {}", r.name, r.ttl, r.record_type(), r.data)
                            .to_ascii_lowercase()
                    })
                    .collect();
                v.sort();
                v
            };
            let first = m.answers.first().map(|r| r.record_type());
            format!(
                "answer {:?} first={first:?} {:?} | {:?} | {:?}",
                m.metadata.response_code,
                section(&m.answers),
                section(&m.authorities),
                section(&m.additionals)
            )
        }
        Lookup::NoData(z) => format!("nodata {:?}", z.kind),
        Lookup::NxDomain(z) => format!("nxdomain {:?}", z.kind),
        Lookup::Outside => "outside".to_owned(),
    }
}

fn assert_same(incremental: &DnsTable, fresh: &DnsTable, step: usize) {
    let a: BTreeSet<Vec<u8>> = incremental.entries().map(|(n, _)| n).collect();
    let b: BTreeSet<Vec<u8>> = fresh.entries().map(|(n, _)| n).collect();
    assert_eq!(a, b, "step {step}: names differ");
    let qtypes = [
        RecordType::A,
        RecordType::AAAA,
        RecordType::SRV,
        RecordType::PTR,
        RecordType::CNAME,
        RecordType::TXT,
        RecordType::SOA,
        RecordType::NS,
        RecordType::MX,
    ];
    for name in &a {
        for t in qtypes {
            let q = u16::from(t);
            assert_eq!(
                canonical(name, q, incremental.lookup(name, q)),
                canonical(name, q, fresh.lookup(name, q)),
                "step {step}: {name:?} {t}"
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn incremental_builds_equal_fresh_builds(
        steps in proptest::collection::vec(
            proptest::collection::vec(variant(), SERVICES..=SERVICES),
            1..6,
        ),
        keep in proptest::collection::vec(proptest::collection::vec(any::<bool>(), SERVICES), 6),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let cfg = DnsConfig::new("cluster.local", 5).unwrap();
        let mut loader = svcplane_config::Loader::new(dir.path(), Default::default());
        let mut builder = TableBuilder::new(cfg.clone());
        let mut state = vec![Variant::Absent; SERVICES];
        for (step, next) in steps.iter().enumerate() {
            // Change some Services, keep the others as they were.
            for (i, v) in next.iter().enumerate() {
                if !keep[step][i] {
                    state[i] = v.clone();
                }
            }
            write_state(dir.path(), &state);
            let (_, _) = loader.reload().unwrap();
            let snap = loader.snapshot().clone();
            prop_assert!(
                snap.diagnostics.errors.is_empty(),
                "fixture errors: {:?}",
                snap.diagnostics.errors
            );
            let incremental = builder.build(&snap);
            let fresh = DnsTable::build(&snap, &cfg);
            assert_same(&incremental, &fresh, step);
        }
    }
}
