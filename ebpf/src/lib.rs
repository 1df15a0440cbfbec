//! svcplane-ebpf: the eBPF data plane — socket-level load balancing on cgroup hooks.
//!
//! It owns:
//! - the BPF programs (`bpf/svcplane.bpf.c`, C compiled by `build.rs` with clang, embedded
//!   with `include_bytes_aligned!`) on `cgroup/connect4|6`, `sendmsg4|6`, `recvmsg4|6` and
//!   `getpeername4|6`, and the one header of map structs (`bpf/svcplane.h`) with its Rust
//!   mirrors (`abi`);
//! - the pinned maps and links under a pin root (default [`DEFAULT_PIN_ROOT`]), with
//!   versioned names, so routing keeps working while the daemon is down and a new daemon
//!   adopts and reconciles what is there ([`loader`], [`cleanup`]);
//! - snapshot → map content and the ordered map operations between two contents
//!   ([`sync`]), behind the [`MapOps`] seam so the ordering is tested without root.
//!
//! How a connection is balanced: slot 0 of a frontend (address, port, protocol) in
//! `v1_services` holds its endpoint count, id and affinity timeout; slots 1..=count its
//! endpoints. connect() (TCP, connected UDP) picks `counter[id]++ % count + 1` with an
//! atomic add, counts the connection (below) and writes nothing else unless the Service has
//! ClientIP affinity. Unconnected
//! UDP keeps one endpoint per (socket, frontend) in an LRU map; UDP sockets see the frontend
//! in `recvfrom` and `getpeername` through a reverse LRU map. ClientIP affinity is per
//! network namespace (at socket level that is the client pod) with the Service's timeout.
//! A frontend with no endpoint refuses connect/sendmsg with EPERM, counted in `v1_refused`.
//!
//! Counters: each balanced connect() and each first datagram of an unconnected UDP socket
//! adds one to the counter of the chosen (frontend, slot) in `v1_conns` (an atomic add; the
//! first connection of a slot inserts it), which remembers the endpoint it counts for, so
//! a slot given to another endpoint starts anew and a deleted slot loses its counter.
//! [`Listing::connections`] reads them for `svcplane status`. There are no byte or active
//! connection counts: after connect() the programs never see the connection again.
//!
//! Stale UDP (an endpoint removed while sockets still talk to it): unconnected UDP is
//! re-pointed on its next `sendmsg`, because each datagram checks with one lookup that its
//! remembered endpoint is still in the same slot of the frontend. A *connected* UDP socket
//! cannot be re-pointed (the kernel runs no sendmsg hook for a send without destination),
//! so after a sync that removed UDP endpoints the data plane aborts the connected UDP
//! sockets it had pointed at them with `bpf_sock_destroy`, from an `iter/udp` program run
//! in every network namespace of the node; the application gets ECONNABORTED and
//! reconnects to a current endpoint. aya 0.14 does not relocate kfunc calls, so the loader
//! patches the call itself (`stale`); on kernels without the kfunc (< 6.5) this is skipped
//! with a warning.
//!
//! TCP `getpeername` shows the endpoint by default: showing the frontend needs a write per
//! TCP connect (socket storage, `v1_tcp_peer`), which the connect path avoids unless
//! [`EbpfFeatures::tcp_getpeername_vip`] asks for it. UDP sockets always see the frontend.
//!
//! Programming cost: a snapshot is applied as a diff per Service port (a shared
//! `Arc<PortView>` is skipped by pointer), so one endpoint change costs about the same at
//! 100 and at 10,000 Services; `tests/program_time.rs` measures it (cold load of 10,000
//! Services × 10 endpoints ≈ 0.2–0.4 s, one change ≈ 0.1–0.4 ms here).
//!
//! For the binary: [`EbpfDataPlane::start`] with [`EbpfOptions`] (node addresses should
//! include 127.0.0.1 to serve NodePorts there), wait on [`EbpfDataPlane::programmed`],
//! [`EbpfDataPlane::stop`] on shutdown (pins stay and keep routing), [`cleanup`] for
//! `svcplane cleanup`, [`read_frontends`] for status. One daemon per pin root.
//!
//! It must not: choose endpoints itself (selection is `PortView::routable_endpoints` of the
//! config crate), know Kubernetes object types, attach to anything but the cgroup it is
//! given, or touch pins outside its pin root. External NodePort traffic from other hosts is
//! not handled here (that needs tc programs).

