//! DNS consistent with routing: what DNS may answer while a snapshot is on its way to the
//! data plane.
//!
//! The daemon hands DNS a [`DnsSource`]: the snapshot the data plane has programmed and,
//! while the next one is being programmed, that one too. DNS then answers only what routes
//! under both, Service by Service ([`choose`]):
//! - a new Service is not answered until its snapshot is programmed;
//! - a removed Service disappears at once, before its routes go;
//! - a changed Service whose routed addresses (ClusterIPs × ports) only shrink is answered
//!   from the new definition at once; one whose addresses only grow keeps its old answers
//!   until programmed; one that does both (a new ClusterIP) is not answered in between;
//! - headless and ExternalName Services answer addresses the data plane does not route,
//!   so their changes (endpoints coming and going) are answered at once.
//!
//! The daemon applies a snapshot in three steps, so that DNS never sends a client to an
//! address that does not route yet or no longer routes: DNS takes `{programmed: P, pending:
//! N}`, then the data plane programs N, then DNS takes `{programmed: N}`.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;

use svcplane_config::{Protocol, Service, ServiceKey, Snapshot};

/// What DNS answers from.
#[derive(Clone, Debug, Default)]
pub struct DnsSource {
    /// Set by the sender, increasing; [`crate::DnsServer::applied`] reports the last one
    /// DNS answers from.
    pub seq: u64,
    /// The snapshot the data plane has programmed (or the latest, when nothing routes).
    pub programmed: Arc<Snapshot>,
    /// The snapshot the data plane is programming, if any.
    pub pending: Option<Arc<Snapshot>>,
}

impl DnsSource {
    /// A source with nothing in flight: DNS answers all of `snap`.
    pub fn settled(seq: u64, snap: Arc<Snapshot>) -> Self {
        Self {
            seq,
            programmed: snap,
            pending: None,
        }
    }

    /// The Services DNS answers, in key order.
    pub fn visible(&self) -> impl Iterator<Item = (&ServiceKey, &Arc<Service>)> + '_ {
        let pending = self.pending.as_deref();
        self.programmed.services().iter().filter_map(move |(k, p)| {
            let chosen = match pending {
                None => Some(p),
                Some(n) => choose(p, n.service(k)),
            };
            chosen.map(|s| (k, s))
        })
    }
}

/// Which definition of a Service DNS answers from while `next` is being programmed over
/// `programmed`; `None`: the Service is not answered in between.
pub fn choose<'a>(
    programmed: &'a Arc<Service>,
    next: Option<&'a Arc<Service>>,
) -> Option<&'a Arc<Service>> {
    let next = next?;
    if Arc::ptr_eq(programmed, next) {
        return Some(next);
    }
    let (old, new) = (routed(programmed), routed(next));
    if new.is_subset(&old) {
        Some(next)
    } else if old.is_subset(&new) {
        Some(programmed)
    } else {
        None
    }
}

/// The (ClusterIP, port, protocol) a Service's answers point at that the data plane routes:
/// none for headless and ExternalName Services.
fn routed(svc: &Service) -> BTreeSet<(IpAddr, u16, Protocol)> {
    let def = &svc.def;
    if def.headless || def.external_name.is_some() {
        return BTreeSet::new();
    }
    def.cluster_ips
        .iter()
        .flat_map(|&ip| def.ports.iter().map(move |p| (ip, p.port, p.protocol)))
        .collect()
}
