//! Cluster DNS against Knot DNS on the same records: svcplane (`run --mode none`, which
//! serves DNS and routes nothing) and `knotd` (one UDP worker) take turns on 127.0.0.1 in
//! the node namespace, pinned to the proxy CPU; a UDP query generator on the load CPU
//! measures peak QPS (a window of outstanding queries) and p50/p99 at a fixed offered rate
//! (latency counted from when each query was due).
//!
//! The records: N ClusterIP Services (`svc-i.ns-j.svc.cluster.local`, 100 per namespace),
//! queried for their A record uniformly at random. Before measuring, a sample of answers
//! from both servers is compared (rcode and answer section, TTL included).

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::error::{BenchError, Result};
use crate::load::Figures;
use crate::{sys, topology};

const ZONE: &str = "cluster.local";
const TTL: u32 = 5;
/// Queries in flight during the peak test.
const WINDOW: usize = 100;
/// Distinct query names sent (cycled).
const QUERIES: usize = 10_000;

/// A DNS server under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DnsServer {
    Svcplane,
    Knot,
}

impl DnsServer {
    pub fn name(self) -> &'static str {
        match self {
            DnsServer::Svcplane => "svcplane",
            DnsServer::Knot => "knot",
        }
    }
}

/// The ClusterIP of Service `i`.
fn vip(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 100, 0, 1)) + i)
}

fn service_name(i: u32) -> (String, String) {
    (format!("svc-{i:05}"), format!("ns-{:03}", i / 100))
}

/// The manifests (one `v1 List`) of `n` Services with 3 ready endpoints each.
pub fn manifests(n: u32) -> serde_json::Value {
    let items: Vec<serde_json::Value> = (0..n)
        .flat_map(|i| {
            let (name, ns) = service_name(i);
            let base = u32::from(Ipv4Addr::new(10, 232, 0, 0)) + i * 4;
            [
                serde_json::json!({
                    "apiVersion": "v1", "kind": "Service",
                    "metadata": {"name": name, "namespace": ns},
                    "spec": {"clusterIP": vip(i).to_string(),
                             "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
                }),
                serde_json::json!({
                    "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                    "metadata": {"name": format!("{name}-1"), "namespace": ns,
                                 "labels": {"kubernetes.io/service-name": name}},
                    "addressType": "IPv4",
                    "ports": [{"name": "http", "port": 8080}],
                    "endpoints": (1..=3).map(|e| serde_json::json!({
                        "addresses": [Ipv4Addr::from(base + e).to_string()],
                        "conditions": {"ready": true}
                    })).collect::<Vec<_>>()
                }),
            ]
        })
        .collect();
    serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items})
}

/// Knot's zone file with the A records svcplane serves for the same Services.
pub fn zone_file(n: u32) -> String {
    let mut z = format!(
        "$ORIGIN {ZONE}.\n$TTL {TTL}\n@ SOA ns.dns.{ZONE}. hostmaster.{ZONE}. 1 7200 1800 86400 {TTL}\n\
         @ NS ns.dns.{ZONE}.\nns.dns A 127.0.0.1\n"
    );
    for i in 0..n {
        let (name, ns) = service_name(i);
        let _ = writeln!(z, "{name}.{ns}.svc A {}", vip(i));
    }
    z
}

fn knot_conf(dir: &Path, port: u16) -> String {
    let d = dir.display();
    format!(
        "server:\n    rundir: \"{d}/run\"\n    listen: 127.0.0.1@{port}\n    udp-workers: 1\n\
         \x20   tcp-workers: 1\n    background-workers: 1\n\
         database:\n    storage: \"{d}/db\"\n\
         log:\n  - target: stderr\n    any: warning\n\
         template:\n  - id: default\n    storage: \"{d}\"\n    zonefile-sync: -1\n\
         \x20   zonefile-load: whole\n    journal-content: none\n    semantic-checks: off\n\
         zone:\n  - domain: {ZONE}\n    file: \"{ZONE}.zone\"\n"
    )
}

