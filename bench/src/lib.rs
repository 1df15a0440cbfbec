//! `svcplane bench`: measures the proxy modes side by side on this machine.
//!
//! Owns: the namespaces, veth pairs and cgroup of a run ([`topology`]), its HTTP backends
//! ([`backend`]), the load generator ([`load`]), the data planes under test and their
//! setup ([`modes`], with kube-proxy's rulesets in [`rules`]) and the outputs ([`report`]).
//! Must not: send traffic outside the namespaces it created, leave anything behind (also
//! on Ctrl-C or failure), or assert on timing. The `svcplane` binary calls [`run`] and
//! passes its own path, which the bench re-executes for the userspace and ebpf daemons.

#![forbid(unsafe_code)]

pub mod backend;
mod bpfstats;
pub mod dns;
pub mod error;
pub mod load;
pub mod modes;
pub mod report;
pub mod rules;
pub mod services;
pub mod stats;
mod sys;
pub mod topology;

use std::collections::BTreeMap;
use std::net::{SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;

pub use error::{BenchError, Result};
pub use load::{LoadOptions, Test};
pub use modes::Mode;
pub use report::{Machine, Record};

/// What to measure and where to write it.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    pub modes: Vec<Mode>,
    /// Endpoints of the measured Service, 1 to 3 (the first N backends; `direct` uses one).
    pub endpoints: usize,
    /// Filler Service counts; every mode is measured at each.
    pub services: Vec<u32>,
    pub tests: Vec<Test>,
    pub duration: Duration,
    pub runs: usize,
    pub out: PathBuf,
    /// Refuse to start when the 1-minute load average is above this.
    pub max_load: f64,
    pub connections: usize,
    /// Offered rate of the latency test, requests per second.
    pub rate: u32,
    pub bulk_bytes: u64,
    /// CPU of the data plane (daemons, HAProxy).
    pub proxy_cpu: usize,
    /// CPU of the load generator and the backends.
    pub load_cpu: usize,
    /// Warm-up per mode slot (discarded load before the measurements).
    pub warmup: Duration,
    /// The `svcplane` binary, re-executed for the userspace and ebpf modes.
    pub svcplane: PathBuf,
    pub svcplane_version: String,
    /// Also measure cluster DNS against Knot.
    pub dns: DnsChoice,
    /// Offered queries/s of the DNS latency test.
    pub dns_rate: u32,
    /// Which iptables the iptables mode loads its rules with.
    pub iptables_backend: IptablesBackend,
}

/// The iptables mode's backend: the legacy x_tables interface or the nf_tables one.
/// `iptables-restore` of kube-proxy's ruleset for 10,000 Services takes seconds with the
/// legacy backend and many minutes with the nf_tables backend (iptables 1.8.9).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IptablesBackend {
    /// legacy when `iptables-legacy-restore` is installed, else `iptables-restore`.
    Auto,
    Legacy,
    Nft,
}

impl std::str::FromStr for IptablesBackend {
    type Err = String;
    fn from_str(s: &str) -> Result<IptablesBackend, String> {
        match s {
            "auto" => Ok(IptablesBackend::Auto),
            "legacy" => Ok(IptablesBackend::Legacy),
            "nft" => Ok(IptablesBackend::Nft),
            _ => Err(format!("{s:?}: expected auto, legacy or nft")),
        }
    }
}

impl IptablesBackend {
    /// The restore program to run.
    pub fn program(self) -> &'static str {
        match self {
            IptablesBackend::Legacy => "iptables-legacy-restore",
            IptablesBackend::Nft => "iptables-nft-restore",
            IptablesBackend::Auto if sys::have_tool("iptables-legacy-restore") => {
                "iptables-legacy-restore"
            }
            IptablesBackend::Auto => "iptables-restore",
        }
    }
}

/// Whether to run the DNS comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DnsChoice {
    /// When `knotd` is installed.
    Auto,
    On,
    Off,
}

impl std::str::FromStr for DnsChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<DnsChoice, String> {
        match s {
            "auto" => Ok(DnsChoice::Auto),
            "on" => Ok(DnsChoice::On),
            "off" => Ok(DnsChoice::Off),
            _ => Err(format!("{s:?}: expected auto, on or off")),
        }
    }
}

