//! The query path: one function from request bytes to response bytes, shared by UDP and TCP.
//!
//! Ordinary queries (one question, class IN, opcode QUERY, at most an OPT record) are read
//! straight from the wire and answered from the table's templates: no allocation beyond the
//! caller's reused buffer. Anything else is decoded with hickory-proto; a legitimate but
//! unusual query (compressed question, extra records) is re-encoded plainly and answered the
//! same way; the rest gets FORMERR, NOTIMP, REFUSED or BADVERS.

use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::DNSClass;

use crate::table::{DnsTable, Lookup, Zone, ZoneKind};

/// Our advertised EDNS UDP payload size (the DNS flag day 2020 value).
pub const EDNS_PAYLOAD: u16 = 1232;
/// Largest UDP payload we send, whatever a client advertises.
const MAX_UDP: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// What to do with a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// `out` holds the response.
    Reply(ResponseCode),
    /// Not ours: forward to an upstream resolver.
    Forward,
    /// Not a query (too short, or a response): send nothing.
    Drop,
}

/// Per-server settings the query path needs.
#[derive(Clone, Copy, Debug)]
pub struct Policy {
    /// An upstream is configured: out-of-zone names (and unknown reverse names) are
    /// forwarded and RA is set; without one they are REFUSED.
    pub forward: bool,
}

/// The parts of a plain query the fast path reads.
struct Plain {
    /// End of the question section.
    qend: usize,
    qtype: u16,
    edns: Option<ClientEdns>,
}

#[derive(Clone, Copy)]
struct ClientEdns {
    payload: u16,
    dnssec_ok: bool,
}

enum Parse {
    Plain(Plain),
    /// Decode with hickory-proto.
    Slow,
}

/// Answers `req` into `out`. `table` is `None` before the first snapshot (SERVFAIL).
/// `key` is a scratch buffer for the lower-case question name.
pub fn respond(
    table: Option<&DnsTable>,
    req: &[u8],
    transport: Transport,
    policy: Policy,
    out: &mut Vec<u8>,
    key: &mut Vec<u8>,
) -> Outcome {
    out.clear();
    if req.len() < 12 || req[2] & 0x80 != 0 {
        return Outcome::Drop;
    }
    match parse_plain(req, key) {
        Parse::Plain(p) => answer(table, req, &p, key, transport, policy, out),
        Parse::Slow => slow(table, req, transport, policy, out, key),
    }
}

/// Reads the table lines that answering `reqs` will read first, without answering them. A
/// server that received several requests at once calls this before answering any: their
/// cache misses then overlap. `key` and `starts` are scratch buffers.
pub fn touch<'a>(
    table: &DnsTable,
    reqs: impl IntoIterator<Item = &'a [u8]>,
    key: &mut Vec<u8>,
    starts: &mut Vec<usize>,
) {
    starts.clear();
    for req in reqs {
        if req.len() >= 12
            && req[2] & 0x80 == 0
            && let Parse::Plain(_) = parse_plain(req, key)
        {
            starts.push(table.first_slot_of(key));
        }
    }
    table.touch(starts);
}

/// The answer to a request of which only the first bytes, `head`, were received (it did not
/// fit the receive buffer): FORMERR with the request's id and opcode, nothing when `head` is
/// not a request.
pub fn oversized(head: &[u8], out: &mut Vec<u8>) -> Outcome {
    out.clear();
    if head.len() < 12 || head[2] & 0x80 != 0 {
        return Outcome::Drop;
    }
    let id = u16::from_be_bytes([head[0], head[1]]);
    error(
        id,
        OpCode::from_u8((head[2] >> 3) & 0x0F),
        ResponseCode::FormErr,
        None,
        out,
    )
}

fn u16_at(b: &[u8], i: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(i)?, *b.get(i + 1)?]))
}

fn parse_plain(req: &[u8], key: &mut Vec<u8>) -> Parse {
    parse_plain_inner(req, key).map_or(Parse::Slow, Parse::Plain)
}

