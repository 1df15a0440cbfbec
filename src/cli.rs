//! The command line: the contract in DESIGN.md ("CLI contract"). Only what is built is offered.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use svcplane_config::{Cidr, PortRange};

/// svcplane: one node-local daemon doing the jobs of kube-proxy and CoreDNS, driven by
/// Service and EndpointSlice manifests.
#[derive(Debug, Parser)]
#[command(name = "svcplane", version, about, long_about = None, args_override_self = true)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the daemon: load and watch manifests, program the data plane, serve admin HTTP.
    Run(Box<RunArgs>),
    /// Validate manifests; exit 1 with every error listed.
    Check(CheckArgs),
    /// What the running daemon has programmed: every frontend and its endpoints, with
    /// state, active connections and totals (like `ipvsadm -Ln`; eBPF mode: totals only).
    Status(StatusArgs),
    /// The embedded default: built-in backends and example Services on loopback, the
    /// userspace data plane and DNS; prints what to try. No root needed.
    Demo(DemoArgs),
    /// Remove everything `run --mode ebpf` pinned and attached (maps, programs, links), which
    /// otherwise keeps routing after the daemon exits.
    Cleanup(CleanupArgs),
    /// The health self-test's client in the eBPF mode, run by the daemon inside the cgroup
    /// the programs are attached to. Not for users.
    #[command(hide = true)]
    SelfTestProbe(SelfTestProbeArgs),
    /// Benchmark the proxy modes side by side (root): builds its own namespaces, backends
    /// and load generator, measures every mode interleaved over the runs, and writes
    /// results.json, results.md and ratios.svg into --out.
    Bench(BenchArgs),
}

#[derive(Debug, Args)]
pub(crate) struct CleanupArgs {
    /// Directory on bpffs the eBPF mode pinned to.
    #[arg(long, value_name = "DIR", default_value = svcplane_ebpf::DEFAULT_PIN_ROOT)]
    pub(crate) bpf_pin_root: PathBuf,
}

#[derive(Debug, Args)]
pub(crate) struct SelfTestProbeArgs {
    /// The probe frontend.
    pub(crate) frontend: SocketAddr,
}

#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    /// Modes to measure, comma-separated: direct (the client to one backend: the limit),
    /// userspace, ebpf, iptables and nftables (kube-proxy's rulesets), haproxy (mode tcp,
    /// one thread). Ratios are to direct.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "direct,userspace,iptables,haproxy"
    )]
    pub(crate) modes: Vec<svcplane_bench::Mode>,
    /// Filler Service counts (10 unroutable endpoints each), comma-separated; every mode is
    /// measured at each count, with the measured Service last.
    #[arg(long, value_delimiter = ',', default_value = "0,1000,10000")]
    pub(crate) services: Vec<u32>,
    /// Endpoints of the measured Service (1-3 backends). With 1, every mode sends to the
    /// backend `direct` uses, which isolates what the data plane itself costs.
    #[arg(long, value_name = "N", default_value_t = 3,
          value_parser = clap::value_parser!(u8).range(1..=3))]
    pub(crate) endpoints: u8,
    /// Tests, comma-separated: conn (new connections/s), keepalive (requests/s), latency
    /// (p50/p99/p99.9 at --rate), bulk (Gbit/s), program (cold load, one endpoint change).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "conn,keepalive,latency,bulk,program"
    )]
    pub(crate) tests: Vec<svcplane_bench::Test>,
    /// Seconds per test and mode.
    #[arg(long, value_name = "S", default_value_t = 2.0)]
    pub(crate) duration: f64,
    /// Interleaved runs (A B C, B C A, ...); figures are median [min–max] over them.
    #[arg(long, value_name = "R", default_value_t = 3)]
    pub(crate) runs: usize,
    /// Output directory.
    #[arg(long, value_name = "DIR", default_value = "bench-results")]
    pub(crate) out: PathBuf,
    /// Refuse to start above this 1-minute load average.
    #[arg(long, value_name = "X", default_value_t = 1.0)]
    pub(crate) max_load: f64,
    /// Concurrent connections of the conn and keepalive tests.
    #[arg(long, value_name = "N", default_value_t = 32)]
    pub(crate) connections: usize,
    /// Offered requests/s of the latency test.
    #[arg(long, value_name = "REQ/S", default_value_t = 5000)]
    pub(crate) rate: u32,
    /// MiB per request of the bulk test.
    #[arg(long, value_name = "MIB", default_value_t = 64)]
    pub(crate) bulk_mib: u64,
    /// CPU of the data plane under test (daemons, HAProxy).
    #[arg(long, value_name = "CPU", default_value_t = 0)]
    pub(crate) proxy_cpu: usize,
    /// CPU of the load generator and the backends.
    #[arg(long, value_name = "CPU", default_value_t = 1)]
    pub(crate) load_cpu: usize,
    /// Seconds of discarded load before each mode's measurements.
    #[arg(long, value_name = "S", default_value_t = 0.5)]
    pub(crate) warmup: f64,
    /// Cluster DNS against Knot on the same records (QPS, p50/p99): auto runs it when
    /// knotd is installed.
    #[arg(long, value_name = "auto|on|off", default_value = "auto")]
    pub(crate) dns: svcplane_bench::DnsChoice,
    /// Offered queries/s of the DNS latency test.
    #[arg(long, value_name = "QPS", default_value_t = 20000)]
    pub(crate) dns_rate: u32,
    /// Backend of the iptables mode: legacy (x_tables) or nft (nf_tables); auto picks
    /// legacy when iptables-legacy-restore is installed (the nf_tables backend takes many
    /// minutes to load 10,000 Services).
    #[arg(long, value_name = "auto|legacy|nft", default_value = "auto")]
    pub(crate) iptables_backend: svcplane_bench::IptablesBackend,
}