impl BenchConfig {
    fn runs_dns(&self) -> bool {
        match self.dns {
            DnsChoice::On => true,
            DnsChoice::Off => false,
            DnsChoice::Auto => sys::have_tool("knotd"),
        }
    }
}

/// Runs the whole benchmark; writes the outputs into `config.out` and returns the markdown
/// table.
pub fn run(config: &BenchConfig) -> Result<String> {
    let result = run_inner(config);
    if result.is_err() && topology::stopping() {
        topology::wait_for_signal_exit();
    }
    result
}

fn run_inner(config: &BenchConfig) -> Result<String> {
    preflight(config)?;
    std::fs::create_dir_all(&config.out)
        .map_err(|e| BenchError::io(format!("mkdir {}", config.out.display()), e))?;
    let machine = machine_facts(config);
    let work = WorkDir::new()?;
    let run_id = format!("svb{}", std::process::id());
    // Every mode runs with the bench (load generator, backends, daemons) in one child cgroup,
    // as pods run: a process in a non-root cgroup pays memory-cgroup accounting per socket
    // buffer, which the root cgroup does not, so a client in the root cgroup for some modes
    // only would measure that accounting, not the data plane. The ebpf mode attaches to it.
    let cgroup = topology::ClientCgroup::create(&run_id)?;
    cgroup.enter()?;
    let mut records = Vec::new();
    let mut dns_records = Vec::new();
    let mut outcome = measure_all(config, &work.0, Some(&cgroup), &mut records);
    if outcome.is_ok() && config.runs_dns() {
        outcome = topology::Topology::new().and_then(|topo| {
            // The last proxy slot's namespaces are still being torn down.
            settle("DNS");
            measure_dns(config, &topo, &work.0, &mut dns_records)
        });
    }
    let md = write_outputs(config, &machine, &records, &dns_records)?;
    outcome.map(|()| md)
}

/// Busy share of all CPUs below which the machine counts as quiet before a mode's slot.
const QUIET_BUSY: f64 = 0.05;
/// How long a slot waits for quiet at most.
const QUIET_LIMIT: Duration = Duration::from_secs(20);

/// Waits for a quiet machine before measuring `what`; warns when it never gets quiet.
fn settle(what: &str) {
    let (waited, quiet) = sys::wait_quiet(QUIET_BUSY, QUIET_LIMIT);
    if !quiet {
        eprintln!(
            "\nwarning: the machine did not become quiet within {:.0} s \
             (CPUs over {:.0} % busy); measuring {what} anyway",
            waited.as_secs_f64(),
            QUIET_BUSY * 100.0
        );
    }
}

/// A fresh topology with its backends running. Every mode's slot gets its own: nothing a
/// mode leaves in the kernel (iptables-legacy tables cannot be unregistered, and they keep
/// conntrack hooks in the namespace) can tax the modes measured after it.
fn fresh_topology(config: &BenchConfig) -> Result<(topology::Topology, Vec<backend::Backend>)> {
    let topo = topology::Topology::new()?;
    let backends = (0..topology::BACKENDS)
        .map(|k| {
            backend::Backend::start(
                topo.backends[k].name(),
                &format!("b{k}"),
                SocketAddr::V4(SocketAddrV4::new(
                    topology::backend_ip(k),
                    topology::BACKEND_PORT,
                )),
                Some(config.load_cpu),
            )
        })
        .collect::<Result<_>>()?;
    Ok((topo, backends))
}

