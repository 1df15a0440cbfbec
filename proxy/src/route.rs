//! A route: the endpoints one frontend balances over, round-robin, with passive ejection
//! and ClientIP session affinity.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use svcplane_config::ServicePortKey;

use crate::endpoint::EndpointState;

/// Most endpoints one new connection tries before the client sees a failure.
pub const MAX_ATTEMPTS: usize = 16;

/// Affinity entries beyond which an insert first drops the expired ones.
const AFFINITY_PRUNE_AT: usize = 4096;

/// ClientIP → endpoint memory of one Service port (shared by its frontends and kept across
/// snapshots).
#[derive(Debug, Default)]
pub struct AffinityTable {
    entries: Mutex<HashMap<IpAddr, (SocketAddr, u64)>>,
}

impl AffinityTable {
    fn get(&self, client: IpAddr, now: u64) -> Option<SocketAddr> {
        let entries = self.entries.lock().ok()?;
        match entries.get(&client) {
            Some(&(addr, expires)) if expires > now => Some(addr),
            _ => None,
        }
    }

    fn put(&self, client: IpAddr, addr: SocketAddr, expires: u64, now: u64) {
        if let Ok(mut entries) = self.entries.lock() {
            if entries.len() >= AFFINITY_PRUNE_AT {
                entries.retain(|_, (_, e)| *e > now);
            }
            entries.insert(client, (addr, expires));
        }
    }

    /// Live entries (for status and tests).
    pub fn len(&self, now: u64) -> usize {
        self.entries
            .lock()
            .map_or(0, |e| e.values().filter(|(_, x)| *x > now).count())
    }

    pub fn is_empty(&self, now: u64) -> bool {
        self.len(now) == 0
    }
}

/// Which kind of frontend a route serves (metrics and status label it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FrontendKind {
    ClusterIp,
    NodePort,
    LoadBalancer,
    ExternalIp,
    /// The daemon's own probe frontend (the health self-test), not from a manifest.
    SelfTest,
}

impl FrontendKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FrontendKind::ClusterIp => "ClusterIP",
            FrontendKind::NodePort => "NodePort",
            FrontendKind::LoadBalancer => "LoadBalancer",
            FrontendKind::ExternalIp => "ExternalIP",
            FrontendKind::SelfTest => "self-test",
        }
    }
}

/// The endpoint set of one (Service port, traffic scope, family), built once per snapshot.
#[derive(Debug)]
pub struct Route {
    pub key: ServicePortKey,
    pub endpoints: Box<[Arc<EndpointState>]>,
    cursor: AtomicUsize,
    affinity: Option<(u64, Arc<AffinityTable>)>,
}

impl Route {
    pub fn new(
        key: ServicePortKey,
        endpoints: Vec<Arc<EndpointState>>,
        affinity: Option<(Duration, Arc<AffinityTable>)>,
    ) -> Self {
        Route {
            key,
            endpoints: endpoints.into_boxed_slice(),
            cursor: AtomicUsize::new(0),
            affinity: affinity.map(|(d, t)| (u64::try_from(d.as_millis()).unwrap_or(u64::MAX), t)),
        }
    }

    /// The endpoints to try for one new connection from `client`, in order.
    pub fn attempts(&self, client: IpAddr, now: u64) -> Attempts<'_> {
        Attempts {
            route: self,
            client,
            now,
            tried: [usize::MAX; MAX_ATTEMPTS],
            n: 0,
        }
    }

    /// Remembers the endpoint a client's connection went to (ClientIP affinity).
    pub fn connected(&self, client: IpAddr, endpoint: &EndpointState, now: u64) {
        if let Some((timeout, table)) = &self.affinity {
            table.put(client, endpoint.addr, now.saturating_add(*timeout), now);
        }
    }

    pub fn affinity(&self) -> Option<&AffinityTable> {
        self.affinity.as_ref().map(|(_, t)| &**t)
    }
}

/// Candidate endpoints for one connection: the client's affinity endpoint if it has a live
/// one, then round-robin skipping ejected endpoints, then (when every endpoint is ejected)
/// the ejected ones, each endpoint at most once and at most [`MAX_ATTEMPTS`] in all.
#[derive(Debug)]
pub struct Attempts<'a> {
    route: &'a Route,
    client: IpAddr,
    now: u64,
    tried: [usize; MAX_ATTEMPTS],
    n: usize,
}

impl<'a> Attempts<'a> {
    fn take(&mut self, i: usize) -> Option<&'a Arc<EndpointState>> {
        let slot = self.tried.get_mut(self.n)?;
        *slot = i;
        self.n += 1;
        self.route.endpoints.get(i)
    }

    fn was_tried(&self, i: usize) -> bool {
        self.tried[..self.n].contains(&i)
    }
}

impl<'a> Iterator for Attempts<'a> {
    type Item = &'a Arc<EndpointState>;

