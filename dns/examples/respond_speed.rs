//! Times the query path (`wire::respond`) in-process, without sockets:
//! `cargo run --release -p svcplane-dns --example respond_speed -- DIR QUERIES [KB [STRIDE]]`.
//!
//! DIR holds manifests (e.g. what `bench/dns_gen.py gen DIR/..` writes as `manifests`),
//! QUERIES lines of `name type` (a dnsperf query file). With KB, a buffer of that many KB is
//! read between two queries, a sixteenth of it each time, one byte every STRIDE bytes (64:
//! evicts caches; 4096: evicts TLB entries), standing in for the network stack's work in a
//! real server; its own time is measured apart and subtracted. Prints the best of 21 passes.
use std::hint::black_box;
use std::ops::Range;
use std::str::FromStr;
use std::time::Instant;

use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};
use svcplane_dns::DnsTable;
use svcplane_dns::wire::{self, Policy, Transport};

const PASSES: usize = 21;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = || anyhow::anyhow!("usage: respond_speed DIR QUERIES [KB [STRIDE]]");
    let dir = args.first().ok_or_else(usage)?;
    let queries = args.get(1).ok_or_else(usage)?;
    let kb: usize = args.get(2).map_or(Ok(0), |s| s.parse())?;
    let stride: usize = args.get(3).map_or(Ok(64), |s| s.parse())?;

    let mut loader = svcplane_config::Loader::new(dir, svcplane_config::ParseOptions::default());
    loader.reload()?;
    let cfg = svcplane_dns::DnsConfig::new("cluster.local", 5).map_err(anyhow::Error::msg)?;
    let table = DnsTable::build(loader.snapshot(), &cfg);
    println!(
        "{} names, index {} KB",
        table.len(),
        table.index_bytes() / 1024
    );
    let (packed, spans) = requests(&std::fs::read_to_string(queries)?)?;
    let thrash = Thrash {
        buf: vec![1u8; kb * 1024],
        stride: stride.max(1),
    };
    let (mut with, mut without) = (f64::MAX, f64::MAX);
    for _ in 0..PASSES {
        with = with.min(pass(&table, &packed, &spans, &thrash, true));
        without = without.min(pass(&table, &packed, &spans, &thrash, false));
    }
    println!(
        "{:.1} ns/query (best of {PASSES} passes over {} queries; thrash alone {without:.1})",
        with - without,
        spans.len(),
    );
    Ok(())
}

/// The queries, encoded as a stub resolver sends them, back to back in one buffer (read in
/// order, as from a receive ring).
fn requests(text: &str) -> anyhow::Result<(Vec<u8>, Vec<Range<usize>>)> {
    let mut packed = Vec::new();
    let mut spans = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let mut parts = line.split_whitespace();
        let (Some(name), Some(ty)) = (parts.next(), parts.next()) else {
            continue;
        };
        let mut m = Message::new(i as u16, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        let q = Query::query(Name::from_ascii(name)?, RecordType::from_str(ty)?);
        m.add_query(q);
        let start = packed.len();
        packed.extend_from_slice(&m.to_vec()?);
        spans.push(start..packed.len());
    }
    Ok((packed, spans))
}

struct Thrash {
    buf: Vec<u8>,
    stride: usize,
}

/// One pass over the queries, in ns per query; with `answer` false only the thrash reads.
fn pass(
    table: &DnsTable,
    packed: &[u8],
    spans: &[Range<usize>],
    thrash: &Thrash,
    answer: bool,
) -> f64 {
    let policy = Policy { forward: false };
    let (mut out, mut key) = (Vec::with_capacity(4096), Vec::with_capacity(256));
    let (len, step) = (thrash.buf.len(), thrash.buf.len() / 16);
    let (mut at, mut touched) = (0, 0u64);
    let started = Instant::now();
    for span in spans {
        for b in thrash.buf[at..]
            .iter()
            .step_by(thrash.stride)
            .take(step / thrash.stride)
        {
            touched += u64::from(*b);
        }
        at = (at + step) % len.max(1);
        if answer {
            let req = black_box(&packed[span.clone()]);
            let t = Some(table);
            black_box(wire::respond(
                t,
                req,
                Transport::Udp,
                policy,
                &mut out,
                &mut key,
            ));
        }
    }
    black_box(touched);
    started.elapsed().as_secs_f64() * 1e9 / spans.len().max(1) as f64
}