mod abi;
pub mod loader;
mod maps;
pub mod metrics;
mod stale;
pub mod sync;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use svcplane_config::{Frontend, ServicePortKey, Snapshot};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use loader::cleanup;
pub use maps::{BpfMaps, Connections, read_connections, read_frontends, read_refused};
pub use metrics::{EbpfCollector, EbpfMetrics};
pub use sync::{FrontendSet, FrontendState, MapOp, MapOps, NodeInfo, SyncReport, Syncer};

/// Where maps and links are pinned unless told otherwise.
pub const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/svcplane";

#[derive(Clone, Debug)]
pub struct EbpfOptions {
    /// Directory on bpffs for maps and links.
    pub pin_root: PathBuf,
    /// cgroup2 directory to attach to; `None`: the root of the cgroup2 mount.
    pub cgroup: Option<PathBuf>,
    /// The node's name (traffic policy Local).
    pub node_name: Option<String>,
    /// Addresses NodePorts are served on (add 127.0.0.1 to serve it there).
    pub node_ips: Vec<IpAddr>,
    /// The daemon's health self-test (frontend, endpoint): a TCP frontend always in the
    /// maps.
    pub probe: Option<(std::net::SocketAddr, std::net::SocketAddr)>,
}

/// Optional behaviour of the programs, fixed at load time ([`EbpfDataPlane::start_with`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct EbpfFeatures {
    /// TCP `getpeername` shows the frontend instead of the endpoint. Costs a socket-storage
    /// write on every balanced TCP connect, so it is off by default.
    pub tcp_getpeername_vip: bool,
}

impl Default for EbpfOptions {
    fn default() -> Self {
        EbpfOptions {
            pin_root: PathBuf::from(DEFAULT_PIN_ROOT),
            cgroup: None,
            node_name: None,
            node_ips: vec![IpAddr::from([127, 0, 0, 1])],
            probe: None,
        }
    }
}

