//! Metrics of the programming loop, with kube-proxy's names where the meaning is the same:
//! how long a sync took (snapshot diff + map writes), how long after the manifest change the
//! maps held it, and the last sync's size; and the programs' connection and refusal counters
//! under the userspace mode's names, `svcplane_proxy_connections_total` and
//! `svcplane_proxy_rejected_total{reason="no_endpoint"}`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

use svcplane_config::ServicePortKey;

use crate::Listing;
use crate::sync::SyncReport;

/// Figures of the programming loop.
#[derive(Debug)]
pub struct EbpfMetrics {
    sync: Histogram,
    programming: Histogram,
    /// f64 bits.
    last_sync_seconds: AtomicU64,
    last_ops: AtomicU64,
    frontends: AtomicU64,
}

impl Default for EbpfMetrics {
    fn default() -> Self {
        EbpfMetrics {
            // 0.1 ms doubling to about 3 s: one change costs tens of microseconds.
            sync: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            programming: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            last_sync_seconds: AtomicU64::new(0),
            last_ops: AtomicU64::new(0),
            frontends: AtomicU64::new(0),
        }
    }
}

impl EbpfMetrics {
    pub(crate) fn record(&self, took: Duration, since_change: Option<Duration>, r: &SyncReport) {
        self.sync.observe(took.as_secs_f64());
        if let Some(d) = since_change {
            self.programming.observe(d.as_secs_f64());
        }
        self.last_sync_seconds
            .store(took.as_secs_f64().to_bits(), Ordering::Relaxed);
        self.last_ops.store(r.ops as u64, Ordering::Relaxed);
        self.frontends.store(r.frontends as u64, Ordering::Relaxed);
    }
}

/// Registers [`EbpfMetrics`] and the programs' connection counters in a registry (from
/// [`EbpfDataPlane::collector`](crate::EbpfDataPlane::collector)).
#[derive(Debug)]
pub struct EbpfCollector {
    pub(crate) metrics: Arc<EbpfMetrics>,
    pub(crate) listing: Listing,
}

impl EbpfCollector {
    /// `svcplane_proxy_connections_total` as the userspace mode has it: per Service port,
    /// protocol and endpoint, summed over the port's frontends, for every endpoint in a
    /// slot. A scrape reads the counters map once; when that fails the family is left out.
    fn encode_connections(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let conns = match self.listing.connections() {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "reading the connection counters (v1_conns)");
                return Ok(());
            }
        };
        let mut sums: BTreeMap<(ServicePortKey, &'static str, SocketAddr), u64> = BTreeMap::new();
        for (fe, owner, slots) in self.listing.frontends() {
            for (slot, ep) in (1..=u16::MAX).zip(slots) {
                *sums
                    .entry((owner.clone(), fe.protocol.as_str(), ep))
                    .or_default() += conns.get(fe, slot, ep);
            }
        }
        let mut enc = encoder.encode_descriptor(
            "svcplane_proxy_connections",
            "Connections (UDP: connected sockets and unconnected sockets' first datagrams) \
             the BPF programs sent to an endpoint.",
            None,
            MetricType::Counter,
        )?;
        for ((owner, protocol, ep), n) in sums {
            let svc = owner.service.to_string();
            let port = owner.port.to_string();
            let endpoint = ep.to_string();
            let labels = [
                ("service", svc.as_str()),
                ("port", port.as_str()),
                ("protocol", protocol),
                ("endpoint", endpoint.as_str()),
            ];
            ConstCounter::new(n).encode(enc.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

impl Collector for EbpfCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        self.encode_connections(&mut encoder)?;
        match self.listing.refused() {
            Ok(n) => {
                let mut enc = encoder.encode_descriptor(
                    "svcplane_proxy_rejected",
                    "Connects and datagrams the BPF programs refused (EPERM), by reason.",
                    None,
                    MetricType::Counter,
                )?;
                ConstCounter::new(n).encode(enc.encode_family(&[("reason", "no_endpoint")])?)?;
            }
            Err(e) => tracing::warn!(error = %e, "reading the refusal counter (v1_refused)"),
        }
        let m = &self.metrics;
        let enc = encoder.encode_descriptor(
            "kubeproxy_sync_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds: diffing a snapshot and writing the BPF maps.",
            None,
            MetricType::Histogram,
        )?;
        m.sync.encode(enc)?;
        let enc = encoder.encode_descriptor(
            "kubeproxy_network_programming_duration_seconds",
            "In-cluster network programming latency in seconds: from the manifest change \
             being noticed to the BPF maps holding it.",
            None,
            MetricType::Histogram,
        )?;
        m.programming.encode(enc)?;
        let gauges: [(&str, &str, f64); 3] = [
            (
                "svcplane_ebpf_last_sync_seconds",
                "Duration of the last sync (diff + map writes).",
                f64::from_bits(m.last_sync_seconds.load(Ordering::Relaxed)),
            ),
            (
                "svcplane_ebpf_last_sync_map_operations",
                "Map writes and deletes of the last sync.",
                m.last_ops.load(Ordering::Relaxed) as f64,
            ),
            (
                "svcplane_ebpf_frontends",
                "Frontends (address, port, protocol) in the services map.",
                m.frontends.load(Ordering::Relaxed) as f64,
            ),
        ];
        for (name, help, v) in gauges {
            let enc = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            ConstGauge::new(v).encode(enc)?;
        }
        Ok(())
    }
}
