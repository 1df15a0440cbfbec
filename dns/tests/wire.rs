//! The query path's protocol behaviour: EDNS, truncation and TCP, and bad input. Requests are
//! raw bytes through `wire::respond`; replies are decoded with hickory-proto.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests panic with context"
)]

mod common;

use std::fmt::Write as _;
use std::sync::OnceLock;

use common::{Ask, answers_of, ask_with, fixture, query, respond_raw, table_of};
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, RecordType};
use proptest::prelude::*;
use svcplane_dns::DnsTable;
use svcplane_dns::wire::{self, EDNS_PAYLOAD, Outcome, Transport};

/// A headless Service `big.demo` with `n` ready endpoints, all with hostnames.
fn big_headless(n: usize) -> String {
    let mut y = String::from(
        "apiVersion: v1\nkind: Service\nmetadata: {name: big, namespace: demo}\nspec:\n  \
         clusterIP: None\n  ports:\n  - {name: http, port: 80}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: big-x1\n  \
         namespace: demo\n  labels: {kubernetes.io/service-name: big}\naddressType: IPv4\n\
         ports:\n- {name: http, port: 8080, protocol: TCP}\nendpoints:\n",
    );
    for i in 0..n {
        writeln!(
            y,
            "- addresses: [\"10.244.{}.{}\"]\n  hostname: big-{i}",
            i / 250,
            i % 250 + 1
        )
        .unwrap();
    }
    y
}

/// The fixture plus `big`, built once (the property tests ask it thousands of times).
fn big_table() -> &'static DnsTable {
    static TABLE: OnceLock<DnsTable> = OnceLock::new();
    TABLE.get_or_init(|| {
        table_of(&[
            ("cluster.yaml", common::FIXTURE),
            ("big.yaml", &big_headless(60)),
        ])
    })
}

fn udp(edns: Option<u16>) -> Ask {
    Ask {
        edns,
        ..Ask::default()
    }
}

const BIG: &str = "big.demo.svc.cluster.local.";

// === EDNS, truncation, TCP ===

#[test]
fn our_opt_record_is_present_iff_the_client_sent_one() {
    let t = &fixture();
    let cases = [
        ("web.demo.svc.cluster.local.", RecordType::A),
        ("nope.demo.svc.cluster.local.", RecordType::A),
        ("example.com.", RecordType::A),
    ];
    for (qname, qtype) in cases {
        for transport in [Transport::Udp, Transport::Tcp] {
            let plain = Ask {
                transport,
                ..Ask::default()
            };
            let m = ask_with(Some(t), qname, qtype, plain);
            assert!(m.edns.is_none(), "{qname} {transport:?}");
            let with = Ask {
                transport,
                edns: Some(4096),
                ..Ask::default()
            };
            let m = ask_with(Some(t), qname, qtype, with);
            let e = m.edns.as_ref().expect("OPT in the reply");
            assert_eq!(e.max_payload(), EDNS_PAYLOAD);
            assert_eq!(e.version(), 0);
        }
    }
    // Before the first snapshot too.
    let m = ask_with(
        None,
        "web.demo.svc.cluster.local.",
        RecordType::A,
        udp(Some(1232)),
    );
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    assert!(m.edns.is_some());
}

#[test]
fn a_big_answer_is_truncated_for_512_byte_clients() {
    let t = big_table();
    let m = ask_with(Some(t), BIG, RecordType::A, udp(None));
    assert!(m.metadata.truncation);
    assert!(m.answers.is_empty() && m.authorities.is_empty() && m.additionals.is_empty());
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(m.queries.len(), 1);
    assert_eq!(m.queries[0].name(), &common::name(BIG));
    // A client that cannot take more than 512 bytes even with EDNS: the same, plus our OPT.
    let m = ask_with(Some(t), BIG, RecordType::A, udp(Some(512)));
    assert!(m.metadata.truncation && m.answers.is_empty());
    assert!(m.edns.is_some());
}

