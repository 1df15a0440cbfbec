//! What `svcplane status` shows: every frontend with its endpoints, their state and
//! counters, read from the live table.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde::Serialize;

use crate::endpoint::{EndpointCondition, now_ms};
use crate::shared::Shared;

#[derive(Clone, Debug, Serialize)]
pub struct ProxyStatus {
    pub mode: &'static str,
    /// Snapshot version the proxy runs.
    pub version: u64,
    pub frontends: Vec<FrontendStatus>,
}

#[derive(Clone, Debug, Serialize)]
pub struct FrontendStatus {
    pub protocol: &'static str,
    /// Address and port the frontend listens on.
    pub frontend: String,
    pub kind: &'static str,
    /// `namespace/name`.
    pub service: String,
    pub port: u16,
    pub endpoints: Vec<EndpointStatus>,
}

#[derive(Clone, Debug, Serialize)]
pub struct EndpointStatus {
    pub endpoint: String,
    /// ready, terminating, not-ready, or ejected (after failed connects).
    pub state: &'static str,
    /// Whether this frontend sends new connections to it (the endpoint selection rules:
    /// family, readiness, terminating fallback, traffic policy).
    pub routed: bool,
    /// Milliseconds of ejection left (0 when not ejected).
    pub ejected_ms: u64,
    pub active: u64,
    pub connections: u64,
    pub connect_failures: u64,
    pub bytes_to_endpoint: u64,
    pub bytes_to_client: u64,
}

/// Reads the status of a running proxy (cheap to clone; used by the admin endpoint).
#[derive(Clone, Debug)]
pub struct StatusSource(pub(crate) Arc<Shared>);

impl StatusSource {
    pub fn status(&self) -> ProxyStatus {
        let table = self.0.table.load_full();
        let now = now_ms();
        let frontends = table
            .frontends
            .iter()
            .map(|f| {
                let key = &f.route.key;
                let all = table.ports.get(key).map(Vec::as_slice).unwrap_or_default();
                let endpoints = all
                    .iter()
                    .map(|e| {
                        let routed = f.route.endpoints.iter().any(|r| Arc::ptr_eq(r, e));
                        let state = if e.is_ejected(now) {
                            "ejected"
                        } else {
                            match e.condition() {
                                EndpointCondition::Ready => "ready",
                                EndpointCondition::Terminating => "terminating",
                                EndpointCondition::NotReady => "not-ready",
                            }
                        };
                        let s = &e.stats;
                        EndpointStatus {
                            endpoint: e.addr.to_string(),
                            state,
                            routed,
                            ejected_ms: e.ejected_for(now),
                            active: s.active.load(Ordering::Relaxed),
                            connections: s.connections.load(Ordering::Relaxed),
                            connect_failures: s.connect_failures.load(Ordering::Relaxed),
                            bytes_to_endpoint: s.bytes_to_endpoint.load(Ordering::Relaxed),
                            bytes_to_client: s.bytes_to_client.load(Ordering::Relaxed),
                        }
                    })
                    .collect();
                FrontendStatus {
                    protocol: f.listen.protocol.as_str(),
                    frontend: f.listen.addr.to_string(),
                    kind: f.kind.as_str(),
                    service: key.service.to_string(),
                    port: key.port,
                    endpoints,
                }
            })
            .collect();
        ProxyStatus {
            mode: "userspace",
            version: table.version,
            frontends,
        }
    }
}
