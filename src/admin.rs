//! Admin HTTP endpoint (hyper): `/healthz`, `/readyz` (both: [`crate::health`]), `/metrics`, `/debug/snapshot`,
//! `/debug/proxy` (what `svcplane status` prints).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use svcplane_config::{Snapshot, WatchStats};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::health::Health;

/// What the admin endpoint reads. Cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct AdminState {
    pub(crate) snapshots: watch::Receiver<Arc<Snapshot>>,
    pub(crate) registry: Arc<Registry>,
    /// The data plane's frontends and endpoints; `None` in mode none.
    pub(crate) proxy: Option<svcplane_proxy::StatusSource>,
    pub(crate) health: Health,
    /// `--mode`, for `/debug/proxy` when the data plane has no per-frontend status.
    pub(crate) mode: &'static str,
    /// The eBPF maps' content, in `--mode ebpf`.
    pub(crate) ebpf: Option<svcplane_ebpf::Listing>,
}

impl AdminState {
    pub(crate) fn new(
        snapshots: watch::Receiver<Arc<Snapshot>>,
        stats: Arc<WatchStats>,
        extra: Vec<Box<dyn Collector>>,
        proxy: Option<svcplane_proxy::StatusSource>,
        health: Health,
        mode: &'static str,
    ) -> Self {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(ConfigCollector {
            snapshots: snapshots.clone(),
            stats,
        }));
        for c in extra {
            registry.register_collector(c);
        }
        Self {
            snapshots,
            registry: Arc::new(registry),
            proxy,
            health,
            mode,
            ebpf: None,
        }
    }
}

/// Binds the admin address (so a bad address fails at start) and returns the serving task.
pub(crate) async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves until `cancel` fires; in-flight requests finish first.
pub(crate) async fn serve(listener: TcpListener, state: AdminState, cancel: CancellationToken) {
    let mut conns = JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            () = cancel.cancelled() => break,
            res = listener.accept() => match res {
                Ok(v) => v,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning
                    // (it did: one core busy and a warning per microsecond).
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let state = state.clone();
        let cancel = cancel.clone();
        conns.spawn(async move {
            let svc = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(route(&state, req.method(), req.uri().path())) }
            });
            let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            let res = tokio::select! {
                res = conn.as_mut() => res,
                () = cancel.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = res {
                tracing::debug!(client.addr = %peer, error = %e, "admin connection ended");
            }
        });
        // Reap finished connections so the set stays small.
        while conns.try_join_next().is_some() {}
    }
    while conns.join_next().await.is_some() {}
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn json(body: serde_json::Result<Vec<u8>>) -> Response<Full<Bytes>> {
    match body {
        Ok(body) => {
            let mut r = text(StatusCode::OK, body);
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("application/json"),
            );
            r
        }
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
    }
}

/// `/debug/proxy` of the eBPF mode: the maps' frontends with their endpoints in slot order
/// and the programs' connection counts, and the port's other endpoints as unused. No byte
/// or active counts: the programs see a connection only at connect().
fn ebpf_status(
    listing: &svcplane_ebpf::Listing,
    snap: &Snapshot,
    version: u64,
) -> serde_json::Value {
    let conns = listing
        .connections()
        .map_err(|e| tracing::warn!(error = %e, "reading the connection counters (v1_conns)"))
        .ok();
    let mut fronts = listing.frontends();
    fronts.sort_by(|a, b| (&a.1, a.0).cmp(&(&b.1, b.0)));
    let frontends: Vec<serde_json::Value> = fronts
        .into_iter()
        .map(|(fe, owner, slots)| {
            let view = snap.port(&owner);
            let kind = match view {
                None => "self-test",
                Some(v) if v.cluster_ips.contains(&fe.ip) => "ClusterIP",
                Some(v) if v.external_ips.contains(&fe.ip) => "ExternalIP",
                Some(v) if v.load_balancer_ips.contains(&fe.ip) => "LoadBalancer",
                Some(_) => "NodePort",
            };
            let mut endpoints: Vec<serde_json::Value> = (1..=u16::MAX)
                .zip(&slots)
                .map(|(slot, addr)| {
                    let state = view
                        .and_then(|v| v.endpoints.iter().find(|e| e.backend.0 == *addr))
                        .map_or("ready", |e| condition(e.conditions));
                    let mut ep = serde_json::json!({
                        "endpoint": addr.to_string(), "state": state, "routed": true,
                    });
                    if let Some(c) = &conns {
                        ep["connections"] = c.get(fe, slot, *addr).into();
                    }
                    ep
                })
                .collect();
            for e in view.map(|v| v.endpoints.as_slice()).unwrap_or_default() {
                let same_family = e.backend.0.is_ipv4() == fe.ip.is_ipv4();
                if same_family && !slots.contains(&e.backend.0) {
                    endpoints.push(serde_json::json!({
                        "endpoint": e.backend.0.to_string(),
                        "state": condition(e.conditions),
                        "routed": false,
                    }));
                }
            }
            serde_json::json!({
                "protocol": fe.protocol.as_str(),
                "frontend": std::net::SocketAddr::new(fe.ip, fe.port).to_string(),
                "kind": kind,
                "service": owner.service.to_string(),
                "port": owner.port,
                "endpoints": endpoints,
            })
        })
        .collect();
    serde_json::json!({"mode": "ebpf", "version": version, "frontends": frontends})
}

