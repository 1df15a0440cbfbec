//! DNS metrics with CoreDNS's names and labels. Each serving thread owns its counters
//! (relaxed atomics, no locks on the query path); a collector sums them at scrape time.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use hickory_proto::op::ResponseCode;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

use crate::wire::Transport;

/// Query types CoreDNS labels by name; every other type is `other`.
const TYPES: [(u16, &str); 19] = [
    (1, "A"),
    (28, "AAAA"),
    (5, "CNAME"),
    (48, "DNSKEY"),
    (43, "DS"),
    (15, "MX"),
    (50, "NSEC3"),
    (47, "NSEC"),
    (2, "NS"),
    (12, "PTR"),
    (46, "RRSIG"),
    (6, "SOA"),
    (33, "SRV"),
    (16, "TXT"),
    (65, "HTTPS"),
    (64, "SVCB"),
    (251, "IXFR"),
    (252, "AXFR"),
    (255, "ANY"),
];
const N_TYPES: usize = TYPES.len() + 1;
const RCODES: [(u16, &str); 7] = [
    (0, "NOERROR"),
    (1, "FORMERR"),
    (2, "SERVFAIL"),
    (3, "NXDOMAIN"),
    (4, "NOTIMP"),
    (5, "REFUSED"),
    (16, "BADVERS"),
];
const N_RCODES: usize = RCODES.len() + 1;
/// CoreDNS's `plugin.TimeBuckets`: 0.25 ms doubling 16 times.
const BUCKETS: usize = 16;

fn bucket_bound(i: usize) -> f64 {
    0.00025 * f64::from(1u32 << i)
}

/// Counters of one serving thread (or of the TCP handler).
#[derive(Debug)]
pub struct ThreadCounters {
    /// [proto][family][type]
    requests: Vec<AtomicU64>,
    responses: [AtomicU64; N_RCODES],
    /// Per-bucket (not cumulative) counts, the last one is +Inf.
    durations: [AtomicU64; BUCKETS + 1],
    duration_nanos: AtomicU64,
}

impl ThreadCounters {
    fn new() -> Self {
        Self {
            requests: (0..2 * 2 * N_TYPES).map(|_| AtomicU64::new(0)).collect(),
            responses: std::array::from_fn(|_| AtomicU64::new(0)),
            durations: std::array::from_fn(|_| AtomicU64::new(0)),
            duration_nanos: AtomicU64::new(0),
        }
    }

    /// Counts one answered request.
    pub fn record(
        &self,
        req: &[u8],
        transport: Transport,
        client: SocketAddr,
        rcode: ResponseCode,
        started: Instant,
    ) {
        let proto = usize::from(transport == Transport::Tcp);
        let family = usize::from(client.is_ipv6());
        let t = qtype(req)
            .and_then(|q| TYPES.iter().position(|(v, _)| *v == q))
            .unwrap_or(N_TYPES - 1);
        self.requests[(proto * 2 + family) * N_TYPES + t].fetch_add(1, Ordering::Relaxed);
        let code = u16::from(rcode);
        let r = RCODES
            .iter()
            .position(|(v, _)| *v == code)
            .unwrap_or(N_RCODES - 1);
        self.responses[r].fetch_add(1, Ordering::Relaxed);
        let secs = started.elapsed().as_secs_f64();
        let b = (0..BUCKETS)
            .find(|&i| secs <= bucket_bound(i))
            .unwrap_or(BUCKETS);
        self.durations[b].fetch_add(1, Ordering::Relaxed);
        self.duration_nanos
            .fetch_add((secs * 1e9) as u64, Ordering::Relaxed);
    }
}

/// The query type of a request, read past the first question name.
fn qtype(req: &[u8]) -> Option<u16> {
    let mut i = 12;
    loop {
        let len = *req.get(i)?;
        if len == 0 {
            i += 1;
            break;
        }
        if len & 0xC0 == 0xC0 {
            i += 2;
            break;
        }
        i += 1 + usize::from(len);
    }
    Some(u16::from_be_bytes([*req.get(i)?, *req.get(i + 1)?]))
}

/// All DNS metrics of one server.
#[derive(Debug)]
pub struct DnsMetrics {
    server: String,
    threads: Mutex<Vec<Arc<ThreadCounters>>>,
    pub(crate) cache_hits_success: AtomicU64,
    pub(crate) cache_hits_denial: AtomicU64,
    pub(crate) cache_misses: AtomicU64,
    pub(crate) upstream_failures: AtomicU64,
    table_version: AtomicU64,
    table_names: AtomicU64,
    programming_lag: Histogram,
}

impl DnsMetrics {
    pub fn new(listen: SocketAddr) -> Self {
        Self {
            server: format!("dns://{listen}"),
            threads: Mutex::new(Vec::new()),
            cache_hits_success: AtomicU64::new(0),
            cache_hits_denial: AtomicU64::new(0),
            cache_misses: AtomicU64::new(0),
            upstream_failures: AtomicU64::new(0),
            table_version: AtomicU64::new(0),
            table_names: AtomicU64::new(0),
            // 0.5 ms to about 8 s.
            programming_lag: Histogram::new(exponential_buckets(0.0005, 2.0, 15)),
        }
    }

    /// Counters for one more serving thread.
    pub fn thread_counters(&self) -> Arc<ThreadCounters> {
        let c = Arc::new(ThreadCounters::new());
        if let Ok(mut t) = self.threads.lock() {
            t.push(Arc::clone(&c));
        }
        c
    }