/// A DNS query for `name` A, no EDNS.
pub fn query(id: u16, name: &str) -> Vec<u8> {
    let mut q = Vec::with_capacity(64);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]); // RD, one question
    for label in name.trim_end_matches('.').split('.') {
        q.push(u8::try_from(label.len()).unwrap_or(63));
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]); // root, A, IN
    q
}

/// The parts of an answer two servers must agree on: rcode and the answer section.
pub(crate) fn answer_key(resp: &[u8], query_len: usize) -> Option<(u8, u16, Vec<u8>)> {
    if resp.len() < query_len || resp.len() < 12 {
        return None;
    }
    let rcode = resp[3] & 0x0f;
    let ancount = u16::from_be_bytes([resp[6], resp[7]]);
    // Answer records follow the echoed question; compare them up to the authority section,
    // which is all that remains when the counts of authority/additional are zero.
    let nscount = u16::from_be_bytes([resp[8], resp[9]]);
    let arcount = u16::from_be_bytes([resp[10], resp[11]]);
    let answers = if nscount == 0 && arcount == 0 {
        resp[query_len..].to_vec()
    } else {
        Vec::new()
    };
    Some((rcode, ancount, answers))
}

/// A running DNS server; stopped on drop.
#[derive(Debug)]
struct Server {
    child: Child,
    log: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        topology::stop_pid(self.child.id(), Duration::from_secs(3));
        let _ = self.child.wait();
        topology::unregister_pid(self.child.id());
    }
}

/// What the DNS part needs from the run.
#[derive(Debug)]
pub(crate) struct DnsCtx<'a> {
    pub(crate) node_ns: &'a str,
    pub(crate) svcplane: &'a Path,
    pub(crate) work: &'a Path,
    pub(crate) proxy_cpu: usize,
    pub(crate) load_cpu: usize,
    pub(crate) duration: Duration,
    pub(crate) rate: u32,
}

/// One server at one size: peak QPS, then latency at `ctx.rate`.
pub(crate) fn measure(
    ctx: &DnsCtx<'_>,
    server: DnsServer,
    services: u32,
) -> Result<(Figures, u64)> {
    let port = 5300 + u16::from(server == DnsServer::Knot);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let srv = start(ctx, server, services, port)?;
    let names = query_names(services);
    wait_ready(ctx, &srv, addr, &names[0])?;
    let (names2, duration, rate) = (names.clone(), ctx.duration, ctx.rate);
    let pid = srv.child.id();
    let h = sys::spawn_in("dns-load", ctx.node_ns, Some(ctx.load_cpu), move || {
        let cpu0 = sys::pid_cpu(pid);
        let (qps, lost_peak) = peak(addr, &names2, duration)?;
        let cpu1 = sys::pid_cpu(pid);
        let (mut figures, lost) = latency(addr, &names2, duration, rate)?;
        figures.insert("qps".into(), qps);
        if let (Some(a), Some(b)) = (cpu0, cpu1) {
            figures.insert(
                "server_cpu_us_per_query".into(),
                (b - a).as_secs_f64() * 1e6 / (qps * duration.as_secs_f64()).max(1.0),
            );
        }
        Ok((figures, lost_peak + lost))
    })?;
    let out = sys::join(h, "dns load");
    drop(srv);
    out
}

/// Answers of both servers to a sample of queries; an error names the first difference.
pub(crate) fn compare(ctx: &DnsCtx<'_>, services: u32) -> Result<usize> {
    let names = query_names(services);
    let sample: Vec<String> = names.iter().take(200).cloned().collect();
    let mut answers = Vec::new();
    for server in [DnsServer::Svcplane, DnsServer::Knot] {
        let port = 5300 + u16::from(server == DnsServer::Knot);
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let srv = start(ctx, server, services, port)?;
        wait_ready(ctx, &srv, addr, &names[0])?;
        let s2 = sample.clone();
        let h = sys::spawn_in("dns-compare", ctx.node_ns, None, move || {
            let sock = client_socket(addr, Some(Duration::from_secs(1)))?;
            let mut buf = [0u8; 1500];
            let mut out = Vec::new();
            for (i, name) in s2.iter().enumerate() {
                let q = query(u16::try_from(i).unwrap_or(0), name);
                sock.send(&q).map_err(|e| BenchError::io("dns send", e))?;
                let n = sock
                    .recv(&mut buf)
                    .map_err(|e| BenchError::io(format!("dns answer to {name}"), e))?;
                out.push(answer_key(&buf[..n], q.len()));
            }
            Ok(out)
        })?;
        answers.push(sys::join(h, "dns compare")?);
    }
    for (i, (a, b)) in answers[0].iter().zip(&answers[1]).enumerate() {
        if a != b || a.as_ref().is_none_or(|k| k.0 != 0 || k.1 != 1) {
            return Err(BenchError::mode(
                "dns",
                format!(
                    "svcplane and Knot answer {} differently: {a:?} vs {b:?}",
                    sample[i]
                ),
            ));
        }
    }
    Ok(sample.len())
}

