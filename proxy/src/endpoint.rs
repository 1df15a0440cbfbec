//! Per-endpoint state that outlives snapshots: traffic counters and passive ejection.
//!
//! One [`EndpointState`] exists per (Service port, endpoint address) for as long as the
//! endpoint is in the snapshot; a new snapshot that keeps the endpoint keeps the same state,
//! so counters and an ongoing ejection survive unrelated changes.

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Instant;

/// First ejection period after a failed connect.
pub const EJECT_BASE_MS: u64 = 1_000;
/// Longest ejection period: the back-off doubles up to this.
pub const EJECT_MAX_MS: u64 = 30_000;

/// Milliseconds on a process-wide monotonic clock (never 0, so 0 can mean "not ejected").
pub fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_millis())
        .unwrap_or(u64::MAX)
        .saturating_add(1)
}

const READY: u8 = 1;
const SERVING: u8 = 2;
const TERMINATING: u8 = 4;

/// Monotonic counters of one endpoint of one Service port.
#[derive(Debug, Default)]
pub struct EndpointStats {
    /// Connections (UDP: flows) sent to this endpoint.
    pub connections: AtomicU64,
    /// Connections (flows) open now.
    pub active: AtomicU64,
    /// Payload bytes from clients to the endpoint.
    pub bytes_to_endpoint: AtomicU64,
    /// Payload bytes from the endpoint to clients.
    pub bytes_to_client: AtomicU64,
    /// Connects that failed or timed out (UDP: flows refused by the endpoint).
    pub connect_failures: AtomicU64,
    /// Times the endpoint was ejected from balancing.
    pub ejections: AtomicU64,
}

/// One endpoint of one Service port.
#[derive(Debug)]
pub struct EndpointState {
    pub addr: SocketAddr,
    conditions: AtomicU8,
    /// Monotonic ms until which the endpoint gets no new connections (0: none).
    ejected_until: AtomicU64,
    /// Current back-off (0 after a successful connect).
    backoff: AtomicU64,
    pub stats: EndpointStats,
}

/// Endpoint condition as shown by `status` and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndpointCondition {
    Ready,
    /// Serving and terminating: used only while no endpoint of the port is ready.
    Terminating,
    /// Neither: never routed to.
    NotReady,
}

impl EndpointCondition {
    pub fn as_str(self) -> &'static str {
        match self {
            EndpointCondition::Ready => "ready",
            EndpointCondition::Terminating => "terminating",
            EndpointCondition::NotReady => "not-ready",
        }
    }
}

impl EndpointState {
    pub fn new(addr: SocketAddr) -> Self {
        EndpointState {
            addr,
            conditions: AtomicU8::new(READY | SERVING),
            ejected_until: AtomicU64::new(0),
            backoff: AtomicU64::new(0),
            stats: EndpointStats::default(),
        }
    }

    pub(crate) fn set_conditions(&self, c: svcplane_config::Conditions) {
        let bit = |on: bool, b: u8| if on { b } else { 0 };
        let bits = bit(c.ready, READY) | bit(c.serving, SERVING) | bit(c.terminating, TERMINATING);
        self.conditions.store(bits, Ordering::Relaxed);
    }

    pub fn condition(&self) -> EndpointCondition {
        let bits = self.conditions.load(Ordering::Relaxed);
        if bits & READY != 0 {
            EndpointCondition::Ready
        } else if bits & (SERVING | TERMINATING) == SERVING | TERMINATING {
            EndpointCondition::Terminating
        } else {
            EndpointCondition::NotReady
        }
    }

    /// Whether the endpoint is ejected at `now` (monotonic ms).
    pub fn is_ejected(&self, now: u64) -> bool {
        self.ejected_until.load(Ordering::Relaxed) > now
    }

    /// Milliseconds of ejection left at `now`.
    pub fn ejected_for(&self, now: u64) -> u64 {
        self.ejected_until
            .load(Ordering::Relaxed)
            .saturating_sub(now)
    }