    fn next(&mut self) -> Option<Self::Item> {
        let eps = &self.route.endpoints;
        let len = eps.len();
        if len == 0 || self.n >= MAX_ATTEMPTS.min(len) {
            return None;
        }
        if self.n == 0
            && let Some((_, table)) = &self.route.affinity
            && let Some(addr) = table.get(self.client, self.now)
            && let Some(i) = eps
                .iter()
                .position(|e| e.addr == addr && !e.is_ejected(self.now))
        {
            return self.take(i);
        }
        // Round-robin: one cursor step per new connection keeps the rotation exact while
        // nothing is ejected; ejected or already tried endpoints are stepped over.
        for _ in 0..len {
            let i = self.route.cursor.fetch_add(1, Ordering::Relaxed) % len;
            if !self.was_tried(i) && !eps[i].is_ejected(self.now) {
                return self.take(i);
            }
        }
        // Everything left is ejected: try those anyway rather than fail the client.
        let i = (0..len).find(|&i| !self.was_tried(i))?;
        self.take(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use svcplane_config::{Protocol, ServiceKey};

    fn key() -> ServicePortKey {
        ServicePortKey {
            service: ServiceKey::new("default", "web"),
            port: 80,
            protocol: Protocol::Tcp,
        }
    }

    fn route(n: usize, affinity: Option<Duration>) -> Route {
        let eps = (0..n)
            .map(|i| {
                let addr = SocketAddr::from(([10, 0, 0, u8::try_from(i + 1).unwrap()], 8080));
                Arc::new(EndpointState::new(addr))
            })
            .collect();
        Route::new(
            key(),
            eps,
            affinity.map(|d| (d, Arc::new(AffinityTable::default()))),
        )
    }

    fn client(i: u8) -> IpAddr {
        IpAddr::from([192, 168, 0, i])
    }

    proptest! {
        /// With N usable endpoints, K·N sequential new connections give each endpoint K.
        #[test]
        fn round_robin_is_exact(n in 1usize..40, k in 1usize..20, clients in 1u8..50) {
            let r = route(n, None);
            let mut counts = vec![0usize; n];
            for c in 0..n * k {
                let first = r.attempts(client(u8::try_from(c % usize::from(clients)).unwrap()), 5).next().unwrap();
                let i = r.endpoints.iter().position(|e| Arc::ptr_eq(e, first)).unwrap();
                counts[i] += 1;
            }
            prop_assert!(counts.iter().all(|&c| c == k), "{counts:?}");
        }

        /// Every endpoint is offered at most once per connection, ejected ones last, and
        /// never more than MAX_ATTEMPTS.
        #[test]
        fn attempts_cover_each_endpoint_once(n in 1usize..40, ejected in proptest::collection::vec(any::<bool>(), 40), start in 0usize..100) {
            let r = route(n, None);
            for (e, &x) in r.endpoints.iter().zip(&ejected) {
                if x { e.connect_failed(1); }
            }
            for _ in 0..start { let _ = r.attempts(client(1), 5).next(); }
            let got: Vec<&Arc<EndpointState>> = r.attempts(client(1), 5).collect();
            prop_assert_eq!(got.len(), n.min(MAX_ATTEMPTS));
            let mut seen = std::collections::HashSet::new();
            for e in &got { prop_assert!(seen.insert(e.addr)); }
            let healthy = r.endpoints.iter().filter(|e| !e.is_ejected(5)).count();
            let first_ejected = got.iter().position(|e| e.is_ejected(5)).unwrap_or(got.len());
            prop_assert!(got[first_ejected..].iter().all(|e| e.is_ejected(5)));
            prop_assert_eq!(first_ejected, healthy.min(got.len()));
        }
    }

    #[test]
    fn ejected_endpoint_is_skipped_until_its_backoff_ends() {
        let r = route(3, None);
        r.endpoints[1].connect_failed(100);
        let firsts: Vec<SocketAddr> = (0..6)
            .map(|_| r.attempts(client(1), 200).next().unwrap().addr)
            .collect();
        assert!(!firsts.contains(&r.endpoints[1].addr));
        // After the back-off (1 s), it is offered again.
        let later: Vec<SocketAddr> = (0..3)
            .map(|_| r.attempts(client(1), 1_200).next().unwrap().addr)
            .collect();
        assert!(later.contains(&r.endpoints[1].addr));
    }

    #[test]
    fn affinity_sticks_until_timeout_and_moves_off_ejected_endpoints() {
        let r = route(4, Some(Duration::from_secs(10)));
        let first = Arc::clone(r.attempts(client(7), 1_000).next().unwrap());
        r.connected(client(7), &first, 1_000);
        for now in [1_001, 5_000, 10_999] {
            assert_eq!(r.attempts(client(7), now).next().unwrap().addr, first.addr);
        }
        // Another client is balanced normally.
        assert_ne!(
            r.attempts(client(8), 2_000).next().unwrap().addr,
            first.addr
        );
        // Expired: round-robin again (the cursor has moved on).
        let after = r.attempts(client(7), 11_001).next().unwrap().addr;
        assert_ne!(after, first.addr);
        // An ejected affinity endpoint is not used.
        r.connected(client(9), &first, 20_000);
        first.connect_failed(20_001);
        assert_ne!(
            r.attempts(client(9), 20_002).next().unwrap().addr,
            first.addr
        );
        assert_eq!(r.affinity().unwrap().len(20_002), 1);
    }

    #[test]
    fn empty_route_offers_nothing() {
        let r = route(0, None);
        assert!(r.attempts(client(1), 1).next().is_none());
    }

    #[test]
    fn attempts_are_bounded() {
        let r = route(40, None);
        assert_eq!(r.attempts(client(1), 1).count(), MAX_ATTEMPTS);
    }
}