fn parse_plain_inner(req: &[u8], key: &mut Vec<u8>) -> Option<Plain> {
    let flags = u16_at(req, 2)?;
    let (qd, an, ns, ar) = (
        u16_at(req, 4)?,
        u16_at(req, 6)?,
        u16_at(req, 8)?,
        u16_at(req, 10)?,
    );
    if flags & 0x7800 != 0 || qd != 1 || an != 0 || ns != 0 || ar > 1 {
        return None;
    }
    // Walk the labels, then copy the name once and lower-case it whole (length bytes are at
    // most 63, below 'A': lower-casing leaves them alone).
    let mut i = 12;
    loop {
        let len = usize::from(*req.get(i)?);
        if len == 0 {
            i += 1;
            break;
        }
        if len > 63 || i - 12 + len + 2 > 255 {
            return None;
        }
        i += 1 + len;
    }
    key.clear();
    key.extend_from_slice(req.get(12..i)?);
    key.make_ascii_lowercase();
    let qtype = u16_at(req, i)?;
    if u16_at(req, i + 2)? != u16::from(DNSClass::IN) {
        return None;
    }
    let qend = i + 4;
    let edns = if ar == 1 {
        // OPT: root owner, type 41, class = payload, ttl = ext-rcode, version, flags; rdlen.
        let opt = req.get(qend..qend + 11)?;
        let rdlen = usize::from(u16::from_be_bytes([opt[9], opt[10]]));
        if opt[0] != 0 || opt[1..3] != [0, 41] || opt[6] != 0 || req.len() < qend + 11 + rdlen {
            return None;
        }
        // Options (cookies, padding, ...) are ignored, as RFC 6891 allows.
        Some(ClientEdns {
            payload: u16::from_be_bytes([opt[3], opt[4]]),
            dnssec_ok: opt[7] & 0x80 != 0,
        })
    } else {
        None
    };
    Some(Plain { qend, qtype, edns })
}

fn answer(
    table: Option<&DnsTable>,
    req: &[u8],
    p: &Plain,
    key: &[u8],
    transport: Transport,
    policy: Policy,
    out: &mut Vec<u8>,
) -> Outcome {
    let Some(table) = table else {
        return negative(req, p, None, ResponseCode::ServFail, transport, policy, out);
    };
    match table.lookup(key, p.qtype) {
        Lookup::Answer(a) if a.is_available() => {
            a.write(&req[12..p.qend], out);
            finish(req, p, ResponseCode::NoError, transport, policy, out)
        }
        // The builder had no usable message for this answer: a failure, not a bad reply.
        Lookup::Answer(_) => negative(req, p, None, ResponseCode::ServFail, transport, policy, out),
        Lookup::NoData(z) => negative(
            req,
            p,
            Some(z),
            ResponseCode::NoError,
            transport,
            policy,
            out,
        ),
        Lookup::NxDomain(z) if policy.forward && z.kind != ZoneKind::Cluster => Outcome::Forward,
        Lookup::NxDomain(z) => negative(
            req,
            p,
            Some(z),
            ResponseCode::NXDomain,
            transport,
            policy,
            out,
        ),
        Lookup::Outside if policy.forward => Outcome::Forward,
        Lookup::Outside => negative(req, p, None, ResponseCode::Refused, transport, policy, out),
    }
}

/// Header + question (+ SOA of `zone` in authority) with `rcode`.
fn negative(
    req: &[u8],
    p: &Plain,
    zone: Option<&Zone>,
    rcode: ResponseCode,
    transport: Transport,
    policy: Policy,
    out: &mut Vec<u8>,
) -> Outcome {
    out.extend_from_slice(&req[..p.qend]);
    out[4..12].copy_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
    if let Some(z) = zone {
        // Owner: a pointer to the zone's apex inside the question name.
        let offset = p.qend - 4 - z.wire.len();
        let ptr = 0xC000 | u16::try_from(offset).unwrap_or(0);
        out.extend_from_slice(&ptr.to_be_bytes());
        out.extend_from_slice(&z.soa_tail);
        out[8..10].copy_from_slice(&1u16.to_be_bytes());
    }
    finish(req, p, rcode, transport, policy, out)
}

