//! Test environment of the eBPF data plane: a child cgroup, a network namespace with
//! `local 10.96.0.0/12` and `local fd00:96::/64` routed to `lo` (a missed rewrite stays
//! inside it), backends on loopback addresses of that namespace, a unique pin root, and a
//! client process that joins the cgroup and the namespace. Everything is removed on drop,
//! also when a test fails.
//!
//! The client is a process (python, `tests/client.py`), not a thread: in cgroup v2 a
//! thread cannot join a domain cgroup alone (`cgroup.procs` moves the whole process), and
//! parallel tests each attach to their own cgroup.

#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers; each test file uses part of them"
)]

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use svcplane_config::{Loader, ParseOptions, Snapshot};
use svcplane_ebpf::{EbpfDataPlane, EbpfOptions};
use tokio::sync::watch;

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// False (with a message) when namespace tests are to be skipped.
pub fn require_root() -> bool {
    if std::env::var_os("SVCPLANE_SKIP_NETNS").is_some() {
        eprintln!("SVCPLANE_SKIP_NETNS is set: skipping an eBPF namespace test");
        return false;
    }
    if !nix::unistd::geteuid().is_root() {
        eprintln!(
            "not root: skipping an eBPF namespace test (set SVCPLANE_SKIP_NETNS=1 to skip quietly)"
        );
        return false;
    }
    true
}

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}x{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

pub fn run(cmd: &str, args: &[&str]) -> Output {
    let out = Command::new(cmd).args(args).output().expect(cmd);
    assert!(
        out.status.success(),
        "{cmd} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The root of the cgroup2 mount.
pub fn cgroup2_root() -> PathBuf {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines()
        .find_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            (post.split_whitespace().next()? == "cgroup2")
                .then(|| PathBuf::from(pre.split_whitespace().nth(4).unwrap()))
        })
        .expect("a cgroup2 mount")
}

/// A child cgroup of the cgroup2 root, removed on drop.
pub struct Cgroup {
    pub path: PathBuf,
}

impl Cgroup {
    pub fn new() -> Cgroup {
        let path = cgroup2_root().join(unique("svcplane-test-"));
        std::fs::create_dir(&path).unwrap();
        Cgroup { path }
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // Client processes have exited; their cgroup empties when they are reaped.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.path).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A network namespace with service ranges routed to `lo`, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new() -> Netns {
        let name = unique("svpebpf");
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        run("ip", &["netns", "add", &name]);
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns.ip(&["route", "add", "local", "10.96.0.0/12", "dev", "lo"]);
        ns.ip(&["-6", "route", "add", "local", "fd00:96::/64", "dev", "lo"]);
        ns
    }

    pub fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        run("ip", &all);
    }

    /// Adds an address to `lo` (backends, node addresses).
    pub fn add_lo(&self, cidr: &str) {
        let six = cidr.contains(':');
        let mut args = vec![];
        if six {
            args.push("-6");
        }
        args.extend_from_slice(&["addr", "add", cidr, "dev", "lo"]);
        if six {
            args.push("nodad");
        }
        self.ip(&args);
    }

    /// Runs `f` on a thread in this namespace.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let fd = File::open(&path).expect("open netns");
            nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// A backend in a namespace: TCP replies its name and a newline then closes; UDP replies
/// `name:` + the datagram. Stops on drop.
pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Backend {
    pub fn start(ns: &Netns, name: &str, addr: &str) -> Backend {
        let addr: SocketAddr = addr.parse().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let (n, s) = (name.to_string(), Arc::clone(&stop));
        ns.spawn(move || {
            let l = TcpListener::bind(addr).expect("bind tcp backend");
            l.set_nonblocking(true).unwrap();
            let u = UdpSocket::bind(addr).expect("bind udp backend");
            u.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
            tx.send(()).unwrap();
            let mut buf = [0u8; 1500];
            while !s.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((mut c, _)) => {
                        let _ = c.write_all(format!("{n}\n").as_bytes());
                        let _ = c.shutdown(std::net::Shutdown::Write);
                        let _ = c.set_read_timeout(Some(Duration::from_millis(200)));
                        let _ = c.read(&mut buf);
                    }
                    Err(_) => {
                        if let Ok((len, from)) = u.recv_from(&mut buf) {
                            let mut reply = format!("{n}:").into_bytes();
                            reply.extend_from_slice(&buf[..len]);
                            let _ = u.send_to(&reply, from);
                        }
                    }
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(5)).expect("backend up");
        Backend {
            name: name.to_string(),
            addr,
            stop,
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A unique pin root under /sys/fs/bpf, cleaned up on drop.
pub struct PinRoot {
    pub path: PathBuf,
}

impl PinRoot {
    pub fn new() -> PinRoot {
        PinRoot {
            path: PathBuf::from(format!("/sys/fs/bpf/{}", unique("svcplane-test-"))),
        }
    }
}

impl Drop for PinRoot {
    fn drop(&mut self) {
        let _ = svcplane_ebpf::cleanup(&self.path);
    }
}

/// One test's world.
pub struct Env {
    pub ns: Netns,
    pub cgroup: Cgroup,
    pub pins: PinRoot,
    pub manifests: tempfile::TempDir,
    pub loader: Loader,
    pub tx: watch::Sender<Arc<Snapshot>>,
}

impl Env {
    pub fn new() -> Env {
        let manifests = tempfile::tempdir().unwrap();
        let loader = Loader::new(manifests.path(), ParseOptions::default());
        let (tx, _) = watch::channel(Arc::new(Snapshot::default()));
        Env {
            ns: Netns::new(),
            cgroup: Cgroup::new(),
            pins: PinRoot::new(),
            manifests,
            loader,
            tx,
        }
    }

    pub fn options(&self) -> EbpfOptions {
        EbpfOptions {
            pin_root: self.pins.path.clone(),
            cgroup: Some(self.cgroup.path.clone()),
            node_name: Some("node-a".into()),
            node_ips: vec!["10.0.0.5".parse().unwrap(), "127.0.0.1".parse().unwrap()],
            probe: None,
        }
    }

    /// Writes the manifests, reloads and publishes; returns the snapshot version.
    pub fn publish(&mut self, yaml: &str) -> u64 {
        // A fresh file name per publish: the change never hides in a timestamp tick.
        for e in std::fs::read_dir(self.manifests.path()).unwrap() {
            std::fs::remove_file(e.unwrap().path()).unwrap();
        }
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        std::fs::write(self.manifests.path().join(format!("m{n}.yaml")), yaml).unwrap();
        let (snap, _) = self.loader.reload().unwrap();
        let snap = snap.expect("a snapshot");
        let v = snap.version;
        self.tx.send_replace(snap);
        v
    }

    pub async fn start(&self) -> EbpfDataPlane {
        self.start_with(svcplane_ebpf::EbpfFeatures::default())
            .await
    }

    pub async fn start_with(&self, features: svcplane_ebpf::EbpfFeatures) -> EbpfDataPlane {
        EbpfDataPlane::start_with(self.options(), features, self.tx.subscribe())
            .await
            .expect("start the eBPF data plane")
    }

    /// Starts the python client in the cgroup and the namespace; killed on drop.
    pub fn client_spawn(&self, args: &[&str]) -> ClientProc {
        ClientProc(Some(
            self.client_command(args)
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap(),
        ))
    }

    fn client_command(&self, args: &[&str]) -> Command {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/client.py");
        let procs = self.cgroup.path.join("cgroup.procs");
        let shell = format!(
            "echo $$ > {} && exec nsenter --net=/run/netns/{} python3 {} \"$@\"",
            procs.display(),
            self.ns.name,
            script.display()
        );
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(shell).arg("client").args(args);
        cmd
    }

    /// Runs the python client in the cgroup and the namespace; its output lines.
    pub fn client(&self, args: &[&str]) -> Vec<String> {
        let out = self.client_command(args).output().unwrap();
        assert!(
            out.status.success(),
            "client {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }
}

/// A client process, killed on drop (a failed test must not leave load running).
pub struct ClientProc(Option<std::process::Child>);

impl ClientProc {
    /// The next line the client prints.
    pub fn read_line(&mut self) -> String {
        let child = self.0.as_mut().unwrap();
        let mut out = child.stdout.take().unwrap();
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while out.read(&mut byte).unwrap_or(0) == 1 && byte[0] != b'\n' {
            line.push(byte[0]);
        }
        child.stdout = Some(out);
        String::from_utf8_lossy(&line).into_owned()
    }

    /// Waits for the client to exit; its stdout.
    pub fn finish(mut self) -> String {
        let child = self.0.take().unwrap();
        let out = child.wait_with_output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for ClientProc {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub async fn wait_programmed(dp: &EbpfDataPlane, version: u64) {
    let mut rx = dp.programmed();
    tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|v| *v >= version))
        .await
        .expect("programmed in time")
        .expect("data plane running");
}

/// A Service with the given endpoints (`ip:ready` pairs) on port 80 → 8080 TCP and
/// 53 → 5353 UDP.
pub fn service(name: &str, cluster_ips: &[&str], endpoints: &[(&str, bool)]) -> String {
    let families: Vec<&str> = cluster_ips
        .iter()
        .map(|ip| if ip.contains(':') { "IPv6" } else { "IPv4" })
        .collect();
    let mut out = format!(
        "apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: default}}
spec:
  type: NodePort
  clusterIP: \"{}\"
  clusterIPs: [{}]
  ipFamilies: [{}]
  ports:
  - {{name: http, port: 80, targetPort: 8080, nodePort: 30080}}
  - {{name: dns, port: 53, targetPort: 5353, protocol: UDP, nodePort: 30053}}
",
        cluster_ips[0],
        cluster_ips
            .iter()
            .map(|i| format!("\"{i}\""))
            .collect::<Vec<_>>()
            .join(", "),
        families.join(", ")
    );
    for fam in ["IPv4", "IPv6"] {
        let eps: Vec<&(&str, bool)> = endpoints
            .iter()
            .filter(|(ip, _)| ip.contains(':') == (fam == "IPv6"))
            .collect();
        if eps.is_empty() {
            continue;
        }
        out.push_str(&format!(
            "---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {name}-{}, namespace: default, labels: {{kubernetes.io/service-name: {name}}}}}
addressType: {fam}
ports: [{{name: http, port: 8080}}, {{name: dns, port: 5353, protocol: UDP}}]
endpoints:
",
            fam.to_lowercase()
        ));
        for (ip, ready) in eps {
            out.push_str(&format!(
                "- {{addresses: [\"{ip}\"], nodeName: node-a, conditions: {{ready: {ready}}}}}\n"
            ));
        }
    }
    out
}