fn measure_all(
    config: &BenchConfig,
    work: &std::path::Path,
    cgroup: Option<&topology::ClientCgroup>,
    records: &mut Vec<Record>,
) -> Result<()> {
    let slots = config.runs * config.services.len() * config.modes.len();
    let mut slot = 0;
    let started = Instant::now();
    let load_tests: Vec<Test> = config
        .tests
        .iter()
        .copied()
        .filter(|t| *t != Test::Program)
        .collect();
    let opts = LoadOptions {
        duration: config.duration,
        connections: config.connections,
        rate: config.rate,
        bulk_bytes: config.bulk_bytes,
        cpu: Some(config.load_cpu),
    };
    for run in 0..config.runs {
        for &services in &config.services {
            for mode in stats::interleave(&config.modes, run) {
                slot += 1;
                progress(
                    started,
                    slot,
                    slots,
                    &format!(
                        "run {}/{} services {services} {mode}: setting up",
                        run + 1,
                        config.runs
                    ),
                );
                let (topo, backends) = fresh_topology(config)?;
                let ctx = &modes::Ctx {
                    topo: &topo,
                    svcplane: &config.svcplane,
                    work,
                    proxy_cpu: config.proxy_cpu,
                    endpoints: config.endpoints,
                    cgroup,
                    iptables_restore: config.iptables_backend.program(),
                };
                let mut active = modes::setup(ctx, mode, services)?;
                // The previous slot's namespaces are still being torn down by the kernel.
                settle(&mode.to_string());
                let result = measure_slot(
                    config,
                    ctx,
                    &mut active,
                    &backends,
                    &load_tests,
                    &opts,
                    run,
                    services,
                    records,
                    (started, slot, slots),
                );
                modes::teardown(ctx, active);
                drop(backends);
                result?;
            }
        }
    }
    eprintln!();
    Ok(())
}

#[expect(clippy::too_many_arguments, reason = "one slot's whole context")]
fn measure_slot(
    config: &BenchConfig,
    ctx: &modes::Ctx<'_>,
    active: &mut modes::Active,
    backends: &[backend::Backend],
    load_tests: &[Test],
    opts: &LoadOptions,
    run: usize,
    services: u32,
    records: &mut Vec<Record>,
    (started, slot, slots): (Instant, usize, usize),
) -> Result<()> {
    let mode = active.mode;
    // The eBPF programs' own run time (kernel accounting), while this slot runs.
    let bpf = match (mode, ctx.cgroup) {
        (Mode::Ebpf, Some(cg)) => bpfstats::BpfStats::enable(cg.path()),
        _ => None,
    };
    if !config.warmup.is_zero() {
        let warm = LoadOptions {
            duration: config.warmup / 2,
            ..opts.clone()
        };
        for t in [Test::Conn, Test::Keepalive] {
            load::measure(
                ctx.topo.client.name(),
                active.target,
                t,
                &warm,
                active.proxy_pid,
            )?;
        }
    }
    for &test in load_tests {
        progress(
            started,
            slot,
            slots,
            &format!(
                "run {}/{} services {services} {mode}: {}",
                run + 1,
                config.runs,
                test.name()
            ),
        );
        let before: Vec<u64> = backends.iter().map(backend::Backend::accepted).collect();
        let bpf_before = bpf.as_ref().and_then(bpfstats::BpfStats::totals);
        let (mut figures, errors) = load::measure(
            ctx.topo.client.name(),
            active.target,
            test,
            opts,
            active.proxy_pid,
        )?;
        let bpf_after = bpf.as_ref().and_then(bpfstats::BpfStats::totals);
        if let (Some((runs0, ns0)), Some((runs1, ns1))) = (bpf_before, bpf_after) {
            let rate = figures
                .get("conn_per_s")
                .or_else(|| figures.get("req_per_s"))
                .copied();
            if let (Some(rate), Some(&elapsed)) = (rate, figures.get("elapsed_s")) {
                let ops = (rate * elapsed).max(1.0);
                figures.insert("bpf_ns_per_op".into(), ns1.saturating_sub(ns0) as f64 / ops);
                figures.insert(
                    "bpf_runs_per_op".into(),
                    runs1.saturating_sub(runs0) as f64 / ops,
                );
            }
        }
        if test == Test::Conn {
            // How the mode spread the new connections over the backends.
            let got: Vec<u64> = backends
                .iter()
                .zip(&before)
                .map(|(b, n)| b.accepted() - n)
                .collect();
            let total = got.iter().sum::<u64>().max(1) as f64;
            for (k, n) in got.iter().enumerate() {
                figures.insert(format!("share_b{k}"), *n as f64 / total);
            }
        }
        records.push(Record {
            mode,
            test,
            run,
            services,
            figures,
            errors,
        });
    }
    if config.tests.contains(&Test::Program) && mode.programs() {
        modes::change(ctx, active)?;
        records.push(Record {
            mode,
            test: Test::Program,
            run,
            services,
            figures: active.program.clone(),
            errors: 0,
        });
    }
    Ok(())
}