fn query_names(services: u32) -> Vec<String> {
    // A fixed pseudo-random sequence (xorshift) over every Service.
    let n = services.max(1);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..QUERIES)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let i = u32::try_from(x % u64::from(n)).unwrap_or(0);
            let (name, ns) = service_name(i);
            format!("{name}.{ns}.svc.{ZONE}")
        })
        .collect()
}

fn start(ctx: &DnsCtx<'_>, server: DnsServer, services: u32, port: u16) -> Result<Server> {
    let dir = ctx.work.join(format!("dns-{}-{services}", server.name()));
    if !dir.exists() {
        std::fs::create_dir_all(dir.join("run"))
            .map_err(|e| BenchError::io(format!("mkdir {}", dir.display()), e))?;
        match server {
            DnsServer::Svcplane => {
                let text = serde_json::to_vec(&manifests(services))
                    .map_err(|e| BenchError::mode("dns", e.to_string()))?;
                write(&dir.join("services.json"), &text)?;
            }
            DnsServer::Knot => {
                write(
                    &dir.join(format!("{ZONE}.zone")),
                    zone_file(services).as_bytes(),
                )?;
                write(&dir.join("knot.conf"), knot_conf(&dir, port).as_bytes())?;
            }
        }
    }
    let log = dir.join("server.log");
    let file = std::fs::File::create(&log).map_err(|e| BenchError::io("dns log", e))?;
    let err = file.try_clone().map_err(|e| BenchError::io("dns log", e))?;
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", &ctx.proxy_cpu.to_string(), "nsenter"])
        .arg(format!("--net=/run/netns/{}", ctx.node_ns));
    match server {
        DnsServer::Svcplane => {
            cmd.arg(ctx.svcplane)
                .args(["run", "--mode", "none", "--manifests"])
                .arg(dir.join("services.json"))
                .args(["--dns-listen", &format!("127.0.0.1:{port}")])
                .args(["--admin-listen", "127.0.0.1:10250", "--state-dir"])
                .arg(dir.join("state"))
                .env("RUST_LOG", "warn");
        }
        DnsServer::Knot => {
            cmd.arg("knotd").arg("-c").arg(dir.join("knot.conf"));
        }
    }
    cmd.stdin(Stdio::null()).stdout(file).stderr(err);
    let child = topology::spawn_registered(&mut cmd, server.name())?;
    Ok(Server { child, log })
}

fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).map_err(|e| BenchError::io(format!("write {}", path.display()), e))
}

fn client_socket(addr: SocketAddr, timeout: Option<Duration>) -> Result<UdpSocket> {
    let s = UdpSocket::bind("127.0.0.1:0").map_err(|e| BenchError::io("dns client bind", e))?;
    s.connect(addr)
        .map_err(|e| BenchError::io("dns client connect", e))?;
    s.set_read_timeout(timeout)
        .map_err(|e| BenchError::io("dns client", e))?;
    Ok(s)
}

