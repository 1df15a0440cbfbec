//! The data planes under test: how each is set up in the node namespace, where the client
//! sends its load, whose CPU time is charged to it, how its programming time is measured,
//! and how it is torn down.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::{BenchError, Result};
use crate::load::Figures;
use crate::services::{self, MEASURED_VIP, SERVICE_PORT, Svc};
use crate::topology::{self, BACKEND_PORT, ClientCgroup, NODE_IP, Topology, backend_ip};
use crate::{rules, sys};

/// HAProxy's frontend port on the node address.
const HAPROXY_PORT: u16 = 8081;
/// The daemons' admin address inside the node namespace.
const ADMIN: &str = "127.0.0.1:10249";
/// How long a mode may take to come up (cold load of 10,000 Services included).
const READY_TIMEOUT: Duration = Duration::from_secs(180);

/// A data plane the bench can measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The client connects to one backend address: the limit.
    Direct,
    /// `svcplane run --mode userspace` in the node namespace.
    Userspace,
    /// `svcplane run --mode ebpf --cgroup CG`, the client in CG.
    Ebpf,
    /// kube-proxy's iptables ruleset, loaded with `iptables-restore`.
    Iptables,
    /// kube-proxy's nftables ruleset, loaded with `nft -f`.
    Nftables,
    /// HAProxy: `mode tcp`, one thread, roundrobin.
    Haproxy,
}

impl Mode {
    pub const ALL: [Mode; 6] = [
        Mode::Direct,
        Mode::Userspace,
        Mode::Ebpf,
        Mode::Iptables,
        Mode::Nftables,
        Mode::Haproxy,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Mode::Direct => "direct",
            Mode::Userspace => "userspace",
            Mode::Ebpf => "ebpf",
            Mode::Iptables => "iptables",
            Mode::Nftables => "nftables",
            Mode::Haproxy => "haproxy",
        }
    }

    /// External tools this mode needs (besides `ip`, `nsenter`, `taskset`).
    pub fn tools(self) -> &'static [&'static str] {
        match self {
            Mode::Iptables => &["iptables-restore"],
            Mode::Nftables => &["nft"],
            Mode::Haproxy => &["haproxy"],
            Mode::Direct | Mode::Userspace | Mode::Ebpf => &[],
        }
    }

    /// Whether the mode programs Services (and so has a programming time).
    pub fn programs(self) -> bool {
        !matches!(self, Mode::Direct | Mode::Haproxy)
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Mode, String> {
        Mode::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| {
                format!("unknown mode {s:?} (direct, userspace, ebpf, iptables, nftables, haproxy)")
            })
    }
}

/// What the modes share: namespaces, the binary, a work directory, CPUs.
#[derive(Debug)]
pub(crate) struct Ctx<'a> {
    pub(crate) topo: &'a Topology,
    pub(crate) svcplane: &'a Path,
    pub(crate) work: &'a Path,
    pub(crate) proxy_cpu: usize,
    /// Endpoints of the measured Service (the first N backends).
    pub(crate) endpoints: usize,
    pub(crate) cgroup: Option<&'a ClientCgroup>,
    /// `iptables-legacy-restore` or `iptables-(nft-)restore`.
    pub(crate) iptables_restore: &'a str,
}

/// A mode set up for one slot.
#[derive(Debug)]
pub(crate) struct Active {
    pub(crate) mode: Mode,
    pub(crate) target: SocketAddr,
    /// The process doing the proxying, for its CPU time.
    pub(crate) proxy_pid: Option<u32>,
    /// Programming time figures (`cold_ms`, `change_ms`, ...).
    pub(crate) program: Figures,
    state: State,
}

#[derive(Debug)]
enum State {
    Nothing,
    Process { child: Child, log: PathBuf },
    Daemon(Daemon),
    Iptables,
    Nftables,
}

#[derive(Debug)]
struct Daemon {
    child: Child,
    log: PathBuf,
    manifests: PathBuf,
}

fn vip_target() -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(MEASURED_VIP, SERVICE_PORT))
}

