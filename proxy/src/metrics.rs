//! Proxy metrics: per Service port and endpoint counters read from the live table at
//! scrape time (the data path only bumps relaxed atomics), plus kube-proxy's sync and
//! network-programming histograms.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

use crate::endpoint::{EndpointStats, now_ms};
use crate::shared::Shared;

/// Figures of the reconciler.
#[derive(Debug)]
pub struct ProxyMetrics {
    sync: Histogram,
    programming: Histogram,
    last_sync_unix_ms: AtomicU64,
    frontends: AtomicU64,
    listening: AtomicU64,
}

impl Default for ProxyMetrics {
    fn default() -> Self {
        ProxyMetrics {
            // kube-proxy's buckets: 1 ms doubling 15 times.
            sync: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            // kube-proxy's network programming buckets start at 0.25 s; ours are faster,
            // so start at 1 ms (doubling to about 16 s).
            programming: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            last_sync_unix_ms: AtomicU64::new(0),
            frontends: AtomicU64::new(0),
            listening: AtomicU64::new(0),
        }
    }
}

impl ProxyMetrics {
    pub(crate) fn record_sync(
        &self,
        took: Duration,
        since_change: Option<Duration>,
        frontends: usize,
        listening: usize,
    ) {
        self.sync.observe(took.as_secs_f64());
        if let Some(d) = since_change {
            self.programming.observe(d.as_secs_f64());
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        self.last_sync_unix_ms.store(now, Ordering::Relaxed);
        self.frontends.store(frontends as u64, Ordering::Relaxed);
        self.listening.store(listening as u64, Ordering::Relaxed);
    }

    /// Frontends with an open socket, after a retry outside a sync.
    pub(crate) fn set_listening(&self, listening: usize) {
        self.listening.store(listening as u64, Ordering::Relaxed);
    }
}

/// Prometheus collector of the userspace proxy.
#[derive(Debug)]
pub struct ProxyCollector {
    shared: Arc<Shared>,
    metrics: Arc<ProxyMetrics>,
}

impl ProxyCollector {
    pub(crate) fn new(shared: Arc<Shared>, metrics: Arc<ProxyMetrics>) -> Self {
        ProxyCollector { shared, metrics }
    }
}

type Field = fn(&EndpointStats) -> &AtomicU64;

impl Collector for ProxyCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let table = self.shared.table.load_full();
        let counters: [(&str, &str, Field); 4] = [
            (
                "svcplane_proxy_connections",
                "Connections (UDP: flows) sent to an endpoint.",
                |s| &s.connections,
            ),
            (
                "svcplane_proxy_connect_failures",
                "Connects to an endpoint that failed or timed out (UDP: refused flows).",
                |s| &s.connect_failures,
            ),
            (
                "svcplane_proxy_ejections",
                "Times an endpoint was ejected from balancing after a failed connect.",
                |s| &s.ejections,
            ),
            (
                "svcplane_proxy_bytes",
                "Payload bytes relayed, by direction.",
                |s| &s.bytes_to_endpoint,
            ),
        ];
        for (name, help, field) in counters {
            let mut enc = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (key, eps) in &table.ports {
                let port = key.port.to_string();
                for e in eps {
                    let endpoint = e.addr.to_string();
                    let svc = key.service.to_string();
                    let base = [
                        ("service", svc.as_str()),
                        ("port", port.as_str()),
                        ("protocol", key.protocol.as_str()),
                        ("endpoint", endpoint.as_str()),
                    ];
                    if name == "svcplane_proxy_bytes" {
                        for (dir, v) in [
                            ("to_endpoint", &e.stats.bytes_to_endpoint),
                            ("to_client", &e.stats.bytes_to_client),
                        ] {
                            let labels = [base[0], base[1], base[2], base[3], ("direction", dir)];
                            ConstCounter::new(v.load(Ordering::Relaxed))
                                .encode(enc.encode_family(&labels)?)?;
                        }
                    } else {
                        ConstCounter::new(field(&e.stats).load(Ordering::Relaxed))
                            .encode(enc.encode_family(&base)?)?;
                    }
                }
            }
        }
        let now = now_ms();
        let gauges: [(&str, &str); 2] = [
            (
                "svcplane_proxy_connections_active",
                "Connections (UDP: flows) open to an endpoint now.",
            ),
            (
                "svcplane_proxy_endpoint_ejected",
                "1 while an endpoint is ejected from balancing.",
            ),
        ];
        for (i, (name, help)) in gauges.into_iter().enumerate() {
            let mut enc = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (key, eps) in &table.ports {
                let port = key.port.to_string();
                let svc = key.service.to_string();
                for e in eps {
                    let endpoint = e.addr.to_string();
                    let labels = [
                        ("service", svc.as_str()),
                        ("port", port.as_str()),
                        ("protocol", key.protocol.as_str()),
                        ("endpoint", endpoint.as_str()),
                        ("state", e.condition().as_str()),
                    ];
                    let v = if i == 0 {
                        i64::try_from(e.stats.active.load(Ordering::Relaxed)).unwrap_or(i64::MAX)
                    } else {
                        i64::from(e.is_ejected(now))
                    };
                    ConstGauge::new(v).encode(enc.encode_family(&labels)?)?;
                }
            }
        }
        let st = &self.shared.stats;
        let mut enc = encoder.encode_descriptor(
            "svcplane_proxy_rejected",
            "Connections reset or datagrams dropped without reaching an endpoint, by reason.",
            None,
            MetricType::Counter,
        )?;
        for (reason, v) in [
            ("no_endpoint", &st.no_endpoint),
            ("all_endpoints_failed", &st.all_failed),
            ("udp_flow_limit", &st.udp_dropped),
        ] {
            ConstCounter::new(v.load(Ordering::Relaxed))
                .encode(enc.encode_family(&[("reason", reason)])?)?;
        }
        let m = &self.metrics;
        for (name, help, v) in [
            (
                "svcplane_proxy_frontends",
                "Frontends (address, port, protocol) in the programmed table.",
                m.frontends.load(Ordering::Relaxed),
            ),
            (
                "svcplane_proxy_listeners",
                "Frontends with an open socket.",
                m.listening.load(Ordering::Relaxed),
            ),
            (
                "svcplane_proxy_programmed_version",
                "Snapshot version the proxy runs.",
                table.version,
            ),
        ] {
            let enc = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX)).encode(enc)?;
        }
        let enc = encoder.encode_descriptor(
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
            "The last time proxy rules were successfully synced.",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(m.last_sync_unix_ms.load(Ordering::Relaxed) as f64 / 1e3).encode(enc)?;
        let enc = encoder.encode_descriptor(
            "kubeproxy_sync_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds: building the table from a snapshot and \
             reconciling listeners and addresses.",
            None,
            MetricType::Histogram,
        )?;
        m.sync.encode(enc)?;
        let enc = encoder.encode_descriptor(
            "kubeproxy_network_programming_duration_seconds",
            "In-cluster network programming latency in seconds: from the manifest change \
             being noticed to the proxy running the snapshot that has it.",
            None,
            MetricType::Histogram,
        )?;
        m.programming.encode(enc)?;
        Ok(())
    }
}
