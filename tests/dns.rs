//! Integration tests of cluster DNS: the real `svcplane run` binary on a manifest directory,
//! queried over UDP and TCP with real clients (hickory-proto messages on std sockets, and
//! `dig`). The records are those of `dns/tests/fixtures/cluster.yaml`; the dns crate's own
//! tests cover every rule exhaustively, these check them end to end.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers panic with context, like the tests that call them"
)]

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, SOA};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};

const BIN: &str = env!("CARGO_BIN_EXE_svcplane");
const ZONE: &str = "cluster.local.";

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn name(s: &str) -> Name {
    Name::from_ascii(s).unwrap()
}

// === the daemon ===

/// A running daemon; killed on drop so a failing test leaves nothing behind.
struct Daemon {
    child: Child,
    admin: SocketAddr,
    dns: SocketAddr,
    _logs: mpsc::Receiver<String>,
    /// Allocation state, removed with the daemon.
    _state: tempfile::TempDir,
}

impl Daemon {
    fn start(manifests: &Path, extra: &[&str]) -> Daemon {
        let state = tempfile::tempdir().unwrap();
        let mut child = Command::new(BIN)
            .args(["run", "--manifests", manifests.to_str().unwrap()])
            .arg("--state-dir")
            .arg(state.path())
            .args(["--mode", "none"])
            .args([
                "--admin-listen",
                "127.0.0.1:0",
                "--dns-listen",
                "127.0.0.1:0",
            ])
            .args(["--log-format", "json"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn svcplane run");
        let stderr = child.stderr.take().unwrap();
        let (tx, logs) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        let line = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match logs.recv_timeout(left) {
                Ok(line) if line.contains("svcplane running") => break line,
                Ok(_) => {}
                Err(e) => {
                    let _ = child.kill();
                    panic!("svcplane never logged \"svcplane running\": {e}");
                }
            }
        };
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        let admin = v["admin"].as_str().unwrap().parse().unwrap();
        let dns = v["dns"].as_str().unwrap().parse().unwrap();
        Daemon {
            child,
            admin,
            dns,
            _logs: logs,
            _state: state,
        }
    }

    /// Starts on `dir` and waits until the first table answers (SERVFAIL before it).
    fn start_ready(dir: &Path, extra: &[&str]) -> Daemon {
        let d = Daemon::start(dir, extra);
        d.poll_udp("dns-version.cluster.local.", RecordType::TXT, |m| {
            m.metadata.response_code == ResponseCode::NoError
        });
        d
    }

    fn udp(&self, qname: &str, qtype: RecordType) -> Message {
        decode(&udp_exchange(self.dns, &build(qname, qtype, None)))
    }

    fn udp_edns(&self, qname: &str, qtype: RecordType, size: u16) -> Message {
        decode(&udp_exchange(self.dns, &build(qname, qtype, Some(size))))
    }

    fn tcp(&self, qname: &str, qtype: RecordType) -> Message {
        decode(&tcp_exchange(self.dns, &build(qname, qtype, None)))
    }

    /// Both transports; they must agree on everything but the id.
    fn both(&self, qname: &str, qtype: RecordType) -> Message {
        let u = self.udp(qname, qtype);
        let mut t = self.tcp(qname, qtype);
        t.metadata.id = u.metadata.id;
        assert_eq!(
            format!("{u:?}"),
            format!("{t:?}"),
            "{qname} {qtype}: UDP and TCP differ"
        );
        u
    }

    /// Queries over UDP until `pred` holds (10 s at most).
    fn poll_udp(&self, qname: &str, qtype: RecordType, pred: impl Fn(&Message) -> bool) -> Message {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let m = self.udp(qname, qtype);
            if pred(&m) {
                return m;
            }
            assert!(
                Instant::now() < deadline,
                "{qname} {qtype} never matched; last: {m:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn metrics(&self) -> String {
        http_get(self.admin, "/metrics")
    }

    fn dig(&self, args: &[&str]) -> String {
        let port = self.dns.port().to_string();
        let out = Command::new("dig")
            .args(["@127.0.0.1", "-p", &port, "+time=2", "+tries=2"])
            .args(args)
            .output()
            .expect("run dig (Debian package bind9-dnsutils)");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "dig {args:?}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    assert!(head.starts_with("HTTP/1.1 200"), "{path}: {head}");
    body.to_owned()
}

/// A temp dir holding the fixture, plus `big.demo`: a headless Service with 60 endpoints.
fn manifests() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        repo("dns/tests/fixtures/cluster.yaml"),
        dir.path().join("cluster.yaml"),
    )
    .unwrap();
    std::fs::write(dir.path().join("big.yaml"), big_headless(60)).unwrap();
    dir
}

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
            100 + i / 250,
            i % 250 + 1
        )
        .unwrap();
    }
    y
}

// === a DNS client on std sockets ===

fn next_id() -> u16 {
    static ID: AtomicU16 = AtomicU16::new(0x1000);
    ID.fetch_add(1, Ordering::Relaxed)
}

fn build(qname: &str, qtype: RecordType, edns: Option<u16>) -> Vec<u8> {
    let mut m = Message::new(next_id(), MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(name(qname), qtype));
    if let Some(size) = edns {
        let mut e = Edns::new();
        e.set_max_payload(size);
        m.set_edns(e);
    }
    m.to_vec().unwrap()
}