/// Sets `mode` up with `fillers` filler Services; returns once the measured Service answers.
pub(crate) fn setup(ctx: &Ctx<'_>, mode: Mode, fillers: u32) -> Result<Active> {
    let svcs = services::service_set(fillers, ctx.endpoints);
    let mut program = Figures::new();
    let (target, state, proxy_pid) = match mode {
        Mode::Direct => (
            SocketAddr::V4(SocketAddrV4::new(backend_ip(0), BACKEND_PORT)),
            State::Nothing,
            None,
        ),
        Mode::Haproxy => {
            let (child, log) = start_haproxy(ctx)?;
            let pid = child.id();
            (
                SocketAddr::V4(SocketAddrV4::new(NODE_IP, HAPROXY_PORT)),
                State::Process { child, log },
                Some(pid),
            )
        }
        Mode::Iptables => {
            let text = rules::iptables_ruleset(&svcs);
            let t = Instant::now();
            sys::run_in_with_input(
                ctx.topo.node.name(),
                ctx.iptables_restore,
                &["--noflush"],
                &text,
            )?;
            program.insert("cold_ms".into(), ms(t.elapsed()));
            conntrack_timeouts(ctx);
            (vip_target(), State::Iptables, None)
        }
        Mode::Nftables => {
            let text = rules::nft_ruleset(&svcs);
            let t = Instant::now();
            sys::run_in_with_input(ctx.topo.node.name(), "nft", &["-f", "-"], &text)?;
            program.insert("cold_ms".into(), ms(t.elapsed()));
            conntrack_timeouts(ctx);
            (vip_target(), State::Nftables, None)
        }
        Mode::Userspace | Mode::Ebpf => {
            let (d, figures) = start_daemon(ctx, mode, &svcs)?;
            program.extend(figures);
            let pid = (mode == Mode::Userspace).then(|| d.child.id());
            (vip_target(), State::Daemon(d), pid)
        }
    };
    let mut active = Active {
        mode,
        target,
        proxy_pid,
        program,
        state,
    };
    if let Err(e) = wait_answering(ctx, &mut active) {
        teardown(ctx, active);
        return Err(e);
    }
    Ok(active)
}