#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    /// Admin address of the daemon.
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:10249")]
    pub(crate) admin: SocketAddr,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = StatusOutput::Table)]
    pub(crate) output: StatusOutput,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum StatusOutput {
    /// One line per frontend, one per endpoint under it.
    Table,
    /// The admin endpoint's `/debug/proxy` document, for scripts.
    Json,
}

#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Cluster DNS address, UDP and TCP.
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:5353")]
    pub(crate) dns_listen: SocketAddr,
    /// Admin HTTP address.
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:10249")]
    pub(crate) admin_listen: SocketAddr,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub(crate) log_format: LogFormat,
}

/// Data planes. Only the modes this build implements are listed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Mode {
    /// Proxy every frontend (ClusterIP, node address x nodePort, LoadBalancer ingress IP,
    /// externalIP) through a TCP/UDP userspace proxy; VIPs are routed to `lo`.
    Userspace,
    /// Rewrite connect()/sendmsg() to service frontends into endpoints with eBPF programs on
    /// the cgroup hooks of `--cgroup` (socket-level load balancing, no proxy in the path).
    /// Needs root, cgroup v2 and bpffs; state stays pinned (and routing) when the daemon
    /// exits, until `svcplane cleanup`.
    Ebpf,
    /// Load, validate and watch manifests, serve DNS and the admin endpoint; route nothing.
    None,
}

