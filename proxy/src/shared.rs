//! State shared by the reconciler, the listeners and every connection task.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio_util::task::TaskTracker;

use crate::table::FrontendTable;

/// Counters of connections that got no endpoint.
#[derive(Debug, Default)]
pub struct ProxyStats {
    /// Connections reset (datagrams dropped) because the route had no usable endpoint.
    pub no_endpoint: AtomicU64,
    /// Connections reset because every endpoint tried failed to connect.
    pub all_failed: AtomicU64,
    /// Datagrams dropped because a frontend had too many UDP flows.
    pub udp_dropped: AtomicU64,
}

#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) table: ArcSwap<FrontendTable>,
    /// Every connection and UDP flow task (drain waits for them).
    pub(crate) tracker: TaskTracker,
    pub(crate) stats: ProxyStats,
    pub(crate) udp_idle: Duration,
}
