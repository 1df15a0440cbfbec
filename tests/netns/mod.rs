//! Network-namespace test topology: a "node" namespace where the daemon runs, a "client"
//! namespace whose default route points at the node, and backend namespaces, each on its
//! own veth pair to the node. Everything is created with unique names and removed on drop,
//! also when a test fails. Traffic never leaves these namespaces.
//!
//! ```text
//!   client 10.200.0.2 / fd00:200::2 ──veth── 10.200.0.1 / fd00:200::1  node
//!   backend k 10.201.k.2 / fd00:201:k::2 ──veth── 10.201.k.1 / fd00:201:k::1  node
//! ```
//!
//! Backends serve TCP on 8080 (v4 and v6): each connection first gets the backend's name and
//! a newline, then an echo of everything it sends; the backend closes after the client's
//! EOF. UDP on 5353: each datagram comes back prefixed with "name:".

#![allow(
    dead_code,
    unreachable_pub,
    reason = "a test-only module; each test file uses part of it"
)]

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_svcplane");

/// Fails with a clear message unless the tests can create namespaces.
pub fn require_root() -> bool {
    if std::env::var_os("SVCPLANE_SKIP_NETNS").is_some() {
        eprintln!("SVCPLANE_SKIP_NETNS is set: skipping a network-namespace test");
        return false;
    }
    assert!(
        nix::unistd::geteuid().is_root(),
        "network-namespace tests need root (CI runs them as root); set SVCPLANE_SKIP_NETNS=1 \
         to skip them on a workstation"
    );
    true
}

pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn ip_out(ns: &str, args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(["-n", ns])
        .args(args)
        .output()
        .expect("run ip");
    assert!(out.status.success(), "ip -n {ns} {}", args.join(" "));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A named network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(name: String) -> Netns {
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        ip(&["netns", "add", &name]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        Netns { name }
    }

    /// Runs `f` on a thread that lives in this namespace; sockets it creates stay there.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        self.spawn(f).join().expect("namespace thread panicked")
    }

    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> JoinHandle<T> {
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

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// Client, node and backends, wired as in the module docs.
pub struct Topology {
    pub node: Netns,
    pub client: Netns,
    pub backends: Vec<Backend>,
}

impl Topology {
    pub fn new(backends: usize) -> Topology {
        let id = format!(
            "svp{}x{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let node = Netns::new(format!("{id}-node"));
        let client = Netns::new(format!("{id}-client"));
        veth(
            &node,
            "to-client",
            "10.200.0.1",
            "fd00:200::1",
            &client,
            "eth0",
            "10.200.0.2",
            "fd00:200::2",
        );
        ip(&[
            "-n",
            &client.name,
            "route",
            "add",
            "default",
            "via",
            "10.200.0.1",
        ]);
        ip(&[
            "-n",
            &client.name,
            "-6",
            "route",
            "add",
            "default",
            "via",
            "fd00:200::1",
        ]);
        let mut list = Vec::new();
        for k in 0..backends {
            let ns = Netns::new(format!("{id}-b{k}"));
            let (n4, n6) = (format!("10.201.{k}.1"), format!("fd00:201:{k}::1"));
            let (b4, b6) = (format!("10.201.{k}.2"), format!("fd00:201:{k}::2"));
            veth(&node, &format!("to-b{k}"), &n4, &n6, &ns, "eth0", &b4, &b6);
            ip(&["-n", &ns.name, "route", "add", "default", "via", &n4]);
            ip(&["-n", &ns.name, "-6", "route", "add", "default", "via", &n6]);
            list.push(Backend::start(
                ns,
                format!("b{k}"),
                b4.parse().unwrap(),
                b6.parse().unwrap(),
            ));
        }
        Topology {
            node,
            client,
            backends: list,
        }
    }

    /// `svcplane run` in the node namespace.
    pub fn daemon(&self, manifests: &std::path::Path, extra: &[&str]) -> Daemon {
        Daemon::start(&self.node, manifests, extra)
    }
}

#[allow(clippy::too_many_arguments, reason = "two ends of a link")]
fn veth(a: &Netns, a_if: &str, a4: &str, a6: &str, b: &Netns, b_if: &str, b4: &str, b6: &str) {
    ip(&[
        "link", "add", a_if, "netns", &a.name, "type", "veth", "peer", "name", b_if, "netns",
        &b.name,
    ]);
    for (ns, ifname, v4, v6) in [(a, a_if, a4, a6), (b, b_if, b4, b6)] {
        ip(&[
            "-n",
            &ns.name,
            "addr",
            "add",
            &format!("{v4}/24"),
            "dev",
            ifname,
        ]);
        ip(&[
            "-n",
            &ns.name,
            "addr",
            "add",
            &format!("{v6}/64"),
            "dev",
            ifname,
            "nodad",
        ]);
        ip(&["-n", &ns.name, "link", "set", ifname, "up"]);
    }
}

/// A backend "pod": TCP 8080 and UDP 5353 on its v4 and v6 addresses.
pub struct Backend {
    pub ns: Netns,
    pub name: String,
    pub v4: IpAddr,
    pub v6: IpAddr,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    /// Connections accepted so far.
    pub accepted: Arc<AtomicUsize>,
}

impl Backend {
    fn start(ns: Netns, name: String, v4: IpAddr, v6: IpAddr) -> Backend {
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let mut threads = Vec::new();
        for ip in [v4, v6] {
            let (ready_tx, ready_rx) = mpsc::channel();
            let (stop2, name2, acc) = (stop.clone(), name.clone(), accepted.clone());
            threads.push(ns.spawn(move || {
                let l = TcpListener::bind((ip, 8080)).expect("backend bind");
                l.set_nonblocking(true).unwrap();
                ready_tx.send(()).unwrap();
                while !stop2.load(Ordering::Relaxed) {
                    match l.accept() {
                        Ok((s, _)) => {
                            acc.fetch_add(1, Ordering::Relaxed);
                            let name = name2.clone();
                            std::thread::spawn(move || echo(s, &name));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(2)),
                    }
                }
            }));
            ready_rx.recv().unwrap();
            let (ready_tx, ready_rx) = mpsc::channel();
            let (stop2, name2) = (stop.clone(), name.clone());
            threads.push(ns.spawn(move || {
                let s = UdpSocket::bind((ip, 5353)).expect("backend udp bind");
                s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
                ready_tx.send(()).unwrap();
                let mut buf = [0u8; 2048];
                while !stop2.load(Ordering::Relaxed) {
                    if let Ok((n, from)) = s.recv_from(&mut buf) {
                        let mut out = format!("{name2}:").into_bytes();
                        out.extend_from_slice(&buf[..n]);
                        let _ = s.send_to(&out, from);
                    }
                }
            }));
            ready_rx.recv().unwrap();
        }
        Backend {
            ns,
            name,
            v4,
            v6,
            stop,
            threads,
            accepted,
        }
    }

    /// Stops listening: new connections are refused (open ones keep running).
    pub fn kill(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.kill();
    }
}

fn echo(mut s: TcpStream, name: &str) {
    let _ = s.set_nodelay(true);
    if writeln!(s, "{name}").is_err() {
        return;
    }
    let mut buf = [0u8; 16 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if s.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
    let _ = s.shutdown(Shutdown::Write);
}

/// What one TCP request through a frontend saw.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The backend's name, after a correct echo.
    Served(String),
    Refused,
    Reset,
    Other(String),
}

/// Connects to `addr`, reads the backend's name, checks an echo, closes. Runs in the calling
/// thread's namespace.
pub fn request(addr: SocketAddr) -> Outcome {
    let mut s = match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Outcome::Refused,
        // A reset right after the handshake can surface as the connect's own error.
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Outcome::Reset,
        Err(e) => return Outcome::Other(e.to_string()),
    };
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut name = String::new();
    match r.read_line(&mut name) {
        Ok(0) => return Outcome::Other("EOF before the name".into()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Outcome::Reset,
        Err(e) => return Outcome::Other(e.to_string()),
    }
    if s.write_all(b"ping\n").is_err() {
        return Outcome::Other("write failed".into());
    }
    let _ = s.shutdown(Shutdown::Write);
    let mut rest = String::new();
    match r.read_to_string(&mut rest) {
        Ok(_) if rest == "ping\n" => Outcome::Served(name.trim_end().to_string()),
        Ok(_) => Outcome::Other(format!("echo was {rest:?}")),
        Err(e) => Outcome::Other(e.to_string()),
    }
}

/// Polls `f` until it returns true; panics with `what` after 10 s.
pub fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A running `svcplane run` in a namespace; killed on drop.
pub struct Daemon {
    child: Child,
    ns: String,
    pub admin: SocketAddr,
    pub logs: Arc<Mutex<Vec<String>>>,
    _state: tempfile::TempDir,
}

impl Daemon {
    fn start(ns: &Netns, manifests: &std::path::Path, extra: &[&str]) -> Daemon {
        let state = tempfile::tempdir().unwrap();
        // nsenter, not `ip netns exec`: that remounts /sys, which hides the cgroup2 and bpf
        // filesystems the ebpf mode needs. Both exec the daemon (its pid is the child's).
        let mut child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", ns.name))
            .args([BIN, "run", "--manifests"])
            .arg(manifests)
            .arg("--state-dir")
            .arg(state.path())
            .args([
                "--admin-listen",
                "127.0.0.1:0",
                "--dns-listen",
                "127.0.0.1:0",
            ])
            .args(["--log-format", "json"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn svcplane run");
        let stderr = child.stderr.take().unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let l2 = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("svcplane running") {
                    let _ = tx.send(line.clone());
                }
                l2.lock().unwrap().push(line);
            }
        });
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("daemon did not start: {:?}", logs.lock().unwrap()));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        let admin = v["admin"].as_str().unwrap().parse().unwrap();
        Daemon {
            child,
            ns: ns.name.clone(),
            admin,
            logs,
            _state: state,
        }
    }

    /// SIGTERM; waits for the exit status.
    pub fn terminate(self) -> std::process::ExitStatus {
        self.signal_term();
        self.wait()
    }

    /// Sends SIGTERM without waiting.
    pub fn signal_term(&self) {
        // nsenter execs the daemon, so the child's pid is the daemon's.
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    }

    /// SIGKILL, as a crash would; waits for the process to be gone.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Whether the daemon has exited (without waiting).
    pub fn exited(&mut self) -> bool {
        self.child.try_wait().unwrap().is_some()
    }

    /// Waits (at most 40 s) for the exit status.
    pub fn wait(mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(Instant::now() < deadline, "daemon did not exit on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    /// `svcplane status --admin <admin> EXTRA...` run in the daemon's namespace; its stdout.
    pub fn status(&self, extra: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns, BIN, "status", "--admin"])
            .arg(self.admin.to_string())
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "status: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// GET on the admin endpoint (from inside the node namespace).
    pub fn get(&self, node: &Netns, path: &str) -> String {
        let (addr, path) = (self.admin, path.to_string());
        node.run(move || {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            write!(
                s,
                "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )
            .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            out
        })
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = &self.ns;
    }
}

/// Writes a manifest file atomically (write + rename), as editors and kubectl-like tools do.
pub fn write_manifest(dir: &std::path::Path, name: &str, yaml: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, yaml).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}
