//! svcplane-proxy: the userspace L4 data plane (TCP and UDP) on tokio.
//!
//! For every snapshot it builds one [`FrontendTable`] (every ClusterIP, node address ×
//! nodePort, LoadBalancer ingress IP and externalIP, each × port, with the route of
//! endpoints it balances over), swaps it in whole, and reconciles the listening sockets and
//! the VIP routes through `lo` to it. The data path reads the table with one `ArcSwap` load
//! per new connection (UDP: per datagram).
//!
//! - [`route`]: round-robin with an atomic cursor, exact while nothing is ejected;
//!   ClientIP session affinity; the attempt order of one connection.
//! - [`endpoint`]: per-endpoint counters and passive ejection (1 s doubling to 30 s after a
//!   failed connect, cleared by a successful one), kept across snapshots.
//! - [`table`]: snapshot → table, with endpoint selection delegated to
//!   `PortView::routable_endpoints` (ready endpoints; else serving+terminating; traffic
//!   policies against the node name). A port whose `PortView` the snapshot kept (same
//!   `Arc`) keeps its frontends and routes from the last build; only changed ports are
//!   rebuilt. The daemon's health self-test adds one more TCP frontend ([`Probe`], kind
//!   `self-test`) to every table, so `/healthz` is answered by a connection through this
//!   very data path.
//! - [`addrs`]: netlink (rtnetlink) address listing, and the VIPs made local by `local`
//!   routes through `lo`, tagged so a later run can tell them apart from routes it must not
//!   touch; every [`ProxyOptions::resync`] the reconciler puts back those someone removed.
//! - `workers`: one current-thread runtime per core; every frontend gets one SO_REUSEPORT
//!   socket and accept loop per worker, and a connection stays on its worker.
//! - [`status`]: what `svcplane status` prints, read from the live table.
//! - [`limits`]: the open files limit, raised at start (a socket per frontend per worker).
//! - `tcp` / `udp`: the data path. TCP: connect with failover (judged by epoll readiness,
//!   `SO_ERROR` read only on failure), then a copy loop per direction with half-close, one
//!   `recv` per message and buffers reused per worker. UDP: one flow per client
//!   address with an idle timeout; replies leave from the frontend socket.
//!
//! Established TCP connections are never cut by a snapshot: a removed endpoint or frontend
//! only stops getting new connections. UDP flows end with their frontend, or when their
//! endpoint leaves the route (the next datagram picks a current endpoint).

#![forbid(unsafe_code)]

pub mod addrs;
pub mod endpoint;
pub mod limits;
mod metrics;
pub mod route;
mod shared;
mod sockopt;
pub mod status;
pub mod table;
mod tcp;
mod udp;
mod workers;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use svcplane_config::{Protocol, Snapshot};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use addrs::{AddrError, VipAddrs};
pub use metrics::{ProxyCollector, ProxyMetrics};
pub use route::FrontendKind;
pub use shared::ProxyStats;
pub use status::{EndpointStatus, FrontendStatus, ProxyStatus, StatusSource};
pub use table::{FrontendTable, Listen, NodeConfig, Probe};
pub use tcp::CONNECT_TIMEOUT;

use crate::shared::Shared;
use crate::table::{BuildWarning, Registry};
use crate::workers::Workers;

/// Default idle timeout of a UDP flow.
pub const DEFAULT_UDP_IDLE: Duration = Duration::from_secs(30);
/// Default of [`ProxyOptions::resync`] (kube-proxy's default `--sync-period`).
pub const DEFAULT_RESYNC: Duration = Duration::from_secs(30);

#[derive(Clone, Debug)]
pub struct ProxyOptions {
    /// The node's name (traffic policy Local).
    pub node_name: Option<String>,
    /// Addresses NodePorts listen on; `None`: every local non-loopback address plus
    /// 127.0.0.1, read at start.
    pub node_ips: Option<Vec<IpAddr>>,
    pub udp_idle: Duration,
    /// Make VIPs that are not local local, with routes through `lo` (and remove them again).
    pub manage_addresses: bool,
    /// Data-path threads; 0: one per CPU this process may run on.
    pub workers: usize,
    /// The health self-test's frontend, added to every table.
    pub probe: Option<Probe>,
    /// How often the VIP routes are checked and any that someone else removed put back.
    pub resync: Duration,
}

