//! `svcplane run`: wiring of the watcher, the admin endpoint and signals.

use std::collections::HashSet;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use svcplane_config::{
    AllocOptions, Change, Loader, ManifestWatcher, ParseOptions, Snapshot, diff,
};
use svcplane_dns::{DnsCollector, DnsConfig, DnsOptions, DnsServer, DnsSource};
use svcplane_ebpf::{EbpfDataPlane, EbpfFeatures, EbpfOptions};
use svcplane_proxy::{Probe, ProxyOptions, UserspaceProxy, VipAddrs};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::admin::{self, AdminState};
use crate::cli::{Mode, RunArgs};
use crate::health::{Health, ProbeEnds, ProbeVia};
use crate::logging;
use crate::sync;

/// How long a burst of file events may last before the reload starts.
const QUIET_PERIOD: Duration = Duration::from_millis(10);
/// Default of `--drain-timeout`.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

pub(crate) fn main(args: RunArgs) -> ExitCode {
    logging::init(args.log_format);
    block_on(run(args, None))
}

/// Runs `fut` on the daemon's runtime; errors are logged and give exit status 1.
pub(crate) fn block_on(fut: impl Future<Output = anyhow::Result<()>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("svcplane")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(fut) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

/// What a started daemon serves on, for a caller that embeds it (`svcplane demo`).
#[derive(Debug)]
pub(crate) struct Started {
    pub(crate) admin: std::net::SocketAddr,
    pub(crate) dns: std::net::SocketAddr,
}

/// Called once the first snapshot is programmed.
pub(crate) type StartHook = Box<dyn FnOnce(Started) + Send>;

pub(crate) async fn run(args: RunArgs, on_start: Option<StartHook>) -> anyhow::Result<()> {
    // Before anything can report readiness: a SIGTERM right after must stop us cleanly.
    let signals = Signals::install()?;
    let inert = args.inert_flags();
    if !inert.is_empty() {
        tracing::warn!(
            flags = inert.join(" "),
            mode = ?args.mode,
            "these flags have no effect in this build"
        );
    }
    std::fs::metadata(&args.manifests)
        .with_context(|| format!("--manifests {}", args.manifests.display()))?;
    let opts = ParseOptions {
        node_port_range: args.nodeport_range,
    };
    let mut dns_config = DnsConfig::new(&args.cluster_domain, args.dns_ttl)
        .map_err(|e| anyhow::anyhow!("--cluster-domain: {e}"))?;
    if !args.dns_listen.ip().is_unspecified() {
        dns_config.ns_addrs.push(args.dns_listen.ip());
    }
    let listener = admin::bind(args.admin_listen)
        .await
        .with_context(|| format!("--admin-listen {}: cannot bind", args.admin_listen))?;
    let admin_addr = listener.local_addr().unwrap_or(args.admin_listen);
    let state_file = args.state_file();
    let alloc = AllocOptions {
        service_cidrs: args.service_cidrs.clone(),
        state_file: Some(state_file.clone()),
        ..AllocOptions::default()
    };
    let loader = Loader::with_allocation(vec![args.manifests.clone()], opts, alloc)?;
    let watcher = ManifestWatcher::start(loader, QUIET_PERIOD).context("cannot watch manifests")?;
    // DNS and the data plane get snapshots through `sync`, which orders their updates.
    let (dns_tx, dns_rx) = watch::channel(DnsSource::default());
    let dns = DnsServer::start(
        DnsOptions {
            listen: args.dns_listen,
            config: dns_config,
            upstreams: args.upstreams.clone(),
            udp_threads: 0,
        },
        dns_rx,
    )
    .await
    .context("--dns-listen")?;
    let dns_addr = dns.local_addr();
    let (plane_tx, plane_rx) = watch::channel(Arc::new(Snapshot::default()));
    let probe = match args.mode {
        Mode::None => None,
        _ => Some(
            ProbeEnds::bind()
                .await
                .context("cannot bind the self-test's probe listener on 127.0.0.1")?,
        ),
    };
    let plane = match args.mode {
        Mode::Userspace => {
            let opts = ProxyOptions {
                node_name: args.node_name.clone(),
                node_ips: (!args.node_ips.is_empty()).then(|| args.node_ips.clone()),
                probe: probe.as_ref().map(|p| Probe {
                    frontend: p.frontend,
                    backend: p.backend_addr(),
                }),
                resync: args
                    .sync_period
                    .map_or(svcplane_proxy::DEFAULT_RESYNC, Duration::from_secs),
                ..ProxyOptions::default()
            };
            let proxy = UserspaceProxy::start(opts, plane_rx)
                .await
                .context("cannot start the userspace proxy")?;
            let ips: Vec<String> = proxy
                .node()
                .node_ips
                .iter()
                .map(|ip| ip.to_string())
                .collect();
            tracing::info!(node_ips = ips.join(","), "userspace proxy started");
            Some(DataPlane::Userspace(proxy))
        }
        Mode::Ebpf => {
            let node_ips = if args.node_ips.is_empty() {
                let addrs = VipAddrs::open()
                    .await
                    .context("cannot read the node's addresses")?;
                svcplane_proxy::addrs::default_node_ips(&addrs.list().await?)
            } else {
                args.node_ips.clone()
            };
            let opts = EbpfOptions {
                pin_root: args.bpf_pin_root.clone(),
                cgroup: args.cgroup.clone(),
                node_name: args.node_name.clone(),
                node_ips: node_ips.clone(),
                probe: probe.as_ref().map(|p| (p.frontend, p.backend_addr())),
            };
            let features = EbpfFeatures {
                tcp_getpeername_vip: args.bpf_tcp_getpeername_vip,
            };
            let ebpf = EbpfDataPlane::start_with(opts, features, plane_rx)
                .await
                .context("cannot start the eBPF data plane")?;
            let ips: Vec<String> = node_ips.iter().map(|ip| ip.to_string()).collect();
            tracing::info!(
                node_ips = ips.join(","),
                cgroup = %ebpf.cgroup().display(),
                pin_root = %ebpf.pin_root().display(),
                "eBPF data plane started"
            );
            Some(DataPlane::Ebpf(ebpf))
        }
        Mode::None => None,
    };
    let cancel = CancellationToken::new();
    let (settled_tx, settled) = watch::channel(0u64);
    let plane_sync = plane.as_ref().map(|p| sync::Plane {
        snapshots: plane_tx,
        programmed: p.programmed(),
    });
    let sync_task = tokio::spawn(sync::run(
        watcher.subscribe(),
        dns_tx,
        dns.applied(),
        plane_sync,
        settled_tx,
        cancel.clone(),
    ));
    let mut collectors: Vec<Box<dyn prometheus_client::collector::Collector>> =
        vec![Box::new(DnsCollector(dns.metrics()))];
    match &plane {
        Some(DataPlane::Userspace(p)) => collectors.push(Box::new(p.collector())),
        Some(DataPlane::Ebpf(e)) => collectors.push(Box::new(e.collector())),
        None => {}
    }
    // Stopped first on shutdown: a draining data plane is not a failing one.
    let probe_cancel = cancel.child_token();
    let mut health = Health::new(watcher.subscribe(), settled.clone());
    let probe_tasks = match (probe, &plane) {
        (Some(ends), Some(p)) => {
            let via = match p {
                DataPlane::Userspace(_) => ProbeVia::Daemon,
                DataPlane::Ebpf(e) => ProbeVia::Cgroup(e.cgroup().to_path_buf()),
            };
            health.start_probe(ends, args.mode.as_str(), via, &probe_cancel)
        }
        _ => Vec::new(),
    };
    let mut state = AdminState::new(
        watcher.subscribe(),
        watcher.stats(),
        collectors,
        match &plane {
            Some(DataPlane::Userspace(p)) => Some(p.status_source()),
            _ => None,
        },
        health,
        args.mode.as_str(),
    );
    if let Some(DataPlane::Ebpf(e)) = &plane {
        state.ebpf = Some(e.listing());
    }
    let admin_task = tokio::spawn(admin::serve(listener, state, cancel.clone()));
    let log_task = tokio::spawn(log_changes(watcher.subscribe(), cancel.clone()));
    tracing::info!(
        manifests = %args.manifests.display(),
        admin = %admin_addr,
        dns = %dns_addr,
        state = %state_file.display(),
        mode = ?args.mode,
        "svcplane running"
    );
    if let Some(hook) = on_start {
        let mut settled = settled.clone();
        let _ = tokio::time::timeout(Duration::from_secs(10), settled.wait_for(|&v| v > 0)).await;
        hook(Started {
            admin: admin_addr,
            dns: dns_addr,
        });
    }

    signals.wait().await;
    tracing::info!("shutting down");
    probe_cancel.cancel();
    match plane {
        Some(DataPlane::Userspace(p)) => {
            let drain = args
                .drain_timeout
                .map_or(DRAIN_TIMEOUT, Duration::from_secs);
            let left = p.stop(drain).await;
            if left > 0 {
                tracing::warn!(connections = left, "drain timeout: closing connections");
            }
        }
        Some(DataPlane::Ebpf(e)) => {
            e.stop().await;
            tracing::info!(
                pin_root = %args.bpf_pin_root.display(),
                "eBPF programs and maps stay pinned and keep routing; `svcplane cleanup` removes them"
            );
        }
        None => {}
    }
    cancel.cancel();
    dns.stop().await;
    watcher.stop().await;
    let _ = tokio::join!(admin_task, log_task, sync_task);
    for t in probe_tasks {
        let _ = t.await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// The data plane chosen with `--mode`.
enum DataPlane {
    Userspace(UserspaceProxy),
    Ebpf(EbpfDataPlane),
}

impl DataPlane {
    fn programmed(&self) -> watch::Receiver<u64> {
        match self {
            DataPlane::Userspace(p) => p.programmed(),
            DataPlane::Ebpf(e) => e.programmed(),
        }
    }
}

/// SIGTERM and SIGINT handlers, installed before the daemon reports anything.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
        })
    }

    async fn wait(mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

/// Logs every published snapshot: what changed, endpoint counts, new errors.
async fn log_changes(mut rx: watch::Receiver<Arc<Snapshot>>, cancel: CancellationToken) {
    let mut prev = Arc::new(Snapshot::default());
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            res = rx.changed() => if res.is_err() { return },
        }
        let next = rx.borrow_and_update().clone();
        log_snapshot(&prev, &next);
        prev = next;
    }
}