/// Why the data plane cannot start or program. The first four name what is missing.
#[derive(Debug, thiserror::Error)]
pub enum EbpfError {
    #[error(
        "this svcplane was built without its eBPF programs (clang or libbpf-dev was missing at \
         build time): `apt-get install -y clang llvm libbpf-dev`, then rebuild; or use --mode \
         userspace"
    )]
    NotBuilt,
    #[error(
        "the eBPF data plane needs root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN): run svcplane \
         as root, or use --mode userspace"
    )]
    NotRoot,
    #[error(
        "no cgroup2 filesystem is mounted (none in /proc/self/mountinfo): mount one with \
         `mount -t cgroup2 none /sys/fs/cgroup/unified`, or pass --cgroup DIR"
    )]
    NoCgroup2,
    #[error(
        "{path} is not a cgroup2 directory: pass a directory of the cgroup2 mount \
         (`findmnt -t cgroup2`) as --cgroup"
    )]
    NotCgroup2 { path: PathBuf },
    #[error(
        "no bpf filesystem at {path} ({source}): mount it with `mount -t bpf bpf /sys/fs/bpf` \
         (pins keep routing alive across restarts)"
    )]
    Bpffs {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the kernel refused BPF ({detail}): it needs CONFIG_BPF_SYSCALL and CONFIG_CGROUP_BPF, \
         and lockdown or a seccomp/LSM policy must let root load programs; or use --mode \
         userspace"
    )]
    BpfUnavailable { detail: String },
    #[error("loading the BPF object: {0}")]
    Load(#[source] aya::EbpfError),
    #[error("the BPF object has no {0}")]
    MissingInObject(&'static str),
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("link of {name}: {detail}")]
    Link { name: &'static str, detail: String },
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What the maps hold, read through the programming loop's syncer.
#[derive(Clone, Debug)]
pub struct Listing {
    syncer: Arc<Mutex<Option<Syncer>>>,
    pin_root: PathBuf,
}

impl Listing {
    /// Every frontend with the Service port that owns it (or the self-test's key) and its
    /// endpoints in slot order. One pass over the frontends, under the syncer's lock.
    pub fn frontends(&self) -> Vec<(Frontend, ServicePortKey, Vec<std::net::SocketAddr>)> {
        lock(&self.syncer)
            .as_ref()
            .map(Syncer::listing)
            .unwrap_or_default()
    }

    /// The programs' connection counters (one read of the pinned `v1_conns`; only slots
    /// that took a connection have one).
    pub fn connections(&self) -> Result<Connections, aya::maps::MapError> {
        read_connections(&self.pin_root)
    }

    /// Connects and datagrams refused because their frontend had no endpoint.
    pub fn refused(&self) -> Result<u64, aya::maps::MapError> {
        read_refused(&self.pin_root)
    }
}

/// The running eBPF data plane. Dropping it (or [`stop`](Self::stop)) stops programming;
/// programs, links and maps stay pinned and keep routing. [`cleanup`] removes them.
#[derive(Debug)]
pub struct EbpfDataPlane {
    programmed: watch::Receiver<u64>,
    /// The syncer, locked by the programming loop and by [`Listing::frontends`].
    syncer: Arc<Mutex<Option<Syncer>>>,
    metrics: Arc<EbpfMetrics>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
    cgroup: PathBuf,
    pin_root: PathBuf,
}

impl EbpfDataPlane {
    /// Loads the programs (adopting pinned maps), attaches them to the cgroup, then
    /// programs every snapshot `snapshots` publishes (the current one first) on a blocking
    /// thread. Needs a tokio runtime.
    pub async fn start(
        opts: EbpfOptions,
        snapshots: watch::Receiver<Arc<Snapshot>>,
    ) -> Result<Self, EbpfError> {
        Self::start_with(opts, EbpfFeatures::default(), snapshots).await
    }

    /// [`start`](Self::start) with optional behaviour of the programs.
    pub async fn start_with(
        opts: EbpfOptions,
        features: EbpfFeatures,
        snapshots: watch::Receiver<Arc<Snapshot>>,
    ) -> Result<Self, EbpfError> {
        let pin_root = opts.pin_root.clone();
        let cgroup = opts.cgroup.clone();
        let tcp_peer = features.tcp_getpeername_vip;
        let loaded = tokio::task::spawn_blocking(move || {
            loader::load(&pin_root, cgroup.as_deref(), tcp_peer)
        })
        .await
        .map_err(|e| EbpfError::Io {
            what: "load",
            path: opts.pin_root.clone(),
            source: std::io::Error::other(e),
        })??;
        tracing::info!(
            cgroup = %loaded.cgroup.display(),
            pin_root = %opts.pin_root.display(),
            adopted = loaded.current.len(),
            "eBPF programs attached"
        );
        let node = NodeInfo {
            node_name: opts.node_name.clone(),
            node_ips: opts.node_ips.clone(),
            probe: opts.probe,
        };
        let cgroup = loaded.cgroup.clone();
        let (programmed_tx, programmed) = watch::channel(0);
        let (stop, stop_rx) = watch::channel(false);
        let handle = tokio::runtime::Handle::current();
        let syncer = Arc::new(Mutex::new(None));
        let shared = Arc::clone(&syncer);
        let metrics = Arc::new(EbpfMetrics::default());
        let m = Arc::clone(&metrics);
        let task = tokio::task::spawn_blocking(move || {
            let lp = Loop {
                handle,
                node,
                shared: &shared,
                metrics: &m,
            };
            lp.run(loaded, snapshots, stop_rx, programmed_tx);
        });
        Ok(EbpfDataPlane {
            programmed,
            syncer,
            metrics,
            stop,
            task: Some(task),
            cgroup,
            pin_root: opts.pin_root,
        })
    }

    /// The snapshot version whose frontends are in the maps (and whose removed UDP
    /// endpoints no connected socket sends to any more).
    pub fn programmed(&self) -> watch::Receiver<u64> {
        self.programmed.clone()
    }

    /// The programming loop's metrics.
    pub fn metrics(&self) -> Arc<EbpfMetrics> {
        Arc::clone(&self.metrics)
    }

    /// What `/metrics` shows of this data plane: the loop's metrics and the connection
    /// counters.
    pub fn collector(&self) -> EbpfCollector {
        EbpfCollector {
            metrics: self.metrics(),
            listing: self.listing(),
        }
    }

    /// Reads what the maps hold, for `svcplane status` and `/metrics` (cheap to clone).
    pub fn listing(&self) -> Listing {
        Listing {
            syncer: Arc::clone(&self.syncer),
            pin_root: self.pin_root.clone(),
        }
    }

    /// The cgroup the programs are attached to.
    pub fn cgroup(&self) -> &Path {
        &self.cgroup
    }

    pub fn pin_root(&self) -> &Path {
        &self.pin_root
    }

    /// Stops programming; what is pinned keeps routing.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for EbpfDataPlane {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// How long a failed sync waits before it is retried (unless a new snapshot comes first).
const RETRY: Duration = Duration::from_secs(1);

/// The programming loop: one sync per snapshot. After a failed sync the syncer restarts
/// from the maps' real content and the snapshot is retried after [`RETRY`].
struct Loop<'a> {
    handle: tokio::runtime::Handle,
    node: NodeInfo,
    shared: &'a Mutex<Option<Syncer>>,
    metrics: &'a EbpfMetrics,
}

impl Loop<'_> {
    fn run(
        self,
        loaded: loader::Loaded,
        mut snapshots: watch::Receiver<Arc<Snapshot>>,
        mut stop: watch::Receiver<bool>,
        programmed: watch::Sender<u64>,
    ) {
        let loader::Loaded {
            mut maps,
            current,
            mut purger,
            ..
        } = loaded;
        *lock(self.shared) = Some(Syncer::new(self.node.clone(), current));
        loop {
            let snap = snapshots.borrow_and_update().clone();
            let mut failed = false;
            if snap.version > 0 && *programmed.borrow() != snap.version {
                match self.program(&mut maps, &snap) {
                    Some(Ok(removed_udp)) => {
                        // Connected UDP sockets of removed endpoints are aborted before the
                        // version is reported programmed: until then they still send there.
                        if let (Some(p), false) = (&mut purger, removed_udp.is_empty()) {
                            purge(p, &removed_udp);
                        }
                        programmed.send_replace(snap.version);
                    }
                    Some(Err(())) => failed = true,
                    None => return,
                }
            }
            let stopped = self.handle.block_on(async {
                tokio::select! {
                    r = stop.changed() => r.is_err() || *stop.borrow(),
                    r = snapshots.changed() => r.is_err(),
                    () = tokio::time::sleep(RETRY), if failed => false,
                }
            });
            if stopped || *stop.borrow() {
                break;
            }
        }
    }

    /// One sync under the syncer's lock, logged and recorded; the endpoints that left UDP
    /// frontends. After a failure the syncer is rebuilt from the maps' content. `None`: no
    /// syncer (the data plane is gone).
    fn program(
        &self,
        maps: &mut BpfMaps,
        snap: &Arc<Snapshot>,
    ) -> Option<Result<Vec<std::net::SocketAddr>, ()>> {
        let started = Instant::now();
        let mut guard = lock(self.shared);
        let syncer = guard.as_mut()?;
        match syncer.sync(snap, maps) {
            Ok(report) => {
                let since = snap.changed_at.map(|t| t.elapsed());
                self.metrics.record(started.elapsed(), since, &report);
                for (fe, port) in &report.conflicts {
                    tracing::warn!(frontend = %fe, port = %port, "frontend already taken by another Service port");
                }
                tracing::debug!(
                    version = snap.version,
                    ports_changed = report.ports_changed,
                    ops = report.ops,
                    frontends = report.frontends,
                    took_us = started.elapsed().as_micros() as u64,
                    "eBPF maps programmed"
                );
                Some(Ok(report.removed_udp))
            }
            Err(e) => {
                tracing::error!(version = snap.version, error = %e, "programming the eBPF maps failed; retrying from the maps' content");
                match maps.adopt() {
                    Ok(current) => *syncer = Syncer::new(self.node.clone(), current),
                    Err(e) => tracing::error!(error = %e, "reading the services map"),
                }
                Some(Err(()))
            }
        }
    }
}

/// Aborts connected UDP sockets still pointing at `removed` endpoints.
fn purge(purger: &mut stale::Purger, removed: &[std::net::SocketAddr]) {
    let started = Instant::now();
    match purger.purge(removed) {
        Ok(namespaces) => tracing::debug!(
            endpoints = removed.len(),
            namespaces,
            took_us = started.elapsed().as_micros() as u64,
            "connected UDP sockets of removed endpoints aborted"
        ),
        Err(e) => tracing::warn!(error = %e, "aborting connected UDP sockets of removed endpoints"),
    }
}

fn lock(m: &Mutex<Option<Syncer>>) -> std::sync::MutexGuard<'_, Option<Syncer>> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