impl Mode {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Mode::Userspace => "userspace",
            Mode::Ebpf => "ebpf",
            Mode::None => "none",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum LogFormat {
    /// One readable line per event.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// Directory (or single file) of Service, EndpointSlice, Endpoints and Pod manifests
    /// (YAML or JSON); watched for changes.
    #[arg(long, value_name = "DIR")]
    pub(crate) manifests: PathBuf,
    /// Data plane.
    #[arg(long, value_enum, default_value_t = Mode::Userspace)]
    pub(crate) mode: Mode,
    /// This node's name: endpoints with this nodeName are local (traffic policy Local).
    #[arg(long, value_name = "NAME")]
    pub(crate) node_name: Option<String>,
    /// Node address NodePorts listen on (repeatable) [default: every local address that is
    /// not loopback or link-local, plus 127.0.0.1].
    #[arg(long = "node-ip", value_name = "IP")]
    pub(crate) node_ips: Vec<IpAddr>,
    /// Cluster DNS address, UDP and TCP.
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:5353")]
    pub(crate) dns_listen: SocketAddr,
    /// Cluster DNS zone.
    #[arg(long, value_name = "DOMAIN", default_value = "cluster.local")]
    pub(crate) cluster_domain: String,
    /// TTL of DNS answers in seconds (also the negative-answer TTL).
    #[arg(long, value_name = "SECS", default_value_t = 5, value_parser = clap::value_parser!(u32).range(0..=3600))]
    pub(crate) dns_ttl: u32,
    /// Upstream resolver for names outside the cluster zones (repeatable; tried in order).
    /// Without one, such names are REFUSED.
    #[arg(long = "upstream", value_name = "ADDR:PORT")]
    pub(crate) upstreams: Vec<SocketAddr>,
    /// Admin HTTP address: /healthz, /readyz, /metrics, /debug/snapshot.
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:10249")]
    pub(crate) admin_listen: SocketAddr,
    /// cgroup v2 directory the ebpf mode attaches to; sockets of processes in it and below
    /// it are balanced [default: the root of the cgroup2 mount].
    #[arg(long, value_name = "PATH")]
    pub(crate) cgroup: Option<PathBuf>,
    /// Directory on bpffs where the ebpf mode pins its maps and links (mounted if needed).
    #[arg(long, value_name = "DIR", default_value = svcplane_ebpf::DEFAULT_PIN_ROOT)]
    pub(crate) bpf_pin_root: PathBuf,
    /// ebpf mode: TCP getpeername() shows the frontend, not the endpoint (costs a
    /// socket-storage write per balanced TCP connect).
    #[arg(long)]
    pub(crate) bpf_tcp_getpeername_vip: bool,
    /// Seconds established connections may take to finish on SIGTERM/SIGINT [default: 30].
    #[arg(long, value_name = "SECS")]
    pub(crate) drain_timeout: Option<u64>,
    /// userspace mode: seconds between repairs: VIP routes someone else removed are put
    /// back, and frontends whose port was taken try to listen again [default: 30].
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub(crate) sync_period: Option<u64>,
    /// YAML file of these flags, keyed by long name (`dns-ttl: 30`, `node-ip: [a, b]`);
    /// flags given on the command line win.
    #[arg(long, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// Range ClusterIPs are allocated from for Services that state none (repeatable, one
    /// per family) [default: 10.96.0.0/12, and fd00:10:96::/108 for IPv6].
    #[arg(long = "service-cidr", value_name = "CIDR")]
    pub(crate) service_cidrs: Vec<Cidr>,
    /// Range of valid and allocated nodePorts.
    #[arg(long, value_name = "LO-HI", default_value = "30000-32767")]
    pub(crate) nodeport_range: PortRange,
    /// Directory of the allocation state file [default: $XDG_STATE_HOME/svcplane or
    /// ~/.local/state/svcplane; /var/lib/svcplane as root].
    #[arg(long, value_name = "DIR")]
    pub(crate) state_dir: Option<PathBuf>,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub(crate) log_format: LogFormat,
}

impl RunArgs {
    /// Flags that are parsed (so scripts written against the contract keep working) but
    /// have no effect in this build.
    pub(crate) fn inert_flags(&self) -> Vec<&'static str> {
        let routes = self.mode != Mode::None;
        let given = [
            ("--node-name", self.node_name.is_some() && !routes),
            ("--node-ip", !self.node_ips.is_empty() && !routes),
            ("--cgroup", self.cgroup.is_some() && self.mode != Mode::Ebpf),
            ("--drain-timeout", self.drain_timeout.is_some() && !routes),
            (
                "--sync-period",
                self.sync_period.is_some() && self.mode != Mode::Userspace,
            ),
        ];
        given.iter().filter(|(_, g)| *g).map(|(f, _)| *f).collect()
    }
}

impl RunArgs {
    /// Where allocations persist: `--state-dir`, else the user's state directory, else
    /// `/var/lib/svcplane` as root.
    pub(crate) fn state_file(&self) -> PathBuf {
        let dir = self.state_dir.clone().unwrap_or_else(default_state_dir);
        dir.join("allocations.v1")
    }
}