fn decode(bytes: &[u8]) -> Message {
    Message::from_vec(bytes).unwrap_or_else(|e| panic!("undecodable reply {bytes:?}: {e}"))
}

/// One UDP exchange (retried: loopback UDP may still drop under load). The reply must carry
/// the request's id.
fn udp_exchange(server: SocketAddr, req: &[u8]) -> Vec<u8> {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut buf = vec![0u8; 65535];
    for _ in 0..3 {
        sock.send_to(req, server).unwrap();
        match sock.recv_from(&mut buf) {
            Ok((n, from)) => {
                assert_eq!(from, server);
                assert_eq!(buf[..2], req[..2], "reply id");
                return buf[..n].to_vec();
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("udp receive: {e}"),
        }
    }
    panic!("no UDP reply from {server}");
}

/// One TCP exchange with 2-byte length framing.
fn tcp_exchange(server: SocketAddr, req: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect_timeout(&server, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let len = u16::try_from(req.len()).unwrap();
    s.write_all(&len.to_be_bytes()).unwrap();
    s.write_all(req).unwrap();
    let mut lenb = [0u8; 2];
    s.read_exact(&mut lenb).unwrap();
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(lenb))];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(buf[..2], req[..2], "reply id");
    buf
}

fn rdata(m: &Message, rtype: RecordType) -> Vec<String> {
    let mut v: Vec<String> = m
        .answers
        .iter()
        .filter(|r| r.record_type() == rtype)
        .map(|r| r.data.to_string())
        .collect();
    v.sort();
    v
}

fn soa_owner(m: &Message) -> Name {
    let soas: Vec<&Record> = m
        .authorities
        .iter()
        .filter(|r| r.record_type() == RecordType::SOA)
        .collect();
    assert_eq!(soas.len(), 1, "authority: {:?}", m.authorities);
    soas[0].name.clone()
}

fn ptr(ip: &str) -> String {
    Name::from(ip.parse::<std::net::IpAddr>().unwrap()).to_ascii()
}

// === records ===

#[test]
fn a_and_aaaa_of_cluster_ip_services() {
    let dir = manifests();
    let d = Daemon::start_ready(dir.path(), &[]);
    let m = d.both("web.demo.svc.cluster.local.", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.metadata.authoritative);
    assert!(!m.metadata.recursion_available, "no upstream, no recursion");
    assert_eq!(rdata(&m, RecordType::A), ["10.96.0.10"]);
    assert_eq!(m.answers[0].ttl, 5);
    let m = d.both("dual.demo.svc.cluster.local.", RecordType::A);
    assert_eq!(rdata(&m, RecordType::A), ["10.96.0.11"]);
    let m = d.both("dual.demo.svc.cluster.local.", RecordType::AAAA);
    assert_eq!(rdata(&m, RecordType::AAAA), ["fd00::11"]);
}

#[test]
fn headless_services_and_endpoint_hostnames() {
    let dir = manifests();
    let d = Daemon::start_ready(dir.path(), &[]);
    let m = d.both("db.demo.svc.cluster.local.", RecordType::A);
    assert_eq!(
        rdata(&m, RecordType::A),
        ["10.244.1.20", "10.244.1.23", "10.244.2.21"]
    );
    let m = d.both("db-1.db.demo.svc.cluster.local.", RecordType::A);
    assert_eq!(rdata(&m, RecordType::A), ["10.244.2.21"]);
    let m = d.both("db6.demo.svc.cluster.local.", RecordType::AAAA);
    assert_eq!(rdata(&m, RecordType::AAAA), ["fd00:10:244::5"]);
    // No ready endpoint: the name does not exist.
    let m = d.both("idle.demo.svc.cluster.local.", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    // publishNotReadyAddresses.
    let m = d.both("eager.demo.svc.cluster.local.", RecordType::A);
    assert_eq!(rdata(&m, RecordType::A), ["10.244.6.60"]);
}

#[test]
fn srv_for_named_ports() {
    let dir = manifests();
    let d = Daemon::start_ready(dir.path(), &[]);
    let m = d.both("_http._tcp.web.demo.svc.cluster.local.", RecordType::SRV);
    assert_eq!(
        rdata(&m, RecordType::SRV),
        ["0 100 80 web.demo.svc.cluster.local."]
    );
    let m = d.both("_postgres._tcp.db.demo.svc.cluster.local.", RecordType::SRV);
    assert_eq!(
        rdata(&m, RecordType::SRV),
        [
            "0 33 5432 10-244-1-23.db.demo.svc.cluster.local.",
            "0 33 5432 db-0.db.demo.svc.cluster.local.",
            "0 33 5432 db-1.db.demo.svc.cluster.local.",
        ]
    );
    assert_eq!(m.additionals.len(), 3);
    // An unnamed port has no SRV.
    let m = d.both("plain.demo.svc.cluster.local.", RecordType::SRV);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.answers.is_empty());
}

#[test]
fn ptr_for_cluster_ips_and_endpoints() {
    let dir = manifests();
    let d = Daemon::start_ready(dir.path(), &[]);
    for (ip, want) in [
        ("10.96.0.10", &["web.demo.svc.cluster.local."][..]),
        ("fd00::11", &["dual.demo.svc.cluster.local."][..]),
        ("10.244.1.20", &["db-0.db.demo.svc.cluster.local."][..]),
        ("fd00:10:244::5", &["h6.db6.demo.svc.cluster.local."][..]),
        (
            "10.244.9.9",
            &[
                "l.left.demo.svc.cluster.local.",
                "r.right.demo.svc.cluster.local.",
            ][..],
        ),
    ] {
        let m = d.both(&ptr(ip), RecordType::PTR);
        assert_eq!(rdata(&m, RecordType::PTR), want, "{ip}");
    }
    // An address nobody uses, no upstream: authoritative NXDOMAIN of the reverse zone.
    let m = d.both(&ptr("10.1.2.3"), RecordType::PTR);
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(soa_owner(&m), name("in-addr.arpa."));
}