fn wait_ready(ctx: &DnsCtx<'_>, srv: &Server, addr: SocketAddr, name: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let q = query(1, name);
    loop {
        let q2 = q.clone();
        let h = sys::spawn_in("dns-ready", ctx.node_ns, None, move || {
            let s = client_socket(addr, Some(Duration::from_millis(200)))?;
            let mut buf = [0u8; 1500];
            Ok(s.send(&q2).is_ok()
                && s.recv(&mut buf)
                    .is_ok_and(|n| n >= 12 && buf[3] & 0x0f == 0 && buf[7] == 1))
        })?;
        if sys::join(h, "dns ready")? {
            return Ok(());
        }
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(&srv.log).unwrap_or_default();
            return Err(BenchError::mode(
                "dns",
                format!("{addr} does not answer {name}; log:\n{log}"),
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Peak: `WINDOW` queries in flight; returns (answers/s, lost).
fn peak(addr: SocketAddr, names: &[String], duration: Duration) -> Result<(f64, u64)> {
    let s = client_socket(addr, Some(Duration::from_millis(50)))?;
    let queries: Vec<Vec<u8>> = names
        .iter()
        .enumerate()
        .map(|(i, n)| query(u16::try_from(i % 65536).unwrap_or(0), n))
        .collect();
    let mut buf = [0u8; 1500];
    let (mut next, mut answered, mut lost, mut outstanding) = (0usize, 0u64, 0u64, 0usize);
    let start = Instant::now();
    let deadline = start + duration;
    while Instant::now() < deadline {
        while outstanding < WINDOW {
            let _ = s.send(&queries[next % queries.len()]);
            next += 1;
            outstanding += 1;
        }
        match s.recv(&mut buf) {
            Ok(_) => {
                answered += 1;
                // A late answer to a query already counted lost may arrive: saturate.
                outstanding = outstanding.saturating_sub(1);
            }
            Err(_) => {
                // Nothing for 50 ms: what was in flight is lost.
                lost += outstanding as u64;
                outstanding = 0;
            }
        }
    }
    Ok((answered as f64 / start.elapsed().as_secs_f64(), lost))
}

/// Fixed offered rate; latency from when each query was due. Returns figures and lost.
fn latency(
    addr: SocketAddr,
    names: &[String],
    duration: Duration,
    rate: u32,
) -> Result<(Figures, u64)> {
    let s = client_socket(addr, None)?;
    s.set_nonblocking(true)
        .map_err(|e| BenchError::io("dns client", e))?;
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)
        .map_err(|e| BenchError::mode("dns", e.to_string()))?;
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let mut due_of = vec![None::<Instant>; 65536];
    let mut buf = [0u8; 1500];
    let start = Instant::now();
    let end = start + duration;
    let (mut due, mut seq, mut sent, mut got) = (start, 0usize, 0u64, 0u64);
    loop {
        let now = Instant::now();
        while due <= now && due < end {
            let id = seq % 65536;
            let q = query(u16::try_from(id).unwrap_or(0), &names[seq % names.len()]);
            if s.send(&q).is_ok() {
                due_of[id] = Some(due);
                sent += 1;
            }
            seq += 1;
            due += interval;
        }
        while let Ok(n) = s.recv(&mut buf) {
            if n >= 12 {
                let id = usize::from(u16::from_be_bytes([buf[0], buf[1]]));
                if let Some(d) = due_of[id].take() {
                    let ns = u64::try_from(d.elapsed().as_nanos()).unwrap_or(u64::MAX);
                    let _ = hist.record(ns.max(1));
                    got += 1;
                }
            }
        }
        if now > end + Duration::from_millis(200) || (due >= end && got == sent) {
            break;
        }
        std::hint::spin_loop();
    }
    let mut f = Figures::new();
    let us = |q: f64| hist.value_at_quantile(q) as f64 / 1e3;
    f.insert("p50_us".into(), us(0.5));
    f.insert("p99_us".into(), us(0.99));
    f.insert("p999_us".into(), us(0.999));
    f.insert("offered_qps".into(), f64::from(rate));
    Ok((f, sent - got))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_and_zone() {
        let q = query(0x1234, "svc-00001.ns-000.svc.cluster.local");
        assert_eq!(&q[..2], &[0x12, 0x34]);
        assert_eq!(q[12], 9);
        assert_eq!(&q[q.len() - 4..], &[0, 1, 0, 1]);
        let z = zone_file(2);
        assert!(z.contains("svc-00001.ns-000.svc A 10.100.0.2\n"), "{z}");
        let m = manifests(2);
        assert_eq!(m["items"].as_array().map(Vec::len), Some(4));
        assert_eq!(query_names(10).len(), QUERIES);
    }
}