impl Default for ProxyOptions {
    fn default() -> Self {
        ProxyOptions {
            node_name: None,
            node_ips: None,
            udp_idle: DEFAULT_UDP_IDLE,
            manage_addresses: true,
            workers: 0,
            probe: None,
            resync: DEFAULT_RESYNC,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error(transparent)]
    Addr(#[from] AddrError),
    #[error("cannot start the proxy's worker threads: {0}")]
    Workers(#[source] std::io::Error),
}

/// The running userspace data plane.
#[derive(Debug)]
pub struct UserspaceProxy {
    shared: Arc<Shared>,
    metrics: Arc<ProxyMetrics>,
    programmed: watch::Receiver<u64>,
    node: NodeConfig,
    cancel: CancellationToken,
    task: JoinHandle<Option<VipAddrs>>,
    workers: Workers,
}

impl UserspaceProxy {
    /// Starts programming every snapshot `snapshots` publishes (the current one first).
    pub async fn start(
        opts: ProxyOptions,
        snapshots: watch::Receiver<Arc<Snapshot>>,
    ) -> Result<Self, ProxyError> {
        match limits::raise_open_files() {
            Ok(l) if l.raised() => tracing::info!(
                from = l.before,
                to = l.after,
                "raised the open files limit (every frontend takes a socket per worker)"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot read or raise the open files limit"),
        }
        let vips = if opts.manage_addresses || opts.node_ips.is_none() {
            Some(VipAddrs::open().await?)
        } else {
            None
        };
        let node_ips = match (&opts.node_ips, &vips) {
            (Some(ips), _) => ips.clone(),
            (None, Some(v)) => addrs::default_node_ips(&v.list().await?),
            (None, None) => vec![IpAddr::from([127, 0, 0, 1])],
        };
        let vips = if opts.manage_addresses { vips } else { None };
        let node = NodeConfig {
            node_name: opts.node_name.clone(),
            node_ips,
            probe: opts.probe,
        };
        let shared = Arc::new(Shared {
            table: ArcSwap::from_pointee(FrontendTable::default()),
            tracker: TaskTracker::new(),
            stats: ProxyStats::default(),
            udp_idle: opts.udp_idle,
        });
        let metrics = Arc::new(ProxyMetrics::default());
        let n = match opts.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let workers = Workers::start(n).map_err(ProxyError::Workers)?;
        let (programmed_tx, programmed) = watch::channel(0);
        let cancel = CancellationToken::new();
        let reconciler = Reconciler {
            shared: Arc::clone(&shared),
            metrics: Arc::clone(&metrics),
            node: node.clone(),
            registry: Registry::default(),
            listeners: HashMap::new(),
            failed_binds: HashSet::new(),
            failed_addrs: BTreeSet::new(),
            vips,
            cancel: cancel.clone(),
            programmed: programmed_tx,
            workers: workers.handles().to_vec(),
            resync: opts.resync.max(Duration::from_millis(100)),
        };
        let task = tokio::spawn(reconciler.run(snapshots));
        Ok(UserspaceProxy {
            shared,
            metrics,
            programmed,
            node,
            cancel,
            task,
            workers,
        })
    }

    /// The snapshot version whose table is live and whose listeners are open.
    pub fn programmed(&self) -> watch::Receiver<u64> {
        self.programmed.clone()
    }

    /// The current table (status, tests).
    pub fn table(&self) -> Arc<FrontendTable> {
        self.shared.table.load_full()
    }

    pub fn node(&self) -> &NodeConfig {
        &self.node
    }

    /// Reads what is programmed, per frontend and endpoint (`svcplane status`).
    pub fn status_source(&self) -> StatusSource {
        StatusSource(Arc::clone(&self.shared))
    }

    /// Prometheus collector of the proxy's metrics.
    pub fn collector(&self) -> ProxyCollector {
        ProxyCollector::new(Arc::clone(&self.shared), Arc::clone(&self.metrics))
    }

    /// Stops accepting, lets established connections finish for up to `drain`, then
    /// removes the VIP addresses the proxy added. Returns the connections still open when
    /// the drain period ended (they are closed when the runtime stops).
    pub async fn stop(self, drain: Duration) -> usize {
        self.cancel.cancel();
        let vips = self.task.await.ok().flatten();
        self.shared.tracker.close();
        let left = match tokio::time::timeout(drain, self.shared.tracker.wait()).await {
            Ok(()) => 0,
            Err(_) => self.shared.tracker.len(),
        };
        let workers = self.workers;
        let _ = tokio::task::spawn_blocking(move || workers.shutdown()).await;
        if let Some(mut vips) = vips {
            for e in vips.remove_all().await {
                tracing::warn!(error = %e, "cannot remove a VIP address");
            }
        }
        left
    }
}

struct Reconciler {
    shared: Arc<Shared>,
    metrics: Arc<ProxyMetrics>,
    node: NodeConfig,
    registry: Registry,
    listeners: HashMap<Listen, Listener>,
    /// Listeners whose bind failed (logged once; retried on every snapshot).
    failed_binds: HashSet<Listen>,
    failed_addrs: BTreeSet<IpAddr>,
    vips: Option<VipAddrs>,
    cancel: CancellationToken,
    programmed: watch::Sender<u64>,
    /// Every frontend gets one socket (SO_REUSEPORT) and one accept loop per worker.
    workers: Vec<tokio::runtime::Handle>,
    /// Period of [`Reconciler::repair`].
    resync: Duration,
}

impl Reconciler {
    async fn run(mut self, mut snapshots: watch::Receiver<Arc<Snapshot>>) -> Option<VipAddrs> {
        let mut resync =
            tokio::time::interval_at(tokio::time::Instant::now() + self.resync, self.resync);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut fresh = true;
        loop {
            if fresh {
                let snap = snapshots.borrow_and_update().clone();
                if snap.version > 0 {
                    self.apply(&snap).await;
                }
            }
            tokio::select! {
                () = self.cancel.cancelled() => break,
                r = snapshots.changed() => {
                    if r.is_err() {
                        break;
                    }
                    fresh = true;
                }
                _ = resync.tick() => {
                    fresh = false;
                    self.repair().await;
                }
            }
        }
        let closing: Vec<Listener> = self.listeners.drain().map(|(_, l)| l).collect();
        close(closing).await;
        self.vips
    }

    /// Puts back VIP routes that someone else removed (`ip route flush`, a network
    /// manager), as kube-proxy's periodic sync rewrites its rules, and retries the frontends
    /// whose bind failed (a port another process held): without it either would stay dark
    /// until the next snapshot.
    async fn repair(&mut self) {
        if let Some(vips) = &mut self.vips {
            let (added, errors) = vips.repair().await;
            if !added.is_empty() {
                tracing::warn!(vips = ?added, "VIP routes removed outside svcplane were put back");
            }
            for e in errors {
                tracing::warn!(error = %e, "VIP route not repaired");
            }
        }
        if self.failed_binds.is_empty() {
            return;
        }
        let retry: Vec<Listen> = self.failed_binds.iter().copied().collect();
        for listen in retry {
            self.open(listen);
            if self.listeners.contains_key(&listen) {
                tracing::info!(frontend = %listen, "listening now");
            }
        }
        self.metrics.set_listening(self.listeners.len());
    }

    async fn apply(&mut self, snap: &Snapshot) {
        let started = Instant::now();
        let (table, warnings) = table::build(snap, &self.node, &mut self.registry);
        for w in warnings {
            match w {
                BuildWarning::Sctp(_) => tracing::warn!("{w}"),
                BuildWarning::Conflict { .. } => tracing::warn!("{w}"),
            }
        }
        if let Some(vips) = &mut self.vips {
            let wanted: BTreeSet<IpAddr> = table
                .frontends
                .iter()
                .filter(|f| f.kind != FrontendKind::NodePort)
                .map(|f| f.listen.addr.ip())
                .collect();
            let errors = vips.reconcile(&wanted).await;
            let mut failed = BTreeSet::new();
            for e in errors {
                let line = e.to_string();
                // One line per address and failure, not one per snapshot.
                if let Some(ip) = wanted.iter().find(|ip| line.contains(&ip.to_string())) {
                    failed.insert(*ip);
                    if self.failed_addrs.contains(ip) {
                        continue;
                    }
                }
                tracing::warn!(error = %line, "VIP address not programmed");
            }
            self.failed_addrs = failed;
        }
        let wanted: Vec<Listen> = table.routes.keys().copied().collect();
        let frontends = wanted.len();
        self.shared.table.store(Arc::new(table));
        for listen in &wanted {
            if !self.listeners.contains_key(listen) {
                self.open(*listen);
            }
        }
        let wanted: HashSet<Listen> = wanted.into_iter().collect();
        let closing: Vec<Listener> = (self.listeners)
            .extract_if(|l, _| !wanted.contains(l))
            .map(|(_, l)| l)
            .collect();
        // "Programmed" means a removed frontend's sockets are closed: a connection that
        // reached a listen backlog after that would be reset instead of refused.
        close(closing).await;
        self.failed_binds.retain(|l| wanted.contains(l));
        self.metrics.record_sync(
            started.elapsed(),
            snap.changed_at.map(|t| t.elapsed()),
            frontends,
            self.listeners.len(),
        );
        tracing::debug!(
            version = snap.version,
            frontends,
            listening = self.listeners.len(),
            took_ms = started.elapsed().as_secs_f64() * 1e3,
            "userspace proxy programmed"
        );
        self.programmed.send_replace(snap.version);
    }

    fn open(&mut self, listen: Listen) {
        let token = self.cancel.child_token();
        let mut tasks = Vec::with_capacity(self.workers.len());
        match self.bind_all(listen, &token, &mut tasks) {
            Ok(()) => {
                self.failed_binds.remove(&listen);
                self.listeners.insert(listen, Listener { token, tasks });
            }
            Err(e) => {
                token.cancel();
                if self.failed_binds.insert(listen) {
                    tracing::warn!(frontend = %listen, error = %e, "cannot listen; retried on the next change and every sync period");
                }
            }
        }
    }

    /// One socket and accept loop per worker; all or none (`token` stops those started).
    fn bind_all(
        &self,
        listen: Listen,
        token: &CancellationToken,
        tasks: &mut Vec<JoinHandle<()>>,
    ) -> std::io::Result<()> {
        let reuseport = self.workers.len() > 1;
        for handle in &self.workers {
            // Sockets register with the reactor of the runtime entered here: the worker's.
            let _entered = handle.enter();
            let shared = Arc::clone(&self.shared);
            match listen.protocol {
                Protocol::Tcp => {
                    let l = tcp::bind(listen.addr, reuseport)?;
                    tasks.push(handle.spawn(tcp::serve(l, listen, shared, token.clone())));
                }
                Protocol::Udp => {
                    let s = udp::bind(listen.addr, reuseport)?;
                    tasks.push(handle.spawn(udp::serve(s, listen, shared, token.clone())));
                }
                Protocol::Sctp => return Ok(()),
            }
        }
        Ok(())
    }
}

/// One frontend's sockets: a serve task per worker, each owning its socket.
struct Listener {
    token: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

/// Stops the listeners and waits until their tasks have dropped (closed) their sockets.
async fn close(listeners: Vec<Listener>) {
    for l in &listeners {
        l.token.cancel();
    }
    for l in listeners {
        for task in l.tasks {
            // A task that panicked or was aborted has dropped its socket as well.
            let _ = task.await;
        }
    }
}
