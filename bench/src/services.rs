//! The Services a run programs, the same for every mode: N filler Services (10 unroutable
//! endpoints each), one "probe" Service whose endpoint changes are timed, and the measured
//! Service over the three backends, last.

use std::net::Ipv4Addr;

use crate::topology::{BACKEND_PORT, BACKENDS, backend_ip};

/// The measured Service's ClusterIP and port.
pub const MEASURED_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
pub const SERVICE_PORT: u16 = 80;
/// The probe Service's ClusterIP.
pub const PROBE_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);
/// Endpoints per filler and probe Service.
pub const FILLER_ENDPOINTS: u32 = 10;

/// One Service with one TCP port named `http`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Svc {
    pub namespace: String,
    pub name: String,
    pub vip: Ipv4Addr,
    pub port: u16,
    pub target_port: u16,
    pub endpoints: Vec<Ipv4Addr>,
}

impl Svc {
    /// kube-proxy's "servicePortName": `ns/name:port-name`.
    pub fn port_name(&self) -> String {
        format!("{}/{}:http", self.namespace, self.name)
    }
}

/// Fillers first, the probe, the measured Service last (on the first `endpoints` backends).
pub fn service_set(fillers: u32, endpoints: usize) -> Vec<Svc> {
    let mut out: Vec<Svc> = (0..fillers).map(filler).collect();
    out.push(probe(false));
    out.push(Svc {
        namespace: "bench".into(),
        name: "web".into(),
        vip: MEASURED_VIP,
        port: SERVICE_PORT,
        target_port: BACKEND_PORT,
        endpoints: (0..endpoints.clamp(1, BACKENDS)).map(backend_ip).collect(),
    });
    out
}

fn filler(i: u32) -> Svc {
    let vip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 97, 0, 1)) + i);
    // 10.240.0.0/12 lies in the blackholed filler range.
    let base = u32::from(Ipv4Addr::new(10, 240, 0, 0)) + i * FILLER_ENDPOINTS;
    Svc {
        namespace: format!("filler-{}", i / 100),
        name: format!("svc-{i}"),
        vip,
        port: SERVICE_PORT,
        target_port: BACKEND_PORT,
        endpoints: (0..FILLER_ENDPOINTS)
            .map(|e| Ipv4Addr::from(base + e))
            .collect(),
    }
}

/// The probe Service; `changed` moves its first endpoint to another address (the "one
/// endpoint change" whose programming time is measured).
pub fn probe(changed: bool) -> Svc {
    let mut endpoints: Vec<Ipv4Addr> = (1..=FILLER_ENDPOINTS)
        .map(|e| Ipv4Addr::new(10, 239, 0, u8::try_from(e).unwrap_or(1)))
        .collect();
    if changed {
        endpoints[0] = Ipv4Addr::new(10, 239, 1, 1);
    }
    Svc {
        namespace: "bench".into(),
        name: "probe".into(),
        vip: PROBE_VIP,
        port: SERVICE_PORT,
        target_port: BACKEND_PORT,
        endpoints,
    }
}

/// A Service and its EndpointSlice as Kubernetes JSON objects (for `svcplane run`).
pub fn manifests(svc: &Svc) -> [serde_json::Value; 2] {
    let service = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": svc.name, "namespace": svc.namespace},
        "spec": {
            "clusterIP": svc.vip.to_string(),
            "ports": [{"name": "http", "port": svc.port, "targetPort": svc.target_port, "protocol": "TCP"}]
        }
    });
    let slice = serde_json::json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": format!("{}-1", svc.name),
            "namespace": svc.namespace,
            "labels": {"kubernetes.io/service-name": svc.name}
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": svc.target_port, "protocol": "TCP"}],
        "endpoints": svc.endpoints.iter().map(|a| serde_json::json!({
            "addresses": [a.to_string()],
            "conditions": {"ready": true}
        })).collect::<Vec<_>>()
    });
    [service, slice]
}

/// A `v1 List` of every object of `svcs`.
pub fn manifest_list(svcs: &[Svc]) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "List",
        "items": svcs.iter().flat_map(manifests).collect::<Vec<_>>()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measured_is_last_and_fillers_are_distinct() {
        let set = service_set(1000, BACKENDS);
        assert_eq!(set.len(), 1002);
        assert_eq!(set.last().map(|s| s.vip), Some(MEASURED_VIP));
        let vips: std::collections::HashSet<_> = set.iter().map(|s| s.vip).collect();
        assert_eq!(vips.len(), set.len());
        let eps: std::collections::HashSet<_> =
            set.iter().flat_map(|s| s.endpoints.clone()).collect();
        assert_eq!(eps.len(), 1000 * 10 + 10 + 3);
        // Every filler endpoint is inside the blackholed range 10.224.0.0/11.
        let max = set[..1000]
            .iter()
            .flat_map(|s| s.endpoints.clone())
            .max()
            .unwrap();
        assert!(max.octets()[1] >= 224);
        assert_ne!(probe(true), probe(false));
    }
}
