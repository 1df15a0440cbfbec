//! The load generator. It runs on one thread that entered the client namespace and is
//! pinned to the load CPU; the throughput tests multiplex their connections on a
//! current-thread tokio runtime in that thread, the latency and bulk tests use one blocking
//! socket.
//!
//! - `conn`: closed loop over C connections, each: connect, one request with
//!   `Connection: close`, read the answer, close (the server closes first; the namespaces
//!   keep no TIME_WAIT sockets). Figure: connections per second.
//! - `keepalive`: C connections, requests back to back. Figure: requests per second.
//! - `latency`: one keep-alive connection at a fixed offered rate; each request's latency
//!   counts from the moment it was due, not from when it was sent, so a slow answer
//!   delays the next requests and their waiting is measured (no coordinated omission).
//! - `bulk`: one connection downloading `GET /bulk/N` repeatedly. Figure: Gbit/s.
//!
//! CPU time: the client thread's (RUSAGE_THREAD), this process's (client + backends, plus
//! the softirq work the kernel charges to them) and the proxy process's (`/proc/PID/stat`).

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream as StdStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::error::{BenchError, Result};
use crate::sys;

const REQ_KEEPALIVE: &[u8] = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n";
const REQ_CLOSE: &[u8] = b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n";
/// One operation taking longer than this counts as an error.
const OP_TIMEOUT: Duration = Duration::from_secs(2);

/// The measurements, in the order they run within a mode's slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Test {
    /// New connections per second.
    Conn,
    /// Keep-alive requests per second.
    Keepalive,
    /// Latency percentiles at a fixed offered rate.
    Latency,
    /// Bulk throughput of one connection.
    Bulk,
    /// Programming time: cold load and one endpoint change (not a load test).
    Program,
}

impl Test {
    pub const LOAD: [Test; 4] = [Test::Conn, Test::Keepalive, Test::Latency, Test::Bulk];

    pub fn name(self) -> &'static str {
        match self {
            Test::Conn => "conn",
            Test::Keepalive => "keepalive",
            Test::Latency => "latency",
            Test::Bulk => "bulk",
            Test::Program => "program",
        }
    }
}

impl std::str::FromStr for Test {
    type Err = String;
    fn from_str(s: &str) -> Result<Test, String> {
        [
            Test::Conn,
            Test::Keepalive,
            Test::Latency,
            Test::Bulk,
            Test::Program,
        ]
        .into_iter()
        .find(|t| t.name() == s)
        .ok_or_else(|| format!("unknown test {s:?} (conn, keepalive, latency, bulk, program)"))
    }
}

/// How to load a target.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub duration: Duration,
    /// Connections of the `conn` and `keepalive` tests.
    pub connections: usize,
    /// Offered requests per second of the `latency` test.
    pub rate: u32,
    /// Bytes per `bulk` request.
    pub bulk_bytes: u64,
    /// CPU the generator is pinned to.
    pub cpu: Option<usize>,
}

/// Figures of one test: name -> value (names carry their unit).
pub type Figures = BTreeMap<String, f64>;

/// Runs `test` against `target` from namespace `client_ns`; `proxy_pid` is the process
/// whose CPU time is charged to the data plane (userspace daemon, HAProxy).
pub fn measure(
    client_ns: &str,
    target: SocketAddr,
    test: Test,
    opts: &LoadOptions,
    proxy_pid: Option<u32>,
) -> Result<(Figures, u64)> {
    let opts = opts.clone();
    let h = sys::spawn_in("bench-load", client_ns, opts.cpu, move || {
        let proxy0 = proxy_pid.and_then(sys::pid_cpu);
        let (process0, thread0) = (sys::process_cpu(), sys::thread_cpu());
        let started = Instant::now();
        let mut out = match test {
            Test::Conn => throughput(target, opts.connections, opts.duration, true)?,
            Test::Keepalive => throughput(target, opts.connections, opts.duration, false)?,
            Test::Latency => latency(target, opts.rate, opts.duration)?,
            Test::Bulk => bulk(target, opts.bulk_bytes, opts.duration)?,
            Test::Program => return Err(BenchError::mode("load", "program is not a load test")),
        };
        let elapsed = started.elapsed().as_secs_f64();
        let client = (sys::thread_cpu() - thread0).as_secs_f64();
        let process = (sys::process_cpu() - process0).as_secs_f64();
        let proxy = match (proxy0, proxy_pid.and_then(sys::pid_cpu)) {
            (Some(a), Some(b)) => Some((b - a).as_secs_f64()),
            _ => None,
        };
        let ops = out.ops.max(1) as f64;
        let unit = if test == Test::Bulk { "mb" } else { "op" };
        let f = &mut out.figures;
        f.insert(format!("client_cpu_us_per_{unit}"), client * 1e6 / ops);
        if let Some(p) = proxy {
            f.insert(format!("proxy_cpu_us_per_{unit}"), p * 1e6 / ops);
        }
        f.insert(
            format!("total_cpu_us_per_{unit}"),
            (process + proxy.unwrap_or(0.0)) * 1e6 / ops,
        );
        f.insert("elapsed_s".into(), elapsed);
        Ok((out.figures, out.errors))
    })?;
    sys::join(h, "load generator")
}