/// Times one endpoint change of the probe Service; adds `change_ms` to the figures.
pub(crate) fn change(ctx: &Ctx<'_>, active: &mut Active) -> Result<()> {
    let (before, after) = (services::probe(false), services::probe(true));
    let node = ctx.topo.node.name();
    let t = Instant::now();
    match &mut active.state {
        State::Iptables => {
            sys::run_in_with_input(
                node,
                ctx.iptables_restore,
                &["--noflush"],
                &rules::iptables_change(&before, &after),
            )?;
        }
        State::Nftables => {
            sys::run_in_with_input(
                node,
                "nft",
                &["-f", "-"],
                &rules::nft_change(&before, &after),
            )?;
        }
        State::Daemon(d) => {
            let m0 = metrics(ctx)?;
            write_json(
                &d.manifests.join("probe.json"),
                &services::manifest_list(&[after]),
            )?;
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let m = metrics(ctx)?;
                if m.sync_count > m0.sync_count {
                    active
                        .program
                        .insert("change_ms".into(), (m.sync_sum - m0.sync_sum) * 1e3);
                    active
                        .program
                        .insert("change_wall_ms".into(), ms(t.elapsed()));
                    return Ok(());
                }
                if Instant::now() > deadline {
                    return Err(BenchError::mode(
                        active.mode,
                        "the endpoint change was not applied within 30 s",
                    ));
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        State::Nothing | State::Process { .. } => return Ok(()),
    }
    active.program.insert("change_ms".into(), ms(t.elapsed()));
    Ok(())
}

/// Removes what `setup` made.
pub(crate) fn teardown(ctx: &Ctx<'_>, active: Active) {
    let node = ctx.topo.node.name();
    match active.state {
        State::Nothing => {}
        State::Process { child, .. } => stop_child(child),
        State::Daemon(d) => {
            stop_child(d.child);
            if active.mode == Mode::Ebpf {
                // The ebpf mode's links and maps outlive the daemon by design.
                ebpf_cleanup(ctx.svcplane, ctx.topo);
            }
        }
        State::Iptables => {
            let _ =
                sys::run_in_with_input(node, ctx.iptables_restore, &[], rules::iptables_flush());
        }
        State::Nftables => {
            let _ = sys::run(
                "nsenter",
                &[
                    &format!("--net=/run/netns/{node}"),
                    "nft",
                    "delete",
                    "table",
                    "ip",
                    rules::NFT_TABLE,
                ],
            );
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn stop_child(mut child: Child) {
    topology::stop_pid(child.id(), Duration::from_secs(5));
    let _ = child.wait();
    topology::unregister_pid(child.id());
}

/// Conntrack entries of closed connections would pile up over a run (120 s TIME_WAIT);
/// these settings are per namespace and exist once a NAT rule loaded the module.
fn conntrack_timeouts(ctx: &Ctx<'_>) {
    let _ = ctx.topo.node.sysctl(&[
        "net.netfilter.nf_conntrack_tcp_timeout_time_wait=1",
        "net.netfilter.nf_conntrack_tcp_timeout_close=1",
        "net.netfilter.nf_conntrack_tcp_timeout_fin_wait=1",
        "net.netfilter.nf_conntrack_tcp_timeout_last_ack=1",
    ]);
}

/// `taskset -c CPU nsenter --net=NODE program args...`, output to `log`. nsenter (unlike
/// `ip netns exec`) keeps /sys, which the ebpf mode needs for cgroups and bpffs.
fn spawn_in_node(ctx: &Ctx<'_>, program: &Path, args: &[String], log: &Path) -> Result<Child> {
    let file = std::fs::File::create(log)
        .map_err(|e| BenchError::io(format!("create {}", log.display()), e))?;
    let err = file
        .try_clone()
        .map_err(|e| BenchError::io("log file", e))?;
    let mut cmd = Command::new("taskset");
    cmd.arg("-c")
        .arg(ctx.proxy_cpu.to_string())
        .arg("nsenter")
        .arg(format!("--net=/run/netns/{}", ctx.topo.node.name()))
        .arg(program)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(err);
    topology::spawn_registered(&mut cmd, &program.display().to_string())
}

fn start_haproxy(ctx: &Ctx<'_>) -> Result<(Child, PathBuf)> {
    let servers: String = (0..ctx.endpoints.clamp(1, topology::BACKENDS))
        .map(|k| format!("    server b{k} {}:{BACKEND_PORT}\n", backend_ip(k)))
        .collect();
    let cfg = format!(
        "global\n    nbthread 1\n    maxconn 9000\n\
         defaults\n    mode tcp\n    timeout connect 1s\n    timeout client 60s\n    timeout server 60s\n\
         frontend fe\n    bind {NODE_IP}:{HAPROXY_PORT}\n    maxconn 9000\n    default_backend be\n\
         backend be\n    balance roundrobin\n{servers}"
    );
    let path = ctx.work.join("haproxy.cfg");
    std::fs::write(&path, cfg)
        .map_err(|e| BenchError::io(format!("write {}", path.display()), e))?;
    let log = ctx.work.join("haproxy.log");
    let child = spawn_in_node(
        ctx,
        Path::new("haproxy"),
        &["-f".into(), path.display().to_string(), "-db".into()],
        &log,
    )?;
    Ok((child, log))
}

fn write_json(path: &Path, v: &serde_json::Value) -> Result<()> {
    // Written beside and renamed in: the daemon's watcher never sees half a file.
    let tmp = path.with_extension("tmp");
    let text = serde_json::to_vec(v).map_err(|e| BenchError::mode("manifests", e.to_string()))?;
    std::fs::write(&tmp, text)
        .map_err(|e| BenchError::io(format!("write {}", tmp.display()), e))?;
    std::fs::rename(&tmp, path).map_err(|e| BenchError::io(format!("rename {}", path.display()), e))
}

fn start_daemon(ctx: &Ctx<'_>, mode: Mode, svcs: &[Svc]) -> Result<(Daemon, Figures)> {
    let dir = ctx.work.join(format!("manifests-{mode}"));
    let state = ctx.work.join(format!("state-{mode}"));
    let _ = std::fs::remove_dir_all(&state);
    write_manifests(&dir, svcs)?;
    let args = daemon_args(ctx, mode, &dir, &state)?;
    let log = ctx.work.join(format!("{mode}.log"));
    let started = Instant::now();
    let mut child = spawn_in_node(ctx, ctx.svcplane, &args, &log)?;
    let m = match wait_programmed(ctx, mode, &mut child, &log) {
        Ok(m) => m,
        Err(e) => {
            stop_child(child);
            return Err(e);
        }
    };
    let mut figures = Figures::new();
    figures.insert("ready_ms".into(), ms(started.elapsed()));
    figures.insert("cold_ms".into(), m.sync_sum * 1e3);
    let daemon = Daemon {
        child,
        log,
        manifests: dir,
    };
    Ok((daemon, figures))
}

/// `fillers.json`, `probe.json` (rewritten by [`change`]) and `web.json` in `dir`.
fn write_manifests(dir: &Path, svcs: &[Svc]) -> Result<()> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)
        .map_err(|e| BenchError::io(format!("mkdir {}", dir.display()), e))?;
    let (rest, last_two) = svcs.split_at(svcs.len().saturating_sub(2));
    write_json(&dir.join("fillers.json"), &services::manifest_list(rest))?;
    if let [probe, web] = last_two {
        for (file, svc) in [("probe.json", probe), ("web.json", web)] {
            write_json(
                &dir.join(file),
                &services::manifest_list(std::slice::from_ref(svc)),
            )?;
        }
    }
    Ok(())
}

/// `svcplane run ...` for `mode` (ebpf: with the client cgroup and, when offered, a pin
/// root of the bench's own).
fn daemon_args(ctx: &Ctx<'_>, mode: Mode, dir: &Path, state: &Path) -> Result<Vec<String>> {
    let mut args: Vec<String> = ["run", "--mode", mode.name(), "--node-ip"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.push(NODE_IP.to_string());
    for (flag, value) in [
        ("--admin-listen", ADMIN.to_string()),
        ("--dns-listen", "127.0.0.1:5353".to_string()),
        ("--drain-timeout", "1".to_string()),
        ("--log-format", "json".to_string()),
        ("--manifests", dir.display().to_string()),
        ("--state-dir", state.display().to_string()),
    ] {
        args.extend([flag.to_string(), value]);
    }
    if mode == Mode::Ebpf {
        let cg = ctx
            .cgroup
            .ok_or_else(|| BenchError::mode(mode, "no client cgroup"))?;
        args.extend(["--cgroup".into(), cg.path().display().to_string()]);
        if let Some(root) = pin_root(ctx.svcplane, ctx.topo) {
            args.extend(["--bpf-pin-root".into(), root]);
        }
        topology::register_command(cleanup_command(ctx.svcplane, ctx.topo));
    }
    Ok(args)
}

/// Polls the daemon's metrics until its first sync is done.
fn wait_programmed(
    ctx: &Ctx<'_>,
    mode: Mode,
    child: &mut Child,
    log: &Path,
) -> Result<SyncMetrics> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(BenchError::mode(
                mode,
                format!("svcplane exited ({status}); log:\n{}", tail(log)),
            ));
        }
        if let Ok(m) = metrics(ctx)
            && m.sync_count >= 1.0
        {
            return Ok(m);
        }
        if Instant::now() > deadline {
            return Err(BenchError::mode(
                mode,
                format!(
                    "not programmed within {READY_TIMEOUT:?}; log:\n{}",
                    tail(log)
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A pin root of the bench's own, when the binary takes `--bpf-pin-root` (else the daemon's
/// default, shared with any other ebpf daemon on the machine).
fn pin_root(svcplane: &Path, topo: &Topology) -> Option<String> {
    let help = Command::new(svcplane)
        .args(["run", "--help"])
        .output()
        .ok()?;
    String::from_utf8_lossy(&help.stdout)
        .contains("--bpf-pin-root")
        .then(|| format!("/sys/fs/bpf/{}", topo.id))
}

/// `svcplane cleanup [--bpf-pin-root DIR]`: detaches and unpins what the ebpf daemon left.
fn cleanup_command(svcplane: &Path, topo: &Topology) -> Vec<String> {
    let mut cmd = vec![svcplane.display().to_string(), "cleanup".to_string()];
    if let Some(root) = pin_root(svcplane, topo) {
        cmd.extend(["--bpf-pin-root".to_string(), root]);
    }
    cmd
}

fn ebpf_cleanup(svcplane: &Path, topo: &Topology) {
    let cmd = cleanup_command(svcplane, topo);
    let args: Vec<&str> = cmd[1..].iter().map(String::as_str).collect();
    if let Err(e) = sys::run(&cmd[0], &args) {
        eprintln!("\nsvcplane bench: ebpf cleanup: {e}");
    }
}

fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(10)..].join("\n")
}

/// The daemon's sync metrics.
#[derive(Debug, Clone, Copy)]
struct SyncMetrics {
    sync_count: f64,
    sync_sum: f64,
}

/// `GET /metrics` from the daemon's admin address inside the node namespace.
fn metrics(ctx: &Ctx<'_>) -> Result<SyncMetrics> {
    let h = sys::spawn_in("bench-metrics", ctx.topo.node.name(), None, || {
        let mut s = std::net::TcpStream::connect_timeout(
            &ADMIN
                .parse()
                .map_err(|_| BenchError::mode("admin", "bad address"))?,
            Duration::from_secs(1),
        )
        .map_err(|e| BenchError::io("connect to the admin endpoint", e))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| BenchError::io("admin", e))?;
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: admin\r\n\r\n")
            .map_err(|e| BenchError::io("admin", e))?;
        let mut text = String::new();
        s.read_to_string(&mut text)
            .map_err(|e| BenchError::io("admin", e))?;
        Ok(text)
    })?;
    let text = sys::join(h, "metrics")?;
    parse_sync_metrics(&text).ok_or_else(|| {
        BenchError::mode("metrics", "no kubeproxy_sync_proxy_rules_duration_seconds")
    })
}

fn parse_sync_metrics(text: &str) -> Option<SyncMetrics> {
    let get = |name: &str| {
        text.lines().find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == name).then(|| v.trim().parse::<f64>().ok()).flatten()
        })
    };
    Some(SyncMetrics {
        sync_count: get("kubeproxy_sync_proxy_rules_duration_seconds_count")?,
        sync_sum: get("kubeproxy_sync_proxy_rules_duration_seconds_sum")?,
    })
}

/// Polls until one request through the mode is answered.
fn wait_answering(ctx: &Ctx<'_>, active: &mut Active) -> Result<()> {
    let target = active.target;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let h = sys::spawn_in("bench-probe", ctx.topo.client.name(), None, move || {
            Ok(probe_request(target))
        })?;
        if sys::join(h, "probe")? {
            return Ok(());
        }
        if let State::Process { child, log } | State::Daemon(Daemon { child, log, .. }) =
            &mut active.state
            && let Ok(Some(status)) = child.try_wait()
        {
            return Err(BenchError::mode(
                active.mode,
                format!("exited ({status}); log:\n{}", tail(log)),
            ));
        }
        if Instant::now() > deadline {
            return Err(BenchError::mode(
                active.mode,
                format!("{target} does not answer from the client namespace"),
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn probe_request(target: SocketAddr) -> bool {
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&target, Duration::from_millis(500))
    else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out.starts_with(b"HTTP/1.1 200")
}

/// Whether `svcplane run --help` offers `--mode ebpf`.
pub fn binary_has_ebpf(svcplane: &Path) -> bool {
    let Ok(out) = Command::new(svcplane).args(["run", "--help"]).output() else {
        return false;
    };
    help_lists_ebpf(&String::from_utf8_lossy(&out.stdout))
}

/// Parses `run --help`: the `--mode` option's possible values include `ebpf`.
pub(crate) fn help_lists_ebpf(help: &str) -> bool {
    let Some(start) = help.find("--mode") else {
        return false;
    };
    let rest = &help[start + 6..];
    // The option's block ends where the next option starts.
    let end = rest.find("\n  -").unwrap_or(rest.len());
    let block = &rest[..end];
    block.contains("- ebpf")
        || block.contains("ebpf,")
        || block.contains(", ebpf")
        || block.contains("[possible values: ebpf")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ebpf_support_is_read_from_help() {
        let without = "      --mode <MODE>\n          Data plane (ebpf is not part of this build yet)\n\n          Possible values:\n          - userspace: Proxy\n          - none:      Load\n\n          [default: userspace]\n\n      --node-name <NAME>\n";
        assert!(!help_lists_ebpf(without));
        let with = without.replace("- none:", "- ebpf: Socket LB\n          - none:");
        assert!(help_lists_ebpf(&with));
        assert!(help_lists_ebpf(
            "  --mode <MODE>  Data plane [default: userspace] [possible values: userspace, ebpf, none]\n  -h"
        ));
        assert!(!help_lists_ebpf(
            "  --mode <MODE>  [possible values: userspace, none]\n  --x ebpf, y"
        ));
    }

    #[test]
    fn sync_metrics_parse() {
        let m = parse_sync_metrics("# HELP x\nkubeproxy_sync_proxy_rules_duration_seconds_sum 0.25\nkubeproxy_sync_proxy_rules_duration_seconds_count 2\n").unwrap();
        assert_eq!((m.sync_count, m.sync_sum), (2.0, 0.25));
        assert!(parse_sync_metrics("nothing 1\n").is_none());
    }

    #[test]
    fn modes_parse() {
        for m in Mode::ALL {
            assert_eq!(m.name().parse::<Mode>(), Ok(m));
        }
        assert!("ipvs".parse::<Mode>().is_err());
    }
}
