//! The namespaces the bench measures in, and their cleanup.
//!
//! ```text
//!   client 10.200.0.2 ──veth── 10.200.0.1  node  (proxies, rules, daemons)
//!   backend k 10.201.k.2 ──veth── 10.201.k.1  node          k = 0, 1, 2
//! ```
//!
//! Names are unique per process (`svb<pid>x<seq>-...`). Everything created is recorded in a
//! process-wide registry: namespaces, child processes and the cgroup are removed when their
//! owner is dropped, and also on SIGINT/SIGTERM (a signal thread cleans up and exits 130).
//! Filler endpoints live in 10.224.0.0/11, blackholed in the node namespace: nothing is
//! ever sent there, and nothing leaves the bench's namespaces.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

use crate::error::{BenchError, Result};
use crate::sys;

/// Node's address on the client link (also HAProxy's and the daemons' node IP).
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 1);
/// The client "pod".
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 2);
/// Port every backend serves HTTP on.
pub const BACKEND_PORT: u16 = 8080;
/// Number of backend "pods".
pub const BACKENDS: usize = 3;
/// Pod CIDR of the bench (client and backends): kube-proxy's `--cluster-cidr`.
pub const CLUSTER_CIDR: &str = "10.200.0.0/15";
/// Unroutable range of filler endpoints (blackholed in the node namespace).
pub const FILLER_RANGE: &str = "10.224.0.0/11";

/// Backend `k`'s address.
pub fn backend_ip(k: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 201, u8::try_from(k).unwrap_or(u8::MAX), 2)
}

// === registry ===

#[derive(Debug, Default)]
struct Registry {
    netns: Vec<String>,
    pids: Vec<u32>,
    cgroups: Vec<CgroupRecord>,
    dirs: Vec<PathBuf>,
    /// Commands run once on SIGINT/SIGTERM after the processes stopped (e.g. `svcplane
    /// cleanup` for the ebpf mode's pins).
    commands: Vec<Vec<String>>,
    /// Set by the signal path: nothing new may be created after it.
    stopping: bool,
}

#[derive(Debug, Clone)]
struct CgroupRecord {
    path: PathBuf,
    /// Where this process came from, to move back before removing `path`.
    home: PathBuf,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    netns: Vec::new(),
    pids: Vec::new(),
    cgroups: Vec::new(),
    dirs: Vec::new(),
    commands: Vec::new(),
    stopping: false,
});
static SIGNALS: Once = Once::new();
static SEQ: AtomicUsize = AtomicUsize::new(0);

fn registry() -> std::sync::MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(|p| p.into_inner())
}

/// Installs (once) the SIGINT/SIGTERM handler thread that removes everything registered.
pub(crate) fn install_signal_cleanup() {
    SIGNALS.call_once(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("bench-signals".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(_) => return,
                };
                rt.block_on(async move {
                    use tokio::signal::unix::{SignalKind, signal};
                    let (Ok(mut int), Ok(mut term)) = (
                        signal(SignalKind::interrupt()),
                        signal(SignalKind::terminate()),
                    ) else {
                        return;
                    };
                    let _ = tx.send(());
                    tokio::select! {
                        _ = int.recv() => {}
                        _ = term.recv() => {}
                    }
                    eprintln!(
                        "\nsvcplane bench: interrupted; removing namespaces, processes, cgroup"
                    );
                    cleanup_all();
                    std::process::exit(130);
                });
            });
        if spawned.is_ok() {
            // Handlers are in place before the first namespace exists.
            let _ = rx.recv_timeout(Duration::from_secs(5));
        }
    });
}