#[test]
fn the_client_udp_size_is_honoured() {
    let t = big_table();
    // 60 A records need about 1 KB.
    let m = ask_with(Some(t), BIG, RecordType::A, udp(Some(1232)));
    assert!(!m.metadata.truncation);
    assert_eq!(answers_of(&m, RecordType::A).len(), 60);
    let req = query(1, BIG, RecordType::A, Some(1232));
    let (_, out) = respond_raw(Some(t), &req, Transport::Udp, false);
    assert!(out.len() > 512 && out.len() <= 1232, "{}", out.len());
    // SRV with an uncompressed target and its address per endpoint needs about 4.5 KB:
    // truncated even for a client that takes 64 KB, as UDP answers stop at 4096 bytes.
    for size in [1232, 4096, 65535] {
        let m = ask_with(
            Some(t),
            "_http._tcp.big.demo.svc.cluster.local.",
            RecordType::SRV,
            udp(Some(size)),
        );
        assert!(m.metadata.truncation, "{size}");
        assert!(m.answers.is_empty());
    }
    // A client size above our maximum is capped; below 512 is raised to 512.
    let req = query(1, BIG, RecordType::A, Some(100));
    let (_, out) = respond_raw(Some(t), &req, Transport::Udp, false);
    assert!(out.len() <= 512);
}

#[test]
fn tcp_serves_the_whole_answer() {
    let t = big_table();
    for edns in [None, Some(512)] {
        let how = Ask {
            transport: Transport::Tcp,
            edns,
            ..Ask::default()
        };
        let m = ask_with(Some(t), BIG, RecordType::A, how);
        assert!(!m.metadata.truncation);
        assert_eq!(answers_of(&m, RecordType::A).len(), 60);
        let m = ask_with(
            Some(t),
            "_http._tcp.big.demo.svc.cluster.local.",
            RecordType::SRV,
            how,
        );
        assert_eq!(m.answers.len(), 60);
        assert_eq!(
            m.additionals
                .iter()
                .filter(|r| r.record_type() == RecordType::A)
                .count(),
            60
        );
    }
}