fn default_state_dir() -> PathBuf {
    let root = std::env::var_os("USER").is_some_and(|u| u == "root")
        || std::env::var_os("HOME").is_some_and(|h| h == "/root");
    if root {
        return PathBuf::from("/var/lib/svcplane");
    }
    if let Some(x) = std::env::var_os("XDG_STATE_HOME").filter(|x| !x.is_empty()) {
        return PathBuf::from(x).join("svcplane");
    }
    match std::env::var_os("HOME") {
        Some(h) => PathBuf::from(h).join(".local/state/svcplane"),
        None => PathBuf::from("/var/lib/svcplane"),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum CheckOutput {
    /// One row per Service, like `kubectl get svc -o wide`.
    Wide,
}

#[derive(Debug, Args)]
pub(crate) struct CheckArgs {
    /// Manifest files or directories (loaded together, as `kubectl apply -f` would).
    #[arg(required = true, value_name = "PATH")]
    pub(crate) paths: Vec<PathBuf>,
    /// Output format: `wide` lists every Service with its addresses, ports and endpoints.
    #[arg(short = 'o', long = "output", value_enum)]
    pub(crate) output: Option<CheckOutput>,
    /// Range of valid and allocated nodePorts.
    #[arg(long, value_name = "LO-HI", default_value = "30000-32767")]
    pub(crate) nodeport_range: PortRange,
    /// Range ClusterIPs are allocated from (repeatable, one per family) [default:
    /// 10.96.0.0/12]. `check` allocates in memory and writes no state.
    #[arg(long = "service-cidr", value_name = "CIDR")]
    pub(crate) service_cidrs: Vec<Cidr>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_parses_the_contract_flags() {
        let cli = Cli::try_parse_from([
            "svcplane",
            "run",
            "--manifests",
            "m",
            "--mode",
            "none",
            "--node-name",
            "n1",
            "--node-ip",
            "10.0.0.1",
            "--node-ip",
            "::1",
            "--dns-listen",
            "127.0.0.1:53",
            "--upstream",
            "127.0.0.1:5300",
            "--nodeport-range",
            "20000-20010",
            "--log-format",
            "json",
            "--sync-period",
            "5",
        ])
        .unwrap();
        let Command::Run(run) = cli.command else {
            panic!("not run")
        };
        assert_eq!(run.node_ips.len(), 2);
        assert_eq!(run.sync_period, Some(5));
        assert_eq!(
            run.nodeport_range,
            PortRange {
                first: 20000,
                last: 20010
            }
        );
        assert_eq!(run.log_format, LogFormat::Json);
        assert_eq!(
            run.inert_flags(),
            vec!["--node-name", "--node-ip", "--sync-period"]
        );
        let cli = Cli::try_parse_from([
            "svcplane",
            "run",
            "--manifests",
            "m",
            "--node-name",
            "n1",
            "--cgroup",
            "/sys/fs/cgroup/x",
        ])
        .unwrap();
        let Command::Run(run) = cli.command else {
            panic!("not run")
        };
        assert_eq!(run.mode, Mode::Userspace, "the default mode");
        assert_eq!(run.inert_flags(), vec!["--cgroup"]);
    }

    #[test]
    fn unbuilt_modes_and_bad_values_are_refused() {
        for bad in [
            vec!["--mode", "ipvs"],
            vec!["--nodeport-range", "5-1"],
            vec!["--admin-listen", "nope"],
            vec!["--node-ip", "300.1.1.1"],
            vec!["--sync-period", "0"],
        ] {
            let mut argv = vec!["svcplane", "run", "--manifests", "m"];
            argv.extend(bad.iter().copied());
            let err = Cli::try_parse_from(&argv).unwrap_err();
            assert!(
                matches!(
                    err.kind(),
                    clap::error::ErrorKind::ValueValidation | clap::error::ErrorKind::InvalidValue
                ),
                "{bad:?}: {err}"
            );
        }
    }
}