/// Removes everything still registered (the signal path; owners clean up on drop).
fn cleanup_all() {
    let (pids, cgroups, netns, dirs, commands) = {
        let mut r = registry();
        r.stopping = true;
        (
            std::mem::take(&mut r.pids),
            std::mem::take(&mut r.cgroups),
            std::mem::take(&mut r.netns),
            std::mem::take(&mut r.dirs),
            std::mem::take(&mut r.commands),
        )
    };
    for pid in pids {
        stop_pid(pid, Duration::from_secs(2));
    }
    for cmd in commands {
        if let Some((program, args)) = cmd.split_first() {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let _ = sys::run(program, &args);
        }
    }
    for cg in cgroups {
        remove_cgroup(&cg);
    }
    for ns in netns {
        delete_netns(&ns);
    }
    if std::env::var_os("SVCPLANE_BENCH_KEEP").is_none() {
        for d in dirs {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// A command to run on SIGINT/SIGTERM (once, deduplicated).
pub(crate) fn register_command(cmd: Vec<String>) {
    let mut r = registry();
    if !r.commands.contains(&cmd) {
        r.commands.push(cmd);
    }
}

/// A directory removed on SIGINT/SIGTERM too.
pub(crate) fn register_dir(dir: PathBuf) {
    registry().dirs.push(dir);
}

/// Spawns `cmd` and records its process, atomically with respect to the signal path: a
/// Ctrl-C either sees the process or prevents its start.
pub(crate) fn spawn_registered(
    cmd: &mut std::process::Command,
    what: &str,
) -> Result<std::process::Child> {
    let mut r = registry();
    if r.stopping {
        return Err(interrupted());
    }
    let child = cmd
        .spawn()
        .map_err(|e| BenchError::io(format!("spawn {what}"), e))?;
    r.pids.push(child.id());
    Ok(child)
}

/// Whether the signal path has started removing everything.
pub(crate) fn stopping() -> bool {
    registry().stopping
}

/// Called by the main thread once it sees the run was interrupted: the signal thread
/// finishes the cleanup and exits the process with 130; returning first would cut it short.
pub(crate) fn wait_for_signal_exit() -> ! {
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn interrupted() -> BenchError {
    BenchError::mode("bench", "interrupted")
}

pub(crate) fn unregister_pid(pid: u32) {
    registry().pids.retain(|p| *p != pid);
}

/// SIGTERM, then SIGKILL after `grace`; reaps nothing (the owner's `Child` does).
pub(crate) fn stop_pid(pid: u32, grace: Duration) {
    use nix::sys::signal::{Signal, kill};
    let Ok(raw) = i32::try_from(pid) else { return };
    let p = nix::unistd::Pid::from_raw(raw);
    if kill(p, Signal::SIGTERM).is_err() {
        return;
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        // A zombie still answers kill(0); its /proc stat shows state Z.
        let gone = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                s.rsplit_once(')')
                    .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
            })
            .unwrap_or(true);
        if gone {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = kill(p, Signal::SIGKILL);
}

fn delete_netns(name: &str) {
    // Processes left inside (none normally) would keep the namespace alive.
    if let Ok(pids) = sys::run("ip", &["netns", "pids", name]) {
        for pid in pids
            .split_whitespace()
            .filter_map(|p| p.parse::<u32>().ok())
        {
            stop_pid(pid, Duration::from_millis(500));
        }
    }
    let _ = sys::run("ip", &["netns", "del", name]);
}

// === impl Netns ===

/// A named network namespace, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    fn new(name: String) -> Result<Netns> {
        {
            // Created and recorded under the lock: a Ctrl-C sees it or prevents it.
            let mut r = registry();
            if r.stopping {
                return Err(interrupted());
            }
            let _ = sys::run("ip", &["netns", "del", &name]);
            sys::run("ip", &["netns", "add", &name])?;
            r.netns.push(name.clone());
        }
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        // No TIME_WAIT: tens of thousands of connections a second reuse ports within the
        // TIME_WAIT period, and a SYN meeting an old TIME_WAIT socket stalls for a 1 s
        // retransmission. That would measure port reuse, not the data planes.
        ns.sysctl(&[
            "net.ipv4.ip_local_port_range=1024 65535",
            "net.ipv4.tcp_tw_reuse=1",
            "net.ipv4.tcp_max_tw_buckets=0",
            "net.core.somaxconn=65535",
        ])?;
        Ok(ns)
    }

    /// The namespace's name (`/run/netns/NAME`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n NAME args...`
    pub(crate) fn ip(&self, args: &[&str]) -> Result<String> {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        sys::run("ip", &all)
    }

    /// `sysctl -qw` inside the namespace.
    pub(crate) fn sysctl(&self, settings: &[&str]) -> Result<()> {
        let mut args = vec!["netns", "exec", &self.name, "sysctl", "-qw"];
        args.extend_from_slice(settings);
        sys::run("ip", &args).map(drop)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        delete_netns(&self.name);
        registry().netns.retain(|n| *n != self.name);
    }
}

// === impl Topology ===

/// Client, node and backend namespaces, wired as in the module docs.
#[derive(Debug)]
pub struct Topology {
    /// Prefix of every name this topology created.
    pub id: String,
    pub node: Netns,
    pub client: Netns,
    pub backends: Vec<Netns>,
}

impl Topology {
    /// Creates the namespaces and links. Backend servers are started separately.
    pub fn new() -> Result<Topology> {
        install_signal_cleanup();
        let id = format!(
            "svb{}x{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let node = Netns::new(format!("{id}-node"))?;
        let client = Netns::new(format!("{id}-client"))?;
        node.sysctl(&["net.ipv4.ip_forward=1"])?;
        veth(&node, "to-client", NODE_IP, &client, "eth0", CLIENT_IP)?;
        client.ip(&["route", "add", "default", "via", &NODE_IP.to_string()])?;
        let mut backends = Vec::new();
        for k in 0..BACKENDS {
            let ns = Netns::new(format!("{id}-b{k}"))?;
            let node_side = Ipv4Addr::new(10, 201, u8::try_from(k).unwrap_or(0), 1);
            veth(
                &node,
                &format!("to-b{k}"),
                node_side,
                &ns,
                "eth0",
                backend_ip(k),
            )?;
            ns.ip(&["route", "add", "default", "via", &node_side.to_string()])?;
            backends.push(ns);
        }
        // Filler endpoints: never reachable, never leave the node namespace.
        node.ip(&["route", "add", "blackhole", FILLER_RANGE])?;
        Ok(Topology {
            id,
            node,
            client,
            backends,
        })
    }
}

fn veth(
    a: &Netns,
    a_if: &str,
    a_ip: Ipv4Addr,
    b: &Netns,
    b_if: &str,
    b_ip: Ipv4Addr,
) -> Result<()> {
    sys::run(
        "ip",
        &[
            "link", "add", a_if, "netns", &a.name, "type", "veth", "peer", "name", b_if, "netns",
            &b.name,
        ],
    )?;
    for (ns, ifname, addr) in [(a, a_if, a_ip), (b, b_if, b_ip)] {
        ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", ifname])?;
        ns.ip(&["link", "set", ifname, "up"])?;
    }
    Ok(())
}

// === impl ClientCgroup ===

/// The cgroup v2 directory the bench runs in (every mode), and which the eBPF mode's
/// programs attach to. The client is a thread of this process, and cgroup v2 moves whole
/// processes: [`ClientCgroup::enter`] moves the bench process in, dropping it moves the
/// process back home and removes the directory.
#[derive(Debug)]
pub struct ClientCgroup {
    record: CgroupRecord,
}

impl ClientCgroup {
    /// Creates `<cgroup2 mount>/<id>-client`.
    pub fn create(id: &str) -> Result<ClientCgroup> {
        let mount = cgroup2_mount()?;
        let home_rel = std::fs::read_to_string("/proc/self/cgroup")
            .map_err(|e| BenchError::io("read /proc/self/cgroup", e))?
            .lines()
            .find_map(|l| l.strip_prefix("0::").map(str::to_string))
            .unwrap_or_else(|| "/".into());
        let home = mount.join(home_rel.trim_start_matches('/'));
        let path = mount.join(format!("{id}-client"));
        let mut r = registry();
        if r.stopping {
            return Err(interrupted());
        }
        std::fs::create_dir(&path)
            .map_err(|e| BenchError::io(format!("mkdir {}", path.display()), e))?;
        let record = CgroupRecord { path, home };
        r.cgroups.push(record.clone());
        Ok(ClientCgroup { record })
    }

    pub fn path(&self) -> &Path {
        &self.record.path
    }

    pub fn enter(&self) -> Result<()> {
        move_self(&self.record.path)
    }
}

impl Drop for ClientCgroup {
    fn drop(&mut self) {
        remove_cgroup(&self.record);
        registry().cgroups.retain(|c| c.path != self.record.path);
    }
}

fn move_self(dir: &Path) -> Result<()> {
    let procs = dir.join("cgroup.procs");
    std::fs::write(&procs, std::process::id().to_string())
        .map_err(|e| BenchError::io(format!("write {}", procs.display()), e))
}

fn remove_cgroup(cg: &CgroupRecord) {
    let _ = move_self(&cg.home);
    let _ = std::fs::remove_dir(&cg.path);
}

/// Where cgroup v2 is mounted (`/sys/fs/cgroup` or `/sys/fs/cgroup/unified`).
pub fn cgroup2_mount() -> Result<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts")
        .map_err(|e| BenchError::io("read /proc/self/mounts", e))?;
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_, dir, fstype) = (f.next(), f.next()?, f.next()?);
            (fstype == "cgroup2").then(|| PathBuf::from(dir))
        })
        .next()
        .ok_or_else(|| BenchError::Preflight("no cgroup2 mount (needed by the ebpf mode)".into()))
}