/// Sets id, flags and rcode, appends the OPT record, enforces the size limit.
fn finish(
    req: &[u8],
    p: &Plain,
    rcode: ResponseCode,
    transport: Transport,
    policy: Policy,
    out: &mut Vec<u8>,
) -> Outcome {
    let limit = match (transport, p.edns) {
        (Transport::Tcp, _) => usize::from(u16::MAX),
        (Transport::Udp, None) => 512,
        (Transport::Udp, Some(e)) => usize::from(e.payload).clamp(512, MAX_UDP),
    };
    let opt_len = if p.edns.is_some() { 11 } else { 0 };
    let truncated = out.len() + opt_len > limit;
    if truncated {
        // Header and question only: the client retries over TCP.
        out.truncate(p.qend);
        out[6..12].copy_from_slice(&[0, 0, 0, 0, 0, 0]);
    }
    out[0..2].copy_from_slice(&req[0..2]);
    let qflags = u16::from_be_bytes([req[2], req[3]]);
    let authoritative = !matches!(rcode, ResponseCode::Refused | ResponseCode::ServFail);
    let mut flags = 0x8000 | (qflags & 0x0110); // QR; RD and CD copied
    if authoritative {
        flags |= 0x0400;
    }
    if truncated {
        flags |= 0x0200;
    }
    if policy.forward {
        flags |= 0x0080;
    }
    flags |= u16::from(rcode.low());
    out[2..4].copy_from_slice(&flags.to_be_bytes());
    if let Some(e) = p.edns {
        let ar = u16::from_be_bytes([out[10], out[11]]) + 1;
        out[10..12].copy_from_slice(&ar.to_be_bytes());
        out.extend_from_slice(&[0, 0, 41]);
        out.extend_from_slice(&EDNS_PAYLOAD.to_be_bytes());
        out.extend_from_slice(&[0, 0, if e.dnssec_ok { 0x80 } else { 0 }, 0, 0, 0]);
    }
    Outcome::Reply(rcode)
}

/// Everything the fast path declined.
fn slow(
    table: Option<&DnsTable>,
    req: &[u8],
    transport: Transport,
    policy: Policy,
    out: &mut Vec<u8>,
    key: &mut Vec<u8>,
) -> Outcome {
    let id = u16::from_be_bytes([req[0], req[1]]);
    let msg = match Message::from_vec(req) {
        Ok(m) => m,
        Err(_) => return error(id, OpCode::Query, ResponseCode::FormErr, None, out),
    };
    if msg.metadata.message_type != MessageType::Query {
        return Outcome::Drop;
    }
    let op = msg.metadata.op_code;
    let edns = msg.edns.clone();
    if op != OpCode::Query {
        return error(id, op, ResponseCode::NotImp, Some(&msg), out);
    }
    if edns.as_ref().is_some_and(|e| e.version() > 0) {
        return error(id, op, ResponseCode::BADVERS, Some(&msg), out);
    }
    if msg.queries.len() != 1 {
        return error(id, op, ResponseCode::FormErr, Some(&msg), out);
    }
    if msg.queries[0].query_class() != DNSClass::IN {
        return error(id, op, ResponseCode::Refused, Some(&msg), out);
    }
    // A legitimate query in an unusual shape: re-encode it plainly and answer that.
    let mut plain = Message::new(id, MessageType::Query, OpCode::Query);
    plain.metadata.recursion_desired = msg.metadata.recursion_desired;
    plain.metadata.checking_disabled = msg.metadata.checking_disabled;
    plain.add_query(msg.queries[0].clone());
    if let Some(e) = edns {
        let mut clean = Edns::new();
        clean.set_max_payload(e.max_payload());
        clean.set_dnssec_ok(e.flags().dnssec_ok);
        plain.set_edns(clean);
    }
    let Ok(bytes) = plain.to_vec() else {
        return error(id, op, ResponseCode::FormErr, Some(&msg), out);
    };
    match parse_plain_inner(&bytes, key) {
        Some(p) => answer(table, &bytes, &p, key, transport, policy, out),
        None => error(id, op, ResponseCode::FormErr, Some(&msg), out),
    }
}

fn error(
    id: u16,
    op: OpCode,
    rcode: ResponseCode,
    req: Option<&Message>,
    out: &mut Vec<u8>,
) -> Outcome {
    let mut m = Message::error_msg(id, op, rcode);
    if let Some(req) = req {
        m.metadata.recursion_desired = req.metadata.recursion_desired;
        m.add_queries(req.queries.iter().cloned());
        if req.edns.is_some() || rcode == ResponseCode::BADVERS {
            let mut e = Edns::new();
            e.set_max_payload(EDNS_PAYLOAD);
            e.set_rcode_high(rcode.high());
            m.set_edns(e);
        }
    }
    out.clear();
    match m.to_vec() {
        Ok(v) => {
            out.extend_from_slice(&v);
            Outcome::Reply(rcode)
        }
        Err(_) => Outcome::Drop,
    }
}