fn condition(c: svcplane_config::Conditions) -> &'static str {
    if c.ready {
        "ready"
    } else if c.serving && c.terminating {
        "terminating"
    } else {
        "not-ready"
    }
}

fn status(ok: bool) -> StatusCode {
    if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

fn route(state: &AdminState, method: &Method, path: &str) -> Response<Full<Bytes>> {
    if method != Method::GET && method != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
    }
    let snapshot = state.snapshots.borrow().clone();
    match path {
        "/healthz" => {
            let (ok, body) = state.health.healthy();
            text(status(ok), body)
        }
        "/readyz" => {
            let (ok, body) = state.health.ready();
            text(status(ok), body)
        }
        "/metrics" => {
            let mut body = String::new();
            match prometheus_client::encoding::text::encode(&mut body, &state.registry) {
                Ok(()) => {
                    let mut r = text(StatusCode::OK, body);
                    r.headers_mut().insert(
                        hyper::header::CONTENT_TYPE,
                        hyper::header::HeaderValue::from_static(
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        ),
                    );
                    r
                }
                Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
            }
        }
        "/debug/snapshot" => json(serde_json::to_vec_pretty(&*snapshot)),
        "/debug/proxy" => json(match (&state.proxy, &state.ebpf) {
            (Some(p), _) => serde_json::to_vec_pretty(&p.status()),
            (None, Some(listing)) => {
                serde_json::to_vec_pretty(&ebpf_status(listing, &snapshot, state.health.settled()))
            }
            (None, None) => serde_json::to_vec_pretty(&svcplane_proxy::ProxyStatus {
                mode: state.mode,
                version: snapshot.version,
                frontends: Vec::new(),
            }),
        }),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /healthz /readyz /metrics /debug/snapshot /debug/proxy\n",
        ),
    }
}

/// Config metrics read at scrape time from the watcher's counters and the latest snapshot.
#[derive(Debug)]
struct ConfigCollector {
    snapshots: watch::Receiver<Arc<Snapshot>>,
    stats: Arc<WatchStats>,
}

impl Collector for ConfigCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let snap = self.snapshots.borrow().clone();
        let counters = [
            (
                "svcplane_config_reloads",
                "Manifest reloads that read or removed at least one file.",
                self.stats.reloads.load(Ordering::Relaxed),
            ),
            (
                "svcplane_config_reload_errors",
                "Errors found in manifest files read by reloads.",
                self.stats.reload_errors.load(Ordering::Relaxed),
            ),
            (
                "svcplane_config_reload_failures",
                "Reloads that failed as a whole (manifest path unreadable).",
                self.stats.reload_failures.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, v) in counters {
            let m = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            ConstCounter::new(v).encode(m)?;
        }
        let d = &snap.diagnostics;
        let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        let gauges = [
            (
                "svcplane_snapshot_version",
                "Version of the current snapshot.",
                i64::try_from(snap.version).unwrap_or(i64::MAX),
            ),
            (
                "svcplane_services",
                "Services in the current snapshot.",
                count(snap.services().len()),
            ),
            (
                "svcplane_service_ports",
                "Routable Service ports in the current snapshot.",
                count(snap.ports().len()),
            ),
            (
                "svcplane_endpoints",
                "Endpoints in the current snapshot.",
                count(snap.endpoint_count()),
            ),
            (
                "svcplane_manifest_files",
                "Manifest files loaded.",
                count(d.files),
            ),
            (
                "svcplane_config_errors",
                "Objects or files currently rejected.",
                count(d.errors.len()),
            ),
            (
                "svcplane_config_warnings",
                "Objects currently skipped with a warning.",
                count(d.warnings.len()),
            ),
        ];
        for (name, help, v) in gauges {
            let m = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            ConstGauge::new(v).encode(m)?;
        }
        let m = encoder.encode_descriptor(
            "svcplane_config_last_reload_seconds",
            "Duration of the last reload that read something (parse + snapshot build).",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(self.stats.last_reload_micros.load(Ordering::Relaxed) as f64 / 1e6)
            .encode(m)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readyz_is_503_until_the_first_sync() {
        let (tx, rx) = watch::channel(Arc::new(Snapshot::default()));
        let (settled_tx, settled) = watch::channel(0);
        let health = Health::new(rx.clone(), settled);
        let state = AdminState::new(
            rx,
            Arc::new(WatchStats::default()),
            Vec::new(),
            None,
            health,
            "none",
        );
        let r = route(&state, &Method::GET, "/readyz");
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        let mut loaded = Snapshot::default();
        loaded.version = 1;
        tx.send_replace(Arc::new(loaded));
        assert_eq!(
            route(&state, &Method::GET, "/readyz").status(),
            StatusCode::SERVICE_UNAVAILABLE,
            "loaded is not programmed"
        );
        settled_tx.send_replace(1);
        assert_eq!(
            route(&state, &Method::GET, "/readyz").status(),
            StatusCode::OK
        );
        assert_eq!(
            route(&state, &Method::POST, "/readyz").status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
    }
}