    pub(crate) fn set_table(&self, version: u64, names: usize) {
        self.table_version.store(version, Ordering::Relaxed);
        self.table_names
            .store(u64::try_from(names).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// Version of the snapshot DNS answers from (0 before the first).
    /// Records how long after its publication a snapshot's names were answered.
    pub(crate) fn observe_programming_lag(&self, lag: std::time::Duration) {
        self.programming_lag.observe(lag.as_secs_f64());
    }

    pub fn table_version(&self) -> u64 {
        self.table_version.load(Ordering::Relaxed)
    }

    fn threads(&self) -> Vec<Arc<ThreadCounters>> {
        self.threads.lock().map(|t| t.clone()).unwrap_or_default()
    }
}

/// Adapter registering `DnsMetrics` with a prometheus-client `Registry`.
#[derive(Debug)]
pub struct DnsCollector(pub Arc<DnsMetrics>);

impl Collector for DnsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let m = &self.0;
        let threads = m.threads();
        let sum = |f: &dyn Fn(&ThreadCounters) -> u64| threads.iter().map(|t| f(t)).sum::<u64>();
        let server = m.server.as_str();

        let mut enc = encoder.encode_descriptor(
            "coredns_dns_requests",
            "Counter of DNS requests made per zone, protocol and family.",
            None,
            MetricType::Counter,
        )?;
        for (p, proto) in ["udp", "tcp"].iter().enumerate() {
            for (f, family) in ["1", "2"].iter().enumerate() {
                for t in 0..N_TYPES {
                    let v = sum(&|c| c.requests[(p * 2 + f) * N_TYPES + t].load(Ordering::Relaxed));
                    if v == 0 {
                        continue;
                    }
                    let ty = TYPES.get(t).map_or("other", |(_, n)| n);
                    let labels = [
                        ("server", server),
                        ("zone", "."),
                        ("view", ""),
                        ("proto", proto),
                        ("family", family),
                        ("type", ty),
                    ];
                    ConstCounter::new(v).encode(enc.encode_family(&labels)?)?;
                }
            }
        }

        let mut enc = encoder.encode_descriptor(
            "coredns_dns_responses",
            "Counter of response status codes.",
            None,
            MetricType::Counter,
        )?;
        for r in 0..N_RCODES {
            let v = sum(&|c| c.responses[r].load(Ordering::Relaxed));
            if v == 0 {
                continue;
            }
            let rcode = RCODES.get(r).map_or("other", |(_, n)| n);
            let labels = [
                ("server", server),
                ("zone", "."),
                ("view", ""),
                ("rcode", rcode),
                ("plugin", ""),
            ];
            ConstCounter::new(v).encode(enc.encode_family(&labels)?)?;
        }

        let mut enc = encoder.encode_descriptor(
            "coredns_dns_request_duration_seconds",
            "Histogram of the time (in seconds) each request took.",
            None,
            MetricType::Histogram,
        )?;
        let buckets: Vec<(f64, u64)> = (0..=BUCKETS)
            .map(|i| {
                let bound = if i < BUCKETS {
                    bucket_bound(i)
                } else {
                    f64::MAX
                };
                (bound, sum(&|c| c.durations[i].load(Ordering::Relaxed)))
            })
            .collect();
        let count: u64 = buckets.iter().map(|(_, c)| c).sum();
        let total = sum(&|c| c.duration_nanos.load(Ordering::Relaxed)) as f64 / 1e9;
        let labels = [("server", server), ("zone", "."), ("view", "")];
        enc.encode_family(&labels)?
            .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                total, count, &buckets, None,
            )?;

        let mut enc = encoder.encode_descriptor(
            "coredns_cache_hits",
            "The count of cache hits.",
            None,
            MetricType::Counter,
        )?;
        for (ty, v) in [
            ("success", &m.cache_hits_success),
            ("denial", &m.cache_hits_denial),
        ] {
            let labels = [
                ("server", server),
                ("type", ty),
                ("zones", "."),
                ("view", ""),
            ];
            ConstCounter::new(v.load(Ordering::Relaxed)).encode(enc.encode_family(&labels)?)?;
        }
        let labels = [("server", server), ("zones", "."), ("view", "")];
        let enc = encoder.encode_descriptor(
            "coredns_cache_misses",
            "The count of cache misses.",
            None,
            MetricType::Counter,
        )?;
        let mut enc = enc;
        ConstCounter::new(m.cache_misses.load(Ordering::Relaxed))
            .encode(enc.encode_family(&labels)?)?;

        let enc = encoder.encode_descriptor(
            "svcplane_dns_upstream_failures",
            "Forwarded queries no upstream answered (the client got SERVFAIL).",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(m.upstream_failures.load(Ordering::Relaxed)).encode(enc)?;
        let enc = encoder.encode_descriptor(
            "svcplane_dns_table_version",
            "Snapshot version the DNS table was built from.",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(i64::try_from(m.table_version()).unwrap_or(i64::MAX)).encode(enc)?;
        let enc = encoder.encode_descriptor(
            "svcplane_dns_table_names",
            "Names in the DNS table.",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(i64::try_from(m.table_names.load(Ordering::Relaxed)).unwrap_or(i64::MAX))
            .encode(enc)?;
        let enc = encoder.encode_descriptor(
            "svcplane_dns_programming_lag_seconds",
            "Time from a snapshot's publication to DNS answering its names, which waits for \
             the data plane to report the snapshot programmed.",
            None,
            MetricType::Histogram,
        )?;
        m.programming_lag.encode(enc)?;
        Ok(())
    }
}