#[test]
fn dnssec_ok_is_echoed_and_rd_cd_copied() {
    let t = &fixture();
    let mut m = Message::new(9, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = false;
    m.metadata.checking_disabled = true;
    m.add_query(Query::query(
        common::name("web.demo.svc.cluster.local."),
        RecordType::A,
    ));
    let mut e = Edns::new();
    e.set_max_payload(1232);
    e.set_dnssec_ok(true);
    m.set_edns(e);
    let (_, out) = respond_raw(Some(t), &m.to_vec().unwrap(), Transport::Udp, false);
    let r = Message::from_vec(&out).unwrap();
    assert!(!r.metadata.recursion_desired);
    assert!(r.metadata.checking_disabled);
    assert_eq!(r.metadata.message_type, MessageType::Response);
    assert!(r.edns.as_ref().unwrap().flags().dnssec_ok);
    assert_eq!(answers_of(&r, RecordType::A), ["10.96.0.10"]);
}

// === bad input ===

/// A 12-byte header.
fn header(id: u16, flags: u16, qd: u16, an: u16, ns: u16, ar: u16) -> Vec<u8> {
    [id, flags, qd, an, ns, ar]
        .iter()
        .flat_map(|v| v.to_be_bytes())
        .collect()
}

fn wire_name(name: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for label in name.trim_end_matches('.').split('.') {
        out.push(u8::try_from(label.len()).unwrap());
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    out
}

/// The reply to raw `req` on both transports; they must agree.
fn reply(table: Option<&DnsTable>, req: &[u8]) -> (Outcome, Option<Message>) {
    let (udp, out) = respond_raw(table, req, Transport::Udp, false);
    let (tcp, _) = respond_raw(table, req, Transport::Tcp, false);
    assert_eq!(udp, tcp);
    let m = (!out.is_empty()).then(|| Message::from_vec(&out).expect("decodable reply"));
    (udp, m)
}

fn rcode_of(table: Option<&DnsTable>, req: &[u8]) -> u16 {
    let (outcome, m) = reply(table, req);
    let m = m.unwrap_or_else(|| panic!("no reply: {outcome:?}"));
    assert_eq!(m.metadata.id, u16::from_be_bytes([req[0], req[1]]));
    assert_eq!(m.metadata.message_type, MessageType::Response);
    u16::from(m.metadata.response_code)
}

const FORMERR: u16 = 1;
const NOTIMP: u16 = 4;
const REFUSED: u16 = 5;
const BADVERS: u16 = 16;

#[test]
fn short_packets_and_responses_are_dropped() {
    let t = &fixture();
    for n in 0..12 {
        let req = vec![0u8; n];
        assert_eq!(reply(Some(t), &req).0, Outcome::Drop, "{n} bytes");
    }
    // QR set: a response is never answered (no reflection loops).
    let mut req = query(1, "web.demo.svc.cluster.local.", RecordType::A, None);
    req[2] |= 0x80;
    assert_eq!(reply(Some(t), &req).0, Outcome::Drop);
}

#[test]
fn garbage_after_the_header_is_formerr() {
    let t = &fixture();
    let cases: [&[u8]; 5] = [
        &[],                             // qdcount 1, no question
        &[0x03, b'w', b'e'],             // label runs past the end
        &[0x00],                         // name without type and class
        &[0x00, 0x00, 0x01, 0x00],       // class cut short
        &[0x40, 0xff, 0xff, 0xff, 0xff], // reserved label type
    ];
    for tail in cases {
        let mut req = header(0x1234, 0x0100, 1, 0, 0, 0);
        req.extend_from_slice(tail);
        assert_eq!(rcode_of(Some(t), &req), FORMERR, "{tail:?}");
    }
}

#[test]
fn names_longer_than_255_bytes_are_formerr() {
    let t = &fixture();
    let mut req = header(0x1235, 0x0100, 1, 0, 0, 0);
    // 5 x 63-byte labels: 320 bytes.
    for _ in 0..5 {
        req.push(63);
        req.extend_from_slice(&[b'a'; 63]);
    }
    req.extend_from_slice(&[0, 0, 1, 0, 1]);
    assert_eq!(rcode_of(Some(t), &req), FORMERR);
    // 4 x 63 + root is 257 bytes: still too long. 3 x 63 + "cluster.local" fits.
    let mut req = header(0x1236, 0x0100, 1, 0, 0, 0);
    for _ in 0..3 {
        req.push(63);
        req.extend_from_slice(&[b'a'; 63]);
    }
    req.extend(wire_name("cluster.local."));
    req.extend_from_slice(&[0, 1, 0, 1]);
    let (outcome, _) = reply(Some(t), &req);
    assert_eq!(outcome, Outcome::Reply(ResponseCode::NXDomain));
}

#[test]
fn zero_or_two_questions_are_formerr() {
    let t = &fixture();
    let req = header(0x2222, 0x0100, 0, 0, 0, 0);
    assert_eq!(rcode_of(Some(t), &req), FORMERR);

    let mut req = header(0x2223, 0x0100, 2, 0, 0, 0);
    for n in ["web.demo.svc.cluster.local.", "db.demo.svc.cluster.local."] {
        req.extend(wire_name(n));
        req.extend_from_slice(&[0, 1, 0, 1]);
    }
    assert_eq!(rcode_of(Some(t), &req), FORMERR);
}

#[test]
fn other_classes_are_refused() {
    let t = &fixture();
    for class in [DNSClass::CH, DNSClass::HS] {
        let mut req = header(0x3333, 0x0100, 1, 0, 0, 0);
        req.extend(wire_name("version.bind."));
        req.extend_from_slice(&16u16.to_be_bytes());
        req.extend_from_slice(&u16::from(class).to_be_bytes());
        assert_eq!(rcode_of(Some(t), &req), REFUSED, "{class}");
        // Also for a name of the zone.
        let mut req = header(0x3334, 0x0100, 1, 0, 0, 0);
        req.extend(wire_name("web.demo.svc.cluster.local."));
        req.extend_from_slice(&1u16.to_be_bytes());
        req.extend_from_slice(&u16::from(class).to_be_bytes());
        assert_eq!(rcode_of(Some(t), &req), REFUSED, "{class}");
    }
}

#[test]
fn other_opcodes_are_notimp() {
    let t = &fixture();
    for op in [OpCode::Notify, OpCode::Update, OpCode::Status] {
        let mut m = Message::new(0x4444, MessageType::Query, op);
        m.add_query(Query::query(
            common::name("cluster.local."),
            RecordType::SOA,
        ));
        let req = m.to_vec().unwrap();
        assert_eq!(rcode_of(Some(t), &req), NOTIMP, "{op:?}");
        let (_, r) = reply(Some(t), &req);
        assert_eq!(r.unwrap().metadata.op_code, op);
    }
}

#[test]
fn edns_version_1_is_badvers() {
    let t = &fixture();
    let mut m = Message::new(0x5555, MessageType::Query, OpCode::Query);
    m.add_query(Query::query(
        common::name("web.demo.svc.cluster.local."),
        RecordType::A,
    ));
    let mut e = Edns::new();
    e.set_version(1);
    e.set_max_payload(1232);
    m.set_edns(e);
    let req = m.to_vec().unwrap();
    assert_eq!(rcode_of(Some(t), &req), BADVERS);
    let (_, r) = reply(Some(t), &req);
    let r = r.unwrap();
    // BADVERS needs the OPT record to carry its upper bits, and says our version.
    let e = r.edns.expect("OPT in BADVERS");
    assert_eq!(e.version(), 0);
    assert!(r.answers.is_empty());
}

#[test]
fn a_compressed_question_name_is_answered_normally() {
    let t = &fixture();
    // "web.demo.svc.cluster" then a pointer to offset 11 of the header: the low byte of
    // ARCOUNT, zero, which reads as the root label.
    let mut req = header(0x6666, 0x0100, 1, 0, 0, 0);
    for label in ["web", "demo", "svc", "cluster", "local"] {
        req.push(u8::try_from(label.len()).unwrap());
        req.extend_from_slice(label.as_bytes());
    }
    req.extend_from_slice(&[0xC0, 11, 0, 1, 0, 1]);
    let decoded = Message::from_vec(&req).expect("hickory reads it");
    assert_eq!(
        decoded.queries[0].name(),
        &common::name("web.demo.svc.cluster.local.")
    );
    let (outcome, m) = reply(Some(t), &req);
    assert_eq!(outcome, Outcome::Reply(ResponseCode::NoError));
    let m = m.unwrap();
    assert_eq!(m.metadata.id, 0x6666);
    assert_eq!(answers_of(&m, RecordType::A), ["10.96.0.10"]);

    // Negative answers through the slow path keep the SOA owner right.
    let mut req = header(0x6667, 0x0100, 1, 0, 0, 0);
    for label in ["NOPE", "demo", "svc", "cluster", "local"] {
        req.push(u8::try_from(label.len()).unwrap());
        req.extend_from_slice(label.as_bytes());
    }
    req.extend_from_slice(&[0xC0, 11, 0, 1, 0, 1]);
    let (_, m) = reply(Some(t), &req);
    let m = m.unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(
        common::authority_soa(&m).name,
        common::name("cluster.local.")
    );
    assert_eq!(
        m.queries[0].name().to_ascii(),
        "NOPE.demo.svc.cluster.local."
    );
}

#[test]
fn unknown_query_types_of_existing_names_are_nodata() {
    let t = &fixture();
    let m = ask_with(
        Some(t),
        "web.demo.svc.cluster.local.",
        RecordType::Unknown(65280),
        udp(None),
    );
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.answers.is_empty());
    assert_eq!(m.authorities.len(), 1);
}

// === robustness ===

/// Valid queries to mutate: every kind of answer the table gives.
fn seeds() -> Vec<Vec<u8>> {
    let mut v = Vec::new();
    for (i, (n, t)) in [
        ("web.demo.svc.cluster.local.", RecordType::A),
        ("_postgres._tcp.db.demo.svc.cluster.local.", RecordType::SRV),
        ("nope.demo.svc.cluster.local.", RecordType::A),
        ("demo.svc.cluster.local.", RecordType::A),
        ("alias.demo.svc.cluster.local.", RecordType::A),
        ("10.0.96.10.in-addr.arpa.", RecordType::PTR),
        ("example.com.", RecordType::A),
        ("cluster.local.", RecordType::SOA),
    ]
    .into_iter()
    .enumerate()
    {
        let id = u16::try_from(i).unwrap();
        v.push(query(id, n, t, None));
        v.push(query(id, n, t, Some(1232)));
    }
    v
}

fn check_never_panics(table: &DnsTable, req: &[u8]) -> Result<(), TestCaseError> {
    // The UDP server's batch path: touching the table for any bytes, then the answer to a
    // request cut short by the receive buffer (FORMERR with its id, or nothing).
    let (mut key, mut starts) = (Vec::new(), Vec::new());
    wire::touch(table, [req, req], &mut key, &mut starts);
    let mut out = Vec::new();
    match wire::oversized(req, &mut out) {
        Outcome::Reply(rcode) => {
            prop_assert_eq!(rcode, ResponseCode::FormErr);
            let m = Message::from_vec(&out)
                .map_err(|e| TestCaseError::fail(format!("undecodable reply {out:?}: {e}")))?;
            prop_assert_eq!(&out[..2], &req[..2], "id");
            prop_assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
            prop_assert_eq!(m.metadata.message_type, MessageType::Response);
        }
        Outcome::Drop => prop_assert!(out.is_empty() && (req.len() < 12 || req[2] & 0x80 != 0)),
        Outcome::Forward => prop_assert!(false, "an oversized request is never forwarded"),
    }
    for t in [Some(table), None] {
        for transport in [Transport::Udp, Transport::Tcp] {
            for forward in [false, true] {
                let (outcome, out) = respond_raw(t, req, transport, forward);
                match outcome {
                    Outcome::Reply(_) => {
                        let m = Message::from_vec(&out).map_err(|e| {
                            TestCaseError::fail(format!("undecodable reply {out:?}: {e}"))
                        })?;
                        prop_assert_eq!(&out[..2], &req[..2], "id");
                        prop_assert_eq!(m.metadata.message_type, MessageType::Response);
                        // Our OPT iff the client sent one (BADVERS always carries one).
                        if let Ok(q) = Message::from_vec(req) {
                            let badvers = u16::from(m.metadata.response_code) == BADVERS;
                            prop_assert_eq!(m.edns.is_some(), q.edns.is_some() || badvers);
                            // The question comes back as asked, letter case included.
                            if q.queries.len() == 1 && m.queries.len() == 1 {
                                let (a, b) = (&q.queries[0], &m.queries[0]);
                                prop_assert_eq!(a.name().to_ascii(), b.name().to_ascii());
                                prop_assert_eq!(a.query_type(), b.query_type());
                                prop_assert_eq!(a.query_class(), b.query_class());
                            }
                        }
                        if transport == Transport::Udp {
                            prop_assert!(out.len() <= 4096);
                        }
                    }
                    Outcome::Forward => prop_assert!(forward && t.is_some()),
                    Outcome::Drop => prop_assert!(out.is_empty()),
                }
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(req in proptest::collection::vec(any::<u8>(), 0..600)) {
        let t = big_table();
        check_never_panics(t, &req)?;
    }

    #[test]
    fn arbitrary_bytes_after_a_query_header_never_panic(
        tail in proptest::collection::vec(any::<u8>(), 0..300),
        counts in (0u16..3, 0u16..2, 0u16..2, 0u16..3),
        flags in any::<u16>(),
    ) {
        let t = big_table();
        let mut req = header(0xabcd, flags & 0x7fff, counts.0, counts.1, counts.2, counts.3);
        req.extend_from_slice(&tail);
        check_never_panics(t, &req)?;
    }

    #[test]
    fn mutated_queries_never_panic(
        seed in 0usize..16,
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        cut in any::<Option<usize>>(),
        extra in proptest::collection::vec(any::<u8>(), 0..20),
    ) {
        let t = big_table();
        let mut req = seeds()[seed].clone();
        for (at, byte) in edits {
            let i = at % req.len();
            req[i] = byte;
        }
        if let Some(c) = cut {
            req.truncate(c % (req.len() + 1));
        }
        req.extend_from_slice(&extra);
        check_never_panics(t, &req)?;
    }
}