fn measure_dns(
    config: &BenchConfig,
    topo: &topology::Topology,
    work: &std::path::Path,
    records: &mut Vec<report::DnsRecord>,
) -> Result<()> {
    use dns::DnsServer;
    let ctx = dns::DnsCtx {
        node_ns: topo.node.name(),
        svcplane: &config.svcplane,
        work,
        proxy_cpu: config.proxy_cpu,
        load_cpu: config.load_cpu,
        duration: config.duration,
        rate: config.dns_rate,
    };
    let servers = [DnsServer::Svcplane, DnsServer::Knot];
    let slots = config.runs * config.services.len() * 2;
    let (started, mut slot) = (Instant::now(), 0);
    for run in 0..config.runs {
        for &fillers in &config.services {
            // The measured Service plus the fillers, as in the proxy tests.
            let services = fillers + 1;
            if run == 0 {
                progress(
                    started,
                    slot,
                    slots,
                    &format!("dns {services} services: comparing answers"),
                );
                dns::compare(&ctx, services)?;
            }
            for server in stats::interleave(&servers, run) {
                slot += 1;
                progress(
                    started,
                    slot,
                    slots,
                    &format!(
                        "dns run {}/{} services {services} {}",
                        run + 1,
                        config.runs,
                        server.name()
                    ),
                );
                let (figures, lost) = dns::measure(&ctx, server, services)?;
                records.push(report::DnsRecord {
                    server,
                    run,
                    services: fillers,
                    figures,
                    lost,
                });
            }
        }
    }
    eprintln!();
    Ok(())
}

fn progress(started: Instant, slot: usize, slots: usize, what: &str) {
    use std::io::IsTerminal as _;
    let elapsed = started.elapsed().as_secs();
    let line = format!(
        "[{slot}/{slots} {:>3}:{:02}] {what}",
        elapsed / 60,
        elapsed % 60
    );
    if std::io::stderr().is_terminal() {
        // One status line, rewritten in place.
        eprint!("\r\x1b[K{line}");
    } else {
        eprintln!("{line}");
    }
}