fn log_snapshot(prev: &Snapshot, next: &Snapshot) {
    let d = diff(prev, next);
    for c in &d.services {
        match c {
            Change::Added(key, svc) | Change::Changed(key, svc) => {
                let ready = svc.endpoints.iter().filter(|e| e.conditions.ready).count();
                let what = if matches!(c, Change::Added(..)) {
                    "service added"
                } else {
                    "service changed"
                };
                tracing::info!(
                    svc = %key,
                    r#type = ?svc.def.type_,
                    ports = svc.def.ports.len(),
                    endpoints = svc.endpoints.len(),
                    ready,
                    source = ?svc.endpoint_source,
                    "{what}"
                );
            }
            Change::Removed(key) => tracing::info!(svc = %key, "service removed"),
        }
    }
    let old: HashSet<String> = prev
        .diagnostics
        .errors
        .iter()
        .map(|e| e.to_string())
        .collect();
    for e in &next.diagnostics.errors {
        let line = e.to_string();
        if !old.contains(&line) {
            tracing::warn!(error = %line, "manifest rejected");
        }
    }
    let old: HashSet<String> = prev
        .diagnostics
        .warnings
        .iter()
        .map(|w| w.to_string())
        .collect();
    for w in &next.diagnostics.warnings {
        let line = w.to_string();
        if !old.contains(&line) {
            tracing::info!(warning = %line, "manifest object skipped");
        }
    }
    tracing::info!(
        version = next.version,
        services = next.services().len(),
        ports = next.ports().len(),
        endpoints = next.endpoint_count(),
        errors = next.diagnostics.errors.len(),
        warnings = next.diagnostics.warnings.len(),
        "snapshot published"
    );
}