struct Outcome {
    figures: Figures,
    /// Operations for the CPU-per-operation figures (requests, or MB for bulk).
    ops: u64,
    errors: u64,
}

// === throughput: conn and keepalive ===

fn throughput(
    target: SocketAddr,
    conns: usize,
    duration: Duration,
    close: bool,
) -> Result<Outcome> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| BenchError::io("load runtime", e))?;
    let counts = Arc::new(Counts::default());
    let c2 = counts.clone();
    let elapsed = rt.block_on(async move {
        let start = Instant::now();
        let deadline = start + duration;
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..conns.max(1) {
            let c = c2.clone();
            set.spawn(async move {
                // One timer per connection, not per request: an operation stalled past the
                // end of the test counts as one error.
                let work = async {
                    if close {
                        conn_loop(target, deadline, &c).await;
                    } else {
                        keepalive_loop(target, deadline, &c).await;
                    }
                };
                let until = tokio::time::Instant::from_std(deadline + OP_TIMEOUT);
                if tokio::time::timeout_at(until, work).await.is_err() {
                    c.errors.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        while set.join_next().await.is_some() {}
        start.elapsed()
    });
    let (ops, errors) = (
        counts.ops.load(Ordering::Relaxed),
        counts.errors.load(Ordering::Relaxed),
    );
    let name = if close { "conn_per_s" } else { "req_per_s" };
    let mut figures = Figures::new();
    figures.insert(name.into(), ops as f64 / elapsed.as_secs_f64());
    Ok(Outcome {
        figures,
        ops,
        errors,
    })
}

/// Operations and errors of the throughput tests, shared by their connections.
#[derive(Debug, Default)]
struct Counts {
    ops: AtomicU64,
    errors: AtomicU64,
}

async fn conn_loop(target: SocketAddr, deadline: Instant, c: &Counts) {
    let mut buf = vec![0u8; 4096];
    while Instant::now() < deadline {
        let one = async {
            let mut s = TcpStream::connect(target).await?;
            s.set_nodelay(true)?;
            s.write_all(REQ_CLOSE).await?;
            read_response(&mut s, &mut buf).await
        };
        if one.await.is_ok() {
            c.ops.fetch_add(1, Ordering::Relaxed);
        } else {
            c.errors.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

async fn keepalive_loop(target: SocketAddr, deadline: Instant, c: &Counts) {
    let mut buf = vec![0u8; 4096];
    while Instant::now() < deadline {
        let Ok(mut s) = TcpStream::connect(target).await else {
            c.errors.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
        };
        let _ = s.set_nodelay(true);
        let mut ops = 0;
        while Instant::now() < deadline {
            let ok = s.write_all(REQ_KEEPALIVE).await.is_ok()
                && read_response(&mut s, &mut buf).await.is_ok();
            if !ok {
                c.errors.fetch_add(1, Ordering::Relaxed);
                break;
            }
            ops += 1;
            if ops == 64 {
                c.ops.fetch_add(ops, Ordering::Relaxed);
                ops = 0;
            }
        }
        c.ops.fetch_add(ops, Ordering::Relaxed);
    }
}

/// Reads one whole response (head + `Content-Length` body) from `s`.
async fn read_response(s: &mut TcpStream, buf: &mut [u8]) -> std::io::Result<()> {
    let mut filled = 0;
    loop {
        let n = s.read(&mut buf[filled..]).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        filled += n;
        if let Some((head, body)) = parse_response_head(&buf[..filled]) {
            let mut have = (filled - head) as u64;
            while have < body {
                let n = s.read(buf).await?;
                if n == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                have += n as u64;
            }
            return Ok(());
        }
        if filled == buf.len() {
            return Err(std::io::ErrorKind::InvalidData.into());
        }
    }
}

/// Length of a complete response head at the start of `buf` and its `Content-Length`.
pub(crate) fn parse_response_head(buf: &[u8]) -> Option<(usize, u64)> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&buf[..end]).ok()?;
    if !head.starts_with("HTTP/1.1 200") {
        return None;
    }
    let len = head
        .split("\r\n")
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<u64>().ok())
                .flatten()
        })
        .unwrap_or(0);
    Some((end, len))
}

// === latency at a fixed rate ===

fn latency(target: SocketAddr, rate: u32, duration: Duration) -> Result<Outcome> {
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)
        .map_err(|e| BenchError::mode("latency", e.to_string()))?;
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let mut buf = vec![0u8; 4096];
    let mut stream: Option<StdStream> = None;
    let (mut ops, mut errors) = (0u64, 0u64);
    let start = Instant::now() + Duration::from_millis(5);
    let mut due = start;
    while due < start + duration {
        wait_until(due);
        let s = match stream.take() {
            Some(s) => s,
            None => match connect_std(target) {
                Ok(s) => s,
                Err(_) => {
                    errors += 1;
                    due += interval;
                    continue;
                }
            },
        };
        let mut s = s;
        let ok = s.write_all(REQ_KEEPALIVE).is_ok() && read_response_std(&mut s, &mut buf).is_ok();
        if ok {
            let ns = u64::try_from(due.elapsed().as_nanos()).unwrap_or(u64::MAX);
            let _ = hist.record(ns.max(1));
            ops += 1;
            stream = Some(s);
        } else {
            errors += 1;
        }
        due += interval;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let mut figures = Figures::new();
    let us = |q: f64| hist.value_at_quantile(q) as f64 / 1e3;
    figures.insert("p50_us".into(), us(0.50));
    figures.insert("p99_us".into(), us(0.99));
    figures.insert("p999_us".into(), us(0.999));
    figures.insert("max_us".into(), hist.max() as f64 / 1e3);
    figures.insert("offered_per_s".into(), f64::from(rate));
    figures.insert("achieved_per_s".into(), ops as f64 / elapsed);
    Ok(Outcome {
        figures,
        ops,
        errors,
    })
}

/// Sleeps until shortly before `t`, then spins: timer slack (50 µs) would otherwise be
/// counted as latency.
fn wait_until(t: Instant) {
    const SPIN: Duration = Duration::from_micros(100);
    let now = Instant::now();
    if t > now + SPIN {
        std::thread::sleep(t - now - SPIN);
    }
    while Instant::now() < t {
        std::hint::spin_loop();
    }
}

fn connect_std(target: SocketAddr) -> std::io::Result<StdStream> {
    let s = StdStream::connect_timeout(&target, OP_TIMEOUT)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(OP_TIMEOUT))?;
    Ok(s)
}