fn write_outputs(
    config: &BenchConfig,
    machine: &Machine,
    records: &[Record],
    dns_records: &[report::DnsRecord],
) -> Result<String> {
    let cells = report::summarize(records);
    let dns_cells = report::summarize_dns(dns_records);
    let out = &config.out;
    let json = serde_json::json!({
        "machine": machine,
        "config": {
            "modes": config.modes,
            "services": config.services,
            "tests": config.tests,
            "duration_s": config.duration.as_secs_f64(),
            "runs": config.runs,
            "connections": config.connections,
            "latency_rate_per_s": config.rate,
            "bulk_bytes": config.bulk_bytes,
            "proxy_cpu": config.proxy_cpu,
            "endpoints": config.endpoints,
            "load_cpu": config.load_cpu,
            "dns": config.runs_dns(),
            "iptables_restore": config.iptables_backend.program(),
            "dns_rate_per_s": config.dns_rate,
        },
        "records": records,
        "summary": cells,
        "dns_records": dns_records,
        "dns_summary": dns_cells,
    });
    let path = out.join("results.json");
    let text = serde_json::to_string_pretty(&json).map_err(|e| BenchError::Output {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    std::fs::write(&path, text)
        .map_err(|e| BenchError::io(format!("write {}", path.display()), e))?;
    let mut md = report::markdown(machine, records, &cells, &config.modes);
    if config.modes.contains(&Mode::Iptables) {
        md.push_str(&format!(
            "\niptables rules loaded with `{}`.\n",
            config.iptables_backend.program()
        ));
    }
    if !dns_records.is_empty() {
        md.push_str(&report::dns_markdown(dns_records, &dns_cells));
    }
    let path = out.join("results.md");
    std::fs::write(&path, &md)
        .map_err(|e| BenchError::io(format!("write {}", path.display()), e))?;
    report::svg(&cells, &config.modes, &out.join("ratios.svg"))?;
    Ok(md)
}

/// Refuses to start, with a clear message, when the run cannot measure anything
/// meaningful: not root, a mode's tool missing, too few CPUs, a busy machine, or `ebpf`
/// requested from a binary that has no such mode.
pub fn preflight(config: &BenchConfig) -> Result<()> {
    let refuse = |m: String| Err(BenchError::Preflight(m));
    if !nix::unistd::geteuid().is_root() {
        return refuse(
            "needs root (it creates network namespaces, veth pairs and a cgroup)".into(),
        );
    }
    if config.modes.is_empty()
        || config.services.is_empty()
        || config.tests.is_empty()
        || config.runs == 0
    {
        return refuse(
            "nothing to measure: --modes, --services, --tests and --runs must not be empty".into(),
        );
    }
    let mut missing = Vec::new();
    for tool in ["ip", "nsenter", "taskset", "sysctl"] {
        if !sys::have_tool(tool) {
            missing.push(format!("{tool} (packages iproute2, util-linux, procps)"));
        }
    }
    for mode in &config.modes {
        let tools: Vec<&str> = if *mode == Mode::Iptables {
            vec![config.iptables_backend.program()]
        } else {
            mode.tools().to_vec()
        };
        for tool in tools {
            if !sys::have_tool(tool) {
                let pkg = match tool {
                    "iptables-restore" | "iptables-legacy-restore" | "iptables-nft-restore" => {
                        "iptables"
                    }
                    "nft" => "nftables",
                    other => other,
                };
                missing.push(format!(
                    "{tool} for --modes {mode} (apt-get install -y {pkg})"
                ));
            }
        }
    }
    if !missing.is_empty() {
        return refuse(format!("missing: {}", missing.join("; ")));
    }
    if config.modes.contains(&Mode::Ebpf) && !modes::binary_has_ebpf(&config.svcplane) {
        return refuse(format!(
            "--modes ebpf: `{} run --help` does not offer --mode ebpf; this build has no eBPF \
             data plane yet (leave ebpf out of --modes)",
            config.svcplane.display()
        ));
    }
    if config.dns == DnsChoice::On && !sys::have_tool("knotd") {
        return refuse("--dns on: knotd is missing (apt-get install -y knot)".into());
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if config.proxy_cpu >= cpus || config.load_cpu >= cpus {
        return refuse(format!(
            "--proxy-cpu {} / --load-cpu {}: this machine has {cpus} CPUs",
            config.proxy_cpu, config.load_cpu
        ));
    }
    let load = load_average()[0];
    if load > config.max_load {
        return refuse(format!(
            "the 1-minute load average is {load:.2}, above --max-load {:.2}: other work would \
             make every figure meaningless; wait for a quiet machine or raise --max-load",
            config.max_load
        ));
    }
    Ok(())
}

fn load_average() -> [f64; 3] {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut it = text
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(f64::NAN));
    [
        it.next().unwrap_or(f64::NAN),
        it.next().unwrap_or(f64::NAN),
        it.next().unwrap_or(f64::NAN),
    ]
}

fn machine_facts(config: &BenchConfig) -> Machine {
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .and_then(|r| r.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let mut tools = BTreeMap::new();
    for (tool, args) in [
        ("haproxy", &["-v"][..]),
        ("iptables", &["--version"][..]),
        ("nft", &["--version"][..]),
    ] {
        if let Ok(out) = sys::run(tool, args)
            && let Some(line) = out.lines().next()
        {
            tools.insert(tool.to_string(), line.trim().to_string());
        }
    }
    Machine {
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_string(),
        cpu_model,
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        load_average: load_average(),
        unix_time: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        svcplane_version: config.svcplane_version.clone(),
        tools,
    }
}

/// A private temporary directory (manifests, configs, logs), removed on drop.
#[derive(Debug)]
struct WorkDir(PathBuf);

impl WorkDir {
    fn new() -> Result<WorkDir> {
        let dir = std::env::temp_dir().join(format!("svcplane-bench-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)
            .map_err(|e| BenchError::io(format!("mkdir {}", dir.display()), e))?;
        topology::install_signal_cleanup();
        topology::register_dir(dir.clone());
        Ok(WorkDir(dir))
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if std::env::var_os("SVCPLANE_BENCH_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