#[test]
fn external_names_are_cnames() {
    let dir = manifests();
    let d = Daemon::start_ready(dir.path(), &[]);
    let m = d.both("payments.demo.svc.cluster.local.", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(rdata(&m, RecordType::CNAME), ["payments.example.com."]);
    assert_eq!(m.answers.len(), 1);
    let m = d.both("alias.demo.svc.cluster.local.", RecordType::A);
    assert_eq!(
        rdata(&m, RecordType::CNAME),
        ["web.demo.svc.cluster.local."]
    );
    assert_eq!(rdata(&m, RecordType::A), ["10.96.0.10"]);
}

#[test]
fn apex_soa_ns_and_dns_version() {
    let dir = manifests();
    let d = Daemon::start_ready(dir.path(), &[]);
    let m = d.both("dns-version.cluster.local.", RecordType::TXT);
    assert_eq!(rdata(&m, RecordType::TXT), ["1.1.0"]);
    let m = d.both(ZONE, RecordType::SOA);
    assert_eq!(m.answers.len(), 1);
    assert!(matches!(m.answers[0].data, RData::SOA(_)));
    let m = d.both(ZONE, RecordType::NS);
    assert_eq!(rdata(&m, RecordType::NS), ["ns.dns.cluster.local."]);
    // The daemon listens on 127.0.0.1: that is the name server's address.
    let m = d.both("ns.dns.cluster.local.", RecordType::A);
    assert_eq!(rdata(&m, RecordType::A), ["127.0.0.1"]);
}

#[test]
fn nxdomain_and_nodata_carry_the_soa() {
    let dir = manifests();
    let d = Daemon::start_ready(dir.path(), &[]);
    for (qname, qtype, rcode) in [
        (
            "nope.demo.svc.cluster.local.",
            RecordType::A,
            ResponseCode::NXDomain,
        ),
        (
            "web.nope.svc.cluster.local.",
            RecordType::A,
            ResponseCode::NXDomain,
        ),
        (ZONE, RecordType::A, ResponseCode::NoError),
        ("svc.cluster.local.", RecordType::A, ResponseCode::NoError),
        (
            "demo.svc.cluster.local.",
            RecordType::A,
            ResponseCode::NoError,
        ),
        (
            "web.demo.svc.cluster.local.",
            RecordType::AAAA,
            ResponseCode::NoError,
        ),
        (
            "web.demo.svc.cluster.local.",
            RecordType::TXT,
            ResponseCode::NoError,
        ),
    ] {
        let m = d.both(qname, qtype);
        assert_eq!(m.metadata.response_code, rcode, "{qname} {qtype}");
        assert!(m.metadata.authoritative);
        assert!(m.answers.is_empty(), "{qname} {qtype}");
        assert_eq!(soa_owner(&m), name(ZONE), "{qname} {qtype}");
    }
}

#[test]
fn names_are_case_insensitive_and_the_case_is_echoed() {
    let dir = manifests();
    let d = Daemon::start_ready(dir.path(), &[]);
    let qname = "wEB.Demo.SVC.cluster.LOCAL.";
    for m in [d.udp(qname, RecordType::A), d.tcp(qname, RecordType::A)] {
        assert_eq!(rdata(&m, RecordType::A), ["10.96.0.10"]);
        assert_eq!(m.queries[0].name().to_ascii(), qname);
        assert_eq!(m.answers[0].name.to_ascii(), qname);
    }
}

// === EDNS, truncation, TCP ===

#[test]
fn truncation_edns_and_tcp() {
    let dir = manifests();
    let d = Daemon::start_ready(dir.path(), &[]);
    let big = "big.demo.svc.cluster.local.";
    // 60 A records (about 1 KB) do not fit in 512 bytes: TC and nothing else.
    let m = d.udp(big, RecordType::A);
    assert!(m.metadata.truncation);
    assert!(m.answers.is_empty());
    assert!(m.edns.is_none(), "no OPT for a client that sent none");
    // The client's EDNS size is honoured, and our OPT answers its OPT.
    let m = d.udp_edns(big, RecordType::A, 1232);
    assert!(!m.metadata.truncation);
    assert_eq!(rdata(&m, RecordType::A).len(), 60);
    assert_eq!(m.edns.as_ref().unwrap().max_payload(), 1232);
    let m = d.udp_edns(big, RecordType::A, 512);
    assert!(m.metadata.truncation && m.answers.is_empty());
    // TCP serves it whole.
    let m = d.tcp(big, RecordType::A);
    assert!(!m.metadata.truncation);
    assert_eq!(rdata(&m, RecordType::A).len(), 60);
    let m = d.tcp("_http._tcp.big.demo.svc.cluster.local.", RecordType::SRV);
    assert_eq!(rdata(&m, RecordType::SRV).len(), 60);
    // An EDNS query over TCP gets our OPT too.
    let req = build("web.demo.svc.cluster.local.", RecordType::A, Some(1232));
    let m = decode(&tcp_exchange(d.dns, &req));
    assert!(m.edns.is_some());
    assert_eq!(rdata(&m, RecordType::A), ["10.96.0.10"]);
}

#[test]
fn one_tcp_connection_serves_several_queries() {
    let dir = manifests();
    let d = Daemon::start_ready(dir.path(), &[]);
    let mut s = TcpStream::connect_timeout(&d.dns, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let names = [
        "web.demo.svc.cluster.local.",
        "dual.demo.svc.cluster.local.",
        "nope.demo.svc.cluster.local.",
    ];
    // Pipelined: all queries first, then the replies (in any order, matched by id).
    let mut ids = Vec::new();
    for n in names {
        let req = build(n, RecordType::A, None);
        ids.push(u16::from_be_bytes([req[0], req[1]]));
        let len = u16::try_from(req.len()).unwrap();
        s.write_all(&len.to_be_bytes()).unwrap();
        s.write_all(&req).unwrap();
    }
    let mut got = Vec::new();
    for _ in names {
        let mut lenb = [0u8; 2];
        s.read_exact(&mut lenb).unwrap();
        let mut buf = vec![0u8; usize::from(u16::from_be_bytes(lenb))];
        s.read_exact(&mut buf).unwrap();
        let m = decode(&buf);
        let i = ids.iter().position(|&id| id == m.metadata.id).unwrap();
        got.push((i, m.metadata.response_code, rdata(&m, RecordType::A)));
    }
    got.sort_by_key(|g| g.0);
    assert_eq!(
        got,
        [
            (0, ResponseCode::NoError, vec!["10.96.0.10".to_owned()]),
            (1, ResponseCode::NoError, vec!["10.96.0.11".to_owned()]),
            (2, ResponseCode::NXDomain, vec![]),
        ]
    );
}

// === bad input ===

fn header(id: u16, flags: u16, qd: u16) -> Vec<u8> {
    [id, flags, qd, 0, 0, 0]
        .iter()
        .flat_map(|v| v.to_be_bytes())
        .collect()
}

fn with_question(mut req: Vec<u8>, qname: &str, qtype: u16, class: u16) -> Vec<u8> {
    for label in qname.trim_end_matches('.').split('.') {
        req.push(u8::try_from(label.len()).unwrap());
        req.extend_from_slice(label.as_bytes());
    }
    req.push(0);
    req.extend_from_slice(&qtype.to_be_bytes());
    req.extend_from_slice(&class.to_be_bytes());
    req
}

fn rcode(reply: &[u8]) -> u16 {
    u16::from(decode(reply).metadata.response_code)
}

#[test]
fn bad_input_gets_error_codes_and_the_server_keeps_answering() {
    let dir = manifests();
    let d = Daemon::start_ready(dir.path(), &[]);
    let web = "web.demo.svc.cluster.local.";

    // Garbage after the header, no question, two questions: FORMERR.
    let mut garbage = header(0x0101, 0x0100, 1);
    garbage.extend_from_slice(&[0x03, b'w', b'e']);
    let none = header(0x0102, 0x0100, 0);
    let two = with_question(
        with_question(header(0x0103, 0x0100, 2), web, 1, 1),
        web,
        28,
        1,
    );
    for req in [&garbage, &none, &two] {
        assert_eq!(rcode(&udp_exchange(d.dns, req)), 1, "{req:?}");
    }
    // Class CH: REFUSED.
    let chaos = with_question(header(0x0104, 0x0100, 1), "version.bind.", 16, 3);
    assert_eq!(rcode(&udp_exchange(d.dns, &chaos)), 5);
    assert_eq!(rcode(&tcp_exchange(d.dns, &chaos)), 5);
    // NOTIFY: NOTIMP.
    let mut notify = Message::new(0x0105, MessageType::Query, OpCode::Notify);
    notify.add_query(Query::query(name(ZONE), RecordType::SOA));
    let notify = notify.to_vec().unwrap();
    assert_eq!(rcode(&udp_exchange(d.dns, &notify)), 4);
    assert_eq!(rcode(&tcp_exchange(d.dns, &notify)), 4);
    // EDNS version 1: BADVERS (16), with our OPT.
    let mut v1 = Message::new(0x0106, MessageType::Query, OpCode::Query);
    v1.add_query(Query::query(name(web), RecordType::A));
    let mut e = Edns::new();
    e.set_version(1);
    v1.set_edns(e);
    let v1 = v1.to_vec().unwrap();
    for reply in [udp_exchange(d.dns, &v1), tcp_exchange(d.dns, &v1)] {
        assert_eq!(rcode(&reply), 16);
        assert!(decode(&reply).edns.is_some());
    }
    // Too short, or a response: no reply at all; the next query is answered as usual.
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.send_to(&[1, 2, 3], d.dns).unwrap();
    let mut resp = build(web, RecordType::A, None);
    resp[2] |= 0x80;
    sock.send_to(&resp, d.dns).unwrap();
    let q = build(web, RecordType::A, None);
    sock.send_to(&q, d.dns).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 2048];
    let (n, _) = sock.recv_from(&mut buf).unwrap();
    assert_eq!(buf[..2], q[..2], "the first reply answers the good query");
    assert_eq!(rdata(&decode(&buf[..n]), RecordType::A), ["10.96.0.10"]);
    // A compressed question name is answered normally.
    let mut packed = header(0x0107, 0x0100, 1);
    for label in ["web", "demo", "svc", "cluster", "local"] {
        packed.push(u8::try_from(label.len()).unwrap());
        packed.extend_from_slice(label.as_bytes());
    }
    packed.extend_from_slice(&[0xC0, 11, 0, 1, 0, 1]);
    assert_eq!(
        rdata(&decode(&udp_exchange(d.dns, &packed)), RecordType::A),
        ["10.96.0.10"]
    );
    // Larger than the server's 2 KiB receive buffer (a question and 2,900 bytes of EDNS
    // padding): FORMERR with the request's id, over UDP; TCP reads it whole and answers.
    let mut big = Message::new(0x0108, MessageType::Query, OpCode::Query);
    big.add_query(Query::query(name(web), RecordType::A));
    let mut big = big.to_vec().unwrap();
    big[11] = 1; // ARCOUNT
    big.extend_from_slice(&[0, 0, 41, 0x04, 0xD0, 0, 0, 0, 0]);
    big.extend_from_slice(&2904u16.to_be_bytes());
    big.extend_from_slice(&[0, 12]); // option 12, padding
    big.extend_from_slice(&2900u16.to_be_bytes());
    big.extend_from_slice(&[0; 2900]);
    assert_eq!(rcode(&udp_exchange(d.dns, &big)), 1);
    assert_eq!(
        rdata(&decode(&tcp_exchange(d.dns, &big)), RecordType::A),
        ["10.96.0.10"]
    );
    // Still healthy.
    assert_eq!(
        rdata(&d.both(web, RecordType::A), RecordType::A),
        ["10.96.0.10"]
    );
}

/// The UDP server takes the queries that wait on its socket in batches; every query of a
/// burst, good or bad, gets its own answer (or, for non-queries, none).
#[test]
fn a_burst_of_udp_queries_is_answered_one_by_one() {
    let dir = manifests();
    let d = Daemon::start_ready(dir.path(), &[]);
    let asks: [(&str, RecordType, ResponseCode, &[&str]); 4] = [
        (
            "web.demo.svc.cluster.local.",
            RecordType::A,
            ResponseCode::NoError,
            &["10.96.0.10"],
        ),
        (
            "_http._tcp.web.demo.svc.cluster.local.",
            RecordType::SRV,
            ResponseCode::NoError,
            &["0 100 80 web.demo.svc.cluster.local."],
        ),
        (
            "nope.demo.svc.cluster.local.",
            RecordType::A,
            ResponseCode::NXDomain,
            &[],
        ),
        (
            "big-7.big.demo.svc.cluster.local.",
            RecordType::A,
            ResponseCode::NoError,
            &["10.244.100.8"],
        ),
    ];
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut sent = std::collections::HashMap::new();
    for i in 0..120usize {
        let (qname, qtype, ..) = asks[i % asks.len()];
        let q = build(qname, qtype, None);
        sock.send_to(&q, d.dns).unwrap();
        sent.insert(u16::from_be_bytes([q[0], q[1]]), i % asks.len());
        // Things that get no reply, in the middle of the burst.
        if i % 10 == 0 {
            sock.send_to(&[1, 2, 3], d.dns).unwrap();
            let mut resp = q.clone();
            resp[2] |= 0x80;
            sock.send_to(&resp, d.dns).unwrap();
        }
    }
    let mut buf = [0u8; 4096];
    while !sent.is_empty() {
        let (n, _) = sock
            .recv_from(&mut buf)
            .unwrap_or_else(|e| panic!("{} queries unanswered: {e}", sent.len()));
        let m = decode(&buf[..n]);
        let Some(k) = sent.remove(&m.metadata.id) else {
            panic!("a reply to no query, or a second one: {m:?}");
        };
        let (qname, qtype, code, want) = asks[k];
        assert_eq!(m.metadata.response_code, code, "{qname} {qtype}");
        assert_eq!(m.queries[0].name(), &name(qname));
        assert_eq!(rdata(&m, qtype), want, "{qname} {qtype}");
    }
}

#[test]
fn names_outside_the_zone_are_refused_without_an_upstream() {
    let dir = manifests();
    let d = Daemon::start_ready(dir.path(), &[]);
    let m = d.both("example.com.", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    assert!(!m.metadata.recursion_available && !m.metadata.authoritative);
    assert!(m.answers.is_empty());
}

// === changes ===

#[test]
fn a_service_file_added_resolves_and_removed_is_nxdomain() {
    let dir = manifests();
    let d = Daemon::start_ready(dir.path(), &[]);
    let qname = "late.demo.svc.cluster.local.";
    assert_eq!(
        d.udp(qname, RecordType::A).metadata.response_code,
        ResponseCode::NXDomain
    );
    // The goal is under 1 s from the write to the answer, both ways (measured here at 30-45 ms
    // on an idle machine; the watcher's quiet period is 10 ms). A test asserts the
    // behaviour, not the timing: it polls with a 10 s deadline.
    let svc = "apiVersion: v1\nkind: Service\nmetadata: {name: late, namespace: demo}\n\
               spec:\n  clusterIP: 10.96.0.99\n  ports: [{name: http, port: 81}]\n";
    let tmp = dir.path().join(".late.yaml.tmp");
    std::fs::write(&tmp, svc).unwrap();
    std::fs::rename(&tmp, dir.path().join("late.yaml")).unwrap();
    let m = d.poll_udp(qname, RecordType::A, |m| !m.answers.is_empty());
    assert_eq!(rdata(&m, RecordType::A), ["10.96.0.99"]);
    let m = d.tcp("_http._tcp.late.demo.svc.cluster.local.", RecordType::SRV);
    assert_eq!(
        rdata(&m, RecordType::SRV),
        ["0 100 81 late.demo.svc.cluster.local."]
    );
    assert_eq!(
        rdata(&d.udp(&ptr("10.96.0.99"), RecordType::PTR), RecordType::PTR),
        [qname]
    );

    std::fs::remove_file(dir.path().join("late.yaml")).unwrap();
    d.poll_udp(qname, RecordType::A, |m| {
        m.metadata.response_code == ResponseCode::NXDomain
    });
    let m = d.tcp(qname, RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(soa_owner(&m), name(ZONE));
    // The rest is untouched.
    assert_eq!(
        rdata(
            &d.udp("web.demo.svc.cluster.local.", RecordType::A),
            RecordType::A
        ),
        ["10.96.0.10"]
    );
}

// === upstream ===

/// A DNS server on 127.0.0.1 (UDP and TCP on one port) that answers every name with
/// A 192.0.2.1 (TTL 60), except `nx.*` (NXDOMAIN with an SOA of TTL 60) and `big.*` (100 A
/// records: truncated over UDP for 512-byte clients, whole over TCP). Counts queries.
struct FakeUpstream {
    addr: SocketAddr,
    udp_queries: Arc<AtomicUsize>,
    tcp_queries: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl FakeUpstream {
    fn start() -> FakeUpstream {
        // TCP picks the port, UDP takes the same one (retry if it is taken for UDP).
        let (tcp, udp) = (0..20)
            .find_map(|_| {
                let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
                let udp = UdpSocket::bind(tcp.local_addr().unwrap()).ok()?;
                Some((tcp, udp))
            })
            .expect("a port free for both UDP and TCP");
        let addr = udp.local_addr().unwrap();
        udp.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        tcp.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let udp_queries = Arc::new(AtomicUsize::new(0));
        let tcp_queries = Arc::new(AtomicUsize::new(0));
        let (s, c) = (stop.clone(), udp_queries.clone());
        let udp_thread = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while !s.load(Ordering::Relaxed) {
                let Ok((n, client)) = udp.recv_from(&mut buf) else {
                    continue;
                };
                c.fetch_add(1, Ordering::Relaxed);
                if let Some(reply) = fake_answer(&buf[..n], true) {
                    let _ = udp.send_to(&reply, client);
                }
            }
        });
        let (s, c) = (stop.clone(), tcp_queries.clone());
        let tcp_thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let Ok((mut conn, _)) = tcp.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                conn.set_nonblocking(false).unwrap();
                conn.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                let mut lenb = [0u8; 2];
                if conn.read_exact(&mut lenb).is_err() {
                    continue;
                }
                let mut req = vec![0u8; usize::from(u16::from_be_bytes(lenb))];
                if conn.read_exact(&mut req).is_err() {
                    continue;
                }
                c.fetch_add(1, Ordering::Relaxed);
                if let Some(reply) = fake_answer(&req, false) {
                    let len = u16::try_from(reply.len()).unwrap().to_be_bytes();
                    let _ = conn.write_all(&len).and_then(|()| conn.write_all(&reply));
                }
            }
        });
        FakeUpstream {
            addr,
            udp_queries,
            tcp_queries,
            stop,
            threads: vec![udp_thread, tcp_thread],
        }
    }

    fn queries(&self) -> (usize, usize) {
        (
            self.udp_queries.load(Ordering::Relaxed),
            self.tcp_queries.load(Ordering::Relaxed),
        )
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn fake_answer(req: &[u8], udp: bool) -> Option<Vec<u8>> {
    let q = Message::from_vec(req).ok()?;
    let question = q.queries.first()?.clone();
    let mut m = Message::response(q.metadata.id, OpCode::Query);
    m.metadata.recursion_desired = q.metadata.recursion_desired;
    m.metadata.recursion_available = true;
    m.add_query(question.clone());
    if let Some(e) = &q.edns {
        let mut ours = Edns::new();
        ours.set_max_payload(e.max_payload());
        m.set_edns(ours);
    }
    let qname = question.name().clone();
    let label = qname.iter().next().map(<[u8]>::to_vec).unwrap_or_default();
    if label.eq_ignore_ascii_case(b"nx") {
        m.metadata.response_code = ResponseCode::NXDomain;
        let apex = qname.base_name();
        let soa = SOA::new(
            name("ns.example."),
            name("hostmaster.example."),
            1,
            60,
            60,
            60,
            60,
        );
        m.add_authority(Record::from_rdata(apex, 60, RData::SOA(soa)));
    } else if question.query_type() == RecordType::A {
        let n = if label.eq_ignore_ascii_case(b"big") {
            100
        } else {
            1
        };
        for i in 0..n {
            let ip = std::net::Ipv4Addr::new(192, 0, 2, 1 + u8::try_from(i).unwrap());
            m.add_answer(Record::from_rdata(qname.clone(), 60, RData::A(A(ip))));
        }
        let limit = q
            .edns
            .as_ref()
            .map_or(512, |e| usize::from(e.max_payload()));
        if udp && m.to_vec().ok()?.len() > limit {
            return m.truncate().to_vec().ok();
        }
    }
    m.to_vec().ok()
}

/// The sum of every sample of `metric` whose labels contain all of `labels`.
fn metric_sum(text: &str, metric: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(metric)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|l| labels.iter().all(|lab| l.contains(lab)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn upstream_forwarding_with_a_cache() {
    let up = FakeUpstream::start();
    let dir = manifests();
    let upstream = up.addr.to_string();
    let d = Daemon::start_ready(dir.path(), &["--upstream", &upstream]);

    // Out of the zone: forwarded, answered with RA.
    let m = d.udp("www.example.com.", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.metadata.recursion_available);
    assert_eq!(rdata(&m, RecordType::A), ["192.0.2.1"]);
    assert!(m.answers[0].ttl <= 60);
    assert_eq!(up.queries(), (1, 0));
    // Again, in another case, over both transports: from the cache, the question echoed.
    let m = d.udp("WWW.example.com.", RecordType::A);
    assert_eq!(rdata(&m, RecordType::A), ["192.0.2.1"]);
    assert_eq!(m.queries[0].name().to_ascii(), "WWW.example.com.");
    let m = d.tcp("www.example.com.", RecordType::A);
    assert_eq!(rdata(&m, RecordType::A), ["192.0.2.1"]);
    assert_eq!(up.queries(), (1, 0), "served from the cache");

    // NXDOMAIN from upstream is cached too.
    for _ in 0..3 {
        let m = d.udp("nx.example.com.", RecordType::A);
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(soa_owner(&m), name("example.com."));
        assert!(m.metadata.recursion_available);
    }
    assert_eq!(up.queries(), (2, 0));

    // The cluster zone is never forwarded; unknown reverse names are.
    let m = d.udp("nope.demo.svc.cluster.local.", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert!(m.metadata.recursion_available);
    let m = d.udp(&ptr("192.0.2.7"), RecordType::PTR);
    assert!(m.metadata.recursion_available);
    assert_eq!(up.queries(), (3, 0));

    // A truncated upstream answer is fetched again over TCP; a client over TCP gets all of
    // it, a 512-byte UDP client gets TC.
    let m = d.tcp("big.example.com.", RecordType::A);
    assert_eq!(rdata(&m, RecordType::A).len(), 100);
    assert_eq!(up.queries(), (4, 1));
    let m = d.udp("big.example.com.", RecordType::A);
    assert!(m.metadata.truncation);
    let m = d.udp_edns("big.example.com.", RecordType::A, 4096);
    assert_eq!(rdata(&m, RecordType::A).len(), 100);

    // The reply's OPT follows the client's query, whoever filled the cache.
    let m = d.udp_edns("edns.example.com.", RecordType::A, 1232);
    assert!(m.edns.is_some());
    let m = d.udp("edns.example.com.", RecordType::A);
    assert!(
        m.edns.is_none(),
        "OPT in a reply to a query without one: {m:?}"
    );
    let m = d.udp("plain.example.com.", RecordType::A);
    assert!(m.edns.is_none());
    let m = d.udp_edns("plain.example.com.", RecordType::A, 1232);
    assert!(m.edns.is_some(), "no OPT in a reply to a query with one");

    let metrics = d.metrics();
    assert!(
        metric_sum(&metrics, "coredns_cache_hits_total", &["type=\"success\""]) >= 3.0,
        "{metrics}"
    );
    assert!(
        metric_sum(&metrics, "coredns_cache_hits_total", &["type=\"denial\""]) >= 2.0,
        "{metrics}"
    );
    assert!(
        metric_sum(&metrics, "coredns_cache_misses_total", &[]) >= 4.0,
        "{metrics}"
    );
}

#[test]
fn metrics_count_requests_responses_and_durations() {
    let up = FakeUpstream::start();
    let dir = manifests();
    let upstream = up.addr.to_string();
    let d = Daemon::start_ready(dir.path(), &["--upstream", &upstream]);
    // Only these queries are of type A (the start-up polls ask TXT).
    let requests = |m: &str| metric_sum(m, "coredns_dns_requests_total", &["type=\"A\""]);
    let nx = |m: &str| metric_sum(m, "coredns_dns_responses_total", &["rcode=\"NXDOMAIN\""]);
    d.udp("web.demo.svc.cluster.local.", RecordType::A);
    d.tcp("web.demo.svc.cluster.local.", RecordType::A);
    d.udp("nope.demo.svc.cluster.local.", RecordType::A);
    d.tcp("nope.demo.svc.cluster.local.", RecordType::A);
    d.udp("www.example.com.", RecordType::A);
    d.udp("www.example.com.", RecordType::A);
    d.tcp("www.example.com.", RecordType::A);
    d.udp("nx.example.com.", RecordType::A);
    // A request is counted just after its reply is sent: poll until all are.
    let deadline = Instant::now() + Duration::from_secs(10);
    let after = loop {
        let m = d.metrics();
        if requests(&m) >= 8.0 && nx(&m) >= 3.0 || Instant::now() > deadline {
            break m;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    // Every query counts, forwarded ones over UDP too.
    assert_eq!(requests(&after), 8.0, "{after}");
    assert_eq!(nx(&after), 3.0, "{after}");
    assert!(
        after
            .lines()
            .any(|l| l.starts_with("coredns_dns_requests_total{") && l.contains("proto=\"tcp\"")),
        "{after}"
    );
    let count = metric_sum(&after, "coredns_dns_request_duration_seconds_count", &[]);
    assert!(count >= 8.0, "{after}");
    assert!(
        after.contains("coredns_dns_request_duration_seconds_bucket{"),
        "{after}"
    );
    assert!(
        metric_sum(&after, "coredns_cache_hits_total", &["type=\"success\""]) >= 2.0,
        "{after}"
    );
}

// === dig ===

#[test]
fn dig_resolves_a_srv_ptr_and_cname() {
    let dir = manifests();
    let d = Daemon::start_ready(dir.path(), &[]);
    let out = d.dig(&["web.demo.svc.cluster.local", "A", "+short"]);
    assert_eq!(out.trim(), "10.96.0.10");
    let out = d.dig(&["_postgres._tcp.db.demo.svc.cluster.local", "SRV", "+short"]);
    let mut lines: Vec<&str> = out.lines().collect();
    lines.sort_unstable();
    assert_eq!(
        lines,
        [
            "0 33 5432 10-244-1-23.db.demo.svc.cluster.local.",
            "0 33 5432 db-0.db.demo.svc.cluster.local.",
            "0 33 5432 db-1.db.demo.svc.cluster.local.",
        ]
    );
    let out = d.dig(&["-x", "10.96.0.10", "+short"]);
    assert_eq!(out.trim(), "web.demo.svc.cluster.local.");
    let out = d.dig(&["alias.demo.svc.cluster.local", "A", "+short", "+tcp"]);
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["web.demo.svc.cluster.local.", "10.96.0.10"]
    );
    let out = d.dig(&["dns-version.cluster.local", "TXT", "+short"]);
    assert_eq!(out.trim(), "\"1.1.0\"");
}

#[test]
fn dig_sees_nxdomain_with_soa_and_retries_truncated_answers_over_tcp() {
    let dir = manifests();
    let d = Daemon::start_ready(dir.path(), &[]);
    let out = d.dig(&["nope.demo.svc.cluster.local", "A"]);
    assert!(out.contains("status: NXDOMAIN"), "{out}");
    assert!(out.contains("flags: qr aa rd;"), "{out}");
    assert!(!out.contains("malformed"), "{out}");
    let authority = out
        .split(";; AUTHORITY SECTION:")
        .nth(1)
        .unwrap_or_else(|| panic!("no authority section in\n{out}"));
    let soa: Vec<&str> = authority
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(
        soa[..5],
        ["cluster.local.", "5", "IN", "SOA", "ns.dns.cluster.local."]
    );

    let out = d.dig(&["web.demo.svc.cluster.local", "AAAA"]);
    assert!(
        out.contains("status: NOERROR") && out.contains("ANSWER: 0"),
        "{out}"
    );
    assert!(out.contains(";; AUTHORITY SECTION:"), "{out}");

    // Without EDNS the 60 addresses do not fit: dig sees TC and asks again over TCP.
    let out = d.dig(&["big.demo.svc.cluster.local", "A", "+noedns"]);
    assert!(out.contains(";; Truncated, retrying in TCP mode."), "{out}");
    assert!(out.contains("ANSWER: 60"), "{out}");
    // With dig's default EDNS size (1232) they fit.
    let out = d.dig(&["big.demo.svc.cluster.local", "A"]);
    assert!(!out.contains("Truncated"), "{out}");
    assert!(
        out.contains("ANSWER: 60") && out.contains("; EDNS: version: 0"),
        "{out}"
    );

    let out = d.dig(&["example.com", "A"]);
    assert!(out.contains("status: REFUSED"), "{out}");
}

#[test]
fn wrong_class_over_tcp_is_refused() {
    let dir = manifests();
    let d = Daemon::start_ready(dir.path(), &[]);
    let mut m = Message::new(0x0201, MessageType::Query, OpCode::Query);
    let mut q = Query::query(name("web.demo.svc.cluster.local."), RecordType::A);
    q.set_query_class(DNSClass::CH);
    m.add_query(q);
    let req = m.to_vec().unwrap();
    assert_eq!(rcode(&tcp_exchange(d.dns, &req)), 5);
    assert_eq!(rcode(&udp_exchange(d.dns, &req)), 5);
}

#[test]
fn a_dead_upstream_is_servfail_and_the_next_one_is_asked() {
    // A port nobody listens on: the kernel refuses at once (ICMP port unreachable).
    let dead = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let dir = manifests();
    let dead_arg = dead.to_string();
    let d = Daemon::start_ready(dir.path(), &["--upstream", &dead_arg]);
    for _ in 0..2 {
        let m = d.udp("www.example.com.", RecordType::A);
        assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
        assert!(m.answers.is_empty());
    }
    let m = d.tcp("www.example.com.", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    // The cluster zone does not depend on the upstream.
    let m = d.udp("web.demo.svc.cluster.local.", RecordType::A);
    assert_eq!(rdata(&m, RecordType::A), ["10.96.0.10"]);
    let metrics = d.metrics();
    assert!(
        metric_sum(&metrics, "svcplane_dns_upstream_failures_total", &[]) >= 3.0,
        "{metrics}"
    );
    drop(d);

    let up = FakeUpstream::start();
    let alive = up.addr.to_string();
    let d = Daemon::start_ready(dir.path(), &["--upstream", &dead_arg, "--upstream", &alive]);
    let m = d.udp("www.example.com.", RecordType::A);
    assert_eq!(rdata(&m, RecordType::A), ["192.0.2.1"]);
    assert_eq!(up.queries(), (1, 0));
}