    /// A connect failed or timed out: eject the endpoint for the next back-off period
    /// (1 s, doubling to 30 s while failures continue). A failure of an attempt that
    /// started before the endpoint was ejected only counts.
    pub fn connect_failed(&self, now: u64) {
        self.stats.connect_failures.fetch_add(1, Ordering::Relaxed);
        if self.is_ejected(now) {
            return;
        }
        let backoff = match self.backoff.load(Ordering::Relaxed) {
            0 => EJECT_BASE_MS,
            b => b.saturating_mul(2).min(EJECT_MAX_MS),
        };
        self.backoff.store(backoff, Ordering::Relaxed);
        self.ejected_until
            .store(now.saturating_add(backoff), Ordering::Relaxed);
        self.stats.ejections.fetch_add(1, Ordering::Relaxed);
    }

    /// A connect succeeded: the endpoint is healthy again and its back-off resets.
    pub fn connect_succeeded(&self) {
        if self.backoff.load(Ordering::Relaxed) != 0 {
            self.backoff.store(0, Ordering::Relaxed);
            self.ejected_until.store(0, Ordering::Relaxed);
        }
    }
}

/// Counts an open connection (flow) for as long as it lives.
#[derive(Debug)]
pub(crate) struct ActiveGuard<'a>(&'a EndpointState);

impl<'a> ActiveGuard<'a> {
    pub(crate) fn new(e: &'a EndpointState) -> Self {
        e.stats.connections.fetch_add(1, Ordering::Relaxed);
        e.stats.active.fetch_add(1, Ordering::Relaxed);
        ActiveGuard(e)
    }
}

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.0.stats.active.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep() -> EndpointState {
        EndpointState::new("10.0.0.1:80".parse().unwrap())
    }

    #[test]
    fn backoff_doubles_to_the_cap_and_resets_on_success() {
        let e = ep();
        let mut now = 1_000;
        let mut seen = Vec::new();
        for _ in 0..8 {
            e.connect_failed(now);
            assert!(e.is_ejected(now));
            seen.push(e.ejected_for(now));
            now += e.ejected_for(now); // the ejection ends, the retry fails again
            assert!(!e.is_ejected(now));
        }
        assert_eq!(
            seen,
            [1_000, 2_000, 4_000, 8_000, 16_000, 30_000, 30_000, 30_000]
        );
        assert_eq!(e.stats.ejections.load(Ordering::Relaxed), 8);
        e.connect_succeeded();
        assert!(!e.is_ejected(now));
        e.connect_failed(now);
        assert_eq!(
            e.ejected_for(now),
            1_000,
            "back-off restarts after a success"
        );
    }

    #[test]
    fn failures_during_an_ejection_only_count() {
        let e = ep();
        e.connect_failed(10);
        e.connect_failed(20);
        e.connect_failed(30);
        assert_eq!(e.ejected_for(10), 1_000);
        assert_eq!(e.stats.connect_failures.load(Ordering::Relaxed), 3);
        assert_eq!(e.stats.ejections.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn conditions_map_to_states() {
        let e = ep();
        let c = |ready, serving, terminating| svcplane_config::Conditions {
            ready,
            serving,
            terminating,
        };
        e.set_conditions(c(true, true, false));
        assert_eq!(e.condition(), EndpointCondition::Ready);
        e.set_conditions(c(false, true, true));
        assert_eq!(e.condition(), EndpointCondition::Terminating);
        e.set_conditions(c(false, false, true));
        assert_eq!(e.condition(), EndpointCondition::NotReady);
    }

    #[test]
    fn active_guard_counts() {
        let e = ep();
        {
            let _a = ActiveGuard::new(&e);
            let _b = ActiveGuard::new(&e);
            assert_eq!(e.stats.active.load(Ordering::Relaxed), 2);
        }
        assert_eq!(e.stats.active.load(Ordering::Relaxed), 0);
        assert_eq!(e.stats.connections.load(Ordering::Relaxed), 2);
    }
}