fn read_response_std(s: &mut StdStream, buf: &mut [u8]) -> std::io::Result<u64> {
    let mut filled = 0;
    loop {
        let n = s.read(&mut buf[filled..])?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        filled += n;
        if let Some((head, body)) = parse_response_head(&buf[..filled]) {
            let mut have = (filled - head) as u64;
            while have < body {
                let n = s.read(buf)?;
                if n == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                have += n as u64;
            }
            return Ok(body);
        }
        if filled == buf.len() {
            return Err(std::io::ErrorKind::InvalidData.into());
        }
    }
}

// === bulk ===

fn bulk(target: SocketAddr, bytes: u64, duration: Duration) -> Result<Outcome> {
    let mut buf = vec![0u8; 256 * 1024];
    let req = format!("GET /bulk/{bytes} HTTP/1.1\r\nHost: bench\r\n\r\n");
    let (mut total, mut errors) = (0u64, 0u64);
    let start = Instant::now();
    let mut stream: Option<StdStream> = None;
    while start.elapsed() < duration {
        let mut s = match stream.take() {
            Some(s) => s,
            None => match connect_std(target) {
                Ok(s) => s,
                Err(_) => {
                    errors += 1;
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                }
            },
        };
        match s
            .write_all(req.as_bytes())
            .and_then(|()| read_response_std(&mut s, &mut buf))
        {
            Ok(n) => {
                total += n;
                stream = Some(s);
            }
            Err(_) => errors += 1,
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let mut figures = Figures::new();
    figures.insert("gbit_per_s".into(), total as f64 * 8.0 / elapsed / 1e9);
    Ok(Outcome {
        figures,
        ops: total / 1_000_000,
        errors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_heads_parse() {
        assert_eq!(
            parse_response_head(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n"),
            None
        );
        assert_eq!(
            parse_response_head(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nb0\n"),
            Some((38, 3))
        );
        assert_eq!(parse_response_head(b"HTTP/1.1 503 No\r\n\r\n"), None);
    }

    #[test]
    fn tests_parse_by_name() {
        for t in [
            Test::Conn,
            Test::Keepalive,
            Test::Latency,
            Test::Bulk,
            Test::Program,
        ] {
            assert_eq!(t.name().parse::<Test>(), Ok(t));
        }
        assert!("nope".parse::<Test>().is_err());
    }
}
